"""Pod customisation on the real control plane (issue #11, item 2).

- a QwenDeployment with ``spec.pod`` / ``spec.pod.pools`` / ``spec.routing.pod`` and the operator
  config's ``podDefaults``: the pool Deployments and router Deployment carry them, and the pods
  the ReplicaSet controller created were admitted by the API server (ServiceAccount and priority
  admission included) and scheduled by the real kube-scheduler;
- an A100-80GB pool lands on a node labelled with the PCIe product label (the catalog's alias),
  selected by the node expression the operator renders;
- what the operator owns (engine flags, label keys, environment, the GPU node selector) and a
  pool entry for a GPU type the resource does not allow are refused by the API server's CEL
  validation, with the field and the offending value named;
- the PodDisruptionBudget of a one-replica deployment refuses the eviction of its only pod
  (Eviction API, 429), and allows one once there are two replicas.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from test_controller import Qwd, resource  # the harness of the controller tests

from qwen_operator.catalog import DEFAULT_GPUS
from qwen_operator.sandbox.cluster import Sandbox
from qwen_operator.sandbox.nodes import NodeSpec, node_manifest
from qwen_operator.testing.operator import OperatorProcess
from qwen_operator.testing.wait import wait_for

pytestmark = pytest.mark.cluster

ADMIN_LABEL = ("example.com/tenant-class", "llm")
PCIE = "NVIDIA-A100-80GB-PCIe"


@pytest.fixture
def operator(sandbox: Sandbox, qwen_crd: Path, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump({"podDefaults": {"imagePullSecrets": [{"name": "admin-mirror"}], "labels": dict([ADMIN_LABEL])}})
    )
    op = OperatorProcess(
        sandbox.kubeconfig, tmp_path / "operator.log", extra=["--namespace", namespace, "--config", str(config)]
    ).start()
    try:
        yield op
    finally:
        op.stop()
        print(f"--- operator log tail ---\n{op.tail(40)}")


@pytest.fixture
def priority_class(kube_api: Any) -> Iterator[str]:
    sched = client.SchedulingV1Api(kube_api)
    name = f"qwen-test-{uuid.uuid4().hex[:6]}"
    sched.create_priority_class({"metadata": {"name": name}, "value": 1000, "globalDefault": False})
    try:
        yield name
    finally:
        sched.delete_priority_class(name)


def server_pods(qwds: Qwd, name: str) -> list[Any]:
    sel = f"serving.qwenops.io/deployment={name},app.kubernetes.io/component=server"
    return [p for p in qwds.core.list_namespaced_pod(qwds.ns, label_selector=sel).items if p.spec.node_name]


def test_the_overlay_reaches_the_admitted_and_scheduled_pods(
    kube_api: Any, namespace: str, operator: OperatorProcess, priority_class: str
) -> None:
    qwds = Qwd(kube_api, namespace)
    qwds.core.create_namespaced_service_account(namespace, {"metadata": {"name": "model-puller"}})
    body = resource("shaped", replicas=2, gpu_types=["L40S"])
    body["spec"]["pod"] = {
        "labels": {"team": "search"},
        "annotations": {"example.com/owner": "search-team"},
        "nodeSelector": {"type": "kwok"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 10,
                        "preference": {"matchExpressions": [{"key": "type", "operator": "In", "values": ["kwok"]}]},
                    }
                ]
            }
        },
        "topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway"}
        ],
        "priorityClassName": priority_class,
        "imagePullSecrets": [{"name": "mirror"}],
        "serviceAccountName": "model-puller",
        "env": [
            {"name": "OTEL_TOKEN", "valueFrom": {"secretKeyRef": {"name": "otel", "key": "token", "optional": True}}}
        ],
        "extraArgs": ["--max-batch-prefill-tokens=4096"],
        "preStopSleepSeconds": 7,
        "pools": [{"gpuType": "L40S", "extraArgs": ["--cuda-graphs", "1,2"]}],
    }
    body["spec"]["routing"] = {"pod": {"labels": {"team": "search"}, "nodeSelector": {"type": "kwok"}}}
    qwds.create(body)

    wait_for("two server pods scheduled", lambda: len(server_pods(qwds, "shaped")) == 2, timeout=120)
    (dep,) = qwds.deployments("shaped").values()
    tmpl = dep.spec.template
    assert tmpl.metadata.labels["team"] == "search" and tmpl.metadata.labels[ADMIN_LABEL[0]] == ADMIN_LABEL[1]
    for pod in server_pods(qwds, "shaped"):  # created by the ReplicaSet controller, admitted, bound
        spec = pod.spec
        assert (
            pod.metadata.labels["team"] == "search" and pod.metadata.annotations["example.com/owner"] == "search-team"
        )
        assert spec.node_selector == {"type": "kwok", "nvidia.com/gpu.product": "NVIDIA-L40S"}
        assert {t.key for t in spec.tolerations} >= {"nvidia.com/gpu", "dedicated"}
        assert spec.affinity.node_affinity.preferred_during_scheduling_ignored_during_execution[0].weight == 10
        spread = spec.topology_spread_constraints[0]
        assert spread.label_selector.match_labels == {
            "serving.qwenops.io/deployment": "shaped",
            "app.kubernetes.io/component": "server",
        }
        assert spec.priority_class_name == priority_class and spec.priority == 1000  # priority admission resolved it
        assert [s.name for s in spec.image_pull_secrets] == ["admin-mirror", "mirror"]
        assert spec.service_account_name == "model-puller"
        server = spec.containers[0]
        assert server.args[-3:] == ["--max-batch-prefill-tokens=4096", "--cuda-graphs", "1,2"]
        assert "--port" in server.args  # the operator's flags are all still there
        assert next(e for e in server.env if e.name == "OTEL_TOKEN").value_from.secret_key_ref.key == "token"
        assert server.lifecycle.pre_stop.sleep.seconds == 7
        assert spec.termination_grace_period_seconds == 7 + 120
        assert qwds.core.read_node(spec.node_name).metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-L40S"

    # at rest: every rendered field matches what the API server stored (no spec re-applied on resyncs).
    # The Deployment controller keeps writing status while pods turn ready, so resourceVersion is not the
    # measure; the operator's own writes are: spec generation and the operator's managedFields entries.
    def operator_writes() -> dict[str, Any]:
        return {
            d.metadata.name: (
                d.metadata.generation,
                sorted(
                    (m.operation, str(m.time), m.subresource or "")
                    for m in d.metadata.managed_fields or []
                    if m.manager == "qwen-operator"
                ),
            )
            for d in qwds.apps.list_namespaced_deployment(namespace).items
        }

    before = operator_writes()
    assert all(entries for _, entries in before.values()), before  # the measure sees the operator's applies
    time.sleep(12)  # two resyncs (--resync-seconds 5)
    after = operator_writes()
    assert after == before
    drift = qwds.core.list_namespaced_event(namespace, field_selector="reason=DriftReverted").items
    assert not drift, [e.message for e in drift]

    router = qwds.apps.read_namespaced_deployment("shaped-router", namespace).spec.template
    assert router.metadata.labels["team"] == "search" and router.metadata.labels[ADMIN_LABEL[0]] == ADMIN_LABEL[1]
    assert router.spec.node_selector == {"type": "kwok"}
    assert [s.name for s in router.spec.image_pull_secrets] == ["admin-mirror"]


@pytest.fixture
def pcie_node(kube_api: Any) -> Iterator[str]:
    core = client.CoreV1Api(kube_api)
    name = f"gpu-a100-pcie-{uuid.uuid4().hex[:5]}"
    node = node_manifest(NodeSpec(name, DEFAULT_GPUS["A100-80GB"], 2, "a100-pcie", 32, 256))
    node["metadata"]["labels"].update({"nvidia.com/gpu.product": PCIE, "qwen-test/pcie": name})
    core.create_node(node)
    try:
        wait_for(
            "the PCIe node Ready (kwok)",
            lambda: any(c.type == "Ready" and c.status == "True" for c in core.read_node(name).status.conditions or []),
            timeout=60,
        )
        yield name
    finally:
        core.delete_node(name)


def test_an_a100_pool_lands_on_a_pcie_node(
    kube_api: Any, pcie_node: str, namespace: str, operator: OperatorProcess
) -> None:
    # pcie_node before namespace: the node outlives the namespace's pods (a pod left on a deleted kwok
    # node is only removed by the pod garbage collector, ~40 s later)
    qwds = Qwd(kube_api, namespace)
    body = resource("pcie", replicas=1, gpu_types=["A100-80GB"])
    body["spec"]["pod"] = {"nodeSelector": {"qwen-test/pcie": pcie_node}}  # only the PCIe node qualifies
    qwds.create(body)
    wait_for("the replica scheduled", lambda: len(server_pods(qwds, "pcie")) == 1, timeout=120)
    (pod,) = server_pods(qwds, "pcie")
    assert pod.spec.node_name == pcie_node
    terms = pod.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution.node_selector_terms
    (expr,) = terms[0].match_expressions
    assert expr.key == "nvidia.com/gpu.product" and PCIE in expr.values and "NVIDIA-A100-SXM4-80GB" in expr.values


def rejection(qwds: Qwd, spec: dict[str, Any]) -> str:
    body = resource(f"refused-{uuid.uuid4().hex[:5]}", replicas=1, gpu_types=["L40S", "A10G"])
    runtime = spec.pop("runtime", None)
    if runtime:
        body["spec"]["runtime"] = runtime
    body["spec"]["pod"] = spec
    with pytest.raises(ApiException) as err:
        qwds.create(body)
    assert err.value.status == 422, err.value.body
    return str(err.value.body)


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ({"extraArgs": ["--max-batch-prefill-tokens=1", "--port=9000"]}, ["spec.pod.extraArgs", "--port=9000", "tgi"]),
        (
            {"runtime": {"engine": "vllm"}, "extraArgs": ["--max_model_len=4096"]},
            ["spec.pod.extraArgs", "--max_model_len=4096", "vllm"],
        ),
        ({"pools": [{"gpuType": "L40S", "extraArgs": ["--num-shard", "4"]}]}, ["spec.pod.pools", "--num-shard"]),
        ({"pools": [{"gpuType": "A100-80GB"}]}, ["spec.pod.pools", "A100-80GB", "placement.gpuTypes"]),
        ({"labels": {"app.kubernetes.io/component": "x"}}, ["spec.pod.labels", "app.kubernetes.io/component"]),
        ({"annotations": {"serving.qwenops.io/model": "x"}}, ["spec.pod.annotations", "serving.qwenops.io/model"]),
        (
            {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100"}},
            ["spec.pod.nodeSelector", "nvidia.com/gpu.product"],
        ),
        ({"env": [{"name": "HF_HUB_OFFLINE", "value": "0"}]}, ["spec.pod.env", "HF_HUB_OFFLINE"]),
        ({"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}, ["spec.pod.env", "Duplicate value"]),
    ],
)
def test_the_api_server_refuses_what_the_operator_owns(
    kube_api: Any, namespace: str, qwen_crd: Path, spec: dict[str, Any], named: list[str]
) -> None:
    message = rejection(Qwd(kube_api, namespace), spec)
    for word in named:
        assert word in message, message


def pdb_settled(policy: Any, namespace: str, name: str, healthy: int) -> Any:
    pdb = policy.read_namespaced_pod_disruption_budget(name, namespace)
    st = pdb.status
    if st is None or st.observed_generation != pdb.metadata.generation or st.current_healthy != healthy:
        return None
    return pdb


def evict(qwds: Qwd, pod: str) -> int:
    try:
        qwds.core.create_namespaced_pod_eviction(
            pod,
            qwds.ns,
            {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": qwds.ns}},
        )
    except ApiException as exc:
        return int(exc.status)
    return 201


def test_a_drain_never_evicts_the_only_replica(kube_api: Any, namespace: str, operator: OperatorProcess) -> None:
    qwds = Qwd(kube_api, namespace)
    policy = client.PolicyV1Api(kube_api)
    body = resource("single", replicas=1, gpu_types=["L40S"])
    body["spec"]["routing"] = {"enabled": False}
    qwds.create(body)
    wait_for("one Ready replica", lambda: len(qwds.ready_pods("single")) == 1, timeout=180)
    wait_for("the PDB counts it", lambda: pdb_settled(policy, namespace, "single", 1), timeout=60)
    pdb = pdb_settled(policy, namespace, "single", 1)
    assert pdb.spec.min_available == 1 and pdb.spec.max_unavailable is None
    assert pdb.status.disruptions_allowed == 0
    (pod,) = qwds.ready_pods("single")
    assert evict(qwds, pod.metadata.name) == 429  # the disruption budget refuses it

    qwds.patch("single", {"spec": {"replicas": 2}})
    wait_for("two Ready replicas", lambda: len(qwds.ready_pods("single")) == 2, timeout=180)
    wait_for(
        "the PDB allows one",
        lambda: (p := pdb_settled(policy, namespace, "single", 2)) and p.status.disruptions_allowed == 1,
        timeout=60,
    )
    assert policy.read_namespaced_pod_disruption_budget("single", namespace).spec.max_unavailable == 1
    assert evict(qwds, qwds.ready_pods("single")[0].metadata.name) == 201

"""A model no single node holds, served as LeaderWorkerSet groups: the real operator, the real
LeaderWorkerSet controller (LWS v0.9.0) and its webhooks, the real scheduler and kwok GPU nodes.

The sandbox's A10G nodes have one GPU each (``TEST_GPUS``), and the operator's catalog says so
(``catalog.gpuTypes.A10G.maxGPUsPerNode: 1``, what an admin of g5.xlarge-style nodes writes).
Qwen3-14B in bf16 (29.5 GB of weights) fits no 24 GB A10G, so with vLLM the planner splits each
replica into 2 pipeline stages of 1 GPU on 2 nodes: one LeaderWorkerSet group per replica.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from qwen_operator.sandbox.cluster import Sandbox
from qwen_operator.sandbox.lws import LWSController
from qwen_operator.testing.lws import wait_lws
from qwen_operator.testing.operator import OperatorProcess

pytestmark = pytest.mark.cluster

GROUP, VERSION, PLURAL = "serving.qwenops.io", "v1alpha1", "qwendeployments"
LWS = ("leaderworkerset.x-k8s.io", "v1", "leaderworkersets")
LWS_LABEL = "leaderworkerset.sigs.k8s.io"
NAME = "wide"
POOL = f"{NAME}-a10g"
VERSION_ANNOTATION = "serving.qwenops.io/model-version"


@pytest.fixture(scope="module")
def lws_operator(
    sandbox: Sandbox, qwen_crd: Path, lws_controller: LWSController, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The operator started after the LWS CRD is installed (it checks for the CRD at start-up)."""
    work = tmp_path_factory.mktemp("lws-operator")
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump({"catalog": {"gpuTypes": {"A10G": {"maxGPUsPerNode": 1}}}}))
    op = OperatorProcess(sandbox.kubeconfig, work / "operator.log", extra=["--config", str(config)]).start()
    try:
        yield op
    finally:
        op.stop()
        print(f"--- operator log tail ({work / 'operator.log'}) ---\n{op.tail(60)}")


def resource(replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "QwenDeployment",
        "metadata": {"name": NAME},
        "spec": {
            # hf:// versions are not tracked: the pool is created at once
            "model": {"name": "Qwen/Qwen3-14B", "registry": "hf://Qwen/Qwen3-14B", "quantization": "none"},
            "runtime": {"engine": "vllm", "maxTotalTokens": 4096, "maxInputTokens": 2048},
            "placement": {"gpuTypes": ["A10G"]},
            "replicas": replicas,
            "scaling": {"enabled": False},
            "routing": {"enabled": False},
        },
    }


def workers_pdb_ready(core: client.CoreV1Api, namespace: str) -> bool:
    try:
        pdb = client.PolicyV1Api(core.api_client).read_namespaced_pod_disruption_budget(f"{NAME}-workers", namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return False
        raise
    status = pdb.status
    return bool(status and status.observed_generation and status.expected_pods == 1)


def ready(pod: client.V1Pod) -> bool:
    conditions = pod.status.conditions or []
    return pod.status.phase == "Running" and any(c.type == "Ready" and c.status == "True" for c in conditions)


def test_a_model_no_node_holds_runs_as_leader_worker_set_groups(
    lws_operator: OperatorProcess, lws_controller: LWSController, kube_api: Any, namespace: str
) -> None:
    custom, core = client.CustomObjectsApi(kube_api), client.CoreV1Api(kube_api)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, resource(replicas=1))

    def qwd() -> dict[str, Any]:
        obj: dict[str, Any] = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME)
        return obj

    def lws() -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = custom.get_namespaced_custom_object(*LWS[:2], namespace, LWS[2], POOL)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return obj

    def group_pods() -> list[client.V1Pod]:
        return list(core.list_namespaced_pod(namespace, label_selector=f"{LWS_LABEL}/name={POOL}").items)

    def groups_ready(n: int) -> list[client.V1Pod] | None:
        pods = group_pods()
        return pods if len(pods) == 2 * n and all(map(ready, pods)) else None

    def status_ready(n: int) -> dict[str, Any] | None:
        obj = qwd()
        st = obj.get("status") or {}
        cond = {c["type"]: c for c in st.get("conditions") or []}
        ok = (
            cond.get("Ready", {}).get("status") == "True"
            and cond["Ready"].get("observedGeneration") == obj["metadata"]["generation"]
            and st.get("readyReplicas") == n
        )
        return st if ok else None

    # the operator applied a LeaderWorkerSet (no pool Deployment), the LWS controller made the group
    pods = wait_lws(lws_controller, "one group (leader + worker) Running and Ready", lambda: groups_ready(1), 90)
    assert not client.AppsV1Api(kube_api).list_namespaced_deployment(namespace).items
    obj = lws()
    assert obj is not None and obj["spec"]["leaderWorkerTemplate"]["size"] == 2
    assert obj["metadata"]["ownerReferences"][0]["kind"] == "QwenDeployment"
    by_index = {p.metadata.labels[f"{LWS_LABEL}/worker-index"]: p for p in pods}
    leader, worker = by_index["0"], by_index["1"]
    assert leader.metadata.labels["app.kubernetes.io/component"] == "server"
    assert worker.metadata.labels["app.kubernetes.io/component"] == "worker"
    args = leader.spec.containers[0].args
    assert args[args.index("--pipeline-parallel-size") + 1] == "2"
    assert args[args.index("--tensor-parallel-size") + 1] == "1"
    # the LWS pod webhook told the worker where its leader's Ray head is
    env = {e.name: e.value for e in worker.spec.containers[0].env or []}
    assert env["LWS_LEADER_ADDRESS"].startswith(f"{leader.metadata.name}.{POOL}.")
    assert env["LWS_GROUP_SIZE"] == "2"
    # each stage on its own one-GPU A10G node
    nodes = {p.spec.node_name for p in pods}
    assert len(nodes) == 2
    for n in nodes:
        assert core.read_node(n).metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-A10G"

    status = wait_lws(lws_controller, "QwenDeployment Ready with 1 group", lambda: status_ready(1), 60)
    # a drain may not evict the only group's worker (its group would restart): the workers' PDB
    wait_lws(lws_controller, "the workers' PDB observed", lambda: workers_pdb_ready(core, namespace), 30)
    with pytest.raises(client.ApiException) as refused:
        core.create_namespaced_pod_eviction(
            worker.metadata.name,
            namespace,
            {"metadata": {"name": worker.metadata.name, "namespace": namespace}},
        )
    assert refused.value.status == 429, refused.value.body
    (pool,) = status["pools"]
    assert (pool["kind"], pool["nodes"], pool["shards"], pool["readyReplicas"]) == ("LeaderWorkerSet", 2, 1, 1)
    assert status["poolSummary"] == "A10G:1"

    # a new model version rolls the group through the LWS controller: a surge group on the two free
    # nodes first (maxSurge 1, maxUnavailable 0), so a Ready leader serves throughout
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, NAME, {"spec": {"model": {"version": "v2"}}}
    )
    dropped: list[str] = []

    def rolled() -> list[client.V1Pod] | None:
        pods = [p for p in group_pods() if not p.metadata.deletion_timestamp]
        leaders = [p for p in pods if p.metadata.labels.get(f"{LWS_LABEL}/worker-index") == "0"]
        if not any(map(ready, leaders)):
            dropped.append(", ".join(f"{p.metadata.name}:{p.status.phase}" for p in leaders) or "no leader")
        on_v2 = [p for p in pods if p.metadata.annotations.get(VERSION_ANNOTATION) == "v2"]
        return pods if len(pods) == 2 and len(on_v2) == 2 and all(map(ready, pods)) else None

    wait_lws(lws_controller, "the group rolled to v2, Ready", rolled, 120)
    assert not dropped, f"no Ready leader during the roll at: {dropped}"
    wait_lws(lws_controller, "QwenDeployment Ready on v2", lambda: status_ready(1), 60)

    # scaled to 2 replicas: a second group, on the two other A10G nodes
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME, {"spec": {"replicas": 2}})
    pods = wait_lws(lws_controller, "two groups Running and Ready", lambda: groups_ready(2), 90)
    assert len({p.spec.node_name for p in pods}) == 4
    wait_lws(lws_controller, "QwenDeployment Ready with 2 groups", lambda: status_ready(2), 60)

    # drift: the LeaderWorkerSet scaled behind the operator's back is restored
    edited = custom.patch_namespaced_custom_object(
        *LWS[:2], namespace, LWS[2], POOL, {"spec": {"replicas": 1}}, _content_type="application/merge-patch+json"
    )

    def restored() -> bool:
        now = lws() or {}
        later = now.get("metadata", {}).get("generation", 0) > edited["metadata"]["generation"]
        return later and now.get("spec", {}).get("replicas") == 2

    wait_lws(lws_controller, "the operator restores the LeaderWorkerSet's replicas to 2", restored, 60)
    wait_lws(lws_controller, "two groups Ready again", lambda: groups_ready(2), 90)
    wait_lws(lws_controller, "QwenDeployment Ready with 2 groups again", lambda: status_ready(2), 60)

    # at rest: two resyncs (5 s each) write nothing, to the LeaderWorkerSet (the LWS webhook's defaults
    # are not drift) or to the resource's status
    before = ((lws() or {})["metadata"]["resourceVersion"], qwd()["metadata"]["resourceVersion"])
    time.sleep(12)
    after = ((lws() or {})["metadata"]["resourceVersion"], qwd()["metadata"]["resourceVersion"])
    assert after == before, "the operator wrote at rest: see its log"
    assert lws_operator.alive() and lws_controller.alive()

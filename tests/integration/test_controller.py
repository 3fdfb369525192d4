"""The operator on the real control plane: placement, status, scale, spill-over, moves,
deletion, crash-restart, and steady state without writes."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from qwen_operator.sandbox.cluster import Sandbox
from qwen_operator.testing.operator import OperatorProcess
from qwen_operator.testing.wait import wait_for

pytestmark = pytest.mark.cluster

GROUP, VERSION, PLURAL = "serving.qwenops.io", "v1alpha1", "qwendeployments"
SAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "qwen3-14b-chat.yaml"
SERVER = "app.kubernetes.io/component=server"  # server pods only, not the router's


def resource(name: str, replicas: int = 1, gpu_types: list[str] | None = None, **spec: Any) -> dict[str, Any]:
    body = yaml.safe_load(SAMPLE.read_text())
    body["metadata"] = {"name": name}
    body["spec"]["scaling"] = {"enabled": False}
    body["spec"]["replicas"] = replicas
    body["spec"]["model"].pop("credentialsSecret", None)
    # no registry runs here: hf:// versions are not tracked, so pools start at once (an s3://
    # registry waits for its digest before creating any pool, see test_drift.py)
    body["spec"]["model"]["registry"] = "hf://Qwen/Qwen3-14B"
    if gpu_types is not None:
        body["spec"]["placement"]["gpuTypes"] = gpu_types
    body["spec"].update(spec)
    return dict(body)


class Qwd:
    def __init__(self, api: Any, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.ns = namespace

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, body)
        return obj

    def get(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)
        return obj

    def patch(self, name: str, patch: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURAL, name, patch, _content_type="application/merge-patch+json"
        )

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        conds = (self.get(name).get("status") or {}).get("conditions") or []
        return next((c for c in conds if c["type"] == type_), None)

    def ready(self, name: str) -> bool:
        obj = self.get(name)
        c = next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"), None)
        return bool(c and c["status"] == "True" and c["observedGeneration"] == obj["metadata"]["generation"])

    def deployments(self, name: str) -> dict[str, Any]:
        items = self.apps.list_namespaced_deployment(
            self.ns, label_selector=f"serving.qwenops.io/deployment={name},{SERVER}"
        ).items
        return {d.metadata.name: d for d in items}

    def ready_pods(self, name: str) -> list[Any]:
        sel = f"serving.qwenops.io/deployment={name},{SERVER}"
        pods = self.core.list_namespaced_pod(self.ns, label_selector=sel).items
        return [
            p
            for p in pods
            if p.metadata.deletion_timestamp is None
            and any(c.type == "Ready" and c.status == "True" for c in (p.status.conditions or []))
        ]


@pytest.fixture()
def qwds(kube_api: Any, namespace: str, operator_process: OperatorProcess) -> Qwd:
    assert operator_process.alive(), operator_process.tail()
    return Qwd(kube_api, namespace)


def test_sample_places_pools_on_the_right_nodes_and_becomes_ready(qwds: Qwd, kubectl: Any) -> None:
    qwds.create(resource("chat", replicas=2, gpu_types=["L40S"]))
    wait_for("Ready=True at the current generation", lambda: qwds.ready("chat"))
    deps = qwds.deployments("chat")
    assert list(deps) == ["chat-l40s"]
    pods = qwds.ready_pods("chat")
    assert len(pods) == 2
    for pod in pods:
        node = qwds.core.read_node(pod.spec.node_name)
        assert node.metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-L40S"
        server = next(c for c in pod.spec.containers if c.resources.limits and "nvidia.com/gpu" in c.resources.limits)
        assert server.resources.limits["nvidia.com/gpu"] == "1"  # Qwen3-14B fp8 fits one L40S
    status = qwds.get("chat")["status"]
    assert status["readyReplicas"] == 2 and status["pools"][0]["gpuType"] == "L40S"
    assert status["pools"][0]["costPerHour"] == pytest.approx(2 * 1.861, rel=1e-3)
    out = kubectl("get", "qwd", "-n", qwds.ns).stdout
    header = out.splitlines()[0].split()
    assert header[:2] == ["NAME", "MODEL"] and "POOLS" in header and "READY" in header and "AGE" in header
    assert "L40S:2" in out and "2/2" in out and "Qwen/Qwen3-14B" in out
    # a world at rest: the owner reference is on every object it made
    for dep in deps.values():
        assert dep.metadata.owner_references[0].kind == "QwenDeployment"


def test_kubectl_scale_works_when_autoscaling_is_off(qwds: Qwd, kubectl: Any) -> None:
    qwds.create(resource("scaled", replicas=1, gpu_types=["L40S"]))
    wait_for("Ready", lambda: qwds.ready("scaled"))
    kubectl("scale", "qwd/scaled", "--replicas=3", "-n", qwds.ns)
    wait_for("3 ready pods", lambda: len(qwds.ready_pods("scaled")) == 3 and qwds.ready("scaled"))
    scale = qwds.custom.get_namespaced_custom_object_scale(GROUP, VERSION, qwds.ns, PLURAL, "scaled")
    assert scale["spec"]["replicas"] == 3 and scale["status"]["replicas"] == 3
    assert "serving.qwenops.io/deployment=scaled" in scale["status"]["selector"]


def test_exhausting_the_cheapest_type_spills_to_the_next(qwds: Qwd) -> None:
    # fp8 Qwen3-14B: L40S is the cheapest per request/s within the TTFT SLO and needs one GPU per
    # replica; the sandbox has 8 L40S GPUs (2 nodes of 4), so replicas 9 and 10 spill to A10G
    qwds.create(resource("spill", replicas=10, gpu_types=["A10G", "L40S"]))
    wait_for("Ready", lambda: qwds.ready("spill"), timeout=120)
    deps = qwds.deployments("spill")
    assert deps["spill-l40s"].spec.replicas == 8
    assert deps["spill-a10g"].spec.replicas == 2
    events = qwds.core.list_namespaced_event(qwds.ns, field_selector="involvedObject.name=spill").items
    assert sum(1 for e in events if e.reason == "PoolCreated") == 2


def test_changing_gpu_types_never_drops_below_old_ready_count(qwds: Qwd) -> None:
    qwds.create(resource("move", replicas=2, gpu_types=["L40S"]))
    wait_for("Ready", lambda: qwds.ready("move"))
    qwds.patch("move", {"spec": {"placement": {"gpuTypes": ["A100-80GB"]}}})
    lowest, deadline = 10, time.monotonic() + 120
    while time.monotonic() < deadline:
        lowest = min(lowest, len(qwds.ready_pods("move")))
        deps = qwds.deployments("move")
        if list(deps) == ["move-a100-80gb"] and qwds.ready("move"):
            break
        time.sleep(0.1)
    assert list(qwds.deployments("move")) == ["move-a100-80gb"]
    assert lowest >= 2, f"ready replicas dropped to {lowest} during the move"
    removed = [
        e
        for e in qwds.core.list_namespaced_event(qwds.ns, field_selector="involvedObject.name=move").items
        if e.reason == "PoolRemoved"
    ]
    assert removed and "L40S" in removed[0].message


def test_deleting_the_resource_removes_everything_it_owned(qwds: Qwd) -> None:
    qwds.create(resource("gone", replicas=1, gpu_types=["L40S"]))
    wait_for("Ready", lambda: qwds.ready("gone"))
    assert qwds.deployments("gone")
    qwds.custom.delete_namespaced_custom_object(GROUP, VERSION, qwds.ns, PLURAL, "gone")
    wait_for("deployments collected", lambda: not qwds.deployments("gone"))
    wait_for(
        "pods collected",
        lambda: not qwds.core.list_namespaced_pod(qwds.ns, label_selector="serving.qwenops.io/deployment=gone").items,
    )
    wait_for("service collected", lambda: not qwds.core.list_namespaced_service(qwds.ns).items)


def test_problems_admission_cannot_know_become_degraded(qwds: Qwd, operator_process: OperatorProcess) -> None:
    qwds.create(resource("nogpu", replicas=1, gpu_types=["A100-40GB"]))  # no such nodes in the sandbox
    cond = wait_for("Degraded", lambda: (c := qwds.condition("nogpu", "Degraded")) and c["status"] == "True" and c)
    assert cond["reason"] == "GPUTypeNotInCluster" and "A100-40GB" in cond["message"]
    bad = resource("badquant", replicas=1, gpu_types=["L40S"])
    bad["spec"]["model"]["name"] = "Qwen/Qwen2.5-7B-Instruct"
    bad["spec"]["runtime"]["maxTotalTokens"] = 200000  # beyond the model's context: admission can't know
    bad["spec"]["runtime"]["maxInputTokens"] = 100000
    qwds.create(bad)
    cond = wait_for("Degraded", lambda: (c := qwds.condition("badquant", "Degraded")) and c["status"] == "True" and c)
    assert cond["reason"] and "maxTotalTokens" in cond["message"]
    assert operator_process.alive()
    assert not qwds.deployments("badquant")


def test_killed_operator_restarts_without_duplicates(
    kube_api: Any, namespace: str, sandbox: Sandbox, qwen_crd: Path, tmp_path: Path
) -> None:
    qwds = Qwd(kube_api, namespace)
    op = OperatorProcess(sandbox.kubeconfig, tmp_path / "op1.log", extra=["-n", namespace]).start()
    qwds.create(resource("crash", replicas=3, gpu_types=["L40S", "A100-80GB"]))
    wait_for("first pool created", lambda: qwds.deployments("crash"), timeout=30, interval=0.05)
    op.kill()  # mid-reconcile: pools may be created but status not yet written
    op2 = OperatorProcess(sandbox.kubeconfig, tmp_path / "op2.log", extra=["-n", namespace]).start()
    try:
        wait_for("Ready after restart", lambda: qwds.ready("crash"), timeout=120)
        deps = qwds.deployments("crash")
        assert sum(d.spec.replicas for d in deps.values()) == 3
        assert len(deps) == len(set(deps)) and all(n.startswith("crash-") for n in deps)
        assert len(qwds.ready_pods("crash")) == 3
        # one client Service (over the router) and one over the servers, no duplicates
        assert len(qwds.core.list_namespaced_service(namespace).items) == 2
    finally:
        op2.stop()


def test_steady_state_makes_zero_writes(qwds: Qwd, sandbox: Sandbox) -> None:
    qwds.create(resource("calm", replicas=2, gpu_types=["L40S"]))
    wait_for("Ready", lambda: qwds.ready("calm"))
    # earlier tests' namespaces are deleted by the namespace controller (DELETEs on services,
    # deployments, events): wait until that cleanup is over, so only the operator could write
    wait_for(
        "no terminating namespaces",
        lambda: not [n for n in qwds.core.list_namespace().items if n.status.phase == "Terminating"],
        timeout=120,
    )
    time.sleep(3)  # let the last status round-trip settle
    before = _writes(sandbox)
    time.sleep(12)  # > two resync periods (5 s in tests)
    after = _writes(sandbox)
    diff = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
    assert diff == {}, f"writes while nothing changed: {diff}"


def _writes(sandbox: Sandbox) -> dict[str, float]:
    """Mutating requests served by the API server, per resource, from its own metrics."""
    text = sandbox.client().get_raw("/metrics").decode()
    out: dict[str, float] = {}
    watched = (
        'resource="qwendeployments"',
        'resource="deployments"',
        'resource="services"',
        'resource="poddisruptionbudgets"',
        'resource="events"',
    )
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        if not any(f'verb="{v}"' in line for v in ("POST", "PUT", "PATCH", "DELETE", "APPLY")):
            continue
        ours = 'resource="qwendeployments"' in line  # spec or status: only the operator writes either
        owned = any(w in line for w in watched) and 'subresource=""' in line
        if not (ours or owned):
            continue
        labels, value = line.rsplit(" ", 1)
        out[labels] = float(value)
    return out


def test_admission_rejects_invalid_resources_naming_the_field(kube_api: Any, namespace: str, qwen_crd: Path) -> None:
    custom = client.CustomObjectsApi(kube_api)
    cases: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
        ("engine enum", lambda s: s["runtime"].update(engine="triton"), "spec.runtime.engine"),
        ("quantization enum", lambda s: s["model"].update(quantization="int3"), "spec.model.quantization"),
        ("min > max", lambda s: s.update(scaling={"enabled": True, "minReplicas": 5, "maxReplicas": 2}), "minReplicas"),
        ("negative replicas", lambda s: s.update(replicas=-1), "spec.replicas"),
        ("unknown field", lambda s: s.update(replicaz=3), "replicaz"),
        ("bad quantity", lambda s: s["runtime"].update(resources={"memory": "lots"}), "spec.runtime.resources.memory"),
        ("tp not a power of two", lambda s: s["placement"].update(tensorParallel=3), "tensorParallel"),
        ("awq on TGI for Qwen3", lambda s: s["model"].update(quantization="awq"), "quantization"),
        (
            "input >= total tokens",
            lambda s: s["runtime"].update(maxInputTokens=20000, maxTotalTokens=16384),
            "maxInputTokens",
        ),
        ("registry scheme", lambda s: s["model"].update(registry="ftp://x/y"), "spec.model.registry"),
        ("empty gpu types", lambda s: s["placement"].update(gpuTypes=[]), "spec.placement.gpuTypes"),
        (
            "negative queue target",
            lambda s: s.update(scaling={"enabled": True, "targetQueueDepth": -1}),
            "spec.scaling.targetQueueDepth",
        ),
        (
            "zero concurrency",
            lambda s: s["runtime"].update(maxConcurrentRequests=0),
            "spec.runtime.maxConcurrentRequests",
        ),
        ("pvc cache without claim", lambda s: s["model"].update(cache={"type": "pvc"}), "claimName"),
        ("missing model", lambda s: s.pop("model"), "spec.model"),
    ]
    for label, mutate, field in cases:
        body = resource("bad")
        spec = copy.deepcopy(body["spec"])
        mutate(spec)
        body["spec"] = spec
        with pytest.raises(client.ApiException) as err:
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body, field_validation="Strict")
        assert err.value.status in (400, 422), label
        assert field in err.value.body, f"{label}: {err.value.body}"
    assert len(cases) >= 12


def test_operator_uses_the_kubeconfig_flag_not_the_environment(
    kube_api: Any, namespace: str, sandbox: Sandbox, qwen_crd: Path, tmp_path: Path
) -> None:
    qwds = Qwd(kube_api, namespace)
    op = OperatorProcess(
        sandbox.kubeconfig,
        tmp_path / "op.log",
        extra=["-n", namespace],
        env={"KUBECONFIG": str(tmp_path / "does-not-exist")},
    ).start()
    try:
        qwds.create(resource("flagged", replicas=1, gpu_types=["L40S"]))
        wait_for("Ready", lambda: qwds.ready("flagged"), timeout=60)
    finally:
        op.stop()
    assert "Cannot authenticate" not in op.log.read_text()

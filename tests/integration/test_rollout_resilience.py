"""Rollouts survive an operator crash, and a canary never hangs (real control plane, real S3).

The operator is SIGKILLed (no graceful shutdown) in the middle of a tag-move roll, in the
middle of a canary's smoke test, and while a canary that can get no GPU waits; a fresh
process must finish from cluster state alone (Deployments, their annotations and
creation timestamps, ``status.model``): the roll completes on the new version, ready
pool replicas never drop below the replica count (sampled every 50 ms, across the
crash), no duplicate Deployment or canary is left behind, and each canary decision is
taken exactly once.
"""

from __future__ import annotations

import http.server
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_rollout import (  # the harness the plain rollout tests use (sandbox fixtures come from the plugin)
    VERSION_ANNOTATION,
    CanaryEndpoints,
    Fleet,
    ReadyPoller,
    create,
    models,
    on_v1,
    push,
    sim_server,
    start_operator,
)

from qwen_operator.testing.s3 import S3Bucket
from qwen_operator.testing.wait import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.s3]
__all__ = ["models", "sim_server", "start_operator"]  # fixtures re-exported for this module


class UidSampler(threading.Thread):
    """Every Deployment uid of ``chat`` seen while running: a recreated or duplicate one shows up."""

    def __init__(self, fleet: Fleet) -> None:
        super().__init__(daemon=True)
        self.fleet = fleet
        self.seen: dict[str, set[str]] = {}
        self._stop_ev = threading.Event()

    def run(self) -> None:
        while not self._stop_ev.is_set():
            for name, dep in self.fleet.deployments().items():
                self.seen.setdefault(name, set()).add(dep.metadata.uid)
            time.sleep(0.1)

    def __enter__(self) -> UidSampler:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop_ev.set()
        self.join(5)


def reasons(fleet: Fleet) -> list[str]:
    return [r for _, r, _ in fleet.events()]


def pool_pods_on(fleet: Fleet, version: str) -> list[Any]:
    sel = "serving.qwenops.io/deployment=chat,app.kubernetes.io/component=server,!serving.qwenops.io/canary"
    pods = fleet.core.list_namespaced_pod(fleet.ns, label_selector=sel).items
    return [p for p in pods if (p.metadata.annotations or {}).get(VERSION_ANNOTATION) == version]


def test_operator_killed_mid_rollout_resumes_from_cluster_state(
    kube_api: Any, namespace: str, s3_bucket: S3Bucket, models: dict[str, Path], start_operator: Any
) -> None:
    v1, op, fleet = on_v1(kube_api, namespace, s3_bucket, models, start_operator, canary_replicas=0, replicas=3)
    wait_for("Ready", lambda: fleet.condition("Ready").get("status") == "True")

    with ReadyPoller(fleet) as poller, UidSampler(fleet) as uids:
        v2 = push(s3_bucket, models["v2"], "v2")
        wait_for("a surge pod on v2", lambda: pool_pods_on(fleet, v2), timeout=60, interval=0.05)
        assert not fleet.synced_on(v2), "the roll finished before the crash: nothing was tested"
        op.kill()
        t_kill = time.monotonic()
        model_at_kill = fleet.model()
        op2 = start_operator()
        wait_for("ModelSynced on v2 after the restart", lambda: fleet.synced_on(v2), timeout=120)
        t_done = time.monotonic()
        time.sleep(0.5)
    assert not op.alive() and op2.alive(), op2.tail()
    assert model_at_kill["targetVersion"] == v2 and model_at_kill["currentVersion"] == v1
    assert poller.minimum >= 3, f"ready pool replicas dropped to {poller.minimum} across the crash"
    assert list(fleet.deployments()) == ["chat-a10g"] and len(uids.seen["chat-a10g"]) == 1, uids.seen
    pods = fleet.ready_pods()
    assert len(pods) == 3 and {p.metadata.annotations[VERSION_ANNOTATION] for p in pods} == {v2}
    model = fleet.model()
    assert (model["currentVersion"], model["targetVersion"]) == (v2, v2) and "failedVersion" not in model
    synced = fleet.condition("ModelSynced")
    assert (synced["status"], synced["reason"]) == ("True", "Synced")
    wait_for("Ready after the roll", lambda: fleet.condition("Ready").get("status") == "True", timeout=30)
    assert fleet.condition("Degraded")["status"] == "False"
    seen = reasons(fleet)
    assert seen.count("TargetVersionChanged") == 2 and seen.count("ModelSynced") == 2, seen  # v1, v2: once each
    print(
        f"\nkilled mid-roll (target {model_at_kill['targetVersion'][:19]}), restarted: ModelSynced "
        f"{t_done - t_kill:.1f}s after the kill; min ready {poller.minimum}/3 over {len(poller.samples)} samples"
    )


class _Gate(http.server.BaseHTTPRequestHandler):
    """Forwards to a simulated replica, holding every request until the gate opens."""

    upstream = ""
    url = ""
    opened = threading.Event()
    hits: list[float] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        _Gate.hits.append(time.monotonic())
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        _Gate.opened.wait(30)
        req = urllib.request.Request(
            _Gate.upstream + self.path, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                data, code = resp.read(), resp.status
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass  # the operator that asked was killed meanwhile

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def gated_server(sim_server: str) -> Iterator[type[_Gate]]:
    _Gate.upstream, _Gate.hits = sim_server, []
    _Gate.opened = threading.Event()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Gate)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Gate.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield _Gate
    finally:
        _Gate.opened.set()
        server.shutdown()


def test_operator_killed_mid_smoke_test_tests_again_and_promotes_once(
    kube_api: Any, namespace: str, s3_bucket: S3Bucket, models: dict[str, Path], start_operator: Any, gated_server: Any
) -> None:
    v1, op, fleet = on_v1(kube_api, namespace, s3_bucket, models, start_operator, canary_replicas=1)
    with CanaryEndpoints(fleet) as endpoints, ReadyPoller(fleet) as poller, UidSampler(fleet) as uids:
        endpoints.url = gated_server.url
        v2 = push(s3_bucket, models["v2"], "v2")
        wait_for("the smoke test in flight", lambda: gated_server.hits, timeout=60, interval=0.05)
        op.kill()  # mid-request: the decision was never taken
        model_at_kill = fleet.model()
        assert model_at_kill["canary"] == {"version": v2, "phase": "Testing"}, model_at_kill
        canary_uid = fleet.deployments()["chat-a10g-canary"].metadata.uid
        gated_server.opened.set()
        op2 = start_operator()
        wait_for("ModelSynced on v2 after the restart", lambda: fleet.synced_on(v2), timeout=120)
        time.sleep(0.5)
    assert op2.alive(), op2.tail()
    assert len(gated_server.hits) >= 2  # tested again by the new process, not decided from a guess
    assert poller.minimum >= 2, f"ready pool replicas dropped to {poller.minimum}"
    assert uids.seen.get("chat-a10g-canary") == {canary_uid}, uids.seen  # the same canary, never recreated
    assert len(uids.seen["chat-a10g"]) == 1 and list(fleet.deployments()) == ["chat-a10g"]
    model = fleet.model()
    assert model["canary"]["phase"] == "Passed" and model["currentVersion"] == v2 and "failedVersion" not in model
    assert {p.metadata.annotations[VERSION_ANNOTATION] for p in fleet.ready_pods()} == {v2}
    seen = reasons(fleet)
    assert seen.count("CanaryStarted") == 1 and seen.count("CanaryPassed") == 1, seen
    assert "CanaryFailed" not in seen and "CanaryTimeout" not in seen
    assert fleet.condition("Degraded")["status"] == "False"


def test_canary_without_a_gpu_times_out_across_a_restart_and_is_not_retried(
    kube_api: Any, namespace: str, s3_bucket: S3Bucket, models: dict[str, Path], start_operator: Any
) -> None:
    # four replicas hold every A10G GPU of the sandbox and A10G is the only allowed type
    v1, op, fleet = on_v1(
        kube_api, namespace, s3_bucket, models, start_operator, canary_replicas=1, replicas=4, canary_timeout=15
    )
    wait_for("4 ready", lambda: len(fleet.ready_pods()) == 4)
    with ReadyPoller(fleet) as poller:
        v2 = push(s3_bucket, models["v2"], "v2")
        canary = wait_for("a canary Deployment", lambda: fleet.deployments().get("chat-a10g-canary"), timeout=60)
        op.kill()  # the deadline passes while no operator runs
        created = canary.metadata.creation_timestamp.timestamp()
        time.sleep(max(0.0, created + 16 - time.time()))
        assert "chat-a10g-canary" in fleet.deployments()
        op2 = start_operator()
        degraded = wait_for(
            "Degraded=CanaryTimeout",
            lambda: (c := fleet.condition("Degraded")).get("reason") == "CanaryTimeout" and c,
            timeout=60,
        )
        wait_for("the canary removed", lambda: "chat-a10g-canary" not in fleet.deployments(), timeout=30)
        t_decided = time.time()
        time.sleep(3)  # several watcher intervals and reconciles: not retried, nothing rewritten
    assert op2.alive(), op2.tail()
    assert degraded["status"] == "True" and "Pending" in degraded["message"] and "A10G" in degraded["message"]
    assert t_decided - created < 15 + 60
    model = fleet.model()
    assert (model["currentVersion"], model["targetVersion"], model["failedVersion"]) == (v1, v2, v2)
    assert model["canary"]["phase"] == "Failed" and "canaryTimeoutSeconds=15" in model["canary"]["message"]
    synced = fleet.condition("ModelSynced")
    assert (synced["status"], synced["reason"]) == ("False", "CanaryTimeout")
    assert list(fleet.deployments()) == ["chat-a10g"]
    assert poller.minimum >= 4, f"ready pool replicas dropped to {poller.minimum}"
    assert {p.metadata.annotations[VERSION_ANNOTATION] for p in fleet.ready_pods()} == {v1}
    warnings = [(r, m) for t, r, m in fleet.events() if t == "Warning"]
    assert [r for r, _ in warnings] == ["CanaryTimeout"], warnings
    assert "Pending" in warnings[0][1]


def occupy_a_node(fleet: Fleet, product: str, gpus: int) -> None:
    """Another tenant's pod holding ``gpus`` GPUs of one ``product`` node (not a pod of ``chat``)."""
    fleet.core.create_namespaced_pod(
        fleet.ns,
        {
            "metadata": {"name": "other-tenant"},
            "spec": {
                "nodeSelector": {"nvidia.com/gpu.product": product},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "containers": [{"name": "c", "image": "x", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}],
            },
        },
    )
    wait_for(
        "the other tenant's pod bound", lambda: fleet.core.read_namespaced_pod("other-tenant", fleet.ns).spec.node_name
    )


def test_full_pool_canary_borrows_a_gpu_type_and_a_killed_borrowed_roll_finishes(
    kube_api: Any, namespace: str, s3_bucket: S3Bucket, models: dict[str, Path], start_operator: Any, sim_server: str
) -> None:
    v1 = push(s3_bucket, models["v1"], "v1")
    op = start_operator()
    fleet = Fleet(kube_api, namespace)
    # L40S fills first (cheapest per request/s within the SLO); with one of the sandbox's two 4-GPU
    # L40S nodes taken by another tenant, four replicas hold every L40S GPU left
    occupy_a_node(fleet, "NVIDIA-L40S", 4)
    create(fleet, s3_bucket, canary_replicas=1, replicas=4, gpu_types=("A10G", "L40S"))
    wait_for("ModelSynced on v1", lambda: fleet.synced_on(v1))
    wait_for("4 ready on L40S", lambda: len(fleet.ready_pods()) == 4 and list(fleet.deployments()) == ["chat-l40s"])
    with CanaryEndpoints(fleet) as endpoints, ReadyPoller(fleet) as poller, UidSampler(fleet) as uids:
        endpoints.url = sim_server
        v2 = push(s3_bucket, models["v2"], "v2")
        # L40S is full: the canary runs on A10G instead of waiting for a GPU
        wait_for("the canary on A10G", lambda: "chat-a10g-canary" in fleet.deployments(), timeout=60)
        # promoted; the full L40S pool rolls one at a time with one replica borrowed on A10G
        wait_for("an L40S pod on v2", lambda: pool_pods_on(fleet, v2) and "chat-a10g" in fleet.deployments(), 90)
        assert not fleet.synced_on(v2), "the roll finished before the crash: nothing was tested"
        op.kill()
        op2 = start_operator()
        wait_for("ModelSynced on v2 after the restart", lambda: fleet.synced_on(v2), timeout=120)
        wait_for("the borrowed replica returned", lambda: list(fleet.deployments()) == ["chat-l40s"], timeout=60)
        time.sleep(0.5)
    assert op2.alive(), op2.tail()
    assert "chat-l40s-canary" not in uids.seen and len(uids.seen["chat-a10g-canary"]) == 1, uids.seen
    assert len(uids.seen["chat-l40s"]) == 1 and len(uids.seen["chat-a10g"]) == 1, uids.seen
    assert poller.minimum >= 4, f"ready pool replicas dropped to {poller.minimum} across the crash"
    pods = fleet.ready_pods()
    assert len(pods) == 4 and {p.metadata.annotations[VERSION_ANNOTATION] for p in pods} == {v2}
    dep = fleet.deployments()["chat-l40s"]
    assert (dep.spec.strategy.rolling_update.max_surge, dep.spec.strategy.rolling_update.max_unavailable) == (1, 0)
    seen = reasons(fleet)
    assert seen.count("CanaryPassed") == 1 and "CanaryFailed" not in seen and "CanaryTimeout" not in seen, seen
    assert fleet.model()["canary"]["phase"] == "Passed"

"""End to end: a new model version's canary takes exactly its traffic share, through the router.

The user's path, start to finish: ``qwenctl model push`` moves the ``stable`` tag in the real S3
server; the operator's version watcher resolves it, creates the canary pod, smoke-tests it and
marks it ``Passed``; every router pod (``qwenctl router`` started with the rendered Deployment's
command, its own ServiceAccount token, watching the sandbox API server) then sends
``routing.canaryTrafficPercent`` of the requests to the canary while the pools roll, and none
once it is removed. Load comes from the load generator through the router pods, as a client
through the ``chat`` Service would.

SIMULATED: the engines (one simulated TGI per server and canary pod, the replica model). The one
seam is how a pod is dialled (``sandbox.qwenops.io/dial``, written by the simulated fleet once a
pod's server listens): the routers and the operator's smoke test both dial by it
(``QWEN_ROUTER_DIAL=annotation``).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from qwen_operator.controller.rollout import LABEL_CANARY
from qwen_operator.modelsync.registry import Registry
from qwen_operator.modelsync.synthetic import Checkpoint, Shape
from qwen_operator.sandbox.cluster import Sandbox
from qwen_operator.sandbox.stages import READY_AFTER_ANNOTATION
from qwen_operator.sim.fleet_bridge import FleetBridge
from qwen_operator.sim.loadgen import LoadGenerator, Outcome, Phase
from qwen_operator.sim.trace import default_trace_path, load_azure_csv
from qwen_operator.testing.operator import OperatorProcess
from qwen_operator.testing.s3 import S3Bucket

pytestmark = [pytest.mark.cluster, pytest.mark.s3, pytest.mark.timeout(360)]

GROUP, VERSION, PLURAL = "serving.qwenops.io", "v1alpha1", "qwendeployments"
NAME = "chat"
SHAPE = Shape().scaled(0.05, layers=4, vocab=4096)  # ~11 MB in 4 shards
QWENCTL = [sys.executable, "-c", "from qwen_operator.cli import main; raise SystemExit(main())"]
CANARY_PERCENT = 20  # spec.routing.canaryTrafficPercent
RATE = 5.0  # req/s, well within 2 L40S replicas (simulated)
READY_AFTER = 4  # modelled cold start, seconds: the roll takes a few of them, the share is sampled meanwhile


def push(bucket: S3Bucket, src: Path, version: str) -> str:
    """``qwenctl model push --tag stable``: what moves the tag the resource follows."""
    cmd = [*QWENCTL, "model", "push", str(src), "--registry", bucket.registry_url(), "--version", version]
    r = subprocess.run([*cmd, "--tag", "stable"], env=bucket.env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return Registry(bucket.registry_url()).resolve(tag="stable")


@pytest.fixture
def operator(sandbox: Sandbox, qwen_crd: Path, namespace: str, s3_bucket: S3Bucket, tmp_path: Path) -> Iterator[None]:
    config = tmp_path / "operator.yaml"
    annotations = {READY_AFTER_ANNOTATION: f"{READY_AFTER}s"}
    config.write_text(yaml.safe_dump({"podAnnotations": annotations, "modelSync": {"intervalSeconds": 1}}))
    op = OperatorProcess(
        sandbox.kubeconfig,
        tmp_path / "operator.log",
        extra=["--namespace", namespace, "--config", str(config)],
        env=s3_bucket.server.env(),
    ).start()
    try:
        yield
    finally:
        op.stop()
        print(f"--- operator log tail ---\n{op.tail(40)}")


def body(bucket: S3Bucket) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "QwenDeployment",
        "metadata": {"name": NAME},
        "spec": {
            "model": {"name": "Qwen/Qwen3-14B", "registry": bucket.registry_url(), "version": "stable"},
            "placement": {"gpuTypes": ["L40S"]},
            "replicas": 2,
            "scaling": {"enabled": False},
            "rollout": {"maxSurge": 1, "canaryReplicas": 1},
            "routing": {"canaryTrafficPercent": CANARY_PERCENT},
        },
    }


def test_a_passed_canary_takes_its_share_through_the_router(
    kube_api: Any, namespace: str, s3_bucket: S3Bucket, operator: None, tmp_path: Path
) -> None:
    base = Checkpoint(SHAPE)
    base.write(tmp_path / "v1")
    base.last_layers(1).write(tmp_path / "v2")  # a fine-tune: the last layer differs
    v1 = push(s3_bucket, tmp_path / "v1", "v1")
    asyncio.run(scenario(kube_api, namespace, s3_bucket, tmp_path, v1))


def canary_share(outcomes: list[Outcome], canaries: set[str], start: float, end: float) -> tuple[int, int]:
    """(requests answered by a canary pod, all requests answered) of those *sent* between ``start`` and
    ``end``: the router picks when a request arrives; one sent to the canary just before its removal
    may finish after it (the pod drains)."""
    window = [o for o in outcomes if o.status == 200 and start <= o.at - o.seconds <= end]
    return sum(1 for o in window if o.endpoint in canaries), len(window)


async def scenario(api: Any, ns: str, bucket: S3Bucket, tmp_path: Path, v1: str) -> None:
    crd = client.CustomObjectsApi(api)
    core = client.CoreV1Api(api)
    bridge = FleetBridge(api, ns, NAME, workdir=tmp_path / "routers", log=lambda _m: None)
    await bridge.start()
    load: LoadGenerator | None = None
    phases: list[tuple[float, str, str | None]] = []  # (seen at, canary phase, currentVersion)
    canaries: set[str] = set()

    def model() -> dict[str, Any]:
        obj = crd.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, NAME)
        return dict((obj.get("status") or {}).get("model") or {})

    async def watch() -> None:
        while True:
            m = await asyncio.to_thread(model)
            phase = (m.get("canary") or {}).get("phase", "")
            if not phases or phases[-1][1:] != (phase, m.get("currentVersion")):
                phases.append((time.monotonic(), phase, m.get("currentVersion")))
            pods = await asyncio.to_thread(core.list_namespaced_pod, ns, label_selector=f"{LABEL_CANARY}=true")
            canaries.update(p.metadata.name for p in pods.items)
            await asyncio.sleep(0.2)

    async def until(what: str, check: Any, within: float) -> None:
        deadline = time.monotonic() + within
        while not check():
            assert time.monotonic() < deadline, f"timed out after {within:.0f}s waiting for {what}; {phases}"
            await asyncio.sleep(0.2)

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        await asyncio.to_thread(crd.create_namespaced_custom_object, GROUP, VERSION, ns, PLURAL, body(bucket))
        await until("2 Ready replicas on v1", lambda: sum(bridge.counts()[1].values()) == 2, 90)
        await until("a Ready router pod", bridge.routers_ready, 60)
        await until("v1 current", lambda: bool(phases) and phases[-1][2] == v1, 60)
        load = await LoadGenerator(
            bridge.target,
            [Phase("steady", 240, RATE)],
            load_azure_csv(default_trace_path()),
            seed=11,
            max_prompt_tokens=512,
            max_output_tokens=32,
            on_outcome=bridge.record,
            log=lambda _m: None,
        ).start()
        await asyncio.sleep(3)

        v2 = await asyncio.to_thread(push, bucket, tmp_path / "v2", "v2")
        await until("the canary Passed", lambda: any(p == "Passed" for _, p, _ in phases), 90)
        passed = next(t for t, p, _ in phases if p == "Passed")
        await until("every pool on v2", lambda: phases[-1][2] == v2, 120)
        synced = phases[-1][0]
        await asyncio.sleep(3)  # traffic after the canary's removal
        load.stop_sending()
        stats = await load.wait(drain_seconds=30)
        counters = await bridge.scrape_routers()
    finally:
        watcher.cancel()
        if load is not None and not load.done_sending:
            load.stop_sending()
            await load.wait(drain_seconds=10)
        await bridge.stop()
        print(f"canary phases (s, phase, currentVersion): {[(round(t, 1), p, c) for t, p, c in phases]}")

    # every request answered, each by a router exactly once
    assert stats.errors == 0 and stats.lost == 0 and stats.ok == stats.sent, (stats.summary(), stats.error_samples)
    assert sum(counters.router_by_code.values()) == stats.sent, counters.router_by_code
    assert len(canaries) == 1, canaries  # one canary pod, created for v2
    outcomes = list(load.outcomes)
    # until the smoke test passed, the canary takes no client request (the smoke test dials it directly)
    before, seen_before = canary_share(outcomes, canaries, 0.0, passed - 1.0)
    assert before == 0 and seen_before > 0, (before, seen_before)
    # passed, the pools still rolling: each router sends exactly every 5th request (20%) to the canary,
    # so over any run of its requests it is less than one request off; the routers share the load
    during, seen = canary_share(outcomes, canaries, passed + 1.0, synced - 1.0)
    assert seen >= 20, f"only {seen} requests while the canary served: the roll was too short to judge"
    assert abs(during - seen * CANARY_PERCENT / 100) < counters.routers_started, (during, seen, counters)
    # every pool on v2, the canary removed: it answers nothing more
    after, seen_after = canary_share(outcomes, canaries, synced + 1.0, float("inf"))
    assert after == 0 and seen_after > 0, (after, seen_after)
    print(
        f"\n=== SIMULATED canary through the router: {during} of {seen} requests ({during / seen:.0%}) went to the "
        f"passed canary while the pools rolled (canaryTrafficPercent {CANARY_PERCENT}); none of {seen_before} "
        f"before it passed, none of {seen_after} after every pool served v2; {stats.summary()} ==="
    )

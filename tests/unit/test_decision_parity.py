"""Parity: the controller and ``qwenctl simulate`` take the same autoscaling decisions.

An observation stream is recorded from a short simulator run (a spike that spills from the
L40S pool to A10G and back), then replayed through the controller's evaluation path as the
controller would receive it: pool Deployments, GPU nodes and pods from the cluster, and
queue / in-flight / P95 / request rate as ``PrometheusSource.fetch`` returns them. Tick by
tick the per-pool counts and the decision text must be identical, and so must what the
controller writes to ``status.autoscaler.desiredPools``. Then the issue's example: with
L40S full and 1.5 req/s more needed, the shipped controller adds 2x A10G (2.0 $/h), not the
2x A100 (10.2 $/h) the planner alone would have chosen for the same total, and the
reconciler sizes the pool Deployments to exactly that.
"""

from __future__ import annotations

import asyncio
import copy
import random
from dataclasses import replace
from typing import Any

import pytest

from qwen_operator.api.spec import QwenDeploymentSpec
from qwen_operator.autoscale import loop
from qwen_operator.autoscale.loop import Observation
from qwen_operator.autoscale.policy import Decision, History, Targets
from qwen_operator.autoscale.prometheus import FleetSignals
from qwen_operator.catalog import load_catalog
from qwen_operator.controller.autoscaler import (
    Autoscaler,
    AutoscalerState,
    desired_pools,
    evaluate,
    pool_estimates,
    pool_states,
    targets_for,
)
from qwen_operator.controller.reconcile import GPU_TYPE_ANNOTATION, Observed, compute
from qwen_operator.planner.plan import plan
from qwen_operator.sim import simulate as sim
from qwen_operator.sim.trace import Trace, TraceRow

CATALOG = load_catalog(None)
ROWS = [TraceRow(i * 1.0, 300 + (i * 37) % 900, 40 + (i * 13) % 160) for i in range(400)]
# one L40S GPU: the spike must spill onto the A10G pool, so the decisions are per pool
CFG = sim.SimConfig(gpus={"L40S": 1, "A10G": 6}, seed=1)


def spike_trace(minutes: int = 30) -> Trace:
    """1 req/s, 9 req/s from minute 8 to 16, then 1 req/s again."""
    rng = random.Random(5)
    tr = Trace("spike", "test")
    t = 0.0
    while True:
        t += rng.expovariate(9.0 if 8 * 60 <= t < 16 * 60 else 1.0)
        if t >= minutes * 60:
            break
        row = ROWS[rng.randrange(len(ROWS))]
        tr.arrivals.append(t)
        tr.prompt_tokens.append(row.prompt_tokens)
        tr.output_tokens.append(row.output_tokens)
    tr.duration = minutes * 60.0
    return tr


def qwd(gpu_types: list[str], max_replicas: int, status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "serving.qwenops.io/v1alpha1",
        "kind": "QwenDeployment",
        "metadata": {"name": "chat", "namespace": "llm", "uid": "u-1", "generation": 1},
        "spec": {
            "model": {"name": "Qwen/Qwen3-14B", "registry": "s3://models/qwen3-14b", "quantization": "fp8"},
            "placement": {"gpuTypes": gpu_types},
            "scaling": {
                "enabled": True,
                "minReplicas": CFG.min_replicas,
                "maxReplicas": max_replicas,
                "targetQueueDepth": CFG.target_queue_depth,
                "p95LatencySeconds": CFG.slo_seconds,
                "scaleDownDelaySeconds": int(CFG.scale_down_delay_seconds),
            },
        },
        "status": status or {},
    }


def node(gpu_type: str, gpus: int) -> dict[str, Any]:
    return {
        "metadata": {"name": f"node-{gpu_type.lower()}", "labels": {"nvidia.com/gpu.product": _product(gpu_type)}},
        "spec": {},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def _product(gpu_type: str) -> str:
    return CATALOG.gpus[gpu_type].product_label


def gpu_pod(gpu_type: str, i: int, gpus: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"name": f"chat-{gpu_type.lower()}-{i}", "namespace": "llm"},
        "spec": {
            "nodeName": f"node-{gpu_type.lower()}",
            "containers": [{"resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}],
        },
        "status": {"phase": "Running"},
    }


def pool_deployment(gpu_type: str, replicas: int, ready: int) -> dict[str, Any]:
    return {
        "metadata": {"name": f"chat-{gpu_type.lower()}", "annotations": {GPU_TYPE_ANNOTATION: gpu_type}},
        "spec": {"replicas": replicas},
        "status": {"replicas": replicas, "readyReplicas": ready},
    }


def cluster_view(obs: Observation, limits: dict[str, int], spec_qwd: dict[str, Any]) -> Observed:
    """The cluster the controller would read for ``obs``: one node per GPU type with its GPUs, a pool
    Deployment per pool (spec.replicas = ready + starting, readyReplicas = ready), and a GPU pod for every
    GPU in use (pools' replicas and replicas still draining hold theirs)."""
    deployments, pods = [], []
    for p in obs.pools:
        if p.replicas:
            deployments.append(pool_deployment(p.gpu_type, p.replicas, p.ready))
        used = limits[p.gpu_type] - p.free  # shards are 1 for Qwen3-14B fp8 on these GPUs
        pods += [gpu_pod(p.gpu_type, i) for i in range(used)]
    return Observed(qwd=spec_qwd, deployments=deployments, nodes=[node(t, n) for t, n in limits.items()], pods=pods)


def prometheus_view(obs: Observation) -> FleetSignals:
    """What ``PrometheusSource.fetch`` returns for ``obs``: the queue gauge per pod and its sum, the
    running-batch gauge (in flight minus waiting), P95 with NaN as None, the request counter's rate."""
    queue = float(obs.queue_depth or 0)
    running = None if obs.in_flight is None else float(obs.in_flight) - queue
    return FleetSignals(
        queue_per_pod={"chat-l40s-0": queue},
        queue=queue,
        in_flight=running,
        p95_seconds=obs.p95_seconds,
        request_rate=obs.request_rate,
    )


@pytest.fixture(scope="module")
def recorded() -> tuple[dict[str, Any], list[tuple[Observation, Decision | None]]]:
    profiles, _ = sim.build_profiles(ROWS, CFG)
    stream: list[tuple[Observation, Decision | None]] = []
    sim.simulate_policy("qwen", spike_trace(), profiles, CFG, record=lambda o, d: stream.append((o, d)))
    return profiles, stream


def test_the_recorded_stream_exercises_scale_up_spill_over_and_scale_down(recorded: Any) -> None:
    _, stream = recorded
    kinds = {d.kind for _, d in stream if d is not None}
    assert {"scale-down", "hold"} <= kinds and kinds & {"scale-up", "panic"}, kinds
    assert any(o.request_rate and o.in_flight for o, _ in stream)  # every signal is live
    assert any(d is not None and d.desired.get("A10G", 0) > 0 for _, d in stream)  # spilled past L40S


def test_controller_replay_takes_the_simulators_decisions_tick_by_tick(recorded: Any) -> None:
    profiles, stream = recorded
    limits = dict(CFG.gpus)
    spec_qwd = qwd(list(limits), max_replicas=sum(limits.values()))
    spec = QwenDeploymentSpec.model_validate(spec_qwd["spec"])
    # the same targets the simulator gave its policy
    assert targets_for(spec) == Targets(
        min_replicas=CFG.min_replicas,
        max_replicas=sum(limits.values()),
        target_queue_depth=CFG.target_queue_depth,
        p95_latency_seconds=CFG.slo_seconds,
        scale_down_delay_seconds=CFG.scale_down_delay_seconds,
        utilisation=CFG.utilisation,
    )
    # pool worth is an estimate, not an observation: both sides use the simulator's calibrated one here
    estimates = sim.pool_estimates(profiles, CFG)
    state = AutoscalerState()
    previous: int | None = None
    for tick, (obs, simulated) in enumerate(stream):
        cluster = cluster_view(obs, limits, spec_qwd)
        pools = pool_states(cluster, spec, CATALOG, estimates)
        assert pools == list(obs.pools), f"tick {tick}: the cluster view differs from the simulated fleet"
        decision, condition = evaluate(obs.now, pools, prometheus_view(obs), targets_for(spec), state, previous)
        assert simulated is not None and decision is not None
        assert decision.desired == simulated.desired, f"tick {tick} t={obs.now}: {decision.reason}"
        assert decision.reason == simulated.reason and decision.kind == simulated.kind, f"tick {tick}"
        assert condition.status is True and decision.reason in condition.message
        written = desired_pools(decision, {})
        assert {p["gpuType"]: p["replicas"] for p in written or []} == {
            k: n for k, n in simulated.desired.items() if n > 0
        }
        previous = decision.total


# --- the issue's example: L40S full, 1.5 req/s more needed ----------------------------------------

EXAMPLE_LIMITS = {"L40S": 1, "A10G": 4, "A100-80GB": 2}
EXAMPLE_TYPES = ["A10G", "L40S", "A100-80GB"]


DIGEST = "sha256:" + "a" * 64
RESOLVED = {"currentVersion": DIGEST, "targetVersion": DIGEST}  # a resolved, fully rolled model version


def _example() -> tuple[Observed, FleetSignals, float]:
    """One Ready L40S replica as the reconciler created it, holding the only L40S GPU."""
    spec_qwd = qwd(EXAMPLE_TYPES, max_replicas=6, status={"autoscaler": {"desiredReplicas": 1}, "model": RESOLVED})
    spec = QwenDeploymentSpec.model_validate(spec_qwd["spec"])
    l40s = next(e for e in pool_estimates(spec, CATALOG, {"L40S": 1}) if e.gpu_type == "L40S")
    nodes = [node(t, n) for t, n in EXAMPLE_LIMITS.items()]
    created = compute(Observed(qwd=spec_qwd, nodes=nodes), CATALOG).apply
    assert _pool_sizes(created) == {"L40S": 1}
    live = [_settled(m) for m in created]
    cluster = Observed(
        qwd=spec_qwd,
        deployments=[m for m in live if m["kind"] == "Deployment"],
        others=[m for m in live if m["kind"] != "Deployment"],
        nodes=nodes,
        pods=[gpu_pod("L40S", 0)],  # the one L40S GPU is taken: the pool is full
    )
    # the request rate the utilisation target turns into a need of one L40S + 1.5 req/s
    rate = (l40s.throughput + 1.5) * targets_for(spec).utilisation
    return cluster, FleetSignals(queue=0.0, in_flight=20.0, p95_seconds=0.3, request_rate=rate), l40s.throughput


def test_issue_example_controller_and_simulator_add_two_a10g_not_two_a100() -> None:
    cluster, fleet, _ = _example()
    spec = QwenDeploymentSpec.model_validate(cluster.qwd["spec"])
    pools = pool_states(cluster, spec, CATALOG)
    assert {p.gpu_type: p.free for p in pools} == {"L40S": 0, "A10G": 4, "A100-80GB": 2}
    controller, _ = evaluate(100.0, pools, fleet, targets_for(spec), AutoscalerState(), 1)
    # the simulator's path: the same observation built from its fleet (sim.observe) into the same function
    obs = Observation(100.0, tuple(pools), 0, 0.3, 20.0, fleet.request_rate)
    simulated = loop.evaluate(obs, targets_for(spec), History(), 1)
    assert controller is not None and simulated is not None
    assert controller.desired == simulated.desired == {"L40S": 1, "A10G": 2, "A100-80GB": 0}
    assert controller.reason == simulated.reason and controller.reason.startswith("+2 A10G: ")
    assert "rate " in controller.reason  # the request-rate signal the controller now passes
    added = {p.gpu_type: p.cost_per_hour for p in pools}
    assert 2 * added["A10G"] == pytest.approx(2.012) and 2 * added["A100-80GB"] == pytest.approx(10.24)
    # what the old controller did with the same total: the planner fills by its rank, A100 before A10G
    free = {"A10G": [4], "A100-80GB": [2], "L40S": [0]}
    planner_only = plan(spec, CATALOG, replicas=3, free_gpus=free, current={"L40S": 1})
    assert planner_only.pool_summary == "L40S:1,A100-80GB:2"


class FakeKube:
    def __init__(self) -> None:
        self.status: dict[str, Any] = {}
        self.events: list[tuple[str, str, str]] = []

    def apply_status(self, ns: str, name: str, status: dict[str, Any], manager: str) -> None:
        self.status = status

    def event(self, obj: Any, kind: str, reason: str, message: str) -> None:
        self.events.append((kind, reason, message))


def _settled(manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` as the API server holds it once applied and, for a Deployment, rolled out and Ready."""
    live = copy.deepcopy(manifest)
    live["metadata"]["generation"] = 1
    if live["kind"] == "Deployment":
        n = live["spec"]["replicas"]
        live["status"] = {"observedGeneration": 1, "replicas": n, "updatedReplicas": n, "readyReplicas": n}
    return live


def _pool_sizes(manifests: list[dict[str, Any]]) -> dict[str, int]:
    return {
        m["metadata"]["annotations"][GPU_TYPE_ANNOTATION]: m["spec"]["replicas"]
        for m in manifests
        if m["kind"] == "Deployment" and GPU_TYPE_ANNOTATION in (m["metadata"].get("annotations") or {})
    }


def test_issue_example_status_carries_the_pools_and_the_reconciler_sizes_them() -> None:
    cluster, fleet, _ = _example()
    kube = FakeKube()
    scaler = Autoscaler(kube, CATALOG, lambda *_: fleet, lambda key: cluster, "http://prometheus")
    asyncio.run(scaler.tick(("llm", "chat")))
    a = kube.status["autoscaler"]
    assert a["desiredReplicas"] == 3
    assert a["desiredPools"] == [{"gpuType": "A10G", "replicas": 2}, {"gpuType": "L40S", "replicas": 1}]
    assert kube.events[0][1] == "ScaledUp" and "+2 A10G" in kube.events[0][2]
    # the reconciler sizes each pool from desiredPools: A10G gets the two, no A100 pool appears
    qwd_now = {**cluster.qwd, "status": {"autoscaler": a, "model": RESOLVED}}
    out = compute(replace(cluster, qwd=qwd_now), CATALOG)
    assert _pool_sizes(out.apply) == {"A10G": 2}  # the L40S pool stays as it is, no A100 pool appears
    assert out.plan is not None and out.plan.pool_summary == "L40S:1,A10G:2"
    # ... and when the A10G GPUs were taken meanwhile, the planner's spill-over places what no longer fits
    taken = [*cluster.pods, *(gpu_pod("A10G", 10 + i) for i in range(3))]
    out = compute(replace(cluster, qwd=qwd_now, pods=taken), CATALOG)
    assert _pool_sizes(out.apply) == {"A10G": 1, "A100-80GB": 1}

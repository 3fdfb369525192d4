"""The autoscaler's evaluation: hold without metrics, no scale-down right after a restart."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from qwen_operator.api.spec import QwenDeploymentSpec
from qwen_operator.autoscale.policy import Floor, PoolState, Targets
from qwen_operator.autoscale.prewarm import ScheduleProblem
from qwen_operator.autoscale.prometheus import FleetSignals
from qwen_operator.catalog import load_catalog
from qwen_operator.controller.autoscaler import Autoscaler, AutoscalerState, cold_start_seconds, evaluate, prewarm_lead
from qwen_operator.controller.reconcile import GPU_TYPE_ANNOTATION, Observed
from qwen_operator.render.names import pool_selector

POOLS = [PoolState("A10G", cost_per_hour=1.006, throughput=1.0, ready=3, starting=0, free=4)]
TARGETS = Targets(
    min_replicas=1, max_replicas=8, target_queue_depth=4, p95_latency_seconds=1.2, scale_down_delay_seconds=300
)


def test_prometheus_down_holds_and_says_why() -> None:
    state = AutoscalerState()
    decision, condition = evaluate(
        0.0, POOLS, FleetSignals(error="Prometheus at x could not be queried"), TARGETS, state, previous_desired=3
    )
    assert decision is None
    assert condition.status is False and condition.reason == "MetricsUnavailable"
    assert "Holding at 3" in condition.message and "could not be queried" in condition.message


def test_idle_fleet_right_after_restart_does_not_scale_down() -> None:
    state = AutoscalerState()  # fresh operator: no history
    idle = FleetSignals(queue=0.0, in_flight=0.0, p95_seconds=None)
    decision, condition = evaluate(1000.0, POOLS, idle, TARGETS, state, previous_desired=3)
    assert decision is not None and decision.total == 3, decision
    assert condition.status is True
    # ...but after the stabilisation window it may shrink, one step at a time
    later, _ = evaluate(1000.0 + 301, POOLS, idle, TARGETS, state, previous_desired=3)
    assert later is not None and later.total == 2


def test_deep_queue_scales_up_on_the_cheapest_free_pool() -> None:
    state = AutoscalerState()
    busy = FleetSignals(queue=40.0, in_flight=60.0, p95_seconds=3.0)
    decision, _ = evaluate(0.0, POOLS, busy, TARGETS, state, previous_desired=3)
    assert decision is not None and decision.total > 3 and decision.kind in ("scale-up", "panic")
    assert decision.total <= TARGETS.max_replicas


def test_prometheus_durations_are_valid_go_durations() -> None:
    from qwen_operator.autoscale.prometheus import duration

    assert duration(5.0) == "5s" and duration(3) == "3s" and duration(2.5) == "2500ms"


# --- pre-warm floors in the controller -----------------------------------------------------------

CATALOG = load_catalog(None)
MONDAY_0856 = dt.datetime(2024, 1, 15, 8, 56, tzinfo=dt.UTC)


def test_a_floor_applies_even_when_prometheus_is_down() -> None:
    state = AutoscalerState()
    down = FleetSignals(error="No Prometheus URL is configured.")
    floor = Floor(5, "schedule 'morning' floor 5")
    decision, condition = evaluate(0.0, POOLS, down, TARGETS, state, previous_desired=3, floor=floor)
    assert decision is not None and decision.total == 5
    assert condition.status is False and condition.reason == "MetricsUnavailable"
    assert "schedule 'morning' floor 5" in condition.message and "Never scaling down" in condition.message
    # at or below what is already desired: the usual hold
    decision, _ = evaluate(0.0, POOLS, down, TARGETS, state, previous_desired=5, floor=floor)
    assert decision is None


def test_an_unreadable_window_sets_scaling_active_false_naming_the_field() -> None:
    problem = ScheduleProblem("spec.scaling.schedules[0].timezone", "time zone 'Mars/Base' is not ...; ignored")
    busy = FleetSignals(queue=40.0, in_flight=60.0, p95_seconds=3.0)
    decision, condition = evaluate(0.0, POOLS, busy, TARGETS, AutoscalerState(), 3, problems=[problem])
    assert decision is not None and decision.total > 3  # metrics-based scaling carries on
    assert condition.status is False and condition.reason == "InvalidSchedule"
    assert condition.message.startswith("spec.scaling.schedules[0].timezone: time zone 'Mars/Base'")


def test_default_lead_is_the_modelled_cold_start_plus_one_interval() -> None:
    spec = QwenDeploymentSpec.model_validate(_qwd()["spec"])
    cold = cold_start_seconds(spec, CATALOG)
    assert 10 < cold < 3600
    assert prewarm_lead(spec, CATALOG) == pytest.approx(cold + 15)
    pinned = QwenDeploymentSpec.model_validate(_qwd(predictive={"enabled": True, "leadSeconds": 120})["spec"])
    assert prewarm_lead(pinned, CATALOG) == 120


def _qwd(status: dict[str, Any] | None = None, **scaling: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "chat", "namespace": "llm", "uid": "u-1", "generation": 1},
        "spec": {
            "model": {"name": "Qwen/Qwen3-14B", "registry": "s3://models/qwen3-14b", "quantization": "fp8"},
            "placement": {"gpuTypes": ["L40S"]},
            "scaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 6, **scaling},
        },
        "status": status or {},
    }


def _observed(qwd: dict[str, Any], replicas: int) -> Observed:
    node = {
        "metadata": {"name": "l0", "labels": {"nvidia.com/gpu.product": "NVIDIA-L40S"}},
        "spec": {},
        "status": {"allocatable": {"nvidia.com/gpu": "8"}, "conditions": [{"type": "Ready", "status": "True"}]},
    }
    dep = {
        "metadata": {"name": "chat-l40s", "annotations": {GPU_TYPE_ANNOTATION: "L40S"}},
        "spec": {"replicas": replicas},
        "status": {"readyReplicas": replicas},
    }
    return Observed(qwd=qwd, deployments=[dep] if replicas else [], nodes=[node])


class FakeKube:
    def __init__(self) -> None:
        self.status: dict[str, Any] = {}
        self.events: list[tuple[str, str, str]] = []

    def apply_status(self, ns: str, name: str, status: dict[str, Any], manager: str) -> None:
        self.status = status

    def event(self, obj: Any, kind: str, reason: str, message: str) -> None:
        self.events.append((kind, reason, message))


def _tick(obs: Observed, signals: FleetSignals, when: dt.datetime) -> FakeKube:
    kube = FakeKube()
    scaler = Autoscaler(kube, CATALOG, lambda *_: signals, lambda key: obs, "http://prometheus", clock=lambda: when)
    asyncio.run(scaler.tick(("llm", "chat")))
    return kube


def test_a_schedule_window_raises_desired_replicas_and_the_status_says_why() -> None:
    window = {"name": "morning", "days": ["Mon"], "start": "08:50", "end": "11:00", "minReplicas": 4}
    qwd = _qwd(status={"autoscaler": {"desiredReplicas": 2}}, schedules=[window])
    idle = FleetSignals(queue=0.0, in_flight=0.0, p95_seconds=None)
    kube = _tick(_observed(qwd, 2), idle, MONDAY_0856)
    a = kube.status["autoscaler"]
    assert a["desiredReplicas"] == 4 and a["floor"] == 4 and a["floorReason"] == "schedule 'morning' floor 4"
    assert a["lastDecision"].startswith("schedule 'morning' floor 4: below 4 replicas, adding 2")
    assert ("Normal", "ScaledUp") == kube.events[0][:2] and "schedule 'morning' floor 4" in kube.events[0][2]
    assert "profile" not in a  # predictive off
    # Tuesday: the window is closed, nothing raises the floor
    kube = _tick(_observed(qwd, 2), idle, MONDAY_0856 + dt.timedelta(days=1))
    assert "floor" not in kube.status["autoscaler"]


def test_a_bad_time_zone_is_reported_at_runtime() -> None:
    window = {"start": "00:00", "end": "23:59", "timezone": "Mars/Olympus_Mons", "minReplicas": 4}
    qwd = _qwd(status={"autoscaler": {"desiredReplicas": 2}}, schedules=[window])
    kube = _tick(_observed(qwd, 2), FleetSignals(queue=0.0, in_flight=0.0), MONDAY_0856)
    c = next(c for c in kube.status["conditions"] if c["type"] == "ScalingActive")
    assert c["status"] == "False" and c["reason"] == "InvalidSchedule"
    assert "spec.scaling.schedules[0].timezone" in c["message"] and "Mars/Olympus_Mons" in c["message"]
    assert kube.status["autoscaler"]["desiredReplicas"] == 2  # the window is ignored


def test_the_predictive_profile_survives_a_restart_through_status() -> None:
    predictive = {"enabled": True, "leadSeconds": 600}
    busy = FleetSignals(queue=30.0, in_flight=60.0, p95_seconds=3.0)
    qwd = _qwd(status={"autoscaler": {"desiredReplicas": 2}}, predictive=predictive)
    monday_peak = MONDAY_0856.replace(hour=9, minute=5)
    kube = _tick(_observed(qwd, 2), busy, monday_peak)
    profile = kube.status["autoscaler"]["profile"]
    assert profile["day"] == "2024-01-15" and profile["today"][36] >= 3 and len(profile["peaks"]) == 96
    learned = profile["today"][36]
    # a new operator process on Tuesday reads it back from status and pre-warms ahead of 09:00
    qwd = _qwd(status={"autoscaler": {"desiredReplicas": 2, "profile": profile}}, predictive=predictive)
    idle = FleetSignals(queue=0.0, in_flight=0.0, p95_seconds=None)
    kube = _tick(_observed(qwd, 2), idle, MONDAY_0856 + dt.timedelta(days=1))
    a = kube.status["autoscaler"]
    assert a["desiredReplicas"] == min(6, learned) and a["floorReason"] == f"predicted peak in 4 min: floor {learned}"
    assert a["profile"]["day"] == "2024-01-16" and a["profile"]["peaks"][36] == learned


def test_replicas_lent_to_a_roll_are_not_the_pools_own() -> None:
    """A pool lending a replica to a roll (borrowed surge) is sized without it: the autoscaler's
    desiredPools must not keep the loan once the roll ends (the demo's A100 kept running in the trough)."""
    from qwen_operator.controller.autoscaler import pool_states
    from qwen_operator.controller.rollout import BORROWED_ANNOTATION

    obs = _observed(_qwd(), 3)
    spec = QwenDeploymentSpec.model_validate(obs.qwd["spec"])
    (plain,) = pool_states(obs, spec, CATALOG)
    assert (plain.ready, plain.starting) == (3, 0)
    obs.deployments[0]["metadata"]["annotations"][BORROWED_ANNOTATION] = "1"
    (lending,) = pool_states(obs, spec, CATALOG)
    assert (lending.ready, lending.starting) == (2, 0)
    # the loan is the newest replica: while it starts, the pool's own replicas are all ready
    obs.deployments[0]["status"]["readyReplicas"] = 2
    (starting,) = pool_states(obs, spec, CATALOG)
    assert (starting.ready, starting.starting) == (2, 0)
    # and an idle fleet's decision keeps the pool at its own size, not the loan
    idle = FleetSignals(queue=0.0, in_flight=0.0, p95_seconds=None, request_rate=0.0)
    obs.qwd["status"] = {"autoscaler": {"desiredReplicas": 2}}
    kube = _tick(obs, idle, dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC))
    assert kube.status["autoscaler"]["desiredPools"] == [{"gpuType": "L40S", "replicas": 2}]


def _pod(name: str, *, ready: bool, created: str, waiting: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {
        "phase": "Running" if ready else "Pending",
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    if waiting:
        status["containerStatuses"] = [{"name": "server", "state": {"waiting": {"reason": waiting}}}]
    return {
        "metadata": {
            "name": name,
            "namespace": "llm",
            "creationTimestamp": created,
            "labels": pool_selector("chat", "L40S"),
        },
        "spec": {"nodeName": "l0", "containers": [{"name": "server", "image": "tgi:bad"}]},
        "status": status,
    }


def _stuck_cluster(waiting: str | None, created: str) -> Observed:
    qwd = _qwd({"autoscaler": {"desiredReplicas": 2}}, maxReplicas=6)
    qwd["spec"]["placement"] = {"gpuTypes": ["L40S", "A10G"]}
    nodes = [
        {
            "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": product}},
            "spec": {},
            "status": {"allocatable": {"nvidia.com/gpu": "2"}, "conditions": [{"type": "Ready", "status": "True"}]},
        }
        for name, product in (("l0", "NVIDIA-L40S"), ("a0", "NVIDIA-A10G"))
    ]
    dep = {
        "metadata": {"name": "chat-l40s", "annotations": {GPU_TYPE_ANNOTATION: "L40S"}},
        "spec": {"replicas": 2},
        "status": {"readyReplicas": 1},
    }
    pods = [
        _pod("chat-l40s-aaa-1", ready=True, created="2026-12-02T11:00:00Z"),
        _pod("chat-l40s-aaa-2", ready=False, created=created, waiting=waiting),
    ]
    for p in pods:
        p["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": "1"}}
    return Observed(qwd=qwd, deployments=[dep], nodes=nodes, pods=pods)


def test_a_stuck_replica_is_not_capacity_and_the_added_one_goes_to_another_gpu_type() -> None:
    """#10 item 5: an ImagePullBackOff replica earns no warm-up credit; with load above one replica the
    decision adds capacity on A10G (the L40S pool is blocked while its replica is stuck), the status
    says which replica is not counted and why, and an Event says it once."""
    busy = FleetSignals(queue=12.0, in_flight=40.0, p95_seconds=2.5)
    kube = _tick(
        _stuck_cluster("ImagePullBackOff", "2026-12-02T11:59:00Z"), busy, dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)
    )
    pools = {p["gpuType"]: p["replicas"] for p in kube.status["autoscaler"]["desiredPools"]}
    assert pools.get("L40S") == 1, pools  # the stuck one is not kept: the Deployment removes it first
    assert pools.get("A10G", 0) >= 1, pools
    last = kube.status["autoscaler"]["lastDecision"]
    assert "not counting stuck replica(s) 1 on L40S (ImagePullBackOff: chat-l40s-aaa-2)" in last, last
    assert [r for _, r, _ in kube.events if r == "StuckReplicasNotCounted"]


def test_warm_up_credit_expires_after_the_modelled_cold_start_times_the_factor() -> None:
    from qwen_operator.controller import failures
    from qwen_operator.controller.autoscaler import cold_start_seconds, stuck_replicas

    spec = QwenDeploymentSpec.model_validate(_stuck_cluster(None, "2026-12-02T11:59:00Z").qwd["spec"])
    credit = cold_start_seconds(spec, CATALOG) * failures.WARM_UP_CREDIT_FACTOR
    now = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)
    young = now - dt.timedelta(seconds=credit - 5)
    old = now - dt.timedelta(seconds=credit + 5)
    assert stuck_replicas(_stuck_cluster(None, young.isoformat()), now, credit) == {}
    found = stuck_replicas(_stuck_cluster(None, old.isoformat()), now, credit)
    assert [(s.name, s.cause) for s in found["L40S"]] == [("chat-l40s-aaa-2", "WarmUpExpired")]
    # a pod still loading within its credit is capacity on the way: an idle tick keeps both replicas
    idle = FleetSignals(queue=0.0, in_flight=0.0, p95_seconds=None, request_rate=0.0)
    kube = _tick(_stuck_cluster(None, young.isoformat()), idle, now)
    assert kube.status["autoscaler"]["desiredPools"] == [{"gpuType": "L40S", "replicas": 2}]
    assert "stuck" not in kube.status["autoscaler"]["lastDecision"]

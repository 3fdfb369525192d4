"""The autoscaler's evaluation: hold without metrics, no scale-down right after a restart."""

from __future__ import annotations

from qwen_operator.autoscale.policy import PoolState, Targets
from qwen_operator.autoscale.prometheus import FleetSignals
from qwen_operator.controller.autoscaler import AutoscalerState, evaluate

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

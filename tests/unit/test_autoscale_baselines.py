"""Table-driven tests of the KEDA (Prometheus trigger, AverageValue) + Kubernetes HPA baseline."""

from __future__ import annotations

import pytest

from qwen_operator.autoscale.baselines import (
    HPABehavior,
    HPAState,
    ScalingPolicy,
    external_average_value_replicas,
    hpa_queue_decide,
)


@pytest.mark.parametrize(
    ("status", "metric", "target", "expected"),
    [
        (4, 16.0, 4.0, 4),  # exactly on target
        (4, 17.0, 4.0, 4),  # ratio 1.0625: inside the 10% tolerance
        (4, 18.0, 4.0, 5),  # ratio 1.125: ceil(18/4)
        (4, 14.0, 4.0, 4),  # ratio 0.875 -> ceil(3.5) = 4 (outside tolerance, same answer)
        (4, 0.0, 4.0, 0),  # empty queue recommends zero (clamped later by minReplicas)
        (3, 40.0, 4.0, 10),
        (0, 5.0, 4.0, 2),
    ],
)
def test_external_average_value(status: int, metric: float, target: float, expected: int) -> None:
    assert external_average_value_replicas(status, metric, target, 0.1) == expected


def test_not_ready_pods_count_as_replicas_for_external_metrics() -> None:
    # 2 ready + 2 loading: status.replicas = 4, so 16 waiting over target 4 is on target
    d = hpa_queue_decide(
        0.0,
        current_replicas=4,
        status_replicas=4,
        queue_total=16.0,
        target_average=4.0,
        min_replicas=1,
        max_replicas=20,
    )
    assert d.desired == 4


@pytest.mark.parametrize(
    ("current", "queue", "expected"),
    [
        (1, 100.0, 5),  # max(+4 pods, +100%) = +4
        (6, 200.0, 12),  # +100% beats +4
        (3, 12.0, 3),
    ],
)
def test_default_scale_up_policy(current: int, queue: float, expected: int) -> None:
    d = hpa_queue_decide(0.0, current, queue, 4.0, 1, 50)
    assert d.desired == expected


def test_scale_up_limit_counts_replicas_added_in_the_period() -> None:
    d1 = hpa_queue_decide(0.0, 2, 400.0, 4.0, 1, 100)
    assert d1.desired == 6  # 2 + 4
    d2 = hpa_queue_decide(10.0, 6, 400.0, 4.0, 1, 100, d1.state)
    assert d2.desired == 6  # period start was 2: limit max(2+4, 4) = 6 until 15 s pass
    d3 = hpa_queue_decide(15.0, 6, 400.0, 4.0, 1, 100, d2.state)
    assert d3.desired == 12


def test_scale_down_waits_for_the_stabilisation_window() -> None:
    state = HPAState()
    d = hpa_queue_decide(0.0, 8, 32.0, 4.0, 1, 20, state)
    assert d.desired == 8
    replicas, t = 8, 0.0
    seen = []
    for t in range(15, 331, 15):
        d = hpa_queue_decide(float(t), replicas, 0.0, 4.0, 1, 20, d.state)
        replicas = d.desired
        seen.append((t, replicas))
    # held at 8 while the 8-recommendation at t=0 is in the 300 s window, then straight to min (100%/15 s)
    assert all(r == 8 for tt, r in seen if tt < 300)
    assert dict(seen)[300] == 1


def test_first_sight_seeds_the_window_with_current_replicas() -> None:
    d = hpa_queue_decide(0.0, 5, 0.0, 4.0, 1, 20)
    assert d.desired == 5
    assert "stabilisation" in d.reason


@pytest.mark.parametrize("metric", [None, float("nan")])
def test_missing_metric_holds(metric: float | None) -> None:
    d = hpa_queue_decide(0.0, 5, metric, 4.0, 1, 20)
    assert d.desired == 5
    assert "FailedGetExternalMetric" in d.reason


@pytest.mark.parametrize(("current", "expected"), [(25, 20), (0, 0)])
def test_bounds_and_disabled(current: int, expected: int) -> None:
    assert hpa_queue_decide(0.0, current, 0.0, 4.0, 1, 20).desired == expected


def test_below_min_goes_to_min() -> None:
    assert hpa_queue_decide(0.0, 1, 0.0, 4.0, 2, 20).desired == 2


def test_custom_scale_down_policy_limits_rate() -> None:
    behavior = HPABehavior(scale_down_window_seconds=0.0, scale_down_policies=(ScalingPolicy("Pods", 1, 60),))
    d1 = hpa_queue_decide(0.0, 6, 0.0, 4.0, 1, 20, behavior=behavior)
    assert d1.desired == 5
    d2 = hpa_queue_decide(15.0, 5, 0.0, 4.0, 1, 20, d1.state, behavior)
    assert d2.desired == 5  # one pod per 60 s
    d3 = hpa_queue_decide(61.0, 5, 0.0, 4.0, 1, 20, d2.state, behavior)
    assert d3.desired == 4

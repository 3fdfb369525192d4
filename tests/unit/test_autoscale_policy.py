"""Table-driven tests of the pure qwen autoscaling policy."""

from __future__ import annotations

import math

import pytest

from qwen_operator.autoscale.policy import (
    Floor,
    History,
    PoolState,
    Recommendation,
    Signals,
    Targets,
    decide,
    place_scale_down,
    place_scale_up,
)

NAN = float("nan")
T = Targets(min_replicas=1, max_replicas=12, target_queue_depth=4, p95_latency_seconds=1.2)


def a10g(ready: int = 0, starting: int = 0, free: int = 8) -> PoolState:
    return PoolState("A10G", cost_per_hour=1.006, throughput=1.0, ready=ready, starting=starting, free=free)


def l40s(ready: int = 0, starting: int = 0, free: int = 4) -> PoolState:
    return PoolState("L40S", cost_per_hour=1.861, throughput=1.5, ready=ready, starting=starting, free=free)


def a100(ready: int = 0, starting: int = 0, free: int = 2) -> PoolState:
    return PoolState("A100-80GB", cost_per_hour=5.12, throughput=3.4, ready=ready, starting=starting, free=free)


CASES = [
    # id, pools, signals, expected kind, expected per-pool desired
    ("within tolerance holds", [a10g(2)], Signals(8, 1.25, 10), "hold", {"A10G": 2}),
    ("queue doubles -> panic up", [a10g(2)], Signals(16, 0.8, 30), "panic", {"A10G": 4}),
    ("latency 1.5x -> up", [a10g(2)], Signals(0, 1.8, 10), "scale-up", {"A10G": 3}),
    ("starting replica covers the need", [a10g(2, starting=1)], Signals(12, 1.0, 20), "hold", {"A10G": 3}),
    ("queue missing holds", [a10g(3)], Signals(None, 0.2, 1), "hold", {"A10G": 3}),
    ("queue NaN holds", [a10g(3)], Signals(NAN, 0.2, 1), "hold", {"A10G": 3}),
    ("P95 NaN with work in flight: no scale-down", [a10g(3)], Signals(0, NAN, 5), "hold", {"A10G": 3}),
    ("P95 NaN idle fleet shrinks one step", [a10g(3)], Signals(0, NAN, 0), "scale-down", {"A10G": 2}),
    ("below min scales to min", [a10g(0)], Signals(None, None), "scale-up", {"A10G": 1}),
    ("no ready but starting: wait", [a10g(0, starting=2)], Signals(40, NAN, 40), "hold", {"A10G": 2}),
    ("low load sheds one replica", [a10g(4)], Signals(0, 0.3, 1), "scale-down", {"A10G": 3}),
    ("never below min", [a10g(1)], Signals(0, 0.1, 0), "hold", {"A10G": 1}),
    (
        "cheapest per throughput gets capacity",
        [a10g(1, free=0), l40s(1, free=4), a100(0, free=2)],
        Signals(0, 1.8, 10),
        "scale-up",
        {"A10G": 1, "L40S": 2, "A100-80GB": 0},
    ),
    ("no free GPUs: hold and say so", [a10g(2, free=0)], Signals(20, 2.0, 30), "hold", {"A10G": 2}),
    (
        "scale-down removes the most expensive first",
        [a10g(3), a100(1)],
        Signals(0, 0.2, 1),
        "scale-down",
        {"A10G": 3, "A100-80GB": 0},
    ),
]


@pytest.mark.parametrize(("pools", "signals", "kind", "desired"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decision_table(pools: list[PoolState], signals: Signals, kind: str, desired: dict[str, int]) -> None:
    d = decide(1000.0, pools, signals, T)
    assert d.kind == kind, d.reason
    assert d.desired == desired, d.reason
    assert d.total == sum(desired.values())
    assert d.reason


def test_above_max_trims_most_expensive_first() -> None:
    # under load (the trimmed fleet is still needed) the trim is all that happens
    d = decide(0.0, [a10g(6), l40s(4)], Signals(40, 1.1, 60), Targets(max_replicas=8))
    assert d.kind == "scale-down"
    assert d.desired == {"A10G": 6, "L40S": 2}
    assert d.reason.startswith("above maxReplicas 8: trimmed to 8; ")


def test_above_max_still_feeds_the_scale_down_window() -> None:
    """A rollout's borrowed replica can put the fleet one over maxReplicas: the trim must not stop the
    usual evaluation (the demo held 8 replicas through its whole trough at 'above maxReplicas 8')."""
    targets = Targets(max_replicas=8, scale_down_delay_seconds=45)
    hist: History | None = None
    totals = []
    for t in range(0, 200, 5):
        d = decide(float(t), [a10g(1), l40s(8)], Signals(0, 0.05, 1), targets, hist)
        assert d.history.recommendations, "the window must be fed while above maxReplicas"
        hist = d.history
        totals.append(d.total)
    assert totals[0] <= 8 and min(totals) < 8


def test_stabilisation_window_uses_max_of_recent_recommendations() -> None:
    hist = History(recommendations=(Recommendation(900.0, 4.0),))
    d = decide(1000.0, [a10g(4)], Signals(0, 0.2, 1), T, hist)
    assert d.kind == "hold"
    assert d.desired == {"A10G": 4}
    # once the 300 s window has passed, the old high recommendation no longer holds it
    later = decide(1201.0, [a10g(4)], Signals(0, 0.2, 1), T, d.history)
    assert later.kind == "scale-down"
    assert later.desired == {"A10G": 3}


def test_scale_down_is_one_step_per_decision() -> None:
    d = decide(0.0, [a10g(8)], Signals(0, 0.1, 0), T)
    assert d.total == 7


def test_panic_blocks_scale_down_for_its_window() -> None:
    first = decide(0.0, [a10g(2)], Signals(40, 3.0, 60), T)
    assert first.kind == "panic"
    assert first.history.panic_until == pytest.approx(T.panic_window_seconds)
    calm = decide(30.0, [a10g(10)], Signals(0, 0.2, 2), T, History(panic_until=first.history.panic_until))
    assert calm.kind == "hold"
    assert "panic" in calm.reason


def test_non_panic_scale_up_is_rate_limited_like_hpa() -> None:
    # ratio 1.9 (< panic 2.0) on 10 replicas wants 19; the step allows max(+4, +100%) = +10
    d = decide(0.0, [a10g(10, free=20)], Signals(76, 0.5, 80), Targets(max_replicas=30))
    assert d.kind == "scale-up"
    assert d.total == 19
    big = decide(0.0, [a10g(2, free=20)], Signals(15, 0.5, 20), Targets(max_replicas=30))
    assert big.total == 4  # ratio 1.875 on 2: need 3.75 -> 4 replicas, inside the +4 step


def test_panic_scale_up_is_not_rate_limited() -> None:
    d = decide(0.0, [a10g(2, free=30)], Signals(80, 1.0, 90), Targets(max_replicas=30))
    assert d.kind == "panic"
    assert d.total == 20


def test_respects_max_replicas_on_scale_up() -> None:
    d = decide(0.0, [a10g(3)], Signals(100, 5.0, 120), Targets(max_replicas=5))
    assert d.total == 5


def test_in_flight_target_drives_scale_up_without_queue() -> None:
    pool = PoolState("A10G", 1.0, ready=2, free=6, target_in_flight=10)
    d = decide(0.0, [pool], Signals(0, 0.9, 30), T)
    assert d.kind == "scale-up"
    assert d.total == 3
    assert d.ratio == pytest.approx(1.5)


def test_pre_warm_floor_raises_capacity_ahead_of_load() -> None:
    d = decide(0.0, [a10g(2)], Signals(0, 0.5, 2), T, floor_capacity=5.0)
    assert d.kind == "scale-up"
    assert d.total == 5
    assert "pre-warm" in d.reason


def test_scale_down_respects_recorded_history_across_calls() -> None:
    hist = History()
    pools = [a10g(5)]
    totals = []
    for i in range(30):
        d = decide(i * 15.0, pools, Signals(0, 0.2, 1), T, hist)
        hist = d.history
        totals.append(d.total)
        pools = [a10g(d.total)]
    # the first decision records capacity 5 * 0.2 = 1, so nothing holds it up: 1 replica per tick
    assert totals[:4] == [4, 3, 2, 1]
    assert min(totals) == 1


@pytest.mark.parametrize(
    ("need", "expected"),
    [
        (0.5, {"A10G": 1, "L40S": 0, "A100-80GB": 0}),  # a small need buys the cheapest replica
        (2.0, {"A10G": 2, "L40S": 0, "A100-80GB": 0}),
        (math.inf, {"A10G": 8, "L40S": 4, "A100-80GB": 2}),  # spill over in price-per-throughput order
    ],
)
def test_place_scale_up(need: float, expected: dict[str, int]) -> None:
    pools = [a10g(), l40s(), a100()]
    assert place_scale_up(pools, {"A10G": 0, "L40S": 0, "A100-80GB": 0}, need, 100) == expected


def test_place_scale_down_keeps_capacity_above_target() -> None:
    pools = [a10g(), a100()]
    # removing the A100 (3.4) would drop 5.4 to 2.0 < 3: remove an A10G instead
    assert place_scale_down(pools, {"A10G": 2, "A100-80GB": 1}, 3.0, 1, 1) == {"A10G": 1, "A100-80GB": 1}
    assert place_scale_down(pools, {"A10G": 2, "A100-80GB": 1}, 1.5, 1, 1) == {"A10G": 2, "A100-80GB": 0}


def test_place_scale_down_heads_for_the_cheapest_fleet_that_covers_the_target() -> None:
    owned = PoolState("A10G", cost_per_hour=0.0, throughput=1.33, free=0)  # the cluster's own A10G
    rented = PoolState("L40S", cost_per_hour=1.861, throughput=19.2, free=4)
    pools = [owned, rented]
    # the spike is still in the window (2.2 req/s): only the L40S covers it; removing the $0
    # A10G saves nothing and would leave the L40S as the last replica, so nothing goes
    assert place_scale_down(pools, {"A10G": 1, "L40S": 1}, 2.2, 1, 1) == {"A10G": 1, "L40S": 1}
    # traffic fell: the A10G alone covers it, the L40S goes
    assert place_scale_down(pools, {"A10G": 1, "L40S": 1}, 0.2, 1, 1) == {"A10G": 1, "L40S": 0}
    # priced A10Gs that cannot cover the need go first: the L40S alone is the cheapest cover
    priced = [PoolState("A10G", cost_per_hour=1.006, throughput=1.33), rented]
    assert place_scale_down(priced, {"A10G": 3, "L40S": 1}, 2.2, 2, 1) == {"A10G": 1, "L40S": 1}
    # trimming to a count (no target): most expensive per unit of throughput first
    assert place_scale_down(priced, {"A10G": 3, "L40S": 1}, -math.inf, 1, 3) == {"A10G": 2, "L40S": 1}


def test_an_idle_fleets_time_to_first_token_does_not_hold_a_replica() -> None:
    """An idle L40S answers in ~0.08 s (its prefill): 7% of the SLO. Sized on, that ratio times the
    mixed fleet's 21 req/s 'needs' 1.5 req/s, more than the owned A10G carries, so the rented L40S
    would never go; far under the SLO the P95 is not a capacity signal, the request rate decides."""
    owned = PoolState("A10G", 0.0, 1.33, ready=1, target_in_flight=4.3)
    rented = PoolState("L40S", 1.861, 19.82, ready=1, free=4, target_in_flight=55)
    targets = Targets(scale_down_delay_seconds=20)
    idle = decide(0.0, [owned, rented], Signals(0, 0.08, 0, 0.1), targets)
    assert idle.kind == "scale-down" and idle.desired == {"A10G": 1, "L40S": 0}, idle.reason
    assert "far under: not sized on" in idle.reason
    # near the SLO the P95 still counts: 0.9 s holds the L40S (0.75 x 21.15 req/s is more than 1.33)
    busy = decide(0.0, [owned, rented], Signals(0, 0.9, 0, 0.1), targets)
    assert busy.kind == "hold" and busy.desired == {"A10G": 1, "L40S": 1}, busy.reason


@pytest.mark.parametrize(
    ("rate", "kind", "total"),
    [
        (12.0, "scale-up", 3),  # 12 req/s over 2 x 5 req/s x 0.8 = 1.5 -> capacity 15 -> 3 replicas
        (8.0, "hold", 2),  # exactly at the utilisation target
        (2.0, "scale-down", 1),  # 0.25: the rest (5 req/s) covers 2.5 x 1.1
    ],
)
def test_request_rate_signal_in_throughput_units(rate: float, kind: str, total: int) -> None:
    pool = PoolState("L40S", 1.861, throughput=5.0, ready=2, free=4)
    d = decide(0.0, [pool], Signals(0, 0.3, 1, rate), T)
    assert (d.kind, d.total) == (kind, total), d.reason


def test_scale_down_hysteresis_keeps_a_replica_that_would_leave_no_margin() -> None:
    pool = PoolState("L40S", 1.861, throughput=5.0, ready=2, free=4)
    # 3.8 req/s at 0.8 utilisation needs 4.75 of capacity: one replica (5.0) would cover it,
    # but not with the 10% tolerance to spare, so both stay
    d = decide(0.0, [pool], Signals(0, 0.3, 1, 3.8), T)
    assert d.kind == "hold"
    assert d.total == 2


# --- replica floors (schedule windows, predictive pre-warm) -----------------------------------

MORNING = Floor(4, "schedule 'morning' floor 4")


def test_floor_raises_the_fleet_even_without_metrics_and_says_why() -> None:
    d = decide(0.0, [a10g(2)], Signals(None, None), T, floor=MORNING)
    assert d.kind == "scale-up" and d.total == 4
    assert d.reason.startswith("schedule 'morning' floor 4: below 4 replicas, adding 2")


def test_floor_is_clamped_to_max_replicas() -> None:
    targets = Targets(min_replicas=1, max_replicas=3)
    d = decide(0.0, [a10g(1)], Signals(0, 0.5, 1), targets, floor=Floor(9, "predicted peak in 4 min: floor 9"))
    assert d.total == 3 and "clamped to maxReplicas 3" in d.reason


def test_floor_never_lowers_min_replicas() -> None:
    targets = Targets(min_replicas=3, max_replicas=12)
    d = decide(0.0, [a10g(1)], Signals(0, 0.5, 1), targets, floor=Floor(2, "schedule 'low' floor 2"))
    assert d.total == 3 and d.reason.startswith("below minReplicas 3")  # minReplicas, not the floor
    idle = History(recommendations=(Recommendation(-1000.0, 0.1),))
    d = decide(0.0, [a10g(3)], Signals(0, NAN, 0), targets, idle, floor=Floor(1, "schedule 'x' floor 1"))
    assert d.total == 3  # no scale-down below minReplicas whatever the floor


def test_scale_down_stops_at_the_floor_and_the_hold_names_it() -> None:
    idle = History(recommendations=(Recommendation(-1000.0, 0.1),))
    pools = [a10g(5)]
    d = decide(0.0, pools, Signals(0, NAN, 0), T, idle, floor=MORNING)
    assert d.kind == "scale-down" and d.total == 4  # the fifth replica is not the floor's
    d = decide(0.0, [a10g(4)], Signals(0, NAN, 0), T, idle, floor=MORNING)
    assert d.kind == "hold" and d.total == 4
    assert d.reason.startswith("schedule 'morning' floor 4: holding 4 replicas")
    # the same fleet without the floor shrinks
    assert decide(0.0, [a10g(4)], Signals(0, NAN, 0), T, idle).total == 3


def test_load_above_the_floor_scales_up_as_usual_and_keeps_the_load_capacity() -> None:
    d = decide(0.0, [a10g(4)], Signals(40, 3.0, 60), T, floor=MORNING)
    assert d.kind == "panic" and d.total > 4 and "floor" not in d.reason
    held = decide(0.0, [a10g(4)], Signals(0, 0.3, 2), T, floor=MORNING)
    assert held.total == 4
    assert held.desired_capacity is not None and held.desired_capacity < 4  # what load asked for, not the floor


def test_no_floor_is_the_unchanged_policy() -> None:
    for pools, signals in (([a10g(2)], Signals(16, 0.8, 30)), ([a10g(5)], Signals(0, NAN, 0))):
        assert decide(0.0, pools, signals, T) == decide(0.0, pools, signals, T, floor=None)


def test_a_request_rate_is_compared_only_with_capacities_in_requests_per_second() -> None:
    busy = Signals(0, 0.3, 4, request_rate=10.0)  # 10 req/s against 2 replicas of 1.0 req/s: 6.25x
    assert decide(0.0, [a10g(2)], busy, T).kind == "panic"
    relative = PoolState("A10G", cost_per_hour=1.006, throughput=1.0, ready=2, free=8, per_second=False)
    calm = decide(0.0, [relative], busy, T)
    assert calm.total <= 2 and "rate" not in calm.reason  # decode-throughput units: no rate signal


def test_a_fresh_loop_is_seeded_with_the_capacity_running_now() -> None:
    from qwen_operator.autoscale.loop import Observation, evaluate

    pools = (a10g(ready=2), l40s(ready=2))  # 2 x 1.0 + 2 x 1.5 = 5.0
    idle = Observation(0.0, pools, queue_depth=0, p95_seconds=None, in_flight=0)
    first = evaluate(idle, T, History(), None)
    assert first is not None and first.kind == "hold"
    assert first.history.recommendations[0] == Recommendation(0.0, 5.0)
    later = evaluate(Observation(301.0, pools, 0, None, 0), T, first.history, 4)
    assert later is not None and later.kind == "scale-down" and later.desired == {"A10G": 2, "L40S": 1}


def test_min_replicas_without_free_gpus_says_so_and_holds() -> None:
    """Below minReplicas with no free GPU of an allowed type: a hold that names the shortfall, never a
    'scale-up' that adds nothing (the controller reported it as ScaledDown 1 -> 0 on a first tick)."""
    targets = Targets(min_replicas=2, max_replicas=8)
    d = decide(0.0, [a10g(0, free=0), l40s(0, free=0)], Signals(None, None), targets)
    assert (d.kind, d.total) == ("hold", 0)
    assert d.reason == "below minReplicas 2: adding 0 of 2 (no free GPU of an allowed type)"
    d = decide(0.0, [a10g(0, free=1), l40s(0, free=0)], Signals(None, None), targets)
    assert (d.kind, d.total) == ("scale-up", 1) and "adding 1 of 2" in d.reason

"""One decision path: what the autoscaler observes, and the one function that decides from it.

Why it exists: ``qwenctl simulate`` and the benchmarks are only evidence for the shipped
autoscaler if they run the *same* decision as the controller, from the same kind of input,
and apply its result the same way. Both therefore build an :class:`Observation` (the
controller from the cluster and Prometheus, the simulator from its simulated fleet), call
:func:`evaluate`, and apply the per-pool counts of the :class:`~.policy.Decision` it
returns: the simulator creates and drains replicas per pool, the controller writes them to
``status.autoscaler.desiredPools`` and the reconciler sizes each pool Deployment from them
(:func:`pool_targets`). Where added or removed capacity goes is decided once, by the
policy's :func:`~.policy.place_scale_up` / :func:`~.policy.place_scale_down` (cheapest per
request/s within the SLO); the planner only spills over what no longer fits when GPUs
vanished between the decision and the reconcile.

Pure: no Kubernetes, Prometheus or simulator import; time is an input.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .policy import Decision, Floor, History, PoolState, Recommendation, Signals, Targets, decide


@dataclass(frozen=True)
class PoolEstimate:
    """What one replica of a GPU pool is worth to the policy (an estimate, not an observation).

    The controller takes it from the planner's candidates (the replica model at the spec's
    typical request), the simulator from its calibrated pools: both in requests/s within the SLO.
    """

    gpu_type: str
    cost_per_hour: float  # one replica, all its shards
    throughput: float  # requests/s one replica carries within the SLO (relative units if not per_second)
    shards: int = 1
    target_in_flight: float | None = None  # requests in flight one ready replica should carry
    per_second: bool = True  # False: throughput is a relative unit and a request rate cannot be compared
    nodes: int = 1  # nodes one replica spans (a LeaderWorkerSet group of ``shards`` GPUs per node)


def pool_state(cap: PoolEstimate, ready: int, starting: int, free: int) -> PoolState:
    """``cap`` with the replicas observed now (ready, still loading) and those that still fit on free GPUs."""
    return PoolState(
        gpu_type=cap.gpu_type,
        cost_per_hour=cap.cost_per_hour,
        throughput=max(cap.throughput, 1e-9),
        ready=max(0, ready),
        starting=max(0, starting),
        free=max(0, free),
        target_in_flight=cap.target_in_flight,
        per_second=cap.per_second,
    )


@dataclass(frozen=True)
class Observation:
    """Everything one autoscaling decision reads, as its metrics source reports it.

    ``None`` is what a source returns for "no series" (e.g. no pod exports the queue gauge
    yet, or a P95 over an idle minute, which Prometheus returns as NaN); :func:`evaluate`
    reads a missing queue as 0 and a missing P95 as "no latency signal". ``error`` set means
    the source could not be read at all: then nothing but a floor can change the fleet.

    With the built-in router, the controller fills P95, in flight and request rate from the
    router (real time to first byte, accepted-not-answered, answered/s) and ``held`` from the
    requests it holds: the one signal a fleet at zero replicas has. The simulator, which has
    no hold queue, reports as held the requests that arrived while no replica was Ready.
    """

    now: float  # seconds on a monotonic clock
    pools: tuple[PoolState, ...]
    queue_depth: float | None = None  # waiting requests, summed over the pods
    p95_seconds: float | None = None  # P95 time to first token (or its stand-in) over the last minute
    in_flight: float | None = None  # running + waiting requests, summed over the pods
    request_rate: float | None = None  # requests/s arriving over the last minute
    floor: Floor | None = None  # schedule window or predictive pre-warm in force
    error: str | None = None  # the metrics source could not be read
    held: float | None = None  # requests the router holds for want of a replica (None: no router signal)


def seed_history(history: History, now: float, pools: Sequence[PoolState], targets: Targets) -> History:
    """A fresh decision loop (operator restart, simulation start) remembers today's capacity as a
    recommendation, so its first decisions cannot scale down below what runs now."""
    if history.recommendations:
        return history
    current = sum(p.replicas * p.throughput for p in pools)
    if current <= 0:
        current = targets.min_replicas * min((p.throughput for p in pools), default=1.0)
    return History(recommendations=(Recommendation(now, current),), panic_until=history.panic_until)


def evaluate(obs: Observation, targets: Targets, history: History, previous_total: int | None) -> Decision | None:
    """The decision for ``obs`` (pure). ``None``: no signal, keep what was last desired.

    Without metrics (``obs.error``) only a floor above ``previous_total`` (the replicas last
    desired) may act: a pre-warm must not wait for Prometheus, and nothing scales down on
    missing data. The caller applies ``decision.desired`` (replicas per pool) and keeps
    ``decision.history`` for the next call.
    """
    pools = list(obs.pools)
    if obs.error is not None:
        floor = obs.floor
        if floor is not None and min(floor.replicas, targets.max_replicas) > (previous_total or 0):
            floored = decide(obs.now, pools, Signals(None, None), targets, history, floor=floor)
            if floored.kind == "scale-up":
                return floored
        return None
    history = seed_history(history, obs.now, pools, targets)
    signals = Signals(
        queue_depth=0.0 if obs.queue_depth is None else obs.queue_depth,
        p95_seconds=math.nan if obs.p95_seconds is None else obs.p95_seconds,
        in_flight=obs.in_flight,
        request_rate=obs.request_rate,
        held=obs.held,
    )
    return decide(obs.now, pools, signals, targets, history, floor=obs.floor)


def pool_targets(
    desired: Mapping[str, int],
    current: Mapping[str, int],
    free: Mapping[str, Sequence[int]],
    shards: Mapping[str, int],
    spans: Mapping[str, int] | None = None,
) -> tuple[dict[str, int], dict[str, list[int]]]:
    """Where the reconciler starts from to apply the autoscaler's per-pool ``desired`` counts.

    Each pool the decision shrinks or keeps goes to its count; each it grows gets as many of
    the new replicas as still fit on its free GPUs now (``free``: free GPUs per node of each
    type, a replica needs all its ``shards`` on one node). Returns those starting sizes and
    the free GPUs left after them: the planner then places only what no longer fits (its
    spill-over, cheapest per unit first), so the GPUs counted here are not booked twice.
    Pools absent from ``desired`` go to zero. ``spans``: nodes one replica of a type spans (a
    LeaderWorkerSet group: ``shards`` free on each of that many nodes; default 1).
    """
    left = {t: [max(0, n) for n in nodes] for t, nodes in free.items()}
    start: dict[str, int] = {}
    for gpu_type in sorted(set(desired) | set(current)):
        want, live = max(0, desired.get(gpu_type, 0)), max(0, current.get(gpu_type, 0))
        n = min(want, live)
        need = shards.get(gpu_type, 0)
        nodes = left.get(gpu_type, [])
        span = max(1, (spans or {}).get(gpu_type, 1))
        for _ in range(want - n):
            picks = [i for i, f in enumerate(nodes) if need > 0 and f >= need][:span]
            if len(picks) < span:
                break
            for i in picks:
                nodes[i] -= need
            n += 1
        start[gpu_type] = n
    return start, left

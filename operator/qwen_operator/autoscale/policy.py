"""The qwen autoscaling policy: one pure function from observed signals to desired replicas.

Why it exists: the controller's timer (and ``qwenctl simulate``) must make the *same*
decision from the same inputs, and that decision is where the thinking happens, so it
lives here with no Kubernetes, kopf or Prometheus import and is tested with tables.

The rule (DESIGN.md, "Autoscaling"), in capacity units (replicas x relative throughput):

* ``ratio = max(queue / (targetQueueDepth x ready), p95 / SLO, in-flight / target in-flight,
  request rate / (ready throughput x utilisation))``; the last two only when the pools say
  how many requests (in flight, per second) a replica carries within the SLO
  and ``desired capacity = ready capacity x ratio``; within ``tolerance`` (10%, as the
  Kubernetes HPA) the ratio counts as 1.
* Starting replicas count as capacity: a scale-up only adds what ready + starting
  capacity does not already cover, so a minutes-long model load never cascades.
* Up fast: outside panic at most ``max(+4, +100%)`` replicas per decision (the HPA
  default); at ``ratio >= panic_threshold`` (Knative's panic, 2x) straight to the need,
  and no scale-down for ``panic_window_seconds`` after the last panic reading.
* Down slowly: the target is the *maximum* recommendation over the last
  ``scale_down_delay_seconds`` (HPA's stabilisation window) plus the tolerance (hysteresis:
  a replica goes only if the rest covers that with 10% to spare), and at most
  ``scale_down_step`` replicas go per decision, most expensive per unit throughput first.
* Missing signals (``None``/NaN queue, or a NaN P95 while requests are in flight) hold:
  never a scale-down on missing data. A NaN P95 with a zero queue and zero in-flight is a
  verified idle fleet, which may shrink slowly.
* New capacity goes to the cheapest pool per unit throughput with free GPUs.
* An optional ``floor_capacity`` raises the capacity need; it never lowers it.
* Scale from zero (``minReplicas: 0``, only allowed with the built-in router): at zero
  replicas the fleet stays at zero until the router holds requests (``held``), then starts
  at once enough replicas for the waiting requests at ``targetQueueDepth`` each (at least
  one, at most ``scale_up_pods``) on the cheapest pool; the decision names the held
  requests. The last replica goes only when the scale-down window saw no traffic at all
  (no request rate, nothing waiting, held or in flight, no latency sample): every
  recommendation in it was zero.
* Time to first token measured while no replica was Ready (the router's histogram includes
  the hold) says how long a cold start took, not how loaded the fleet is: for
  ``held_latency_seconds`` after the last evaluation that saw no Ready replica, the P95 is
  not used (the queue, held, in-flight and rate signals still are), so a wake from zero
  does not panic the fleet to maxReplicas on its own cold start.
* An optional :class:`Floor` (a schedule window or the learned pre-warm of :mod:`.prewarm`)
  raises minReplicas for this decision, clamped to maxReplicas: below it the fleet grows
  to it at once, whatever the metrics (so a pre-warm works even before traffic or with
  Prometheus down), and scale-down stops at it. Every decision it changes names it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Literal

DecisionKind = Literal["scale-up", "scale-down", "hold", "panic"]
_EPS = 1e-9
#: Below this share of the SLO the P95 is not a capacity signal: an idle L40S answers in ~0.05 s,
#: and scaled by a mixed fleet's capacity that floor alone would hold replicas no load needs.
LATENCY_SIGNAL_FROM = 0.5
#: Sub-fleets :func:`place_scale_down` tries exactly (~0.1 s at the bound); larger fleets go greedy.
_SCALE_DOWN_COMBINATIONS = 20_000


@dataclass(frozen=True)
class PoolState:
    """One GPU pool as the policy sees it (a pool = replicas of one GPU type)."""

    gpu_type: str
    cost_per_hour: float  # $/h for one replica (all its shards)
    throughput: float = 1.0  # requests/s one replica carries within the SLO (or relative units)
    ready: int = 0
    starting: int = 0  # created, model still loading: counted as capacity
    free: int = 0  # more replicas that fit on free GPUs of this type
    target_in_flight: float | None = None  # in-flight requests one ready replica should carry
    per_second: bool = True  # throughput is requests/s (False: relative units, no request-rate signal)

    @property
    def replicas(self) -> int:
        return self.ready + self.starting

    @property
    def unit_cost(self) -> float:
        return self.cost_per_hour / self.throughput


@dataclass(frozen=True)
class Signals:
    """Fleet-wide observations (PromQL in DESIGN.md). ``None`` = source down, NaN = no data."""

    queue_depth: float | None  # waiting requests, summed over pods
    p95_seconds: float | None  # P95 request duration over the last minute
    in_flight: float | None = None  # running + waiting requests, summed over pods
    request_rate: float | None = None  # requests/s over the last minute (needs throughput in req/s)
    held: float | None = None  # requests the router holds for want of a replica (None: no router)


@dataclass(frozen=True)
class Targets:
    """``spec.scaling`` plus the policy's tuning knobs (defaults are the shipped tuning)."""

    min_replicas: int = 1
    max_replicas: int = 12
    target_queue_depth: float = 4.0  # waiting requests per ready replica
    p95_latency_seconds: float = 1.2  # the SLO
    scale_down_delay_seconds: float = 300.0
    tolerance: float = 0.1
    panic_threshold: float = 2.0
    panic_window_seconds: float = 60.0
    scale_down_step: int = 1
    scale_up_pods: int = 4  # non-panic step: max(+scale_up_pods, +100%)
    utilisation: float = 0.8  # request rate target as a fraction of the pools' throughput at the SLO
    held_latency_seconds: float = 120.0  # P95 unused this long after no replica was Ready (it measures the hold)


@dataclass(frozen=True)
class Floor:
    """Fewest replicas for one decision, above minReplicas, and why (e.g. a schedule window)."""

    replicas: int
    reason: str  # e.g. "schedule 'morning' floor 4"


@dataclass(frozen=True)
class Recommendation:
    time: float  # seconds, any monotonic clock
    capacity: float  # desired capacity (throughput units) computed at that time


@dataclass(frozen=True)
class History:
    """What the policy remembers between decisions (kept in status by the controller)."""

    recommendations: tuple[Recommendation, ...] = ()
    panic_until: float | None = None
    no_ready_at: float | None = None  # last evaluation that saw no Ready replica (see held_latency_seconds)


@dataclass(frozen=True)
class Decision:
    desired: dict[str, int]  # replicas per pool (ready + starting after applying)
    total: int
    kind: DecisionKind
    reason: str
    history: History
    ratio: float | None = None  # the load ratio, None when no signal
    desired_capacity: float | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


def _valid(x: float | None) -> bool:
    return x is not None and not math.isnan(x)


def _capacity(pools: dict[str, PoolState], counts: dict[str, int]) -> float:
    return sum(pools[name].throughput * n for name, n in counts.items())


def place_scale_up(pools: list[PoolState], current: dict[str, int], need: float, max_new: int) -> dict[str, int]:
    """Add replicas covering ``need`` capacity at the least $/h, on pools with free GPUs.

    Exact for the handful of pools a deployment has (a bounded enumeration: two A10G beat
    one A100 when two cover the need); when the need cannot be covered, or is unbounded
    (filling to minReplicas), replicas go cheapest per unit throughput first.
    Returns the new counts.
    """
    counts = dict(current)
    open_pools = [p for p in pools if p.free > 0 and max_new > 0]
    if not open_pools or need <= _EPS:
        return counts
    if not math.isinf(need):
        ranges = [range(min(p.free, max_new, math.ceil(need / p.throughput - _EPS)) + 1) for p in open_pools]
        if math.prod(len(r) for r in ranges) <= 50_000:
            best: tuple[float, int, float] | None = None
            best_combo: tuple[int, ...] = ()
            for combo in itertools.product(*ranges):
                n = sum(combo)
                cap = sum(k * p.throughput for k, p in zip(combo, open_pools, strict=True))
                if n > max_new or cap < need - _EPS:
                    continue
                key = (sum(k * p.cost_per_hour for k, p in zip(combo, open_pools, strict=True)), n, -cap)
                if best is None or key < best:
                    best, best_combo = key, combo
            if best is not None:
                for k, p in zip(best_combo, open_pools, strict=True):
                    counts[p.gpu_type] += k
                return counts
    free = {p.gpu_type: p.free for p in open_pools}
    added = 0
    for p in sorted(open_pools, key=lambda p: (p.unit_cost, p.cost_per_hour, p.gpu_type)):
        while free[p.gpu_type] > 0 and added < max_new and need > _EPS:
            counts[p.gpu_type] += 1
            free[p.gpu_type] -= 1
            need -= p.throughput
            added += 1
    return counts


def place_scale_down(
    pools: list[PoolState], current: dict[str, int], target: float, steps: int, floor: int
) -> dict[str, int]:
    """Remove up to ``steps`` replicas, keeping capacity >= ``target`` and at least ``floor`` replicas.

    With a capacity target, the removals head for the cheapest sub-fleet of ``current`` that
    still covers it (exact for a deployment's handful of pools, as in :func:`place_scale_up`);
    between sub-fleets of equal $/h, the one whose cheapest ``max(floor, 1)`` replicas cost least,
    i.e. what it shrinks to when traffic falls further. So a replica that costs nothing (an owned
    A10G) is not removed while a rented L40S beside it is still needed: removing it saves nothing
    now and would leave the L40S as the last replica. Either way (also without a target, ``-inf``:
    trimming to a count) replicas go most expensive per unit of throughput first.
    """
    by_name = {p.gpu_type: p for p in pools}
    counts = dict(current)
    goal = _cheapest_cover(pools, current, target, floor) if not math.isinf(target) else None
    for _ in range(steps):
        if sum(counts.values()) <= floor:
            break
        cap = _capacity(by_name, counts)
        order = sorted((p for p in pools if counts[p.gpu_type] > 0), key=lambda p: (-p.unit_cost, -p.cost_per_hour))
        if goal is not None:
            order = [p for p in order if counts[p.gpu_type] > goal[p.gpu_type]]
        pick = next((p for p in order if cap - p.throughput >= target - _EPS), None)
        if pick is None:
            break
        counts[pick.gpu_type] -= 1
    return counts


def _cheapest_cover(
    pools: list[PoolState], current: dict[str, int], target: float, floor: int
) -> dict[str, int] | None:
    """The cheapest sub-fleet of ``current`` with capacity >= ``target`` and >= ``floor`` replicas
    (ties: the cheaper ``max(floor, 1)`` replicas it would keep last, then fewer replicas); None
    when there are too many combinations to try (the caller falls back to the greedy order).
    Every autoscaler tick without a scale-up asks, so each combination costs O(pools)."""
    live = [p for p in pools if current.get(p.gpu_type, 0) > 0]
    ranges = [range(current[p.gpu_type] + 1) for p in live]
    if math.prod(len(r) for r in ranges) > _SCALE_DOWN_COMBINATIONS:
        return None
    last = max(floor, 1)
    cheapest_first = sorted(range(len(live)), key=lambda i: live[i].cost_per_hour)
    least = min(floor, sum(current.values()))
    best: tuple[float, float, int] | None = None
    goal = dict(current)
    for combo in itertools.product(*ranges):
        n = sum(combo)
        if n < least or sum(k * p.throughput for k, p in zip(combo, live, strict=True)) < target - _EPS:
            continue
        cost = sum(k * p.cost_per_hour for k, p in zip(combo, live, strict=True))
        kept, left = 0.0, last
        for i in cheapest_first:
            take = min(left, combo[i])
            kept += take * live[i].cost_per_hour
            left -= take
        key = (round(cost, 9), round(kept, 9), n)
        if best is None or key < best:
            best = key
            goal = {**current, **{p.gpu_type: k for k, p in zip(combo, live, strict=True)}}
    return goal


def _held(signals: Signals) -> float:
    return signals.held if signals.held is not None and _valid(signals.held) and signals.held > 0 else 0.0


def _load_ratio(
    pools: list[PoolState], signals: Signals, targets: Targets, latency_quiet_until: float | None = None
) -> tuple[float | None, list[str], bool]:
    """(ratio, explanation parts, latency_missing). ratio None means no usable signal.

    Waiting requests are the engines' queue plus what the router holds; ``latency_quiet_until``
    set: the P95 is not used (it measures requests held while no replica was Ready)."""
    ready = sum(p.ready for p in pools)
    ready_cap = sum(p.ready * p.throughput for p in pools)
    queue, p95, in_flight = signals.queue_depth, signals.p95_seconds, signals.in_flight
    if not _valid(queue):
        return None, ["queue depth unavailable"], True
    assert queue is not None
    held = _held(signals)
    parts: list[str] = []
    ratios: list[float] = []
    ratios.append((queue + held) / (targets.target_queue_depth * ready))
    waiting = f"queue {queue:.0f} + held {held:.0f}" if held else f"queue {queue:.0f}"
    parts.append(f"{waiting} over {ready} ready (target {targets.target_queue_depth:g}/replica) -> {ratios[-1]:.2f}")
    latency_missing = False
    idle = queue == 0 and held == 0 and _valid(in_flight) and in_flight == 0
    if latency_quiet_until is not None and _valid(p95):
        parts.append(
            f"P95 {p95:.2f}s not used until t={latency_quiet_until:.0f}s"
            " (it includes the hold while no replica was Ready)"
        )
        latency_missing = not idle  # no scale-down on it either
    elif _valid(p95):
        assert p95 is not None
        ratio = p95 / targets.p95_latency_seconds
        if ratio >= LATENCY_SIGNAL_FROM:
            ratios.append(ratio)
            parts.append(f"P95 {p95:.2f}s / SLO {targets.p95_latency_seconds:g}s -> {ratio:.2f}")
        else:  # the engines' idle time to first token (prefill), which no replica count shortens
            slo = targets.p95_latency_seconds
            parts.append(f"P95 {p95:.2f}s / SLO {slo:g}s -> {ratio:.2f} (far under: not sized on)")
    else:
        latency_missing = not idle
        parts.append("P95 NaN with nothing in flight (idle)" if idle else "P95 unavailable")
    per_replica = [p.target_in_flight for p in pools if p.ready > 0]
    if _valid(in_flight) and per_replica and all(t is not None and t > 0 for t in per_replica):
        assert in_flight is not None
        target_total = sum(p.ready * (p.target_in_flight or 0.0) for p in pools)
        ratios.append(in_flight / target_total)
        parts.append(f"in-flight {in_flight:.0f} / target {target_total:.0f} -> {ratios[-1]:.2f}")
    rate = signals.request_rate
    per_second = all(p.per_second for p in pools if p.ready > 0)
    if _valid(rate) and ready_cap > 0 and per_second:
        assert rate is not None
        ratios.append(rate / (ready_cap * targets.utilisation))
        parts.append(f"rate {rate:.2f}/s over capacity {ready_cap:.2f}/s x {targets.utilisation:g} -> {ratios[-1]:.2f}")
    return max(ratios), parts, latency_missing


def decide(
    now: float,
    pools: list[PoolState],
    signals: Signals,
    targets: Targets,
    history: History | None = None,
    floor_capacity: float | None = None,
    floor: Floor | None = None,
) -> Decision:
    """The desired replicas per pool for this evaluation (pure; see the module docstring)."""
    history = history or History()
    lowest = targets.min_replicas
    floored = floor is not None and min(floor.replicas, targets.max_replicas) > targets.min_replicas
    if floored:
        assert floor is not None
        lowest = min(floor.replicas, targets.max_replicas)
    by_name = {p.gpu_type: p for p in pools}
    current = {p.gpu_type: p.replicas for p in pools}
    total_now = sum(current.values())
    ready_cap = sum(p.ready * p.throughput for p in pools)
    total_cap = _capacity(by_name, current)

    trimmed = ""  # set when the fleet was above maxReplicas (e.g. a rollout's borrowed replica at the cap)

    def result(
        counts: dict[str, int],
        kind: DecisionKind,
        reason: str,
        hist: History,
        ratio: float | None = None,
        desired_capacity: float | None = None,
    ) -> Decision:
        if trimmed:
            reason = f"{trimmed}; {reason}"
            kind = "scale-down" if kind == "hold" else kind
        return Decision(counts, sum(counts.values()), kind, reason, hist, ratio, desired_capacity)

    # Hard bounds first: they are the user's instructions, whatever the metrics say.
    if total_now < lowest:
        short = lowest - total_now
        counts = place_scale_up(pools, current, math.inf, short)
        if floored:
            assert floor is not None
            why = f"{floor.reason}: below {lowest} replicas, adding {short}"
            if lowest < floor.replicas:
                why += f" (clamped to maxReplicas {targets.max_replicas})"
            return result(counts, "scale-up", why, history)
        placed = sum(counts.values()) - total_now
        if placed < short:  # no free GPU of an allowed type for the rest: say so, never a silent shortfall
            why = f"below minReplicas {targets.min_replicas}: adding {placed} of {short}"
            why += " (no free GPU of an allowed type)"
            return result(counts, "scale-up" if placed else "hold", why, history)
        return result(counts, "scale-up", f"below minReplicas {targets.min_replicas}: adding {short}", history)
    if total_now > targets.max_replicas:
        # trim to the cap, then decide as usual from there: returning here kept every tick at the cap and
        # never fed the scale-down window (seen in the demo: a roll's borrowed replica at maxReplicas held the
        # whole fleet through the trough)
        counts = place_scale_down(pools, current, -math.inf, total_now - targets.max_replicas, targets.max_replicas)
        trimmed = f"above maxReplicas {targets.max_replicas}: trimmed to {sum(counts.values())}"
        current = counts
        total_now = sum(current.values())
        total_cap = _capacity(by_name, current)
    if sum(p.ready for p in pools) == 0:
        history = History(history.recommendations, history.panic_until, no_ready_at=now)
        held = _held(signals)
        if total_now > 0:
            why = f"waiting for {total_now} starting replica(s) to become ready"
            return result(current, "hold", why + (f"; the router holds {held:.0f} request(s)" if held else ""), history)
        queued = signals.queue_depth if _valid(signals.queue_depth) else 0.0
        busy = (queued or 0) > 0 or (_valid(signals.in_flight) and (signals.in_flight or 0) > 0)
        if (held or busy) and targets.max_replicas > 0:
            waiting = held + (queued or 0.0)
            n = min(max(1, math.ceil(waiting / targets.target_queue_depth - _EPS)), targets.scale_up_pods)
            counts = place_scale_up(pools, current, math.inf, min(n, targets.max_replicas))
            added = {k: counts[k] - current[k] for k in counts if counts[k] != current[k]}
            if not added:
                return result(current, "hold", "requests waiting and no replica, but no free GPUs in any pool", history)
            what = ", ".join(f"+{k_n} {k}" for k, k_n in added.items())
            if held:
                why = f"{what}: scale from zero, the router holds {held:.0f} request(s) and no replica is running"
            else:
                why = f"{what}: requests waiting and no replica: starting {sum(added.values())}"
            return result(counts, "scale-up", why, history)
        idle = "no replicas and no traffic" + (" (the router holds no request)" if signals.held is not None else "")
        return result(current, "hold", idle, history)

    quiet = None
    if history.no_ready_at is not None and now < history.no_ready_at + targets.held_latency_seconds:
        quiet = history.no_ready_at + targets.held_latency_seconds
    ratio, parts, latency_missing = _load_ratio(pools, signals, targets, quiet)
    if ratio is None:
        return result(current, "hold", "holding: " + "; ".join(parts) + " (never scale down without signal)", history)

    effective = 1.0 if abs(ratio - 1.0) <= targets.tolerance else ratio
    desired_cap = ready_cap * effective
    explain = "; ".join(parts)
    if floor_capacity is not None and floor_capacity > desired_cap:
        desired_cap = floor_capacity
        explain += f"; pre-warm floor {floor_capacity:.2f}"

    panic_until = history.panic_until
    in_panic = ratio >= targets.panic_threshold
    if in_panic:
        panic_until = now + targets.panic_window_seconds
    window_start = now - targets.scale_down_delay_seconds
    recs = tuple(r for r in history.recommendations if r.time > window_start) + (Recommendation(now, desired_cap),)
    new_hist = History(recommendations=recs, panic_until=panic_until, no_ready_at=history.no_ready_at)

    if desired_cap > total_cap + _EPS:
        room = targets.max_replicas - total_now
        step = room if in_panic else min(room, max(targets.scale_up_pods, total_now))
        counts = place_scale_up(pools, current, desired_cap - total_cap, step)
        added = {k: counts[k] - current[k] for k in counts if counts[k] != current[k]}
        if not added:
            why = "maxReplicas reached" if room <= 0 else "no free GPUs in any allowed pool"
            return result(
                current,
                "hold",
                f"need capacity {desired_cap:.2f} > {total_cap:.2f} but {why}; {explain}",
                new_hist,
                ratio,
                desired_cap,
            )
        what = ", ".join(f"+{n} {k}" for k, n in added.items())
        kind: DecisionKind = "panic" if in_panic else "scale-up"
        return result(
            counts,
            kind,
            f"{what}: capacity {total_cap:.2f} -> {desired_cap:.2f} needed; {explain}",
            new_hist,
            ratio,
            desired_cap,
        )

    if latency_missing:
        return result(
            current, "hold", f"holding: latency signal missing, no scale-down; {explain}", new_hist, ratio, desired_cap
        )
    if panic_until is not None and now < panic_until:
        return result(
            current,
            "hold",
            f"panic window until t={panic_until:.0f}s: no scale-down; {explain}",
            new_hist,
            ratio,
            desired_cap,
        )
    stabilised = max(r.capacity for r in recs)
    # hysteresis: the smaller fleet must cover the window's max *with* the tolerance to spare
    keep = stabilised * (1.0 + targets.tolerance)
    counts = place_scale_down(pools, current, keep, targets.scale_down_step, lowest)
    if floored and counts == current:
        unfloored = place_scale_down(pools, current, keep, targets.scale_down_step, targets.min_replicas)
        if unfloored != current:  # only the floor keeps these replicas
            assert floor is not None
            return result(
                current,
                "hold",
                f"{floor.reason}: holding {total_now} replicas although {stabilised:.2f} needs fewer; {explain}",
                new_hist,
                ratio,
                desired_cap,
            )
    removed = {k: current[k] - counts[k] for k in counts if counts[k] != current[k]}
    if removed:
        what = ", ".join(f"-{n} {k}" for k, n in removed.items())
        if sum(counts.values()) == 0:
            what += f": to zero, no traffic for {targets.scale_down_delay_seconds:g}s"
        return result(
            counts,
            "scale-down",
            f"{what}: max recommendation over {targets.scale_down_delay_seconds:g}s is {stabilised:.2f} "
            f"< capacity {total_cap:.2f}; {explain}",
            new_hist,
            ratio,
            desired_cap,
        )
    return result(
        current, "hold", f"capacity {total_cap:.2f} covers {stabilised:.2f}; {explain}", new_hist, ratio, desired_cap
    )

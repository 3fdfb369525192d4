"""Discrete-event simulation of a SIMULATED TGI fleet under a trace, one run per autoscaling policy.

Why it exists: the operator's claim (absorb a +300% morning spike within the SLO, cost
little in the troughs) is measured here, side by side with what people run today, by
driving the *same* decision the controller runs (:func:`..autoscale.loop.evaluate` on the
same :class:`~..autoscale.loop.Observation`, its per-pool counts applied as they are)
and the *same* replica model and continuous-batching engine as the simulated TGI server.

Mechanics (shared by every policy, :mod:`.fleet`): replicas per GPU pool limited by the
GPUs of each type; a new replica serves only after its modelled cold start
(:class:`..capacity.model.ColdStart`: ``SimConfig.weights`` says whether a scale-out replica
finds the weights on its node, ``on-node``, pre-staged; or pulls the whole checkpoint from
the registry first at ``SimConfig.registry_bytes_per_s``, ``pulled``); removed
replicas stop receiving traffic and drain; the balancer sends each request to the ready
replica with the fewest outstanding requests; TGI's ``max_concurrent_requests`` turns
excess into 429s. Every ``tick_seconds`` (15 s, the controller's timer) the autoscaler
reads what Prometheus would: ``sum(tgi_queue_size)``, in-flight requests, and the P95
latency of requests seen in the last minute (NaN when none).

Policies: ``qwen`` (this operator), ``hpa-queue`` (KEDA Prometheus trigger on the queue
driving the Kubernetes HPA, :mod:`..autoscale.baselines`), ``static-peak`` (enough for
the busiest minute all the time), ``static-mean`` (enough for the mean rate), ``oracle``
(knows the next two minutes' arrivals, scales instantly with no cold start: not
achievable, it marks the physical limit).

Pre-warm variants (:mod:`..autoscale.prewarm`, the controller's own floor code):
``qwen+schedule`` is qwen plus one ``spec.scaling.schedules`` window matching the
envelope's known peak (:func:`envelope_schedule`: it opens a cold start plus one tick
before the rise, on the days with the full daily factor, with the replicas that carry the
peak window's mean rate at the policy's utilisation); ``qwen+predictive`` is qwen plus
``spec.scaling.predictive`` learning from the previous simulated days (the trace starts
on a Monday at 00:00 UTC, so only ``week`` has previous days to learn from).

The latency the SLO is about defaults to time to first token (``ttft``): with the Azure
trace's outputs (median 129 tokens) no GPU finishes a request end to end in 1.2 s, so an
end-to-end SLO at that level is unreachable by any policy; ``latency_metric="e2e"``
measures that instead.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ..autoscale import loop, prewarm
from ..autoscale.baselines import HPAState, hpa_queue_decide
from ..autoscale.loop import Observation, PoolEstimate, pool_state
from ..autoscale.policy import Decision, Floor, History, PoolState, Targets, place_scale_down, place_scale_up
from ..capacity.model import DEFAULT_REGISTRY_BYTES_PER_S, WEIGHTS_MODES
from .capacity import PoolProfile, calibrate_pool, smallest_fit
from .fleet import Fleet
from .trace import ENVELOPES, Trace, TraceRow
from .workloads import SessionTrace

POLICIES = ("qwen", "hpa-queue", "static-peak", "static-mean", "oracle")
PREWARM_POLICIES = ("qwen+schedule", "qwen+predictive")
ALL_POLICIES = POLICIES + PREWARM_POLICIES
#: Simulated t=0: a Monday 00:00 UTC (the week envelope's day 0), so schedules and profiles see real dates.
SIM_EPOCH = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
DEFAULT_GPUS = {"A10G": 8, "L40S": 4, "A100-80GB": 2}
METRIC_KEYS = (
    "gpu_hours",
    "cost_usd",
    "slo_minutes_fraction",
    "p95_seconds",
    "rejected_fraction",
    "scale_events",
    "oscillations",
)

Progress = Callable[[str, float, float], None]
#: Called with every observation the qwen policies decide on and the decision (the parity test records these).
Recorder = Callable[[Observation, Decision | None], None]


@dataclass(frozen=True)
class SimConfig:
    model: str = "Qwen/Qwen3-14B"
    quantization: str = "fp8"
    gpus: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_GPUS))
    slo_seconds: float = 1.2
    latency_metric: str = "ttft"
    tick_seconds: float = 15.0
    sync_seconds: float = 1.0  # how stale the balancer's outstanding counts may get
    min_replicas: int = 1
    max_replicas: int | None = None  # default: all the GPUs hold
    target_queue_depth: float = 4.0
    scale_down_delay_seconds: float = 300.0
    utilisation: float = 0.8  # qwen: target fraction of throughput (and concurrency) at the SLO
    oracle_lookahead_seconds: float = 120.0
    seed: int = 0
    prewarm_lead_seconds: float | None = None  # pre-warm variants; None: slowest cold start + one tick
    lookback_days: int = 7  # qwen+predictive: spec.scaling.predictive.lookbackDays
    routing: str = "router"  # router | least-outstanding | service (sim/fleet.py ROUTINGS)
    engine: str = "tgi"  # which tensor-parallel degrees a replica may use (vllm replicates KV heads)
    #: Scale-out replicas' cold start: ``on-node`` (weights pre-staged on the node) or ``pulled``
    #: (the init container downloads the whole checkpoint at ``registry_bytes_per_s`` first).
    weights: str = "on-node"
    registry_bytes_per_s: float = DEFAULT_REGISTRY_BYTES_PER_S

    def cold_start_label(self) -> str:
        """Which cold start the fleet's scale-outs use, for reports."""
        if self.weights == "pulled":
            return (
                f"weights pulled now (every scale-out replica's init container downloads the whole checkpoint "
                f"from the registry at {self.registry_bytes_per_s / 1e6:,.0f} MB/s before loading)"
            )
        return "weights on node (pre-staged: a scale-out replica loads them from the node cache)"


@dataclass
class Timeline:
    t: list[float] = field(default_factory=list)
    load: list[float] = field(default_factory=list)  # arrivals per second in the tick
    replicas: dict[str, list[int]] = field(default_factory=dict)
    p95: list[float] = field(default_factory=list)


@dataclass
class PolicyResult:
    name: str
    gpu_hours: float
    cost_usd: float
    slo_minutes_fraction: float
    p95_seconds: float
    rejected_fraction: float
    scale_events: int
    oscillations: int
    requests: int
    rejected: int
    invalid: int
    timeline: Timeline
    floor_decisions: int = 0  # decisions a pre-warm floor changed (pre-warm variants)

    def metrics(self) -> dict[str, float | int]:
        return {k: getattr(self, k) for k in METRIC_KEYS}


def build_profiles(rows: list[TraceRow], cfg: SimConfig) -> tuple[dict[str, PoolProfile], list[str]]:
    """Calibrate every GPU type in ``cfg.gpus``; pools that cannot meet the SLO are left out.

    Each pool's ``cold_start_seconds`` is its replica's cold start with ``cfg.weights``."""
    if cfg.weights not in WEIGHTS_MODES:
        raise ValueError(f"weights {cfg.weights!r}; valid: {', '.join(WEIGHTS_MODES)}")
    profiles: dict[str, PoolProfile] = {}
    notes: list[str] = []
    for gpu, count in cfg.gpus.items():
        replica = smallest_fit(cfg.model, gpu, cfg.quantization, cfg.engine)
        if replica is None:
            notes.append(
                f"{gpu}: {cfg.model} {cfg.quantization} does not fit one node (up to 8 GPUs, {cfg.engine}); pool unused"
            )
            continue
        prof = calibrate_pool(replica, rows, cfg.slo_seconds, cfg.latency_metric, cfg.seed)
        if prof.rate_at_slo <= 0:
            notes.append(f"{gpu}: {prof.note}; pool unused")
            continue
        if count < prof.shards:
            notes.append(f"{gpu}: {count} GPUs < {prof.shards} shards per replica; pool unused")
            continue
        cold = replica.cold_start
        prof = replace(prof, cold_start_seconds=cold.seconds(cfg.weights, cfg.registry_bytes_per_s))
        profiles[gpu] = prof
        how = (
            f"{cold.pull_seconds(cfg.registry_bytes_per_s):.0f}s pull of {cold.checkpoint_bytes / 1e9:.1f} GB "
            f"+ {cold.on_node:.0f}s on node"
            if cfg.weights == "pulled"
            else "weights on node"
        )
        notes.append(
            f"{gpu}: {prof.shards} GPU(s)/replica, ${prof.cost_per_hour:.2f}/h, {prof.rate_at_slo:.2f} req/s "
            f"(~{prof.concurrency_at_slo:.0f} in flight) at P95 {cfg.latency_metric} <= {cfg.slo_seconds:g}s, "
            f"cold start {prof.cold_start_seconds:.0f}s ({how})"
        )
    return profiles, notes


def minute_rates(trace: Trace) -> list[float]:
    """Arrivals per second in each minute of the trace."""
    counts = [0] * max(1, math.ceil(trace.duration / 60.0))
    for t in trace.arrivals:
        counts[min(len(counts) - 1, int(t // 60))] += 1
    return [c / 60.0 for c in counts]


def pool_estimates(profiles: dict[str, PoolProfile], cfg: SimConfig) -> list[PoolEstimate]:
    """What one replica of each simulated pool is worth to the policy: its calibrated requests/s
    within the SLO, and the in-flight requests it carries then at ``cfg.utilisation``."""
    return [
        PoolEstimate(name, p.cost_per_hour, p.rate_at_slo, p.shards, p.concurrency_at_slo * cfg.utilisation)
        for name, p in profiles.items()
    ]


def _pools(fleet: Fleet, now: float, cfg: SimConfig, whole: bool = False) -> list[PoolState]:
    ready, counts = fleet.ready_counts(now), fleet.counts()
    return [
        pool_state(
            est,
            ready=0 if whole else ready[est.gpu_type],
            starting=0 if whole else counts[est.gpu_type] - ready[est.gpu_type],
            free=fleet.limits[est.gpu_type] if whole else fleet.free(est.gpu_type),
        )
        for est in pool_estimates(fleet.profiles, cfg)
    ]


def observe(
    fleet: Fleet, now: float, cfg: SimConfig, p95: float, floor: Floor | None = None, held: float | None = None
) -> Observation:
    """What the controller would read at ``now``: pools from the cluster, signals from Prometheus
    (``sum(tgi_queue_size)``, running + waiting, the P95 over the last minute with NaN as "no
    series", ``sum(rate(tgi_request_count[1m]))``), and the pre-warm floor in force.

    ``held``: the router's held requests. The simulated fleet has no hold queue (a request no
    replica can take is rejected), so :func:`simulate_policy` passes, while no replica is Ready,
    the requests rejected since the last tick for want of one: what the router would hold, and
    what wakes a fleet scaled to ``min_replicas=0``."""
    queue, in_flight = fleet.queue_and_in_flight(now)
    return Observation(
        now=now,
        pools=tuple(_pools(fleet, now, cfg)),
        queue_depth=queue,
        p95_seconds=None if math.isnan(p95) else p95,
        in_flight=in_flight,
        request_rate=fleet.request_rate(now),
        floor=floor,
        held=held,
    )


def _size_for(fleet: Fleet, rate: float, cfg: SimConfig, floor: int) -> dict[str, int]:
    pools = _pools(fleet, 0.0, cfg, whole=True)
    counts = place_scale_up(pools, dict.fromkeys(fleet.profiles, 0), rate, sum(fleet.limits.values()))
    if sum(counts.values()) < floor:
        counts = place_scale_up(pools, counts, math.inf, floor - sum(counts.values()))
    return counts


def prewarm_lead(profiles: dict[str, PoolProfile], cfg: SimConfig) -> float:
    """The pre-warm lead: ``cfg.prewarm_lead_seconds``, else the slowest pool's modelled cold start
    with the weights on the node plus one tick: the controller's default for an unset ``leadSeconds``
    (:func:`..controller.autoscaler.prewarm_lead` models the on-node cold start, so with
    ``weights="pulled"`` the lead falls short by the pull, as it would in a cluster without pre-staging)."""
    if cfg.prewarm_lead_seconds is not None:
        return cfg.prewarm_lead_seconds
    return max((p.replica.cold_start_seconds for p in profiles.values()), default=0.0) + cfg.tick_seconds


def envelope_schedule(trace: Trace, fleet: Fleet, cfg: SimConfig, lead_seconds: float) -> list[prewarm.Window]:
    """One window for the envelope's known peak, as its operator would write it from last week's dashboard:
    open from ``lead_seconds`` (rounded up to a minute) before the rise to the peak's end, on the days
    with the full daily factor, ``minReplicas`` = replicas carrying the window's mean arrival rate
    at ``cfg.utilisation`` (the busiest scheduled day). No window for a replayed trace (no known peak)."""
    env = ENVELOPES.get(trace.name)
    if env is None or env.replay or not env.points:
        return []
    top = max(v for _, v in env.points)
    first = next(i for i, (_, v) in enumerate(env.points) if v == top)
    rise_h = env.points[max(0, first - 1)][0]
    end_h = max(h for h, v in env.points if v == top)
    start_min = (round(rise_h * 60) - math.ceil(lead_seconds / 60.0)) % 1440
    end_min = round(end_h * 60) % 1440
    full = max(env.day_factors)
    days = frozenset(d for d in range(7) if env.day_factors[d] == full)
    busiest = 0.0
    for d in range(env.days):
        if d % 7 not in days:
            continue
        lo, hi = d * 86400.0 + rise_h * 3600.0, d * 86400.0 + end_h * 3600.0
        n = sum(1 for t in trace.arrivals if lo <= t < hi)
        busiest = max(busiest, n / (hi - lo))
    replicas = sum(_size_for(fleet, busiest / cfg.utilisation, cfg, cfg.min_replicas).values())
    return [prewarm.Window("peak", start_min, end_min, replicas, "UTC", days)]


def _minutes_within(per_minute: dict[int, list[float]], slo: float) -> float:
    good = total = 0
    for lats in per_minute.values():
        lats.sort()
        total += 1
        good += lats[min(len(lats) - 1, math.ceil(0.95 * len(lats)) - 1)] <= slo
    return good / total if total else 1.0


def simulate_policy(
    name: str,
    trace: Trace,
    profiles: dict[str, PoolProfile],
    cfg: SimConfig,
    progress: Progress | None = None,
    record: Recorder | None = None,
) -> PolicyResult:
    """Run ``trace`` through a fleet governed by policy ``name``.

    The qwen policies decide exactly as the controller does (:func:`..autoscale.loop.evaluate`
    on an :class:`~..autoscale.loop.Observation`) and apply its per-pool counts."""
    if name not in ALL_POLICIES:
        raise ValueError(f"unknown policy {name!r}; valid: {', '.join(ALL_POLICIES)}")
    if not profiles:
        raise ValueError("no GPU pool can serve this model within the SLO")
    slo_ttft = cfg.slo_seconds if cfg.latency_metric == "ttft" else 0.0
    fleet = Fleet(profiles, cfg.gpus, cfg.latency_metric, cfg.routing, slo_ttft, cfg.seed)
    max_replicas = cfg.max_replicas or sum(fleet.limits.values())
    targets = Targets(
        min_replicas=cfg.min_replicas,
        max_replicas=max_replicas,
        target_queue_depth=cfg.target_queue_depth,
        p95_latency_seconds=cfg.slo_seconds,
        scale_down_delay_seconds=cfg.scale_down_delay_seconds,
        utilisation=cfg.utilisation,
    )
    rates = minute_rates(trace)
    ahead = max(1, math.ceil(cfg.oracle_lookahead_seconds / 60.0))

    def oracle_rate(now: float) -> float:
        m = int(now // 60)
        return max(rates[m : m + ahead + 1] or [0.0])

    if name == "static-peak":
        fleet.apply(0.0, _size_for(fleet, max(rates), cfg, cfg.min_replicas), instant=True)
    elif name == "static-mean":
        fleet.apply(0.0, _size_for(fleet, len(trace) / trace.duration, cfg, cfg.min_replicas), instant=True)
    else:  # autoscaled fleets start warm, sized for the first minutes
        fleet.apply(0.0, _size_for(fleet, oracle_rate(0.0), cfg, cfg.min_replicas), instant=True)

    lead = prewarm_lead(profiles, cfg)
    windows = envelope_schedule(trace, fleet, cfg, lead) if name == "qwen+schedule" else []
    learned = prewarm.Profile()
    floor_decisions = 0
    history, hpa_state = History(), HPAState()
    timeline = Timeline(replicas={p: [] for p in profiles})
    arr, prompt, output = trace.arrivals, trace.prompt_tokens, trace.output_tokens
    i, n = 0, len(arr)
    next_sync = cfg.sync_seconds
    scale_events = oscillations = last_dir = 0
    n_ticks = math.ceil(trace.duration / cfg.tick_seconds)
    for k in range(1, n_ticks + 1):
        now = k * cfg.tick_seconds
        first = i
        rejected_before = fleet.stats.rejected
        while i < n and arr[i] < now:
            t = arr[i]
            if t >= next_sync:
                fleet.sync(t)
                next_sync = t + cfg.sync_seconds
            if isinstance(trace, SessionTrace):  # chat turns: session key and prefix shared with the last turn
                fleet.route(t, prompt[i], output[i], trace.keys[i], trace.prefix_tokens[i])
            else:
                fleet.route(t, prompt[i], output[i])
            i += 1
        fleet.sync(now)
        next_sync = now + cfg.sync_seconds
        p95 = fleet.p95(now)
        before = fleet.counts()
        if name == "qwen" or name in PREWARM_POLICIES:
            when = SIM_EPOCH + dt.timedelta(seconds=now)
            found = None
            if name == "qwen+schedule":
                found, _ = prewarm.schedule_floor(windows, when)
            elif name == "qwen+predictive":
                found = prewarm.predicted_floor(learned, when, "UTC", lead, cfg.lookback_days)
            floor = prewarm.combine([found], targets.min_replicas, targets.max_replicas)
            # no replica Ready: what the tick's requests got rejected for, the router would hold
            held = None if sum(fleet.ready_counts(now).values()) else float(fleet.stats.rejected - rejected_before)
            obs = observe(fleet, now, cfg, p95, floor, held)
            d = loop.evaluate(obs, targets, history, sum(before.values()))
            if record is not None:
                record(obs, d)
            if d is not None:  # None: no metrics (never in a simulation); keep what runs
                if floor is not None and floor.reason in d.reason:
                    floor_decisions += 1
                if name == "qwen+predictive":
                    need = prewarm.load_replicas(d, obs.pools, targets.max_replicas, floor)
                    if need is not None:
                        learned = prewarm.observe(learned, when, need, cfg.lookback_days)
                history = d.history
                fleet.apply(now, d.desired)
        elif name == "hpa-queue":
            queue, _ = fleet.queue_and_in_flight(now)
            total = sum(before.values())
            h = hpa_queue_decide(now, total, queue, cfg.target_queue_depth, cfg.min_replicas, max_replicas, hpa_state)
            hpa_state = h.state
            pools = _pools(fleet, now, cfg)
            if h.desired > total:
                fleet.apply(now, place_scale_up(pools, before, math.inf, h.desired - total))
            elif h.desired < total:
                fleet.apply(now, place_scale_down(pools, before, -math.inf, total - h.desired, cfg.min_replicas))
        elif name == "oracle":
            fleet.apply(now, _size_for(fleet, oracle_rate(now), cfg, cfg.min_replicas), instant=True)
        after = fleet.counts()
        delta = sum(after.values()) - sum(before.values())
        if after != before:
            scale_events += 1
        if delta:
            direction = 1 if delta > 0 else -1
            oscillations += last_dir != 0 and direction != last_dir
            last_dir = direction
        timeline.t.append(now)
        timeline.load.append((i - first) / cfg.tick_seconds)
        timeline.p95.append(p95)
        for pool, c in after.items():
            timeline.replicas[pool].append(c)
        if progress is not None and k % max(1, int(3600 / cfg.tick_seconds)) == 0:
            progress(name, now, trace.duration)
    fleet.close(n_ticks * cfg.tick_seconds)
    st = fleet.stats
    lats = sorted(st.latencies)
    return PolicyResult(
        name=name,
        gpu_hours=st.gpu_seconds / 3600.0,
        cost_usd=st.cost_usd,
        slo_minutes_fraction=_minutes_within(st.per_minute, cfg.slo_seconds),
        p95_seconds=lats[min(len(lats) - 1, math.ceil(0.95 * len(lats)) - 1)] if lats else math.nan,
        rejected_fraction=st.rejected / st.requests if st.requests else 0.0,
        scale_events=scale_events,
        oscillations=oscillations,
        requests=st.requests,
        rejected=st.rejected,
        invalid=st.invalid,
        timeline=timeline,
        floor_decisions=floor_decisions,
    )


def simulate(
    trace: Trace,
    rows: list[TraceRow],
    cfg: SimConfig,
    policies: tuple[str, ...] = POLICIES,
    progress: Progress | None = None,
) -> tuple[dict[str, PolicyResult], list[str]]:
    """Every policy in ``policies`` over the same trace and fleet; also the pool notes."""
    profiles, notes = build_profiles(rows, cfg)
    return run_policies(trace, profiles, cfg, policies, progress), notes


def run_policies(
    trace: Trace,
    profiles: dict[str, PoolProfile],
    cfg: SimConfig,
    policies: tuple[str, ...] = POLICIES,
    progress: Progress | None = None,
) -> dict[str, PolicyResult]:
    """Every policy in ``policies`` over the same trace and calibrated pools (:func:`build_profiles`)."""
    return {p: simulate_policy(p, trace, profiles, cfg, progress) for p in policies}

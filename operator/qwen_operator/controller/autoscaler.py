"""The autoscaler loop: Prometheus signals -> the pure policy -> ``status.autoscaler``.

It never writes ``spec`` (GitOps tools would fight it, argo-cd#2913): it server-side
applies ``status.autoscaler`` and the ``ScalingActive`` condition under its own field
manager, and the reconciler sizes the pools from it. The decision is the one
``qwenctl simulate`` runs (:func:`..autoscale.loop.evaluate`, fed by :func:`observation`:
ready/starting/free replicas per pool from the cluster; queue, in-flight, P95 and request
rate from Prometheus; the pre-warm floor), and it is applied the same way: its per-pool
counts go to ``status.autoscaler.desiredPools`` (with their total in ``desiredReplicas``)
and the reconciler sizes each pool Deployment from them. Where added capacity goes (two
A10G rather than one A100 when two cover the need for less) and which replica goes first
is decided there, once; the planner only spills over what no longer fits.

With the built-in router (``spec.routing.enabled``) the signals are the router's where
Prometheus has them (:mod:`..autoscale.prometheus`): the real time to first byte (TGI
included), the requests it holds and has in flight, the rate it answers. The held requests
are what wakes a fleet scaled to ``minReplicas: 0``. Without a router (routing external, or
its series not scraped) the engines' queue wait and request counters are the fallback.

Missing metrics hold: Prometheus down or unconfigured sets ``ScalingActive=False`` with
the reason and keeps the last desired replicas. After an operator restart the policy's
stabilisation window is seeded with the current size, so a restart never causes an
immediate scale-down. Status is rewritten when the decision changes, or to refresh the
observed numbers at most every ``REFRESH_SECONDS`` when they moved: an idle fleet costs
zero writes.

Pre-warm (:mod:`..autoscale.prewarm`): ``spec.scaling.schedules`` windows and the opt-in
``spec.scaling.predictive`` profile raise the policy's floor (``status.autoscaler.floor``
and ``floorReason``; every decision the floor changed says so in ``lastDecision`` and the
event). The learned profile lives in ``status.autoscaler.profile`` (96 fifteen-minute
slots; read back after a restart, rewritten with the other numbers at most every
``REFRESH_SECONDS``), so it survives operator restarts without writing spec. A time zone
the tz database does not know cannot be rejected at admission (CEL has no tz database):
it sets ``ScalingActive=False``, reason ``InvalidSchedule``, naming the field; that
window (or the prediction) is ignored and metrics-based scaling carries on.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..api.spec import QwenDeploymentSpec
from ..autoscale import loop, prewarm
from ..autoscale.loop import Observation, PoolEstimate, pool_state
from ..autoscale.policy import Decision, Floor, History, PoolState, Targets
from ..autoscale.prometheus import FleetSignals
from ..capacity.model import ReplicaModel
from ..catalog import Catalog, resolve_gpu_name
from ..engines.runtimes import runtime_for
from ..planner.plan import plan, workload_for
from ..render.names import pool_deployment_name, pool_selector, router_name
from . import conditions as cond
from . import failures
from .executors import KUBE, METRICS, run
from .inventory import compute_inventory
from .metrics import DECISIONS, DESIRED, SCALE_EVENTS
from .reconcile import GPU_TYPE_ANNOTATION, Observed
from .rollout import BORROWED_ANNOTATION, LABEL_CANARY, canary_name, is_canary

log = logging.getLogger("qwen_operator.autoscaler")
MANAGER = "qwen-operator-autoscaler"
REFRESH_SECONDS = 60.0
#: Cold start assumed for the predictive lead when the replica model cannot estimate one.
DEFAULT_COLD_START_SECONDS = 300.0
INVALID_SCHEDULE = "InvalidSchedule"
#: Event reason when the decision leaves stuck replicas out of the capacity it counts.
STUCK_REPLICAS = "StuckReplicasNotCounted"
#: A pool whose replicas got stuck takes no new replica for this long (added capacity goes to another
#: GPU type); afterwards it is tried again, so a fixed cause (image, Secret, quota) heals by itself.
STUCK_BACKOFF_SECONDS = 600.0

#: ``fetch(namespace, pool Deployment names, engine metric names, router Deployment name or None)``.
Fetch = Callable[[str, list[str], Any, str | None], FleetSignals]


@dataclass
class AutoscalerState:
    history: History = field(default_factory=History)
    last_written: dict[str, Any] | None = None
    last_write_at: float = 0.0
    last_scale_time: str | None = None
    profile: prewarm.Profile | None = None  # None: not read back from status yet
    stuck_until: dict[str, float] = field(default_factory=dict)  # GPU type -> monotonic time it takes no new replica
    credit: tuple[int, float] | None = None  # (generation, warm-up credit seconds)


#: Requests the router must have counted over ``PROMPT_WINDOW`` before their mean prompt length
#: sizes the pools (fewer: a handful of odd requests would swing every pool's estimate).
MIN_PROMPT_SAMPLES = 100


def observed_prompt_tokens(spec: QwenDeploymentSpec, fleet: FleetSignals) -> int | None:
    """The mean prompt length the router saw, rounded to two significant digits (one plan per
    request shape, not one per tick), to weigh the pools with; None: ``typicalPromptTokens`` does
    (learning off, no router series, or fewer than :data:`MIN_PROMPT_SAMPLES` requests)."""
    mean, samples = fleet.prompt_tokens, fleet.prompt_samples
    if not spec.scaling.learn_prompt_tokens or mean is None or samples is None or samples < MIN_PROMPT_SAMPLES:
        return None
    rounded = int(float(f"{max(1.0, mean):.2g}"))
    return max(1, min(rounded, spec.runtime.max_input_tokens))


def observed_output_tokens(spec: QwenDeploymentSpec, fleet: FleetSignals) -> int | None:
    """The mean reply the engines generated (thinking tokens included: they are generated tokens), rounded
    to two significant digits, to weigh the pools with; None: ``typicalOutputTokens`` does (learning off, no
    engine series, or fewer than :data:`MIN_PROMPT_SAMPLES` finished requests)."""
    mean, samples = fleet.output_tokens, fleet.output_samples
    if not spec.scaling.learn_output_tokens or mean is None or samples is None or samples < MIN_PROMPT_SAMPLES:
        return None
    rounded = int(float(f"{max(1.0, mean):.2g}"))
    return max(1, min(rounded, spec.runtime.max_total_tokens - 1))


def pool_estimates(
    spec: QwenDeploymentSpec,
    catalog: Catalog,
    current: Mapping[str, int],
    prompt_tokens: int | None = None,
    multi_node: bool = False,
) -> list[PoolEstimate]:
    """What one replica of each allowed GPU type is worth, from the planner's candidates (pure).

    Pools are weighed in the planner's unit, requests/s within the SLO, when every type that
    fits has that estimate (so the policy's placement and the planner's spill-over agree on
    which pool is cheaper); else in decode throughput, a relative unit a request rate cannot
    be compared with.

    ``prompt_tokens`` (:func:`observed_prompt_tokens`): each pool is weighed at that prompt
    length instead of ``typicalPromptTokens``. Which pools there are stays placement's (the
    typical request): a type the observed prompts rule out, or an estimate in another unit,
    keeps its typical-request estimate. ``multi_node``: replicas may span nodes (the LeaderWorkerSet
    CRD is installed: ``Observed.lws_crd``), as the reconciler plans them."""
    base = _estimates(spec, catalog, current, multi_node)
    return learned_estimates(spec, catalog, current, base, prompt_tokens, multi_node)


def learned_estimates(
    spec: QwenDeploymentSpec,
    catalog: Catalog,
    current: Mapping[str, int],
    base: Sequence[PoolEstimate],
    prompt_tokens: int | None,
    multi_node: bool = False,
    output_tokens: int | None = None,
) -> list[PoolEstimate]:
    """``base`` (:func:`pool_estimates` at the typical request) re-weighed at the observed request shape:
    ``prompt_tokens`` (:func:`observed_prompt_tokens`) and ``output_tokens`` (:func:`observed_output_tokens`),
    each None to keep the spec's typical length."""
    update: dict[str, int] = {}
    if prompt_tokens is not None and prompt_tokens != spec.scaling.typical_prompt_tokens:
        update["typical_prompt_tokens"] = prompt_tokens
    if output_tokens is not None and output_tokens != spec.scaling.typical_output_tokens:
        update["typical_output_tokens"] = output_tokens
    if not update:
        return list(base)
    respec = spec.model_copy(update={"scaling": spec.scaling.model_copy(update=update)})
    learned = {e.gpu_type: e for e in _estimates(respec, catalog, current, multi_node)}
    out = []
    for e in base:
        seen = learned.get(e.gpu_type)
        out.append(seen if seen is not None and seen.per_second == e.per_second else e)
    return out


def _estimates(
    spec: QwenDeploymentSpec, catalog: Catalog, current: Mapping[str, int], multi_node: bool = False
) -> list[PoolEstimate]:
    the_plan = plan(spec, catalog, replicas=sum(current.values()), current=current, multi_node=multi_node)
    fitting = [c for c in the_plan.candidates if c.fits]
    by_slo = bool(fitting) and all(c.slo_rate > 0 for c in fitting)
    utilisation = targets_for(spec).utilisation
    return [
        PoolEstimate(
            gpu_type=c.gpu_type,
            cost_per_hour=c.price_per_hour,
            throughput=max(c.slo_rate if by_slo else c.throughput, 1e-9),
            shards=c.shards,
            nodes=c.nodes,
            target_in_flight=c.slo_concurrency * utilisation if by_slo and c.slo_concurrency > 0 else None,
            per_second=by_slo,
        )
        for c in fitting
    ]


def pool_states(
    obs: Observed,
    spec: QwenDeploymentSpec,
    catalog: Catalog,
    estimates: Sequence[PoolEstimate] | None = None,
    stuck: Mapping[str, int] | None = None,
    blocked: Collection[str] = (),
) -> list[PoolState]:
    """Ready/starting/free replicas per allowed GPU type, read from the cluster (pure).

    Ready = the pool Deployment's ``status.readyReplicas``, starting = its ``spec.replicas``
    minus those and minus its ``stuck`` replicas (see :func:`stuck_replicas`: they are not
    capacity, so the decision sizes the pool without them and the Deployment controller removes
    them first), free = replicas that still fit on free ``nvidia.com/gpu`` of that type (none on
    a ``blocked`` pool: one whose replicas were stuck recently gets no new ones, so added
    capacity goes to another GPU type). ``estimates`` default to :func:`pool_estimates` (the
    parity test passes the simulator's)."""
    live = _live_pools(obs)
    inventory = obs.inventory if obs.inventory is not None else compute_inventory(obs.nodes, obs.pods, catalog.gpus)
    if estimates is None:
        estimates = pool_estimates(spec, catalog, _current(obs), multi_node=obs.lws_crd)
    out = []
    for cap in estimates:
        dep = live.get(cap.gpu_type)
        spec_replicas, ready = _own_replicas(dep or {})
        starting = max(0, spec_replicas - ready - (stuck or {}).get(cap.gpu_type, 0))
        # a group spanning nodes needs ``shards`` free on each of ``nodes`` nodes
        free = 0 if cap.gpu_type in blocked else inventory.free_replicas(cap.gpu_type, cap.shards) // max(1, cap.nodes)
        out.append(pool_state(cap, ready, starting, free))
    return out


def _live_pools(obs: Observed) -> dict[str | None, Mapping[str, Any]]:
    """GPU type -> its pool Deployment (a canary is extra capacity on trial, never a pool to size)."""
    return {
        (d["metadata"].get("annotations") or {}).get(GPU_TYPE_ANNOTATION): d
        for d in obs.deployments
        if not is_canary(d)
    }


def _current(obs: Observed) -> dict[str, int]:
    """GPU type -> the replicas its pool Deployment asks for now."""
    return {t: _own_replicas(d)[0] for t, d in _live_pools(obs).items() if t}


def stuck_replicas(obs: Observed, now: dt.datetime, credit_seconds: float) -> dict[str, list[failures.Stuck]]:
    """Not-Ready replicas of each pool that are no longer capacity on the way, by GPU type (pure):
    a kubelet/scheduler verdict (ImagePullBackOff, CrashLoopBackOff, CreateContainerConfigError,
    Unschedulable) or warm-up credit expired (``credit_seconds`` after creation). A pool Deployment
    the Deployment controller reports failing (ReplicaFailure, ProgressDeadlineExceeded) has
    every replica it cannot create counted too. Canary pods are never pool capacity anyway."""
    meta = obs.qwd.get("metadata") or {}
    name, namespace = str(meta.get("name")), str(meta.get("namespace"))
    out: dict[str, list[failures.Stuck]] = {}
    for dep in obs.deployments:
        gpu_type = (dep.get("metadata", {}).get("annotations") or {}).get(GPU_TYPE_ANNOTATION)
        if not gpu_type or is_canary(dep):
            continue
        selector = pool_selector(name, gpu_type)
        found: list[failures.Stuck] = []
        pods = 0
        for pod in obs.pods:
            pmeta = pod.get("metadata") or {}
            labels = pmeta.get("labels") or {}
            if pmeta.get("namespace") != namespace or any(labels.get(k) != v for k, v in selector.items()):
                continue
            if labels.get(LABEL_CANARY) == "true" or pmeta.get("deletionTimestamp"):
                continue
            pods += 1
            cause = failures.warm_up_cause(pod, now, credit_seconds)
            if cause is not None:
                found.append(cause)
        failing = failures.deployment_cause(dep)
        if failing is not None and failing.cause == failures.REPLICA_FAILURE:
            missing = int(dep.get("spec", {}).get("replicas") or 0) - pods  # pods the ReplicaSet cannot create
            found.extend([failing] * max(0, missing))
        if found:
            out[gpu_type] = found
    return out


def _own_replicas(dep: Mapping[str, Any]) -> tuple[int, int]:
    """(replicas, ready) of a pool Deployment without the replicas it lends to a roll.

    A borrowed surge (``BORROWED_ANNOTATION``) is temporary: counted as the pool's own, the
    decision would write it into ``desiredPools`` and it would outlive the roll (seen in the
    demo: an A100 replica borrowed for the v2 roll kept running through the trough). The
    borrowed replicas are the newest, so they leave the still-starting ones first."""
    replicas = int(dep.get("spec", {}).get("replicas") or 0)
    ready = min(replicas, int(dep.get("status", {}).get("readyReplicas") or 0))
    try:
        borrowed = int((dep.get("metadata", {}).get("annotations") or {}).get(BORROWED_ANNOTATION) or 0)
    except ValueError:
        borrowed = 0
    own = max(0, replicas - max(0, borrowed))
    return own, min(ready, own)


def observation(now: float, pools: Sequence[PoolState], fleet: FleetSignals, floor: Floor | None = None) -> Observation:
    """The decision's input from the cluster's pools and what Prometheus returned (pure).

    In flight is running + waiting (the engine's running-batch gauge plus its queue gauge),
    the same count the simulator reports, or, with a router, what it has accepted and not
    answered (held plus sent); the request rate is the router's (else the engine's) request
    counter's rate over the last minute; ``held`` the requests the router holds."""
    in_flight = None if fleet.in_flight is None else fleet.in_flight + (fleet.queue or 0.0)
    if fleet.router_in_flight is not None:
        in_flight = fleet.router_in_flight
    return Observation(
        now=now,
        pools=tuple(pools),
        queue_depth=fleet.queue,
        p95_seconds=fleet.p95_seconds,
        in_flight=in_flight,
        request_rate=fleet.request_rate,
        floor=floor,
        error=fleet.error,
        held=fleet.held,
    )


def cold_start_seconds(spec: QwenDeploymentSpec, catalog: Catalog, multi_node: bool = False) -> float:
    """The replica model's cold start on the slowest GPU type the plan may use (pure)."""
    try:
        work = workload_for(spec, catalog)
    except KeyError:
        return DEFAULT_COLD_START_SECONDS
    worst = 0.0
    for cand in plan(spec, catalog, replicas=0, multi_node=multi_node).candidates:
        if not cand.fits:
            continue
        try:
            gpu = catalog.gpus[resolve_gpu_name(cand.gpu_type, catalog.gpus)]
            replica = ReplicaModel(
                work.model,
                gpu,
                cand.shards,
                work.quantization,
                max_concurrent_requests=work.max_concurrent_requests,
                max_input_tokens=work.max_input_tokens,
                max_total_tokens=work.max_total_tokens,
                engine=work.engine,
                nodes=cand.nodes,
            )
        except (KeyError, ValueError):
            continue
        worst = max(worst, replica.cold_start_seconds)
    return worst or DEFAULT_COLD_START_SECONDS


def prewarm_lead(spec: QwenDeploymentSpec, catalog: Catalog) -> float:
    """spec.scaling.predictive.leadSeconds, else the modelled cold start plus one evaluation interval."""
    lead = spec.scaling.predictive.lead_seconds
    if lead is not None:
        return float(lead)
    return cold_start_seconds(spec, catalog) + spec.scaling.interval_seconds


def floor_for(
    spec: QwenDeploymentSpec, when: dt.datetime, profile: prewarm.Profile | None, lead_seconds: float
) -> tuple[Floor | None, list[prewarm.ScheduleProblem]]:
    """The binding pre-warm floor at ``when`` (schedules and prediction) and what cannot be evaluated (pure)."""
    s = spec.scaling
    scheduled, problems = prewarm.schedule_floor(prewarm.windows_from_spec(s.schedules), when)
    predicted = None
    if s.predictive.enabled:
        if prewarm.zone(s.predictive.timezone) is None:
            problems.append(
                prewarm.ScheduleProblem(
                    "spec.scaling.predictive.timezone",
                    f"time zone {s.predictive.timezone!r} is not in the operator's IANA time zone database;"
                    " no predictive pre-warm",
                )
            )
        elif profile is not None:
            predicted = prewarm.predicted_floor(
                profile, when, s.predictive.timezone, lead_seconds, s.predictive.lookback_days
            )
    return prewarm.combine([scheduled, predicted], s.min_replicas, s.max_replicas), problems


def learn(
    spec: QwenDeploymentSpec,
    profile: prewarm.Profile,
    when: dt.datetime,
    decision: Decision | None,
    pools: list[PoolState],
    floor: Floor | None = None,
) -> prewarm.Profile:
    """``profile`` with the replicas the load (not the floor) asked for in ``decision`` (pure)."""
    p = spec.scaling.predictive
    tz = prewarm.zone(p.timezone)
    if tz is None:
        return profile
    local = when.astimezone(tz)
    need = None if decision is None else prewarm.load_replicas(decision, pools, spec.scaling.max_replicas, floor)
    if need is None:  # nothing learned, but the day moves on
        return prewarm.roll(profile, local.toordinal(), p.lookback_days)
    return prewarm.observe(profile, local, need, p.lookback_days)


def targets_for(spec: QwenDeploymentSpec) -> Targets:
    s = spec.scaling
    return Targets(
        min_replicas=s.min_replicas,
        max_replicas=s.max_replicas,
        target_queue_depth=s.target_queue_depth,
        p95_latency_seconds=s.p95_latency_seconds,
        scale_down_delay_seconds=float(s.scale_down_delay_seconds),
    )


def evaluate(
    now: float,
    pools: list[PoolState],
    fleet: FleetSignals,
    targets: Targets,
    state: AutoscalerState,
    previous_desired: int | None,
    floor: Floor | None = None,
    problems: list[prewarm.ScheduleProblem] | None = None,
) -> tuple[Decision | None, cond.Condition]:
    """One evaluation (pure): :func:`..autoscale.loop.evaluate`, the simulator's decision, on
    what the cluster and Prometheus report. ``None`` decision = hold at ``previous_desired`` (no signal).

    ``floor`` (a schedule window or the prediction) applies even without metrics: a
    pre-warm must not wait for Prometheus. ``problems`` (windows that cannot be evaluated)
    turn the condition to ``ScalingActive=False``, reason ``InvalidSchedule``."""
    decision = loop.evaluate(observation(now, pools, fleet, floor), targets, state.history, previous_desired)
    if decision is not None:
        state.history = decision.history
    if not fleet.ok:
        if decision is not None:
            message = f"{fleet.error} Never scaling down without metrics; {decision.reason}."
        else:
            message = f"{fleet.error} Holding at {previous_desired} replica(s); never scaling down without metrics."
        condition = cond.Condition(cond.SCALING_ACTIVE, False, "MetricsUnavailable", message)
    else:
        assert decision is not None
        condition = cond.Condition(
            cond.SCALING_ACTIVE,
            True,
            "MetricsAvailable",
            f"Scaling on {_sources(fleet)}: {decision.reason}",
        )
    if problems:
        detail = "; ".join(f"{p.field}: {p.message}" for p in problems)
        condition = cond.Condition(
            cond.SCALING_ACTIVE, False, INVALID_SCHEDULE, f"{detail}. Scaling continues otherwise: {condition.message}"
        )
    return decision, condition


def _waiting(fleet: FleetSignals) -> float | None:
    """``status.autoscaler.queueDepth``: the engines' queue plus the router's held requests."""
    if fleet.queue is None and fleet.held is None:
        return None
    return round((fleet.queue or 0.0) + (fleet.held or 0.0), 1)


def _sources(fleet: FleetSignals) -> str:
    """What the decision read, for the ScalingActive message."""
    if fleet.routed:
        latency = "router TTFT P95" if fleet.latency_source == "router" else "engine P95 (no router TTFT sample)"
        return f"queue depth, router held requests, {latency}, router in-flight and request rate"
    return "queue depth, engine P95 latency, in-flight and request rate (no router series: engine fallback)"


def desired_pools(decision: Decision | None, live: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """``status.autoscaler.desiredPools`` for ``decision`` (pure): the per-pool counts the reconciler
    sizes the pool Deployments to; without a decision, what the status already says."""
    if decision is None:
        kept = live.get("desiredPools")
        return list(kept) if kept else None
    return [{"gpuType": t, "replicas": n} for t, n in sorted(decision.desired.items()) if n > 0]


class Autoscaler:
    """One asyncio task per autoscaled QwenDeployment."""

    def __init__(
        self,
        kube: Any,
        catalog: Catalog,
        fetch: Fetch | None,
        observed: Callable[[tuple[str, str]], Observed | None],
        prometheus_url: str | None,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.kube = kube
        self.catalog = catalog
        self.fetch = fetch
        self.observed = observed
        self.prometheus_url = prometheus_url
        self.tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.states: dict[tuple[str, str], AutoscalerState] = {}
        self.decisions = 0
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))  # wall clock of schedules and the profile

    def sync(self, key: tuple[str, str], enabled: bool) -> None:
        if enabled and key not in self.tasks:
            self.tasks[key] = asyncio.create_task(self._loop(key), name=f"autoscale {key[0]}/{key[1]}")
        elif not enabled and key in self.tasks:
            self.tasks.pop(key).cancel()
            self.states.pop(key, None)

    def stop(self, key: tuple[str, str]) -> None:
        self.sync(key, False)

    async def _loop(self, key: tuple[str, str]) -> None:
        while True:
            interval = 15.0
            try:
                interval = await self.tick(key)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - one bad tick must not stop autoscaling
                log.exception("autoscaler tick for %s/%s failed", *key)
            await asyncio.sleep(interval)

    async def tick(self, key: tuple[str, str]) -> float:
        obs = self.observed(key)
        if obs is None:
            return 15.0
        spec = QwenDeploymentSpec.model_validate(obs.qwd.get("spec") or {})
        state = self.states.setdefault(key, AutoscalerState())
        live = (obs.qwd.get("status") or {}).get("autoscaler") or {}
        previous = live.get("desiredReplicas")
        now = time.monotonic()
        wall = self.clock()
        generation = int(obs.qwd.get("metadata", {}).get("generation") or 0)
        if state.credit is None or state.credit[0] != generation:
            cold = cold_start_seconds(spec, self.catalog, obs.lws_crd)
            state.credit = (generation, cold * failures.WARM_UP_CREDIT_FACTOR)
        stuck = stuck_replicas(obs, wall, state.credit[1])
        for gpu_type in stuck:
            state.stuck_until[gpu_type] = now + STUCK_BACKOFF_SECONDS
        blocked = {t for t, until in state.stuck_until.items() if until > now}
        current = _current(obs)
        base = pool_estimates(spec, self.catalog, current, multi_node=obs.lws_crd)  # one plan per tick
        if self.fetch is None:
            fleet = FleetSignals(
                error="No Prometheus URL is configured (operator config prometheus.url or --prometheus-url)."
            )
        else:
            # a canary's queue is real load (the router sends it traffic), though never capacity to size
            types = [e.gpu_type for e in base]
            prefixes = [pool_deployment_name(key[1], t) for t in types]
            prefixes += [canary_name(key[1], t) for t in types]
            router = router_name(key[1]) if spec.routing.enabled else None
            fleet = await run(METRICS, self.fetch, key[0], prefixes, runtime_for(spec).metrics, router)
        prompt, output = observed_prompt_tokens(spec, fleet), observed_output_tokens(spec, fleet)
        estimates = learned_estimates(spec, self.catalog, current, base, prompt, obs.lws_crd, output)
        pools = pool_states(
            obs, spec, self.catalog, estimates, stuck={t: len(v) for t, v in stuck.items()}, blocked=blocked
        )
        held = previous if previous is not None else sum(p.replicas for p in pools) or spec.desired_replicas(None)
        predictive = spec.scaling.predictive.enabled
        if not predictive:
            state.profile = None
        elif state.profile is None:  # first tick of this process: what previous ones learned
            state.profile = prewarm.Profile.from_status(live.get("profile"))
        lead = prewarm_lead(spec, self.catalog) if predictive else 0.0
        floor, problems = floor_for(spec, wall, state.profile, lead)
        decision, condition = evaluate(now, pools, fleet, targets_for(spec), state, held, floor, problems)
        if state.profile is not None:
            state.profile = learn(spec, state.profile, wall, decision, pools, floor)
        self.decisions += 1
        DECISIONS.labels(key[0], key[1], decision.kind if decision else "hold-no-metrics").inc()
        desired = previous if decision is None else decision.total
        if desired is None:
            desired = spec.desired_replicas(None)
        pools_wanted = desired_pools(decision, live)
        note = _stuck_note(stuck, blocked)
        # against what runs when nothing was recorded yet: a floor may scale on the very first tick
        changed = desired != held
        if changed and decision is not None and decision.kind != "scale-down" and desired < held:
            # e.g. the first tick before any GPU is free: nothing was removed, so no ScaledDown to report
            changed = False
        DESIRED.labels(key[0], key[1]).set(desired)
        if changed:
            SCALE_EVENTS.labels(key[0], key[1], "up" if desired > held else "down").inc()
        if changed:
            state.last_scale_time = cond.now_rfc3339()
        status: dict[str, Any] = {
            "autoscaler": {
                "desiredReplicas": desired,
                "desiredPools": pools_wanted,
                "queueDepth": _waiting(fleet),
                "p95Seconds": None if fleet.p95_seconds is None else round(fleet.p95_seconds, 2),
                "observedPromptTokens": prompt,
                "observedOutputTokens": output,
                "lastScaleTime": state.last_scale_time or live.get("lastScaleTime"),
                "lastDecision": (note + (decision.reason if decision else condition.message))[:1000],
                "floor": floor.replicas if floor else None,
                "floorReason": floor.reason[:256] if floor else None,
                "profile": state.profile.to_status() if state.profile is not None else None,
            },
        }
        status["autoscaler"] = {k: v for k, v in status["autoscaler"].items() if v is not None}
        merged, _ = cond.merge(
            [c for c in (obs.qwd.get("status") or {}).get("conditions") or [] if c.get("type") == cond.SCALING_ACTIVE],
            [condition],
            int(obs.qwd["metadata"].get("generation") or 1),
        )
        status["conditions"] = merged
        material = (
            desired,
            tuple((p["gpuType"], p["replicas"]) for p in pools_wanted or ()),
            condition.status_str,
            condition.reason,
            decision.kind if decision else "hold",
            floor.reason if floor else None,
            note,
        )
        last = state.last_written or {}
        due = now - state.last_write_at >= REFRESH_SECONDS
        if last.get("material") != material or (due and last.get("status") != _numbers(status)):
            await run(KUBE, self.kube.apply_status, key[0], key[1], status, MANAGER)
            state.last_written = {"material": material, "status": _numbers(status)}
            state.last_write_at = now
            if changed:
                direction = "ScaledUp" if desired > held else "ScaledDown"
                msg = f"Desired replicas {held} -> {desired}: {status['autoscaler']['lastDecision']}"
                await run(KUBE, self.kube.event, obs.qwd, "Normal", direction, msg)
            elif last.get("material") and last["material"][1] != material[1]:
                kind = "Warning" if condition.status is False else "Normal"
                await run(KUBE, self.kube.event, obs.qwd, kind, condition.reason, condition.message)
            if stuck and (not last.get("material") or last["material"][-1] != note):
                await run(KUBE, self.kube.event, obs.qwd, "Warning", STUCK_REPLICAS, note.rstrip("; "))
        return float(spec.scaling.interval_seconds)


def _stuck_note(stuck: Mapping[str, Sequence[failures.Stuck]], blocked: Collection[str]) -> str:
    """The lastDecision prefix saying which replicas the decision does not count, and why."""
    if not stuck and not blocked:
        return ""
    parts = []
    for gpu_type, found in sorted(stuck.items()):
        causes = ", ".join(sorted({s.cause for s in found}))
        named = ", ".join(sorted({s.name for s in found})[: failures.MAX_NAMED])
        parts.append(f"{len(found)} on {gpu_type} ({causes}: {named})")
    text = f"not counting stuck replica(s) {'; '.join(parts)}" if parts else ""
    waiting = sorted(set(blocked) - set(stuck))
    if waiting:
        text += ("; " if text else "") + f"no new replicas on {', '.join(waiting)} for now (recently stuck)"
    return text + "; "


def _numbers(status: Mapping[str, Any]) -> dict[str, Any]:
    a = status["autoscaler"]
    return {
        k: a.get(k)
        for k in (
            "desiredReplicas",
            "queueDepth",
            "p95Seconds",
            "observedPromptTokens",
            "observedOutputTokens",
            "profile",
        )
    }

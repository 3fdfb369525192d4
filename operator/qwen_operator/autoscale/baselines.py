"""Baseline autoscalers the qwen policy is measured against, implemented faithfully.

Why it exists: a claim like "beats HPA" is only worth something if the HPA is the real
algorithm, not a strawman. ``hpa-queue`` is what people deploy today for TGI: a KEDA
``ScaledObject`` with a Prometheus trigger on ``sum(tgi_queue_size)``
(``metricType: AverageValue``, threshold = ``targetQueueDepth``) driving a Kubernetes
HPA with default behaviour. Pure functions of plain data, like the HPA's own
``replica_calculator.go``.

What the upstream code does, and what is mirrored here (kubernetes/kubernetes,
``pkg/controller/podautoscaler``):

* KEDA exposes the trigger as an **External** metric with an ``AverageValue`` target, so
  the HPA calls ``GetExternalPerPodMetricReplicas(statusReplicas, target, ...)``:
  ``usageRatio = sum(metric) / (target x statusReplicas)``; if ``|1 - usageRatio| >
  tolerance`` (0.1) the recommendation is ``ceil(sum(metric) / target)``, else
  ``statusReplicas``.
* Not-ready pods: ``statusReplicas`` is the scale subresource's ``status.replicas`` =
  every pod of the target, ready or not, so for External metrics a pod still loading its
  model counts as a full replica. The special cases people quote (missing pods assumed
  0% of target on scale-up and 100% on scale-down; unready pods ignored) live in
  ``calcPlainMetricReplicas``/``groupPods`` and apply to Resource and Pods metrics only
  (the unready rule to CPU only); the External path never looks at pods.
* A metric that cannot be fetched makes the HPA skip the rescale (condition
  ``ScalingActive=False``, reason ``FailedGetExternalMetric``): hold.
* Behaviour defaults (autoscaling/v2): scale-up stabilisation 0 s, policies
  ``Pods 4 / 15 s`` and ``Percent 100 / 15 s``, ``selectPolicy: Max``; scale-down
  stabilisation 300 s, policy ``Percent 100 / 15 s``. Stabilisation keeps every
  *unstabilised* recommendation with its time; the result is clamped between the min
  over the up-window and the max over the down-window, starting from the current
  replicas. On first sight of a target the down-window is seeded with the current count.
* Rate limits count replicas added/removed within each policy's period:
  ``periodStart = current - added + removed``; ``Pods: periodStart + value``,
  ``Percent: ceil(periodStart x (1 + value/100))`` (down: ``periodStart - value`` and
  ``floor(periodStart x (1 - value/100))``); ``Max`` picks the policy allowing the
  largest change. Then min/max replicas clamp.
* The HPA sync period is 15 s (``--horizontal-pod-autoscaler-sync-period``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

HPA_TOLERANCE = 0.1
HPA_SYNC_SECONDS = 15.0


@dataclass(frozen=True)
class ScalingPolicy:
    kind: str  # "Pods" | "Percent"
    value: int
    period_seconds: int


@dataclass(frozen=True)
class HPABehavior:
    """``spec.behavior`` of an autoscaling/v2 HPA; defaults are Kubernetes' defaults."""

    scale_up_window_seconds: float = 0.0
    scale_up_policies: tuple[ScalingPolicy, ...] = (ScalingPolicy("Pods", 4, 15), ScalingPolicy("Percent", 100, 15))
    scale_down_window_seconds: float = 300.0
    scale_down_policies: tuple[ScalingPolicy, ...] = (ScalingPolicy("Percent", 100, 15),)
    tolerance: float = HPA_TOLERANCE


@dataclass(frozen=True)
class HPAState:
    """The controller's in-memory memory per HPA: recommendations and scale events."""

    recommendations: tuple[tuple[float, int], ...] | None = None  # None = never seen
    scale_up_events: tuple[tuple[float, int], ...] = ()
    scale_down_events: tuple[tuple[float, int], ...] = ()


@dataclass(frozen=True)
class HPADecision:
    desired: int
    reason: str
    state: HPAState = field(default_factory=HPAState)


def external_average_value_replicas(status_replicas: int, metric_sum: float, target: float, tolerance: float) -> int:
    """``GetExternalPerPodMetricReplicas``: the HPA's raw recommendation for KEDA's metric."""
    if status_replicas <= 0:
        return math.ceil(metric_sum / target)
    usage_ratio = metric_sum / (target * status_replicas)
    if abs(1.0 - usage_ratio) > tolerance:
        return math.ceil(metric_sum / target)
    return status_replicas


def _changed_in_period(events: tuple[tuple[float, int], ...], now: float, period: float) -> int:
    return sum(n for t, n in events if now - t < period)


def _scale_up_limit(current: int, state: HPAState, policies: tuple[ScalingPolicy, ...], now: float) -> int:
    limit = -(2**31)
    for pol in policies:
        added = _changed_in_period(state.scale_up_events, now, pol.period_seconds)
        removed = _changed_in_period(state.scale_down_events, now, pol.period_seconds)
        start = current - added + removed
        proposed = start + pol.value if pol.kind == "Pods" else math.ceil(start * (1 + pol.value / 100))
        limit = max(limit, proposed)
    return limit


def _scale_down_limit(current: int, state: HPAState, policies: tuple[ScalingPolicy, ...], now: float) -> int:
    limit = 2**31
    for pol in policies:
        added = _changed_in_period(state.scale_up_events, now, pol.period_seconds)
        removed = _changed_in_period(state.scale_down_events, now, pol.period_seconds)
        start = current - added + removed
        proposed = start - pol.value if pol.kind == "Pods" else int(start * (1 - pol.value / 100))
        limit = min(limit, proposed)
    return limit


def hpa_queue_decide(
    now: float,
    current_replicas: int,
    queue_total: float | None,
    target_average: float,
    min_replicas: int,
    max_replicas: int,
    state: HPAState | None = None,
    behavior: HPABehavior | None = None,
    status_replicas: int | None = None,
) -> HPADecision:
    """One HPA sync for a KEDA Prometheus queue trigger (``AverageValue``).

    ``current_replicas`` is the scale subresource's spec, ``status_replicas`` its status
    (all pods, ready or not; defaults to the spec). ``queue_total`` ``None``/NaN = the
    metric could not be fetched.
    """
    state = state or HPAState()
    behavior = behavior or HPABehavior()
    status = current_replicas if status_replicas is None else status_replicas
    recs = state.recommendations if state.recommendations is not None else ((now, current_replicas),)
    state = HPAState(recs, state.scale_up_events, state.scale_down_events)
    if current_replicas == 0 and min_replicas != 0:
        return HPADecision(0, "scaling is disabled since the replica count of the target is zero", state)
    if current_replicas > max_replicas:
        return HPADecision(
            max_replicas, "current replicas above maxReplicas", _record(state, now, current_replicas, max_replicas)
        )
    if current_replicas < min_replicas:
        return HPADecision(
            min_replicas, "current replicas below minReplicas", _record(state, now, current_replicas, min_replicas)
        )
    if queue_total is None or math.isnan(queue_total):
        return HPADecision(current_replicas, "FailedGetExternalMetric: holding", state)

    raw = external_average_value_replicas(status, queue_total, target_average, behavior.tolerance)
    # stabilizeRecommendationWithBehaviors
    up_rec, down_rec = raw, raw
    for t, r in recs:
        if t > now - behavior.scale_up_window_seconds:
            up_rec = min(up_rec, r)
        if t > now - behavior.scale_down_window_seconds:
            down_rec = max(down_rec, r)
    stabilised = max(current_replicas, up_rec)
    stabilised = min(stabilised, down_rec)
    longest = max(behavior.scale_down_window_seconds, behavior.scale_up_window_seconds)
    kept = tuple((t, r) for t, r in recs if t > now - longest) + ((now, raw),)
    state = HPAState(kept, state.scale_up_events, state.scale_down_events)
    # convertDesiredReplicasWithBehaviorRate
    desired = stabilised
    reason = f"queue {queue_total:.0f} / target {target_average:g} per pod over {status} pods -> {raw}"
    if desired > current_replicas:
        limit = max(_scale_up_limit(current_replicas, state, behavior.scale_up_policies, now), current_replicas)
        if desired > min(max_replicas, limit):
            desired = min(max_replicas, limit)
            reason += f"; ScaleUpLimit {desired}"
    elif desired < current_replicas:
        limit = min(_scale_down_limit(current_replicas, state, behavior.scale_down_policies, now), current_replicas)
        if desired < max(min_replicas, limit):
            desired = max(min_replicas, limit)
            reason += f"; ScaleDownLimit {desired}"
        if stabilised != raw:
            reason += f"; stabilised at {stabilised} (max over {behavior.scale_down_window_seconds:g}s)"
    elif raw < current_replicas:
        reason += f"; held by the {behavior.scale_down_window_seconds:g}s scale-down stabilisation window"
    return HPADecision(desired, reason, _record(state, now, current_replicas, desired))


def _record(state: HPAState, now: float, before: int, after: int) -> HPAState:
    """``storeScaleEvent``: append this sync's change; events older than an hour can no longer
    fall inside any policy period (periods are at most 1800 s) and are dropped."""
    keep = 3600.0
    ups = tuple(e for e in state.scale_up_events if now - e[0] < keep)
    downs = tuple(e for e in state.scale_down_events if now - e[0] < keep)
    if after > before:
        ups += ((now, after - before),)
    elif after < before:
        downs += ((now, before - after),)
    return HPAState(state.recommendations, ups, downs)

"""Stuck workloads, found purely: which pods and pool Deployments cannot make progress, and why.

A replica that never becomes Ready shows in status only as "ReplicasNotReady" unless
someone reads the kubelet's and the Deployment controller's verdicts. This module reads
them from the objects the controller already watches (no extra API request) and names
the pod or Deployment and the cause, so ``Degraded`` says what to fix:

* a container (init containers included) waiting with ``ImagePullBackOff`` /
  ``ErrImagePull`` / ``InvalidImageName`` (image missing or registry access denied),
  ``CrashLoopBackOff`` (the server exits), ``CreateContainerConfigError`` /
  ``CreateContainerError`` (a missing Secret or ConfigMap, a bad mount);
* a pod the scheduler marked ``Unschedulable`` for longer than ``UNSCHEDULABLE_GRACE_SECONDS``
  (a short wait is normal: a surge pod waits for a GPU being freed);
* a Deployment with ``ReplicaFailure=True`` (the ReplicaSet cannot create pods: a
  ResourceQuota, a Pod Security rejection, a webhook) or ``Progressing=False`` with
  ``ProgressDeadlineExceeded``.

Messages carry names and causes but no kubelet back-off timers, so they stay the same
while the problem does: status is written, and the Event posted, once per change.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import conditions as cond

#: Container waiting reasons that do not resolve by waiting (the kubelet keeps backing off).
STUCK_WAITING = (
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
)
UNSCHEDULABLE = "Unschedulable"
REPLICA_FAILURE = "ReplicaFailure"
PROGRESS_DEADLINE = "ProgressDeadlineExceeded"
#: An unschedulable pod is reported only after this long (a rolling surge pod may wait for a GPU).
UNSCHEDULABLE_GRACE_SECONDS = 120.0
MAX_NAMED = 3


@dataclass(frozen=True)
class Stuck:
    kind: str  # Pod | Deployment
    name: str
    cause: str  # one of STUCK_WAITING, UNSCHEDULABLE, REPLICA_FAILURE, PROGRESS_DEADLINE
    detail: str  # the container and image, or the controller's message

    def sentence(self) -> str:
        return f"{self.kind} {self.name}: {self.cause}" + (f" ({self.detail})" if self.detail else "")


def _time(value: Any) -> dt.datetime | None:
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def pod_cause(pod: Mapping[str, Any], now: dt.datetime) -> Stuck | None:
    """Why ``pod`` cannot become Ready by waiting, or None."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp") or status.get("phase") in ("Succeeded", "Failed"):
        return None
    name = str(meta.get("name"))
    spec = pod.get("spec") or {}
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    images = {c.get("name"): c.get("image") for c in containers}
    for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        reason = ((cs.get("state") or {}).get("waiting") or {}).get("reason")
        if reason in STUCK_WAITING:
            container = cs.get("name")
            image = cs.get("image") or images.get(container) or "?"
            detail = f"container {container}, image {image}"
            if reason == "CreateContainerConfigError":  # names the missing Secret/ConfigMap, no timer
                message = ((cs.get("state") or {}).get("waiting") or {}).get("message")
                detail = f"container {container}: {message}" if message else detail
            return Stuck("Pod", name, str(reason), detail[:300])
    for c in status.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == UNSCHEDULABLE:
            since = _time(c.get("lastTransitionTime"))
            if since is not None and (now - since).total_seconds() >= UNSCHEDULABLE_GRACE_SECONDS:
                return Stuck("Pod", name, UNSCHEDULABLE, str(c.get("message") or "")[:300])
    return None


#: A replica still not Ready after this many times the modelled cold start no longer earns warm-up
#: credit (the autoscaler stops counting it as capacity). 3x leaves room for a slow registry or a
#: cold node cache (the model's cold start already includes a full pull) while bounding how long a
#: pod that hangs without a kubelet verdict (e.g. an engine stuck loading) can freeze scaling.
WARM_UP_CREDIT_FACTOR = 3.0
WARM_UP_EXPIRED = "WarmUpExpired"


def is_ready(pod: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def warm_up_cause(pod: Mapping[str, Any], now: dt.datetime, credit_seconds: float) -> Stuck | None:
    """Why a not-Ready ``pod`` no longer counts as capacity that is coming, or None.

    A kubelet or scheduler verdict (:func:`pod_cause`) first; else a pod not Ready
    ``credit_seconds`` after it was created (the warm-up credit expired)."""
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp") or is_ready(pod):
        return None
    cause = pod_cause(pod, now)
    if cause is not None:
        return cause
    created = _time(meta.get("creationTimestamp"))
    if created is None or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return None
    age = (now - created).total_seconds()
    if age < credit_seconds:
        return None
    return Stuck("Pod", str(meta.get("name")), WARM_UP_EXPIRED, f"not Ready {age:.0f}s after creation")


def deployment_cause(dep: Mapping[str, Any]) -> Stuck | None:
    """A pool Deployment the Deployment controller reports as failing, or None."""
    name = str((dep.get("metadata") or {}).get("name"))
    for c in (dep.get("status") or {}).get("conditions") or []:
        if c.get("type") == REPLICA_FAILURE and c.get("status") == "True":
            return Stuck("Deployment", name, REPLICA_FAILURE, str(c.get("message") or c.get("reason") or "")[:300])
        if c.get("type") == "Progressing" and c.get("status") == "False" and c.get("reason") == PROGRESS_DEADLINE:
            return Stuck("Deployment", name, PROGRESS_DEADLINE, str(c.get("message") or "")[:300])
    return None


def find(deployments: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]], now: dt.datetime) -> list[Stuck]:
    """Every stuck Deployment, then every stuck pod, sorted by name (stable messages)."""
    deps = [s for s in (deployment_cause(d) for d in deployments) if s is not None]
    stuck_pods = [s for s in (pod_cause(p, now) for p in pods) if s is not None]
    return sorted(deps, key=lambda s: s.name) + sorted(stuck_pods, key=lambda s: s.name)


def degraded(stuck: Sequence[Stuck]) -> cond.Condition | None:
    """``Degraded=True`` naming the first stuck objects and their causes, or None."""
    if not stuck:
        return None
    shown = "; ".join(s.sentence() for s in stuck[:MAX_NAMED])
    more = f"; and {len(stuck) - MAX_NAMED} more" if len(stuck) > MAX_NAMED else ""
    return cond.Condition(
        cond.DEGRADED,
        True,
        stuck[0].cause,
        f"{shown}{more}. These replicas cannot become Ready by waiting: fix the cause (image, Secret, quota, "
        "Pod Security, GPU capacity) and the pods are retried.",
    )

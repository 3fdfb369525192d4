"""The reconciler's data-plane share, computed purely: what the router reads and what to prune.

- :func:`pool_capacity`: the per-pool figures the router weighs replicas by, published in
  ``status.pools``: ``capacityRequestsPerSecond`` (the planner's requests/s one replica
  sustains within the TTFT SLO for the typical request), ``prefillTokensPerSecond`` (the
  replica model's prefill speed, for size-aware TTFT estimates) and
  ``maxConcurrentRequests``. One source for planner, autoscaler and router: the router
  never re-derives capacity from its own model.
- :func:`stale_objects`: owned objects the renderer no longer produces (the router's Deployment,
  PDB, ServiceAccount, Role, RoleBinding and ``<name>-servers`` Service once
  ``spec.routing.enabled`` is false; the InferencePool and HTTPRoute once
  ``gateway.inferencePool`` is). Server-side apply never removes an object, and waiting
  for the garbage collector would only happen when the QwenDeployment itself goes.
- :func:`is_router` tells the router's Deployment from pool Deployments (the component
  label), so it is never sized, rolled or reported as a GPU pool.
- :func:`router_not_ready`: with the router in front, the Service clients call answers only
  through a Ready router pod, so no Ready router replica means the QwenDeployment is not
  Ready (``RouterNotReady``), however many server replicas are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..api.spec import QwenDeploymentSpec
from ..capacity.model import ReplicaModel
from ..catalog import Catalog, resolve_gpu_name
from ..planner.placement import Candidate
from ..planner.plan import workload_for
from ..render.names import LABEL_COMPONENT, ROUTER_COMPONENT, router_name
from . import conditions as cond

#: Kinds the reconciler deletes when they leave the rendered set (pool Deployments have their
#: own, capacity-preserving removal in reconcile.py and are not pruned here).
PRUNED_KINDS = frozenset(
    {
        "Service",
        "PodDisruptionBudget",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "InferencePool",
        "HTTPRoute",
        "ServiceMonitor",
    }
)

_PREFILL_CACHE: dict[tuple[object, ...], float | None] = {}
_PREFILL_CACHE_MAX = 256


def is_router(obj: Mapping[str, Any]) -> bool:
    """The object belongs to the router (``app.kubernetes.io/component: router``)."""
    return ((obj.get("metadata") or {}).get("labels") or {}).get(LABEL_COMPONENT) == ROUTER_COMPONENT


def _prefill_tokens_per_second(spec: QwenDeploymentSpec, catalog: Catalog, gpu_type: str, shards: int) -> float | None:
    """The replica model's prefill rate for one replica (memoised: asked on every reconcile)."""
    try:
        work = workload_for(spec, catalog)
        gpu = catalog.gpus[resolve_gpu_name(gpu_type, catalog.gpus)]
    except (KeyError, ValueError):
        return None
    key: tuple[object, ...] = (repr(work.model), gpu, shards, work.quantization, work.max_concurrent_requests)
    key += (work.max_input_tokens, work.max_total_tokens)
    if key not in _PREFILL_CACHE:
        if len(_PREFILL_CACHE) >= _PREFILL_CACHE_MAX:
            _PREFILL_CACHE.clear()
        try:
            replica = ReplicaModel(
                work.model,
                gpu,
                shards,
                work.quantization,
                max_concurrent_requests=work.max_concurrent_requests,
                max_input_tokens=work.max_input_tokens,
                max_total_tokens=work.max_total_tokens,
            )
            _PREFILL_CACHE[key] = replica.prefill_tokens_per_second
        except ValueError:
            _PREFILL_CACHE[key] = None
    return _PREFILL_CACHE[key]


def pool_capacity(spec: QwenDeploymentSpec, catalog: Catalog, cand: Candidate | None) -> dict[str, Any]:
    """``status.pools[]`` capacity fields of one pool (camelCase); figures not known are left out."""
    out: dict[str, Any] = {"maxConcurrentRequests": spec.runtime.max_concurrent_requests}
    if cand is None or not cand.shards:
        return out
    if cand.slo_rate > 0:
        out["capacityRequestsPerSecond"] = round(cand.slo_rate, 3)
    prefill = _prefill_tokens_per_second(spec, catalog, cand.gpu_type, cand.shards)
    if prefill:
        out["prefillTokensPerSecond"] = round(prefill, 1)
    return out


def _ident(obj: Mapping[str, Any]) -> tuple[str, str]:
    return (str(obj.get("kind")), str((obj.get("metadata") or {}).get("name")))


def stale_objects(rendered: Iterable[Mapping[str, Any]], others: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Owned non-pool objects (``others``, incl. the router Deployment) absent from ``rendered``."""
    wanted = {_ident(m) for m in rendered}
    out = []
    for obj in others:
        kind = str(obj.get("kind"))
        prunable = kind in PRUNED_KINDS or (kind == "Deployment" and is_router(obj))
        if prunable and _ident(obj) not in wanted and not (obj.get("metadata") or {}).get("deletionTimestamp"):
            out.append(dict(obj))
    return out


def router_not_ready(
    spec: QwenDeploymentSpec, name: str, objects: Iterable[Mapping[str, Any]]
) -> cond.Condition | None:
    """``Ready=False, RouterNotReady`` when ``spec.routing`` renders the router and none of its replicas
    is Ready; None when the router is off or at least one replica is Ready.

    ``objects``: the owned objects seen (pool Deployments and the others); the router is the
    Deployment ``<name>-router`` carrying the router component label. A router holding requests
    at zero server replicas is Ready (its ``/health`` says so), so scale-to-zero stays Ready."""
    if not spec.routing.enabled:
        return None
    wanted = router_name(name)
    dep = next(
        (
            o
            for o in objects
            if o.get("kind", "Deployment") == "Deployment"
            and (o.get("metadata") or {}).get("name") == wanted
            and is_router(o)
        ),
        None,
    )
    if dep is None:
        message = f"Router Deployment {wanted} does not exist yet: requests to Service {name} have nowhere to go."
        return cond.Condition(cond.READY, False, "RouterNotReady", message)
    ready = int((dep.get("status") or {}).get("readyReplicas") or 0)
    if ready > 0:
        return None
    replicas = int((dep.get("spec") or {}).get("replicas") or 0)
    message = f"0/{replicas} router replicas ready ({wanted}): requests to Service {name} cannot be answered."
    return cond.Condition(cond.READY, False, "RouterNotReady", message)

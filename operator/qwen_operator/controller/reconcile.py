"""One reconcile, computed purely: observed world in, the writes that converge it out.

Inputs are plain dicts (the QwenDeployment, the objects it owns, nodes and GPU pods);
the output says which manifests to apply, which pool Deployments to delete, the status
this controller owns, and the Events to post. The kopf handlers only gather the inputs
and execute the outcome (KubeAI's ``calculatePodPlan`` / ``execute`` split).

Zero writes when nothing changed: every rendered manifest carries a hash of itself
(``serving.qwenops.io/applied-hash``); a manifest is applied when the live object is
missing or carries another hash, or when a field we render differs in the live object
(drift, e.g. ``kubectl scale`` or an edited image on a pool Deployment: see ``drift.py``;
compared in the watch cache, so a steady state costs no request). Status is applied only
when this controller's fields differ from what is live.

Create once: with an ``s3://`` registry no pool Deployment is created before the version
watcher resolved ``spec.model.version`` to a manifest digest (``status.model``), so a new
resource's pools start on the digest instead of the floating tag and never roll a second
time; until then Progressing/Ready say so (``WaitingForModelVersion``).

Pools that leave the plan are deleted only once the planned pools have all their replicas
Ready, so capacity never drops during a move.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from ..api.spec import QwenDeploymentSpec
from ..api.status import pool_summary, ready_summary
from ..api.validate import validate_spec
from ..autoscale.loop import pool_targets
from ..catalog import Catalog
from ..planner.placement import rank_key
from ..planner.plan import INSUFFICIENT_GPUS, LWS_NOT_INSTALLED, NO_GPU_TYPE_FITS, OK, Plan, plan
from ..planner.pools import Pool
from ..render.lws import LWS_CRD, LWS_KIND, pod_template
from ..render.manifests import render
from ..render.names import (
    ANNOTATION_MODEL_VERSION,
    CANARY_COMPONENT,
    LABEL_COMPONENT,
    LABEL_DEPLOYMENT,
    LABEL_POOL,
    label_value,
    pool_deployment_name,
    pool_selector,
    selector_string,
)
from ..render.workload import NO_SURGE_ROLLING_UPDATE, OperatorDefaults, RenderContext, cache_path_problem
from . import conditions as cond
from . import failures
from .createonce import waiting_conditions
from .drift import describe, drift
from .inventory import GPUInventory, compute_inventory
from .rollout import (
    BORROWED_ANNOTATION,
    GPU_TYPE_ANNOTATION,
    ModelState,
    canary_deadline,
    canary_kept,
    canary_manifest,
    canary_wanted,
    degraded_reason,
    is_canary,
    parse_time,
    pool_pods_unschedulable,
    pool_version,
    template_version,
    timed_out,
    watcher_status,
)
from .routing import is_router, pool_capacity, router_not_ready, stale_objects

HASH_ANNOTATION = "serving.qwenops.io/applied-hash"
#: The kinds of a pool's object: a Deployment, or a LeaderWorkerSet when a replica spans nodes.
POOL_KINDS = ("Deployment", LWS_KIND)
CACHE_PATH_NOT_ALLOWED = "CachePathNotAllowed"
__all__ = ["GPU_TYPE_ANNOTATION", "HASH_ANNOTATION", "Event", "Observed", "Outcome", "compute", "with_watcher_status"]


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Outcome:
    apply: list[dict[str, Any]] = field(default_factory=list)
    delete: list[dict[str, Any]] = field(default_factory=list)  # live Deployments to delete
    status: dict[str, Any] | None = None  # this controller's status fields, None = unchanged
    status_changed: tuple[str, ...] = ()  # which of them differ from the live status (the log says why it wrote)
    events: list[Event] = field(default_factory=list)
    plan: Plan | None = None
    spec: QwenDeploymentSpec | None = None
    # the version watcher's status subset, written under its field manager before anything
    # else: a canary timed out (see rollout.canary_deadline); None = nothing to record
    model_status: dict[str, Any] | None = None
    requeue_after: float | None = None  # reconcile again by then (a canary's deadline)
    # applies that revert drift (hash unchanged, live fields differ): (kind, name) -> the live
    # resourceVersion the drift was seen at, so a reconcile racing its own watch event skips them
    drifted: dict[tuple[str, str], str | None] = field(default_factory=dict)
    # whether GPUs freed elsewhere could change this decision: replicas left unplaced, a roll
    # waiting for surge room or borrowing it, or the autoscaler's pools spilled over. A pod
    # exit re-runs only such resources (and the pod's owner); the periodic resync covers the rest
    wants_gpus: bool = True

    @property
    def writes(self) -> int:
        return (
            len(self.apply)
            + len(self.delete)
            + (1 if self.status is not None else 0)
            + (1 if self.model_status is not None else 0)
        )


@dataclass(frozen=True)
class Observed:
    """Everything one reconcile reads."""

    qwd: Mapping[str, Any]
    # pool Deployments (and LeaderWorkerSets, for replicas spanning nodes) owned by this resource
    deployments: Sequence[Mapping[str, Any]] = ()
    others: Sequence[Mapping[str, Any]] = ()  # other owned objects (Service, PDB, ServiceMonitor)
    nodes: Sequence[Mapping[str, Any]] = ()
    pods: Sequence[Mapping[str, Any]] = ()  # pods requesting GPUs, any namespace
    service_monitor_crd: bool = False
    gateway_api_crds: bool = False  # InferencePool and HTTPRoute CRDs exist: render the Gateway API path
    # the LeaderWorkerSet CRD exists: a model no node holds is planned across nodes (render/lws.py)
    lws_crd: bool = False
    operator_image: str | None = None
    pod_annotations: tuple[tuple[str, str], ...] = ()
    defaults: OperatorDefaults = field(default_factory=OperatorDefaults)  # operator config registry, nodeCache
    # free GPUs kept up to date by the controller's caches (LiveInventory); then ``pods`` may hold only
    # this resource's own pods. None: counted here from ``nodes`` and ``pods`` (every GPU pod)
    inventory: GPUInventory | None = None


def with_watcher_status(obs: Observed, written: Mapping[str, Any]) -> Observed:
    """``obs`` with the version watcher's status subset (``model``, ``ModelSynced``) replaced by ``written``."""
    qwd = dict(obs.qwd)
    status = dict(qwd.get("status") or {})
    status["model"] = written.get("model") or {}
    others = [c for c in status.get("conditions") or [] if c.get("type") != cond.MODEL_SYNCED]
    status["conditions"] = others + list(written.get("conditions") or [])
    qwd["status"] = status
    return replace(obs, qwd=qwd)


def with_own_status(obs: Observed, written: Mapping[str, Any]) -> Observed:
    """``obs`` with this controller's status subset (:func:`_status_subset`'s keys and the Ready,
    Progressing and Degraded conditions) replaced by ``written``: what it last wrote while the watch
    has not delivered that write yet. Deciding from the stale copy would stamp a new
    ``lastTransitionTime`` on each pass and write again (under load, every resync until the event
    arrives)."""
    qwd = dict(obs.qwd)
    status = dict(qwd.get("status") or {})
    mine = {cond.READY, cond.PROGRESSING, cond.DEGRADED}
    status.update({k: v for k, v in written.items() if k != "conditions"})
    others = [c for c in status.get("conditions") or [] if c.get("type") not in mine]
    status["conditions"] = others + list(written.get("conditions") or [])
    qwd["status"] = status
    return replace(obs, qwd=qwd)


def manifest_hash(obj: Mapping[str, Any]) -> str:
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _stamp(obj: dict[str, Any]) -> dict[str, Any]:
    """Add the hash annotation (of the manifest without it)."""
    digest = manifest_hash(obj)
    meta = obj.setdefault("metadata", {})
    meta.setdefault("annotations", {})[HASH_ANNOTATION] = digest
    return obj


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    return (str(obj.get("kind")), str(obj.get("metadata", {}).get("name")))


def _live_hash(obj: Mapping[str, Any] | None) -> str | None:
    if obj is None:
        return None
    return (obj.get("metadata", {}).get("annotations") or {}).get(HASH_ANNOTATION)


def _replicas(obj: Mapping[str, Any]) -> int:
    return int(obj.get("spec", {}).get("replicas") or 0)


def _ready(obj: Mapping[str, Any]) -> int:
    return int(obj.get("status", {}).get("readyReplicas") or 0)


def _gpu_type(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata", {})
    return str((meta.get("annotations") or {}).get(GPU_TYPE_ANNOTATION) or (meta.get("labels") or {}).get(LABEL_POOL))


def _settled(dep: Mapping[str, Any]) -> bool:
    """The Deployment controller has acted on the latest spec and every replica is new and ready."""
    st, spec_replicas = dep.get("status", {}), _replicas(dep)
    gen, observed = dep.get("metadata", {}).get("generation"), st.get("observedGeneration")
    return (
        (gen is None or observed == gen)
        and int(st.get("updatedReplicas") or 0) == spec_replicas
        and int(st.get("readyReplicas") or 0) == spec_replicas
        and int(st.get("replicas") or 0) == spec_replicas
    )


def _status_subset(status: Mapping[str, Any]) -> dict[str, Any]:
    keys = (
        "observedGeneration",
        "replicas",
        "readyReplicas",
        "desiredReplicas",
        "selector",
        "poolSummary",
        "readySummary",
        "pools",
    )
    out = {k: status[k] for k in keys if k in status}
    mine = {cond.READY, cond.PROGRESSING, cond.DEGRADED}
    out["conditions"] = [c for c in status.get("conditions") or [] if c.get("type") in mine]
    return out


def _changed(status: Mapping[str, Any], live: Mapping[str, Any]) -> tuple[str, ...]:
    """The status fields that differ (a condition by its type and field: ``conditions.Ready.message``)."""
    out = [k for k in sorted({*status, *live}) if k != "conditions" and status.get(k) != live.get(k)]
    mine = {c.get("type"): c for c in status.get("conditions") or []}
    theirs = {c.get("type"): c for c in live.get("conditions") or []}
    for t in sorted({*mine, *theirs}, key=str):
        a, b = mine.get(t) or {}, theirs.get(t) or {}
        out += [f"conditions.{t}.{f}" for f in sorted({*a, *b}) if a.get(f) != b.get(f)]
    return tuple(out)


def compute(obs: Observed, catalog: Catalog, now: str | None = None, at: dt.datetime | None = None) -> Outcome:
    """``now`` stamps condition transitions; ``at`` is the clock canary deadlines are read on (default: ``now``)."""
    clock = at or parse_time(now) or dt.datetime.now(dt.UTC)
    qwd = obs.qwd
    meta, live_status = qwd.get("metadata", {}), qwd.get("status") or {}
    name, namespace = meta["name"], meta["namespace"]
    generation = int(meta.get("generation") or 1)
    out = Outcome()
    existing_conditions = live_status.get("conditions") or []

    def finish(conditions: list[cond.Condition], extra: dict[str, Any]) -> Outcome:
        merged, _ = cond.merge(
            [c for c in existing_conditions if c.get("type") in {cond.READY, cond.PROGRESSING, cond.DEGRADED}],
            conditions,
            generation,
            now=now,
        )
        status = {"observedGeneration": generation, "selector": selector_string(name), **extra, "conditions": merged}
        live = _status_subset(live_status)
        if status != live:
            out.status = status
            out.status_changed = _changed(status, live)
        return out

    try:
        spec = QwenDeploymentSpec.model_validate(qwd.get("spec") or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "spec." + ".".join(str(p) for p in first["loc"])
        message = f"{where}: {first['msg']}. The operator made no changes; fix the resource."
        return finish(
            [
                cond.Condition(cond.DEGRADED, True, "InvalidSpec", message),
                cond.Condition(cond.READY, False, "InvalidSpec", message),
                cond.Condition(cond.PROGRESSING, False, "InvalidSpec", "Waiting for a valid spec."),
            ],
            {},
        )
    out.spec = spec
    problems = validate_spec(spec, catalog)
    blocking = [p for p in problems if p.reason != "GPUTypeNotInCatalog"]
    if blocking:
        message = " ".join(f"{p.field}: {p.message}" for p in blocking)
        return finish(
            [
                cond.Condition(cond.DEGRADED, True, blocking[0].reason, message),
                cond.Condition(cond.READY, False, blocking[0].reason, message),
                cond.Condition(cond.PROGRESSING, False, blocking[0].reason, "Waiting for a servable spec."),
            ],
            {},
        )
    cache_problem = cache_path_problem(spec, obs.defaults)  # the admin's allowlist: no pods outside it
    if cache_problem is not None:
        return finish(
            [
                cond.Condition(cond.DEGRADED, True, CACHE_PATH_NOT_ALLOWED, cache_problem),
                cond.Condition(cond.READY, False, CACHE_PATH_NOT_ALLOWED, cache_problem),
                cond.Condition(cond.PROGRESSING, False, CACHE_PATH_NOT_ALLOWED, "Waiting for an allowed cache path."),
            ],
            {},
        )

    pool_deps = [d for d in obs.deployments if not is_canary(d) and not is_router(d)]
    live_by_type = {_gpu_type(d): d for d in pool_deps}
    current = {t: _replicas(d) for t, d in live_by_type.items()}
    # every pod's GPUs count as used, ours included: the planner keeps `current` pools and
    # only adds replicas where GPUs are actually free (else a scale-up would double-book them)
    inventory = obs.inventory if obs.inventory is not None else compute_inventory(obs.nodes, obs.pods, catalog.gpus)
    autoscaler = live_status.get("autoscaler") or {}
    desired = spec.desired_replicas(autoscaler.get("desiredReplicas"))
    free = {t: inventory.free_per_node.get(t, []) for t in catalog.gpus}
    the_plan = plan(spec, catalog, replicas=desired, free_gpus=free, current=current, multi_node=obs.lws_crd)
    if the_plan.reason_code == NO_GPU_TYPE_FITS and not obs.lws_crd:
        the_plan = _without_lws(the_plan, plan(spec, catalog, replicas=desired, multi_node=True))
    spilled = False
    if spec.scaling.enabled and autoscaler.get("desiredPools"):
        # the autoscaler placed its decision per pool (autoscale.loop): start from those counts as far
        # as free GPUs allow now, and let the planner spill over only what no longer fits
        wanted = {str(p.get("gpuType")): int(p.get("replicas") or 0) for p in autoscaler["desiredPools"]}
        shards = {c.gpu_type: c.shards for c in the_plan.candidates if c.fits}
        spans = {c.gpu_type: c.nodes for c in the_plan.candidates if c.fits}
        start, free = pool_targets(wanted, current, free, shards, spans)
        the_plan = plan(spec, catalog, replicas=desired, free_gpus=free, current=start, multi_node=obs.lws_crd)
        spilled = {t: n for t, n in wanted.items() if n} != {
            p.gpu_type: p.replicas for p in the_plan.pools if p.replicas
        }
    out.plan = the_plan
    model = ModelState.from_status(live_status)
    timeout = spec.rollout.canary_timeout_seconds
    deadline = canary_deadline(
        model, name, namespace, spec.rollout.canary_replicas, timeout, obs.deployments, obs.pods, clock
    )
    if deadline is not None and deadline.expired:
        # roll back now: the canary is deleted below (no longer wanted), Degraded says why
        model = timed_out(model, deadline, timeout)
        out.model_status = watcher_status(live_status, model, generation, now)
        out.events.append(
            Event(
                "Warning",
                "CanaryTimeout",
                f"Canary of {deadline.version[:19]} not Ready after {timeout}s: {deadline.message}. Rolled back: "
                f"the canary is removed and pools stay on {(model.current or '-')[:19]}; not retried until "
                "the tag moves or spec.model.version changes.",
            )
        )
    elif deadline is not None:
        out.requeue_after = deadline.remaining
    target_version = pool_version(model) or spec.model.version
    old_pods = pools_with_old_pods(name, namespace, list(live_by_type), obs.pods, target_version)
    the_plan, blocked, borrowed, borrow_ready = _borrow_surge(
        the_plan, live_by_type, target_version, spec.rollout.max_surge, inventory, catalog, old_pods
    )
    out.plan = the_plan
    out.wants_gpus = bool(the_plan.unplaced) or bool(blocked) or spilled
    no_surge = blocked if borrowed and borrow_ready else []
    if blocked:
        out.events.extend(_surge_events(blocked, borrowed, live_by_type, target_version))
    ctx = RenderContext(
        name=name,
        namespace=namespace,
        model_version=pool_version(model),
        no_surge_pools=tuple(no_surge),
        operator_image=obs.operator_image,
        owner_uid=meta.get("uid"),
        service_monitor=obs.service_monitor_crd,
        gateway_api=obs.gateway_api_crds,
        pod_annotations=obs.pod_annotations,
        defaults=obs.defaults,
    )
    rendered = render(spec, the_plan, ctx, catalog)
    by_name = {pool_deployment_name(name, p.gpu_type): p.gpu_type for p in the_plan.pools}
    # create once: no pool Deployment on a guessed (floating) version; live pools are kept as they are
    unresolved = spec.model.registry.startswith(("s3://", "oci://")) and pool_version(model) is None
    if unresolved:
        rendered = [m for m in rendered if not (m["kind"] in POOL_KINDS and m["metadata"]["name"] in by_name)]
    for m in rendered:
        if m["kind"] in POOL_KINDS and m["metadata"]["name"] in by_name:
            annotations = m["metadata"].setdefault("annotations", {})
            annotations[GPU_TYPE_ANNOTATION] = by_name[m["metadata"]["name"]]
            if borrowed is not None and by_name[m["metadata"]["name"]] == borrowed:
                annotations[BORROWED_ANNOTATION] = str(len(blocked))
    waits_for_gpus = bool(the_plan.unplaced) or bool(spilled) or pool_pods_unschedulable(name, namespace, obs.pods)
    canary_version = canary_wanted(model, spec.rollout.canary_replicas) or canary_kept(
        model, spec, obs.deployments, waits_for_gpus
    )
    if canary_version is not None:
        canary = canary_manifest(
            spec,
            the_plan,
            ctx,
            catalog,
            canary_version,
            spec.rollout.canary_replicas,
            free_replicas=inventory.free_replicas,
            live=obs.deployments,
        )
        # a canary of another version is deleted (below) and created anew, never updated in
        # place: its creationTimestamp is the clock of spec.rollout.canaryTimeoutSeconds. So is
        # one whose (immutable) selector an older operator rendered with the server component.
        name_of = canary["metadata"]["name"] if canary is not None else None
        stale = any(
            is_canary(d)
            and d["metadata"]["name"] == name_of
            and (
                template_version(d) != canary_version
                or _selector(d).get(LABEL_COMPONENT, CANARY_COMPONENT) != CANARY_COMPONENT
            )
            for d in obs.deployments
        )
        rendered += [canary] if canary is not None and not stale else []
    manifests = [_stamp(m) for m in rendered]
    live = {_key(d): d for d in [*obs.deployments, *obs.others]}
    for m in manifests:
        prev = live.get(_key(m))
        if prev is not None and _live_hash(prev) == m["metadata"]["annotations"][HASH_ANNOTATION]:
            changed = drift(m, prev)
            if changed:
                out.apply.append(m)
                out.drifted[_key(m)] = prev.get("metadata", {}).get("resourceVersion")
                out.events.append(
                    Event(
                        "Warning",
                        "DriftReverted",
                        f"{m['kind']} {m['metadata']['name']} was changed outside the operator "
                        f"({describe(changed)}); restored to the rendered spec.",
                    )
                )
            continue
        out.apply.append(m)
        if m["kind"] == "Deployment" and is_canary(m):
            out.events.append(
                Event(
                    "Normal",
                    "CanaryCreated" if prev is None else "CanaryUpdated",
                    f"Canary Deployment {m['metadata']['name']}: {_replicas(m)} replica(s) on {canary_version}.",
                )
            )
        elif m["kind"] in POOL_KINDS and not is_router(m):
            gpu = _gpu_type(m)
            if prev is None:
                out.events.append(
                    Event(
                        "Normal",
                        "PoolCreated",
                        f"Created pool {gpu}: {_replicas(m)} replica(s) "
                        f"of {_replica_shape(the_plan, gpu)} in {m['kind']} {m['metadata']['name']}.",
                    )
                )
            elif _replicas(prev) != _replicas(m):
                out.events.append(
                    Event(
                        "Normal",
                        "PoolResized",
                        f"Resized pool {gpu} from {_replicas(prev)} to {_replicas(m)} replica(s).",
                    )
                )
            else:
                out.events.append(Event("Normal", "PoolUpdated", f"Updated pool {gpu} (template changed)."))

    planned_names = {m["metadata"]["name"] for m in manifests if m["kind"] in POOL_KINDS}
    for dep in obs.deployments:
        if is_canary(dep) and dep["metadata"]["name"] not in planned_names:
            out.delete.append(dict(dep))
            out.events.append(Event("Normal", "CanaryRemoved", f"Removed canary Deployment {dep['metadata']['name']}."))
    planned_live = [d for d in pool_deps if d["metadata"]["name"] in planned_names]
    planned_ready = sum(_ready(d) for d in planned_live)
    applying = {m["metadata"]["name"] for m in out.apply if m["kind"] in POOL_KINDS and not is_canary(m)}
    replacement_ready = not applying and planned_ready >= the_plan.placed and all(_settled(d) for d in planned_live)
    # while the version is unresolved nothing is planned: live pools stay until it resolves
    leaving = [] if unresolved else [d for d in pool_deps if d["metadata"]["name"] not in planned_names]
    waiting_on_replacement = False
    for dep in leaving:
        if replacement_ready or _ready(dep) == 0:
            out.delete.append(dict(dep))
            out.events.append(
                Event(
                    "Normal",
                    "PoolRemoved",
                    f"Removed pool {_gpu_type(dep)} "
                    f"({dep.get('kind', 'Deployment')} {dep['metadata']['name']}, {_replicas(dep)} replica(s)).",
                )
            )
        else:
            waiting_on_replacement = True

    for obj in stale_objects(manifests, obs.others):  # e.g. the router once spec.routing.enabled is false
        out.delete.append(obj)
        out.events.append(
            Event("Normal", "Removed", f"Removed {obj['kind']} {obj['metadata']['name']} (not rendered).")
        )

    # status, from the live pools (what actually runs), planned first
    pools_status = []
    for dep in sorted(pool_deps, key=lambda d: (d["metadata"]["name"] not in planned_names, _gpu_type(d))):
        gpu = _gpu_type(dep)
        cand = the_plan.candidate(gpu)
        span = _nodes_of(dep)
        pools_status.append(
            {
                "gpuType": gpu,
                "deployment": dep["metadata"]["name"],
                **({"kind": LWS_KIND, "nodes": span} if dep.get("kind") == LWS_KIND else {}),
                "shards": cand.shards if cand and cand.shards else _shards_of(dep),
                "replicas": _replicas(dep),
                "readyReplicas": _ready(dep),
                "costPerHour": round(_replicas(dep) * (cand.price_per_hour if cand else 0.0), 3),
                **pool_capacity(spec, catalog, cand),  # the router's weights (controller/routing.py)
            }
        )
    ready_total = sum(p["readyReplicas"] for p in pools_status)
    replicas_total = sum(int(d.get("status", {}).get("replicas") or 0) for d in pool_deps)
    extra = {
        "replicas": replicas_total,
        "readyReplicas": ready_total,
        "desiredReplicas": desired,
        "poolSummary": pool_summary([(p["gpuType"], p["replicas"]) for p in pools_status]) or "-",
        "readySummary": ready_summary(ready_total, desired),
        "pools": pools_status,
    }
    conds: list[cond.Condition] = []
    if the_plan.reason_code == OK:
        missing_types = [t for t in spec.placement.gpu_types if t not in inventory.allocatable]
        if missing_types and not the_plan.pools:
            conds.append(
                cond.Condition(
                    cond.DEGRADED,
                    True,
                    "GPUTypeNotInCluster",
                    f"No schedulable node has {', '.join(missing_types)} GPUs.",
                )
            )
        else:
            conds.append(
                degraded_reason(model)
                or cond.Condition(
                    cond.DEGRADED,
                    False,
                    "AsExpected",
                    f"Placement: {the_plan.pool_summary}." if the_plan.pools else "Nothing to place.",
                )
            )
    else:
        reason = the_plan.reason_code
        absent = [t for t in spec.placement.gpu_types if t in catalog.gpus and t not in inventory.allocatable]
        message = the_plan.reason
        if reason == INSUFFICIENT_GPUS and absent:
            message += f" No schedulable node has {', '.join(absent)} GPUs."
            if len(absent) == len(spec.placement.gpu_types):
                reason = "GPUTypeNotInCluster"
        conds.append(cond.Condition(cond.DEGRADED, True, reason, message))
    own_pods = [
        p
        for p in obs.pods
        if (p.get("metadata") or {}).get("namespace") == namespace
        and ((p.get("metadata") or {}).get("labels") or {}).get(LABEL_DEPLOYMENT) == label_value(name)
    ]
    stuck = failures.degraded(failures.find(obs.deployments, own_pods, clock))
    if stuck is not None and conds[0].status is not True:  # a placement problem, if any, is named first
        conds[0] = stuck
        live_degraded = cond.get(existing_conditions, cond.DEGRADED)
        if live_degraded is None or live_degraded.get("message") != stuck.message:
            out.events.append(Event("Warning", stuck.reason, stuck.message))
    if unresolved and not pool_deps and desired > 0:
        return finish(list(waiting_conditions(spec.model.registry, spec.model.version, live_status, conds[0])), extra)
    all_settled = all(_settled(d) for d in pool_deps)
    if out.apply or out.delete or waiting_on_replacement or not all_settled:
        why = (
            "WaitingForReplacement"
            if waiting_on_replacement
            else "Applying"
            if out.apply or out.delete
            else "RollingOut"
        )
        conds.append(
            cond.Condition(
                cond.PROGRESSING, True, why, f"{ready_total}/{desired} replicas ready; pools {extra['poolSummary']}."
            )
        )
    else:
        conds.append(cond.Condition(cond.PROGRESSING, False, "Stable", "All pools match the plan."))
    if desired == 0:
        conds.append(cond.Condition(cond.READY, True, "ScaledToZero", "Desired replicas is 0."))
    elif ready_total >= desired and all_settled and not out.apply:
        conds.append(cond.Condition(cond.READY, True, "AllReplicasReady", f"{ready_total}/{desired} replicas ready."))
    else:
        conds.append(cond.Condition(cond.READY, False, "ReplicasNotReady", f"{ready_total}/{desired} replicas ready."))
    router_down = router_not_ready(spec, name, [*obs.deployments, *obs.others])  # clients reach servers through it
    if router_down is not None and conds[-1].status:
        conds[-1] = router_down
    return finish(conds, extra)


def _strategy(dep: Mapping[str, Any]) -> dict[str, Any]:
    spec = dep.get("spec") or {}
    if dep.get("kind") == LWS_KIND:
        return dict((spec.get("rolloutStrategy") or {}).get("rollingUpdateConfiguration") or {})
    return dict((spec.get("strategy") or {}).get("rollingUpdate") or {})


def _rolling(dep: Mapping[str, Any], target_version: str, old_pods: bool = False) -> bool:
    """The pool must move to ``target_version``, or is still moving (old pods left).

    ``updatedReplicas`` counts a Pending surge pod, so on a one-replica pool it equals
    ``spec.replicas`` while the old pod still runs: ``status.replicas`` above it, or pods of
    the pool still on another version (``old_pods``; the Deployment's status may not have
    observed the new template yet), also mean the roll is not over. A pool rolling one at a
    time has finished only once its new pods are Ready too: until then the borrowed replica
    stands in for the pod it replaced.
    """
    st = dep.get("status", {})
    observed = st.get("observedGeneration") == dep.get("metadata", {}).get("generation")
    updated = int(st.get("updatedReplicas") or 0)
    in_progress = observed and (updated < _replicas(dep) or int(st.get("replicas") or 0) > updated)
    one_at_a_time_unready = _strategy(dep) == NO_SURGE_ROLLING_UPDATE and _ready(dep) < _replicas(dep)
    return template_version(dep) != target_version or in_progress or old_pods or one_at_a_time_unready


def pools_with_old_pods(
    name: str, namespace: str, gpu_types: Sequence[str], pods: Sequence[Mapping[str, Any]], target_version: str
) -> set[str]:
    """GPU types of this resource's pools that still have a pod on another model version."""
    out: set[str] = set()
    for gpu_type in gpu_types:
        selector = pool_selector(name, gpu_type)
        for pod in pods:
            meta = pod.get("metadata") or {}
            labels = meta.get("labels") or {}
            if meta.get("namespace") != namespace or any(labels.get(k) != v for k, v in selector.items()):
                continue
            version = (meta.get("annotations") or {}).get(ANNOTATION_MODEL_VERSION)
            if version is not None and version != target_version:
                out.add(gpu_type)
                break
    return out


def _borrow_surge(
    the_plan: Plan,
    live_by_type: Mapping[str, Mapping[str, Any]],
    target_version: str,
    max_surge: int,
    inventory: GPUInventory,
    catalog: Catalog,
    old_pods: frozenset[str] | set[str] = frozenset(),
) -> tuple[Plan, list[str], str | None, bool]:
    """Keep rollouts moving on full GPU pools without dropping ready capacity.

    A pool whose GPU type has no free GPU for a surge pod would deadlock a maxSurge/
    maxUnavailable=0 roll (the surge pod stays Pending). Such a pool rolls one replica at a
    time instead, and one extra replica runs meanwhile on the cheapest other planned GPU type
    with room, in the planner's fill order (``rank_key``) ("borrowed surge"); once the pool
    has settled the planner removes it again, most expensive first. The pool switches to
    one-at-a-time only once the borrowed replicas are Ready. With nowhere to borrow, the surge
    strategy stays (capacity is never dropped) and the roll waits for a GPU. Returns (plan,
    pools without surge room, borrower, borrowed replicas Ready).
    """
    no_surge: list[str] = []
    for pool in the_plan.pools:
        dep = live_by_type.get(pool.gpu_type)
        if dep is None or pool.replicas <= 0 or not _rolling(dep, target_version, pool.gpu_type in old_pods):
            continue
        if pool.multi_node:  # the LeaderWorkerSet controller rolls its groups (surge group first); nothing borrowed
            continue
        room = inventory.free_replicas(pool.gpu_type, pool.shards)
        # sticky: a pool already rolling one at a time keeps doing so until it settles (the GPU its
        # old pod freed is for its new pod, not a reason to flip back and release the borrowed one)
        rolling_without_surge = _strategy(dep) == NO_SURGE_ROLLING_UPDATE
        if max_surge <= 0 or room < 1 or rolling_without_surge:
            no_surge.append(pool.gpu_type)
    if not no_surge:
        return the_plan, [], None, False
    extra = len(no_surge)
    lenders = (c for c in the_plan.candidates if c.fits and not c.multi_node and c.gpu_type not in no_surge)
    for cand in sorted(lenders, key=rank_key):
        planned = next((p for p in the_plan.pools if p.gpu_type == cand.gpu_type), None)
        planned_n = planned.replicas if planned else 0
        live_n = _replicas(live_by_type[cand.gpu_type]) if cand.gpu_type in live_by_type else 0
        if live_n >= planned_n + extra or inventory.free_replicas(cand.gpu_type, cand.shards) >= extra:
            if planned is not None:
                pools = tuple(replace(p, replicas=p.replicas + extra) if p is planned else p for p in the_plan.pools)
            else:
                pools = (*the_plan.pools, Pool(cand.gpu_type, cand.shards, extra, cand.price_per_hour, cand.throughput))
            borrower = live_by_type.get(cand.gpu_type)
            # the borrowed replicas must be Ready before the full pool gives up a pod
            borrow_ready = borrower is not None and _ready(borrower) >= planned_n + extra
            return replace(the_plan, pools=pools), no_surge, cand.gpu_type, borrow_ready
    # nowhere to borrow: keep the surge strategy (never drop ready capacity); the roll waits
    # for a GPU of that type and the caller says so
    return the_plan, no_surge, None, False


def _surge_events(
    no_surge: list[str], borrowed: str | None, live_by_type: Mapping[str, Mapping[str, Any]], target_version: str
) -> list[Event]:
    """One Event when a pool starts rolling without surge (not on every reconcile)."""
    starting = [g for g in no_surge if template_version(live_by_type[g]) != target_version]
    if not starting:
        return []
    pools = ", ".join(starting)
    if borrowed:
        return [
            Event(
                "Normal",
                "SurgeBorrowed",
                f"No free GPU to surge pool(s) {pools}: rolling one replica at a "
                f"time while one extra replica runs on {borrowed}, so ready capacity does not drop.",
            )
        ]
    return [
        Event(
            "Warning",
            "RolloutWaitingForGPU",
            f"No free GPU to surge pool(s) {pools} and no other allowed GPU type has room: the roll waits for "
            "a GPU (ready capacity is never dropped); free a GPU, allow another GPU type, or lower the replicas.",
        )
    ]


def _replica_shape(the_plan: Plan, gpu: str) -> str:
    """``2 GPU(s)`` or, for a replica across nodes, ``2 nodes x 8 GPU(s)``."""
    c = the_plan.candidate(gpu)
    shards = c.shards if c else 0
    return f"{c.nodes} nodes x {shards} GPU(s)" if c is not None and c.multi_node else f"{shards} GPU(s)"


def _nodes_of(dep: Mapping[str, Any]) -> int:
    """Nodes one replica of a pool object spans: a LeaderWorkerSet's group size, else 1."""
    if dep.get("kind") != LWS_KIND:
        return 1
    return int(((dep.get("spec") or {}).get("leaderWorkerTemplate") or {}).get("size") or 1)


def _without_lws(one_node: Plan, across: Plan) -> Plan:
    """``one_node`` (no GPU type holds a replica on one node) with the reason the LeaderWorkerSet CRD is
    missing, when ``across`` (planned across nodes) has a way to run it."""
    spanning = [c for c in across.candidates if c.fits and c.multi_node]
    if not spanning:
        return one_node
    shapes = ", ".join(f"{c.nodes} nodes x {c.shards}x {c.gpu_type}" for c in spanning)
    return replace(
        one_node,
        reason_code=LWS_NOT_INSTALLED,
        reason=f"{one_node.model} fits no allowed GPU type on one node; a replica across nodes would fit ({shapes}, "
        f"vLLM pipeline parallel) and runs as a LeaderWorkerSet group, but the {LWS_CRD} CRD is not installed: "
        "install LeaderWorkerSet (https://lws.sigs.k8s.io) and restart the operator.",
    )


def _shards_of(dep: Mapping[str, Any]) -> int:
    for c in pod_template(dep).get("spec", {}).get("containers", []):
        limit = (c.get("resources", {}).get("limits") or {}).get("nvidia.com/gpu")
        if limit:
            return int(limit)
    return 1


def _selector(dep: Mapping[str, Any]) -> dict[str, Any]:
    return dict((((dep).get("spec") or {}).get("selector") or {}).get("matchLabels") or {})

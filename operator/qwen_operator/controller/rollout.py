"""Model-version rollouts, decided purely: which version each workload runs, and the next step.

Two writers share the work and never fight. The version watcher (``versions.py``) owns
``status.model`` and the ``ModelSynced`` condition; the reconciler owns every workload
and reads ``status.model`` through :func:`pool_version` / :func:`canary_wanted`. Every
piece of rollout state lives in ``status.model`` or in the Deployments themselves, so
an operator killed at any point resumes where it stopped:

* ``targetVersion`` changes (a tag moved, or the spec) -> with ``canaryReplicas`` > 0 and
  a version already serving, ``canary.phase = Testing``: the reconciler runs a canary
  Deployment on the target while the pools stay on ``currentVersion``.
* The canary's replicas are Ready -> the watcher smoke-tests them (it calls each canary
  pod directly, never through the router) -> ``Passed`` (the pools render the target and
  roll with surge) or ``Failed`` (the canary is deleted, the pools never moved,
  ``failedVersion`` records the digest).
* Canary traffic: the router sends ``spec.routing.canaryTrafficPercent`` of requests to a
  canary pod only once ``status.model.canary`` says its version ``Passed`` (the router
  reads that from the QwenDeployment it already watches: no pod is patched, and a
  restarted router or operator reads the same truth). So a passed canary is kept while the
  pools roll to its version (:func:`canary_kept`: with the router on and a percentage
  above 0), then deleted once every pool serves it; it is never re-created after Passed,
  and it gives its GPUs up at once when any pool waits for a GPU (a roll's surge pod
  included), so keeping it can never stall the roll it is part of.
* Pre-staging (``controller/prestage.py``): before the pools move, ``status.model.prestage``
  may hold them on ``currentVersion`` (phase ``Waiting``, ModelSynced reason ``Prestaging``)
  until the node agents report the target on the nodes serving the resource, or
  ``spec.rollout.prestageTimeoutSeconds`` passed.
* Every pool Deployment is settled on the target -> ``currentVersion := targetVersion``
  and ``ModelSynced=True``.

A failed digest is not retried until ``spec.model.version`` changes; a tag moving to a
different digest starts a new canary.

A canary that is not Ready within ``spec.rollout.canaryTimeoutSeconds`` of its
Deployment's creation (no free GPU, or a server that never passes its readiness probe)
is rolled back the same way, with the reason ``CanaryTimeout``. The clock is the canary
Deployment's ``creationTimestamp``, so a restarted operator times it out on schedule.
The reconciler is the one that sees the canary's Deployment and pods, so it records the
timeout: one write of the watcher's own subset (``status.model`` + ``ModelSynced``, under
the watcher's field manager, exactly what the watcher itself writes for a rollback), after
which both writers compute the same state from it and neither writes again.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..api.spec import QwenDeploymentSpec
from ..catalog import Catalog, resolve_gpu_name
from ..engines.runtimes import model_has_thinking
from ..planner.plan import Plan
from ..planner.pools import Pool
from ..render.lws import LWS_KIND, pod_template
from ..render.names import (
    ANNOTATION_MODEL_VERSION,
    CANARY_COMPONENT,
    COMPONENT,
    LABEL_COMPONENT,
    LABEL_DEPLOYMENT,
    LABEL_POOL,
    dns_label,
    label_value,
    pool_deployment_name,
)
from ..render.workload import RenderContext, pool_deployment
from ..router.discovery import LABEL_CANARY as LABEL_CANARY  # re-exported: one string for the router and the controller
from ..router.discovery import pod_url
from . import conditions as cond

#: The catalog GPU type a pool (or canary) Deployment runs on.
GPU_TYPE_ANNOTATION = "serving.qwenops.io/gpu-type"
#: On a pool Deployment lending replicas to a roll ("borrowed surge"): how many of its replicas are
#: borrowed. The autoscaler leaves them out of the pool's size (they go when the roll ends), so its
#: desiredPools never turn a roll's temporary replica into permanent capacity.
BORROWED_ANNOTATION = "serving.qwenops.io/borrowed-replicas"
#: ``status.model.canary.message`` of a canary rolled back by ``canaryTimeoutSeconds`` starts so.
TIMEOUT_MARK = "not Ready within canaryTimeoutSeconds"
CANARY_FAILED, CANARY_TIMEOUT = "CanaryFailed", "CanaryTimeout"
TESTING, PASSED, FAILED = "Testing", "Passed", "Failed"
#: ``status.model.prestage.phase`` holding the pools on ``currentVersion`` (controller/prestage.py).
PRESTAGE_WAITING = "Waiting"


@dataclass(frozen=True)
class Canary:
    version: str
    phase: str
    message: str = ""


@dataclass(frozen=True)
class Staging:
    """``status.model.staging[]``: eligible GPU nodes and how many hold ``version`` (controller/prestage.py)."""

    version: str
    eligible: int
    holding: int


@dataclass(frozen=True)
class Prestage:
    """``status.model.prestage``: the roll's wait for the node agents (phase Waiting holds the pools back)."""

    version: str
    phase: str  # Waiting | Staged | TimedOut
    since: str  # RFC 3339
    message: str = ""


@dataclass(frozen=True)
class ModelState:
    """``status.model`` as plain data."""

    current: str | None = None
    target: str | None = None
    resolved_from: str | None = None
    last_sync_bytes: int | None = None
    failed: str | None = None
    canary: Canary | None = None
    staging: tuple[Staging, ...] = ()
    prestage: Prestage | None = None

    @classmethod
    def from_status(cls, status: Mapping[str, Any] | None) -> ModelState:
        m = (status or {}).get("model") or {}
        c = m.get("canary") or None
        p = m.get("prestage") or None
        return cls(
            current=m.get("currentVersion"),
            target=m.get("targetVersion"),
            resolved_from=m.get("resolvedFrom"),
            last_sync_bytes=m.get("lastSyncBytes"),
            failed=m.get("failedVersion"),
            canary=Canary(c["version"], c["phase"], c.get("message") or "") if c else None,
            staging=tuple(
                Staging(s["version"], int(s.get("eligibleNodes") or 0), int(s.get("nodesWithVersion") or 0))
                for s in m.get("staging") or []
            ),
            prestage=Prestage(p["version"], p["phase"], p["since"], p.get("message") or "") if p else None,
        )

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "currentVersion": self.current,
            "targetVersion": self.target,
            "resolvedFrom": self.resolved_from,
            "lastSyncBytes": self.last_sync_bytes,
            "failedVersion": self.failed,
        }
        if self.canary is not None:
            out["canary"] = {"version": self.canary.version, "phase": self.canary.phase}
            if self.canary.message:
                out["canary"]["message"] = self.canary.message[:1024]
        if self.staging:
            out["staging"] = [
                {"version": s.version, "eligibleNodes": s.eligible, "nodesWithVersion": s.holding} for s in self.staging
            ]
        if self.prestage is not None:
            p = self.prestage
            out["prestage"] = {"version": p.version, "phase": p.phase, "since": p.since}
            if p.message:
                out["prestage"]["message"] = p.message[:1024]
        return {k: v for k, v in out.items() if v is not None}

    @property
    def rolled_back(self) -> bool:
        return self.target is not None and self.failed == self.target

    @property
    def testing(self) -> bool:
        c = self.canary
        return c is not None and c.version == self.target and c.phase == TESTING and not self.rolled_back

    @property
    def prestaging(self) -> bool:
        """The pools wait for the node agents to pre-stage the target (controller/prestage.py)."""
        p = self.prestage
        return p is not None and p.version == self.target and p.phase == PRESTAGE_WAITING


# -- what the reconciler renders ---------------------------------------------------------
def pool_version(m: ModelState) -> str | None:
    """The version the stable pools render (None: not resolved yet, render spec.model.version)."""
    if m.target is None:
        return m.current
    if m.current is None or m.target == m.current:
        return m.target
    if m.rolled_back or m.testing or m.prestaging:
        return m.current
    return m.target


def canary_wanted(m: ModelState, canary_replicas: int) -> str | None:
    """The version a canary Deployment should run now, or None (no canary Deployment)."""
    if canary_replicas <= 0 or m.current is None or not m.testing:
        return None
    return m.target


def canary_kept(
    m: ModelState, spec: QwenDeploymentSpec, live: Iterable[Mapping[str, Any]], gpus_wanted: bool
) -> str | None:
    """The version of a canary that passed its smoke test and keeps serving while the pools roll, or None.

    After ``Passed`` the canary is the only place the router's canary rule can send its share
    (``spec.routing.canaryTrafficPercent``) of the new version's traffic, so the live canary
    Deployment is kept (never created: only one already running on the passed version) until
    every pool serves the version (``currentVersion == targetVersion``). Not kept when the
    share is 0 or the router is off (nothing would reach it through the canary rule), nor
    while a pool waits for a GPU (``gpus_wanted``: :func:`pool_pods_unschedulable`, e.g. the
    roll's surge pod, or replicas the planner could not place): the canary's GPUs then go to
    the pools at once, and once deleted it stays deleted. (Free GPUs alone would be the wrong
    signal: a surge pod that took the last free GPU leaves none free, yet the roll goes on.)
    """
    c = m.canary
    if c is None or c.phase != PASSED or c.version != m.target or m.current in (None, m.target) or m.rolled_back:
        return None
    if spec.rollout.canary_replicas <= 0 or not spec.routing.enabled or spec.routing.canary_traffic_percent <= 0:
        return None
    if gpus_wanted:
        return None
    running = any(
        is_canary(d) and template_version(d) == c.version and not (d.get("metadata") or {}).get("deletionTimestamp")
        for d in live
    )
    return c.version if running else None


def pool_pods_unschedulable(name: str, namespace: str, pods: Iterable[Mapping[str, Any]]) -> bool:
    """A server pod of ``name``'s pools (not its canary) the scheduler could not place
    (``PodScheduled=False``, reason ``Unschedulable``): a pool waits for a GPU."""
    for pod in pods:
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        if (
            meta.get("namespace") != namespace
            or labels.get(LABEL_DEPLOYMENT) != label_value(name)
            or labels.get(LABEL_COMPONENT) != COMPONENT
            or labels.get(LABEL_CANARY) == "true"
            or meta.get("deletionTimestamp")
            or (pod.get("spec") or {}).get("nodeName")
        ):
            continue
        for c in (pod.get("status") or {}).get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
                return True
    return False


def is_canary(dep: Mapping[str, Any]) -> bool:
    return (dep.get("metadata", {}).get("labels") or {}).get(LABEL_CANARY) == "true"


def canary_name(name: str, gpu_type: str) -> str:
    """``<qwd>-<gpu>-canary``, e.g. ``chat-a10g-canary``."""
    return dns_label(f"{pool_deployment_name(name, gpu_type)}-canary")


def as_canary(pool_manifest: dict[str, Any], name: str, gpu_type: str, replicas: int) -> dict[str, Any]:
    """Turn a rendered pool Deployment into its canary twin.

    The pool label gets a ``-canary`` suffix so neither Deployment's (immutable) selector
    matches the other's pods, and the component label is ``canary``, not ``server``: the client
    Service (with ``spec.routing.enabled: false``), ``<name>-servers``, the PDB, an
    InferencePool and the scale subresource's selector all select ``server`` pods, so none of
    them sends traffic to (or counts) a canary pod by accident. The router watches both
    components and routes to a canary pod only by its canary rule, once the version passed the
    smoke test (``router/discovery.py``). Without the router a canary serves its smoke test only.
    """
    dep = pool_manifest
    pool = f"{dep['metadata']['labels'][LABEL_POOL]}-canary"
    extra = {LABEL_POOL: pool, LABEL_CANARY: "true", LABEL_COMPONENT: CANARY_COMPONENT}
    dep["metadata"]["name"] = canary_name(name, gpu_type)
    dep["metadata"]["labels"].update(extra)
    dep["spec"]["replicas"] = replicas
    dep["spec"]["selector"]["matchLabels"].update(extra)
    dep["spec"]["template"]["metadata"]["labels"].update(extra)
    return dep


def canary_gpu_type(
    the_plan: Plan, replicas: int, free_replicas: Callable[[str, int], int], live: str | None = None
) -> Pool | None:
    """Where the canary runs: the cheapest planned pool type with room for ``replicas``.

    A full pool type (no free GPU, so the canary would stay Pending) gives way to the
    cheapest other allowed GPU type the model fits on that has room, as a borrowed surge
    does. With room nowhere, the cheapest planned type (the canary waits for a GPU, and
    ``canaryTimeoutSeconds`` bounds the wait). ``live`` (the GPU type a canary of this
    version already runs on) is kept: the canary's own pods use the room it was placed by.
    """
    # a canary is one Deployment: never on a pool whose replica spans nodes (a LeaderWorkerSet group)
    planned = sorted((p for p in the_plan.pools if not p.multi_node), key=lambda p: p.price_per_replica_hour)
    others = [
        Pool(c.gpu_type, c.shards, 0, c.price_per_hour, c.throughput)
        for c in sorted(the_plan.candidates, key=lambda c: c.price_per_hour)
        if c.fits and c.shards > 0 and not c.multi_node and all(p.gpu_type != c.gpu_type for p in planned)
    ]
    options = [*planned, *others]
    if not options:
        return None
    chosen = next((p for p in options if p.gpu_type == live), None)
    if chosen is None:
        chosen = next((p for p in options if free_replicas(p.gpu_type, p.shards) >= replicas), options[0])
    return replace(chosen, replicas=replicas)


def canary_manifest(
    spec: QwenDeploymentSpec,
    the_plan: Plan,
    ctx: RenderContext,
    catalog: Catalog,
    version: str,
    replicas: int,
    free_replicas: Callable[[str, int], int] | None = None,
    live: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any] | None:
    """The canary Deployment: ``replicas`` replicas on ``version``, placed by :func:`canary_gpu_type`."""
    running = next((canary_type(d) for d in live if is_canary(d) and template_version(d) == version), None)
    pool = canary_gpu_type(the_plan, replicas, free_replicas or (lambda _t, _s: replicas), running)
    if pool is None:
        return None
    gpu = catalog.gpus[resolve_gpu_name(pool.gpu_type, catalog.gpus)]
    dep = pool_deployment(spec, replace(ctx, model_version=version), pool, gpu, model_has_thinking(spec, catalog))
    dep = as_canary(dep, ctx.name, pool.gpu_type, replicas)
    dep["metadata"].setdefault("annotations", {})[GPU_TYPE_ANNOTATION] = pool.gpu_type
    return dep


def canary_type(dep: Mapping[str, Any]) -> str | None:
    return (dep.get("metadata", {}).get("annotations") or {}).get(GPU_TYPE_ANNOTATION)


# -- the canary's deadline (the reconciler decides it: it sees the canary's Deployment and pods) --
@dataclass(frozen=True)
class CanaryDeadline:
    version: str
    remaining: float  # seconds left; <= 0: timed out
    message: str  # why the canary is not Ready (Pending for a GPU, or not passing readiness)

    @property
    def expired(self) -> bool:
        return self.remaining <= 0


def parse_time(value: Any) -> dt.datetime | None:
    if not value:
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    try:
        parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def canary_deadline(
    m: ModelState,
    name: str,
    namespace: str,
    canary_replicas: int,
    timeout_seconds: float,
    deployments: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    now: dt.datetime,
) -> CanaryDeadline | None:
    """The running canary's deadline, or None (no canary under test, or all its replicas Ready).

    Counted from the canary Deployment's ``creationTimestamp`` (cluster state: survives an
    operator restart). A canary whose replicas are all Ready is in the watcher's hands
    (smoke test), never timed out. ``pods`` are scheduled pods (the controller's GPU pod
    cache): a canary replica missing from them is Pending for a GPU.
    """
    version = canary_wanted(m, canary_replicas)
    if version is None:
        return None
    dep = next((d for d in deployments if is_canary(d) and template_version(d) == version), None)
    created = parse_time((dep or {}).get("metadata", {}).get("creationTimestamp"))
    if dep is None or created is None:
        return None
    mine = [
        p
        for p in pods
        if p.get("metadata", {}).get("namespace") == namespace
        and (p.get("metadata", {}).get("labels") or {}).get(LABEL_DEPLOYMENT) == label_value(name)
        and (p.get("metadata", {}).get("labels") or {}).get(LABEL_CANARY) == "true"
        and (p.get("metadata", {}).get("annotations") or {}).get(ANNOTATION_MODEL_VERSION) == version
        and not p.get("metadata", {}).get("deletionTimestamp")
    ]
    ready = sum(1 for p in mine if pod_ready(p))
    if ready >= canary_replicas:
        return None
    scheduled = sum(1 for p in mine if p.get("spec", {}).get("nodeName"))
    gpu = canary_type(dep) or "its GPU type"
    if scheduled < canary_replicas:
        why = (
            f"{canary_replicas - scheduled} of {canary_replicas} canary pod(s) Pending: no node had a free {gpu} GPU "
            "(and no other allowed GPU type had room when the canary was placed)"
        )
    else:
        why = (
            f"{canary_replicas - ready} of {canary_replicas} canary pod(s) scheduled on {gpu} but never Ready "
            "(the server did not pass its readiness probe: see the canary pod's logs and events)"
        )
    elapsed = (now - created).total_seconds()
    return CanaryDeadline(version, timeout_seconds - elapsed, why)


def timed_out(m: ModelState, deadline: CanaryDeadline, timeout_seconds: float) -> ModelState:
    """``status.model`` once the canary of ``deadline.version`` timed out: rolled back like a failed one."""
    message = f"{TIMEOUT_MARK}={int(timeout_seconds)}: {deadline.message}"
    return replace(m, canary=Canary(deadline.version, FAILED, message), failed=deadline.version)


def watcher_status(
    status: Mapping[str, Any] | None, m: ModelState, generation: int, now: str | None = None
) -> dict[str, Any]:
    """The version watcher's status subset (``model`` + ``ModelSynced``) for a rolled-back ``m``.

    Byte for byte what the watcher writes for the same state, so after this one write
    it computes no change and writes nothing.
    """
    live = [c for c in (status or {}).get("conditions") or [] if c.get("type") == cond.MODEL_SYNCED]
    merged, _ = cond.merge(live, [_rolled_back(m)], generation, now=now)
    return {"model": m.to_status(), "conditions": merged}


# -- observations the watcher decides on -------------------------------------------------
def template_version(dep: Mapping[str, Any]) -> str | None:
    """The model version of a pool object's (server) pod template: a Deployment's, a LeaderWorkerSet's leader's."""
    tmpl = pod_template(dep).get("metadata") or {}
    return (tmpl.get("annotations") or {}).get(ANNOTATION_MODEL_VERSION)


def settled(dep: Mapping[str, Any]) -> bool:
    """The Deployment controller acted on the latest spec and every replica is updated and Ready."""
    st, want = dep.get("status", {}), int(dep.get("spec", {}).get("replicas") or 0)
    gen, observed = dep.get("metadata", {}).get("generation"), st.get("observedGeneration")
    return (
        (gen is None or observed == gen)
        and int(st.get("updatedReplicas") or 0) == want
        and int(st.get("readyReplicas") or 0) == want
        and int(st.get("replicas") or 0) == want
    )


def no_canary_reason(deployments: Iterable[Mapping[str, Any]]) -> str | None:
    """Why no canary can run: every pool's replica spans nodes (a LeaderWorkerSet group; a canary is one
    Deployment of one-node replicas). None when some pool is a Deployment, or there is no pool yet."""
    pools = [d for d in deployments if not is_canary(d)]
    if pools and all(d.get("kind") == LWS_KIND for d in pools):
        return "no canary for replicas spanning nodes (LeaderWorkerSet pools roll group by group)"
    return None


def pools_on(deployments: Iterable[Mapping[str, Any]], version: str, desired: int = 1) -> bool:
    """Every pool Deployment's template is on ``version`` and all its replicas are updated and Ready.

    With replicas desired but no pool yet (a new resource), nothing serves the version: False.
    """
    pools = [d for d in deployments if not is_canary(d)]
    if desired > 0 and not pools:
        return False
    return all(template_version(d) == version and settled(d) for d in pools)


def pod_ready(pod: Mapping[str, Any]) -> bool:
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return False
    conds = pod.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


def canary_urls(
    name: str,
    namespace: str,
    version: str,
    replicas: int,
    pods: Sequence[Mapping[str, Any]],
    dial: str = "pod-ip",
) -> list[str] | None:
    """URLs of the Ready canary pods on ``version``; None until ``replicas`` of them are Ready and reachable.
    ``dial``: how a pod is reached, as the router dials it (:func:`..router.discovery.pod_url`)."""
    urls = []
    for pod in pods:
        meta = pod.get("metadata", {})
        labels = meta.get("labels") or {}
        if (
            meta.get("namespace") == namespace
            and labels.get(LABEL_DEPLOYMENT) == label_value(name)
            and labels.get(LABEL_CANARY) == "true"
            and (meta.get("annotations") or {}).get(ANNOTATION_MODEL_VERSION) == version
            and pod_ready(pod)
        ):
            url = pod_url(pod, dial)
            if url is not None:
                urls.append(url)
    return sorted(urls) if replicas > 0 and len(urls) >= replicas else None


# -- the watcher's decision --------------------------------------------------------------
@dataclass(frozen=True)
class Resolution:
    """What ``spec.model.version`` resolved to: a digest, or why not (reason + message)."""

    digest: str | None = None
    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class SyncInput:
    spec_version: str
    canary_replicas: int
    model: ModelState
    resolution: Resolution
    sync_bytes: int | None  # bytes of target chunks absent from current (computed when the digest is new)
    pools_settled_on_target: bool
    canary_urls: list[str] | None  # Ready canary endpoints on the target, None until all are Ready
    smoke: tuple[bool, str] | None = None  # the smoke test's outcome once run
    # why no canary can run although canaryReplicas > 0 (every pool's replica spans nodes): promote without one
    no_canary: str | None = None


@dataclass
class SyncStep:
    model: ModelState
    condition: cond.Condition
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    smoke_urls: list[str] | None = None  # run the smoke test on these, then decide again


def short(digest: str | None) -> str:
    if not digest:
        return "-"
    return digest[:19] if digest.startswith("sha256:") else digest


def decide(inp: SyncInput) -> SyncStep:
    """One step of the version watcher, from observed state to the new ``status.model``."""
    m, events = inp.model, []
    res = inp.resolution
    serving = f"Pools keep serving {short(pool_version(m))}; no workload was changed."
    if res.digest is None:
        return SyncStep(m, cond.Condition(cond.MODEL_SYNCED, False, res.reason, f"{res.message} {serving}"))
    if inp.spec_version != m.resolved_from:
        m = replace(m, resolved_from=inp.spec_version, failed=None)  # a new request: forget failures
    if res.digest != m.target:
        canary = None
        if (
            inp.canary_replicas > 0
            and m.current is not None
            and res.digest not in (m.current, m.failed)
            and not inp.no_canary
        ):
            canary = Canary(res.digest, TESTING)
        moved = "" if inp.sync_bytes is None else f"; {inp.sync_bytes} byte(s) of chunks to move per node"
        events.append(
            (
                "Normal",
                "TargetVersionChanged",
                f"spec.model.version {inp.spec_version!r} resolves to {short(res.digest)} "
                f"(was {short(m.target)}, serving {short(m.current)}){moved}.",
            )
        )
        if canary is not None:
            events.append(
                (
                    "Normal",
                    "CanaryStarted",
                    f"Starting {inp.canary_replicas} canary replica(s) on {short(res.digest)}; "
                    f"pools stay on {short(m.current)} until the canary passes its smoke test.",
                )
            )
        elif inp.no_canary and inp.canary_replicas > 0 and m.current is not None and res.digest != m.current:
            events.append(("Normal", "CanarySkipped", f"{inp.no_canary}: rolling to {short(res.digest)}."))
        elif res.digest == m.failed:
            events.append(
                ("Warning", "CanaryNotRetried", f"{short(res.digest)} failed its canary before; not retried.")
            )
        m = replace(m, target=res.digest, last_sync_bytes=inp.sync_bytes, canary=canary or m.canary)
    target = res.digest
    if m.current == target:
        return SyncStep(m, _synced(m), events)
    if m.rolled_back:
        return SyncStep(m, _rolled_back(m), events)
    if m.testing:
        if inp.canary_replicas <= 0 or inp.no_canary:
            why = inp.no_canary or "canaryReplicas set to 0"
            m = replace(m, canary=Canary(target, PASSED, f"{why}: promoted without a smoke test"))
            said = inp.no_canary or "spec.rollout.canaryReplicas is 0"
            events.append(("Normal", "CanarySkipped", f"{said}: rolling to {short(target)}."))
        elif inp.canary_urls is None:
            return SyncStep(
                m,
                cond.Condition(
                    cond.MODEL_SYNCED,
                    False,
                    "CanaryStarting",
                    f"Waiting for {inp.canary_replicas} canary replica(s) on {short(target)} to become Ready; "
                    f"pools serve {short(m.current)}.",
                ),
                events,
            )
        elif inp.smoke is None:
            testing = cond.Condition(
                cond.MODEL_SYNCED, False, "CanaryTesting", f"Smoke-testing the canary of {short(target)}."
            )
            return SyncStep(m, testing, events, smoke_urls=inp.canary_urls)
        elif inp.smoke[0]:
            m = replace(m, canary=Canary(target, PASSED, inp.smoke[1]))
            events.append(("Normal", "CanaryPassed", f"Canary of {short(target)} passed ({inp.smoke[1]}); promoting."))
        else:
            m = replace(m, canary=Canary(target, FAILED, inp.smoke[1]), failed=target)
            events.append(
                (
                    "Warning",
                    "CanaryFailed",
                    f"Canary of {short(target)} failed: {inp.smoke[1]}. Rolled back: the canary is removed "
                    f"and pools stay on {short(m.current)}.",
                )
            )
            return SyncStep(m, _rolled_back(m), events)
    if inp.pools_settled_on_target:
        m = replace(m, current=target)
        events.append(("Normal", "ModelSynced", f"Every pool serves {short(target)}."))
        return SyncStep(m, _synced(m), events)
    return SyncStep(
        m,
        cond.Condition(
            cond.MODEL_SYNCED,
            False,
            "RollingOut",
            f"Rolling pools from {short(m.current)} to {short(target)} with surge and no unavailability.",
        ),
        events,
    )


def _rolled_back(m: ModelState) -> cond.Condition:
    msg = (m.canary.message if m.canary and m.canary.version == m.target else "") or "the smoke test failed"
    again = "Publish a fixed version (move the tag) or change spec.model.version to try again."
    if msg.startswith(TIMEOUT_MARK):
        return cond.Condition(
            cond.MODEL_SYNCED,
            False,
            CANARY_TIMEOUT,
            f"The canary of {short(m.target)} was rolled back: {msg}. Pools stay on {short(m.current)}. "
            f"Free or add GPUs (or fix the server) and move the tag, or change spec.model.version, to try again.",
        )
    return cond.Condition(
        cond.MODEL_SYNCED,
        False,
        CANARY_FAILED,
        f"The canary of {short(m.target)} failed ({msg}); pools stay on {short(m.current)}. {again}",
    )


def degraded_reason(m: ModelState) -> cond.Condition | None:
    """The reconciler's ``Degraded`` condition while a failed canary holds the pools back."""
    if not m.rolled_back:
        return None
    c = _rolled_back(m)
    return cond.Condition(cond.DEGRADED, True, c.reason, c.message)


def _synced(m: ModelState) -> cond.Condition:
    return cond.Condition(cond.MODEL_SYNCED, True, "Synced", f"Every pool serves {short(m.current)}.")


def not_managed(registry: str) -> cond.Condition:
    return cond.Condition(
        cond.MODEL_SYNCED,
        None,
        "RegistryNotManaged",
        f"spec.model.registry {registry} is not an s3:// or oci:// layer-diff registry: the operator does not track "
        "its versions (each pod pulls spec.model.version when it starts).",
    )

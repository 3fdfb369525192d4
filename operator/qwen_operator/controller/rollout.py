"""Model-version rollouts, decided purely: which version each workload runs, and the next step.

Two writers share the work and never fight. The version watcher (``versions.py``) owns
``status.model`` and the ``ModelSynced`` condition; the reconciler owns every workload
and reads ``status.model`` through :func:`pool_version` / :func:`canary_wanted`. Every
piece of rollout state lives in ``status.model`` or in the Deployments themselves, so
an operator killed at any point resumes where it stopped:

* ``targetVersion`` changes (a tag moved, or the spec) -> with ``canaryReplicas`` > 0 and
  a version already serving, ``canary.phase = Testing``: the reconciler runs a canary
  Deployment on the target while the pools stay on ``currentVersion``.
* The canary's replicas are Ready -> the watcher smoke-tests them -> ``Passed`` (the
  pools render the target and roll with surge, the canary is deleted) or ``Failed``
  (the canary is deleted, the pools never moved, ``failedVersion`` records the digest).
* Every pool Deployment is settled on the target -> ``currentVersion := targetVersion``
  and ``ModelSynced=True``.

A failed digest is not retried until ``spec.model.version`` changes; a tag moving to a
different digest starts a new canary.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..api.spec import QwenDeploymentSpec
from ..catalog import Catalog, resolve_gpu_name
from ..planner.plan import Plan
from ..planner.pools import Pool
from ..render.names import (
    ANNOTATION_MODEL_VERSION,
    LABEL_DEPLOYMENT,
    LABEL_POOL,
    dns_label,
    label_value,
    pool_deployment_name,
)
from ..render.workload import RenderContext, pool_deployment
from . import conditions as cond

LABEL_CANARY = "serving.qwenops.io/canary"
#: Sandbox only: the URL of the simulated server standing in for a pod (pods run no containers there).
ENDPOINT_ANNOTATION = "sandbox.qwenops.io/endpoint"
TESTING, PASSED, FAILED = "Testing", "Passed", "Failed"


@dataclass(frozen=True)
class Canary:
    version: str
    phase: str
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

    @classmethod
    def from_status(cls, status: Mapping[str, Any] | None) -> ModelState:
        m = (status or {}).get("model") or {}
        c = m.get("canary") or None
        return cls(
            current=m.get("currentVersion"),
            target=m.get("targetVersion"),
            resolved_from=m.get("resolvedFrom"),
            last_sync_bytes=m.get("lastSyncBytes"),
            failed=m.get("failedVersion"),
            canary=Canary(c["version"], c["phase"], c.get("message") or "") if c else None,
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
        return {k: v for k, v in out.items() if v is not None}

    @property
    def rolled_back(self) -> bool:
        return self.target is not None and self.failed == self.target

    @property
    def testing(self) -> bool:
        c = self.canary
        return c is not None and c.version == self.target and c.phase == TESTING and not self.rolled_back


# -- what the reconciler renders ---------------------------------------------------------
def pool_version(m: ModelState) -> str | None:
    """The version the stable pools render (None: not resolved yet, render spec.model.version)."""
    if m.target is None:
        return m.current
    if m.current is None or m.target == m.current:
        return m.target
    if m.rolled_back or m.testing:
        return m.current
    return m.target


def canary_wanted(m: ModelState, canary_replicas: int) -> str | None:
    """The version a canary Deployment should run now, or None (no canary Deployment)."""
    if canary_replicas <= 0 or m.current is None or not m.testing:
        return None
    return m.target


def is_canary(dep: Mapping[str, Any]) -> bool:
    return (dep.get("metadata", {}).get("labels") or {}).get(LABEL_CANARY) == "true"


def canary_name(name: str, gpu_type: str) -> str:
    """``<qwd>-<gpu>-canary``, e.g. ``chat-a10g-canary``."""
    return dns_label(f"{pool_deployment_name(name, gpu_type)}-canary")


def as_canary(pool_manifest: dict[str, Any], name: str, gpu_type: str, replicas: int) -> dict[str, Any]:
    """Turn a rendered pool Deployment into its canary twin.

    The pool label gets a ``-canary`` suffix so neither Deployment's (immutable) selector
    matches the other's pods; the Service selects on the resource and component labels
    only, so canary pods take traffic like any replica.
    """
    dep = pool_manifest
    pool = f"{dep['metadata']['labels'][LABEL_POOL]}-canary"
    extra = {LABEL_POOL: pool, LABEL_CANARY: "true"}
    dep["metadata"]["name"] = canary_name(name, gpu_type)
    dep["metadata"]["labels"].update(extra)
    dep["spec"]["replicas"] = replicas
    dep["spec"]["selector"]["matchLabels"].update(extra)
    dep["spec"]["template"]["metadata"]["labels"].update(extra)
    return dep


def canary_manifest(
    spec: QwenDeploymentSpec, the_plan: Plan, ctx: RenderContext, catalog: Catalog, version: str, replicas: int
) -> dict[str, Any] | None:
    """The canary Deployment: ``replicas`` replicas of the cheapest planned pool type on ``version``."""
    pools = sorted(the_plan.pools, key=lambda p: p.price_per_replica_hour) or [
        Pool(c.gpu_type, c.shards, 0, c.price_per_hour)
        for c in sorted(the_plan.candidates, key=lambda c: c.price_per_hour)
        if c.fits
    ]
    if not pools:
        return None
    pool = replace(pools[0], replicas=replicas)
    gpu = catalog.gpus[resolve_gpu_name(pool.gpu_type, catalog.gpus)]
    dep = pool_deployment(spec, replace(ctx, model_version=version), pool, gpu)
    return as_canary(dep, ctx.name, pool.gpu_type, replicas)


# -- observations the watcher decides on -------------------------------------------------
def template_version(dep: Mapping[str, Any]) -> str | None:
    tmpl = dep.get("spec", {}).get("template", {}).get("metadata", {})
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


def pod_url(pod: Mapping[str, Any]) -> str | None:
    """Where to reach a pod's server: the sandbox endpoint annotation, else ``http://<podIP>:<http port>``."""
    override = (pod.get("metadata", {}).get("annotations") or {}).get(ENDPOINT_ANNOTATION)
    if override:
        return str(override).rstrip("/")
    ip = pod.get("status", {}).get("podIP")
    if not ip:
        return None
    for c in pod.get("spec", {}).get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("name") == "http":
                host = f"[{ip}]" if ":" in ip else ip
                return f"http://{host}:{p['containerPort']}"
    return None


def canary_urls(
    name: str, namespace: str, version: str, replicas: int, pods: Sequence[Mapping[str, Any]]
) -> list[str] | None:
    """URLs of the Ready canary pods on ``version``; None until ``replicas`` of them are Ready and reachable."""
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
            url = pod_url(pod)
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
        if inp.canary_replicas > 0 and m.current is not None and res.digest not in (m.current, m.failed):
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
        if inp.canary_replicas <= 0:
            m = replace(m, canary=Canary(target, PASSED, "canaryReplicas set to 0: promoted without a smoke test"))
            events.append(("Normal", "CanarySkipped", f"spec.rollout.canaryReplicas is 0: rolling to {short(target)}."))
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
    return cond.Condition(
        cond.MODEL_SYNCED,
        False,
        "CanaryFailed",
        f"The canary of {short(m.target)} failed ({msg}); pools stay on {short(m.current)}. "
        "Publish a fixed version (move the tag) or change spec.model.version to try again.",
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
        f"spec.model.registry {registry} is not an s3:// layer-diff registry: the operator does not track "
        "its versions (each pod pulls spec.model.version when it starts).",
    )

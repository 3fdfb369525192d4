"""The version watcher: ``spec.model.version`` -> a manifest digest -> ``status.model``, ``ModelSynced``.

One asyncio task per QwenDeployment with an ``s3://`` or ``oci://`` registry. Every
``modelSync.intervalSeconds`` (operator config, default 30) it resolves
``spec.model.version`` in this order:

1. a ``sha256:<64 hex>`` value is a manifest digest, used as is (checked to exist);
2. otherwise a **tag** of that name (``tags/<name>``, movable: ``stable``, ``canary``);
3. otherwise an immutable **version name** (``versions/<name>``).

Registry calls are blocking boto3 and run in the bounded ``executors.REGISTRY`` pool, smoke
tests in ``executors.SMOKE`` and Kubernetes writes in ``executors.KUBE``, so a hung S3 endpoint
never delays a Deployment apply. A resolution is cached per ``(registry, version)`` for the
interval, and a miss costs one bounded LIST of names for its message, never a read per tag.
The endpoint is the operator config's ``registry.endpointURL``, else the operator's
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (S3-compatible stores), else AWS S3; the
region is ``registry.region``, else boto3's own chain (``AWS_DEFAULT_REGION``, profile).
Credentials are always the **operator's** standard AWS chain (``AWS_ACCESS_KEY_ID``/
``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, a web identity): the
operator reads no Secrets, so ``spec.model.credentialsSecret`` and
``registry.credentialsSecret`` are for the pods' ``model-pull`` init containers only.

Between resolutions it re-evaluates on every change of the resource's Deployments or
pods (the controller pokes it), so a canary is tested and a finished roll is recorded
within moments. The decisions are :func:`rollout.decide` (pure); this module does the
I/O: resolve, diff manifests, smoke-test canaries in their engine's own API
(:meth:`Runtime.smoke_request`), and server-side apply ``status.model`` plus
``ModelSynced`` under its own field manager. ``status.model.staging`` (eligible nodes holding the
current and target versions, from the node agents' Node annotations) and ``status.model.prestage``
(the roll's wait for them, :mod:`.prestage`) are part of that subset: one writer. It writes only
when that subset changes, and posts Events only with a write, so an idle fleet costs one GET per
interval.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import math
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, cast

from pydantic import ValidationError

from ..api.spec import QwenDeploymentSpec
from ..catalog import DEFAULT_GPUS, GPUType
from ..engines.runtimes import SmokeRequest, runtime_for
from ..modelsync.manifest import Manifest, diff
from ..modelsync.registry import NotFoundError, Registry, RegistryError
from ..nodeagent.plan import Resource
from . import conditions as cond
from .executors import KUBE, REGISTRY, SMOKE, run
from .kube import StatusConflictError
from .prestage import eligible_nodes, gate, staging
from .reconcile import Observed
from .rollout import ModelState, Resolution, SyncInput, canary_urls, decide, no_canary_reason, not_managed, pools_on

log = logging.getLogger("qwen_operator.versions")
MANAGER = "qwen-operator-modelsync"
DEFAULT_INTERVAL = 30.0
WRITE_TTL = 30.0  # trust our own last write over a lagging watch cache for this long
SMOKE_PROMPT = "Reply with one word: ready?"

Key = tuple[str, str]


class Smoke(Protocol):
    """The smoke test's shape (tests pass their own): the canary URLs and the engine's request."""

    def __call__(self, urls: list[str], *, request: SmokeRequest) -> tuple[bool, str]: ...


def resolve(reg: Registry, version: str) -> str:
    """Manifest digest of ``version``: a digest as is, else a tag, else a version name."""
    if version.startswith("sha256:"):
        return reg.resolve(version=version)
    try:
        return reg.resolve(tag=version)
    except NotFoundError:
        pass
    try:
        return reg.resolve(version=version)
    except NotFoundError as exc:
        raise NotFoundError(
            f"spec.model.version {version!r} is neither a tag nor a version in {reg.url}: "
            f"push it (qwenctl model push --version/--tag) or fix the spec. ({exc})"
        ) from exc


def classify(exc: RegistryError) -> Resolution:
    """A registry failure as a ModelSynced reason and message."""
    text = str(exc)
    if isinstance(exc, NotFoundError):
        reason = "VersionNotFound"
    elif "access denied" in text or "no AWS credentials" in text:
        reason = "RegistryAccessDenied"
    elif "is invalid" in text or "not a valid digest" in text:
        reason = "InvalidVersion"
    else:
        reason = "RegistryUnreachable"
    return Resolution(None, reason, text.rstrip(".") + ".")


def smoke_test(
    urls: list[str], timeout: float = 10.0, attempts: int = 2, pause: float = 1.0, *, request: SmokeRequest
) -> tuple[bool, str]:
    """POST the engine's smoke request to each URL: HTTP 200 with generated text passes.

    ``request`` is :meth:`Runtime.smoke_request` of the resource's engine (TGI's
    ``/generate``, vLLM's ``/v1/completions`` with the served model name): a request in
    another engine's dialect would fail a healthy canary (vLLM has no ``/generate``) or
    pass a wrong one. Plain HTTP, so the message carries the engine's own status and body.
    """
    data = json.dumps(dict(request.payload)).encode()
    what = f"POST {request.path}"
    for url in urls:
        error = ""
        for attempt in range(attempts):
            if attempt:
                time.sleep(pause)
            req = urllib.request.Request(
                url.rstrip("/") + request.path, data=data, headers={"Content-Type": "application/json"}, method="POST"
            )
            try:
                with urllib.request.urlopen(req, timeout=timeout) as resp:
                    text = request.reply_text(json.loads(resp.read()))
            except urllib.error.HTTPError as exc:
                try:
                    detail = exc.read()[:300].decode(errors="replace").strip()
                except OSError:
                    detail = ""
                error = f"HTTP {exc.code} {exc.reason}" + (f": {detail}" if detail else "")
                continue
            except Exception as exc:  # noqa: BLE001 - any failure is the canary's failure, reported verbatim
                cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                error = f"{type(cause).__name__}: {cause}".strip()
                continue
            error = "" if text.strip() else "HTTP 200 but no generated text"
            if not error:
                break
        if error:
            return False, f"{url} failed the smoke test ({what}): {error}"[:900]
    return True, f"{len(urls)} canary replica(s) answered {what}"


#: Registries whose versions the watcher tracks (content-addressed layer-diff layout).
TRACKED_SCHEMES = ("s3://", "oci://")


def make_registry(url: str, endpoint_url: str | None = None, region: str | None = None) -> Registry:
    """A registry client with short timeouts: a dead endpoint must not stall the watcher for minutes.

    ``s3://``: ``endpoint_url`` / ``region`` (operator config ``registry.*``) win over the ambient AWS
    environment, which is used when they are empty. ``oci://``: credentials and TLS from the
    operator's own ``OCI_*`` environment (``modelsync.oci``), 5 s to connect, 15 s to read.
    """
    if url.startswith("oci://"):
        from ..modelsync.oci import OCIRegistry

        return cast(Registry, OCIRegistry.from_env(url, timeout=(5.0, 15.0)))
    import boto3
    from botocore.config import Config

    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    config = Config(
        connect_timeout=5,
        read_timeout=15,
        retries={"max_attempts": 2, "mode": "standard"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"} if endpoint else {},
    )
    session = boto3.session.Session(region_name=region or None)
    return Registry(url, client=session.client("s3", endpoint_url=endpoint, config=config))


@dataclass
class WatchState:
    ident: tuple[str, str] | None = None  # (registry, spec.model.version) last resolved
    resolved_at: float = -math.inf
    resolution: Resolution | None = None
    written: dict[str, Any] | None = None  # our last status write
    written_at: float = -math.inf
    written_rv: str | None = None  # the resourceVersion that write was decided from


@dataclass
class VersionWatcher:
    kube: Any
    observed: Callable[[Key], Observed | None]
    interval: float = DEFAULT_INTERVAL
    smoke: Smoke = smoke_test
    registry_factory: Callable[[str], Registry] = make_registry
    tasks: dict[Key, asyncio.Task[None]] = field(default_factory=dict)
    wakeups: dict[Key, asyncio.Event] = field(default_factory=dict)
    states: dict[Key, WatchState] = field(default_factory=dict)
    registries: dict[str, Registry] = field(default_factory=dict)
    manifests: dict[str, Manifest] = field(default_factory=dict)
    #: ``(registry, spec.model.version)`` -> (monotonic time resolved, result), shared by every
    #: resource naming the same ref: N resources on ``stable`` cost one resolution per interval
    resolutions: dict[tuple[str, str], tuple[float, Resolution]] = field(default_factory=dict)
    ticks: int = 0
    #: the catalog's GPU types: a node's nvidia.com/gpu.product label -> its type (pre-staging's eligible nodes)
    gpus: Mapping[str, GPUType] = field(default_factory=lambda: dict(DEFAULT_GPUS))
    #: how the canary smoke test reaches a pod: ``pod-ip``, or ``annotation`` (the sandbox's one seam,
    #: ``$QWEN_ROUTER_DIAL``, the same switch and annotation the router dials by)
    dial: str = "pod-ip"

    def sync(self, key: Key) -> None:
        if key not in self.tasks:
            self.wakeups[key] = asyncio.Event()
            self.tasks[key] = asyncio.create_task(self._loop(key), name=f"versions {key[0]}/{key[1]}")
        self.poke(key)

    def stop(self, key: Key) -> None:
        task = self.tasks.pop(key, None)
        if task is not None:
            task.cancel()
        self.wakeups.pop(key, None)
        self.states.pop(key, None)

    def poke(self, key: Key) -> None:
        ev = self.wakeups.get(key)
        if ev is not None:
            ev.set()

    async def _loop(self, key: Key) -> None:
        while key in self.wakeups:
            ev = self.wakeups[key]
            ev.clear()
            try:
                await self.tick(key)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - one bad tick must not stop the watcher
                log.exception("version watcher tick for %s/%s failed", *key)
            state = self.states.get(key)
            wait = self.interval if state is None else max(0.05, state.resolved_at + self.interval - time.monotonic())
            try:
                await asyncio.wait_for(ev.wait(), wait)
                await asyncio.sleep(0.1)  # coalesce a burst of watch events into one evaluation
            except TimeoutError:
                pass

    # -- blocking registry work (worker threads) -----------------------------------------
    def _registry(self, url: str) -> Registry:
        if url not in self.registries:
            self.registries[url] = self.registry_factory(url)
        return self.registries[url]

    def _resolve(self, url: str, version: str) -> Resolution:
        try:
            return Resolution(resolve(self._registry(url), version))
        except RegistryError as exc:
            return classify(exc)

    def _resolve_cached(self, url: str, version: str) -> Resolution:
        """:meth:`_resolve`, at most once per interval per ``(registry, version)`` (failures too:
        a dead endpoint is asked once per interval, not once per resource)."""
        now = time.monotonic()
        hit = self.resolutions.get((url, version))
        if hit is not None and now - hit[0] < self.interval:
            return hit[1]
        res = self._resolve(url, version)
        if len(self.resolutions) > 256:
            self.resolutions.clear()
        self.resolutions[(url, version)] = (time.monotonic(), res)
        return res

    def _manifest(self, url: str, digest: str) -> Manifest:
        if digest not in self.manifests:
            if len(self.manifests) > 32:
                self.manifests.clear()
            self.manifests[digest] = self._registry(url).get_manifest(digest)
        return self.manifests[digest]

    def _sync_bytes(self, url: str, current: str | None, target: str) -> int:
        old = self._manifest(url, current) if current else None
        return diff(old, self._manifest(url, target)).bytes_to_move

    # -- one evaluation ------------------------------------------------------------------
    async def tick(self, key: Key) -> None:
        obs = self.observed(key)
        if obs is None:
            return
        self.ticks += 1
        qwd = obs.qwd
        try:
            spec = QwenDeploymentSpec.model_validate(qwd.get("spec") or {})
        except ValidationError:
            return  # the reconciler reports an invalid spec
        state = self.states.setdefault(key, WatchState())
        now = time.monotonic()
        base = self._base(qwd, state, now)
        model = ModelState.from_status(base)
        registry = spec.model.registry
        if not registry.startswith(TRACKED_SCHEMES):
            await self._write(key, qwd, base, model, not_managed(registry), [], state)
            return
        ident = (registry, spec.model.version)
        if state.resolution is None or state.ident != ident or now - state.resolved_at >= self.interval:
            state.resolution = await run(REGISTRY, self._resolve_cached, registry, spec.model.version)
            state.ident, state.resolved_at = ident, now
        res = state.resolution
        nbytes = model.last_sync_bytes
        if res.digest is not None and res.digest != model.target:
            try:
                nbytes = await run(REGISTRY, self._sync_bytes, registry, model.current, res.digest)
            except RegistryError as exc:
                res = classify(exc)
        target = res.digest or model.target or ""
        inp = SyncInput(
            spec_version=spec.model.version,
            canary_replicas=spec.rollout.canary_replicas,
            model=model,
            resolution=res,
            sync_bytes=nbytes,
            pools_settled_on_target=pools_on(obs.deployments, target, _desired(qwd, spec)),
            canary_urls=canary_urls(key[1], key[0], target, spec.rollout.canary_replicas, obs.pods, self.dial),
            no_canary=no_canary_reason(obs.deployments),
        )
        step = decide(inp)
        if step.smoke_urls:
            log.info("smoke-testing the canary of %s/%s at %s", key[0], key[1], ", ".join(step.smoke_urls))
            request = runtime_for(spec).smoke_request(spec, SMOKE_PROMPT)
            outcome = await run(SMOKE, self.smoke, step.smoke_urls, request=request)
            step = decide(replace(inp, smoke=outcome))
        # pre-staging: status.model.staging from the node agents' annotations, and the roll's wait
        resource = Resource(key[0], key[1], spec, step.model.current, step.model.target)
        on = spec.model.prestage_enabled()
        eligible = eligible_nodes(resource, obs.nodes, self.gpus, obs.defaults) if on else []
        held = gate(step.model, step.condition, spec, resource, eligible, obs.pods, dt.datetime.now(dt.UTC))
        counts = staging(resource, eligible) if on else ()
        step = replace(
            step,
            model=replace(held.model, staging=counts),
            condition=held.condition or step.condition,
            events=[*step.events, *held.events],
        )
        events = list(step.events)
        live = cond.get(base.get("conditions"), cond.MODEL_SYNCED)
        if res.digest is None and (live is None or live.get("reason") != res.reason):
            events.append(("Warning", res.reason, step.condition.message))
        await self._write(key, qwd, base, step.model, step.condition, events, state)

    def _base(self, qwd: Mapping[str, Any], state: WatchState, now: float) -> dict[str, Any]:
        """Our part of the live status, or our last write while the watch cache lags behind it."""
        status = qwd.get("status") or {}
        live = {
            "model": dict(status.get("model") or {}),
            "conditions": [c for c in status.get("conditions") or [] if c.get("type") == cond.MODEL_SYNCED],
        }
        # only while the cache still shows the version our write was made over: any newer one
        # (ours, or the reconciler's canary timeout) is the truth, never our older write
        rv = (qwd.get("metadata") or {}).get("resourceVersion")
        if (
            state.written is not None
            and now - state.written_at < WRITE_TTL
            and live != state.written
            and rv == state.written_rv
        ):
            return state.written
        return live

    async def _write(
        self,
        key: Key,
        qwd: Mapping[str, Any],
        base: Mapping[str, Any],
        model: ModelState,
        condition: cond.Condition,
        events: list[tuple[str, str, str]],
        state: WatchState,
    ) -> None:
        generation = int(qwd["metadata"].get("generation") or 1)
        merged, _ = cond.merge(base.get("conditions"), [condition], generation)
        desired = {"model": model.to_status(), "conditions": merged}
        if desired == base:
            return
        rv = qwd["metadata"].get("resourceVersion")
        try:
            # only over the status this decision read: the reconciler may have recorded a canary
            # timeout meanwhile (e.g. during a smoke test), which must not be overwritten
            precondition = {"resource_version": rv} if rv else {}
            await run(KUBE, self.kube.apply_status, key[0], key[1], desired, MANAGER, **precondition)
        except StatusConflictError as exc:
            log.info("model sync %s/%s not written: %s; deciding again from the new status", key[0], key[1], exc)
            state.written = None  # the next tick starts from the live status, not from our last write
            return
        state.written, state.written_at, state.written_rv = desired, time.monotonic(), rv
        log.info(
            "model sync %s/%s: %s %s (target %s, current %s)",
            key[0],
            key[1],
            condition.reason,
            condition.status_str,
            model.target,
            model.current,
        )
        for type_, reason, message in events:
            try:
                await run(KUBE, self.kube.event, qwd, type_, reason, message)
            except Exception as exc:  # noqa: BLE001 - an Event is best effort
                log.warning("could not post event %s: %s", reason, exc)


def _desired(qwd: Mapping[str, Any], spec: QwenDeploymentSpec) -> int:
    """Replicas the reconciler sizes to (its status figure once written, else the spec's)."""
    figure = (qwd.get("status") or {}).get("desiredReplicas")
    return int(figure) if figure is not None else spec.desired_replicas(None)

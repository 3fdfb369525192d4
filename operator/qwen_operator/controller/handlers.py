"""The kopf wiring: watch caches, one reconcile loop per QwenDeployment, nothing else.

kopf's ``on.create/update`` handlers keep progress in annotations and daemons add a
finalizer; both are writes a level-based controller does not need. So every watch here
is an ``on.event`` handler that updates an in-memory cache (an informer) and *triggers*
the owning QwenDeployment's loop; the loop reconciles on trigger or every resync period,
serialised per object. Deletion is the garbage collector's job (owner references): no
finalizer can ever block ``kubectl delete``.

Applied hashes are remembered for a short while (controller-runtime's "expectations"),
so a reconcile racing its own watch events does not write twice.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from ..api import GROUP, PLURAL, VERSION
from ..catalog import Catalog
from ..nodeagent.plan import CACHE_ANNOTATION, parse_report
from ..render.lws import LWS_GROUP, LWS_KIND, LWS_PLURAL, LWS_VERSION
from ..render.names import LABEL_DEPLOYMENT, LABEL_MANAGED_BY, MANAGED_BY, label_value
from ..render.workload import OperatorDefaults
from .executors import KUBE, run
from .failures import pod_cause
from .inventory import LiveInventory
from .kube import Kube, StatusConflictError
from .metrics import RECONCILE_SECONDS, RECONCILES
from .reconcile import HASH_ANNOTATION, POOL_KINDS, Observed, Outcome, compute, with_own_status, with_watcher_status
from .rollout import pool_pods_unschedulable
from .routing import is_router
from .versions import MANAGER as MODEL_SYNC_MANAGER

log = logging.getLogger("qwen_operator.controller")
Key = tuple[str, str]
EXPECTATION_TTL = 30.0
#: How long the controller trusts its own status write over a cache that has not shown it (a watch
#: that re-lists may never deliver that exact resourceVersion).
STATUS_WRITE_TTL = 30.0
STARTUP_GRACE_SECONDS = 2.0


@dataclass
class ControllerConfig:
    resync_seconds: float = 60.0
    operator_image: str | None = None
    service_monitor_crd: bool = False
    gateway_api_crds: bool = False  # InferencePool and HTTPRoute CRDs exist (watched and applied only then)
    lws_crd: bool = False  # the LeaderWorkerSet CRD exists: pools spanning nodes are planned, watched and applied
    pod_annotations: tuple[tuple[str, str], ...] = ()
    defaults: OperatorDefaults = field(default_factory=OperatorDefaults)  # operator config registry, nodeCache


def _gpu_pod(spec: Mapping[str, Any], **_: Any) -> bool:
    for c in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
        if "nvidia.com/gpu" in ((c.get("resources") or {}).get("limits") or {}):
            return True
    return False


@dataclass
class Controller:
    kube: Kube
    catalog: Catalog
    config: ControllerConfig = field(default_factory=ControllerConfig)
    qwds: dict[Key, dict[str, Any]] = field(default_factory=dict)
    owned: dict[Key, dict[tuple[str, str], dict[str, Any]]] = field(default_factory=dict)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    pods: dict[Key, dict[str, Any]] = field(default_factory=dict)
    tasks: dict[Key, asyncio.Task[None]] = field(default_factory=dict)
    triggers: dict[Key, asyncio.Event] = field(default_factory=dict)
    expected: dict[tuple[str, str, str], tuple[str, float]] = field(default_factory=dict)
    # drift already reverted: (kind, namespace, name) -> the live resourceVersion it was seen at
    reverted: dict[tuple[str, str, str], str | None] = field(default_factory=dict)
    last_status: dict[Key, dict[str, Any]] = field(default_factory=dict)
    # the resourceVersion the cached QwenDeployment had when last_status was written: while the
    # cache still shows it, the watch has not delivered that write, and last_status is the truth
    last_status_rv: dict[Key, str | None] = field(default_factory=dict)
    # the resourceVersion our last status write produced and when, until the watch delivers exactly
    # it: another writer's event in between (the autoscaler's, the version watcher's) moves the cache
    # to a version that still lacks our write, and deciding from it would write the same status again
    last_status_written: dict[Key, tuple[str, float]] = field(default_factory=dict)
    # a canary timeout recorded in status.model: (resourceVersion it was computed from, what was written)
    model_written: dict[Key, tuple[str | None, dict[str, Any]]] = field(default_factory=dict)
    reconciles: int = 0
    # resources whose last decision could change when GPUs are freed (Outcome.wants_gpus)
    wants_gpus: set[Key] = field(default_factory=set)
    # every GPU pod's and node's contribution to free GPUs, updated per event (not per reconcile)
    live_inventory: LiveInventory | None = None
    # the pods of each QwenDeployment (namespace, deployment label) -> pod key -> pod
    pods_by_owner: dict[Key, dict[Key, dict[str, Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.live_inventory is None:
            self.live_inventory = LiveInventory(self.catalog.gpus)

    def _store_pod(self, key: Key, owner: str | None, body: Mapping[str, Any] | None) -> None:
        """Keep ``self.pods``, the per-owner index and the live inventory in step (None: gone)."""
        assert self.live_inventory is not None
        self.live_inventory.pod(key, body)
        bucket = self.pods_by_owner.get((key[0], owner)) if owner else None
        if body is None:
            self.pods.pop(key, None)
            if bucket is not None:
                bucket.pop(key, None)
                if not bucket:
                    del self.pods_by_owner[(key[0], str(owner))]
            return
        stored = _slim(body)
        self.pods[key] = stored
        if owner:
            self.pods_by_owner.setdefault((key[0], owner), {})[key] = stored

    started_at: float = field(default_factory=time.monotonic)
    autoscaler: Any = None  # controller.autoscaler.Autoscaler, set by the CLI when wiring
    versions: Any = None  # controller.versions.VersionWatcher, set by the CLI when wiring

    # -- cache updates ---------------------------------------------------------------
    def trigger(self, key: Key) -> None:
        ev = self.triggers.get(key)
        if ev is not None:
            ev.set()

    def trigger_all(self) -> None:
        for key in list(self.triggers):
            self.trigger(key)

    def on_qwd(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        if event_type == "DELETED":
            self.qwds.pop(key, None)
            self.last_status.pop(key, None)
            self.last_status_rv.pop(key, None)
            self.last_status_written.pop(key, None)
            self.wants_gpus.discard(key)
            task = self.tasks.pop(key, None)
            self.triggers.pop(key, None)
            if task is not None:
                task.cancel()
            if self.autoscaler is not None:
                self.autoscaler.stop(key)
            if self.versions is not None:
                self.versions.stop(key)
            return
        self.qwds[key] = _slim(body)
        pending = self.last_status_written.get(key)
        if pending is not None and pending[0] == body["metadata"].get("resourceVersion"):
            del self.last_status_written[key]  # the cache now holds our last status write
        if self.versions is not None:
            self.versions.sync(key)
        if self.autoscaler is not None:
            scaling = (body.get("spec") or {}).get("scaling") or {}
            self.autoscaler.sync(key, bool(scaling.get("enabled")))
        if key not in self.tasks:
            self.triggers[key] = asyncio.Event()
            self.tasks[key] = asyncio.create_task(self._loop(key), name=f"reconcile {key[0]}/{key[1]}")
        self.trigger(key)

    def on_owned(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        owner = (meta.get("labels") or {}).get(LABEL_DEPLOYMENT)
        if not owner:
            return
        key = (meta["namespace"], owner)
        bucket = self.owned.setdefault(key, {})
        ident = (body["kind"], meta["name"])
        if event_type == "DELETED":
            bucket.pop(ident, None)
        else:
            bucket[ident] = _slim(body)
        self.trigger(key)
        self.poke_versions(key)

    def poke_versions(self, key: Key) -> None:
        if self.versions is not None and key in self.qwds:
            self.versions.poke(key)

    def on_node(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        name = body["metadata"]["name"]
        before = self.nodes.get(name)
        if event_type == "DELETED":
            self.nodes.pop(name, None)
        else:
            self.nodes[name] = _slim(body)
        assert self.live_inventory is not None
        self.live_inventory.node(name, self.nodes.get(name))
        if before is None or event_type == "DELETED" or _capacity_view(before) != _capacity_view(self.nodes[name]):
            self.trigger_all()  # GPUs appeared or vanished: pools may spill back or over
        old, new = _cache_view(before), _cache_view(self.nodes.get(name))
        if old != new:
            # a node agent staged or evicted a version: status.model.staging and the roll's wait of the
            # resources whose entries changed (only theirs: every node's agent patches now and then)
            was, now = parse_report(old), parse_report(new)
            changed = {m for m in was.keys() | now.keys() if was.get(m) != now.get(m)}
            for key in list(self.qwds):
                if f"{key[0]}.{key[1]}" in changed:
                    self.poke_versions(key)

    def on_pod(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        owner = (body["metadata"].get("labels") or {}).get(LABEL_DEPLOYMENT)
        if owner:  # readiness and endpoints of its pods drive canary tests and rollout completion
            self.poke_versions((key[0], owner))
        if event_type == "DELETED" or body.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            if key in self.pods:
                self._store_pod(key, owner, None)
                # GPUs were freed: only resources waiting for GPUs (and the pod's owner) can decide
                # differently, so only they reconcile now (a pod exit used to re-run every resource)
                for waiting in list(self.wants_gpus):
                    self.trigger(waiting)
                if owner:
                    self.trigger((key[0], owner))
            return
        before = self.pods.get(key)
        # our own pods are kept while still unscheduled too: an Unschedulable one is reported in Degraded
        if key not in self.pods and (body.get("spec", {}).get("nodeName") or owner):
            self._store_pod(key, owner, body)
        elif key in self.pods:
            self._store_pod(key, owner, body)
        elif not body.get("spec", {}).get("nodeName"):
            return
        if owner and _stuck_cause(before) != _stuck_cause(body):
            self.trigger((key[0], owner))  # e.g. ImagePullBackOff began or ended: Degraded says so now
        elif owner and _waits_for_gpu(before, owner) != _waits_for_gpu(body, owner):
            self.trigger((key[0], owner))  # a pool pod waits for a GPU: a passed canary gives its own up now

    # -- the loop --------------------------------------------------------------------
    async def _loop(self, key: Key) -> None:
        backoff = 1.0
        # the first reconcile after start waits for the initial listings of nodes, pods and
        # owned objects: planning against an empty cache would flip conditions for nothing
        warmup = self.started_at + STARTUP_GRACE_SECONDS - time.monotonic()
        if warmup > 0:
            await asyncio.sleep(warmup)
        while key in self.qwds:
            ev = self.triggers[key]
            ev.clear()
            started = time.monotonic()
            try:
                out = await self.reconcile(key)
                RECONCILES.labels("ok").inc()
                backoff = 1.0
                timeout = self.config.resync_seconds
                if out.requeue_after is not None:  # a canary deadline falls before the next resync
                    timeout = max(0.5, min(timeout, out.requeue_after + 0.5))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed reconcile is retried, never fatal
                RECONCILES.labels("error").inc()
                if _terminating_namespace(exc):
                    log.info("namespace %s is being deleted: not reconciling %s", key[0], key[1])
                else:
                    log.exception("reconcile of %s/%s failed: %s", key[0], key[1], exc)
                timeout, backoff = backoff, min(backoff * 2, 60.0)
            RECONCILE_SECONDS.observe(time.monotonic() - started)
            try:
                await asyncio.wait_for(ev.wait(), timeout)
            except TimeoutError:
                pass

    def observed_or_none(self, key: Key) -> Observed | None:
        return self.observed(key) if key in self.qwds else None

    def observed(self, key: Key) -> Observed:
        owned = list(self.owned.get(key, {}).values())
        return Observed(
            qwd=self.qwds[key],
            # the router's Deployment is no GPU pool: it goes with the other owned objects
            deployments=[o for o in owned if o["kind"] in POOL_KINDS and not is_router(o)],
            others=[o for o in owned if o["kind"] not in POOL_KINDS or is_router(o)],
            nodes=list(self.nodes.values()),
            # this resource's pods only: free GPUs come from the live inventory, not a recount of every pod
            pods=list(self.pods_by_owner.get((key[0], label_value(key[1])), {}).values()),
            inventory=self.live_inventory.inventory() if self.live_inventory is not None else None,
            service_monitor_crd=self.config.service_monitor_crd,
            gateway_api_crds=self.config.gateway_api_crds,
            lws_crd=self.config.lws_crd,
            operator_image=self.config.operator_image,
            pod_annotations=self.config.pod_annotations,
            defaults=self.config.defaults,
        )

    def _filter_expected(self, out: Outcome) -> None:
        now = time.monotonic()
        self.expected = {k: v for k, v in self.expected.items() if now - v[1] < EXPECTATION_TTL}
        keep = []
        for m in out.apply:
            ident = (m["kind"], m["metadata"]["namespace"], m["metadata"]["name"])
            h = m["metadata"]["annotations"][HASH_ANNOTATION]
            seen_at = out.drifted.get((m["kind"], m["metadata"]["name"]), "")
            if seen_at != "":
                # drift: skip only while the cache still shows the very object we reverted
                if ident not in self.reverted or self.reverted[ident] != seen_at:
                    keep.append(m)
            elif self.expected.get(ident, ("", 0.0))[0] != h:
                keep.append(m)
        if len(keep) != len(out.apply):
            applied = {(m["kind"], m["metadata"]["name"]) for m in keep}
            out.events = [
                e
                for e in out.events
                if not (e.reason.startswith("Pool") or e.reason in ("CanaryCreated", "CanaryUpdated", "DriftReverted"))
                or e.reason == "PoolRemoved"
                or any(name in e.message for _, name in applied)
            ]
        out.apply = keep
        out.delete = [
            d
            for d in out.delete
            if self.expected.get(("delete", d["metadata"]["namespace"], d["metadata"]["name"]), ("", 0))[0]
            != d["metadata"].get("uid")
        ]

    async def reconcile(self, key: Key) -> Outcome:
        self.reconciles += 1
        obs = self.observed(key)
        rv = obs.qwd.get("metadata", {}).get("resourceVersion")
        written = self.model_written.pop(key, None)
        if written is not None and written[0] == rv:  # the watch has not delivered that write yet
            obs = with_watcher_status(obs, written[1])
            self.model_written[key] = written
        own = self.last_status.get(key)
        pending = self.last_status_written.get(key)
        undelivered = pending is not None and time.monotonic() - pending[1] < STATUS_WRITE_TTL
        if own is not None and ((key in self.last_status_rv and self.last_status_rv[key] == rv) or undelivered):
            obs = with_own_status(obs, own)  # our last status write is not in the cache yet
        out = compute(obs, self.catalog)
        if out.wants_gpus:
            self.wants_gpus.add(key)
        else:
            self.wants_gpus.discard(key)
        if out.model_status is not None:  # first: a crash after it still finds the canary rolled back
            try:
                # only over the status this decision read: a smoke result the version watcher
                # wrote since wins, and this reconcile decides again from it (kube.py, ownership)
                precondition = {"resource_version": rv} if rv else {}
                await run(
                    KUBE, self.kube.apply_status, key[0], key[1], out.model_status, MODEL_SYNC_MANAGER, **precondition
                )
            except StatusConflictError as exc:
                log.info("canary timeout of %s/%s not recorded: %s; deciding again", key[0], key[1], exc)
                return Outcome(requeue_after=0.5)  # nothing applied or deleted on a stale decision
            self.model_written[key] = (rv, out.model_status)
        self._filter_expected(out)
        if (
            out.status is not None
            and self.last_status.get(key) == out.status
            and (self.last_status_rv.get(key) == rv or undelivered)
        ):
            out.status = None  # already written; the watch has not caught up yet (a newer copy is compared)
        qwd = self.qwds[key]
        now = time.monotonic()
        for m in out.apply:
            await run(KUBE, self.kube.apply, m)
            self.expected[(m["kind"], key[0], m["metadata"]["name"])] = (
                m["metadata"]["annotations"][HASH_ANNOTATION],
                now,
            )
            seen_at = out.drifted.get((m["kind"], m["metadata"]["name"]), "")
            if seen_at != "":
                self.reverted[(m["kind"], key[0], m["metadata"]["name"])] = seen_at
        for d in out.delete:
            await run(KUBE, self.kube.delete, d)
            self.expected[("delete", key[0], d["metadata"]["name"])] = (d["metadata"].get("uid") or "", now)
        if out.status is not None:
            produced = await run(KUBE, self.kube.apply_status, key[0], key[1], out.status)
            self.last_status[key] = out.status
            self.last_status_rv[key] = rv
            if isinstance(produced, str) and produced != rv:
                self.last_status_written[key] = (produced, time.monotonic())
            else:
                self.last_status_written.pop(key, None)
        for e in out.events:
            try:
                await run(KUBE, self.kube.event, qwd, e.type, e.reason, e.message)
            except Exception as exc:  # noqa: BLE001 - an Event is best effort
                log.warning("could not post event %s: %s", e.reason, exc)
        if out.writes:
            log.info(
                "reconciled %s/%s: %d apply, %d delete, status %s; plan %s",
                key[0],
                key[1],
                len(out.apply),
                len(out.delete),
                f"updated ({', '.join(out.status_changed)})" if out.status is not None else "unchanged",
                out.plan.pool_summary if out.plan else "-",
            )
        return out


def _terminating_namespace(exc: Exception) -> bool:
    """The API refuses creates in a namespace being deleted (403 NamespaceTerminating): expected."""
    return getattr(exc, "status", None) == 403 and "NamespaceTerminating" in str(getattr(exc, "body", ""))


def _stuck_cause(pod: Mapping[str, Any] | None) -> str | None:
    if pod is None:
        return None
    stuck = pod_cause(pod, dt.datetime.now(dt.UTC))
    return None if stuck is None else stuck.cause


def _waits_for_gpu(pod: Mapping[str, Any] | None, owner: str) -> bool:
    """A pool pod the scheduler could not place (rollout.canary_kept then lets a passed canary go)."""
    return pod is not None and pool_pods_unschedulable(owner, pod["metadata"]["namespace"], [pod])


def _cache_view(node: Mapping[str, Any] | None) -> str | None:
    """The node agent's ``serving.qwenops.io/model-cache`` annotation (None: no agent, or no node)."""
    return ((node or {}).get("metadata", {}).get("annotations") or {}).get(CACHE_ANNOTATION)


def _capacity_view(node: Mapping[str, Any]) -> tuple[Any, ...]:
    st = node.get("status", {})
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [])
    return ((st.get("allocatable") or {}).get("nvidia.com/gpu"), ready, node.get("spec", {}).get("unschedulable"))


def register(registry: kopf.OperatorRegistry, controller: Controller) -> None:
    """Attach the controller's watch handlers to a kopf registry."""
    managed = {LABEL_MANAGED_BY: MANAGED_BY}

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def qwd_event(event: Mapping[str, Any], body: Mapping[str, Any], **_: Any) -> None:
        controller.on_qwd(event.get("type"), body)

    @kopf.on.event("apps", "v1", "deployments", labels=managed, registry=registry)
    async def deployment_event(event: Mapping[str, Any], body: Mapping[str, Any], **_: Any) -> None:
        controller.on_owned(event.get("type"), _with_kind(body, "Deployment"))

    @kopf.on.event("", "v1", "services", labels=managed, registry=registry)
    async def service_event(event: Mapping[str, Any], body: Mapping[str, Any], **_: Any) -> None:
        controller.on_owned(event.get("type"), _with_kind(body, "Service"))

    @kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=managed, registry=registry)
    async def pdb_event(event: Mapping[str, Any], body: Mapping[str, Any], **_: Any) -> None:
        controller.on_owned(event.get("type"), _with_kind(body, "PodDisruptionBudget"))

    register_routing(registry, controller, managed)

    @kopf.on.event("", "v1", "nodes", registry=registry)
    async def node_event(event: Mapping[str, Any], body: Mapping[str, Any], **_: Any) -> None:
        controller.on_node(event.get("type"), body)

    @kopf.on.event("", "v1", "pods", when=lambda spec, **_: _gpu_pod(spec), registry=registry)
    async def pod_event(event: Mapping[str, Any], body: Mapping[str, Any], **_: Any) -> None:
        controller.on_pod(event.get("type"), body)


def _slim(body: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of a watched object for the caches, without ``metadata.managedFields`` (server-side
    apply bookkeeping, often the largest part of an object, which the controller never reads): the
    caches hold every QwenDeployment, owned object, GPU pod and node."""
    meta = body.get("metadata")
    if isinstance(meta, Mapping) and "managedFields" in meta:
        body = {**body, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
    return copy.deepcopy(dict(body))


def _with_kind(body: Mapping[str, Any], kind: str) -> dict[str, Any]:
    out = dict(body)
    out.setdefault("kind", kind)
    return out


def register_routing(registry: kopf.OperatorRegistry, controller: Controller, managed: Mapping[str, str]) -> None:
    """Watches of what the router needs (ServiceAccount, Role, RoleBinding) and, only when their CRDs
    exist, the ServiceMonitors and the Gateway API objects: owned objects must be in the cache to be
    pruned when ``spec.routing`` stops rendering them, and to be re-applied when changed."""
    watched = [
        ("", "v1", "serviceaccounts", "ServiceAccount"),
        ("rbac.authorization.k8s.io", "v1", "roles", "Role"),
        ("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    ]
    if controller.config.service_monitor_crd:  # e.g. the router's ServiceMonitor goes when routing is turned off
        watched.append(("monitoring.coreos.com", "v1", "servicemonitors", "ServiceMonitor"))
    if controller.config.lws_crd:  # pools whose replicas span nodes (render/lws.py)
        watched.append((LWS_GROUP, LWS_VERSION, LWS_PLURAL, LWS_KIND))
    if controller.config.gateway_api_crds:
        watched += [
            ("inference.networking.k8s.io", "v1", "inferencepools", "InferencePool"),
            ("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute"),
        ]
    for group, version, plural, kind in watched:

        async def on_event(event: Mapping[str, Any], body: Mapping[str, Any], _kind: str = kind, **_: Any) -> None:
            controller.on_owned(event.get("type"), _with_kind(body, _kind))

        kopf.on.event(group, version, plural, labels=dict(managed), registry=registry, id=f"{plural}_event")(on_event)

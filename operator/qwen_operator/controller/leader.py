"""Leader election on a ``coordination.k8s.io/v1`` Lease, so two operator replicas never both write.

Why a Lease and not kopf's peering: peering is presence detection, not election. Each kopf
process writes itself into a (Cluster)KopfPeering object and *pauses* while it sees a peer
of higher priority; two replicas of one Deployment share one priority, and then (kopf's
docs) every one of them warns and freezes, leaving the cluster unserved. It also needs a
cluster-wide CRD of its own and notices a dead peer only after its ``lifetime`` (60 s by
default). A Lease is what controller-runtime, cert-manager and kube-controller-manager use:
one holder at a time by optimistic concurrency (``resourceVersion``), a standby that takes
over a Lease nobody renewed, and a leader that steps down before anyone may take over.

How this process uses it (``qwenctl operator run --leader-elect``): the standby runs no kopf
handler at all, so it has no watch caches, reconcile loops, autoscaler or version watcher,
and makes no write but its Lease attempts; it polls the Lease every ``retry_period``. Once
it holds the Lease it starts kopf and renews every ``retry_period``. A leader that has not
renewed for ``renew_deadline`` exits the process at once (exit code
:data:`EXIT_LEASE_LOST`; a watchdog thread enforces it even if the event loop is stuck), so
Kubernetes restarts it as a standby: never two active writers. On SIGTERM the leader stops
kopf, then releases the Lease (empty holder, ``leaseDurationSeconds: 1``), so a rolling
upgrade hands over within one ``retry_period`` instead of a whole lease duration.

Expiry follows the API's convention of not trusting other machines' clocks: a standby
counts ``leaseDurationSeconds`` from when *it* saw the Lease record last change (its own
monotonic clock), not from the ``renewTime`` written by the holder.

The numbers (defaults of the flags; the chart passes the same):

- ``lease_duration`` 10 s: a SIGKILLed leader is replaced about ``lease_duration`` after its
  last renewal (at worst ``lease_duration`` + ``retry_period`` + one request), i.e. 8-13 s,
  inside the issue's 15 s failover target. controller-runtime's 15 s would give 13-18 s.
- ``renew_deadline`` 7 s: the leader gives up 3 s before any standby may take over. Those
  3 s cover the exit itself and a write already in flight; 7 s still rides out three failed
  renewals in a row (an API server restart or a slow etcd) without a needless failover.
- ``retry_period`` 2 s: how often the leader renews and a standby looks (0.5 requests/s
  each); a released Lease is taken within it.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import functools
import logging
import os
import random
import socket
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import Gauge

log = logging.getLogger("qwen_operator.leader")

#: The process's exit status when it lost (or could not renew) the Lease while leading.
EXIT_LEASE_LOST = 3
DEFAULT_LEASE_NAME = "qwen-operator-leader"
#: the field manager of every Lease write (managedFields say which process renewed it last)
FIELD_MANAGER = "qwen-operator-leader-election"
LEASE_DURATION = 10.0
RENEW_DEADLINE = 7.0
RETRY_PERIOD = 2.0
#: a standby waits retry_period x [1, 1 + JITTER] between looks, so standbys do not poll in step
JITTER = 0.2

LEADER = Gauge("qwen_operator_leader", "1 while this process holds the leader Lease, else 0")
LEADER_TRANSITIONS = Gauge("qwen_operator_leader_transitions", "leaseTransitions of the leader Lease as last seen")


class LeaseConflictError(Exception):
    """The Lease changed under us (HTTP 409): someone else wrote it first."""


class LeaseStore(Protocol):
    """One Lease object, read and written as plain dicts (``metadata.resourceVersion`` included)."""

    async def get(self) -> dict[str, Any] | None: ...

    async def create(self, body: dict[str, Any]) -> dict[str, Any]: ...

    async def replace(self, body: dict[str, Any]) -> dict[str, Any]: ...


@dataclass(frozen=True)
class LeaseSettings:
    namespace: str
    identity: str
    name: str = DEFAULT_LEASE_NAME
    lease_duration: float = LEASE_DURATION
    renew_deadline: float = RENEW_DEADLINE
    retry_period: float = RETRY_PERIOD

    def problems(self) -> list[str]:
        """What is wrong with these numbers, by flag name (empty when they are usable).

        The leader must give up (renew deadline) before a standby may take over (lease
        duration), and must get more than one renewal attempt inside the deadline."""
        out = []
        if self.retry_period <= 0:
            out.append(f"--leader-elect-retry-period: must be > 0, got {self.retry_period}")
        if self.renew_deadline <= self.retry_period * (1 + JITTER):
            out.append(
                f"--leader-elect-renew-deadline: must be > {1 + JITTER:g} x --leader-elect-retry-period"
                f" ({self.retry_period:g}), got {self.renew_deadline:g}"
            )
        if self.lease_duration <= self.renew_deadline:
            out.append(
                f"--leader-elect-lease-duration: must be > --leader-elect-renew-deadline ({self.renew_deadline:g}),"
                f" got {self.lease_duration:g}"
            )
        return out


def default_identity() -> str:
    """``$POD_NAME`` (the chart sets it from the downward API) or the host name, plus a random
    suffix: a restarted container of the same pod is a new candidate, never mistaken for the
    process that held the Lease before it."""
    base = os.environ.get("POD_NAME") or socket.gethostname() or "qwen-operator"
    return f"{base}_{uuid.uuid4().hex[:8]}"


def _micro_time(when: dt.datetime) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds, UTC)."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def exit_on_lost(reason: str) -> None:
    """Leave at once, without running any cleanup that could still write: Kubernetes restarts
    the container, which comes back as a standby."""
    log.critical("leader election lost: %s; exiting (%d) so that only the new leader writes", reason, EXIT_LEASE_LOST)
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:  # noqa: BLE001, S110 - exiting anyway
            pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_LEASE_LOST)


class LeaderElector:
    """Acquire, hold and release one Lease; see the module docstring for the protocol."""

    def __init__(
        self,
        store: LeaseStore,
        settings: LeaseSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], dt.datetime] = _utcnow,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_lost: Callable[[str], None] = exit_on_lost,
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.wall = wall
        self.sleep = sleep
        self.on_lost = on_lost
        self.is_leader = False
        self.renewed_at = 0.0  # clock() when the last successful acquire/renew *started*
        self.last_contact: float | None = None  # clock() of the last successful Lease read or write
        self.acquired_at: float | None = None
        self.holder: str | None = None  # the holder as last seen
        self._record: dict[str, Any] | None = None  # the Lease as last seen (our write or a read)
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._lost_to: str | None = None
        self._watchdog: threading.Thread | None = None
        self._watchdog_stop = threading.Event()

    @property
    def identity(self) -> str:
        return self.settings.identity

    # -- one attempt -------------------------------------------------------------------
    def _observe(self, lease: Mapping[str, Any], now: float) -> None:
        spec = lease.get("spec") or {}
        key = (
            spec.get("holderIdentity"),
            spec.get("renewTime"),
            spec.get("acquireTime"),
            spec.get("leaseTransitions"),
            spec.get("leaseDurationSeconds"),
        )
        if key != self._observed:
            self._observed, self._observed_at = key, now
        self.holder = spec.get("holderIdentity") or None
        LEADER_TRANSITIONS.set(spec.get("leaseTransitions") or 0)

    def expires_in(self, now: float | None = None) -> float:
        """Seconds until the Lease as last seen may be taken (<= 0: free now)."""
        if self._observed is None or not self._observed[0]:
            return 0.0
        duration = float(self._observed[4] or self.settings.lease_duration)
        return self._observed_at + duration - (self.clock() if now is None else now)

    def _claim(self, lease: Mapping[str, Any] | None) -> dict[str, Any]:
        now = _micro_time(self.wall())
        body: dict[str, Any] = copy.deepcopy(dict(lease)) if lease else {}
        body.setdefault("apiVersion", "coordination.k8s.io/v1")
        body.setdefault("kind", "Lease")
        meta = body.setdefault("metadata", {})
        meta.pop("managedFields", None)  # the server keeps them and adds our manager
        meta.setdefault("name", self.settings.name)
        meta.setdefault("namespace", self.settings.namespace)
        spec = body.setdefault("spec", {})
        if spec.get("holderIdentity") != self.identity:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if lease else 0)
        spec["holderIdentity"] = self.identity
        spec["leaseDurationSeconds"] = max(1, round(self.settings.lease_duration))
        spec["renewTime"] = now
        return body

    async def try_acquire_or_renew(self, _reread: bool = False) -> bool:
        """One attempt: take a free or expired Lease, or renew ours. False when someone else holds
        it (or wrote it first). A leader renews with the resourceVersion of its own last write:
        one request, and a 409 means another process wrote the Lease."""
        started = self.clock()
        lease = self._record if self.is_leader else None
        if lease is None:
            lease = await self.store.get()
            self.last_contact = self.clock()
            if lease is None:
                try:
                    created = await self.store.create(self._claim(None))
                except LeaseConflictError:
                    return False
                return self._won(created, started)
            self._observe(lease, self.last_contact)
            holder = self.holder
            if holder and holder != self.identity:
                if self.is_leader:
                    self._lost_to = holder
                    return False
                if self.expires_in() > 0:
                    return False
        try:
            written = await self.store.replace(self._claim(lease))
        except LeaseConflictError:
            self._record = None  # read it again
            if self.is_leader and not _reread:
                # our own earlier renewal may have landed after its request timed out: look once
                # more now rather than a whole retry period later
                return await self.try_acquire_or_renew(_reread=True)
            return False
        return self._won(written, started)

    def _won(self, lease: dict[str, Any], started: float) -> bool:
        self._record = lease
        self.last_contact = self.clock()
        self._observe(lease, self.last_contact)
        if not self.is_leader:
            self.acquired_at = self.last_contact
            log.info(
                "became leader: Lease %s/%s held by %s (transitions %s)",
                self.settings.namespace,
                self.settings.name,
                self.identity,
                (lease.get("spec") or {}).get("leaseTransitions"),
            )
        self.is_leader = True
        self.renewed_at = started
        LEADER.set(1)
        return True

    # -- standby -----------------------------------------------------------------------
    async def acquire(self, stop: asyncio.Event | None = None) -> bool:
        """Poll until this process holds the Lease (True) or ``stop`` is set (False)."""
        logged_holder: str | None = None
        while stop is None or not stop.is_set():
            try:
                if await self.try_acquire_or_renew():
                    return True
            except Exception as exc:  # noqa: BLE001 - the API may be away for a while; keep trying
                log.warning(
                    "could not read the leader Lease %s/%s: %s", self.settings.namespace, self.settings.name, exc
                )
            if self.holder and self.holder != logged_holder:
                log.info("standby: %s holds the leader Lease; waiting", self.holder)
                logged_holder = self.holder
            wait = self.settings.retry_period * (1 + JITTER * random.random())  # noqa: S311 - not crypto
            expiry = self.expires_in()
            if 0 < expiry < wait:
                wait = expiry + 0.05  # look again right when it may be taken
            if stop is None:
                await self.sleep(wait)
            else:
                try:
                    await asyncio.wait_for(stop.wait(), wait)
                except TimeoutError:
                    pass
        return False

    # -- leader ------------------------------------------------------------------------
    async def hold(self) -> str:
        """Renew every ``retry_period`` while leading. Returns (after calling ``on_lost``, which
        exits the process in production) the reason leadership was lost."""
        while True:
            await self.sleep(self.settings.retry_period)
            if not self.is_leader:
                return "released"
            ok = False
            remaining = self.renewed_at + self.settings.renew_deadline - self.clock()
            if remaining > 0:
                try:
                    ok = await asyncio.wait_for(self.try_acquire_or_renew(), remaining)
                except TimeoutError:
                    log.warning("renewing the leader Lease timed out")
                except Exception as exc:  # noqa: BLE001 - retried until the renew deadline
                    log.warning("could not renew the leader Lease: %s", exc)
            if self._lost_to is not None:
                return self._lose(f"the Lease is now held by {self._lost_to}")
            if not ok and self.clock() >= self.renewed_at + self.settings.renew_deadline:
                return self._lose(f"not renewed for {self.settings.renew_deadline:g} s (renew deadline)")

    def _lose(self, reason: str) -> str:
        self.is_leader = False
        LEADER.set(0)
        self._watchdog_stop.set()
        self.on_lost(reason)
        return reason

    def start_watchdog(self, interval: float = 0.25) -> None:
        """A thread that ends leadership at the renew deadline even when the event loop is blocked
        (a long computation, a stuck handler): writes made from worker threads must stop too."""

        def watch() -> None:
            while not self._watchdog_stop.wait(interval):
                if self.is_leader and self.clock() >= self.renewed_at + self.settings.renew_deadline + interval:
                    self._lose(f"not renewed for {self.settings.renew_deadline:g} s (watchdog)")
                    return

        self._watchdog_stop.clear()
        self._watchdog = threading.Thread(target=watch, name="lease-watchdog", daemon=True)
        self._watchdog.start()

    async def release(self) -> bool:
        """Hand the Lease back (empty holder, ``leaseDurationSeconds: 1``) so a standby takes it at
        its next look. Only after every writer of this process has stopped."""
        self._watchdog_stop.set()
        if not self.is_leader or self._record is None:
            return False
        self.is_leader = False
        LEADER.set(0)
        record: dict[str, Any] | None = self._record
        for _ in range(2):  # a renewal cancelled in flight may still land first: then re-read once
            if record is None or (record.get("spec") or {}).get("holderIdentity") != self.identity:
                return False  # not ours (any more): nothing to release
            body = copy.deepcopy(record)
            body.get("metadata", {}).pop("managedFields", None)
            spec = body.setdefault("spec", {})
            spec["holderIdentity"] = ""
            spec["leaseDurationSeconds"] = 1
            spec["renewTime"] = _micro_time(self.wall())
            try:
                self._record = await self.store.replace(body)
            except LeaseConflictError:
                try:
                    record = await self.store.get()
                except Exception as exc:  # noqa: BLE001 - the standby then waits out the lease duration
                    log.warning("could not release the leader Lease: %s", exc)
                    return False
                continue
            except Exception as exc:  # noqa: BLE001 - the standby then waits out the lease duration
                log.warning("could not release the leader Lease: %s", exc)
                return False
            log.info("released the leader Lease %s/%s", self.settings.namespace, self.settings.name)
            return True
        return False

    # -- probes ------------------------------------------------------------------------
    def ready(self) -> bool:
        """Readiness: the leader while its renewals are current, or a standby that read the Lease
        within the last lease duration (it can reach the API and may take over)."""
        now = self.clock()
        if self.is_leader:
            return now < self.renewed_at + self.settings.renew_deadline
        return self.last_contact is not None and now - self.last_contact < self.settings.lease_duration

    def state(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "leader": self.is_leader,
            "holder": self.holder,
            "lease": f"{self.settings.namespace}/{self.settings.name}",
            "ready": self.ready(),
        }


class KubeLeases:
    """The Lease through the official client, on a thread of its own: Lease renewals never queue
    behind S3, Prometheus or apply calls in the shared default executor."""

    def __init__(self, api: Any, namespace: str, name: str, timeout: float) -> None:
        from kubernetes import client

        self.api = api
        self.coord = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.name = name
        self.timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lease")

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        call = functools.partial(fn, *args, _request_timeout=self.timeout, **kwargs)
        return await loop.run_in_executor(self._pool, call)

    def _plain(self, obj: Any) -> dict[str, Any]:
        out: dict[str, Any] = self.api.sanitize_for_serialization(obj)
        return out

    async def get(self) -> dict[str, Any] | None:
        from kubernetes.client import ApiException

        try:
            return self._plain(await self._call(self.coord.read_namespaced_lease, self.name, self.namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        from kubernetes.client import ApiException

        try:
            return self._plain(
                await self._call(self.coord.create_namespaced_lease, self.namespace, body, field_manager=FIELD_MANAGER)
            )
        except ApiException as exc:
            if exc.status == 409:
                raise LeaseConflictError(str(exc.reason)) from None
            raise

    async def replace(self, body: dict[str, Any]) -> dict[str, Any]:
        from kubernetes.client import ApiException

        try:
            return self._plain(
                await self._call(
                    self.coord.replace_namespaced_lease, self.name, self.namespace, body, field_manager=FIELD_MANAGER
                )
            )
        except ApiException as exc:
            if exc.status == 409:
                raise LeaseConflictError(str(exc.reason)) from None
            raise


async def serve_health(url: str, elector: LeaderElector) -> Any:
    """``/healthz`` (liveness: the event loop answers) and ``/readyz`` (:meth:`LeaderElector.ready`)
    on the ``--liveness`` address, for leader and standby alike (kopf's own liveness endpoint only
    exists while kopf runs, i.e. on the leader). Returns the aiohttp runner (``cleanup()`` stops it)."""
    import urllib.parse

    from aiohttp import web

    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "0.0.0.0", parts.port or 80  # noqa: S104 - probed by the kubelet

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response(elector.state())

    async def readyz(_: web.Request) -> web.Response:
        return web.json_response(elector.state(), status=200 if elector.ready() else 503)

    app = web.Application()
    routes = {"/healthz": healthz, "/readyz": readyz}
    if parts.path and parts.path not in routes:
        routes[parts.path] = healthz
    app.add_routes([web.get(path, handler) for path, handler in routes.items()])
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner

"""The simulated fleet that follows the cluster: one simulated TGI server per Running pod.

Why it exists: in the sandbox, kwok pods have no process behind them. To close the loop
(operator -> Deployments -> pods -> replicas -> Prometheus -> operator) something must
play the kubelet and the container: this bridge watches one QwenDeployment's server pods
and, for each pod kwok reports Running, starts an in-process simulated TGI server
(:mod:`.server`) for *that pod's* replica (GPU type, shards, model, quantization and TGI
limits parsed from the pod by :mod:`.pod_replica`). The server's cold start is the time
left of the pod's ``sandbox.qwenops.io/ready-after`` annotation, so the port refuses
connections until the pod turns Ready, as TGI's does. Each server is registered in
Prometheus with the labels Kubernetes service discovery would give it (``namespace``,
``pod``). Traffic goes through :class:`~.balancer.LeastOutstandingBalancer`, which routes
only to replicas whose pods are Ready. When a pod goes away the bridge stops routing to
it, lets its requests in flight finish (TGI drains during its termination grace period),
then stops the server and drops the scrape target.

It also keeps the timeline a run is judged on: per-pool Running/Ready replicas and the
P95 SLO latency (TGI's queue wait, seen by the balancer) over a short sliding window.
Loopback only; everything it prints says SIMULATED. Reused by ``qwenctl sandbox demo``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..capacity.model import ReplicaModel
from ..render.names import selector_string
from ..sandbox.prometheus import Target
from .balancer import Backend, LeastOutstandingBalancer, Outcome
from .pod_replica import PodReplica, PodSpecError, cold_start_left, pod_replica
from .server import ServedTGI, SimulatedTGI, serve

#: Started a little before kwok flips the pod Ready, so a Ready pod never refuses connections
#: (``status.startTime`` has one-second resolution).
READY_MARGIN_SECONDS = 1.0


@dataclass
class Sample:
    """One point of the run's timeline (``t`` in seconds since the bridge started)."""

    t: float
    running: dict[str, int]  # pool -> pods with a server process
    ready: dict[str, int]  # pool -> pods Ready (routable)
    p95_seconds: float | None  # P95 SLO latency of requests that ended within the window
    completed: int  # requests that ended within the window


@dataclass
class _Replica:
    pod: PodReplica
    served: ServedTGI
    backend: Backend
    retiring: bool = False


@dataclass
class BridgeCounters:
    """What the balancer saw, over the whole run."""

    requests: int = 0
    ok: int = 0
    rejected: int = 0  # 429
    errors: int = 0  # 5xx from replicas or the balancer (no_backend included), other 4xx
    no_backend: int = 0  # 503: no Ready replica to route to
    servers_started: int = 0
    servers_stopped: int = 0
    by_status: dict[int, int] = field(default_factory=dict)


def p95(values: Sequence[float]) -> float | None:
    """Nearest-rank 95th percentile; None for no values (no signal, never 0)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


class FleetBridge:
    """Keeps one simulated server per Running pod of QwenDeployment ``name`` in ``namespace``."""

    def __init__(
        self,
        api_client: Any,
        namespace: str,
        name: str,
        set_targets: Callable[[list[Target]], None] | None = None,
        poll_seconds: float = 0.5,
        sample_seconds: float = 1.0,
        p95_window_seconds: float = 15.0,
        drain_seconds: float = 60.0,
        time_scale: float = 1.0,
        log: Callable[[str], None] = print,
    ) -> None:
        self.api_client = api_client
        self.namespace = namespace
        self.name = name
        self.set_targets = set_targets
        self.poll_seconds = poll_seconds
        self.sample_seconds = sample_seconds
        self.p95_window_seconds = p95_window_seconds
        self.drain_seconds = drain_seconds
        self.time_scale = time_scale
        self.log = log
        self.balancer = LeastOutstandingBalancer()
        self.replicas: dict[str, _Replica] = {}  # pod uid -> replica
        self.pods: dict[str, PodReplica] = {}  # last seen, by uid
        self.timeline: list[Sample] = []
        self.started_at = time.monotonic()
        self.poll_errors = 0
        self.servers_started = 0
        self.servers_stopped = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._retiring: set[asyncio.Task[None]] = set()
        self._rejected_pods: set[str] = set()
        self._targets: list[Target] | None = None
        self._last_counts: tuple[dict[str, int], dict[str, int]] | None = None

    # --- life cycle ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The balancer: point ``AsyncInferenceClient(base_url=...)`` here."""
        return self.balancer.url

    async def start(self) -> FleetBridge:
        await self.balancer.start()
        self.started_at = time.monotonic()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._poll_loop(), name="SIMULATED fleet bridge: pods"),
            loop.create_task(self._sample_loop(), name="SIMULATED fleet bridge: timeline"),
        ]
        self.log(f"SIMULATED fleet for {self.namespace}/{self.name}: balancer on {self.url}")
        return self

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for uid in list(self.replicas):
            self.replicas[uid].backend.routable = False
        await asyncio.gather(*(self._close(uid) for uid in list(self.replicas)), return_exceptions=True)
        for task in list(self._retiring):
            task.cancel()
        await self.balancer.stop()
        self._publish_targets()

    async def __aenter__(self) -> FleetBridge:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- following the cluster -------------------------------------------------------------
    def _list_pods(self) -> list[dict[str, Any]]:
        from kubernetes import client

        resp: Any = client.CoreV1Api(self.api_client).list_namespaced_pod(
            self.namespace, label_selector=selector_string(self.name), _preload_content=False, _request_timeout=10
        )
        items: list[dict[str, Any]] = json.loads(resp.data)["items"]
        return items

    async def _poll_loop(self) -> None:
        while True:
            try:
                pods = await asyncio.to_thread(self._list_pods)
            except Exception as exc:  # noqa: BLE001 - the API server may blip; keep following
                self.poll_errors += 1
                if self.poll_errors <= 3:
                    self.log(f"SIMULATED fleet: listing pods failed ({type(exc).__name__}: {exc}); retrying")
            else:
                await self.sync(pods)
            await asyncio.sleep(self.poll_seconds)

    async def sync(self, pods: list[dict[str, Any]]) -> None:
        """Converge the simulated servers to ``pods`` (the API's JSON): start, route, retire."""
        seen: dict[str, PodReplica] = {}
        for raw in pods:
            try:
                rep = pod_replica(raw)
            except (PodSpecError, ValueError, KeyError) as exc:
                uid = str((raw.get("metadata") or {}).get("uid"))
                if uid not in self._rejected_pods:
                    self._rejected_pods.add(uid)
                    self.log(f"SIMULATED fleet: cannot simulate this pod: {exc}")
                continue
            seen[rep.uid] = rep
        self.pods = seen
        for uid, rep in seen.items():
            if rep.running and uid not in self.replicas and uid not in self._rejected_pods:
                await self._start(rep)
            if uid in self.replicas and not self.replicas[uid].retiring:
                replica = self.replicas[uid]
                replica.pod = rep
                replica.backend.routable = rep.ready and rep.running
        for uid, replica in list(self.replicas.items()):
            gone = uid not in seen or not seen[uid].running
            if gone and not replica.retiring:
                replica.retiring = True
                replica.backend.routable = False  # endpoints drop a terminating pod at once
                task = asyncio.get_running_loop().create_task(self._retire(uid))
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
        self._publish_targets()

    async def _start(self, rep: PodReplica) -> None:
        try:
            model = ReplicaModel.build(rep.model, rep.gpu, rep.shards, rep.quantization, **dict(rep.limits))
        except (ValueError, KeyError) as exc:
            self._rejected_pods.add(rep.uid)
            self.log(f"SIMULATED fleet: pod {rep.name} asks for a replica the model rejects: {exc}")
            return
        wall_left = max(0.0, cold_start_left(rep, time.time()) - READY_MARGIN_SECONDS)
        sim = SimulatedTGI(model, time_scale=self.time_scale, cold_start_seconds=wall_left * self.time_scale)
        served = await serve(sim, "127.0.0.1", 0)
        backend = Backend(rep.name, served.base_url, pool=rep.pool, routable=False)
        self.balancer.backends[rep.name] = backend
        self.replicas[rep.uid] = _Replica(rep, served, backend)
        self.servers_started += 1
        self.log(
            f"SIMULATED replica for pod {rep.name}: {model.model.name} {model.quantization} on "
            f"{model.shards}x {model.gpu.name} at {served.base_url} (loading for {wall_left:.1f}s)"
        )

    async def _retire(self, uid: str) -> None:
        backend = self.replicas[uid].backend
        try:
            async with asyncio.timeout(self.drain_seconds):
                await backend.drained()
        except TimeoutError:
            self.log(f"SIMULATED replica {backend.name}: {backend.outstanding} request(s) still running after drain")
        await self._close(uid)

    async def _close(self, uid: str) -> None:
        replica = self.replicas.pop(uid, None)
        if replica is None:
            return
        self.balancer.backends.pop(replica.backend.name, None)
        await replica.served.close()
        self.servers_stopped += 1
        self.log(f"SIMULATED replica for pod {replica.pod.name} stopped ({replica.backend.served} requests served)")
        self._publish_targets()

    def _publish_targets(self) -> None:
        targets = [
            Target(f"127.0.0.1:{r.served.port}", {"namespace": r.pod.namespace, "pod": r.pod.name})
            for r in sorted(self.replicas.values(), key=lambda r: r.pod.name)
        ]
        if targets != self._targets and self.set_targets is not None:
            self.set_targets(targets)
            self._targets = targets

    # --- what a run is judged on -----------------------------------------------------------
    def counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """(running, ready) replicas per pool right now."""
        running: dict[str, int] = {}
        ready: dict[str, int] = {}
        for r in self.replicas.values():
            if r.retiring:
                continue
            running[r.pod.pool] = running.get(r.pod.pool, 0) + 1
            if r.backend.routable:
                ready[r.pod.pool] = ready.get(r.pod.pool, 0) + 1
        return running, ready

    def window(self, now: float | None = None) -> list[Outcome]:
        """Successful requests that ended within the last ``p95_window_seconds``."""
        now = time.monotonic() if now is None else now
        start = now - self.p95_window_seconds
        return [o for o in self.balancer.outcomes if o.at >= start and o.status == 200]

    def sample(self) -> Sample:
        now = time.monotonic()
        recent = self.window(now)
        running, ready = self.counts()
        queue_waits = [o.queue_seconds for o in recent if o.queue_seconds is not None]
        return Sample(now - self.started_at, running, ready, p95(queue_waits), len(recent))

    async def _sample_loop(self) -> None:
        while True:
            s = self.sample()
            self.timeline.append(s)
            if self._last_counts != (s.running, s.ready):
                self._last_counts = (s.running, s.ready)
                pools = ", ".join(f"{p} {s.ready.get(p, 0)}/{n} ready" for p, n in sorted(s.running.items())) or "none"
                self.log(f"SIMULATED fleet at t={s.t:.0f}s: {pools}")
            await asyncio.sleep(self.sample_seconds)

    def counters(self) -> BridgeCounters:
        c = BridgeCounters(
            requests=self.balancer.no_backend,
            errors=self.balancer.no_backend,
            no_backend=self.balancer.no_backend,
            servers_started=self.servers_started,
            servers_stopped=self.servers_stopped,
        )
        for o in self.balancer.outcomes:
            c.requests += 1
            c.by_status[o.status] = c.by_status.get(o.status, 0) + 1
            if o.status == 200:
                c.ok += 1
            elif o.status == 429:
                c.rejected += 1
            else:
                c.errors += 1
        return c

"""The simulated fleet that follows the cluster: one simulated TGI server per Running pod.

Why it exists: in the sandbox, kwok pods have no process behind them. To close the loop
(operator -> Deployments -> pods -> replicas -> Prometheus -> operator) something must
play the kubelet and the container: this bridge watches one QwenDeployment's server pods
and, for each pod kwok reports Running, starts an in-process simulated TGI server
(:mod:`.server`) for *that pod's* replica (GPU type, shards, model, quantization and TGI
limits parsed from the pod by :mod:`.pod_replica`). The server's cold start is the time
left of the pod's ``sandbox.qwenops.io/ready-after`` annotation, so the port refuses
connections until the pod turns Ready, as TGI's does. Each server, and each running router
process, is registered in Prometheus with the labels Kubernetes service discovery would give
its pod (``namespace``, ``pod``): one target list, servers and routers merged
(:meth:`FleetBridge.scrape_targets`), republished whenever either set changes, so the
autoscaler reads the router's held requests, TTFT and request rate as it would in a cluster.

The data path is the user's: client -> a router pod (``qwenctl router``, started exactly as
the rendered ``<name>-router`` Deployment starts it, by :class:`~.router_bridge.RouterBridge`,
with the router's own ServiceAccount) -> the server pods the router discovers from the API
server. **The only stand-in is how a pod address is dialled**: the sandbox has no pod
network, so once a pod's simulated server has its port, this bridge writes
``sandbox.qwenops.io/dial: http://127.0.0.1:PORT`` on the pod and the router runs with
``QWEN_ROUTER_DIAL=annotation`` (it dials that URL instead of ``podIP:port``). Routing,
holding, retries, endpoint discovery and RBAC are the shipped router's.

When a pod goes away the router stops sending to it (it watches the pod); the bridge lets
the server's requests in flight finish (TGI drains during its termination grace period),
then stops the server and drops the scrape target.

It also keeps the timeline a run is judged on: per-pool Running/Ready replicas and the
P95 SLO latency over a short sliding window, from the per-request outcomes the load
generator reports (:meth:`FleetBridge.record`: status, TGI's ``x-queue-time`` passed
through by the router, client-side times). Loopback only; everything it prints says
SIMULATED. Reused by ``qwenctl sandbox demo`` and the closed-loop e2e.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..capacity.model import ReplicaModel
from ..render.names import serving_selector_string
from ..router.discovery import DIAL_ANNOTATION
from ..sandbox.prometheus import Target
from .loadgen import Outcome
from .pod_replica import PodReplica, PodSpecError, cold_start_left, pod_replica
from .router_bridge import RouterBridge
from .server import ServedTGI, SimulatedTGI, serve

#: Started a little before kwok flips the pod Ready, so a Ready pod never refuses connections
#: (``status.startTime`` has one-second resolution).
READY_MARGIN_SECONDS = 1.0
#: A retiring server must be idle this long before it stops: the router may still send it a
#: request between the pod's deletion and the watch event reaching it.
IDLE_SETTLE_SECONDS = 1.0


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
    retiring: bool = False

    @property
    def routable(self) -> bool:
        """Ready and not going away: the router's endpoint set (it watches the same pod)."""
        return self.pod.ready and self.pod.running and not self.retiring

    @property
    def in_flight(self) -> int:
        return int(self.served.sim.engine.in_flight)


@dataclass
class BridgeCounters:
    """The run's requests: per-request outcomes (client side) and the routers' own counts."""

    requests: int = 0
    ok: int = 0
    rejected: int = 0  # 429
    errors: int = 0  # anything else: 5xx (503: the router held it past its hold timeout), other 4xx, no answer
    servers_started: int = 0
    servers_stopped: int = 0
    routers_started: int = 0
    by_status: dict[int, int] = field(default_factory=dict)  # client side; 0: no HTTP answer
    router_by_code: dict[str, int] = field(default_factory=dict)  # qwen_router_requests_total, all routers


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
        workdir: Path | None = None,
        routers: bool = True,
        history: int = 100_000,
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
        self.workdir = workdir
        self.router_bridge: RouterBridge | None = None
        self._want_routers = routers and api_client is not None
        self.outcomes: deque[Outcome] = deque(maxlen=history)
        self.dial_urls: dict[str, str] = {}  # pod name -> the URL written to its dial annotation
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
    def target(self) -> str:
        """A Ready router pod's URL (round-robin, as the client Service spreads connections): pass
        this method as the load generator's target. ``LookupError`` when no router is Ready."""
        if self.router_bridge is None:
            raise LookupError("no routers: this bridge was started without a cluster")
        return self.router_bridge.pick()

    def routers_ready(self) -> int:
        return len(self.router_bridge.ready_urls()) if self.router_bridge is not None else 0

    def record(self, outcome: Outcome) -> None:
        """One request's outcome, as the client saw it (the load generator's ``on_outcome``)."""
        self.outcomes.append(outcome)

    async def start(self) -> FleetBridge:
        self.started_at = time.monotonic()
        if self._want_routers:
            workdir = self.workdir or Path(tempfile.mkdtemp(prefix="qwen-routers-"))
            routers = RouterBridge(
                self.api_client, self.namespace, self.name, workdir, log=self.log, on_change=self._publish_targets
            )
            self.router_bridge = await routers.start()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._sample_loop(), name="SIMULATED fleet bridge: timeline")]
        if self.api_client is not None:  # without a cluster the caller drives sync() itself
            self._tasks.append(loop.create_task(self._poll_loop(), name="SIMULATED fleet bridge: pods"))
        how = "through its router pods (qwenctl router)" if self._want_routers else "without routers"
        self.log(f"SIMULATED fleet for {self.namespace}/{self.name}: traffic {how}")
        return self

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.router_bridge is not None:
            await self.router_bridge.stop()  # first: nothing is routed to servers that are stopping
        await asyncio.gather(*(self._close(uid) for uid in list(self.replicas)), return_exceptions=True)
        for task in list(self._retiring):
            task.cancel()
        self._publish_targets()

    async def __aenter__(self) -> FleetBridge:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- following the cluster -------------------------------------------------------------
    def _list_pods(self) -> list[dict[str, Any]]:
        from kubernetes import client

        resp: Any = client.CoreV1Api(self.api_client).list_namespaced_pod(
            self.namespace,
            label_selector=serving_selector_string(self.name),  # canary pods run on GPUs too
            _preload_content=False,
            _request_timeout=10,
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
                self.replicas[uid].pod = rep
        for uid, replica in list(self.replicas.items()):
            gone = uid not in seen or not seen[uid].running
            if gone and not replica.retiring:
                replica.retiring = True  # the router drops a deleted or terminating pod on its watch event
                task = asyncio.get_running_loop().create_task(self._retire(uid))
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
        self._publish_targets()

    async def _start(self, rep: PodReplica) -> None:
        try:
            model = ReplicaModel.build_for(
                rep.chat.engine, rep.model, rep.gpu, rep.shards, rep.quantization, **dict(rep.limits)
            )
        except (ValueError, KeyError) as exc:
            self._rejected_pods.add(rep.uid)
            self.log(f"SIMULATED fleet: pod {rep.name} asks for a replica the model rejects: {exc}")
            return
        wall_left = max(0.0, cold_start_left(rep, time.time()) - READY_MARGIN_SECONDS)
        sim = SimulatedTGI(
            model,
            time_scale=self.time_scale,
            cold_start_seconds=wall_left * self.time_scale,
            chat=rep.chat,  # the engine too: a vllm pod gets vLLM's API and metrics (sim.vllm_api)
            served_model_name=rep.served_model_name,
        )
        served = await serve(sim, "127.0.0.1", 0)
        self.replicas[rep.uid] = _Replica(rep, served)
        self.servers_started += 1
        await self._annotate_dial(rep, served.base_url)
        self.log(
            f"SIMULATED replica for pod {rep.name}: {model.model.name} {model.quantization} on "
            f"{model.shards}x {model.gpu.name} at {served.base_url} (loading for {wall_left:.1f}s)"
        )

    def _patch_dial(self, pod: str, url: str) -> None:
        from kubernetes import client

        body = {"metadata": {"annotations": {DIAL_ANNOTATION: url}}}
        client.CoreV1Api(self.api_client).patch_namespaced_pod(pod, self.namespace, body, _request_timeout=10)

    async def _annotate_dial(self, rep: PodReplica, url: str) -> None:
        """Play the pod network: tell the router (``QWEN_ROUTER_DIAL=annotation``) where this pod listens."""
        self.dial_urls[rep.name] = url
        if self.api_client is None:
            return
        for attempt in range(5):
            try:
                await asyncio.to_thread(self._patch_dial, rep.name, url)
                return
            except Exception as exc:  # noqa: BLE001 - retried; the pod may also be gone already
                if getattr(exc, "status", None) == 404:
                    return
                if attempt == 4:
                    self.log(f"SIMULATED replica for pod {rep.name}: cannot write its dial annotation: {exc}")
                await asyncio.sleep(0.5)

    async def _retire(self, uid: str) -> None:
        replica = self.replicas[uid]
        deadline = time.monotonic() + self.drain_seconds
        idle_since: float | None = None
        while time.monotonic() < deadline:
            now = time.monotonic()
            if replica.in_flight:
                idle_since = None
            elif idle_since is None:
                idle_since = now
            elif now - idle_since >= IDLE_SETTLE_SECONDS:
                break
            await asyncio.sleep(0.1)
        else:
            self.log(f"SIMULATED replica {replica.pod.name}: {replica.in_flight} request(s) still running after drain")
        await self._close(uid)

    async def _close(self, uid: str) -> None:
        replica = self.replicas.pop(uid, None)
        if replica is None:
            return
        await replica.served.close()
        self.servers_stopped += 1
        served = replica.served.sim.engine.completed
        self.log(f"SIMULATED replica for pod {replica.pod.name} stopped ({served} requests served)")
        self._publish_targets()

    def scrape_targets(self) -> list[Target]:
        """What Prometheus scrapes: every simulated server, then every running router process
        (``set_targets`` replaces the whole list, so both sets always go together)."""
        targets = [
            Target(f"127.0.0.1:{r.served.port}", {"namespace": r.pod.namespace, "pod": r.pod.name})
            for r in sorted(self.replicas.values(), key=lambda r: r.pod.name)
        ]
        if self.router_bridge is not None:
            targets += self.router_bridge.targets()
        return targets

    def _publish_targets(self) -> None:
        targets = self.scrape_targets()
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
            if r.routable:
                ready[r.pod.pool] = ready.get(r.pod.pool, 0) + 1
        return running, ready

    def window(self, now: float | None = None) -> list[Outcome]:
        """Successful requests that ended within the last ``p95_window_seconds``."""
        now = time.monotonic() if now is None else now
        start = now - self.p95_window_seconds
        # copy() is one C call (atomic under the GIL): the demo samples from a worker thread while the
        # event loop appends outcomes, and iterating the live deque raised "deque mutated during iteration"
        return [o for o in self.outcomes.copy() if o.at >= start and o.status == 200]

    def sample(self) -> Sample:
        now = time.monotonic()
        recent = self.window(now)
        running, ready = self.counts()
        queue_waits = [w for w in (o.wait_seconds for o in recent) if w is not None]
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
        """Every recorded outcome, plus the routers' own counts as last read (see :meth:`scrape_routers`)."""
        rb = self.router_bridge
        c = BridgeCounters(
            servers_started=self.servers_started,
            servers_stopped=self.servers_stopped,
            routers_started=rb.started if rb is not None else 0,
            router_by_code=rb.requests_by_code() if rb is not None else {},
        )
        for o in self.outcomes.copy():
            c.requests += 1
            c.by_status[o.status] = c.by_status.get(o.status, 0) + 1
            if o.status == 200:
                c.ok += 1
            elif o.status == 429:
                c.rejected += 1
            else:
                c.errors += 1
        return c

    async def scrape_routers(self) -> BridgeCounters:
        """Read every router's ``/metrics`` now, then :meth:`counters`."""
        if self.router_bridge is not None:
            await self.router_bridge.scrape()
        return self.counters()

"""A least-outstanding-requests HTTP proxy on loopback: the simulated fleet's Service.

Why it exists: users reach TGI pods through a Kubernetes Service (or a gateway), and
the closed-loop e2e and the demo must send their traffic the same way: one URL, behind
it only the replicas whose pods are Ready. kube-proxy has no notion of load; gateways
such as Envoy's ``LEAST_REQUEST`` (and the Gateway API inference extension) pick the
endpoint with the fewest requests in flight, which is what keeps a freshly Ready replica
from idling while an old one queues. This proxy does that, forwards any path unchanged
(``/generate``, ``/v1/chat/completions``, streams included) and records, per request,
the status and TGI's ``x-queue-time`` header (the wait before the first batch: the SLO
signal the autoscaler reads from Prometheus). Every response it adds says SIMULATED.

A backend that is removed (pod deleted) stops receiving requests at once and keeps the
ones in flight: the caller drains it (see :meth:`Backend.drained`) before stopping it, as
TGI drains during its termination grace period.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections import deque
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

#: Hop-by-hop headers (RFC 9110 7.6.1) and those aiohttp recomputes: never forwarded.
_HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
        "Content-Encoding",
    )
)


@dataclass
class Backend:
    """One replica behind the proxy."""

    name: str  # the pod name
    url: str  # http://127.0.0.1:PORT
    pool: str = ""
    routable: bool = False  # pod Ready and not being deleted
    outstanding: int = 0
    served: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._idle.set()

    async def drained(self) -> None:
        """Return once no request is in flight here (bound it with ``asyncio.timeout``)."""
        await self._idle.wait()


@dataclass(frozen=True)
class Outcome:
    """One proxied request: when it ended, where it went, how it went."""

    at: float  # time.monotonic() when the response ended
    backend: str
    status: int  # HTTP status returned to the client (502 when the backend failed)
    seconds: float  # wall time through the proxy
    queue_seconds: float | None  # TGI's x-queue-time (the SLO latency), None when absent


class LeastOutstandingBalancer:
    """The proxy: ``await start()`` gives ``url``; ``backends`` is edited by its owner."""

    def __init__(self, host: str = "127.0.0.1", history: int = 100_000) -> None:
        self.host = host
        self.port = 0
        self.backends: dict[str, Backend] = {}
        self.outcomes: deque[Outcome] = deque(maxlen=history)
        self.no_backend = 0  # requests answered 503 because no replica was Ready
        self._rr = itertools.count()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def pick(self) -> Backend | None:
        """The routable backend with the fewest requests in flight (round-robin among ties)."""
        ready = sorted((b for b in self.backends.values() if b.routable), key=lambda b: b.name)
        if not ready:
            return None
        least = min(b.outstanding for b in ready)
        ties = [b for b in ready if b.outstanding == least]
        return ties[next(self._rr) % len(ties)]

    async def start(self) -> LeastOutstandingBalancer:
        # no total timeout: a queued LLM request may legitimately take minutes
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            connector=aiohttp.TCPConnector(limit=0),
            auto_decompress=False,
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        sock.setblocking(False)
        await web.SockSite(self._runner, sock).start()
        self.port = int(sock.getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        backend = self.pick()
        if backend is None:
            self.no_backend += 1
            body = {"error": "No Ready replica behind the SIMULATED balancer", "error_type": "unhealthy"}
            return web.json_response(body, status=503, headers={"x-simulated": "true"})
        started = time.monotonic()
        backend.outstanding += 1
        backend._idle.clear()
        status, queue_s = 502, None
        try:
            resp, status, queue_s = await self._forward(request, backend)
            return resp
        finally:
            backend.outstanding -= 1
            backend.served += 1
            if backend.outstanding == 0:
                backend._idle.set()
            self.outcomes.append(Outcome(time.monotonic(), backend.name, status, time.monotonic() - started, queue_s))

    async def _forward(self, request: web.Request, backend: Backend) -> tuple[web.StreamResponse, int, float | None]:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        body = await request.read()
        resp: web.StreamResponse | None = None
        try:
            async with self._session.request(
                request.method, backend.url + request.rel_url.path_qs, headers=headers, data=body
            ) as upstream:
                out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
                out_headers["x-simulated"] = "true"
                out_headers["x-served-by"] = backend.name
                resp = web.StreamResponse(status=upstream.status, headers=out_headers)
                await resp.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
                queue_ms = upstream.headers.get("x-queue-time")
                return resp, upstream.status, float(queue_ms) / 1000.0 if queue_ms is not None else None
        except (aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
            if resp is not None and resp.prepared:  # failed mid-body: the client sees a cut response
                return resp, 502, None
            message = f"SIMULATED balancer: replica {backend.name} failed: {type(exc).__name__}: {exc}"
            body_out = {"error": message, "error_type": "backend"}
            return web.json_response(body_out, status=502, headers={"x-simulated": "true"}), 502, None

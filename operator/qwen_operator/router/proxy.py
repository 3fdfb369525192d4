"""The router's HTTP proxy: pick an endpoint, hold when none can take the request, retry
before the first byte, stream through unbuffered, measure what the client waited.

Why it exists: see :mod:`qwen_operator.router`. This module is the I/O around the pure
:class:`~qwen_operator.router.picking.Picker`:

* **Pick** with the request's affinity key and estimated prompt tokens
  (:func:`~.picking.affinity_key`, :func:`~.picking.estimate_prompt_tokens`).
* **Hold** when the picker returns None (no Ready endpoint: scale from zero, every replica
  restarting; or every endpoint at its concurrency bound): the request waits, in arrival
  order, for an endpoint change or a finished request, bounded by ``hold_queue`` waiting
  requests and ``hold_timeout`` seconds; then 503 with ``Retry-After``. A request held
  means the client waits instead of failing, and the held count is the autoscaler's
  signal to add (or first create) replicas.
* **Retry** on connection refused, a reset before the first response byte, or a 429, to
  another endpoint (those tried are excluded), at most ``retries`` times. Never once the
  response has started: a generation is not idempotent for the client that saw half of it.
* **Stream**: the response is written to the client as each chunk arrives (SSE tokens are
  not buffered); response headers are forwarded as soon as the endpoint sends them.
* An endpoint that fails mid-response fails that request only: the client's connection is
  cut (so it sees a truncated response, never a falsely complete one) and it is counted.

Every path but ``/health`` and ``/metrics`` (the router's own) is proxied unchanged:
``/v1/chat/completions``, ``/v1/completions``, ``/generate``, ``/generate_stream``,
``/v1/models``, ``/info``...
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .discovery import EndpointSource, Target
from .metrics import NO_POOL, RouterMetrics, StateView
from .picking import Endpoint, Picker, PoolCapacity, affinity_key, estimate_prompt_tokens

log = logging.getLogger("qwen_operator.router")

#: Hop-by-hop headers (RFC 9110 7.6.1) and those the proxy recomputes: never forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "expect",
    }
)
#: Response header naming the pod that answered (like Envoy's x-envoy-upstream-host).
ENDPOINT_HEADER = "x-qwen-endpoint"
#: ``Retry-After`` seconds when nothing is Ready (a replica takes minutes to load a model)
#: and when every endpoint is busy (a slot frees within seconds).
RETRY_AFTER_NO_ENDPOINT_S = 10
RETRY_AFTER_BUSY_S = 1
#: A response with a Content-Length up to this size is read whole and sent in one write.
WHOLE_BODY_BYTES = 256 * 1024


@dataclass(frozen=True)
class RouterConfig:
    """The router's settings (``qwenctl router`` flags; ``spec.routing`` in the resource)."""

    affinity: bool = True
    load_bound: float = 1.25
    hold_queue: int = 256  # requests that may wait at once (0: no holding)
    hold_timeout: float = 30.0  # seconds one request may wait (0: no holding)
    retries: int = 2  # extra attempts on other endpoints, before the first response byte
    canary_percent: float = 0.0
    connect_timeout: float = 5.0  # seconds to open a connection to an endpoint
    max_body_bytes: int = 64 * 1024 * 1024

    @property
    def holding(self) -> bool:
        return self.hold_queue > 0 and self.hold_timeout > 0


class _Waiter:
    """One held request: woken (``event``) when it may find an endpoint."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = asyncio.Event()


class _RetryError(Exception):
    """This attempt failed before the first response byte: try another endpoint."""

    def __init__(self, reason: str, status: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status
        self.message = message


def _error(status: int, message: str, error_type: str, headers: Mapping[str, str] | None = None) -> web.Response:
    """An error in TGI's shape (``error``, ``error_type``), which OpenAI clients also surface."""
    body = json.dumps({"error": message, "error_type": error_type})
    return web.Response(status=status, text=body, content_type="application/json", headers=headers)


def _ttft(elapsed: float, headers: Mapping[str, str]) -> float:
    """The TTFT observed for a response whose first byte came ``elapsed`` s after the request.

    Why: a non-streamed answer reaches the client whole, its first byte with the last token,
    so ``elapsed`` grows with the reply's length, which no replica count shortens (a 64-token
    reply takes seconds at rest) and the autoscaler, reading this histogram, would scale to
    maxReplicas on a quiet fleet. When the engine says how long the request spent inside it
    after its queue (TGI's ``x-total-time`` minus ``x-queue-time``, ms), that generation time
    is taken out: what remains is the wait added in front of the work (held here, retries,
    hops, the engine's queue), which more replicas do shorten: TGI's own SLO signal (its
    queue wait) plus the hold. Streamed (SSE) answers and answers without those headers:
    ``elapsed``, the real time to first byte."""
    if "text/event-stream" in headers.get("Content-Type", ""):
        return elapsed
    try:
        total = float(headers["x-total-time"]) / 1000.0
        queue = float(headers["x-queue-time"]) / 1000.0
    except (KeyError, ValueError):
        return elapsed
    if not (0.0 <= queue <= total):
        return elapsed
    return max(0.0, elapsed - (total - queue))


def _forward_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """Headers minus hop-by-hop ones and those named in ``Connection``."""
    named = {h.strip().lower() for h in headers.get("Connection", "").split(",") if h.strip()}
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in headers.items():
        lk = k.lower()
        if lk not in HOP_BY_HOP and lk not in named:
            out.add(k, v)
    return out


class Router:
    """The proxy: feed it endpoints (an :class:`EndpointSource` or :meth:`update_targets`),
    ``await start()``, send HTTP to ``url``."""

    def __init__(self, config: RouterConfig | None = None, metrics: RouterMetrics | None = None) -> None:
        self.config = config or RouterConfig()
        self.metrics = metrics or RouterMetrics()
        self.picker = Picker(
            affinity=self.config.affinity, load_bound=self.config.load_bound, canary_percent=self.config.canary_percent
        )
        self.synced = False  # the source delivered the endpoints at least once
        self.draining = False  # shutting down: /health fails so traffic moves away
        self.port = 0
        self.host = "127.0.0.1"
        self._targets: dict[str, Target] = {}
        self._waiters: dict[_Waiter, None] = {}  # held requests, in arrival order
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._source_task: asyncio.Task[None] | None = None
        self.metrics.watch_state(StateView(self.held, self._in_flight, self._endpoints_per_pool))

    # --- the endpoint table (EndpointSink) ------------------------------------------------
    def update_targets(self, targets: Mapping[str, Target]) -> None:
        """Make the Ready set ``targets``: removed ones get no new requests (those in flight finish)."""
        for name in list(self._targets):
            if name not in targets:
                del self._targets[name]
                self.picker.remove(name)
        for name, t in targets.items():
            if self._targets.get(name) != t:
                self._targets[name] = t
                self.picker.add(Endpoint(name, t.pool, version=t.version, canary=t.canary))
        self.synced = True
        self._wake_all()

    def update_pools(self, pools: Mapping[str, PoolCapacity], ttft_slo_seconds: float | None) -> None:
        self.picker.set_pools(pools)
        self.picker.ttft_slo_seconds = ttft_slo_seconds or 0.0
        self._wake_all()

    @property
    def targets(self) -> Mapping[str, Target]:
        return self._targets

    def held(self) -> int:
        return len(self._waiters)

    def _in_flight(self) -> Iterable[tuple[str, str, int]]:
        for name, ep in self.picker.endpoints.items():
            yield name, ep.pool, ep.outstanding

    def _endpoints_per_pool(self) -> Mapping[str, int]:
        out: dict[str, int] = {}
        for t in self._targets.values():
            out[t.pool] = out.get(t.pool, 0) + 1
        return out

    # --- life cycle ---------------------------------------------------------------------
    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, source: EndpointSource | None = None, shutdown_timeout: float = 30
    ) -> Router:
        """Listen on ``host:port`` (0: a free port, see :attr:`port`) and run ``source``."""
        self._session = aiohttp.ClientSession(
            # no total timeout: a queued LLM request may legitimately take minutes
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.config.connect_timeout),
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            auto_decompress=False,  # bytes pass through with their Content-Encoding
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        )
        if source is not None:
            self._source_task = asyncio.create_task(self._run_source(source))
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=shutdown_timeout)
        await self._runner.setup()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.setblocking(False)
        await web.SockSite(self._runner, sock, backlog=1024).start()
        self.host, self.port = host, int(sock.getsockname()[1])
        return self

    async def _run_source(self, source: EndpointSource) -> None:
        try:
            await source.run(self)
        except asyncio.CancelledError:
            raise
        except Exception:  # discovery must never take the router down silently
            log.exception("endpoint discovery stopped")
            raise

    async def stop(self) -> None:
        self.draining = True
        if self._source_task is not None:
            self._source_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._source_task
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # --- the router's own routes ----------------------------------------------------------
    async def _health(self, request: web.Request) -> web.Response:
        """200 while there is a Ready endpoint or the router can hold requests for one (so its
        own pods stay Ready through a scale from zero); 503 before discovery's first answer,
        while draining, or with no endpoint and holding off."""
        if self.draining:
            return _error(503, "router is shutting down", "unhealthy")
        if self._targets:
            return web.json_response({"status": "ok", "endpoints": len(self._targets), "held": self.held()})
        if self.synced and self.config.holding:
            return web.json_response({"status": "holding", "endpoints": 0, "held": self.held()})
        why = "no Ready endpoint and holding is off" if self.synced else "endpoint discovery has not answered yet"
        return _error(503, why, "unhealthy")

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    # --- holding ---------------------------------------------------------------------------
    def _wake_all(self) -> None:
        for w in self._waiters:
            w.event.set()

    def _wake_first(self, after: _Waiter | None = None) -> None:
        """A slot freed: wake the longest-waiting held request (after ``after``, when that one
        could not use it)."""
        passed = after is None
        for w in self._waiters:
            if passed and not w.event.is_set():
                w.event.set()
                return
            passed = passed or w is after

    def _gives_up(self, tried: list[str]) -> bool:
        """Every Ready endpoint was tried and failed: no point holding for them."""
        return bool(tried) and all(name in tried for name in self._targets)

    async def _acquire(
        self, request: web.Request, key: str | None, prompt_tokens: int, tried: list[str]
    ) -> tuple[Endpoint, Target] | web.Response | None:
        """An endpoint for this request, a 503 to answer (hold full or timed out), or None
        (every endpoint tried: the caller answers with the last failure)."""
        if not self._waiters:  # nobody waiting: no queue to respect
            ep = self.picker.pick(key=key, prompt_tokens=prompt_tokens, exclude=tried)
            if ep is not None:
                return ep, self._targets[ep.name]
        if self._gives_up(tried):
            return None
        cfg = self.config
        busy = bool(self._targets)
        retry_after = {"Retry-After": str(RETRY_AFTER_BUSY_S if busy else RETRY_AFTER_NO_ENDPOINT_S)}
        if not cfg.holding:
            self.metrics.rejected.labels("no_endpoint").inc()
            why = "every endpoint is at its concurrency limit" if busy else "no Ready endpoint"
            return _error(503, f"{why} (request holding is off)", "overloaded", retry_after)
        if len(self._waiters) >= cfg.hold_queue:
            self.metrics.rejected.labels("queue_full").inc()
            full = f"router hold queue is full ({cfg.hold_queue} requests waiting)"
            return _error(503, full, "overloaded", retry_after)
        waiter = _Waiter()
        self._waiters[waiter] = None
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + cfg.hold_timeout
        try:
            while True:
                if _client_gone(request):  # abandoned while held: never send it to a replica
                    return web.Response(status=499)
                ep = self.picker.pick(key=key, prompt_tokens=prompt_tokens, exclude=tried)
                if ep is not None:
                    return ep, self._targets[ep.name]
                if self._gives_up(tried):
                    return None
                if waiter.event.is_set():  # woken but nothing for us: pass the wake-up on
                    waiter.event.clear()
                    self._wake_first(after=waiter)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    self.metrics.rejected.labels("hold_timeout").inc()
                    busy = bool(self._targets)
                    retry_after = {"Retry-After": str(RETRY_AFTER_BUSY_S if busy else RETRY_AFTER_NO_ENDPOINT_S)}
                    what = "an endpoint with room" if busy else "a Ready endpoint"
                    return _error(
                        503, f"no {what} within the hold timeout ({cfg.hold_timeout:g} s)", "overloaded", retry_after
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.event.wait(), remaining)
        finally:
            del self._waiters[waiter]
            self.metrics.hold_seconds.observe(loop.time() - started)

    # --- proxying --------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        body = await request.read()
        parsed: Any = None
        if body[:1] in (b"{", b"["):
            with contextlib.suppress(ValueError):
                parsed = json.loads(body)
        if not isinstance(parsed, dict):
            parsed = None
        key = affinity_key(parsed, request.headers) if self.config.affinity else None
        prompt_tokens = estimate_prompt_tokens(parsed)
        if parsed is not None:
            self.metrics.prompt_tokens.observe(prompt_tokens)
        headers = _forward_headers(request.headers)
        peer = request.remote
        if peer:
            prior = request.headers.get("X-Forwarded-For")
            headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
        tried: list[str] = []
        last: _RetryError | None = None
        while True:
            got = await self._acquire(request, key, prompt_tokens, tried)
            if got is None:  # every endpoint tried
                assert last is not None
                self.metrics.requests.labels(NO_POOL, str(last.status)).inc()
                return _error(last.status, last.message, "backend")
            if isinstance(got, web.Response):
                self.metrics.requests.labels(NO_POOL, str(got.status)).inc()
                return got
            ep, target = got
            # the last try: out of retries, or no other Ready endpoint to retry on
            last_try = len(tried) >= self.config.retries or all(n in tried or n == ep.name for n in self._targets)
            try:
                return await self._attempt(request, headers, body, ep, target, prompt_tokens, t0, last_try)
            except _RetryError as retry:
                self.metrics.retries.labels(retry.reason).inc()
                tried.append(ep.name)
                last = retry

    async def _attempt(
        self,
        request: web.Request,
        headers: CIMultiDict[str],
        body: bytes,
        ep: Endpoint,
        target: Target,
        prompt_tokens: int,
        t0: float,
        last_try: bool,
    ) -> web.StreamResponse:
        """One try at ``ep``: raises :class:`_RetryError` when it failed before the first response
        byte and another try is allowed; otherwise the response (or the failure) is final."""
        assert self._session is not None
        loop = asyncio.get_running_loop()
        m = self.metrics
        self.picker.acquire(ep, prompt_tokens)
        prefilled = False
        code: str | None = None  # the outcome counted in qwen_router_requests_total (None: retried)
        upstream: aiohttp.ClientResponse | None = None
        try:
            try:
                upstream = await self._session.request(
                    request.method, target.url + request.rel_url.raw_path_qs, headers=headers, data=body
                )
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                connect = isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)
                m.upstream_errors.labels(ep.pool, "connect" if connect else "response").inc()
                message = f"endpoint {ep.name} failed before responding: {type(exc).__name__}: {exc}"
                if not last_try:
                    raise _RetryError("connect" if connect else "reset", 502, message) from None
                code = "502"
                return _error(502, message, "backend")
            if upstream.status == 429 and not last_try:
                raise _RetryError("429", 429, f"endpoint {ep.name} is overloaded (429)")
            code = str(upstream.status)
            out_headers = _forward_headers(upstream.headers)
            length = upstream.headers.get("Content-Length")
            if length is not None and "chunked" not in upstream.headers.get("Transfer-Encoding", "").lower():
                out_headers["Content-Length"] = length
            out_headers[ENDPOINT_HEADER] = ep.name
            if length is not None and length.isdigit() and int(length) <= WHOLE_BODY_BYTES:
                # a complete, small body (a non-streamed completion): read it, then answer with
                # headers and body in one write (nothing to stream; one syscall instead of two)
                try:
                    data = await upstream.read()
                except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
                    m.upstream_errors.labels(ep.pool, "body").inc()
                    code = "502"
                    return _error(502, f"endpoint {ep.name} failed mid-response: {type(exc).__name__}", "backend")
                prefilled = True
                self.picker.prefilled(ep, prompt_tokens)
                m.ttft.labels(ep.pool, ep.version).observe(_ttft(loop.time() - t0, upstream.headers))
                del out_headers["Content-Length"]
                return web.Response(body=data, status=upstream.status, reason=upstream.reason, headers=out_headers)
            resp = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=out_headers)
            try:
                await resp.prepare(request)
                async for chunk in upstream.content.iter_any():
                    if not prefilled:
                        prefilled = True
                        self.picker.prefilled(ep, prompt_tokens)
                        m.ttft.labels(ep.pool, ep.version).observe(_ttft(loop.time() - t0, upstream.headers))
                    await resp.write(chunk)
                if not prefilled:  # an empty body: its end is the first byte
                    m.ttft.labels(ep.pool, ep.version).observe(_ttft(loop.time() - t0, upstream.headers))
                await resp.write_eof()
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
                if isinstance(exc, ConnectionResetError) and _client_gone(request):
                    code = "499"  # aiohttp's ClientConnectionResetError: writing to a client that left
                    return resp
                m.upstream_errors.labels(ep.pool, "body").inc()
                code = "aborted"
                log.warning("endpoint %s failed mid-response: %s: %s", ep.name, type(exc).__name__, exc)
                _cut(request)  # the client must see a truncated response, not a complete one
            except ConnectionResetError:  # writing to a client that went away
                code = "499"
            return resp
        finally:
            if upstream is not None:
                if code in ("499", "aborted"):
                    upstream.close()  # drop the connection: the engine stops generating for nobody
                else:
                    upstream.release()
            self.picker.release(ep, 0 if prefilled else prompt_tokens)
            if code is not None:
                m.requests.labels(ep.pool, code).inc()
            self._wake_first()


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _cut(request: web.Request) -> None:
    """Close the client's connection without finishing the response."""
    transport = request.transport
    if transport is not None:
        transport.abort()


def describe_targets(targets: Mapping[str, Target]) -> str:
    """``L40S: 2, A10G: 4`` (for logs)."""
    pools: dict[str, int] = {}
    for t in targets.values():
        pools[t.pool] = pools.get(t.pool, 0) + 1
    return ", ".join(f"{p}: {n}" for p, n in sorted(pools.items())) or "none"

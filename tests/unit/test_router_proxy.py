"""The router's proxy in-process, fed a static endpoint set, against real simulated TGI
servers (and a few purpose-built misbehaving backends) on loopback.

Everything runs on one background event loop (servers, router) so the official sync
clients (``huggingface_hub.InferenceClient``, ``http.client``) can call it as users do.
No timing assertions: unbuffered streaming is proven by a backend that will not finish a
stream until the client has received its first chunk through the router.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar
from urllib.error import HTTPError
from urllib.request import Request as HTTPRequest
from urllib.request import urlopen

import pytest
from aiohttp import web
from huggingface_hub import InferenceClient

from qwen_operator.capacity.model import ReplicaModel
from qwen_operator.cli import main as qwenctl
from qwen_operator.router.discovery import (
    DIAL_ANNOTATION,
    LABEL_CANARY,
    StaticEndpoints,
    Target,
    deployment_pools,
    pod_target,
)
from qwen_operator.router.picking import PoolCapacity
from qwen_operator.router.proxy import ENDPOINT_HEADER, Router, RouterConfig
from qwen_operator.sim.server import ServedTGI, SimulatedTGI, serve
from qwen_operator.testing.background import BackgroundLoop
from qwen_operator.testing.wait import wait_for

T = TypeVar("T")
SCALE = 50.0  # virtual seconds per wall second: short simulated replies


Loop = BackgroundLoop  # servers and the router live on it; sync clients call in


@pytest.fixture(scope="module")
def bg() -> Iterator[Loop]:
    loop = Loop()
    yield loop
    loop.close()


def a10g(**limits: Any) -> ReplicaModel:
    return ReplicaModel.build("Qwen3-14B", "A10G", 1, "fp8", **limits)


@pytest.fixture(scope="module")
def sims(bg: Loop) -> Iterator[list[ServedTGI]]:
    """Two simulated A10G replicas."""
    served = [
        bg.run(serve(SimulatedTGI(a10g(), time_scale=SCALE, cold_start_seconds=0.0, default_max_new_tokens=8)))
        for _ in range(2)
    ]
    yield served
    for s in served:
        bg.run(s.close())


class Backend:
    """A purpose-built aiohttp backend on loopback; counts the requests it got."""

    def __init__(self, bg: Loop, handler: Callable[[web.Request], Coroutine[Any, Any, web.StreamResponse]]) -> None:
        self.hits = 0

        async def counted(request: web.Request) -> web.StreamResponse:
            self.hits += 1
            return await handler(request)

        async def start() -> tuple[web.AppRunner, int]:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", counted)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            return runner, int(port)

        self.bg = bg
        self.runner, self.port = bg.run(start())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.bg.run(self.runner.cleanup())


class RouterUnderTest:
    def __init__(self, bg: Loop, targets: list[Target], config: RouterConfig | None = None, **pools: Any) -> None:
        self.bg = bg
        # affinity off by default: these tests pin which endpoint is tried first by capacity weight
        self.router = Router(config or RouterConfig(affinity=False))
        source = StaticEndpoints(targets, pools=dict(pools))
        bg.run(self.router.start(source=source, shutdown_timeout=1))
        wait_for("router synced", lambda: self.router.synced)

    @property
    def url(self) -> str:
        return self.router.url

    def metrics(self) -> str:
        return get(self.url + "/metrics")[1]

    def close(self) -> None:
        self.bg.run(self.router.stop())


@pytest.fixture
def make_router(bg: Loop) -> Iterator[Callable[..., RouterUnderTest]]:
    made: list[RouterUnderTest] = []

    def make(targets: list[Target], config: RouterConfig | None = None, **pools: Any) -> RouterUnderTest:
        r = RouterUnderTest(bg, targets, config, **pools)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def get(url: str) -> tuple[int, str, dict[str, str]]:
    try:
        with urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode(), dict(resp.headers)
    except HTTPError as err:
        return err.code, err.read().decode(), dict(err.headers)


def post(url: str, body: dict[str, Any], timeout: float = 20) -> tuple[int, dict[str, Any], dict[str, str]]:
    req = HTTPRequest(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except HTTPError as err:
        return err.code, json.loads(err.read()), dict(err.headers)


def sample(metrics: str, name: str, **labels: str) -> float:
    """The value of one series in Prometheus text format (0 when absent)."""
    for line in metrics.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        if series == name and not labels:
            return float(value)
        if series.startswith(name + "{") and all(f'{k}="{v}"' in series for k, v in labels.items()):
            return float(value)
    return 0.0


def dead_url() -> str:
    """A loopback port nobody listens on (connection refused)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


MESSAGES: list[dict[str, Any]] = [{"role": "user", "content": "What is continuous batching?"}]
CHAT: dict[str, Any] = {"messages": MESSAGES, "max_tokens": 5}


# --- real clients through the router -----------------------------------------------------------


def test_huggingface_inference_client_chat_stream_and_generate_through_the_router(
    sims: list[ServedTGI], make_router: Callable[..., RouterUnderTest]
) -> None:
    r = make_router([Target(f"sim-{i}", s.base_url, "A10G") for i, s in enumerate(sims)])
    client = InferenceClient(base_url=r.url)
    out = client.chat_completion(MESSAGES, max_tokens=7)
    assert out.choices[0].message.role == "assistant" and len((out.choices[0].message.content or "").split()) == 7
    stream = list(client.chat_completion(MESSAGES, max_tokens=6, stream=True))
    assert len(stream) == 6 and stream[-1].choices[0].finish_reason == "length"
    pieces = list(client.text_generation("hello there", max_new_tokens=9, stream=True))
    assert len(pieces) == 9
    text = client.text_generation("hello there", max_new_tokens=4)
    assert len(text.split()) == 4
    # both replicas served (least outstanding with equal weights spreads sequential requests)
    status, _, headers = post(r.url + "/generate", {"inputs": "hi", "parameters": {"max_new_tokens": 2}})
    status2, _, headers2 = post(r.url + "/generate", {"inputs": "hi", "parameters": {"max_new_tokens": 2}})
    assert status == status2 == 200
    assert {headers[ENDPOINT_HEADER], headers2[ENDPOINT_HEADER]} == {"sim-0", "sim-1"}
    assert headers["x-simulated"] == "true"  # the engine's own headers pass through


def test_other_paths_pass_through_unchanged(sims: list[ServedTGI], make_router: Callable[..., RouterUnderTest]) -> None:
    r = make_router([Target("sim-0", sims[0].base_url, "A10G")])
    for path in ("/v1/models", "/info"):
        direct = get(sims[0].base_url + path)
        routed = get(r.url + path)
        assert routed[0] == direct[0]
        if direct[0] == 200 and path == "/info":
            assert json.loads(routed[1])["model_id"] == json.loads(direct[1])["model_id"]
        else:
            assert routed[1] == direct[1]
    # a query string and a non-JSON body reach the engine as sent
    seen: list[tuple[str, bytes, str]] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append((request.path_qs, await request.read(), request.headers.get("X-Forwarded-For", "")))
        return web.Response(text="ok", headers={"Connection": "keep-alive", "x-custom": "1"})

    b = Backend(r.bg, echo)
    try:
        r2 = make_router([Target("echo", b.url, "A10G")])
        req = HTTPRequest(r2.url + "/v1/x?a=1&b=%20", data=b"not json", method="PUT")
        with urlopen(req, timeout=10) as resp:
            assert resp.read() == b"ok" and resp.headers["x-custom"] == "1"
        assert seen == [("/v1/x?a=1&b=%20", b"not json", "127.0.0.1")]
    finally:
        b.close()


# --- streaming -----------------------------------------------------------------------------------


def test_stream_chunks_pass_through_before_the_stream_ends(
    bg: Loop, make_router: Callable[..., RouterUnderTest]
) -> None:
    """The backend holds its stream open until the client has read the first event through
    the router: a buffering proxy would never deliver it and the test would time out."""
    released = threading.Event()

    async def gated(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"token": 0}\n\n')
        await asyncio.get_running_loop().run_in_executor(None, released.wait, 20)
        await resp.write(b'data: {"token": 1}\n\ndata: [DONE]\n\n')
        await resp.write_eof()
        return resp

    b = Backend(bg, gated)
    try:
        r = make_router([Target("gated", b.url, "A10G")])
        conn = http.client.HTTPConnection("127.0.0.1", r.router.port, timeout=10)
        conn.request("POST", "/generate_stream", body=b'{"inputs": "x"}', headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
        first = resp.readline()
        assert first == b'data: {"token": 0}\n'
        assert bg.call(lambda: r.router.picker.endpoints["gated"].outstanding) == 1  # still streaming
        released.set()
        rest = resp.read()
        assert rest == b'\ndata: {"token": 1}\n\ndata: [DONE]\n\n'
        conn.close()
        metrics = r.metrics()
        assert sample(metrics, "qwen_router_ttft_seconds_count", pool="A10G") == 1
        assert sample(metrics, "qwen_router_requests_total", pool="A10G", code="200") == 1
    finally:
        released.set()
        b.close()


# --- retries -----------------------------------------------------------------------------------------


def test_connection_refused_is_retried_on_another_endpoint(
    sims: list[ServedTGI], make_router: Callable[..., RouterUnderTest]
) -> None:
    # the dead endpoint's pool is the heavier one, so it is always tried first
    r = make_router(
        [Target("dead", dead_url(), "L40S"), Target("live", sims[0].base_url, "A10G")],
        L40S=PoolCapacity(weight=10.0),
        A10G=PoolCapacity(weight=1.0),
    )
    for _ in range(3):
        status, body, headers = post(r.url + "/v1/chat/completions", CHAT)
        assert status == 200 and headers[ENDPOINT_HEADER] == "live"
        assert body["object"] == "chat.completion"
    metrics = r.metrics()
    assert sample(metrics, "qwen_router_retries_total", reason="connect") == 3
    assert sample(metrics, "qwen_router_upstream_errors_total", pool="L40S", phase="connect") == 3
    assert sample(metrics, "qwen_router_requests_total", pool="A10G", code="200") == 3


def test_retries_exhausted_answers_502_and_zero_retries_never_retries(
    make_router: Callable[..., RouterUnderTest],
) -> None:
    r = make_router([Target("dead-1", dead_url(), "A10G"), Target("dead-2", dead_url(), "A10G")])
    status, body, _ = post(r.url + "/generate", {"inputs": "x"})
    assert status == 502 and "failed before responding" in body["error"]
    assert sample(r.metrics(), "qwen_router_retries_total", reason="connect") == 1  # both tried, then given up
    r0 = make_router([Target("dead-1", dead_url(), "A10G")], RouterConfig(affinity=False, retries=0))
    assert post(r0.url + "/generate", {"inputs": "x"})[0] == 502
    assert sample(r0.metrics(), "qwen_router_retries_total", reason="connect") == 0


def test_429_is_retried_on_another_endpoint_and_passed_on_when_out_of_retries(
    bg: Loop, sims: list[ServedTGI], make_router: Callable[..., RouterUnderTest]
) -> None:
    async def overloaded(request: web.Request) -> web.Response:
        return web.json_response({"error": "Model is overloaded", "error_type": "overloaded"}, status=429)

    b = Backend(bg, overloaded)
    try:
        pools = {"L40S": PoolCapacity(weight=10.0), "A10G": PoolCapacity(weight=1.0)}
        targets = [Target("busy", b.url, "L40S"), Target("live", sims[0].base_url, "A10G")]
        r = make_router(targets, **pools)
        status, _, headers = post(r.url + "/v1/chat/completions", CHAT)
        assert status == 200 and headers[ENDPOINT_HEADER] == "live" and b.hits == 1
        assert sample(r.metrics(), "qwen_router_retries_total", reason="429") == 1
        r0 = make_router(targets, RouterConfig(affinity=False, retries=0), **pools)
        status, body, headers = post(r0.url + "/v1/chat/completions", CHAT)
        assert status == 429 and body["error_type"] == "overloaded" and headers[ENDPOINT_HEADER] == "busy"
        assert sample(r0.metrics(), "qwen_router_requests_total", pool="L40S", code="429") == 1
    finally:
        b.close()


def test_no_retry_once_bytes_reached_the_client_and_the_router_survives(
    bg: Loop, sims: list[ServedTGI], make_router: Callable[..., RouterUnderTest]
) -> None:
    async def dies_mid_stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"token": 0}\n\n')
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()  # the pod dies mid-response
        return resp

    b = Backend(bg, dies_mid_stream)
    try:
        r = make_router(
            [Target("dying", b.url, "L40S"), Target("live", sims[0].base_url, "A10G")],
            L40S=PoolCapacity(weight=10.0),
            A10G=PoolCapacity(weight=1.0),
        )
        conn = http.client.HTTPConnection("127.0.0.1", r.router.port, timeout=10)
        conn.request("POST", "/generate_stream", body=b'{"inputs": "x"}', headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.headers[ENDPOINT_HEADER] == "dying"
        with pytest.raises(http.client.IncompleteRead):  # cut, never a falsely complete response
            resp.read()
        conn.close()
        assert b.hits == 1
        metrics = r.metrics()
        assert sample(metrics, "qwen_router_requests_total", pool="L40S", code="aborted") == 1
        assert sample(metrics, "qwen_router_upstream_errors_total", pool="L40S", phase="body") == 1
        assert sample(metrics, "qwen_router_retries_total", reason="reset") == 0
        assert sample(metrics, "qwen_router_requests_total", pool="A10G", code="200") == 0  # not retried
        assert bg.call(lambda: r.router.picker.endpoints["dying"].outstanding) == 0  # released
        # the router is fine: once the pod is gone (not Ready), the next request is served
        live = Target("live", sims[0].base_url, "A10G")
        bg.call(lambda: r.router.update_targets({"live": live}))
        status, _, headers = post(r.url + "/generate", {"inputs": "x", "parameters": {"max_new_tokens": 2}})
        assert status == 200 and headers[ENDPOINT_HEADER] == "live"
    finally:
        b.close()


# --- holding -----------------------------------------------------------------------------------------


def test_request_is_held_until_an_endpoint_appears_then_served(
    bg: Loop, sims: list[ServedTGI], make_router: Callable[..., RouterUnderTest]
) -> None:
    r = make_router([], RouterConfig(affinity=False, hold_timeout=30))
    assert get(r.url + "/health")[0] == 200  # holding: the router's own pods stay Ready at zero replicas
    result: list[tuple[int, dict[str, Any], dict[str, str]]] = []
    client = threading.Thread(target=lambda: result.append(post(r.url + "/v1/chat/completions", CHAT, timeout=30)))
    client.start()
    wait_for("request held", lambda: bg.call(r.router.held) == 1)
    assert sample(r.metrics(), "qwen_router_held") == 1
    bg.call(lambda: r.router.update_targets({"late": Target("late", sims[1].base_url, "A10G")}))
    client.join(30)
    assert result and result[0][0] == 200 and result[0][2][ENDPOINT_HEADER] == "late"
    metrics = r.metrics()
    assert sample(metrics, "qwen_router_held") == 0
    assert sample(metrics, "qwen_router_hold_seconds_count") == 1
    assert sample(metrics, "qwen_router_requests_total", pool="A10G", code="200") == 1


def test_a_held_request_whose_client_left_is_never_sent(bg: Loop, make_router: Callable[..., RouterUnderTest]) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"generated_text": "x"})

    b = Backend(bg, ok)
    try:
        r = make_router([])
        import socket

        sock = socket.create_connection(("127.0.0.1", r.router.port), timeout=5)
        body = b'{"inputs": "x"}'
        sock.sendall(
            b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        wait_for("request held", lambda: bg.call(r.router.held) == 1)
        sock.close()  # the client gives up while the fleet scales from zero
        server = r.router._runner.server if r.router._runner else None
        assert server is not None
        gone = lambda: all(h.transport is None for h in server.connections)  # noqa: E731
        wait_for("disconnect seen by the router", lambda: bg.call(gone), timeout=10)
        bg.call(lambda: r.router.update_targets({"up": Target("up", b.url, "A10G")}))
        wait_for(
            "the abandoned request dropped",
            lambda: sample(r.metrics(), "qwen_router_requests_total", pool="none", code="499") == 1,
            timeout=10,
        )
        assert b.hits == 0 and bg.call(r.router.held) == 0
        assert post(r.url + "/generate", {"inputs": "y"})[0] == 200  # a live client is served
    finally:
        b.close()


def test_hold_timeout_and_full_queue_answer_503_with_retry_after(
    bg: Loop, make_router: Callable[..., RouterUnderTest]
) -> None:
    r = make_router([], RouterConfig(affinity=False, hold_queue=1, hold_timeout=1.5))
    first: list[tuple[int, dict[str, Any], dict[str, str]]] = []
    client = threading.Thread(target=lambda: first.append(post(r.url + "/generate", {"inputs": "x"})))
    client.start()
    wait_for("request held", lambda: bg.call(r.router.held) == 1)
    status, body, headers = post(r.url + "/generate", {"inputs": "y"})  # the queue holds one
    assert status == 503 and "hold queue is full" in body["error"] and int(headers["Retry-After"]) > 0
    client.join(10)
    status, body, headers = first[0]
    assert status == 503 and "hold timeout" in body["error"] and int(headers["Retry-After"]) > 0
    metrics = r.metrics()
    assert sample(metrics, "qwen_router_rejected_total", reason="queue_full") == 1
    assert sample(metrics, "qwen_router_rejected_total", reason="hold_timeout") == 1
    assert sample(metrics, "qwen_router_requests_total", pool="none", code="503") == 2
    off = make_router([], RouterConfig(affinity=False, hold_queue=0))
    assert get(off.url + "/health")[0] == 503  # no endpoint and no holding: not ready
    status, body, headers = post(off.url + "/generate", {"inputs": "x"})
    assert status == 503 and "holding is off" in body["error"] and "Retry-After" in headers


def test_endpoints_at_max_concurrency_hold_the_next_request_until_one_finishes(
    bg: Loop, make_router: Callable[..., RouterUnderTest]
) -> None:
    release = threading.Event()

    async def slow(request: web.Request) -> web.Response:
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 20)
        return web.json_response({"generated_text": "done"})

    b = Backend(bg, slow)
    try:
        r = make_router([Target("one", b.url, "A10G")], A10G=PoolCapacity(weight=1.0, max_concurrency=1))
        results: list[int] = []
        threads = [threading.Thread(target=lambda: results.append(post(r.url + "/generate", {})[0])) for _ in range(2)]
        threads[0].start()
        wait_for("first in flight", lambda: b.hits == 1)
        threads[1].start()
        wait_for("second held", lambda: bg.call(r.router.held) == 1)
        assert b.hits == 1  # never sent where the engine would answer 429
        release.set()
        for t in threads:
            t.join(20)
        assert results == [200, 200] and b.hits == 2
    finally:
        release.set()
        b.close()


# --- canary, health, metrics -------------------------------------------------------------------------


def test_canary_pods_get_nothing_at_zero_percent(
    sims: list[ServedTGI], make_router: Callable[..., RouterUnderTest]
) -> None:
    r = make_router(
        [Target("stable", sims[0].base_url, "A10G"), Target("canary", sims[1].base_url, "A10G", canary=True)]
    )
    served = {post(r.url + "/generate", {"inputs": "x", "parameters": {"max_new_tokens": 1}})[2][ENDPOINT_HEADER]}
    served |= {post(r.url + "/generate", {"inputs": "x", "parameters": {"max_new_tokens": 1}})[2][ENDPOINT_HEADER]}
    assert served == {"stable"}


def test_session_header_keeps_a_conversation_on_one_replica_and_canary_gets_its_share(
    sims: list[ServedTGI], make_router: Callable[..., RouterUnderTest]
) -> None:
    targets = [Target("sim-0", sims[0].base_url, "A10G"), Target("sim-1", sims[1].base_url, "A10G")]
    r = make_router(targets, RouterConfig(affinity=True))

    def served(session: str, i: int) -> str:
        body = {"inputs": f"turn {i}", "parameters": {"max_new_tokens": 1}}
        req = HTTPRequest(
            r.url + "/generate",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "x-session-id": session},
        )
        with urlopen(req, timeout=10) as resp:
            return str(resp.headers[ENDPOINT_HEADER])

    for session in ("alice", "bob", "carol", "dave"):
        assert len({served(session, i) for i in range(4)}) == 1  # different prompts, one replica
    assert len({served(f"user-{n}", 0) for n in range(16)}) == 2  # many sessions use both

    canary = Target("canary", sims[1].base_url, "A10G", canary=True)
    rc = make_router([targets[0], canary], RouterConfig(affinity=False, canary_percent=25))
    one = {"inputs": "x", "parameters": {"max_new_tokens": 1}}
    got = [post(rc.url + "/generate", one)[2][ENDPOINT_HEADER] for _ in range(4)]
    assert got.count("canary") == 1  # 25% of picks, by counter


def test_health_and_metrics_are_the_routers_own(
    sims: list[ServedTGI], make_router: Callable[..., RouterUnderTest]
) -> None:
    r = make_router(
        [Target("sim-0", sims[0].base_url, "A10G", version="v2")],
        A10G=PoolCapacity(weight=3.0, prefill_tokens_per_second=5000.0, max_concurrency=128),
    )
    status, body, _ = get(r.url + "/health")
    assert status == 200 and json.loads(body)["endpoints"] == 1
    assert post(r.url + "/v1/chat/completions", CHAT)[0] == 200
    status, metrics, headers = get(r.url + "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert "tgi_" not in metrics  # not the engine's metrics
    assert sample(metrics, "qwen_router_ttft_seconds_count", pool="A10G", version="v2") == 1
    assert sample(metrics, "qwen_router_requests_total", pool="A10G", code="200") == 1
    assert sample(metrics, "qwen_router_endpoints", pool="A10G") == 1
    assert 'qwen_router_endpoint_in_flight{endpoint="sim-0",pool="A10G"} 0.0' in metrics
    assert sample(metrics, "qwen_router_queue_length") == 0
    assert sample(metrics, "qwen_router_prompt_tokens_count") == 1
    for name in ("qwen_router_retries_total", "qwen_router_rejected_total", "qwen_router_held"):
        assert f"# TYPE {name.removesuffix('_total')}" in metrics


# --- flags -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--port", "http"),
        ("--port", "70000"),
        ("--affinity", "maybe"),
        ("--load-bound", "0.9"),
        ("--load-bound", "nan"),
        ("--hold-queue", "-1"),
        ("--hold-timeout", "forever"),
        ("--retries", "11"),
        ("--canary-percent", "150"),
        ("--namespace", "Bad_NS"),
        ("--deployment", "-x"),
        ("--kubeconfig", "/nonexistent/kubeconfig"),
    ],
)
def test_bad_flags_are_rejected_naming_the_flag(flag: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = {"--namespace": "llm", "--deployment": "chat", flag: value}
    argv = ["router", *[f"{k}={v}" for k, v in args.items()]]
    assert qwenctl(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {flag}: ") and len(err.splitlines()) == 1


def test_required_flags_and_dial_mode_are_checked(capsys: pytest.CaptureFixture[str], monkeypatch: Any) -> None:
    assert qwenctl(["router", "--deployment", "chat"]) == 2
    assert capsys.readouterr().err.startswith("error: --namespace: required")
    monkeypatch.setenv("QWEN_ROUTER_DIAL", "carrier-pigeon")
    assert qwenctl(["router", "--namespace", "llm", "--deployment", "chat"]) == 2
    assert capsys.readouterr().err.startswith("error: QWEN_ROUTER_DIAL: 'carrier-pigeon' is not valid")


# --- discovery's pure part ---------------------------------------------------------------------------


def pod(name: str = "chat-l40s-abc", ready: bool = True, **extra: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "metadata": {
            "name": name,
            "labels": {"serving.qwenops.io/pool": "a100-80gb", "serving.qwenops.io/model-version": "v3"},
            "annotations": {DIAL_ANNOTATION: "http://127.0.0.1:9999/"},
        },
        "spec": {"containers": [{"name": "tgi", "ports": [{"name": "http", "containerPort": 80}]}]},
        "status": {"podIP": "10.1.2.3", "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }
    for key, value in extra.items():
        obj["metadata"][key] = value
    return obj


def test_pod_to_target_ready_terminating_and_dial_modes() -> None:
    t = pod_target(pod(), "pod-ip", {})
    assert t == Target("chat-l40s-abc", "http://10.1.2.3:80", "A100-80GB", version="v3", canary=False)
    assert pod_target(pod(), "annotation", {}) == Target(
        "chat-l40s-abc", "http://127.0.0.1:9999", "A100-80GB", version="v3"
    )
    assert pod_target(pod(ready=False), "pod-ip", {}) is None
    assert pod_target(pod(deletionTimestamp="2026-01-01T00:00:00Z"), "pod-ip", {}) is None
    no_annotation = pod(annotations={})
    assert pod_target(no_annotation, "annotation", {}) is None  # not dialable yet: not routed
    canary = pod()
    canary["metadata"]["labels"][LABEL_CANARY] = "true"
    canary["metadata"]["labels"]["serving.qwenops.io/pool"] = "custom-gpu"
    canary["metadata"]["annotations"]["serving.qwenops.io/model-version"] = "sha256:v3"
    assert pod_target(canary, "pod-ip", {"custom-gpu": "Custom-GPU"}) is None  # untested: not routable
    got = pod_target(canary, "pod-ip", {"custom-gpu": "Custom-GPU"}, {"sha256:v3"})
    assert got is not None and got.canary and got.pool == "Custom-GPU"


def test_canary_label_is_the_rollouts() -> None:
    from qwen_operator.controller.rollout import LABEL_CANARY as ROLLOUT_LABEL

    assert LABEL_CANARY == ROLLOUT_LABEL


def test_deployment_status_pools_become_capacities() -> None:
    qwd = {
        "spec": {"scaling": {"p95LatencySeconds": 1.5}},
        "status": {
            "pools": [
                {
                    "gpuType": "L40S",
                    "capacityRequestsPerSecond": 2.7,
                    "prefillTokensPerSecond": 9000,
                    "maxConcurrentRequests": 128,
                },
                {"gpuType": "A10G", "capacityRequestsPerSecond": 0},  # not published yet: unknown, not zero
                {"gpuType": "A100-80GB"},
            ]
        },
    }
    pools, slo = deployment_pools(qwd)
    assert pools == {"L40S": PoolCapacity(2.7, 9000.0, 128)} and slo == 1.5
    assert deployment_pools(None) == ({}, None)


def test_pod_watch_relists_after_410_gone_and_follows_events(bg: Loop) -> None:
    """The watch protocol against a loopback stand-in for the API server's two endpoints (the
    real API server is exercised in tests/integration/test_router_discovery.py; it will not
    expire a watch on demand, so the 410 path is checked here)."""
    from qwen_operator.router.discovery import KubeCredentials, PodWatcher

    def ready_pod(name: str) -> dict[str, Any]:
        p = pod(name)
        p["metadata"]["annotations"] = {DIAL_ANNOTATION: f"http://127.0.0.1:1/{name}"}
        return p

    lists = [[ready_pod("a")], [ready_pod("a"), ready_pod("b")]]
    seen_queries: list[dict[str, str]] = []
    done = threading.Event()

    async def hang() -> None:  # an open watch with nothing to say, until the test ends
        await asyncio.get_running_loop().run_in_executor(None, done.wait, 30)

    async def api(request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        if request.path.endswith("/pods"):
            seen_queries.append(query)
        if "watch" not in query:
            items = lists.pop(0) if request.path.endswith("/pods") and lists else []
            return web.json_response({"items": items, "metadata": {"resourceVersion": str(10 - len(lists))}})
        resp = web.StreamResponse()
        await resp.prepare(request)
        if request.path.endswith("/pods") and query["resourceVersion"] == "9":  # the first list's version
            await resp.write(json.dumps({"type": "ERROR", "object": {"code": 410, "message": "too old"}}).encode())
            await resp.write(b"\n")
        elif request.path.endswith("/pods"):
            for event in (
                {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "11"}}},
                {"type": "ADDED", "object": ready_pod("c")},
                {"type": "DELETED", "object": ready_pod("a")},
            ):
                await resp.write(json.dumps(event).encode() + b"\n")
        await hang()
        return resp

    fake = Backend(bg, api)
    updates: list[set[str]] = []

    class Sink:
        def update_targets(self, targets: Any) -> None:
            updates.append(set(targets))

        def update_pools(self, pools: Any, slo: Any) -> None:
            pass

    watcher = PodWatcher(KubeCredentials(fake.url, False), "llm", "chat", dial="annotation")
    task = bg.call(lambda: asyncio.ensure_future(watcher.run(Sink())))
    try:
        wait_for("c added and a deleted", lambda: updates and updates[-1] == {"b", "c"}, timeout=20)
        assert {"a"} in updates and {"a", "b"} in updates  # the first list, then the re-list after 410
        # pool pods and canary pods (the canary rule decides whether one gets traffic)
        assert seen_queries[0]["labelSelector"] == (
            "app.kubernetes.io/component in (canary,server),serving.qwenops.io/deployment=chat"
        )
        assert any(q.get("watch") == "true" and q.get("allowWatchBookmarks") == "true" for q in seen_queries)
    finally:
        bg.call(task.cancel)
        done.set()
        fake.close()

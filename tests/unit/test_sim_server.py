"""The simulated TGI server through huggingface_hub's clients, unchanged, and raw HTTP."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.request import Request as HTTPRequest
from urllib.request import urlopen

import pytest
from huggingface_hub import AsyncInferenceClient, InferenceClient
from huggingface_hub.errors import OverloadedError

from qwen_operator.capacity.model import ReplicaModel
from qwen_operator.sim.server import ServedTGI, SimulatedTGI, serve
from qwen_operator.sim.tgi_metrics import DURATION_BUCKETS

SCALE = 50.0  # 50 virtual seconds per wall second: a 100-token A10G reply takes ~0.07 s


class ServerThread:
    """Runs a simulated server on its own event loop so sync clients can call it."""

    def __init__(self, sim_args: dict[str, Any], startup: str = "refuse") -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.served: ServedTGI | None = None
        self.thread = threading.Thread(target=self._run, args=(sim_args, startup), daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def _run(self, sim_args: dict[str, Any], startup: str) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            self.served = await serve(SimulatedTGI(**sim_args), startup=startup)
            self.ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    @property
    def url(self) -> str:
        assert self.served is not None
        return self.served.base_url

    def stop(self) -> None:
        assert self.served is not None
        asyncio.run_coroutine_threadsafe(self.served.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def a10g(**limits: Any) -> ReplicaModel:
    return ReplicaModel.build("Qwen3-14B", "A10G", 1, "fp8", **limits)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    srv = ServerThread({"model": a10g(), "time_scale": SCALE, "cold_start_seconds": 0.0})
    yield srv
    srv.stop()


def get(url: str) -> tuple[int, str]:
    try:
        with urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except HTTPError as err:
        return err.code, err.read().decode()


def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = HTTPRequest(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except HTTPError as err:
        return err.code, json.loads(err.read())


def test_text_generation_plain_details_and_stream(server: ServerThread) -> None:
    client = InferenceClient(base_url=server.url)
    text = client.text_generation("Tell me about GPUs. " * 20, max_new_tokens=12)
    assert isinstance(text, str) and len(text.split()) == 12
    out = client.text_generation("hello", max_new_tokens=7, details=True)
    assert out.details is not None and out.details.generated_tokens == 7 and len(out.details.tokens) == 7
    assert out.details.finish_reason == "length"
    pieces = list(client.text_generation("hello", max_new_tokens=9, stream=True))
    assert len(pieces) == 9 and "".join(pieces) == client.text_generation("hello", max_new_tokens=9)
    chunks = list(client.text_generation("hello", max_new_tokens=5, stream=True, details=True))
    assert [c.index for c in chunks] == list(range(5))
    assert chunks[-1].details is not None and chunks[-1].details.generated_tokens == 5
    assert chunks[-1].generated_text == "".join(c.token.text for c in chunks)


def test_chat_completion_plain_and_stream(server: ServerThread) -> None:
    client = InferenceClient(base_url=server.url)
    messages = [{"role": "user", "content": "What is continuous batching?"}]
    out = client.chat_completion(messages, max_tokens=15)
    assert out.choices[0].message.role == "assistant"
    assert len(out.choices[0].message.content.split()) == 15
    assert out.usage.completion_tokens == 15 and out.usage.prompt_tokens >= 7
    stream = list(client.chat_completion(messages, max_tokens=6, stream=True))
    assert len(stream) == 6
    assert stream[-1].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].delta.content for c in stream).split() == out.choices[0].message.content.split()[:6]


def test_async_client_and_streaming_timing(server: ServerThread) -> None:
    async def go() -> tuple[str, list[str], float]:
        client = AsyncInferenceClient(base_url=server.url)
        loop = asyncio.get_running_loop()
        text = await client.text_generation("hi", max_new_tokens=4)
        t0 = loop.time()
        pieces = [p async for p in await client.text_generation("hi " * 200, max_new_tokens=60, stream=True)]
        virtual = (loop.time() - t0) * SCALE
        chat = await client.chat_completion([{"role": "user", "content": "hi"}], max_tokens=3)
        assert chat.usage.completion_tokens == 3
        return text, pieces, virtual

    text, pieces, virtual = asyncio.run(go())
    assert len(text.split()) == 4 and len(pieces) == 60
    model = a10g()
    floor = model.prefill_seconds(150) + 59 * model.decode_step_seconds(1, 200)
    assert virtual >= floor * 0.9  # paced by the replica model, not as fast as the loop can go


def test_health_info_and_metrics(server: ServerThread) -> None:
    assert get(server.url + "/health")[0] == 200
    status, body = get(server.url + "/info")
    info = json.loads(body)
    assert status == 200 and info["simulated"] is True
    assert info["model_id"] == "Qwen/Qwen3-14B" and info["max_concurrent_requests"] == 128
    assert {"max_input_tokens", "max_total_tokens", "version"} <= set(info)
    post(server.url + "/generate", {"inputs": "x", "parameters": {"max_new_tokens": 3}})
    status, text = get(server.url + "/metrics")
    assert status == 200 and "SIMULATED" in text.splitlines()[0]
    samples = parse_prometheus(text)
    for name in ("tgi_queue_size", "tgi_batch_current_size", "tgi_request_count", "tgi_request_success"):
        assert name in samples, name
    assert not any(k.endswith("_total") for k in samples)
    assert samples["tgi_request_success"][""] >= 1
    for hist in ("tgi_request_duration", "tgi_request_queue_duration"):
        les = [k for k in samples[f"{hist}_bucket"]]
        assert len(les) == 36 and les[-1] == 'le="+Inf"'
        bounds = [float(le[4:-1]) for le in les[:-1]]
        assert bounds == pytest.approx([0.0001 * 1.5**n for n in range(1, 36)])
        counts = list(samples[f"{hist}_bucket"].values())
        assert counts == sorted(counts) and counts[-1] == samples[f"{hist}_count"][""]
    assert DURATION_BUCKETS[-1] == pytest.approx(145, rel=0.02)


def parse_prometheus(text: str) -> dict[str, dict[str, float]]:
    """Minimal text-format parser (prometheus_client is not installed): name -> labels -> value."""
    out: dict[str, dict[str, float]] = {}
    line_re = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})? (\S+)$")
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = line_re.match(line)
        assert m, f"not Prometheus text format: {line!r}"
        out.setdefault(m.group(1), {})[m.group(2) or ""] = float(m.group(3))
    return out


def test_overload_gives_429_and_overloaded_error() -> None:
    srv = ServerThread(
        {"model": replace(a10g(), max_concurrent_requests=2), "time_scale": 1.0, "cold_start_seconds": 0}
    )
    try:
        client = AsyncInferenceClient(base_url=srv.url)

        async def go() -> list[BaseException | str]:
            calls = [client.text_generation("long " * 400, max_new_tokens=200) for _ in range(5)]
            first = [asyncio.ensure_future(c) for c in calls[:2]]
            await asyncio.sleep(0.2)
            rest = await asyncio.gather(*calls[2:], return_exceptions=True)
            for f in first:
                f.cancel()
            await asyncio.gather(*first, return_exceptions=True)
            return list(rest)

        results = asyncio.run(go())
        assert all(isinstance(r, OverloadedError) for r in results), results
        status, body = post(srv.url + "/generate", {"inputs": "x", "parameters": {"max_new_tokens": 2}})
        assert status == 429 and body == {"error": "Model is overloaded", "error_type": "overloaded"}
        samples = parse_prometheus(get(srv.url + "/metrics")[1])
        assert samples["tgi_request_failure"]['err="overloaded"'] == 4
    finally:
        srv.stop()


def test_validation_error_is_422() -> None:
    srv = ServerThread({"model": a10g(), "time_scale": SCALE, "cold_start_seconds": 0})
    try:
        status, body = post(srv.url + "/generate", {"inputs": "x", "parameters": {"max_new_tokens": 20000}})
        assert status == 422 and body["error_type"] == "validation"
    finally:
        srv.stop()


@pytest.mark.parametrize("startup", ["refuse", "503"])
def test_cold_start_refuses_then_serves(startup: str) -> None:
    # 60 virtual seconds of cold start at 200x: ready after 0.3 s of wall time
    srv = ServerThread({"model": a10g(), "time_scale": 200.0, "cold_start_seconds": 60.0}, startup=startup)
    try:
        if startup == "refuse":
            with pytest.raises(URLError):
                urlopen(srv.url + "/health", timeout=2)
        else:
            assert get(srv.url + "/health")[0] == 503
            assert post(srv.url + "/generate", {"inputs": "x"})[0] == 503
        deadline = threading.Event()
        for _ in range(100):
            try:
                if get(srv.url + "/health")[0] == 200:
                    break
            except URLError:
                pass
            deadline.wait(0.05)
        assert get(srv.url + "/health")[0] == 200
    finally:
        srv.stop()

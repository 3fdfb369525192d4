"""The simulated vLLM server: a vLLM pod read back, vLLM's OpenAI API, errors and metric names.

Real clients, unchanged: the official ``openai`` client and ``huggingface_hub.InferenceClient``
against a simulated replica that plays vLLM v0.10 (what a pod rendered with ``engine: vllm``
becomes in the simulated fleet); the canary's smoke test (controller.versions.smoke_test) with
each engine's request; ``/metrics`` parsed and checked against the replica's own requests and
against the metric names the autoscaler's PromQL uses for vLLM (engines.runtimes.VLLM).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request as HTTPRequest
from urllib.request import urlopen

import openai
import pytest
from huggingface_hub import InferenceClient

from qwen_operator.api import QwenDeploymentSpec
from qwen_operator.autoscale.prometheus import queries
from qwen_operator.capacity.model import ReplicaModel
from qwen_operator.catalog import Catalog
from qwen_operator.controller.versions import SMOKE_PROMPT, smoke_test
from qwen_operator.engines.runtimes import TGI, VLLM
from qwen_operator.planner import plan
from qwen_operator.render import RenderContext, render
from qwen_operator.sim.chat import ChatOptions
from qwen_operator.sim.engine import Request
from qwen_operator.sim.loadgen import LoadGenerator, RequestSize
from qwen_operator.sim.pod_replica import VLLM_UNBOUNDED_QUEUE, pod_replica
from qwen_operator.sim.server import ServedTGI, SimulatedTGI, serve
from qwen_operator.sim.tgi_payloads import estimate_tokens
from qwen_operator.sim.trace import TraceRow
from qwen_operator.sim.vllm_metrics import REQUEST_BUCKETS, TTFT_BUCKETS
from qwen_operator.testing.background import BackgroundLoop
from qwen_operator.testing.wait import wait_for

SCALE = 50.0  # virtual seconds per wall second
SERVED = "qwen3-chat"  # --served-model-name: what the deployment calls the model
VLLM_CHAT = ChatOptions(engine="vllm", thinking_default=False, reasoning_parser="qwen3")


def spec(**runtime: Any) -> QwenDeploymentSpec:
    return QwenDeploymentSpec.model_validate(
        {
            "model": {"name": "Qwen/Qwen3-14B", "registry": "s3://m/q", "quantization": "fp8"},
            "placement": {"gpuTypes": ["L40S"]},
            "runtime": {"engine": "vllm", "maxConcurrentRequests": 48, "maxTotalTokens": 12288, **runtime},
        }
    )


def vllm_pod(s: QwenDeploymentSpec) -> dict[str, Any]:
    objs = render(s, plan(s, Catalog()), RenderContext(name="chat", namespace="llm"), Catalog())
    dep = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] != "chat-router")
    tpl = dep["spec"]["template"]
    meta = {**tpl["metadata"], "name": "chat-l40s-x", "uid": "u1", "namespace": "llm"}
    return {"metadata": meta, "spec": tpl["spec"], "status": {"phase": "Running"}}


def replica(max_num_seqs: int = 256) -> ReplicaModel:
    """A vLLM replica as the fleet builds one from a pod (unbounded queue, --max-num-seqs batch)."""
    return ReplicaModel.build_for(
        "vllm",
        "Qwen3-14B",
        "A10G",
        1,
        "fp8",
        max_concurrent_requests=VLLM_UNBOUNDED_QUEUE,
        max_batch_size=max_num_seqs,
        max_total_tokens=8192,
        max_input_tokens=8191,
    )


class Server:
    def __init__(self, bg: BackgroundLoop, sim: SimulatedTGI) -> None:
        self.bg, self.sim = bg, sim
        self.served: ServedTGI = bg.run(serve(sim))

    @property
    def url(self) -> str:
        return self.served.base_url

    def metrics(self) -> dict[str, float]:
        """``/metrics`` as {series (name + labels as written): value}."""
        status, text = get(self.url + "/metrics")
        assert status == 200
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                series, value = line.rsplit(" ", 1)
                out[series] = float(value)
        return out


@pytest.fixture(scope="module")
def bg() -> Iterator[BackgroundLoop]:
    loop = BackgroundLoop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def server(bg: BackgroundLoop) -> Iterator[Server]:
    sim = SimulatedTGI(
        replica(), time_scale=SCALE, cold_start_seconds=0.0, default_max_new_tokens=8, chat=VLLM_CHAT,
        served_model_name=SERVED,
    )  # fmt: skip
    srv = Server(bg, sim)
    yield srv
    bg.run(srv.served.close())


@pytest.fixture
def oai(server: Server) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30)
    yield client
    client.close()


def get(url: str) -> tuple[int, str]:
    try:
        with urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except HTTPError as err:
        return err.code, err.read().decode()


def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = HTTPRequest(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except HTTPError as err:
        return err.code, json.loads(err.read())


def words(text: str | None) -> list[str]:
    return (text or "").split()


def labels(name: str, **extra: str) -> str:
    """A series key as vLLM writes it: model_name and engine on every sample."""
    pairs = {"engine": "0", "model_name": SERVED, **extra}
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in pairs.items()) + "}"


# --- the pod, read back ----------------------------------------------------------------------------


def test_a_vllm_pod_becomes_a_vllm_replica_with_its_flags() -> None:
    rep = pod_replica(vllm_pod(spec()))
    assert rep.chat.engine == "vllm" and rep.served_model_name == "Qwen/Qwen3-14B"  # --served-model-name
    limits = dict(rep.limits)
    # --max-num-seqs caps the running batch; vLLM's waiting queue has no bound (it never answers 429)
    assert limits["max_batch_size"] == 48 and limits["max_concurrent_requests"] == VLLM_UNBOUNDED_QUEUE
    assert limits["max_total_tokens"] == 12288 and limits["max_input_tokens"] == 12287  # --max-model-len
    assert rep.quantization == "fp8"  # vLLM's --quantization (TGI's flag is --quantize)
    tgi = pod_replica(vllm_pod(spec(engine="tgi")))
    assert tgi.chat.engine == "tgi" and tgi.served_model_name is None
    assert dict(tgi.limits)["max_concurrent_requests"] == 48 and "max_batch_size" not in dict(tgi.limits)


# --- vLLM's routes -----------------------------------------------------------------------------------


def test_vllm_routes_and_no_tgi_routes(server: Server, oai: openai.OpenAI) -> None:
    (model,) = list(oai.models.list())
    assert model.id == SERVED and model.owned_by == "vllm"
    raw = json.loads(get(server.url + "/v1/models")[1])["data"][0]
    assert raw["root"] == "Qwen/Qwen3-14B" and raw["max_model_len"] == 8192
    assert get(server.url + "/health") == (200, "")
    assert json.loads(get(server.url + "/version")[1]) == {"version": "0.10.1.1"}
    # TGI's native routes do not exist on vLLM
    generate = post(server.url + "/generate", {"inputs": "hi", "parameters": {"max_new_tokens": 2}})
    assert generate == (404, {"detail": "Not Found"})
    assert get(server.url + "/info")[0] == 404


def test_openai_completions_plain_batch_tokens_and_stream(server: Server, oai: openai.OpenAI) -> None:
    prompt = "Once upon a time, in a cluster far away,"
    done = oai.completions.create(model=SERVED, prompt=prompt, max_tokens=5)
    assert done.object == "text_completion" and done.model == SERVED and done.id.startswith("cmpl-")
    (choice,) = done.choices
    assert len(words(choice.text)) == 5 and choice.finish_reason == "length"
    assert done.usage is not None and (done.usage.prompt_tokens, done.usage.completion_tokens) == (
        estimate_tokens(prompt),
        5,
    )
    # no max_tokens: vLLM's completions default of 16
    assert oai.completions.create(model=SERVED, prompt=prompt).usage.completion_tokens == 16  # type: ignore[union-attr]
    # a batch of prompts and token-id prompts (vLLM takes both; TGI only strings)
    batch = oai.completions.create(model=SERVED, prompt=["a short one", "and another prompt", "x"], max_tokens=3)
    assert [c.index for c in batch.choices] == [0, 1, 2] and batch.usage.completion_tokens == 9  # type: ignore[union-attr]
    ids = oai.completions.create(model=SERVED, prompt=[101, 102, 103, 104], max_tokens=2)
    assert ids.usage is not None and ids.usage.prompt_tokens == 4

    chunks = list(
        oai.completions.create(
            model=SERVED, prompt=prompt, max_tokens=9, stream=True, stream_options={"include_usage": True}
        )
    )
    tokens, final = chunks[:-1], chunks[-1]
    assert len(tokens) == 9  # one event per token
    assert [c.choices[0].finish_reason for c in tokens] == [None] * 8 + ["length"]
    assert len(words("".join(c.choices[0].text for c in tokens))) == 9
    # vLLM: the usage comes in a last chunk of its own, with no choices
    assert final.choices == [] and final.usage is not None and final.usage.completion_tokens == 9


def test_openai_chat_plain_stream_and_reasoning(server: Server, oai: openai.OpenAI) -> None:
    msgs: Any = [{"role": "user", "content": "What is continuous batching?"}]
    chat = oai.chat.completions.create(model=SERVED, messages=msgs, max_tokens=7)
    assert chat.model == SERVED and chat.id.startswith("chatcmpl-")
    assert len(words(chat.choices[0].message.content)) == 7 and chat.choices[0].finish_reason == "length"
    # per request thinking back on (chat_template_kwargs, vLLM only): the reasoning parser splits it out
    # (no max_tokens: the answer is the server's default 8 tokens after the whole thought)
    thought = oai.chat.completions.create(
        model=SERVED, messages=msgs, extra_body={"chat_template_kwargs": {"enable_thinking": True}}
    )
    assert getattr(thought.choices[0].message, "reasoning_content", None)
    assert len(words(thought.choices[0].message.content)) == 8
    chunks = list(
        oai.chat.completions.create(
            model=SERVED, messages=msgs, max_tokens=4, stream=True, stream_options={"include_usage": True}
        )
    )
    assert len(chunks) == 5 and chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4  # type: ignore[union-attr]
    assert chunks[-2].choices[0].finish_reason == "length"


def test_vllm_errors_surface_as_the_openai_client_exceptions(server: Server, oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as nf:
        oai.completions.create(model="Qwen/Qwen3-14B", prompt="x", max_tokens=2)  # not the served name
    assert "does not exist" in str(nf.value)
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="other", messages=[{"role": "user", "content": "x"}], max_tokens=2)
    with pytest.raises(openai.BadRequestError) as bad:
        oai.completions.create(model=SERVED, prompt="x", max_tokens=9000)
    assert "maximum context length is 8192 tokens" in str(bad.value)
    with pytest.raises(openai.BadRequestError) as auto:  # no --enable-auto-tool-choice on this replica
        oai.chat.completions.create(
            model=SERVED,
            messages=[{"role": "user", "content": "weather?"}],
            tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
            tool_choice="auto",
        )
    assert "--enable-auto-tool-choice" in str(auto.value)
    status, body = post(server.url + "/v1/completions", {"model": SERVED, "prompt": []})
    assert status == 400 and body["object"] == "error" and body["type"] == "BadRequestError"


def test_huggingface_inference_client_chat_against_vllm(server: Server) -> None:
    client = InferenceClient(base_url=server.url)
    out = client.chat_completion([{"role": "user", "content": "Hello"}], model=SERVED, max_tokens=6)
    assert out.model == SERVED and len(words(out.choices[0].message.content)) == 6
    stream = list(
        client.chat_completion([{"role": "user", "content": "Hello"}], model=SERVED, max_tokens=5, stream=True)
    )
    assert len(stream) == 5 and stream[-1].choices[0].finish_reason == "length"


# --- the canary ---------------------------------------------------------------------------------------


def test_canary_smoke_test_speaks_each_engines_api(bg: BackgroundLoop) -> None:
    s = spec()
    sim = SimulatedTGI(replica(), time_scale=SCALE, cold_start_seconds=0.0, chat=VLLM_CHAT,
                       served_model_name=s.model.name)  # fmt: skip
    srv = Server(bg, sim)
    try:
        ok, message = smoke_test([srv.url], request=VLLM().smoke_request(s, SMOKE_PROMPT), attempts=1)
        assert ok, message
        # TGI's dialect fails a healthy vLLM pod: the reason the smoke request is per engine
        ok, message = smoke_test([srv.url], request=TGI().smoke_request(s, SMOKE_PROMPT), attempts=1)
        assert not ok and "404" in message
    finally:
        bg.run(srv.served.close())
    # a pod serving another name (a wrong canary) fails the vLLM smoke test with vLLM's 404
    wrong = SimulatedTGI(replica(), time_scale=SCALE, cold_start_seconds=0.0, chat=VLLM_CHAT,
                         served_model_name="Qwen/Qwen3-8B")  # fmt: skip
    srv = Server(bg, wrong)
    try:
        ok, message = smoke_test([srv.url], request=VLLM().smoke_request(s, SMOKE_PROMPT), attempts=1)
        assert not ok and "404" in message and "does not exist" in message
    finally:
        bg.run(srv.served.close())


# --- metrics ------------------------------------------------------------------------------------------


def test_metrics_count_the_requests_served(bg: BackgroundLoop) -> None:
    sim = SimulatedTGI(replica(), time_scale=SCALE, cold_start_seconds=0.0, chat=VLLM_CHAT, served_model_name=SERVED)
    srv = Server(bg, sim)
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=30)
        sizes = [(40, 5), (100, 3), (8, 12)]
        for chars, n in sizes:
            client.completions.create(model=SERVED, prompt="x" * chars, max_tokens=n)
        client.close()
        m = srv.metrics()
        prompts = sum(estimate_tokens("x" * c) for c, _ in sizes)
        generated = sum(n for _, n in sizes)
        assert m[labels("vllm:request_success_total", finished_reason="length")] == 3
        assert m[labels("vllm:request_success_total", finished_reason="stop")] == 0
        assert m[labels("vllm:prompt_tokens_total")] == prompts
        assert m[labels("vllm:generation_tokens_total")] == generated
        for hist in ("time_to_first_token_seconds", "e2e_request_latency_seconds", "request_queue_time_seconds"):
            assert m[labels(f"vllm:{hist}_count")] == 3
            assert m[labels(f"vllm:{hist}_bucket", le="+Inf")] == 3
        assert m[labels("vllm:request_generation_tokens_sum")] == generated
        # the histograms hold the engine's own timings: TTFT <= e2e, both positive
        assert (
            0 < m[labels("vllm:time_to_first_token_seconds_sum")] <= m[labels("vllm:e2e_request_latency_seconds_sum")]
        )
        # vLLM's buckets
        ttft_les = [k for k in m if k.startswith("vllm:time_to_first_token_seconds_bucket")]
        assert len(ttft_les) == len(TTFT_BUCKETS) + 1
        assert (
            len([k for k in m if k.startswith("vllm:e2e_request_latency_seconds_bucket")]) == len(REQUEST_BUCKETS) + 1
        )
        # idle now: nothing running, waiting or holding KV cache
        for gauge in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc", "gpu_cache_usage_perc"):
            assert m[labels(f"vllm:{gauge}")] == 0
        # no TGI series on a vLLM replica
        assert not [k for k in m if k.startswith("tgi_")]
    finally:
        bg.run(srv.served.close())


def test_waiting_running_and_kv_cache_usage_under_load(bg: BackgroundLoop) -> None:
    """More requests than --max-num-seqs: the rest wait (no 429), KV usage is the engine's reservation."""
    sim = SimulatedTGI(replica(max_num_seqs=2), time_scale=1.0, cold_start_seconds=0.0, chat=VLLM_CHAT,
                       served_model_name=SERVED)  # fmt: skip
    srv = Server(bg, sim)
    try:

        async def submit_five() -> list[Any]:
            return [sim.submit(500, 400) for _ in range(5)]

        reqs = bg.run(submit_five())
        assert all(isinstance(r, Request) for r in reqs), reqs  # all accepted: vLLM queues, never 429
        # the second joins the batch once the first's prefill (~0.4 s simulated) is done
        wait_for("two running", lambda: srv.metrics()[labels("vllm:num_requests_running")] == 2, timeout=10)
        m = srv.metrics()
        assert m[labels("vllm:num_requests_running")] == 2 and m[labels("vllm:num_requests_waiting")] == 3
        eng = sim.engine
        usage = m[labels("vllm:kv_cache_usage_perc")]
        assert usage == m[labels("vllm:gpu_cache_usage_perc")] > 0
        assert usage == pytest.approx(2 * 900 / eng.kv_capacity, abs=1e-5)  # prompt + max_tokens of the running two
        # the running requests' tokens so far count in generation_tokens_total before they finish
        assert m[labels("vllm:generation_tokens_total")] >= 0
        assert m[labels("vllm:request_success_total", finished_reason="length")] == 0
    finally:
        sim.cancel_pending()
        bg.run(srv.served.close())


def test_the_autoscalers_vllm_queries_name_series_the_server_exports(server: Server) -> None:
    names = VLLM().metrics
    exported = {re.split(r"[{ ]", k, maxsplit=1)[0] for k in server.metrics()}
    assert {names.queue_gauge, names.running_gauge, names.requests_counter} <= exported
    for hist in (names.latency_histogram, names.queue_latency_histogram, names.slo_latency_histogram):
        assert {f"{hist}_bucket", f"{hist}_sum", f"{hist}_count"} <= exported
    # every metric the PromQL names (the autoscaler's queries for a vLLM QwenDeployment) is exported
    promql = " ".join(queries(names, 'namespace="llm",pod=~"chat-.*"').values())
    used = set(re.findall(r"(vllm:[a-z_]+)", promql))
    assert used and used <= exported, used - exported


# --- the load generator's vLLM dialect (the closed-loop e2e on engine vllm) -----------------------------


def test_load_generator_speaks_openai_streamed_to_vllm_and_times_the_first_token(bg: BackgroundLoop) -> None:
    sim = SimulatedTGI(replica(), time_scale=SCALE, cold_start_seconds=0.0, chat=VLLM_CHAT, served_model_name=SERVED)
    srv = Server(bg, sim)
    rows = [TraceRow(0.0, 200, 10), TraceRow(0.0, 80, 4)]

    async def run() -> LoadGenerator:
        load = LoadGenerator(srv.url, [], rows, max_requests=4, log=lambda _m: None, dialect="openai", model=SERVED)
        await load.start()
        await asyncio.gather(*(load.send_now(RequestSize(120, 6)) for _ in range(4)))
        await load.wait(drain_seconds=10)
        return load

    try:
        load = bg.run(run())
        assert (load.stats.sent, load.stats.ok, load.stats.errors) == (4, 4, 0), load.stats.error_samples
        for o in load.outcomes:
            assert o.queue_seconds is None and o.ttft_seconds is not None  # vLLM sends no x-queue-time
            assert 0 < o.ttft_seconds <= o.seconds and o.wait_seconds == o.ttft_seconds
        m = srv.metrics()
        assert m[labels("vllm:request_success_total", finished_reason="length")] == 4
        assert m[labels("vllm:generation_tokens_total")] == 4 * 6
        # the wrong served name is counted as an error, not an answer
        bad = bg.run(_one_with_model(srv.url, "not-served"))
        assert bad.stats.errors == 1 and "404" in bad.stats.error_samples[0]
    finally:
        bg.run(srv.served.close())


async def _one_with_model(url: str, model: str) -> LoadGenerator:
    load = LoadGenerator(
        url, [], [TraceRow(0.0, 10, 2)], max_requests=1, log=lambda _m: None, dialect="openai", model=model
    )
    await load.start()
    await load.send_now(RequestSize(10, 2))
    await load.wait(drain_seconds=5)
    return load

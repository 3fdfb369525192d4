"""A simulated TGI server: TGI's HTTP API with timing from the replica model, no GPU.

TGI needs GPUs; the sandbox and the closed-loop e2e tests have none. This server stands
in for one TGI pod: the same routes (``/generate``, ``/generate_stream``, ``/``,
``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``, ``/health``, ``/info``,
``/metrics``), status codes, error bodies and metric names, so ``huggingface_hub``'s
``InferenceClient``, the official ``openai`` client and the operator's PromQL work against it
unchanged. Timing comes from :class:`~qwen_operator.sim.engine.ReplicaEngine`
driven by the wall clock, optionally sped up by ``time_scale`` (virtual seconds per wall
second) for compressed demos. Everything it reports is SIMULATED and says so (``/info``
``"simulated": true``, a comment line in ``/metrics``, an ``x-simulated`` header).

Simplifications (documented, deliberate): prompt length is estimated as ~4 characters per
token; the reply is filler words, exactly ``max_new_tokens`` long (default
``default_max_new_tokens``), except on the chat route, where thinking and tool calls shape the
reply as the deployment's flags say (:mod:`.chat`: reasoning tokens are generated tokens and
cost decode time; ``tools`` get a well-formed tool call); durations in ``/metrics`` are virtual seconds (equal to wall
seconds at ``time_scale`` 1). Start-up: like TGI, the port refuses connections until the
modelled cold start is over (``startup="refuse"``: the socket is bound, so the port is
known, but only listens once ready); ``startup="503"`` listens at once and answers 503.

**vLLM**: a replica whose chat options say ``engine="vllm"`` (a vLLM pod, read back by
:mod:`.pod_replica`) serves vLLM's OpenAI server instead (:mod:`.vllm_api`: ``/v1/completions``,
``/v1/chat/completions``, ``/v1/models``, ``/health``, ``/version``, ``/metrics`` with vLLM's
metric names from :mod:`.vllm_metrics`; no ``/generate``), from the same engine and clock.

Run: ``python -m qwen_operator.sim.server --model Qwen/Qwen3-14B --gpu A10G --shards 1
--quantization fp8 --port 0`` (prints ``listening on 127.0.0.1:PORT``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..capacity.model import ReplicaModel
from .chat import DEFAULT_REASONING_TOKENS, ChatError, ChatOptions, delta, message, plan_reply
from .engine import OVERLOADED, ReplicaEngine, Request
from .tgi_metrics import TGIMetrics
from .tgi_payloads import (
    TGI_VERSION,
    completion_choice,
    details,
    error,
    estimate_tokens,
    models_list,
    text_of,
    token,
    usage,
)
from .vllm_metrics import VLLMMetrics
from .vllm_payloads import vllm_context_error, vllm_error

_POLL_WALL_S = 0.005


class SimulatedTGI:
    """One simulated replica: the engine, the virtual clock and TGI's metrics."""

    def __init__(
        self,
        model: ReplicaModel,
        time_scale: float = 1.0,
        cold_start_seconds: float | None = None,
        default_max_new_tokens: int = 100,
        chat: ChatOptions | None = None,
        served_model_name: str | None = None,
    ) -> None:
        self.model = model
        self.time_scale = time_scale
        self.default_max_new_tokens = default_max_new_tokens
        self.chat = chat or ChatOptions()
        self._t0 = time.monotonic()
        self.engine = ReplicaEngine(model, start_time=0.0)
        self.metrics = TGIMetrics(model.max_total_tokens)
        #: vLLM: the one name it answers to (``--served-model-name``, else the model)
        self.served_model_name = served_model_name or model.model.name
        self.vllm_metrics = VLLMMetrics(self.served_model_name, model.max_total_tokens)
        self._live: dict[Request, str] = {}  # vLLM: accepted, unfinished -> its finish reason
        cold = model.cold_start_seconds if cold_start_seconds is None else cold_start_seconds
        self.ready_at = cold  # virtual seconds after start
        self._wakeup = asyncio.Event()
        self._driver: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Future[Request]] = set()
        self._unbatched: list[Request] = []  # submitted, not yet in a batch (queue wait not observed)

    # --- virtual clock -----------------------------------------------------------------
    def now(self) -> float:
        return (time.monotonic() - self._t0) * self.time_scale

    @property
    def ready(self) -> bool:
        return self.now() >= self.ready_at

    def seconds_until_ready(self) -> float:
        """Wall seconds left of the cold start."""
        return max(0.0, (self.ready_at - self.now()) / self.time_scale)

    def sync(self) -> None:
        """Advance the engine to now and settle finished requests."""
        now = self.now()
        finished = self.engine.advance(now)
        # TGI observes the queue wait when a request enters a batch, not when it ends: a
        # long queue shows in the SLO signal while the requests are still waiting for tokens
        # (vLLM observes the time to first token once the first token exists)
        still_waiting: list[Request] = []
        vllm = self.vllm
        for req in self._unbatched:
            if vllm and req.first_token <= now:  # NaN compares False: not prefilled yet
                self.vllm_metrics.first_token(req)
            elif not vllm and not math.isnan(req.start):
                self.metrics.queue_duration.observe(req.queue_time)
            else:
                still_waiting.append(req)
        self._unbatched = still_waiting
        for req in finished:
            fut = req.tag
            self.metrics.request_success += 1
            self.metrics.duration.observe(req.duration)
            self.metrics.generated_tokens.observe(req.output_tokens)
            if vllm:
                self.vllm_metrics.finished(req, self._live.pop(req, "length"))
            if isinstance(fut, asyncio.Future):
                self._pending.discard(fut)
                if not fut.done():
                    fut.set_result(req)

    async def drive(self) -> None:
        """Background task: wake at the engine's next event (or a submission) and sync."""
        while True:
            self.sync()
            nxt = self.engine.next_event_time()
            wait = None if nxt == math.inf else max(0.0, (nxt - self.now()) / self.time_scale)
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=wait)
            except TimeoutError:
                pass

    # --- request life cycle ------------------------------------------------------------
    @property
    def vllm(self) -> bool:
        """This replica plays vLLM (its API, errors and metrics), not TGI."""
        return self.chat.engine == "vllm"

    def submit(
        self,
        prompt_tokens: int,
        max_new_tokens: int | None,
        output_tokens: int | None = None,
        finish_reason: str = "length",
    ) -> Request | web.Response:
        """Validate ``max_new_tokens`` and enqueue a request generating ``output_tokens`` (default: exactly
        ``max_new_tokens``); an error response (the engine's shape) when refused. ``finish_reason``:
        vLLM's for ``request_success_total`` (``stop`` for a completed tool call, else ``length``)."""
        self.metrics.request_count += 1
        if not self.ready:
            self.metrics.failure("unhealthy")
            if self.vllm:
                return vllm_error(503, "Model is loading (simulated cold start)", "ServiceUnavailableError")
            return error(503, "Model is loading (simulated cold start)", "unhealthy")
        new = self.default_max_new_tokens if max_new_tokens is None else max_new_tokens
        m = self.model
        if new < 1 or prompt_tokens > m.max_input_tokens or prompt_tokens + new > m.max_total_tokens:
            self.metrics.failure("validation")
            if self.vllm:
                return vllm_context_error(prompt_tokens, new, m.max_total_tokens)
            return error(
                422,
                f"Input validation error: `inputs` tokens ({prompt_tokens}) + `max_new_tokens` ({new}) must be "
                f"<= {m.max_total_tokens} and inputs <= {m.max_input_tokens}",
                "validation",
            )
        self.sync()
        fut: asyncio.Future[Request] = asyncio.get_running_loop().create_future()
        req = Request(self.now(), prompt_tokens, new if output_tokens is None else output_tokens, tag=fut)
        if not self.engine.submit(req):
            err = "overloaded" if req.status == OVERLOADED else "validation"
            self.metrics.failure(err)
            if self.vllm:  # vLLM queues without bound; only a replica built with a finite limit gets here
                if err == "overloaded":
                    return vllm_error(503, "The server is overloaded (simulated admission limit)", "ServiceUnavailable")
                return vllm_context_error(prompt_tokens, new, m.max_total_tokens)
            if err == "overloaded":
                return error(429, "Model is overloaded", "overloaded")
            return error(422, "Input validation error", "validation")
        self._pending.add(fut)
        self._unbatched.append(req)
        if self.vllm:
            self._live[req] = finish_reason
        self._wakeup.set()
        return req

    def cancel_pending(self) -> None:
        """Shutting down: the requests still in flight get no answer."""
        for fut in self._pending:
            fut.cancel()
        self._pending.clear()

    async def finished(self, req: Request) -> Request:
        fut = req.tag
        assert isinstance(fut, asyncio.Future)
        result: Request = await fut
        return result

    async def tokens(self, req: Request) -> AsyncIterator[int]:
        """Yield output token indexes as the engine produces them (wall-clock paced)."""
        sent = 0
        while sent < req.output_tokens:
            self.sync()
            n = self.engine.generated_tokens(req, self.now())
            while sent < n:
                yield sent
                sent += 1
            if sent < req.output_tokens:
                await asyncio.sleep(_POLL_WALL_S)

    def headers(self, req: Request) -> dict[str, str]:
        """Response headers: TGI's timing headers; vLLM sends none of them."""
        if self.vllm:
            return {"x-simulated": "true"}
        return {
            "x-simulated": "true",
            "x-compute-type": "simulated",
            "x-queue-time": str(int(req.queue_time * 1000)),
            "x-total-time": str(int(req.duration * 1000)),
            "x-generated-tokens": str(req.output_tokens),
            "x-prompt-tokens": str(req.prompt_tokens),
        }

    def invalid(self, message: str) -> web.Response:
        """A request refused before it reaches the engine (counted, as TGI counts it; vLLM: its 400)."""
        self.metrics.request_count += 1
        self.metrics.failure("validation")
        if self.vllm:
            return vllm_error(400, message, "BadRequestError")
        return error(422, message, "validation")

    def wrong_model(self, body: dict[str, Any]) -> web.Response | None:
        """vLLM's 404 for a ``model`` other than its served name (None: the name is right or absent)."""
        name = body.get("model")
        if name is None or name == self.served_model_name:
            return None
        self.metrics.request_count += 1
        self.metrics.failure("validation")
        return vllm_error(404, f"The model `{name}` does not exist.", "NotFoundError")

    def generating(self) -> list[int]:
        """vLLM: tokens produced so far by each accepted, unfinished request."""
        now = self.now()
        return [self.engine.generated_tokens(req, now) for req in self._live]

    def info(self) -> dict[str, Any]:
        m = self.model
        return {
            "model_id": m.model.name,
            "model_sha": None,
            "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": m.max_concurrent_requests,
            "max_best_of": 2,
            "max_stop_sequences": 4,
            "max_input_tokens": m.max_input_tokens,
            "max_total_tokens": m.max_total_tokens,
            "validation_workers": 2,
            "max_client_batch_size": 4,
            "router": "text-generation-router",
            "version": TGI_VERSION,
            "sha": None,
            "docker_label": None,
            "simulated": True,
            "simulation": {
                **m.describe(),
                "time_scale": self.time_scale,
                "startup_delay_s": self.ready_at,
                "chat": self.chat.describe(),
            },
        }


async def _sse(request: web.Request, sim: SimulatedTGI, req: Request, chunks: AsyncIterator[str]) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    resp.headers.update({"x-simulated": "true", "x-compute-type": "simulated"})
    await resp.prepare(request)
    async for chunk in chunks:
        await resp.write(f"data: {chunk}\n\n".encode())
    await resp.write_eof()
    return resp


async def _merge(streams: list[AsyncIterator[str]]) -> AsyncIterator[str]:
    """Events of several streams as each arrives (TGI interleaves a multi-prompt completion)."""
    if len(streams) == 1:
        async for item in streams[0]:
            yield item
        return
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    async def pump(stream: AsyncIterator[str]) -> None:
        try:
            async for item in stream:
                await queue.put(item)
        finally:
            await queue.put(None)

    tasks = [asyncio.get_running_loop().create_task(pump(s)) for s in streams]
    try:
        left = len(tasks)
        while left:
            got = await queue.get()
            if got is None:
                left -= 1
            else:
                yield got
        await asyncio.gather(*tasks)  # a failed stream fails the response
    finally:
        for t in tasks:
            t.cancel()


def build_app(sim: SimulatedTGI) -> web.Application:
    """The aiohttp application serving TGI's routes from ``sim``."""

    async def generate(request: web.Request, stream: bool | None = None) -> web.StreamResponse:
        body = await request.json()
        params = body.get("parameters") or {}
        stream = bool(body.get("stream", False)) if stream is None else stream
        got = sim.submit(estimate_tokens(str(body.get("inputs", ""))), params.get("max_new_tokens"))
        if isinstance(got, web.Response):
            return got
        req = got
        if not stream:
            await sim.finished(req)
            out: dict[str, Any] = {"generated_text": text_of(req.output_tokens)}
            if params.get("details"):
                out["details"] = details(req, with_tokens=True)
            return web.json_response(out, headers=sim.headers(req))

        async def events() -> AsyncIterator[str]:
            async for i in sim.tokens(req):
                last = i == req.output_tokens - 1
                if last:
                    await sim.finished(req)
                yield json.dumps(
                    {
                        "index": i,
                        "token": token(i),
                        "top_tokens": None,
                        "generated_text": text_of(req.output_tokens) if last else None,
                        "details": details(req, with_tokens=False) if last else None,
                    }
                )

        return await _sse(request, sim, req, events())

    async def generate_stream(request: web.Request) -> web.StreamResponse:
        return await generate(request, stream=True)

    async def generate_once(request: web.Request) -> web.StreamResponse:
        return await generate(request, stream=False)

    async def chat(request: web.Request) -> web.StreamResponse:
        """OpenAI chat: thinking and tool calls as :mod:`.chat` lays the reply out."""
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return sim.invalid("Failed to deserialize the JSON body into the target type: expected an object")
        if sim.vllm and (wrong := sim.wrong_model(body)) is not None:
            return wrong
        messages = body.get("messages") or []
        text = "".join(str(m.get("content") or "") for m in messages if isinstance(m, dict))
        prompt = estimate_tokens(text) + 4 * len(messages)  # chat template: ~4 tokens per message
        tools = body.get("tools")
        if isinstance(tools, list) and tools:
            prompt += estimate_tokens(json.dumps(tools)) + 40  # signatures and instructions in the system turn
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
        budget = sim.default_max_new_tokens if max_tokens is None else int(max_tokens)
        room = sim.model.max_total_tokens - prompt
        cap = budget if max_tokens is not None else room
        try:
            reply = plan_reply(body, sim.chat, sim.model.model.thinking, budget, cap)
        except ChatError as exc:
            if sim.vllm:
                sim.metrics.request_count += 1
                sim.metrics.failure("validation")
                return vllm_error(exc.status, str(exc), "BadRequestError")
            return sim.invalid(str(exc))
        reason = "stop" if reply.finish_reason == "tool_calls" else "length"  # vLLM's FinishReason
        got = sim.submit(prompt, max_tokens, output_tokens=len(reply.tokens), finish_reason=reason)
        if isinstance(got, web.Response):
            return got
        req = got
        base = {"id": "", "created": int(time.time()), "model": sim.model.model.name}
        base["system_fingerprint"] = f"{TGI_VERSION}-simulated"
        if sim.vllm:  # vLLM: a request id, the served name, no fingerprint
            base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": base["created"], "model": sim.served_model_name}
        used = usage(req.prompt_tokens, req.output_tokens)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if not body.get("stream"):
            await sim.finished(req)
            choice = {"index": 0, "message": message(reply, sim.chat), "logprobs": None}
            choice["finish_reason"] = reply.finish_reason
            return web.json_response(
                {**base, "object": "chat.completion", "choices": [choice], "usage": used}, headers=sim.headers(req)
            )

        async def events() -> AsyncIterator[str]:
            async for i in sim.tokens(req):
                last = i == req.output_tokens - 1
                if last:
                    await sim.finished(req)
                finish = reply.finish_reason if last else None
                choice = {"index": 0, "delta": delta(reply, i, sim.chat), "logprobs": None, "finish_reason": finish}
                chunk = {**base, "object": "chat.completion.chunk", "choices": [choice]}
                if last and include_usage and not sim.vllm:
                    chunk["usage"] = used
                yield json.dumps(chunk)
            if include_usage and sim.vllm:  # vLLM: usage in a chunk of its own, with no choices
                yield json.dumps({**base, "object": "chat.completion.chunk", "choices": [], "usage": used})
            yield "[DONE]"

        return await _sse(request, sim, req, events())

    async def completions(request: web.Request) -> web.StreamResponse:
        """OpenAI ``/v1/completions`` as TGI serves it: ``prompt`` is one string or a list of up
        to ``max_client_batch_size`` strings, each generated as its own request (and counted
        so); ``max_tokens`` is ``max_new_tokens``; no ``suffix``. The stream interleaves the
        prompts' tokens, each event one ``text_completion`` chunk (``finish_reason`` ``""``)
        and, per prompt, a final one carrying ``finish_reason`` and ``usage``; then ``[DONE]``."""
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return sim.invalid("Failed to deserialize the JSON body into the target type: expected an object")
        raw = body.get("prompt")
        prompts = [raw] if isinstance(raw, str) else raw
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            return sim.invalid("Failed to deserialize the JSON body: `prompt` must be a string or a list of strings")
        if not prompts:
            return sim.invalid("Empty array detected. Do not use an empty array for the prompt.")
        if body.get("suffix") is not None:
            return sim.invalid("Suffix is not supported and can be achieved by preprocessing the prompt.")
        batch = int(sim.info()["max_client_batch_size"])
        if len(prompts) > batch:
            return sim.invalid(f"Number of prompts exceeds the maximum allowed batch size of {batch}")
        reqs: list[Request] = []
        for prompt in prompts:
            got = sim.submit(estimate_tokens(prompt), body.get("max_tokens"))
            if isinstance(got, web.Response):
                return got  # as in TGI: the first refusal answers; requests already queued run on
            reqs.append(got)
        base = {"id": "", "created": int(time.time()), "model": sim.model.model.name}
        base["system_fingerprint"] = f"{TGI_VERSION}-simulated"
        if not body.get("stream"):
            for req in reqs:
                await sim.finished(req)
            choices = [completion_choice(i, text_of(r.output_tokens), "length") for i, r in enumerate(reqs)]
            prompt_tokens = sum(r.prompt_tokens for r in reqs)
            generated = sum(r.output_tokens for r in reqs)
            headers = {
                "x-simulated": "true",
                "x-compute-type": "simulated",
                "x-total-time": str(sum(int(r.duration * 1000) for r in reqs)),
                "x-queue-time": str(sum(int(r.queue_time * 1000) for r in reqs)),
                "x-prompt-tokens": str(prompt_tokens),
                "x-generated-tokens": str(generated),
            }
            out = {**base, "object": "text_completion", "choices": choices, "usage": usage(prompt_tokens, generated)}
            return web.json_response(out, headers=headers)

        async def events(index: int, req: Request) -> AsyncIterator[str]:
            async for i in sim.tokens(req):
                last = i == req.output_tokens - 1
                if last:
                    await sim.finished(req)
                chunk = {**base, "object": "text_completion"}
                chunk["choices"] = [completion_choice(index, token(i)["text"], "length" if last else "")]
                if last:
                    chunk["usage"] = usage(req.prompt_tokens, req.output_tokens)
                yield json.dumps(chunk)

        async def all_events() -> AsyncIterator[str]:
            async for event in _merge([events(i, r) for i, r in enumerate(reqs)]):
                yield event
            yield "[DONE]"

        return await _sse(request, sim, reqs[0], all_events())

    async def models(request: web.Request) -> web.Response:
        return web.json_response(models_list(sim.model.model.name), headers={"x-simulated": "true"})

    async def health(request: web.Request) -> web.Response:
        if not sim.ready:
            return error(503, "Model is loading (simulated cold start)", "unhealthy")
        return web.Response(status=200, headers={"x-simulated": "true"})

    async def info(request: web.Request) -> web.Response:
        return web.json_response(sim.info())

    async def metrics(request: web.Request) -> web.Response:
        sim.sync()
        header = f"SIMULATED TGI replica ({sim.model.model.name} on {sim.model.shards}x {sim.model.gpu.name})"
        eng = sim.engine
        text = sim.metrics.render(eng.queue_size, eng.batch_size, eng.kv_tokens_reserved, header)
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    async def start_driver(app: web.Application) -> None:
        sim._driver = asyncio.get_running_loop().create_task(sim.drive())

    async def stop_driver(app: web.Application) -> None:
        if sim._driver is not None:
            sim._driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sim._driver

    app = web.Application()
    app.on_startup.append(start_driver)
    app.on_cleanup.append(stop_driver)
    if sim.vllm:
        from .vllm_api import add_vllm_routes  # imports this module: bound late

        add_vllm_routes(app, sim, chat)
        return app
    app.router.add_post("/", generate)
    app.router.add_post("/generate", generate_once)
    app.router.add_post("/generate_stream", generate_stream)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/info", info)
    app.router.add_get("/metrics", metrics)
    return app


@dataclass
class ServedTGI:
    """A running simulated server: its bound port and how to stop it."""

    sim: SimulatedTGI
    runner: web.AppRunner
    port: int
    listen_task: asyncio.Task[None] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def close(self) -> None:
        if self.listen_task is not None:
            self.listen_task.cancel()
        self.sim.cancel_pending()
        await self.runner.cleanup()


async def serve(sim: SimulatedTGI, host: str = "127.0.0.1", port: int = 0, startup: str = "refuse") -> ServedTGI:
    """Start serving ``sim`` on ``host:port`` (0 picks a free port).

    ``startup="refuse"`` binds now but listens only after the cold start (connections are
    refused meanwhile, as with TGI); ``"503"`` listens now and answers 503 until ready.
    """
    # in-flight requests get 1 s on shutdown (TGI drains for up to 90 s; a simulation needn't)
    runner = web.AppRunner(build_app(sim), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.setblocking(False)
    site = web.SockSite(runner, sock)
    served = ServedTGI(sim, runner, int(sock.getsockname()[1]))
    if startup == "refuse" and not sim.ready:

        async def listen_when_ready() -> None:
            await asyncio.sleep(sim.seconds_until_ready())
            await site.start()

        served.listen_task = asyncio.get_running_loop().create_task(listen_when_ready())
    else:
        await site.start()
    return served


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m qwen_operator.sim.server", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="Qwen/Qwen3-14B")
    ap.add_argument("--gpu", default="A10G")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--quantization", default="fp8")
    ap.add_argument("--max-concurrent-requests", type=int, default=128)
    ap.add_argument("--max-input-tokens", type=int, default=8192)
    ap.add_argument("--max-total-tokens", type=int, default=16384)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--time-scale", type=float, default=1.0, help="virtual seconds per wall second")
    ap.add_argument("--cold-start", type=float, default=None, help="virtual seconds (default: the model's)")
    ap.add_argument("--startup", choices=("refuse", "503"), default="refuse")
    ap.add_argument("--default-max-new-tokens", type=int, default=100)
    ap.add_argument("--engine", choices=("tgi", "vllm"), default="tgi", help="whose API, metrics and chat to mimic")
    ap.add_argument("--served-model-name", default=None, help="vLLM: the model name it answers to")
    ap.add_argument("--thinking", choices=("on", "off"), default="on", help="the deployment's default (reasoning)")
    ap.add_argument("--reasoning-parser", default=None, help="as vLLM's: reasoning in reasoning_content")
    ap.add_argument("--tool-call-parser", default=None, help="as vLLM's, with --enable-auto-tool-choice")
    ap.add_argument("--reasoning-tokens", type=int, default=DEFAULT_REASONING_TOKENS)
    args = ap.parse_args(argv)
    chat = ChatOptions(
        engine=args.engine,
        thinking_default=args.thinking == "on",
        reasoning_parser=args.reasoning_parser,
        tool_call_parser=args.tool_call_parser,
        reasoning_tokens=args.reasoning_tokens,
    )
    replica = ReplicaModel.build_for(
        args.engine,
        args.model,
        args.gpu,
        args.shards,
        args.quantization,
        max_concurrent_requests=args.max_concurrent_requests,
        max_input_tokens=args.max_input_tokens,
        max_total_tokens=args.max_total_tokens,
    )

    async def run() -> None:
        sim = SimulatedTGI(
            replica, args.time_scale, args.cold_start, args.default_max_new_tokens, chat, args.served_model_name
        )
        served = await serve(sim, args.host, args.port, args.startup)
        ready_in = sim.seconds_until_ready()
        engine = "vLLM" if sim.vllm else "TGI"
        print(f"listening on {args.host}:{served.port} (SIMULATED {engine}; ready in {ready_in:.1f}s)", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await served.close()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

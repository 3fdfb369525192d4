"""vLLM's OpenAI-compatible server routes, for a simulated replica that plays vLLM.

:func:`add_vllm_routes` gives :class:`~.server.SimulatedTGI` the surface of ``vllm serve``
(v0.10): ``POST /v1/completions`` and ``/v1/chat/completions`` (the chat route is the shared
one in :mod:`.server`, which shapes thinking and tool calls per :mod:`.chat` and answers with
vLLM's errors, id and served name when the replica plays vLLM), ``GET /v1/models``,
``/health`` (200, empty), ``/version`` and ``/metrics`` (vLLM's names, :mod:`.vllm_metrics`).
There is no ``/generate``: TGI's native route is a 404 (``{"detail": "Not Found"}``) here, as on
a real vLLM pod, which is what the canary's per-engine smoke request
(:class:`~qwen_operator.engines.runtimes.SmokeRequest`) guards against.

``/v1/completions`` as vLLM answers it: ``model`` must be the served name (else 404);
``prompt`` is a string, a list of strings, or token ids (a list of ints, or a list of such
lists), each prompt a request of its own; ``max_tokens`` defaults to 16; every prompt is
checked against ``--max-model-len`` before any is generated (400). Requests over
``--max-num-seqs`` wait in vLLM's unbounded queue (never a 429). The stream sends one
``text_completion`` chunk per token (``finish_reason`` null until a prompt's last token), with
``stream_options.include_usage`` a last chunk with no choices and the usage, then ``[DONE]``.
No timing headers: vLLM sends none (TGI's ``x-queue-time`` is TGI's). SIMULATED: the text is
filler, the timings the replica model's.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from .engine import Request
from .server import SimulatedTGI, _merge, _sse
from .tgi_payloads import estimate_tokens, text_of, token
from .vllm_payloads import (
    COMPLETIONS_DEFAULT_MAX_TOKENS,
    VLLM_VERSION,
    completion_choice,
    completion_usage,
    models_list,
    vllm_context_error,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _prompt_tokens(raw: Any) -> list[int] | None:
    """Token counts of ``prompt`` (text: estimated; token ids: counted); None when malformed."""
    if isinstance(raw, str):
        return [estimate_tokens(raw)]
    if isinstance(raw, list) and raw and all(isinstance(p, int) for p in raw):
        return [len(raw)]
    if isinstance(raw, list) and raw and all(isinstance(p, str) for p in raw):
        return [estimate_tokens(p) for p in raw]
    if isinstance(raw, list) and raw and all(isinstance(p, list) and p for p in raw):
        return [len(p) for p in raw]
    return None


@web.middleware
async def _fastapi_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """An unknown route or method answers as vLLM's FastAPI app does: ``{"detail": "Not Found"}``."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status in (404, 405):
            return web.json_response({"detail": exc.reason}, status=exc.status, headers={"x-simulated": "true"})
        raise


def add_vllm_routes(app: web.Application, sim: SimulatedTGI, chat: Handler) -> None:
    """Serve vLLM's routes from ``sim`` on ``app`` (``chat``: the shared chat handler)."""
    app.middlewares.append(_fastapi_errors)

    async def completions(request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return sim.invalid("Expected a JSON object as the request body")
        if (wrong := sim.wrong_model(body)) is not None:
            return wrong
        sizes = _prompt_tokens(body.get("prompt"))
        if sizes is None:
            return sim.invalid("prompt must be a string, a list of strings or a list of token ids, and not empty")
        max_tokens = body.get("max_tokens")
        new = COMPLETIONS_DEFAULT_MAX_TOKENS if max_tokens is None else int(max_tokens)
        limit = sim.model.max_total_tokens
        for size in sizes:  # vLLM validates every prompt before it schedules any
            if size + new > limit or new < 1:
                sim.metrics.request_count += 1
                sim.metrics.failure("validation")
                return vllm_context_error(size, new, limit)
        reqs: list[Request] = []
        for size in sizes:
            got = sim.submit(size, new)
            if isinstance(got, web.Response):
                return got
            reqs.append(got)
        base = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": sim.served_model_name}
        if not body.get("stream"):
            for req in reqs:
                await sim.finished(req)
            choices = [completion_choice(i, text_of(r.output_tokens), "length") for i, r in enumerate(reqs)]
            choices = [{**c, "prompt_logprobs": None} for c in choices]
            used = completion_usage(sum(r.prompt_tokens for r in reqs), sum(r.output_tokens for r in reqs))
            out = {**base, "object": "text_completion", "choices": choices, "usage": used}
            out.update(service_tier=None, system_fingerprint=None, kv_transfer_params=None)
            return web.json_response(out, headers={"x-simulated": "true"})

        async def events(index: int, req: Request) -> AsyncIterator[str]:
            async for i in sim.tokens(req):
                last = i == req.output_tokens - 1
                if last:
                    await sim.finished(req)
                choice = completion_choice(index, token(i)["text"], "length" if last else None)
                yield json.dumps({**base, "object": "text_completion", "choices": [choice]})

        async def all_events() -> AsyncIterator[str]:
            async for event in _merge([events(i, r) for i, r in enumerate(reqs)]):
                yield event
            if (body.get("stream_options") or {}).get("include_usage"):
                used = completion_usage(sum(r.prompt_tokens for r in reqs), sum(r.output_tokens for r in reqs))
                yield json.dumps({**base, "object": "text_completion", "choices": [], "usage": used})
            yield "[DONE]"

        return await _sse(request, sim, reqs[0], all_events())

    async def models(request: web.Request) -> web.Response:
        body = models_list(sim.served_model_name, sim.model.model.name, sim.model.max_total_tokens)
        return web.json_response(body, headers={"x-simulated": "true"})

    async def health(request: web.Request) -> web.Response:
        return web.Response(status=200, headers={"x-simulated": "true"})

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"version": VLLM_VERSION}, headers={"x-simulated": "true"})

    async def metrics(request: web.Request) -> web.Response:
        sim.sync()
        m, eng = sim.model, sim.engine
        header = f"SIMULATED vLLM {VLLM_VERSION} replica ({m.model.name} on {m.shards}x {m.gpu.name})"
        kv = eng.kv_tokens_reserved / max(1, eng.kv_capacity)
        text = sim.vllm_metrics.render(eng.queue_size, eng.batch_size, kv, sim.generating(), header)
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/version", version)
    app.router.add_get("/metrics", metrics)

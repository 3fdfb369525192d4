"""Real client libraries, unchanged, through the router's proxy in front of two simulated TGI
servers: the official ``openai`` client (chat, chat streaming, ``/v1/completions`` plain and
streaming, ``/v1/models``) and ``huggingface_hub.InferenceClient`` (chat, text generation,
streaming). What a new user tries first must work: these are the routes TGI itself serves.

Servers and router run on one background event loop (the clients are synchronous, as users
call them). The router runs with its default settings (affinity on), fed the two servers as
a static endpoint set. No timing assertions: streams are checked by their chunk count, one
per generated token, and their content.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import openai
import pytest
from huggingface_hub import InferenceClient
from openai.types.chat import ChatCompletionMessageParam

from qwen_operator.capacity.model import ReplicaModel
from qwen_operator.router.discovery import StaticEndpoints, Target
from qwen_operator.router.proxy import Router
from qwen_operator.sim.server import ServedTGI, SimulatedTGI, serve
from qwen_operator.sim.tgi_payloads import estimate_tokens
from qwen_operator.testing.background import BackgroundLoop
from qwen_operator.testing.wait import wait_for

T = TypeVar("T")
SCALE = 50.0  # virtual seconds per wall second: short simulated replies
MODEL_ID = "Qwen/Qwen3-14B"
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You answer in one sentence."},
    {"role": "user", "content": "What is continuous batching?"},
]
HF_MESSAGES: list[dict[str, Any]] = [dict(m) for m in MESSAGES]  # the same, as huggingface_hub types them


Loop = BackgroundLoop  # servers and the router live on it; sync clients call in


@dataclass
class Fleet:
    bg: Loop
    sims: list[ServedTGI]
    router: Router

    @property
    def url(self) -> str:
        return self.router.url

    def counted(self) -> tuple[int, int]:
        """Requests the simulated engines counted (``tgi_request_count``, ``tgi_request_success``), summed."""

        def read() -> tuple[int, int]:
            for s in self.sims:
                s.sim.sync()
            metrics = [s.sim.metrics for s in self.sims]
            return sum(m.request_count for m in metrics), sum(m.request_success for m in metrics)

        return self.bg.call(read)


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    bg = Loop()
    model = ReplicaModel.build("Qwen3-14B", "A10G", 1, "fp8")
    sims = [
        bg.run(serve(SimulatedTGI(model, time_scale=SCALE, cold_start_seconds=0.0, default_max_new_tokens=8)))
        for _ in range(2)
    ]
    router = Router()  # the defaults a user gets (affinity on, holding, retries)
    source = StaticEndpoints([Target(f"sim-{i}", s.base_url, "A10G") for i, s in enumerate(sims)])
    bg.run(router.start(source=source, shutdown_timeout=1))
    wait_for("router synced", lambda: router.synced)
    yield Fleet(bg, sims, router)
    bg.run(router.stop())
    for s in sims:
        bg.run(s.close())
    bg.close()


@pytest.fixture
def oai(fleet: Fleet) -> Iterator[openai.OpenAI]:
    # a self-hosted server: any key; no client retries, so a failure shows as it happened
    client = openai.OpenAI(base_url=fleet.url + "/v1", api_key="unused", max_retries=0, timeout=30)
    yield client
    client.close()


def words(text: str | None) -> list[str]:
    return (text or "").split()


# --- the official OpenAI client --------------------------------------------------------------


def test_openai_models_list_names_the_served_model(fleet: Fleet, oai: openai.OpenAI) -> None:
    models = list(oai.models.list())
    assert [m.id for m in models] == [MODEL_ID]
    (m,) = models
    assert m.object == "model" and m.owned_by == MODEL_ID


def test_openai_chat_completion_and_stream(fleet: Fleet, oai: openai.OpenAI) -> None:
    before = fleet.counted()
    chat = oai.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=7)
    assert chat.object == "chat.completion" and chat.model == MODEL_ID
    (choice,) = chat.choices
    assert choice.message.role == "assistant" and len(words(choice.message.content)) == 7
    assert choice.finish_reason == "length"
    assert chat.usage is not None and chat.usage.completion_tokens == 7
    assert chat.usage.prompt_tokens > 0 and chat.usage.total_tokens == chat.usage.prompt_tokens + 7

    stream = oai.chat.completions.create(
        model=MODEL_ID,
        messages=MESSAGES,
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert len(chunks) == 6  # one event per token: the stream arrived in pieces, not as one body
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert len(words(text)) == 6
    assert [c.choices[0].finish_reason for c in chunks] == [None] * 5 + ["length"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    # the simulated engines counted both requests, and finished them
    after = fleet.counted()
    assert (after[0] - before[0], after[1] - before[1]) == (2, 2)


def test_openai_completions_plain_batch_and_stream(fleet: Fleet, oai: openai.OpenAI) -> None:
    before = fleet.counted()
    prompt = "Once upon a time, in a cluster far away,"
    done = oai.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=5)
    assert done.object == "text_completion" and done.model == MODEL_ID
    (choice,) = done.choices
    assert choice.index == 0 and len(words(choice.text)) == 5 and choice.finish_reason == "length"
    assert done.usage is not None
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (estimate_tokens(prompt), 5)
    assert done.usage.total_tokens == estimate_tokens(prompt) + 5

    # a list of prompts: one choice each, in order; usage summed
    batch = oai.completions.create(model=MODEL_ID, prompt=["a short one", "and another prompt"], max_tokens=3)
    assert [c.index for c in batch.choices] == [0, 1]
    assert all(len(words(c.text)) == 3 for c in batch.choices)
    assert batch.usage is not None and batch.usage.completion_tokens == 6

    chunks = list(oai.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=9, stream=True))
    assert len(chunks) == 9  # one event per token
    assert all(c.object == "text_completion" and c.choices[0].index == 0 for c in chunks)
    assert len(words("".join(c.choices[0].text for c in chunks))) == 9
    assert chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 9
    assert all(c.usage is None for c in chunks[:-1])  # TGI sends usage on the final event only

    # a streamed batch interleaves both prompts' tokens, each finishing once
    chunks = list(oai.completions.create(model=MODEL_ID, prompt=["one", "two"], max_tokens=4, stream=True))
    assert sorted(c.choices[0].index for c in chunks) == [0] * 4 + [1] * 4
    finals = [c for c in chunks if c.usage is not None]
    assert sorted(c.choices[0].index for c in finals) == [0, 1]

    after = fleet.counted()  # a prompt is a request to the engine: 1 + 2 + 1 + 2
    assert (after[0] - before[0], after[1] - before[1]) == (6, 6)


def test_openai_completions_errors_surface_as_the_client_exceptions(fleet: Fleet, oai: openai.OpenAI) -> None:
    before = fleet.counted()
    with pytest.raises(openai.UnprocessableEntityError) as err:
        oai.completions.create(model=MODEL_ID, prompt="x", suffix="y", max_tokens=2)
    # TGI's error body is {"error": "<message>", "error_type": ...}: the client exposes the message as .body
    assert "Suffix is not supported" in str(err.value.body)
    with pytest.raises(openai.UnprocessableEntityError) as err:
        oai.completions.create(model=MODEL_ID, prompt=["p"] * 5, max_tokens=2)
    assert "maximum allowed batch size of 4" in str(err.value.body)
    with pytest.raises(openai.UnprocessableEntityError) as err:
        oai.completions.create(model=MODEL_ID, prompt="x", max_tokens=100_000)
    assert "max_new_tokens" in str(err.value.body)
    after = fleet.counted()  # refused requests are counted (as failures), none succeeded
    assert (after[0] - before[0], after[1] - before[1]) == (3, 0)
    failures = fleet.bg.call(lambda: sum(s.sim.metrics.request_failure.get("validation", 0) for s in fleet.sims))
    assert failures >= 3


# --- huggingface_hub -----------------------------------------------------------------------------


def test_huggingface_inference_client_chat_generation_and_streams(fleet: Fleet) -> None:
    client = InferenceClient(base_url=fleet.url)
    before = fleet.counted()
    out = client.chat_completion(HF_MESSAGES, max_tokens=7)
    assert out.choices[0].message.role == "assistant" and len(words(out.choices[0].message.content)) == 7
    assert out.usage.completion_tokens == 7 and out.model == MODEL_ID

    stream = list(client.chat_completion(HF_MESSAGES, max_tokens=6, stream=True))
    assert len(stream) == 6 and stream[-1].choices[0].finish_reason == "length"
    assert len(words("".join(c.choices[0].delta.content or "" for c in stream))) == 6

    gen = client.text_generation("hello there", max_new_tokens=4, details=True)
    assert len(words(gen.generated_text)) == 4
    assert gen.details is not None and gen.details.generated_tokens == 4 and len(gen.details.tokens) == 4

    pieces = list(client.text_generation("hello there", max_new_tokens=9, stream=True, details=True))
    assert len(pieces) == 9 and all(p.token.text.strip() for p in pieces)
    assert pieces[-1].details is not None and pieces[-1].details.generated_tokens == 9
    assert pieces[-1].generated_text == "".join(p.token.text for p in pieces)

    after = fleet.counted()
    assert (after[0] - before[0], after[1] - before[1]) == (4, 4)

"""Tool calling through the router, with the real clients: ``openai`` and
``huggingface_hub.InferenceClient`` send ``tools`` / ``tool_choice`` to the router, which passes
the body and the tool-call answer (plain and streamed) through unchanged to and from a simulated
server (vLLM-style: reasoning parser and hermes tool parser; and TGI-style).

Unchanged is checked byte for byte: the same request sent to the server directly and through
the router gets the same answer (SSE events included) but for ``created``, the clock second.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.request import Request as HTTPRequest
from urllib.request import urlopen

import openai
import pytest
from huggingface_hub import InferenceClient

from qwen_operator.capacity.model import ReplicaModel
from qwen_operator.router.discovery import StaticEndpoints, Target
from qwen_operator.router.proxy import Router
from qwen_operator.sim.chat import ChatOptions
from qwen_operator.sim.server import ServedTGI, SimulatedTGI, serve
from qwen_operator.testing.background import BackgroundLoop
from qwen_operator.testing.wait import wait_for

MODEL_ID = "Qwen/Qwen3-14B"
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "f"]}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "book_table",
            "parameters": {"type": "object", "properties": {"people": {"type": "integer"}}},
        },
    },
]
MESSAGES: list[dict[str, Any]] = [{"role": "user", "content": "Book a table for two /no_think"}]
NAMED = {"type": "function", "function": {"name": "book_table"}}


@dataclass
class Stack:
    bg: BackgroundLoop
    server: ServedTGI
    router: Router


def stack(options: ChatOptions) -> Iterator[Stack]:
    bg = BackgroundLoop()
    model = ReplicaModel.build("Qwen3-14B", "L40S", 1, "fp8")
    server = bg.run(serve(SimulatedTGI(model, 200.0, 0.0, 8, chat=options)))
    router = Router()
    bg.run(router.start(source=StaticEndpoints([Target("sim-0", server.base_url, "L40S")]), shutdown_timeout=1))
    wait_for("router synced", lambda: router.synced)
    yield Stack(bg, server, router)
    bg.run(router.stop())
    bg.run(server.close())
    bg.close()


@pytest.fixture(scope="module")
def vllm() -> Iterator[Stack]:
    yield from stack(ChatOptions("vllm", reasoning_parser="qwen3", tool_call_parser="hermes"))


@pytest.fixture(scope="module")
def tgi() -> Iterator[Stack]:
    yield from stack(ChatOptions("tgi"))


def raw(url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The answer's JSON objects (one, or every SSE event) without ``created``."""
    req = HTTPRequest(url + "/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urlopen(req, timeout=60) as resp:
        text = resp.read().decode()
    docs = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")] or [json.loads(text)]
    for d in docs:
        d.pop("created", None)
    return docs


@pytest.mark.parametrize("stream", [False, True])
def test_router_passes_tool_requests_and_answers_through_unchanged(tgi: Stack, stream: bool) -> None:
    body = {"model": MODEL_ID, "messages": MESSAGES, "tools": TOOLS, "tool_choice": NAMED, "stream": stream}
    direct, routed = raw(tgi.server.base_url, body), raw(tgi.router.url, body)
    assert routed == direct
    # and the body arrived intact: the server called the function tool_choice named, with its schema
    calls = [
        tc
        for d in routed
        for c in d["choices"]
        for tc in (c.get("message") or c.get("delta") or {}).get("tool_calls") or []
    ]
    assert calls and {c["function"].get("name") for c in calls} - {None} == {"book_table"}
    args = "".join(c["function"]["arguments"] for c in calls) if stream else calls[0]["function"]["arguments"]
    assert json.loads(args) == {"people": 1}


def test_openai_client_tool_call_and_stream(vllm: Stack) -> None:
    client = openai.OpenAI(base_url=vllm.router.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    out = client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, tools=TOOLS)  # type: ignore[arg-type]
    (choice,) = out.choices
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("chatcmpl-tool-")
    assert json.loads(call.function.arguments) == {"city": "simulated", "unit": "celsius"}

    chunks = list(
        client.chat.completions.create(
            model=MODEL_ID,
            messages=MESSAGES,
            tools=TOOLS,  # type: ignore[arg-type]
            tool_choice=NAMED,  # type: ignore[arg-type]
            stream=True,
        )
    )
    deltas = [tc for c in chunks for tc in c.choices[0].delta.tool_calls or []]
    assert deltas[0].function is not None and deltas[0].function.name == "book_table"
    assert {d.index for d in deltas} == {0} and len({d.id for d in deltas}) == 1
    assert json.loads("".join(d.function.arguments or "" for d in deltas if d.function)) == {"people": 1}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    client.close()


def test_huggingface_client_tool_call_and_stream(vllm: Stack, tgi: Stack) -> None:
    for s in (vllm, tgi):
        # vLLM answers only to its served name (huggingface_hub sends "dummy" without a model: vLLM's 404)
        client = InferenceClient(base_url=s.router.url)
        out = client.chat_completion(MESSAGES, model=MODEL_ID, tools=TOOLS, tool_choice="required")  # type: ignore[arg-type]
        (choice,) = out.choices
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.message.tool_calls or []
        assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"] == "simulated"

        stream = list(client.chat_completion(MESSAGES, model=MODEL_ID, tools=TOOLS, tool_choice=NAMED, stream=True))  # type: ignore[arg-type]
        pieces = [tc for c in stream for tc in c.choices[0].delta.tool_calls or []]
        assert pieces[0].function.name == "book_table"
        assert json.loads("".join(p.function.arguments for p in pieces)) == {"people": 1}
        assert stream[-1].choices[0].finish_reason == "tool_calls"


def test_thinking_reply_through_the_router_with_both_clients(vllm: Stack, tgi: Stack) -> None:
    think = [{"role": "user", "content": "Why is the sky blue?"}]
    oai = openai.OpenAI(base_url=vllm.router.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    out = oai.chat.completions.create(model=MODEL_ID, messages=think)  # type: ignore[arg-type]
    extra = out.choices[0].message.model_extra or {}
    assert extra.get("reasoning_content") and len((out.choices[0].message.content or "").split()) == 8
    off = oai.chat.completions.create(
        model=MODEL_ID,
        messages=think,  # type: ignore[arg-type]
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )
    assert out.usage is not None and off.usage is not None and off.usage.completion_tokens == 8
    assert out.usage.completion_tokens > 8 + 900
    oai.close()
    hf = InferenceClient(base_url=tgi.router.url).chat_completion(think)  # type: ignore[arg-type]
    assert (hf.choices[0].message.content or "").startswith("<think>\n")

"""Thinking on/off and tool calling, end to end without a cluster: the rendered engine flags and
the chat-template init container, our non-thinking template rendered by Jinja (what vLLM runs;
TGI's minijinja is the same language), the simulated fleet reading the rendered pod back, and
the simulated server's replies (reasoning tokens count as generated tokens: they take decode time).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request as HTTPRequest
from urllib.request import urlopen

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from qwen_operator.api import QwenDeploymentSpec
from qwen_operator.capacity.model import ReplicaModel
from qwen_operator.catalog import Catalog
from qwen_operator.engines.chat_template import (
    NO_THINKING_TEMPLATE,
    TGI_TOKENIZER_CONFIG,
    VLLM_CHAT_TEMPLATE,
    tgi_tokenizer_config,
)
from qwen_operator.planner import plan
from qwen_operator.render import RenderContext, render
from qwen_operator.sim.chat import DEFAULT_REASONING_TOKENS, ChatOptions
from qwen_operator.sim.pod_replica import pod_replica
from qwen_operator.sim.server import ServedTGI, SimulatedTGI, serve
from qwen_operator.testing.background import BackgroundLoop

SCALE = 200.0  # virtual seconds per wall second
ANSWER = 6  # the servers' default answer length (no max_tokens)


def spec(model: str = "Qwen/Qwen3-14B", **runtime: Any) -> QwenDeploymentSpec:
    return QwenDeploymentSpec.model_validate(
        {
            "model": {"name": model, "registry": "s3://m/q", "quantization": "fp8"},
            "placement": {"gpuTypes": ["L40S"]},
            "runtime": runtime,
        }
    )


def pool_pod(s: QwenDeploymentSpec) -> dict[str, Any]:
    """The pod template of the first pool Deployment, as a pod the API would return."""
    objs = render(s, plan(s, Catalog()), RenderContext(name="chat", namespace="llm"), Catalog())
    dep = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] != "chat-router")
    tpl = copy.deepcopy(dep["spec"]["template"])
    meta = {**tpl["metadata"], "name": "chat-l40s-x", "uid": "u1", "namespace": "llm"}
    return {"metadata": meta, "spec": tpl["spec"], "status": {"phase": "Running"}}


def server_of(pod: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod["spec"]["containers"] if c["name"] in ("tgi", "vllm"))


def init_names(pod: dict[str, Any]) -> list[str]:
    return [c["name"] for c in pod["spec"]["initContainers"]]


# --- rendering -------------------------------------------------------------------------------------


def test_tgi_reasoning_disabled_renders_the_template_into_the_pod() -> None:
    pod = pool_pod(spec(reasoning="disabled"))
    args = server_of(pod)["args"]
    assert args[args.index("--tokenizer-config-path") + 1] == TGI_TOKENIZER_CONFIG
    assert init_names(pod) == ["model-pull", "chat-template"]
    writer = pod["spec"]["initContainers"][1]
    config = json.loads(writer["env"][0]["value"])
    assert config == {"chat_template": NO_THINKING_TEMPLATE, "bos_token": None, "eos_token": "<|im_end|>"}
    assert TGI_TOKENIZER_CONFIG in writer["command"][-1] and writer["command"][:2] == ["sh", "-c"]
    # the server reads it from the same emptyDir the writer filled
    assert {"name": "tmp", "mountPath": "/tmp"} in writer["volumeMounts"]
    assert any(m["name"] == "tmp" and m["mountPath"] == "/tmp" for m in server_of(pod)["volumeMounts"])
    assert writer["securityContext"]["allowPrivilegeEscalation"] is False


def test_tgi_default_and_models_without_thinking_get_no_template() -> None:
    for s in (spec(), spec("Qwen/Qwen2.5-7B-Instruct", reasoning="disabled")):
        pod = pool_pod(s)
        assert "--tokenizer-config-path" not in server_of(pod)["args"]
        assert init_names(pod) == ["model-pull"]
    # TGI answers tools natively: enabling tool calling adds no flag
    assert pool_pod(spec(toolCalling={"enabled": True}))["spec"]["containers"] == pool_pod(spec())["spec"]["containers"]


def test_vllm_flags_for_reasoning_and_tools() -> None:
    on = server_of(pool_pod(spec(engine="vllm")))["args"]
    assert on[on.index("--reasoning-parser") + 1] == "qwen3" and "--chat-template" not in on
    assert "--enable-auto-tool-choice" not in on
    pod = pool_pod(spec(engine="vllm", reasoning="disabled", toolCalling={"enabled": True}))
    off = server_of(pod)["args"]
    assert off[off.index("--chat-template") + 1] == VLLM_CHAT_TEMPLATE
    assert off[off.index("--tool-call-parser") + 1] == "hermes" and "--enable-auto-tool-choice" in off
    assert pod["spec"]["initContainers"][1]["env"][0]["value"] == NO_THINKING_TEMPLATE
    # no thinking mode: no reasoning parser; a coder model defaults to its own tool parser
    coder = server_of(pool_pod(spec("Qwen/Qwen2.5-7B-Instruct", engine="vllm", toolCalling={"enabled": True})))
    assert "--reasoning-parser" not in coder["args"]
    explicit = spec(engine="vllm", toolCalling={"enabled": True, "parser": "qwen3_coder"})
    args = server_of(pool_pod(explicit))["args"]
    assert args[args.index("--tool-call-parser") + 1] == "qwen3_coder"


def test_simulated_fleet_reads_the_chat_behaviour_back_from_the_pod() -> None:
    assert pod_replica(pool_pod(spec())).chat == ChatOptions(engine="tgi", thinking_default=True)
    assert pod_replica(pool_pod(spec(reasoning="disabled"))).chat.thinking_default is False
    rep = pod_replica(pool_pod(spec(engine="vllm", reasoning="disabled", toolCalling={"enabled": True})))
    assert rep.chat == ChatOptions("vllm", False, "qwen3", "hermes")
    assert dict(rep.limits)["max_total_tokens"] == 16384  # vLLM's --max-model-len


# --- the template ------------------------------------------------------------------------------------

EMPTY_BLOCK = "<|im_start|>assistant\n<think>\n\n</think>\n\n"


def rendered(messages: list[dict[str, Any]], **kwargs: Any) -> str:
    env = ImmutableSandboxedEnvironment()  # what transformers / vLLM render chat templates with
    return env.from_string(NO_THINKING_TEMPLATE).render(messages=messages, add_generation_prompt=True, **kwargs)


def test_template_does_not_think_unless_asked() -> None:
    ask = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    out = rendered(ask)
    assert out == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n" + EMPTY_BLOCK
    think = [{"role": "user", "content": "Prove it /think"}]
    assert rendered(think).endswith("<|im_start|>assistant\n")  # no empty block: the model thinks
    assert rendered(think, enable_thinking=False).endswith(EMPTY_BLOCK)  # the API switch wins
    assert rendered(ask, enable_thinking=True).endswith("<|im_start|>assistant\n")
    latest = [{"role": "user", "content": "a /think"}, {"role": "assistant", "content": "x"}]
    assert rendered([*latest, {"role": "user", "content": "b /no_think"}]).endswith(EMPTY_BLOCK)
    # earlier replies lose their reasoning
    history = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nA."}]
    assert "<|im_start|>assistant\nA.<|im_end|>" in rendered(history) and "hmm" not in rendered(history)


def test_template_tools_calls_and_results() -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "sunny"},
        {"role": "tool", "content": "20C"},
    ]
    out = rendered(messages, tools=tools)
    assert out.startswith("<|im_start|>system\nS\n\n# Tools\n")
    assert "\n<tools>\n{" in out and '"name": "get_weather"' in out.split("\n</tools>")[0]
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>' in out
    # consecutive tool results share one user turn
    assert "<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n<tool_response>\n20C\n</tool_response>" in out
    assert out.count("<|im_start|>system") == 1 and out.endswith(EMPTY_BLOCK)


def test_tgi_tokenizer_config_is_json_with_qwen3_end_of_turn() -> None:
    config = json.loads(tgi_tokenizer_config())
    assert config["eos_token"] == "<|im_end|>" and config["chat_template"] == NO_THINKING_TEMPLATE


# --- the simulated server -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, ServedTGI]]:
    bg = BackgroundLoop()
    model = ReplicaModel.build("Qwen3-14B", "L40S", 1, "fp8")
    options = {
        "tgi": ChatOptions("tgi"),
        "tgi-off": ChatOptions("tgi", thinking_default=False),
        "vllm": ChatOptions("vllm", reasoning_parser="qwen3", tool_call_parser="hermes"),
        "vllm-plain": ChatOptions("vllm", reasoning_parser="qwen3"),
    }
    served = {k: bg.run(serve(SimulatedTGI(model, SCALE, 0.0, ANSWER, chat=o))) for k, o in options.items()}
    yield served
    for s in served.values():
        bg.run(s.close())
    bg.close()


def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
    req = HTTPRequest(url + "/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except HTTPError as err:
        return err.code, json.loads(err.read()), {}


def chat(url: str, content: str, **extra: Any) -> tuple[dict[str, Any], int, float]:
    """(message, completion tokens, virtual seconds) of one chat request."""
    status, body, headers = post(url, {"messages": [{"role": "user", "content": content}], **extra})
    assert status == 200, body
    seconds = int(headers["x-total-time"]) / 1000 if "x-total-time" in headers else math.nan  # vLLM sends none
    return body["choices"][0]["message"], body["usage"]["completion_tokens"], seconds


def test_thinking_adds_reasoning_tokens_that_take_decode_time(servers: dict[str, ServedTGI]) -> None:
    think, n_think, t_think = chat(servers["tgi"].base_url, "Why is the sky blue?")
    assert n_think == DEFAULT_REASONING_TOKENS + ANSWER
    assert think["content"].startswith("<think>\n") and "\n</think>\n\n" in think["content"]
    assert len(think["content"].split("</think>")[1].split()) == ANSWER
    plain, n_plain, t_plain = chat(servers["tgi-off"].base_url, "Why is the sky blue?")
    assert n_plain == ANSWER and "<think>" not in plain["content"]
    assert t_think > 20 * t_plain  # ~170x the generated tokens (prefill is the same)
    # soft switches: /no_think gives Qwen3's empty block, /think re-enables it under our template
    empty, n_empty, _ = chat(servers["tgi"].base_url, "Hi /no_think")
    assert n_empty == 2 + ANSWER and empty["content"].startswith("<think>\n\n</think>\n\n")
    _, n_asked, _ = chat(servers["tgi-off"].base_url, "Prove it /think")
    assert n_asked == DEFAULT_REASONING_TOKENS + ANSWER
    # TGI has no chat_template_kwargs: ignored
    _, n_kw, _ = chat(servers["tgi"].base_url, "Hi", chat_template_kwargs={"enable_thinking": False})
    assert n_kw == DEFAULT_REASONING_TOKENS + ANSWER


def test_max_tokens_caps_the_whole_reply(servers: dict[str, ServedTGI]) -> None:
    msg, n, _ = chat(servers["tgi"].base_url, "Hi", max_tokens=5)
    assert n == 5 and msg["content"].startswith("<think>\n") and "</think>" not in msg["content"]


def test_vllm_reasoning_parser_and_chat_template_kwargs(servers: dict[str, ServedTGI]) -> None:
    msg, n, _ = chat(servers["vllm"].base_url, "Why?")
    assert n == DEFAULT_REASONING_TOKENS + ANSWER
    assert len(msg["content"].split()) == ANSWER and "<think>" not in msg["content"]
    assert len(msg["reasoning_content"].split()) == DEFAULT_REASONING_TOKENS - 2
    off, n_off, _ = chat(servers["vllm"].base_url, "Why?", chat_template_kwargs={"enable_thinking": False})
    assert n_off == ANSWER and "reasoning_content" not in off


def tools(*names: str) -> list[dict[str, Any]]:
    params = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"],
    }
    return [{"type": "function", "function": {"name": n, "parameters": params}} for n in names]


def test_tool_calls_and_vllm_auto_choice_needs_the_parser(servers: dict[str, ServedTGI]) -> None:
    body = {"messages": [{"role": "user", "content": "Weather in Oslo?"}], "tools": tools("get_weather", "get_time")}
    status, out, _ = post(servers["tgi"].base_url, body)
    (choice,) = out["choices"]
    assert status == 200 and choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "simulated", "unit": "celsius"}
    named = {**body, "tool_choice": {"type": "function", "function": {"name": "get_time"}}}
    assert post(servers["vllm"].base_url, named)[1]["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == (
        "get_time"
    )
    # vLLM thinks before the call (reasoning parsed out); TGI's grammar does not let it
    vllm = post(servers["vllm"].base_url, body)[1]
    assert vllm["choices"][0]["message"]["reasoning_content"] and vllm["usage"]["completion_tokens"] > 1000
    assert out["usage"]["completion_tokens"] < 40
    status, err, _ = post(servers["vllm-plain"].base_url, body)
    assert status == 400 and "--enable-auto-tool-choice" in err["message"]
    assert post(servers["vllm-plain"].base_url, named)[0] == 200  # a named choice needs no parser
    assert (
        "tool_calls" not in post(servers["tgi"].base_url, {**body, "tool_choice": "none"})[1]["choices"][0]["message"]
    )
    status, err, _ = post(servers["tgi"].base_url, {**body, "tool_choice": {"function": {"name": "nope"}}})
    assert status == 422 and "nope" in err["error"]

"""What a simulated Qwen3 chat reply contains: thinking and tool calls, as the engines return them.

The simulated server (:mod:`.server`) models token counts and timings, not language; this
module decides, per ``/v1/chat/completions`` request, how many tokens the reply has and how
they are laid out, following what the deployment configured (:class:`ChatOptions`, learnt
from the pod's flags by :mod:`.pod_replica`) and what the request asks:

**Thinking** (models with Qwen3's hybrid mode only; ``/generate`` and ``/v1/completions`` take
raw prompts, no chat template, so they never think):

* the deployment's default: ``spec.runtime.reasoning`` enabled = the model's own template,
  which thinks; disabled = our template (:mod:`qwen_operator.engines.chat_template`), which
  renders an empty thinking block unless asked;
* ``chat_template_kwargs: {"enable_thinking": bool}`` decides when given, on vLLM only (TGI
  has no such field and ignores it);
* otherwise the latest ``/think`` or ``/no_think`` in a user or system message: with the
  default off, ``/think`` re-enables thinking (our template); with thinking on, ``/no_think``
  makes the model emit an empty thinking block (Qwen3's soft switch: 2 tokens here).

A thinking reply is ``<think>`` + :data:`DEFAULT_REASONING_TOKENS` of reasoning (tags
included) + ``</think>``, then the answer. The reasoning tokens are generated tokens: the
engine (:class:`~.engine.ReplicaEngine`) spends decode steps and KV cache on them, so
thinking changes a replica's capacity. Token budget (the simulator's convention: a reply
fills its budget): the answer is ``max_tokens`` long (else the server's default length);
``max_tokens`` caps the whole reply as the engines do, so a thinking reply with a small
``max_tokens`` is cut inside its reasoning (``finish_reason: length``), as a real Qwen3 is.

**Output shape**: TGI has no reasoning parser: the thinking text stays in ``content``. vLLM
with ``--reasoning-parser qwen3`` returns it in ``reasoning_content`` (v0.10's field; the
parser needs both tags: a reply cut inside its thinking comes back whole in ``content``
when not streamed, as v0.10 does).

**Tool calls** when ``tools`` are offered and ``tool_choice`` is not ``none``: the simulated
model calls the named function (``tool_choice: {"type": "function", ...}``), else the first
one, with arguments made from the function's JSON-schema ``parameters`` (enum: first value;
string: ``"simulated"``; numbers: 1; boolean: true; arrays/objects: empty). OpenAI's shape:
``message.tool_calls[{id, type: function, function: {name, arguments: JSON string}}]``,
``content`` null, ``finish_reason: tool_calls``; streamed as ``delta.tool_calls`` pieces. TGI
answers tools natively (its JSON grammar constrains the reply from the first token, so it
does not think first); vLLM needs ``--enable-auto-tool-choice --tool-call-parser`` for
``tool_choice: auto`` (else HTTP 400, vLLM's message) and thinks before the call. SIMULATED:
no model decides anything; the shapes and token counts are what clients and capacity see.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from ..capacity.model import TYPICAL_REASONING_TOKENS
from .tgi_payloads import CHARS_PER_TOKEN, token

#: Reasoning tokens of a thinking reply (``<think>``/``</think>`` included). The planning figure
#: of :data:`qwen_operator.capacity.model.TYPICAL_REASONING_TOKENS` (its source is documented
#: there: Qwen3 chat turns think a few hundred to a few thousand tokens); one constant, so the
#: simulated servers and the planner count thinking alike. ``--reasoning-tokens`` overrides it.
DEFAULT_REASONING_TOKENS = TYPICAL_REASONING_TOKENS

THINK_OPEN = "<think>\n"
THINK_CLOSE = "\n</think>\n\n"
#: Qwen3's answer to ``/no_think`` with thinking on: an empty block (two tokens here).
EMPTY_THINK = ("<think>\n\n", "</think>\n\n")

Thinking = Literal["think", "empty", "none"]


@dataclass(frozen=True)
class ChatOptions:
    """How the simulated replica's chat route behaves: the engine flags that matter for it."""

    engine: Literal["tgi", "vllm"] = "tgi"
    thinking_default: bool = True  # False: our non-thinking template (reasoning: disabled)
    reasoning_parser: str | None = None  # vLLM --reasoning-parser
    tool_call_parser: str | None = None  # vLLM --tool-call-parser (with --enable-auto-tool-choice)
    reasoning_tokens: int = DEFAULT_REASONING_TOKENS

    def describe(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "thinking_default": self.thinking_default,
            "reasoning_parser": self.reasoning_parser,
            "tool_call_parser": self.tool_call_parser,
            "reasoning_tokens": self.reasoning_tokens,
        }


class ChatError(ValueError):
    """A request the engine refuses before generating (``status`` and the engine's message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON object, as a string (OpenAI's shape)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class Reply:
    """The tokens of one reply: its thinking (tags included), then the answer or the tool call."""

    thinking: tuple[str, ...]
    answer: tuple[str, ...]
    tool_call: ToolCall | None  # None also when the call was cut by max_tokens
    finish_reason: str
    call_tokens: tuple[str, ...] = field(default=())  # the tool call's tokens (also in ``answer``)

    @property
    def tokens(self) -> tuple[str, ...]:
        return self.thinking + self.answer

    @property
    def thought_complete(self) -> bool:
        return bool(self.thinking) and self.thinking[-1] in (THINK_CLOSE, EMPTY_THINK[1])

    def reasoning_text(self) -> str:
        """The thinking between the tags (what vLLM's reasoning parser returns)."""
        return "".join(t for t in self.thinking if t not in (THINK_OPEN, THINK_CLOSE, *EMPTY_THINK)).strip()


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def soft_switch(messages: list[Any]) -> str | None:
    """The latest ``/think`` or ``/no_think`` in a user or system message (None: neither)."""
    found: str | None = None
    for m in messages:
        if isinstance(m, dict) and m.get("role") in ("user", "system"):
            text = _text(m.get("content"))
            if "/no_think" in text:
                found = "no_think"
            elif "/think" in text:
                found = "think"
    return found


def thinking_mode(body: dict[str, Any], opts: ChatOptions, model_thinks: bool) -> Thinking:
    """Whether this request's reply thinks, shows an empty block, or has none (see the module docstring)."""
    if not model_thinks:
        return "none"
    kwargs = body.get("chat_template_kwargs") if opts.engine == "vllm" else None
    explicit = kwargs.get("enable_thinking") if isinstance(kwargs, dict) else None
    switch = soft_switch(body.get("messages") or [])
    if explicit is False:
        return "none"  # the template put the empty block in the prompt: nothing generated
    template_thinks = explicit is True or opts.thinking_default or switch == "think"
    if not template_thinks:
        return "none"
    return "empty" if switch == "no_think" else "think"


def example_arguments(schema: Any) -> dict[str, Any]:
    """Arguments for a function with JSON-schema ``parameters``: every property, a value of its type."""
    props = schema.get("properties") if isinstance(schema, dict) else None
    out: dict[str, Any] = {}
    for name, prop in (props or {}).items():
        prop = prop if isinstance(prop, dict) else {}
        kind = prop.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "string")
        if prop.get("enum"):
            out[name] = prop["enum"][0]
        elif kind in ("integer", "number"):
            out[name] = 1
        elif kind == "boolean":
            out[name] = True
        elif kind == "array":
            out[name] = []
        elif kind == "object":
            out[name] = example_arguments(prop)
        else:
            out[name] = "simulated"
    return out


def pick_tool_call(body: dict[str, Any], opts: ChatOptions) -> ToolCall | None:
    """The call the simulated model makes, None when it answers in text; ChatError when refused."""
    tools = body.get("tools")
    if not isinstance(tools, list) or not tools:
        return None
    choice = body.get("tool_choice", "auto")
    if choice is None:
        choice = "auto"
    if choice == "none":
        return None
    functions: dict[str, dict[str, Any]] = {}
    for t in tools:
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ChatError(422 if opts.engine == "tgi" else 400, "each tool needs a function with a name")
        functions.setdefault(fn["name"], fn)
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name")
        if wanted not in functions:
            raise ChatError(
                422 if opts.engine == "tgi" else 400, f"Tool choice names {wanted!r}, which is not in tools"
            )
        name = str(wanted)
    elif choice in ("auto", "required"):
        if opts.engine == "vllm" and choice == "auto" and opts.tool_call_parser is None:
            raise ChatError(
                400, '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
            )
        name = next(iter(functions))
    else:
        raise ChatError(422 if opts.engine == "tgi" else 400, f"unknown tool_choice {choice!r}")
    arguments = json.dumps(example_arguments(functions[name].get("parameters")))
    call_id = "0" if opts.engine == "tgi" else f"chatcmpl-tool-{uuid.uuid4().hex}"  # what each engine sends
    return ToolCall(call_id, name, arguments)


def _pieces(text: str) -> list[str]:
    return [text[i : i + CHARS_PER_TOKEN] for i in range(0, len(text), CHARS_PER_TOKEN)] or [""]


def call_tokens(call: ToolCall) -> tuple[str, ...]:
    """The Hermes-style text of a call as tokens: the tag and name, the arguments in pieces, the close."""
    head = f'<tool_call>\n{{"name": "{call.name}", "arguments": '
    return (head, *_pieces(call.arguments), "}\n</tool_call>")


def plan_reply(body: dict[str, Any], opts: ChatOptions, model_thinks: bool, answer_tokens: int, cap: int) -> Reply:
    """Lay out one reply: ``answer_tokens`` of answer after the thinking, at most ``cap`` tokens in all."""
    call = pick_tool_call(body, opts)
    mode = thinking_mode(body, opts, model_thinks)
    if call is not None and opts.engine == "tgi":
        mode = "none"  # TGI's grammar constrains the reply to the call JSON from its first token
    thinking: tuple[str, ...] = ()
    if mode == "think":
        inner = max(0, opts.reasoning_tokens - 2)
        thinking = (THINK_OPEN, *(token(i)["text"] for i in range(inner)), THINK_CLOSE)
    elif mode == "empty":
        thinking = EMPTY_THINK
    answer = call_tokens(call) if call is not None else tuple(token(i)["text"] for i in range(answer_tokens))
    total = len(thinking) + len(answer)
    cap = max(1, cap)
    if total > cap:  # cut by max_tokens (or the context): no complete call
        keep_thinking = thinking[:cap]
        keep_answer = answer[: cap - len(keep_thinking)]
        return Reply(keep_thinking, keep_answer, None, "length")
    if call is not None:
        return Reply(thinking, answer, call, "tool_calls", answer)
    return Reply(thinking, answer, None, "length")


def message(reply: Reply, opts: ChatOptions) -> dict[str, Any]:
    """The non-streamed ``choices[0].message``."""
    out: dict[str, Any] = {"role": "assistant"}
    parsed = opts.reasoning_parser is not None and reply.thought_complete
    if parsed:
        out["reasoning_content"] = reply.reasoning_text()
        text = "".join(reply.answer)
    else:
        text = "".join(reply.tokens)
    if reply.tool_call is not None:
        # no reasoning parser: the thinking before the call stays visible as content
        out["content"] = "".join(reply.thinking) if reply.thinking and not parsed else None
        out["tool_calls"] = [reply.tool_call.as_dict()]
    else:
        out["content"] = text
    return out


def delta(reply: Reply, i: int, opts: ChatOptions) -> dict[str, Any]:
    """The streamed ``choices[0].delta`` carrying token ``i`` (every delta names the role, as TGI's do)."""
    tok = reply.tokens[i]
    out: dict[str, Any] = {"role": "assistant"}
    n_think = len(reply.thinking)
    if i < n_think:
        if opts.reasoning_parser is None:
            out["content"] = tok
        elif tok in (THINK_OPEN, THINK_CLOSE, *EMPTY_THINK):
            out["content"] = ""  # the parser swallows the tags
        else:
            out["reasoning_content"] = tok
        return out
    if reply.tool_call is None:
        out["content"] = tok
        return out
    j = i - n_think
    call = reply.tool_call
    piece: dict[str, Any] = {"index": 0, "id": call.id, "type": "function", "function": {"arguments": ""}}
    if j == 0:
        piece["function"]["name"] = call.name
    elif j < len(reply.call_tokens) - 1:
        piece["function"]["arguments"] = tok
    out["tool_calls"] = [piece]
    return out

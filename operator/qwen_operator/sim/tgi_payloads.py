"""Response bodies of TGI's API (and its OpenAI-compatible routes), for the simulated server.

Kept apart from the server's timing logic: these are the exact JSON shapes
``huggingface_hub``'s ``TextGenerationOutput`` / ``TextGenerationStreamOutput`` /
``ChatCompletionOutput`` parse, the OpenAI-compatible ``/v1/models`` and ``/v1/completions``
bodies as TGI's router writes them (``ModelsInfo``, ``CompletionFinal`` / ``Chunk``: the
official ``openai`` client parses them), and TGI's error body (``{"error", "error_type"}``),
which ``huggingface_hub`` maps to ``OverloadedError`` / ``ValidationError``. Generated text is
filler words: only the token counts and timings are modelled.
"""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

from .engine import Request

TGI_VERSION = "3.3.5"
CHARS_PER_TOKEN = 4
_WORDS = ("simulated", "tokens", "from", "a", "roofline", "model", "of", "one", "replica", "served", "here")


def estimate_tokens(text: str) -> int:
    """Prompt tokens estimated from text (~4 characters per token for English BPE)."""
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


def error(status: int, message: str, error_type: str) -> web.Response:
    """TGI's error body: ``error_type`` is what huggingface_hub maps to its exception classes."""
    return web.json_response({"error": message, "error_type": error_type}, status=status)


def token(i: int) -> dict[str, Any]:
    return {"id": 1000 + i % len(_WORDS), "text": " " + _WORDS[i % len(_WORDS)], "logprob": -0.5, "special": False}


def text_of(n: int) -> str:
    return "".join(token(i)["text"] for i in range(n))


def details(req: Request, with_tokens: bool) -> dict[str, Any]:
    """TGI's ``details``: the full form for /generate, the short one on the last stream event."""
    out: dict[str, Any] = {
        "finish_reason": "length",
        "generated_tokens": req.output_tokens,
        "seed": None,
        "input_length": req.prompt_tokens,
    }
    if with_tokens:
        out.update(prefill=[], tokens=[token(i) for i in range(req.output_tokens)], top_tokens=None)
        out["best_of_sequences"] = None
    return out


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's ``usage`` object (chat and completions)."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def models_list(model_id: str) -> dict[str, Any]:
    """``GET /v1/models`` as TGI answers it: one model, the served model id (``owned_by`` too,
    ``created`` 0: TGI does not know when the model was made)."""
    return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": model_id}]}


def completion_choice(index: int, text: str, finish_reason: str) -> dict[str, Any]:
    """One ``choices[]`` entry of ``/v1/completions`` (TGI's ``CompletionComplete``: no logprobs).

    TGI streams ``finish_reason: ""`` on every chunk but the last (not ``null``); kept as is."""
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}

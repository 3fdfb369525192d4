"""Response bodies of vLLM's OpenAI-compatible server (v0.10), for the simulated vLLM server.

Shapes as ``vllm/entrypoints/openai/protocol.py`` (v0.10) writes them, which the official
``openai`` client and ``huggingface_hub`` parse: the flat error body ``{"object": "error",
"message", "type", "param", "code"}`` (a 404 ``NotFoundError`` for a model name other than
``--served-model-name``, a 400 ``BadRequestError`` for a request longer than
``--max-model-len``), ``/v1/models`` with vLLM's ``owned_by: "vllm"``, ``root`` and
``max_model_len``, and ``/v1/completions`` choices with ``stop_reason``. Pure: data only.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from aiohttp import web

#: The vLLM release mirrored (the operator's default image ``vllm/vllm-openai:v0.10.1.1``).
VLLM_VERSION = "0.10.1.1"
#: vLLM's ``CompletionRequest.max_tokens`` default (chat's default is the rest of the context).
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


def vllm_error(status: int, message: str, err_type: str) -> web.Response:
    """vLLM's error body (``ErrorResponse``); the ``openai`` client raises by status."""
    body = {"object": "error", "message": message, "type": err_type, "param": None, "code": status}
    return web.json_response(body, status=status, headers={"x-simulated": "true"})


def vllm_context_error(prompt_tokens: int, max_tokens: int, max_model_len: int) -> web.Response:
    """The 400 for a prompt plus ``max_tokens`` over ``--max-model-len`` (vLLM's wording)."""
    return vllm_error(
        400,
        f"This model's maximum context length is {max_model_len} tokens. However, you requested "
        f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the "
        "completion). Please reduce the length of the messages or completion.",
        "BadRequestError",
    )


def models_list(served_name: str, root: str, max_model_len: int) -> dict[str, Any]:
    """``GET /v1/models``: the served name, the weights it was started from, its context length."""
    now = int(time.time())
    permission = {
        "id": f"modelperm-{uuid.uuid4().hex}",
        "object": "model_permission",
        "created": now,
        "allow_create_engine": False,
        "allow_sampling": True,
        "allow_logprobs": True,
        "allow_search_indices": False,
        "allow_view": True,
        "allow_fine_tuning": False,
        "organization": "*",
        "group": None,
        "is_blocking": False,
    }
    model = {"id": served_name, "object": "model", "created": now, "owned_by": "vllm", "root": root, "parent": None}
    return {"object": "list", "data": [{**model, "max_model_len": max_model_len, "permission": [permission]}]}


def completion_choice(index: int, text: str, finish_reason: str | None) -> dict[str, Any]:
    """One ``choices[]`` entry of ``/v1/completions`` (``finish_reason`` null until the last chunk)."""
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason, "stop_reason": None}


def completion_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": None,
    }

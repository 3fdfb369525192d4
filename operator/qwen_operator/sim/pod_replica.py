"""What simulated TGI replica a Kubernetes pod stands for: parsed from the pod, nothing else.

Why it exists: the fleet bridge (:mod:`.fleet_bridge`) starts one simulated server per
Running server pod, and the server must be the replica *that pod* would run on a GPU: the
GPU type from its ``nvidia.com/gpu.product`` nodeSelector, the tensor-parallel degree from
its ``nvidia.com/gpu`` limit, the model from the ``serving.qwenops.io/model`` annotation and
TGI's limits and quantization from the container's flags (or their upper-case env twins), and
the chat behaviour (:class:`~.chat.ChatOptions`) from the engine's flags: the container name is
the engine, ``--tokenizer-config-path`` (TGI) / ``--chat-template`` (vLLM) naming the operator's
non-thinking template means ``reasoning: disabled``, ``--reasoning-parser`` and
``--enable-auto-tool-choice --tool-call-parser`` are vLLM's own.
Reading the rendered pod, not the QwenDeployment spec, means the simulation follows what
the operator actually wrote. Pure (plain dicts in, a frozen dataclass out), so it is unit
tested without a cluster.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..catalog.gpus import gpu_by_product_label
from ..engines.chat_template import TGI_TOKENIZER_CONFIG, VLLM_CHAT_TEMPLATE
from ..render.names import ANNOTATION_MODEL, LABEL_POOL
from ..render.workload import GPU_PRODUCT_LABEL, GPU_RESOURCE, pod_gpu_products
from ..sandbox.stages import READY_AFTER_ANNOTATION
from .chat import ChatOptions

#: TGI flags the simulated replica honours, and the ReplicaModel field each one sets.
_INT_FLAGS = {
    "--max-concurrent-requests": "max_concurrent_requests",
    "--max-input-tokens": "max_input_tokens",
    "--max-total-tokens": "max_total_tokens",
}
#: vLLM's: ``--max-num-seqs`` caps the running batch (vLLM's scheduler), not admission: requests
#: beyond it wait in an unbounded queue (vLLM never answers 429), so the replica gets
#: :data:`VLLM_UNBOUNDED_QUEUE` as its admission limit. ``--max-model-len`` is prompt + reply.
_VLLM_INT_FLAGS = {
    "--max-num-seqs": "max_batch_size",
    "--max-model-len": "max_total_tokens",
    "--pipeline-parallel-size": "nodes",  # a LeaderWorkerSet leader: its replica spans this many nodes
}
#: The simulated vLLM replica's admission limit: in effect none (vLLM's waiting queue is unbounded).
VLLM_UNBOUNDED_QUEUE = 1_000_000
_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class PodSpecError(ValueError):
    """The pod does not say which replica to simulate; the message names what is missing."""


@dataclass(frozen=True)
class PodReplica:
    """One server pod as the simulated fleet sees it."""

    name: str
    uid: str
    namespace: str
    pool: str  # serving.qwenops.io/pool label ("a10g", ...)
    model: str
    gpu: str  # catalog GPU name
    shards: int
    quantization: str
    limits: tuple[tuple[str, int], ...]  # ReplicaModel keyword limits from the engine's flags
    running: bool  # phase Running and not being deleted: a server process exists
    ready: bool  # the Ready condition is True (and not being deleted): endpoints route to it
    ready_after_seconds: float  # the sandbox's modelled cold start (0 without the annotation)
    started_at: float | None  # status.startTime as a UNIX timestamp
    chat: ChatOptions = ChatOptions()  # thinking default, reasoning and tool-call parsers from the flags
    served_model_name: str | None = None  # vLLM's --served-model-name (the only name it answers to)


def parse_go_duration(text: str) -> float:
    """Seconds of a Go duration such as ``15s``, ``1m30s`` or ``250ms``."""
    text = text.strip()
    if text in ("", "0"):
        return 0.0
    pos, total = 0, 0.0
    for m in _GO_DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(text):
        raise PodSpecError(f"not a Go duration: {text!r} (expected e.g. 15s, 1m30s, 250ms)")
    return total


def _flag(args: list[str], env: dict[str, str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return env.get(flag.lstrip("-").replace("-", "_").upper())


def chat_options(container: dict[str, Any]) -> ChatOptions:
    """The chat behaviour the server container's engine and flags configure."""
    args = [str(a) for a in container.get("args") or []]
    env = {str(e["name"]): str(e.get("value", "")) for e in container.get("env") or [] if "name" in e}
    if str(container.get("name")) == "vllm":
        return ChatOptions(
            engine="vllm",
            thinking_default=_flag(args, env, "--chat-template") != VLLM_CHAT_TEMPLATE,
            reasoning_parser=_flag(args, env, "--reasoning-parser"),
            tool_call_parser=_flag(args, env, "--tool-call-parser") if "--enable-auto-tool-choice" in args else None,
        )
    return ChatOptions(
        engine="tgi", thinking_default=_flag(args, env, "--tokenizer-config-path") != TGI_TOKENIZER_CONFIG
    )


def _timestamp(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def pod_replica(pod: dict[str, Any]) -> PodReplica:
    """Parse one server pod (the API's JSON shape) into the replica it runs."""
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    name = str(meta.get("name", "?"))
    annotations = meta.get("annotations") or {}
    containers = spec.get("containers") or []
    server = next((c for c in containers if GPU_RESOURCE in ((c.get("resources") or {}).get("limits") or {})), None)
    if server is None:
        raise PodSpecError(f"pod {name}: no container has a {GPU_RESOURCE} limit")
    product = next(iter(pod_gpu_products(spec)), None)  # nodeSelector, or the node expression of a multi-label type
    gpu = gpu_by_product_label(product) if product else None
    if gpu is None:
        raise PodSpecError(f"pod {name}: nodeSelector {GPU_PRODUCT_LABEL}={product!r} is not a catalog GPU")
    model = annotations.get(ANNOTATION_MODEL)
    if not model:
        raise PodSpecError(f"pod {name}: annotation {ANNOTATION_MODEL} is missing")
    args = [str(a) for a in server.get("args") or []]
    env = {str(e["name"]): str(e.get("value", "")) for e in server.get("env") or [] if "name" in e}
    chat = chat_options(server)
    vllm = chat.engine == "vllm"
    limits = [("max_concurrent_requests", VLLM_UNBOUNDED_QUEUE)] if vllm else []
    for flag, field_name in (_VLLM_INT_FLAGS if vllm else _INT_FLAGS).items():
        value = _flag(args, env, flag)
        if value is not None:
            limits.append((field_name, int(value)))
    model_len = _flag(args, env, "--max-model-len") if vllm else None
    if model_len is not None:  # vLLM has no prompt limit of its own: a prompt leaves room for one token
        limits.append(("max_input_tokens", int(model_len) - 1))
    deleting = meta.get("deletionTimestamp") is not None
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    return PodReplica(
        name=name,
        uid=str(meta.get("uid", name)),
        namespace=str(meta.get("namespace", "")),
        pool=str((meta.get("labels") or {}).get(LABEL_POOL, gpu.name.lower())),
        model=str(model),
        gpu=gpu.name,
        shards=int(server["resources"]["limits"][GPU_RESOURCE]),
        quantization=_flag(args, env, "--quantization" if vllm else "--quantize") or "none",
        limits=tuple(limits),
        running=status.get("phase") == "Running" and not deleting,
        ready=ready and not deleting,
        ready_after_seconds=parse_go_duration(str(annotations.get(READY_AFTER_ANNOTATION, "0"))),
        started_at=_timestamp(status.get("startTime")),
        chat=chat,
        served_model_name=(_flag(args, env, "--served-model-name") or _flag(args, env, "--model")) if vllm else None,
    )


def cold_start_left(replica: PodReplica, now: float) -> float:
    """Seconds of the modelled cold start still ahead at UNIX time ``now`` (never negative)."""
    if replica.started_at is None:
        return replica.ready_after_seconds
    return max(0.0, replica.ready_after_seconds - (now - replica.started_at))

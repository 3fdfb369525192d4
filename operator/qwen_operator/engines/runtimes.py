"""Inference-server adapters: TGI (default) and vLLM.

Everything engine-specific lives here: image, command-line flags, environment, port,
health path, the Prometheus metric names the autoscaler queries, and the request a canary
must answer before the pools move to its version (:class:`SmokeRequest`). TGI is upstream in
maintenance mode (its docs recommend vLLM/SGLang), so the rest of the operator only talks
to :class:`Runtime`.

Sources: TGI launcher ``--help`` (flags named as in the design brief) and its
``/metrics`` (counters without ``_total``); vLLM ``vllm serve --help`` and its
``vllm:``-prefixed metrics (``vllm:num_requests_waiting`` gauge,
``vllm:e2e_request_latency_seconds`` histogram). The simulated vLLM server
(``sim/vllm_metrics.py``) exports v0.10.1.1's names, so these queries are checked against it
(``tests/unit/test_sim_vllm.py``) and exercised by the closed-loop e2e on both engines.

Thinking and tool calling (``spec.runtime.reasoning``, ``spec.runtime.toolCalling``), per engine:

* **TGI** renders Qwen3's own chat template, which thinks (``enable_thinking`` is never passed:
  TGI's template inputs are messages, bos/eos tokens, add_generation_prompt and tools). With
  ``reasoning: disabled`` it gets ``--tokenizer-config-path`` pointing at our non-thinking
  template (:mod:`.chat_template`). Replies carry the ``<think>...</think>`` text in ``content``
  (TGI has no reasoning parser). Tools need no flag: TGI constrains the reply to a call of one
  of the offered functions with its JSON grammar (``router/src/infer/tool_grammar.rs``; only
  ``--disable-grammar-support`` turns that off), so a parser is refused at admission.
* **vLLM** gets ``--reasoning-parser qwen3`` for a model with the thinking mode (the reasoning
  goes to ``message.reasoning_content``, v0.10's field name), ``--chat-template`` with our
  template when disabled (per request ``chat_template_kwargs: {"enable_thinking": true}`` turns
  it back on), and ``--enable-auto-tool-choice --tool-call-parser`` when tool calling is enabled
  (vLLM's tool-calling docs: without them ``tool_choice: auto`` is a 400).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ..api.spec import QwenDeploymentSpec
from ..catalog import Catalog, resolve_model_name
from .chat_template import NO_THINKING_TEMPLATE, TGI_TOKENIZER_CONFIG, VLLM_CHAT_TEMPLATE, tgi_tokenizer_config

SERVER_PORT = 8080  # above 1024: the server runs as non-root without NET_BIND_SERVICE


@dataclass(frozen=True)
class MetricNames:
    """Metric names of one engine, as the autoscaler's PromQL needs them."""

    queue_gauge: str  # waiting requests per replica
    running_gauge: str  # requests in the running batch
    latency_histogram: str  # end-to-end request latency, seconds (base name, no _bucket)
    queue_latency_histogram: str  # time spent waiting, seconds
    slo_latency_histogram: str  # what scaling.p95LatencySeconds is compared with (time to first token)
    requests_counter: str
    failures_counter: str | None  # None: the engine has no failure counter
    #: generated tokens per finished request (histogram base name): the observed reply length, thinking included
    generated_tokens_histogram: str = ""


@dataclass(frozen=True)
class SmokeRequest:
    """One short, non-streamed generation in the engine's own API: the canary's smoke test.

    Why per engine: TGI answers its native ``POST /generate``, vLLM's OpenAI server has no
    such route (it answers 404) and only knows the model by its ``--served-model-name``, so
    a request in the wrong dialect fails a healthy canary. ``reply`` says where the text is.
    """

    path: str  # POSTed to the pod's base URL
    payload: Mapping[str, Any] = field(hash=False)
    reply: Literal["generated_text", "choices"]  # TGI's ``generated_text`` / OpenAI ``choices[0].text``

    def reply_text(self, body: Any) -> str:
        """The generated text of a JSON answer; ValueError naming the field when it has none."""
        if self.reply == "generated_text":
            text = body.get("generated_text") if isinstance(body, dict) else None
            if not isinstance(text, str):
                raise ValueError(f"answer to POST {self.path} has no string 'generated_text'")
            return text
        choices = body.get("choices") if isinstance(body, dict) else None
        first = choices[0] if isinstance(choices, list) and choices else None
        text = first.get("text") if isinstance(first, dict) else None
        if not isinstance(text, str):
            raise ValueError(f"answer to POST {self.path} has no string 'choices[0].text'")
        return text


class Runtime(Protocol):
    """What the renderer and autoscaler need from an inference engine."""

    @property
    def name(self) -> str: ...
    @property
    def default_image(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def health_path(self) -> str: ...
    @property
    def metrics_path(self) -> str: ...
    @property
    def metrics(self) -> MetricNames: ...

    def args(self, spec: QwenDeploymentSpec, shards: int, model_path: str, thinking_model: bool = False) -> list[str]:
        """The server's arguments; ``thinking_model``: the model has Qwen3's hybrid thinking mode (catalog)."""
        ...

    def env(self, spec: QwenDeploymentSpec, shards: int) -> list[dict[str, Any]]: ...

    def chat_files(self, spec: QwenDeploymentSpec, thinking_model: bool = False) -> dict[str, str]:
        """Files the server reads that the operator writes into the pod (path -> content); empty: none."""
        ...

    def smoke_request(self, spec: QwenDeploymentSpec, prompt: str, max_tokens: int = 8) -> SmokeRequest: ...


def model_has_thinking(spec: QwenDeploymentSpec, catalog: Catalog) -> bool:
    """Whether the catalog says ``spec.model.name`` has Qwen3's hybrid thinking mode (False when unknown)."""
    try:
        return catalog.models[resolve_model_name(spec.model.name, catalog.models)].thinking
    except KeyError:
        return False


def thinking_off(spec: QwenDeploymentSpec, thinking_model: bool) -> bool:
    """The deployment asks a model that has a thinking mode not to think by default."""
    return thinking_model and spec.runtime.reasoning == "disabled"


#: A Qwen3-Coder model name (its tool calls are XML, vLLM parser ``qwen3_coder``).
_CODER = ("coder",)


def tool_call_parser(spec: QwenDeploymentSpec) -> str:
    """vLLM ``--tool-call-parser``: ``spec.runtime.toolCalling.parser``, else the one for the model
    (vLLM's Qwen3-Coder recipe: ``qwen3_coder``; Qwen3 / Qwen2.5 / QwQ: ``hermes``)."""
    parser = spec.runtime.tool_calling.parser
    if parser is not None:
        return parser
    return "qwen3_coder" if any(word in spec.model.name.lower() for word in _CODER) else "hermes"


def _common_env() -> list[dict[str, Any]]:
    return [
        {"name": "HF_HUB_OFFLINE", "value": "1"},  # weights come from the local cache only
        {"name": "HF_HOME", "value": "/tmp/hf"},  # the image's /data is not writable as non-root
        {"name": "HOME", "value": "/tmp"},  # triton / torch compile caches
    ]


@dataclass(frozen=True)
class TGI:
    """Hugging Face text-generation-inference."""

    name: str = "tgi"
    default_image: str = "ghcr.io/huggingface/text-generation-inference:3.3.5"
    port: int = SERVER_PORT
    health_path: str = "/health"
    metrics_path: str = "/metrics"
    metrics: MetricNames = MetricNames(
        queue_gauge="tgi_queue_size",
        running_gauge="tgi_batch_current_size",
        latency_histogram="tgi_request_duration",
        queue_latency_histogram="tgi_request_queue_duration",
        # TGI exports no time-to-first-token histogram; the queue wait is TTFT minus the
        # request's own prefill, and it is the part more replicas shorten
        slo_latency_histogram="tgi_request_queue_duration",
        requests_counter="tgi_request_count",
        failures_counter="tgi_request_failure",
        generated_tokens_histogram="tgi_request_generated_tokens",
    )

    def args(self, spec: QwenDeploymentSpec, shards: int, model_path: str, thinking_model: bool = False) -> list[str]:
        rt = spec.runtime
        out = [
            "--model-id",
            model_path,
            "--num-shard",
            str(shards),
            "--max-concurrent-requests",
            str(rt.max_concurrent_requests),
            "--max-input-tokens",
            str(rt.max_input_tokens),
            "--max-total-tokens",
            str(rt.max_total_tokens),
            "--port",
            str(self.port),
            "--usage-stats",
            "off",
        ]
        if spec.model.quantization != "none":
            out += ["--quantize", spec.model.quantization]
        if thinking_off(spec, thinking_model):
            out += ["--tokenizer-config-path", TGI_TOKENIZER_CONFIG]
        return out

    def env(self, spec: QwenDeploymentSpec, shards: int) -> list[dict[str, Any]]:
        return _common_env()

    def chat_files(self, spec: QwenDeploymentSpec, thinking_model: bool = False) -> dict[str, str]:
        return {TGI_TOKENIZER_CONFIG: tgi_tokenizer_config()} if thinking_off(spec, thinking_model) else {}

    def smoke_request(self, spec: QwenDeploymentSpec, prompt: str, max_tokens: int = 8) -> SmokeRequest:
        """TGI's native route (every TGI version has it; its OpenAI routes came later)."""
        payload = {"inputs": prompt, "parameters": {"max_new_tokens": max_tokens}}
        return SmokeRequest("/generate", payload, "generated_text")


@dataclass(frozen=True)
class VLLM:
    """vLLM's OpenAI-compatible server."""

    name: str = "vllm"
    default_image: str = "vllm/vllm-openai:v0.10.1.1"
    port: int = SERVER_PORT
    health_path: str = "/health"
    metrics_path: str = "/metrics"
    metrics: MetricNames = MetricNames(
        queue_gauge="vllm:num_requests_waiting",
        running_gauge="vllm:num_requests_running",
        latency_histogram="vllm:e2e_request_latency_seconds",
        queue_latency_histogram="vllm:request_queue_time_seconds",
        slo_latency_histogram="vllm:time_to_first_token_seconds",
        requests_counter="vllm:request_success_total",
        failures_counter=None,  # vLLM labels outcomes by finished_reason instead
        generated_tokens_histogram="vllm:request_generation_tokens",
    )

    def args(self, spec: QwenDeploymentSpec, shards: int, model_path: str, thinking_model: bool = False) -> list[str]:
        rt = spec.runtime
        out = [
            "--model",
            model_path,
            "--served-model-name",
            spec.model.name,
            "--tensor-parallel-size",
            str(shards),
            "--max-model-len",
            str(rt.max_total_tokens),
            "--max-num-seqs",
            str(rt.max_concurrent_requests),
            "--port",
            str(self.port),
        ]
        if spec.model.quantization != "none":
            out += ["--quantization", spec.model.quantization]
        if thinking_model:
            out += ["--reasoning-parser", "qwen3"]
        if thinking_off(spec, thinking_model):
            out += ["--chat-template", VLLM_CHAT_TEMPLATE]
        if rt.tool_calling.enabled:
            out += ["--enable-auto-tool-choice", "--tool-call-parser", tool_call_parser(spec)]
        return out

    def env(self, spec: QwenDeploymentSpec, shards: int) -> list[dict[str, Any]]:
        return [*_common_env(), {"name": "VLLM_NO_USAGE_STATS", "value": "1"}, {"name": "DO_NOT_TRACK", "value": "1"}]

    def chat_files(self, spec: QwenDeploymentSpec, thinking_model: bool = False) -> dict[str, str]:
        return {VLLM_CHAT_TEMPLATE: NO_THINKING_TEMPLATE} if thinking_off(spec, thinking_model) else {}

    def smoke_request(self, spec: QwenDeploymentSpec, prompt: str, max_tokens: int = 8) -> SmokeRequest:
        """OpenAI ``/v1/completions`` naming the model as :meth:`args` serves it (``--served-model-name``):
        vLLM answers 404 for any other model name, which is a canary failure worth seeing."""
        payload = {"model": spec.model.name, "prompt": prompt, "max_tokens": max_tokens}
        return SmokeRequest("/v1/completions", payload, "choices")


RUNTIMES: dict[str, Runtime] = {"tgi": TGI(), "vllm": VLLM()}


def runtime_for(spec: QwenDeploymentSpec) -> Runtime:
    """The adapter for ``spec.runtime.engine`` (the schema only admits known engines)."""
    return RUNTIMES[spec.runtime.engine]

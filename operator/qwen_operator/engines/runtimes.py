"""Inference-server adapters: TGI (default) and vLLM.

Everything engine-specific lives here: image, command-line flags, environment, port,
health path, the Prometheus metric names the autoscaler queries, and the request a canary
must answer before the pools move to its version (:class:`SmokeRequest`). TGI is upstream in
maintenance mode (its docs recommend vLLM/SGLang), so the rest of the operator only talks
to :class:`Runtime`.

Sources: TGI launcher ``--help`` (flags named as in the design brief) and its
``/metrics`` (counters without ``_total``); vLLM ``vllm serve --help`` and its
``vllm:``-prefixed metrics (``vllm:num_requests_waiting`` gauge,
``vllm:e2e_request_latency_seconds`` histogram).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ..api.spec import QwenDeploymentSpec

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

    def args(self, spec: QwenDeploymentSpec, shards: int, model_path: str) -> list[str]: ...

    def env(self, spec: QwenDeploymentSpec, shards: int) -> list[dict[str, Any]]: ...

    def smoke_request(self, spec: QwenDeploymentSpec, prompt: str, max_tokens: int = 8) -> SmokeRequest: ...


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
    )

    def args(self, spec: QwenDeploymentSpec, shards: int, model_path: str) -> list[str]:
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
        return out

    def env(self, spec: QwenDeploymentSpec, shards: int) -> list[dict[str, Any]]:
        return _common_env()

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
    )

    def args(self, spec: QwenDeploymentSpec, shards: int, model_path: str) -> list[str]:
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
        return out

    def env(self, spec: QwenDeploymentSpec, shards: int) -> list[dict[str, Any]]:
        return [*_common_env(), {"name": "VLLM_NO_USAGE_STATS", "value": "1"}, {"name": "DO_NOT_TRACK", "value": "1"}]

    def smoke_request(self, spec: QwenDeploymentSpec, prompt: str, max_tokens: int = 8) -> SmokeRequest:
        """OpenAI ``/v1/completions`` naming the model as :meth:`args` serves it (``--served-model-name``):
        vLLM answers 404 for any other model name, which is a canary failure worth seeing."""
        payload = {"model": spec.model.name, "prompt": prompt, "max_tokens": max_tokens}
        return SmokeRequest("/v1/completions", payload, "choices")


RUNTIMES: dict[str, Runtime] = {"tgi": TGI(), "vllm": VLLM()}


def runtime_for(spec: QwenDeploymentSpec) -> Runtime:
    """The adapter for ``spec.runtime.engine`` (the schema only admits known engines)."""
    return RUNTIMES[spec.runtime.engine]

"""vLLM's Prometheus metrics, as the simulated vLLM server exposes them.

The names, types, labels and buckets are those of the V1 engine's Prometheus logger
(``vllm/v1/metrics/loggers.py``) in **vLLM v0.10.1.1**, the operator's default vLLM image
(:class:`qwen_operator.engines.runtimes.VLLM`): every series carries ``model_name`` (the
``--served-model-name``) and ``engine`` (the engine-core index, ``"0"`` without data
parallelism); counters are created without ``_total`` and exported with it by
``prometheus_client`` (``vllm:prompt_tokens_total``). KV-cache usage is exported under both
names v0.10 has: ``vllm:kv_cache_usage_perc`` and the deprecated ``vllm:gpu_cache_usage_perc``
(vLLM PR #18354 added the first and kept the second; later versions hide it), as a fraction
(1 = full).

What the numbers mean here (SIMULATED, from :class:`~qwen_operator.sim.engine.ReplicaEngine`):

* ``num_requests_running`` / ``num_requests_waiting``: the engine's running batch and queue;
* KV-cache usage: tokens the running requests hold over the replica's KV capacity. The shared
  engine reserves a request's prompt + ``max_tokens`` when it is admitted (TGI's policy);
  vLLM allocates 16-token blocks as a sequence grows, so the simulated figure is the upper
  bound of vLLM's for the same batch; cached prefixes of finished requests are free blocks in
  vLLM and not counted;
* ``time_to_first_token_seconds``: observed when a request's first token exists (end of its
  prefill), as vLLM does per iteration; ``e2e_request_latency_seconds``,
  ``request_queue_time_seconds`` (WAITING), ``request_prefill_time_seconds``,
  ``request_decode_time_seconds`` and ``request_inference_time_seconds`` (RUNNING) when it
  finishes, with ``request_success_total{finished_reason}``;
* ``prompt_tokens_total`` grows when a request's prefill completes, ``generation_tokens_total``
  as tokens are produced (the server adds the tokens of requests still running);
* ``num_preemptions_total`` stays 0: the shared engine never preempts (it reserves up front).

Durations are virtual seconds (wall seconds at ``time_scale`` 1). Pure: it only formats text.
"""

from __future__ import annotations

from collections.abc import Iterable

from .engine import Request
from .tgi_metrics import Histogram

#: ``vllm:time_to_first_token_seconds`` buckets (v0.10 loggers.py).
TTFT_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
#: ``vllm:time_per_output_token_seconds`` / ``inter_token_latency_seconds`` buckets.
TOKEN_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
#: The request-latency buckets (e2e, queue, prefill, decode, inference).
REQUEST_BUCKETS: tuple[float, ...] = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip

#: vLLM's ``FinishReason`` values, each a ``request_success_total`` series from the start.
FINISH_REASONS = ("stop", "length", "abort")


def build_1_2_5_buckets(limit: int) -> tuple[float, ...]:
    """1, 2, 5, 10, 20, 50, ... up to ``limit`` (vLLM's token-count histogram buckets)."""
    out: list[float] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > limit:
                return tuple(out)
            out.append(float(value))
        exponent += 1


class VLLMMetrics:
    """The simulated replica's vLLM series (see the module docstring)."""

    def __init__(self, model_name: str, max_model_len: int) -> None:
        self.labels = f'engine="0",model_name="{model_name}"'
        self.ttft = Histogram(TTFT_BUCKETS)
        self.time_per_output_token = Histogram(TOKEN_BUCKETS)
        self.e2e = Histogram(REQUEST_BUCKETS)
        self.queue = Histogram(REQUEST_BUCKETS)
        self.prefill = Histogram(REQUEST_BUCKETS)
        self.decode = Histogram(REQUEST_BUCKETS)
        self.inference = Histogram(REQUEST_BUCKETS)
        token_buckets = build_1_2_5_buckets(max_model_len)
        self.prompt_tokens_hist = Histogram(token_buckets)
        self.generation_tokens_hist = Histogram(token_buckets)
        self.success = dict.fromkeys(FINISH_REASONS, 0)
        self.prompt_tokens = 0
        self.generation_tokens = 0  # of finished requests (running ones are added at render time)

    def first_token(self, req: Request) -> None:
        """``req``'s prefill completed: its TTFT and its prompt tokens."""
        self.ttft.observe(req.ttft)
        self.prompt_tokens += req.prompt_tokens

    def finished(self, req: Request, reason: str = "length") -> None:
        """``req`` produced its last token."""
        self.success[reason] = self.success.get(reason, 0) + 1
        self.generation_tokens += req.output_tokens
        self.e2e.observe(req.duration)
        self.queue.observe(req.queue_time)
        self.prefill.observe(req.first_token - req.start)
        self.decode.observe(req.finish - req.first_token)
        self.inference.observe(req.finish - req.start)
        if req.output_tokens > 1:
            self.time_per_output_token.observe((req.finish - req.first_token) / (req.output_tokens - 1))
        self.prompt_tokens_hist.observe(req.prompt_tokens)
        self.generation_tokens_hist.observe(req.output_tokens)

    def _histogram(self, name: str, hist: Histogram) -> list[str]:
        """``hist`` with this replica's labels on every sample (Histogram renders unlabelled)."""
        out = []
        for line in hist.render(name):
            if line.startswith("#"):
                out.append(line)
            elif "{" in line:
                out.append(line.replace("{", "{" + self.labels + ",", 1))
            else:
                series, value = line.split(" ", 1)
                out.append(f"{series}{{{self.labels}}} {value}")
        return out

    def _series(self, kind: str, name: str, value: float | int, help_text: str) -> list[str]:
        return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name}{{{self.labels}}} {value}"]

    def render(self, waiting: int, running: int, kv_usage: float, generating: Iterable[int], header: str) -> str:
        """The ``/metrics`` text; ``generating``: tokens produced so far by each unfinished request."""
        usage = round(min(1.0, max(0.0, kv_usage)), 6)
        lines = [f"# {header}"]
        lines += self._series(
            "gauge", "vllm:num_requests_running", running, "Number of requests in model execution batches."
        )
        lines += self._series(
            "gauge", "vllm:num_requests_waiting", waiting, "Number of requests waiting to be processed."
        )
        lines += self._series(
            "gauge", "vllm:gpu_cache_usage_perc", usage, "GPU KV-cache usage. 1 means 100 percent usage."
        )
        lines += self._series("gauge", "vllm:kv_cache_usage_perc", usage, "KV-cache usage. 1 means 100 percent usage.")
        lines += self._series(
            "counter", "vllm:num_preemptions_total", 0, "Cumulative number of preemption from the engine."
        )
        lines += self._series(
            "counter", "vllm:prompt_tokens_total", self.prompt_tokens, "Number of prefill tokens processed."
        )
        generated = self.generation_tokens + sum(generating)
        lines += self._series(
            "counter", "vllm:generation_tokens_total", generated, "Number of generation tokens processed."
        )
        lines += [
            "# HELP vllm:request_success_total Count of successfully processed requests.",
            "# TYPE vllm:request_success_total counter",
        ]
        for reason, n in self.success.items():
            lines.append(f'vllm:request_success_total{{{self.labels},finished_reason="{reason}"}} {n}')
        lines += self._histogram("vllm:request_prompt_tokens", self.prompt_tokens_hist)
        lines += self._histogram("vllm:request_generation_tokens", self.generation_tokens_hist)
        lines += self._histogram("vllm:time_to_first_token_seconds", self.ttft)
        lines += self._histogram("vllm:time_per_output_token_seconds", self.time_per_output_token)
        lines += self._histogram("vllm:e2e_request_latency_seconds", self.e2e)
        lines += self._histogram("vllm:request_queue_time_seconds", self.queue)
        lines += self._histogram("vllm:request_inference_time_seconds", self.inference)
        lines += self._histogram("vllm:request_prefill_time_seconds", self.prefill)
        lines += self._histogram("vllm:request_decode_time_seconds", self.decode)
        return "\n".join(lines) + "\n"

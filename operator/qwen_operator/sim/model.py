"""Replica performance model: how fast one TGI replica of a Qwen model runs on a GPU type.

The autoscaling simulator, the simulated TGI server and the benchmarks all need the same
answer to "how long does this request take on that replica", so it lives here, pure
(no kopf / kubernetes / boto3 / Prometheus imports) and derived from the catalog facts
(:mod:`qwen_operator.catalog`) with a few documented efficiency constants.

The model is a roofline per forward pass:

* **prefill** (compute-bound): ``2 x non-embedding params`` FLOPs per prompt token plus
  causal attention ``2 x layers x q_heads x head_dim x P^2`` per sequence and the LM head
  once per sequence, over ``shards x peak bf16 FLOP/s x PREFILL_MFU``; never faster than
  reading the weights once.
* **decode step** (memory-bound at chat batch sizes): weight bytes read per GPU plus the
  KV-cache bytes of every token in the batch, over ``bandwidth x efficiency``; or the
  compute time of ``2 x params x batch`` FLOPs if that is larger (large batches); plus the
  tensor-parallel all-reduces (2 per layer) over PCIe or NVLink and a fixed per-step cost.
* **KV capacity**: ``memory x MEMORY_UTILISATION - weights/shard - RUNTIME_OVERHEAD``
  divided by the KV bytes per token per shard (bf16 KV cache, TGI's default).
* **cold start**: container + CUDA/NCCL start, weights read from the node-local model
  cache at ``NODE_CACHE_READ_BYTES_PER_S``, then TGI's warm-up (a max-size prefill and
  CUDA-graph capture).

Every figure it produces is SIMULATED: an estimate from datasheet numbers, not a
measurement of real hardware. ``tests/unit/test_sim_model.py`` checks it against the figures
quoted by the articles the project grew from:

* A100 fp8 Qwen3-14B, ~120 tokens/s per stream at low batch: the model gives ~113.
* A10G fp8 Qwen3-14B, "~20 concurrent chats at P95 < 1.2 s". At ~32 ms per decode step an
  A10G needs ~4 s just to stream a 128-token reply, so end-to-end P95 < 1.2 s is physically
  impossible for ordinary replies; the figure can only mean **time to first token** (what a
  chat user waits before text streams), or end-to-end for replies of a handful of tokens.
  We read it as TTFT for 20 closed-loop chat sessions (512-token prompts, 128-token replies,
  20 s mean think time): the model gives P95 TTFT ~1.0 s at 20 sessions and ~1.6 s at 40,
  while end-to-end P95 is ~8 s. An autoscaler SLO of 1.2 s on ``tgi_request_duration``
  (end to end) cannot be met on A10G for Azure-trace-sized replies (median 129 tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..catalog.gpus import DEFAULT_GPUS, GPUType, resolve_gpu_name
from ..catalog.models import BYTES_PER_PARAM, DEFAULT_MODELS, QwenModel, resolve_model_name

# --- constants (each with its source or the reasoning behind it) -----------------------

#: Fraction of peak dense bf16 FLOP/s reached by prefill GEMMs. Large-GEMM training runs
#: reach 50-60% MFU on A100 (Megatron-LM, "Efficient Large-Scale Language Model Training",
#: Narayanan et al. 2021: 52% of peak); a single-request prefill of a few hundred tokens is a
#: smaller GEMM, so we take the lower end.
PREFILL_MFU = 0.5

#: Fraction of peak FLOP/s in decode when it is compute-bound (batch >= ~100): skinny GEMMs
#: with M = batch size run well below peak; 40% is what vLLM/TGI throughput benchmarks imply
#: at saturation (e.g. ~2.5-3k tokens/s for 7-8B models on one A100 in vLLM's published
#: serving benchmarks ~= 40-50% of 312 TF).
DECODE_MFU = 0.4

#: Achieved fraction of the datasheet memory bandwidth for weight-streaming GEMV kernels.
#: HBM2/HBM2e (A100): STREAM-style copies reach ~1.7-1.8 TB/s of 2.0 TB/s (~88%); Marlin's
#: paper (Frantar et al. 2024) shows its weight-only kernels near that bound at batch <= 16.
#: GDDR6 boards (A10G, L40S) reach ~80% in the same benchmarks. GPU types added through the
#: operator config get ``DEFAULT_BANDWIDTH_EFFICIENCY``.
BANDWIDTH_EFFICIENCY: dict[str, float] = {"A10G": 0.80, "L40S": 0.80, "A100-40GB": 0.88, "A100-80GB": 0.88}
DEFAULT_BANDWIDTH_EFFICIENCY = 0.82

#: Fixed cost of one decode step outside the GPU kernels: the router <-> shard gRPC round trip,
#: sampling and detokenisation (TGI runs decode under CUDA graphs, so launch overhead is small).
#: Order of magnitude from TGI's own per-token latency at batch 1 versus the weight roofline.
DECODE_STEP_OVERHEAD_S = 0.5e-3
#: Extra per sequence in a step (logits processing, sampling, stop checks in the router).
PER_SEQUENCE_OVERHEAD_S = 20e-6
#: Fixed cost of one prefill forward (batch formation, gRPC, allocation of KV blocks).
PREFILL_OVERHEAD_S = 5e-3

#: Fraction of GPU memory TGI lets itself use. TGI sizes the KV cache from the memory left
#: after loading weights and a warm-up prefill, times a "wiggle room" factor (``TGI_WIGGLE_ROOM``,
#: 0.93 at the time of writing) with ``--cuda-memory-fraction`` 1.0; vLLM's default
#: ``gpu_memory_utilization`` is 0.9. We take 0.95 of the total and subtract the overhead below.
MEMORY_UTILISATION = 0.95
#: Per GPU: CUDA context and cuBLAS/NCCL workspaces (~0.5-0.8 GB) plus the activation peak
#: of a warm-up prefill of ``max_batch_prefill_tokens`` (4096) tokens and CUDA graphs.
RUNTIME_OVERHEAD_BYTES = 1.5e9
#: KV cache element size: TGI keeps the KV cache in the model dtype (bf16) unless
#: ``--kv-cache-dtype`` says otherwise; fp8 weight quantization does not change it.
KV_DTYPE_BYTES = 2

#: Tensor-parallel all-reduce: NCCL ring, 2 all-reduces per layer (after attention and after
#: the MLP). Latency per all-reduce and bus bandwidth: NVLink3 on A100 SXM4 ~ 8 us and ~230 GB/s
#: (nccl-tests all_reduce_perf busbw on DGX A100); PCIe Gen4 through the host bridge (g5/g6e
#: instances have no NVLink) ~ 20 us and ~ 12 GB/s.
ALLREDUCE_LATENCY_S: dict[str, float] = {"nvlink": 8e-6, "pcie": 20e-6}
ALLREDUCE_BUS_BYTES_PER_S: dict[str, float] = {"nvlink": 230e9, "pcie": 12e9}

#: Node-local model cache read rate (weights already synced to the node by modelsync):
#: EBS gp3 tops out at 1,000 MB/s provisioned; local NVMe instance store reads 2+ GB/s but
#: safetensors deserialisation and host-to-device copies keep TGI near ~1 GB/s in practice.
NODE_CACHE_READ_BYTES_PER_S = 1.0e9
#: Container start, Python imports, CUDA context, NCCL init (per replica, shards in parallel).
PROCESS_START_S = 15.0
#: TGI warm-up: a prefill of max_batch_prefill_tokens to size the KV cache and CUDA-graph
#: capture for decode batch sizes (TGI logs show ~10-40 s depending on model and GPU).
WARMUP_S = 20.0
#: NCCL communicator setup and per-shard process start with tensor parallelism.
TP_INIT_S = 5.0

#: TGI router defaults (``text-generation-launcher --help``).
TGI_MAX_CONCURRENT_REQUESTS = 128
TGI_MAX_BATCH_PREFILL_TOKENS = 4096
TGI_MAX_WAITING_TOKENS = 20
TGI_WAITING_SERVED_RATIO = 1.2


def _fp8_compute(gpu: GPUType, quantization: str) -> bool:
    """FP8 tensor cores are used only on Ada/Hopper; Ampere runs fp8 weights through Marlin in bf16."""
    return quantization == "fp8" and gpu.fp8_native


@dataclass(frozen=True)
class ReplicaModel:
    """Performance of one TGI replica: ``shards`` GPUs of ``gpu`` serving ``model``.

    Build with :meth:`build` (names from the catalog) or directly from catalog objects.
    All times are seconds, sizes bytes or tokens. Every figure is simulated.
    """

    model: QwenModel
    gpu: GPUType
    shards: int = 1
    quantization: str = "none"
    max_concurrent_requests: int = TGI_MAX_CONCURRENT_REQUESTS
    max_input_tokens: int = 8192
    max_total_tokens: int = 16384
    max_batch_prefill_tokens: int = TGI_MAX_BATCH_PREFILL_TOKENS
    max_batch_size: int | None = None

    @classmethod
    def build(
        cls,
        model: str,
        gpu: str,
        shards: int = 1,
        quantization: str = "none",
        **limits: int | None,
    ) -> ReplicaModel:
        """Look ``model`` and ``gpu`` up in the default catalogs (aliases accepted)."""
        m = DEFAULT_MODELS[resolve_model_name(model)]
        g = DEFAULT_GPUS[resolve_gpu_name(gpu)]
        return cls(m, g, shards, quantization, **limits)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        if self.shards not in self.model.valid_shards(max_shards=self.gpu.max_gpus_per_node):
            raise ValueError(
                f"shards={self.shards} is not valid for {self.model.name} on {self.gpu.name}: "
                f"accepted {self.model.valid_shards(self.gpu.max_gpus_per_node)}"
            )
        self.model.weight_bytes(self.quantization)  # validates the quantization name
        if self.kv_capacity_tokens < self.max_total_tokens:
            raise ValueError(
                f"{self.model.name} {self.quantization} on {self.shards}x {self.gpu.name}: KV cache holds "
                f"{self.kv_capacity_tokens} tokens, less than max_total_tokens={self.max_total_tokens} "
                "(TGI would refuse to start); use more shards, a larger GPU or a smaller max_total_tokens"
            )

    # --- sizes -------------------------------------------------------------------------
    @property
    def weight_bytes(self) -> float:
        """Bytes of weights for the whole replica (all shards)."""
        return self.model.weight_bytes(self.quantization)

    @property
    def weight_bytes_per_gpu(self) -> float:
        return self.weight_bytes / self.shards

    @property
    def kv_bytes_per_token_per_gpu(self) -> float:
        return self.model.kv_bytes_per_token(KV_DTYPE_BYTES) / self.shards

    @property
    def kv_capacity_tokens(self) -> int:
        """Tokens of KV cache the replica holds (TGI's max_batch_total_tokens)."""
        free = self.gpu.memory_bytes * MEMORY_UTILISATION - self.weight_bytes_per_gpu - RUNTIME_OVERHEAD_BYTES
        return max(0, int(free // self.kv_bytes_per_token_per_gpu))

    # --- shared pieces -----------------------------------------------------------------
    @property
    def _lm_head_params(self) -> float:
        return float(self.model.vocab_size * self.model.hidden_size)

    @property
    def _body_params(self) -> float:
        """Transformer-layer parameters (everything except embedding and LM head)."""
        return self.model.params - self.model.embedding_params

    @property
    def _flops_per_s(self) -> float:
        """Peak FLOP/s of the whole replica for the dtype its GEMMs run in."""
        return self.shards * self.gpu.bf16_flops * (2.0 if _fp8_compute(self.gpu, self.quantization) else 1.0)

    @property
    def _bandwidth(self) -> float:
        eff = BANDWIDTH_EFFICIENCY.get(self.gpu.name, DEFAULT_BANDWIDTH_EFFICIENCY)
        return self.gpu.bandwidth_bytes_per_s * eff

    @property
    def decode_weight_bytes_per_gpu(self) -> float:
        """Bytes read per GPU per forward: quantized layers + bf16 LM head (the input embedding is a lookup)."""
        return (self._body_params * BYTES_PER_PARAM[self.quantization] + self._lm_head_params * 2.0) / self.shards

    def _allreduce_s(self, tokens: int) -> float:
        """Time of the 2 x layers all-reduces of ``tokens`` hidden vectors (bf16) across the shards."""
        if self.shards == 1:
            return 0.0
        link = self.gpu.interconnect if self.gpu.interconnect in ALLREDUCE_LATENCY_S else "pcie"
        nbytes = tokens * self.model.hidden_size * 2.0
        ring = 2.0 * (self.shards - 1) / self.shards
        one = ALLREDUCE_LATENCY_S[link] + nbytes * ring / ALLREDUCE_BUS_BYTES_PER_S[link]
        return 2 * self.model.layers * one

    # --- timings -----------------------------------------------------------------------
    def forward_seconds(
        self,
        decode_batch: int = 0,
        context_tokens: float = 0.0,
        prefill: Sequence[tuple[int, int]] = (),
    ) -> float:
        """One forward pass: a decode step for ``decode_batch`` sequences holding
        ``context_tokens`` KV tokens in all, plus prefill chunks ``(tokens, cached_prefix)``.

        TGI 3 with chunked prefill mixes both in one forward; a plain prefill is
        ``prefill`` alone and a plain decode step is ``decode_batch`` alone.
        """
        m = self.model
        attn = 2.0 * m.layers * m.attention_heads * m.head_dim
        p_tokens = sum(c for c, _ in prefill)
        prefix = sum(o for _, o in prefill)
        flops = 2.0 * self._body_params * (p_tokens + decode_batch)
        flops += 2.0 * self._lm_head_params * (decode_batch + len(prefill))  # logits: last token only
        flops += sum(attn * (2.0 * c * o + c * c) for c, o in prefill)  # causal attention of the chunks
        flops += 2.0 * attn * context_tokens  # each decode token attends to its context
        mfu = PREFILL_MFU if p_tokens else DECODE_MFU
        compute = flops / (self._flops_per_s * mfu)
        kv = (context_tokens + prefix) * self.kv_bytes_per_token_per_gpu
        memory = (self.decode_weight_bytes_per_gpu + kv) / self._bandwidth
        overhead = PREFILL_OVERHEAD_S if p_tokens else DECODE_STEP_OVERHEAD_S
        return (
            max(compute, memory)
            + self._allreduce_s(p_tokens + decode_batch)
            + overhead
            + PER_SEQUENCE_OVERHEAD_S * decode_batch
        )

    def prefill_seconds(self, prompt_tokens: int | Sequence[int]) -> float:
        """Time of one prefill forward over whole prompts (no decode in the same pass)."""
        prompts = [prompt_tokens] if isinstance(prompt_tokens, int) else prompt_tokens
        return self.forward_seconds(prefill=[(p, 0) for p in prompts])

    @property
    def prefill_tokens_per_second(self) -> float:
        """Steady prefill rate for a 1,000-token prompt (a median chat context in the Azure trace)."""
        return 1000.0 / self.prefill_seconds(1000)

    def decode_step_seconds(self, batch_size: int, context_tokens: float) -> float:
        """One decode step producing one token for each of ``batch_size`` sequences.

        ``context_tokens`` is the total number of tokens already in the KV cache across the
        batch (sum of prompt + generated so far): each step reads all of them once.
        """
        if batch_size <= 0:
            return 0.0
        return self.forward_seconds(batch_size, context_tokens)

    def decode_coefficients(self) -> tuple[float, float, float, float, float, float]:
        """``(m0, m1, c_b, c_ctx, o0, o_b)`` with decode step = max(m0 + m1*ctx, c_b*b + c_ctx*ctx) + o0 + o_b*b.

        The same figure as :meth:`decode_step_seconds`, precomputed so the engine's inner
        loop costs a few multiplications.
        """
        m = self.model
        bw, fl = self._bandwidth, self._flops_per_s * DECODE_MFU
        ar0 = self._allreduce_s(0)
        ar_b = (self._allreduce_s(1) - ar0) if self.shards > 1 else 0.0
        return (
            self.decode_weight_bytes_per_gpu / bw,
            self.kv_bytes_per_token_per_gpu / bw,
            2.0 * (self._body_params + self._lm_head_params) / fl,
            4.0 * m.layers * m.attention_heads * m.head_dim / fl,
            ar0 + DECODE_STEP_OVERHEAD_S,
            ar_b + PER_SEQUENCE_OVERHEAD_S,
        )

    def tokens_per_second_per_stream(self, batch_size: int = 1, context_per_sequence: int = 1000) -> float:
        """Decode speed one client sees with ``batch_size`` sequences of this context running."""
        return 1.0 / self.decode_step_seconds(batch_size, batch_size * context_per_sequence)

    @property
    def cold_start_seconds(self) -> float:
        """From pod start to /health OK: process start, weights from the node cache, warm-up."""
        tp = TP_INIT_S if self.shards > 1 else 0.0
        return PROCESS_START_S + tp + self.weight_bytes / NODE_CACHE_READ_BYTES_PER_S + WARMUP_S

    def describe(self) -> dict[str, float | int | str]:
        """Headline figures (all simulated) for logs, /info and benchmarks."""
        return {
            "model": self.model.name,
            "gpu": self.gpu.name,
            "shards": self.shards,
            "quantization": self.quantization,
            "weight_gb_per_gpu": round(self.weight_bytes_per_gpu / 1e9, 2),
            "kv_capacity_tokens": self.kv_capacity_tokens,
            "prefill_tokens_per_s": round(self.prefill_tokens_per_second),
            "decode_tokens_per_s_batch1": round(self.tokens_per_second_per_stream(1), 1),
            "cold_start_s": round(self.cold_start_seconds, 1),
        }

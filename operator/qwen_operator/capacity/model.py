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
  divided by the KV bytes per token per shard (bf16 KV cache, TGI's default; KV heads
  replicated by vLLM beyond the model's KV heads count in full on every GPU).
* **mixture of experts** (Qwen3-30B-A3B, Qwen3-235B-A22B, Qwen3-Coder): memory holds the
  **total** parameters (every expert resident); FLOPs per token use the **active** ones
  (attention + router + top-k experts; :attr:`..catalog.models.QwenModel.active_params`);
  the weight bytes a forward reads are the non-expert weights plus the experts its tokens
  hit, ``E x (1 - (1 - k/E)^B)`` per layer for ``B`` tokens
  (:meth:`..catalog.models.QwenModel.expected_experts_hit`, an upper estimate: uniform,
  independent routing). So a decode step at batch 1 reads like a ~3B dense model for
  Qwen3-30B-A3B, and approaches the full 30B as the batch grows. Experts are sharded by
  tensor parallelism (each GPU holds a slice of every expert), as TGI and vLLM do by
  default. **Expert parallelism** (vLLM ``--enable-expert-parallel``: whole experts spread
  over the GPUs, all-to-all instead of all-reduce for the MoE layers; TGI has no such
  option) is not modelled: memory per GPU is the same, but the slowest GPU reads the most
  experts hit on it, which this model does not estimate. The planner plans tensor
  parallelism only.
* **replicas spanning nodes** (``nodes`` > 1; vLLM only, run as a LeaderWorkerSet group): vLLM's
  documented multi-node layout is tensor parallelism within a node and pipeline parallelism across
  nodes ("the tensor parallel size is the number of GPUs you want to use in each node, and the
  pipeline parallel size is the number of nodes", vLLM docs, "Distributed Inference and Serving").
  So ``shards`` stays the tensor-parallel degree within a node and ``nodes`` is the number of
  pipeline stages, one per node; the replica holds ``nodes x shards`` GPUs.

  - *memory*: each stage holds its share of the layers (the heaviest stage ``ceil(layers/nodes)``
    layers plus one vocabulary matrix, :meth:`..catalog.models.QwenModel.stage_weight_bytes`) split
    over its ``shards`` GPUs, and caches K and V of its own layers only; KV capacity is the fullest
    stage's (vLLM sizes the cache by the smallest number of blocks any worker has room for).
  - *one forward* (what one token, or one prefill chunk, waits for): the stages run one after the
    other, so a pass is the sum of the stages' times, which with the roofline terms above is the
    single-node formula at ``shards`` GPUs (weights and KV read per GPU summed over stages = the
    whole model over ``shards``; FLOPs likewise; the 2-per-layer all-reduces stay within each
    stage) **plus** ``nodes - 1`` hops: each sends the batch's activations to the next node,
    ``tokens x hidden_size x 2 bytes x`` :data:`PIPELINE_ACTIVATION_TENSORS` over the node's network
    (:attr:`..catalog.gpus.GPUType.internode_bytes_per_s`) plus :data:`PIPELINE_HOP_LATENCY_S`.
    Pipeline parallelism does not shorten one token's latency; it adds the hops (Narayanan et al.
    2021, "Efficient Large-Scale Language Model Training on GPU Clusters Using Megatron-LM", sec. 2.2:
    a micro-batch passes the stages in sequence with point-to-point sends between them).
  - *throughput*: vLLM keeps ``pipeline_parallel_size`` batches in flight (one per stage, so that
    no stage idles while another works), so in steady state the replica finishes one micro-batch
    per stage time: ``nodes x m / cycle`` tokens/s for micro-batches of ``m`` sequences, with
    ``cycle = max(pass(m), nodes x slowest stage(m))`` (a micro-batch cannot come round faster
    than its own pass, hops included, nor faster than the slowest stage serves all ``nodes``
    micro-batches; the slowest stage is taken as ``ceil(layers/nodes)/layers`` of the pass without
    hops): :meth:`ReplicaModel.pipeline_decode_tokens_per_second`. The continuous-batching queue
    (:meth:`ReplicaModel.slo_capacity`) and the simulation engine run one pass per step, i.e. they
    do **not** credit the micro-batch overlap: conservative, and close for memory-bound decode,
    where a pass costs about the same whatever its batch.
  - *cold start*: every node loads its own stage (the heaviest stage's bytes) in parallel; a node
    without the model pulls the whole checkpoint (its files are not split by stage).

* **thinking mode**: Qwen3 with reasoning enabled generates a ``<think>`` block before the
  answer; :func:`typical_output_tokens` adds :data:`TYPICAL_REASONING_TOKENS` to a typical
  reply for planning.
* **cold start** (:class:`ColdStart`, :attr:`ReplicaModel.cold_start`): container +
  CUDA/NCCL start, weights read from the node-local model cache at
  ``NODE_CACHE_READ_BYTES_PER_S``, then TGI's warm-up (a max-size prefill and CUDA-graph
  capture). That is the cold start with the **weights on the node** (pre-staged, or left by
  an earlier replica): :attr:`ReplicaModel.cold_start_seconds`. On a node without the model
  the pod's init container first pulls the whole checkpoint (every shard's weights, the
  model's total weight bytes at its quantization) from the registry:
  :meth:`ReplicaModel.cold_start_pull_seconds` adds ``weight_bytes / registry bandwidth``
  (default :data:`DEFAULT_REGISTRY_BYTES_PER_S`) before the rest.

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

import math
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

#: Pipeline parallelism across nodes (``ReplicaModel.nodes`` > 1): fixed cost of one stage-to-stage
#: hop. NCCL point-to-point over EFA / RoCE takes some tens of microseconds for a small message; vLLM
#: adds the send/receive of its intermediate-tensor dict and the next stage's step launch. An estimate,
#: not a measurement (the hop's bytes are counted separately, over the GPU type's inter-node bandwidth).
PIPELINE_HOP_LATENCY_S = 100e-6
#: Activation tensors a hop carries per token, each ``hidden_size`` bf16 values: vLLM's Qwen decoder
#: stages hand the next stage both the hidden states and the residual stream.
PIPELINE_ACTIVATION_TENSORS = 2

#: Node-local model cache read rate (weights already synced to the node by modelsync):
#: EBS gp3 tops out at 1,000 MB/s provisioned; local NVMe instance store reads 2+ GB/s but
#: safetensors deserialisation and host-to-device copies keep TGI near ~1 GB/s in practice.
NODE_CACHE_READ_BYTES_PER_S = 1.0e9
#: Registry -> node download rate when a replica's init container pulls the whole checkpoint
#: ("weights pulled now"): AWS's S3 performance guide ("Best Practices Design Patterns:
#: Optimizing Amazon S3 Performance", section "Horizontal Scaling and Request Parallelization
#: for High Throughput") advises one concurrent request per 85-90 MB/s of desired throughput
#: for in-region S3 -> EC2 downloads (about 15 to saturate a 10 Gb/s NIC). The init container
#: runs ``qwenctl model pull`` with 8 parallel GETs (its ``--workers`` default), so
#: 8 x 85 MB/s = 680 MB/s, under the 10 Gb/s (1.25 GB/s) a g5.xlarge / g6e.xlarge NIC sustains.
#: A SIMULATION input, not a measurement: ``qwenctl simulate --registry-bandwidth`` overrides it
#: and ``bench/prestage_bench.py`` measures the pull on loopback.
REGISTRY_BYTES_PER_S_PER_STREAM = 85e6
REGISTRY_PULL_STREAMS = 8
DEFAULT_REGISTRY_BYTES_PER_S = REGISTRY_BYTES_PER_S_PER_STREAM * REGISTRY_PULL_STREAMS
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

#: Thinking tokens a Qwen3 model with reasoning enabled generates before a typical chat answer,
#: for planning (:func:`typical_output_tokens`). A planning figure, not a measurement: Qwen3's
#: model card recommends 32,768 output tokens for "most queries" in thinking mode (a cap for hard
#: math and code, not a typical length); on hard science questions (GPQA) Qwen3-14B's traces
#: average ~4,600 tokens (Khalafyan 2025, "Better Thinking or a Bigger Model?"); ordinary chat
#: turns think far less (a few hundred to ~2,500 tokens for code questions in community
#: measurements of Qwen3-8B). 1,000 sits at the chat end of that range; a deployment that knows
#: its traffic states ``spec.scaling.typicalOutputTokens`` with thinking included instead.
TYPICAL_REASONING_TOKENS = 1000

#: The SLO is a P95 (``spec.scaling.p95LatencySeconds``).
SLO_QUANTILE = 0.95
#: :meth:`ReplicaModel.slo_capacity` keeps the *mean* requests in flight at or below this
#: fraction of what the replica admits at once (KV cache for prompt + output per request,
#: ``max_concurrent_requests``). Near prefill saturation the in-flight count swings far
#: above its mean, and a burst that hits the limit queues (or gets HTTP 429) however low
#: the mean TTFT is. 0.5 is where the analytic rate lands within ~15% of the engine's
#: measured rate (:func:`..sim.capacity.calibrate_pool`) for Qwen3-14B on A10G/L40S/A100
#: (``tests/unit/test_sim_model.py`` checks it).
ADMISSION_HEADROOM = 0.5


def _fp8_compute(gpu: GPUType, quantization: str) -> bool:
    """FP8 tensor cores are used only on Ada/Hopper; Ampere runs fp8 weights through Marlin in bf16."""
    return quantization == "fp8" and gpu.fp8_native


def typical_output_tokens(model: QwenModel, visible_tokens: int, reasoning: bool | None) -> int:
    """Tokens a typical reply generates: the visible answer plus, when thinking is on and the
    model has Qwen3's thinking mode, :data:`TYPICAL_REASONING_TOKENS` of reasoning.

    ``reasoning``: ``spec.runtime.reasoning == "enabled"``; None means "not stated": the visible
    figure is taken as the whole reply (what the planner did before thinking mode was counted).
    """
    if reasoning and model.thinking:
        return visible_tokens + TYPICAL_REASONING_TOKENS
    return visible_tokens


def supports_pipeline_parallel(engine: str) -> bool:
    """vLLM runs a replica across nodes (pipeline parallelism, ``--pipeline-parallel-size``); TGI shards
    one replica over the GPUs of one machine only (tensor parallelism, ``--num-shard``)."""
    return engine == "vllm"


def supports_kv_replication(engine: str) -> bool:
    """vLLM replicates KV heads when the tensor-parallel degree exceeds them; TGI cannot."""
    return engine == "vllm"


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
    engine: str = "tgi"  # only which tensor-parallel degrees are valid depends on it (KV replication)
    #: pipeline stages, one per node (vLLM only): a replica of ``nodes x shards`` GPUs; see the module docstring
    nodes: int = 1

    @classmethod
    def build(
        cls,
        model: str,
        gpu: str,
        shards: int = 1,
        quantization: str = "none",
        **limits: int | None,
    ) -> ReplicaModel:
        """Look ``model`` and ``gpu`` up in the default catalogs (aliases accepted); a TGI replica
        (:meth:`build_for` names the engine)."""
        return cls.build_for("tgi", model, gpu, shards, quantization, **limits)

    @classmethod
    def build_for(
        cls, engine: str, model: str, gpu: str, shards: int = 1, quantization: str = "none", **limits: int | None
    ) -> ReplicaModel:
        """:meth:`build` for ``engine`` (tgi or vllm: only the valid tensor-parallel degrees differ)."""
        m = DEFAULT_MODELS[resolve_model_name(model)]
        g = DEFAULT_GPUS[resolve_gpu_name(gpu)]
        return cls(m, g, shards, quantization, engine=engine, **limits)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.nodes > self.model.layers:
            raise ValueError(f"nodes={self.nodes}: a replica spans 1 to {self.model.layers} nodes (a layer per stage)")
        if self.nodes > 1 and not supports_pipeline_parallel(self.engine):
            raise ValueError(f"nodes={self.nodes}: {self.engine} cannot run a replica across nodes (engine vllm can)")
        if self.nodes > 1 and not self.gpu.internode_bytes_per_s > 0:
            raise ValueError(
                f"nodes={self.nodes}: {self.gpu.name} has no inter-node bandwidth in the catalog "
                f"(catalog.gpuTypes.{self.gpu.name}.interNodeGbps)"
            )
        valid = self.model.valid_shards(self.gpu.max_gpus_per_node, supports_kv_replication(self.engine))
        if self.shards not in valid:
            raise ValueError(
                f"shards={self.shards} is not valid for {self.model.name} on {self.gpu.name} "
                f"({self.engine}): accepted {valid}"
            )
        self.model.weight_bytes(self.quantization)  # validates the quantization name
        # decode-step weight reads, precomputed for decode_weight_seconds (the engine's inner loop)
        bpp = BYTES_PER_PARAM[self.quantization]
        experts = self.model.routed_expert_params
        fixed = ((self._body_params - experts) * bpp + self._lm_head_params * 2.0) / self.shards
        per_expert = self.model.layers * self.model.expert_params * bpp / self.shards
        object.__setattr__(self, "_read_fixed", fixed)
        object.__setattr__(self, "_read_per_expert", per_expert)
        object.__setattr__(self, "_read_fixed_s", fixed / self._bandwidth)
        object.__setattr__(self, "_read_per_expert_s", per_expert / self._bandwidth)
        if self.kv_capacity_tokens < self.max_total_tokens:
            raise ValueError(
                f"{self.model.name} {self.quantization} on {self.shards}x {self.gpu.name}: KV cache holds "
                f"{self.kv_capacity_tokens} tokens, less than max_total_tokens={self.max_total_tokens} "
                "(TGI would refuse to start); use more shards, a larger GPU or a smaller max_total_tokens"
                + (f" ({self.nodes} nodes)" if self.nodes > 1 else "")
            )

    # --- sizes -------------------------------------------------------------------------
    @property
    def weight_bytes(self) -> float:
        """Bytes of weights for the whole replica (all shards)."""
        return self.model.weight_bytes(self.quantization)

    @property
    def weight_bytes_per_gpu(self) -> float:
        """Weights on one GPU (across nodes: a GPU of the heaviest pipeline stage)."""
        if self.nodes > 1:
            return self.model.stage_weight_bytes(self.quantization, self.nodes) / self.shards
        return self.weight_bytes / self.shards

    @property
    def kv_bytes_per_token_per_gpu(self) -> float:
        """KV cache one token takes on one GPU (across nodes: a GPU of the fullest stage)."""
        if self.nodes > 1:
            return float(self.model.kv_bytes_per_token_per_stage_shard(self.shards, self.nodes, KV_DTYPE_BYTES))
        return float(self.model.kv_bytes_per_token_per_shard(self.shards, KV_DTYPE_BYTES))

    @property
    def _kv_read_bytes_per_token(self) -> float:
        """KV bytes per token one forward reads per GPU, summed over the pipeline stages it passes
        (every layer's K and V over ``shards`` GPUs; one node: :attr:`kv_bytes_per_token_per_gpu`)."""
        return float(self.model.kv_bytes_per_token_per_shard(self.shards, KV_DTYPE_BYTES))

    @property
    def gpus(self) -> int:
        """GPUs of the whole replica: ``nodes x shards``."""
        return self.nodes * self.shards

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
        """Transformer-layer parameters (everything except embedding and LM head), every expert."""
        return self.model.params - self.model.embedding_params

    @property
    def _active_body_params(self) -> float:
        """Transformer-layer parameters one token multiplies by (MoE: the top-k experts only)."""
        return self.model.active_params - self.model.embedding_params

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
        """Bytes read per GPU by a one-token forward: quantized layers + bf16 LM head (the input
        embedding is a lookup). MoE: the non-expert layers and the top-k experts."""
        return self.weight_bytes_read_per_gpu(1)

    def weight_bytes_read_per_gpu(self, tokens: float) -> float:
        """Weight bytes per GPU a forward over ``tokens`` tokens reads: every weight for a dense
        model; for a MoE model the non-expert weights plus the experts the tokens hit
        (:meth:`..catalog.models.QwenModel.expected_experts_hit`)."""
        fixed: float = self._read_fixed  # type: ignore[attr-defined]
        if not self.model.is_moe:
            return fixed
        per_expert: float = self._read_per_expert  # type: ignore[attr-defined]
        return fixed + per_expert * self.model.expected_experts_hit(tokens)

    def decode_weight_seconds(self, batch: float) -> float:
        """Weight-read time of a decode step for ``batch`` sequences (the ``m0`` term of
        :meth:`decode_coefficients`, which for a MoE model grows with the batch)."""
        fixed_s: float = self._read_fixed_s  # type: ignore[attr-defined]
        if not self.model.experts:
            return fixed_s
        per_expert_s: float = self._read_per_expert_s  # type: ignore[attr-defined]
        return fixed_s + per_expert_s * self.model.expected_experts_hit(batch)

    def _allreduce_s(self, tokens: float) -> float:
        """Time of the 2 x layers all-reduces of ``tokens`` hidden vectors (bf16) across the shards."""
        if self.shards == 1:
            return 0.0
        link = self.gpu.interconnect if self.gpu.interconnect in ALLREDUCE_LATENCY_S else "pcie"
        nbytes = tokens * self.model.hidden_size * 2.0
        ring = 2.0 * (self.shards - 1) / self.shards
        one = ALLREDUCE_LATENCY_S[link] + nbytes * ring / ALLREDUCE_BUS_BYTES_PER_S[link]
        return 2 * self.model.layers * one

    def _hop_s(self, tokens: float) -> float:
        """Time of the ``nodes - 1`` pipeline hops of one forward over ``tokens`` tokens (0 on one node)."""
        if self.nodes == 1:
            return 0.0
        nbytes = tokens * self.model.hidden_size * 2.0 * PIPELINE_ACTIVATION_TENSORS
        return (self.nodes - 1) * (PIPELINE_HOP_LATENCY_S + nbytes / self.gpu.internode_bytes_per_s)

    # --- timings -----------------------------------------------------------------------
    def forward_seconds(
        self,
        decode_batch: float = 0,
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
        flops = 2.0 * self._active_body_params * (p_tokens + decode_batch)
        flops += 2.0 * self._lm_head_params * (decode_batch + len(prefill))  # logits: last token only
        flops += sum(attn * (2.0 * c * o + c * c) for c, o in prefill)  # causal attention of the chunks
        flops += 2.0 * attn * context_tokens  # each decode token attends to its context
        mfu = PREFILL_MFU if p_tokens else DECODE_MFU
        compute = flops / (self._flops_per_s * mfu)
        kv = (context_tokens + prefix) * self._kv_read_bytes_per_token
        memory = (self.weight_bytes_read_per_gpu(p_tokens + decode_batch) + kv) / self._bandwidth
        overhead = PREFILL_OVERHEAD_S if p_tokens else DECODE_STEP_OVERHEAD_S
        return (
            max(compute, memory)
            + self._allreduce_s(p_tokens + decode_batch)
            + overhead
            + PER_SEQUENCE_OVERHEAD_S * decode_batch
            + self._hop_s(p_tokens + decode_batch)
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
        loop costs a few multiplications. ``m0`` is the weight read at batch 1; for a MoE model
        it grows with the batch, so the engine takes it from :meth:`decode_weight_seconds`.
        """
        m = self.model
        bw, fl = self._bandwidth, self._flops_per_s * DECODE_MFU
        ar0 = self._allreduce_s(0)
        ar_b = (self._allreduce_s(1) - ar0) if self.shards > 1 else 0.0
        o0, o_b = ar0 + DECODE_STEP_OVERHEAD_S, ar_b + PER_SEQUENCE_OVERHEAD_S
        if self.nodes > 1:  # the pipeline hops: a fixed part and one per sequence's activations
            hop0 = self._hop_s(0)
            o0, o_b = o0 + hop0, o_b + (self._hop_s(1) - hop0)
        return (
            self.decode_weight_bytes_per_gpu / bw,
            self._kv_read_bytes_per_token / bw,
            2.0 * (self._active_body_params + self._lm_head_params) / fl,
            4.0 * m.layers * m.attention_heads * m.head_dim / fl,
            o0,
            o_b,
        )

    def tokens_per_second_per_stream(self, batch_size: int = 1, context_per_sequence: int = 1000) -> float:
        """Decode speed one client sees with ``batch_size`` sequences of this context running."""
        return 1.0 / self.decode_step_seconds(batch_size, batch_size * context_per_sequence)

    def pipeline_decode_tokens_per_second(self, micro_batch: int = 32, context_per_sequence: int = 1000) -> float:
        """Steady-state decode tokens/s of the whole replica with ``nodes`` micro-batches of
        ``micro_batch`` sequences in flight (see the module docstring): ``nodes x m / cycle`` with
        ``cycle = max(pass(m), nodes x slowest stage(m))``. One node: ``m / decode step``."""
        m = max(1, micro_batch)
        one_pass = self.decode_step_seconds(m, m * context_per_sequence)
        if self.nodes == 1:
            return m / one_pass
        slowest = (one_pass - self._hop_s(m)) * self.model.stage_layers(self.nodes) / self.model.layers
        return self.nodes * m / max(one_pass, self.nodes * slowest)

    @property
    def cold_start(self) -> ColdStart:
        """The cold start's components (SIMULATED): see :class:`ColdStart`."""
        per_node = self.weight_bytes if self.nodes == 1 else self.weight_bytes_per_gpu * self.shards
        return ColdStart(
            process_start_s=PROCESS_START_S,
            tp_init_s=TP_INIT_S if self.shards > 1 or self.nodes > 1 else 0.0,
            load_s=per_node / NODE_CACHE_READ_BYTES_PER_S,
            warmup_s=WARMUP_S,
            checkpoint_bytes=self.weight_bytes,
        )

    @property
    def cold_start_seconds(self) -> float:
        """From pod start to /health OK with the weights already on the node: process start,
        weights from the node cache, warm-up (``cold_start.on_node``)."""
        return self.cold_start.on_node

    def cold_start_pull_seconds(self, registry_bytes_per_s: float = DEFAULT_REGISTRY_BYTES_PER_S) -> float:
        """From pod start to /health OK on a node without the model: the init container pulls
        the whole checkpoint at ``registry_bytes_per_s``, then the on-node cold start."""
        return self.cold_start.pulled(registry_bytes_per_s)

    def describe(self) -> dict[str, float | int | str]:
        """Headline figures (all simulated) for logs, /info and benchmarks."""
        out: dict[str, float | int | str] = {
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
        if self.nodes > 1:
            out["nodes"] = self.nodes
            out["gpus"] = self.gpus
            out["pipeline_decode_tokens_per_s_microbatch32"] = round(self.pipeline_decode_tokens_per_second(32))
        if self.model.is_moe:
            out["decode_tokens_per_s_batch32"] = round(self.tokens_per_second_per_stream(32), 1)
            out["active_params_b"] = round(self.model.active_params / 1e9, 2)
        return out

    # --- capacity within a time-to-first-token SLO (analytic) ----------------------------
    def ttft_seconds(self, prompt_tokens: int, decode_batch: float = 0.0, context_tokens: float = 0.0) -> float:
        """Time to first token of one prompt on a replica with no queue: its chunked-prefill
        forwards (``max_batch_prefill_tokens`` minus the running batch per forward, as the
        engine does), each carrying the running batch's decode step. Idle: ``ttft_seconds(p)``."""
        budget = max(1, self.max_batch_prefill_tokens - math.ceil(decode_batch))
        done, total = 0, 0.0
        while done < prompt_tokens:
            chunk = min(budget, prompt_tokens - done)
            total += self.forward_seconds(decode_batch, context_tokens, [(chunk, done)])
            done += chunk
        return total

    def slo_capacity(
        self, prompt_tokens: int, output_tokens: int, slo_seconds: float, quantile: float = SLO_QUANTILE
    ) -> SLOCapacity:
        """Requests/s (and requests in flight) one replica sustains with the ``quantile`` of
        time to first token within ``slo_seconds``, for requests of ``prompt_tokens`` in and
        ``output_tokens`` out under Poisson arrivals. See :func:`ttft_exceedance` for the model."""
        idle = self.ttft_seconds(prompt_tokens)
        if idle > slo_seconds:
            return SLOCapacity(0.0, 0.0, idle, "idle-ttft")

        def ok(rate: float) -> tuple[bool, str, float]:
            q = _queue_state(self, rate, prompt_tokens, output_tokens)
            if q is None:
                return False, "prefill-saturated", math.inf
            limit, why = _in_flight_limit(self, prompt_tokens, output_tokens)
            if q.in_flight > ADMISSION_HEADROOM * limit:
                return False, why, q.in_flight
            return _exceedance(q, slo_seconds) <= 1.0 - quantile, "ttft", q.in_flight

        lo, hi = 1e-4, 1.0
        while ok(hi)[0] and hi < 1e5:
            lo, hi = hi, hi * 2.0
        bound = ok(hi)[1]
        for _ in range(40):
            mid = math.sqrt(lo * hi)
            good, why, _ = ok(mid)
            if good:
                lo = mid
            else:
                hi, bound = mid, why
            if hi / lo < 1.005:
                break
        return SLOCapacity(lo, ok(lo)[2], idle, bound)


@dataclass(frozen=True)
class ColdStart:
    """A replica's cold start by component, in seconds (SIMULATED figures).

    ``on_node`` is the cold start when the node already holds the model version (pre-staged by
    the node agent, or left by an earlier replica): container and CUDA start, the
    tensor-parallel init, the weights read from the node cache, TGI's warm-up. ``pulled(bw)`` is
    the cold start on a node without it: the pod's init container first downloads the whole
    checkpoint, ``checkpoint_bytes`` (every shard's weights: the model's total weight bytes at
    its quantization, a pre-quantized checkpoint such as Qwen3-14B-FP8), at ``bw`` bytes/s, and
    only then does the serving container start. Pulling and loading do not overlap: the init
    container must finish (the version verified, ``current`` flipped) before TGI starts.
    """

    process_start_s: float
    tp_init_s: float
    load_s: float  # weights from the node cache into GPU memory
    warmup_s: float
    checkpoint_bytes: float  # what a pull moves: the whole checkpoint, all shards

    @property
    def on_node(self) -> float:
        """Weights on the node: process start + TP init + load + warm-up."""
        return self.process_start_s + self.tp_init_s + self.load_s + self.warmup_s

    def pull_seconds(self, registry_bytes_per_s: float = DEFAULT_REGISTRY_BYTES_PER_S) -> float:
        """The init container's download of the whole checkpoint at ``registry_bytes_per_s``."""
        if not (registry_bytes_per_s > 0 and math.isfinite(registry_bytes_per_s)):
            raise ValueError(f"registry bandwidth must be a positive number of bytes/s, got {registry_bytes_per_s}")
        return self.checkpoint_bytes / registry_bytes_per_s

    def pulled(self, registry_bytes_per_s: float = DEFAULT_REGISTRY_BYTES_PER_S) -> float:
        """Weights pulled now: the download, then the on-node cold start."""
        return self.pull_seconds(registry_bytes_per_s) + self.on_node

    def seconds(self, weights: str, registry_bytes_per_s: float = DEFAULT_REGISTRY_BYTES_PER_S) -> float:
        """``weights``: ``on-node`` or ``pulled`` (:data:`WEIGHTS_MODES`)."""
        if weights == "on-node":
            return self.on_node
        if weights == "pulled":
            return self.pulled(registry_bytes_per_s)
        raise ValueError(f"weights {weights!r}; valid: {', '.join(WEIGHTS_MODES)}")


#: Where a scale-out replica finds its weights: ``on-node`` (pre-staged) or ``pulled`` (now, from the registry).
WEIGHTS_MODES = ("on-node", "pulled")


#: Prompts one forward can take in the analytic queue (more arrivals in one forward than this
#: are lumped together; at rates within a TTFT SLO they are vanishingly rare).
_MAX_PROMPTS_PER_FORWARD = 12
#: Backlog states beyond K in the analytic queue (prompts left waiting for a later forward).
_BACKLOG_STATES = 8


@dataclass(frozen=True)
class SLOCapacity:
    """What one replica carries within a TTFT SLO (analytic, SIMULATED figures).

    ``rate``: requests/s; ``concurrency``: requests in flight at that rate (Little's law);
    ``idle_ttft``: time to first token of one prompt on an idle replica; ``bound``: what stops
    more traffic: ``ttft`` (the SLO), ``kv-cache`` / ``max-concurrent-requests`` (admission),
    ``prefill-saturated``, or ``idle-ttft`` (the SLO cannot be met at all: rate 0).
    """

    rate: float
    concurrency: float
    idle_ttft: float
    bound: str


@dataclass(frozen=True)
class _Queue:
    rate: float
    per_forward: int  # K: whole prompts one forward takes
    forward: tuple[float, ...]  # duration of a forward carrying k = 0..K prompts plus the decode step
    weight: tuple[float, ...]  # probability that an arrival lands in a forward that started with n waiting
    mean_forward: float
    in_flight: float

    def duration(self, waiting: int) -> float:
        return self.forward[min(waiting, self.per_forward)]


def _poisson(mean: float, n: int) -> list[float]:
    """P(J = j) for j < n, the tail P(J >= n-1) lumped into the last entry."""
    out, p = [], math.exp(-mean)
    for j in range(n):
        out.append(p)
        p *= mean / (j + 1)
    out[-1] = max(0.0, 1.0 - sum(out[:-1]))
    return out


def _queue_state(m: ReplicaModel, rate: float, prompt: int, output: int) -> _Queue | None:
    """Steady state of the continuous-batching queue at ``rate`` (None when prefill saturates).

    TGI 3's chunked prefill puts waiting prompts into the next forward (at most
    ``K = (max_batch_prefill_tokens - b) // prompt`` whole ones), alongside the running
    batch's decode step. The chain's state is the number ``n`` of prompts waiting when a
    forward starts: it takes ``min(n, K)`` of them and lasts ``T_min(n,K)``
    (:meth:`ReplicaModel.forward_seconds` with that many prompts and ``b`` decoding
    sequences), while ``Poisson(rate x T)`` new ones arrive. ``b`` follows from Little's
    law: each forward gives every running request one token, so
    ``b = rate x (output - 1) x mean T``. The chain is solved by power iteration, ``b`` by
    fixed-point iteration.
    """
    b = 0.0
    pi: list[float] = []
    q: _Queue | None = None
    for _ in range(30):
        k_max = (m.max_batch_prefill_tokens - math.ceil(b)) // max(1, prompt)
        k_max = max(1, min(_MAX_PROMPTS_PER_FORWARD, k_max))
        ctx = b * (prompt + output / 2.0)
        forward = [m.forward_seconds(max(b, 1.0), max(ctx, prompt))]  # no prompt: a decode step
        if prompt * k_max <= m.max_batch_prefill_tokens:
            forward += [m.forward_seconds(b, ctx, [(prompt, 0)] * k) for k in range(1, k_max + 1)]
        else:  # a prompt longer than one forward's budget: its chunks, one forward each
            forward.append(m.ttft_seconds(prompt, b, ctx))
        if rate * forward[-1] >= 0.98 * k_max:  # prompts arrive faster than full forwards take them
            return None
        states = k_max + _BACKLOG_STATES
        arrivals = [_poisson(rate * t, states) for t in forward]
        if len(pi) != states:
            pi = [1.0] + [0.0] * (states - 1)
        for _ in range(500):
            nxt = [0.0] * states
            for n, p in enumerate(pi):
                if p:
                    c = min(n, k_max)
                    for j, pj in enumerate(arrivals[c][: states - (n - c)]):
                        nxt[n - c + j] += p * pj
                    nxt[-1] += p * sum(arrivals[c][states - (n - c) :])
            done = max(abs(a - c) for a, c in zip(nxt, pi, strict=True)) < 1e-9
            pi = nxt
            if done:
                break
        if pi[-1] > 0.01:  # the backlog runs off the end of the chain: saturated
            return None
        durations = [forward[min(n, k_max)] for n in range(states)]
        mean_t = sum(p * t for p, t in zip(pi, durations, strict=True))
        weight = tuple(p * t / mean_t for p, t in zip(pi, durations, strict=True))
        q = _Queue(rate, k_max, tuple(forward), weight, mean_t, 0.0)
        b_new = rate * max(0, output - 1) * mean_t
        converged = abs(b_new - b) <= 1e-3 * max(1.0, b)
        b = b_new if converged else 0.5 * (b + b_new)
        if converged:
            break
    assert q is not None
    mean_ttft = sum(w * (q.duration(n) / 2.0 + sum(p * s for p, s in _own_waits(q, n))) for n, w in enumerate(q.weight))
    return _Queue(
        rate, q.per_forward, q.forward, q.weight, q.mean_forward, rate * (mean_ttft + (output - 1) * q.mean_forward)
    )


def _own_waits(q: _Queue, waiting: int) -> list[tuple[float, float]]:
    """(probability, seconds from the end of the current forward to the first token) for an
    arrival during a forward that started with ``waiting`` prompts: the ones it left behind
    go first, then the arrival and the ``J ~ Poisson(rate x T)`` others that came meanwhile,
    in arrival order (its place among them equally likely), ``K`` per forward."""
    k = q.per_forward
    left = waiting - min(waiting, k)
    out = []
    for j, pj in enumerate(_poisson(q.rate * q.duration(waiting), k + _BACKLOG_STATES)):
        n = left + 1 + j
        for pos in range(left, n):
            before = pos // k
            out.append((pj / (1 + j), before * q.forward[k] + q.duration(n - before * k)))
    return out


def _exceedance(q: _Queue, x: float) -> float:
    """P(time to first token > ``x``): an arrival lands uniformly inside a forward (chosen with
    probability proportional to its length), waits out its rest, then the forwards that serve
    it (:func:`_own_waits`)."""
    total = 0.0
    for n, w in enumerate(q.weight):
        t = q.duration(n)
        for p, own in _own_waits(q, n):
            total += w * p * min(1.0, max(0.0, (t - (x - own)) / t))
    return total


def _in_flight_limit(m: ReplicaModel, prompt: int, output: int) -> tuple[float, str]:
    """Requests a replica holds at once: TGI reserves prompt + output KV per admitted request."""
    kv = m.kv_capacity_tokens / max(1, prompt + output)
    limits = [(kv, "kv-cache"), (float(m.max_concurrent_requests), "max-concurrent-requests")]
    if m.max_batch_size is not None:
        limits.append((float(m.max_batch_size), "max-batch-size"))
    return min(limits)

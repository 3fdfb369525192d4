"""Per GPU type: the smallest tensor-parallel degree that fits, its cost and throughput.

Memory model (per GPU, one replica split over ``shards`` GPUs)::

    weights / shards + kv_reserve / shards + overhead  <=  memory x utilisation

- ``weights``: :meth:`QwenModel.weight_bytes` for the quantization (tensor parallelism
  splits every matrix, embeddings included, evenly across shards).
- ``kv_reserve``: KV cache for ``maxTotalTokens x min_batch_sequences`` tokens at
  2 bytes per element (:meth:`QwenModel.kv_bytes_per_token`; KV heads are split across
  shards). TGI refuses to start unless ``max_batch_total_tokens >= max_total_tokens``,
  i.e. unless one full-length sequence fits, and then gives the KV cache all memory left
  after warm-up; so the default reserve is **one** full-length sequence, and the memory
  left over is reported as extra KV capacity (``kv_tokens``) rather than required.
  Raise ``min_batch_sequences`` to demand more concurrency headroom per replica.
- ``overhead`` (default 2 GB per GPU): CUDA context and cuBLAS workspaces (~0.5-1 GB),
  prefill activations, and NCCL buffers when sharded; measured TGI/vLLM footprints beyond
  weights and KV are 1.5-2 GB per GPU for these model sizes.
- ``utilisation`` (default 0.9): headroom for allocator fragmentation, as vLLM's
  ``gpu_memory_utilization`` default.

Valid degrees divide both the attention and the KV heads (``QwenModel.valid_shards``; with
``engine: vllm`` also multiples of the KV heads, which vLLM replicates) and are at most the
GPUs of one node (``GPUType.max_gpus_per_node``). A model whose weights do not fit one node of a
GPU type (Qwen3-235B-A22B in bf16 on A100-40GB or L40S) gets a one-line reason saying so.

Replicas spanning nodes (:func:`multi_node_candidate`, only with ``Workload.multi_node``, which
``qwenctl plan`` sets and the controller does not: this version of the operator does not render
the LeaderWorkerSet such a replica runs as). For a GPU type on one node of which the model fits
at no valid degree, the planner takes the fewest nodes ``n`` (2 ..
``PlacementPolicy.max_nodes_per_replica``) whose heaviest pipeline stage fits per GPU::

    stage weights / tp + stage kv_reserve / tp + overhead  <=  memory x utilisation

with ``tp`` the largest valid tensor-parallel degree on one node (the node's GPUs: vLLM's
documented multi-node layout, tensor parallelism within a node and pipeline parallelism across
nodes), the stage weights :meth:`..catalog.models.QwenModel.stage_weight_bytes` and the KV reserve
of the stage's own layers. The candidate has ``nodes = n``, ``shards = tp``, ``n x tp`` GPUs and
``n x tp`` GPUs' price per replica. Engine vllm only: TGI shards a replica over one machine's GPUs
(tensor parallelism) and has no pipeline parallelism. Its decode throughput per sequence is one
token per pass through every stage, ``1 / (decode_bytes / (bandwidth x tp x tp_efficiency) +
(n - 1) x hop)`` (:data:`..capacity.model.PIPELINE_HOP_LATENCY_S` plus one token's activations
over :attr:`..catalog.gpus.GPUType.internode_bytes_per_s`); the SLO figures come from the replica
model with ``nodes = n``.

Mixture-of-experts models (Qwen3-30B-A3B, Qwen3-235B-A22B): memory counts **total**
parameters (every expert is resident: Qwen3-30B-A3B needs the GPUs of a 30B dense model),
throughput and the SLO estimate count **active** ones (see :mod:`..capacity.model`).

Throughput is decode-bound: each output token reads every weight once (a MoE model: its
active weights), so tokens/s per sequence ~ ``bandwidth x shards x tp_efficiency /
decode_bytes`` (``decode_bytes`` = weight bytes for a dense model). Tensor parallelism pays
an all-reduce per layer: ``tp_efficiency = 0.9 ** log2(shards)`` over NVLink and
``0.8 ** log2(shards)`` over PCIe (A10G, L40S). It is a relative figure to rank GPU
types by $ per unit of throughput, not a benchmark.

SLO (time to first token). A replica that fits is then asked of the simulator's replica
model (:class:`qwen_operator.capacity.model.ReplicaModel`, the same model ``qwenctl simulate``
and the simulated TGI server use) for a typical request (``spec.scaling.typicalPromptTokens``
in, ``typicalOutputTokens`` out, plus :data:`..capacity.model.TYPICAL_REASONING_TOKENS` of
thinking when :attr:`Workload.reasoning` is true for a model with Qwen3's thinking mode):

- ``idle_ttft``: time to first token of one typical prompt on an idle replica (its prefill
  forwards). Above the SLO (``spec.scaling.p95LatencySeconds``) no load can meet it, so the
  GPU type is not used (``fits`` false, the reason says why).
- ``slo_rate``: requests/s one replica sustains with P95 time to first token within the SLO
  (:meth:`ReplicaModel.slo_capacity`), and ``slo_concurrency`` the requests in flight then.

Ranking (``PlacementPolicy.rank_by``), which scale-up fills, spill-over follows and scale-down
empties in reverse:

- ``"slo"`` (the default): $/h per request/s within the SLO (``cost_per_slo_rate``), the
  capacity unit ``qwenctl simulate`` measures. It counts what decode bandwidth alone does
  not: prefill compute (fp8 tensor cores on L40S, none on A10G) and the KV cache left over
  for concurrent sequences. E.g. Qwen3-14B fp8, 512-token prompts, P95 TTFT 1.2 s: L40S
  0.16 $/h per req/s, A10G 0.99, so L40S fills first although A10G is the cheaper GPU.
  A type the replica model could not estimate (no ``slo_rate``) ranks after every type it
  did estimate, by $/h per decode token/s, rather than comparing the two units.
- ``"decode"``: $/h per decode token/s per sequence (``cost_per_throughput``), the
  bandwidth-only figure above; also what ``"slo"`` falls back to without an SLO
  (``Workload.slo_seconds`` None).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..capacity.model import (
    PIPELINE_ACTIVATION_TENSORS,
    PIPELINE_HOP_LATENCY_S,
    ReplicaModel,
    SLOCapacity,
    supports_kv_replication,
    supports_pipeline_parallel,
    typical_output_tokens,
)
from ..catalog import BYTES_PER_PARAM, GB, GPUType, QwenModel


@dataclass(frozen=True)
class PlacementPolicy:
    """Knobs of the memory model; the defaults are documented in the module docstring."""

    overhead_bytes_per_gpu: float = 2.0 * GB
    utilisation: float = 0.9
    min_batch_sequences: int = 1
    tp_efficiency_nvlink: float = 0.9
    tp_efficiency_pcie: float = 0.8
    rank_by: str = "slo"  # "slo": $/h per request/s within the SLO; "decode": $/h per decode token/s
    max_nodes_per_replica: int = 8  # most nodes (pipeline stages) a replica may span (Workload.multi_node)


DEFAULT_POLICY = PlacementPolicy()


@dataclass(frozen=True)
class Workload:
    """What one replica must hold: the model, its quantization and the token limits."""

    model: QwenModel
    quantization: str = "none"
    max_total_tokens: int = 16384
    max_concurrent_requests: int = 128
    tensor_parallel: int | None = None  # None: auto
    max_input_tokens: int = 8192
    slo_seconds: float | None = None  # P95 time to first token; None: no SLO check
    prompt_tokens: int = 512  # a typical request (spec.scaling.typicalPromptTokens) ...
    output_tokens: int = 128  # ... and its visible reply (typicalOutputTokens)
    engine: str = "tgi"  # spec.runtime.engine: vllm may shard beyond the KV heads (replicates them)
    #: spec.runtime.reasoning == "enabled": add thinking tokens to the typical reply (models with
    #: Qwen3's thinking mode only). None: not stated, typicalOutputTokens is the whole reply.
    reasoning: bool | None = None
    #: Also plan replicas spanning nodes (pipeline parallelism, a LeaderWorkerSet group) on GPU types
    #: one node of which holds no replica: ``qwenctl plan`` sets it; the controller only when the
    #: LeaderWorkerSet CRD is installed.
    multi_node: bool = False

    @property
    def typical_prompt(self) -> int:
        """The typical prompt, clipped to what the runtime accepts."""
        return max(1, min(self.prompt_tokens, self.max_input_tokens, self.max_total_tokens - 1))

    @property
    def typical_output(self) -> int:
        """The typical reply in generated tokens (thinking included when :attr:`reasoning`), clipped."""
        out = typical_output_tokens(self.model, self.output_tokens, self.reasoning)
        return max(1, min(out, self.max_total_tokens - self.typical_prompt))

    @property
    def weight_bytes(self) -> float:
        return self.model.weight_bytes(self.quantization)

    @property
    def decode_bytes(self) -> float:
        """Weight bytes one token's decode reads: all weights of a dense model; for a MoE model
        all but the experts the router did not pick."""
        unpicked = self.model.params - self.model.active_params
        return self.weight_bytes - unpicked * BYTES_PER_PARAM[self.quantization]

    @property
    def kv_replication(self) -> bool:
        return supports_kv_replication(self.engine)

    def kv_reserve_bytes(self, policy: PlacementPolicy, shards: int = 1) -> float:
        """KV cache reserved per GPU of a ``shards``-way replica (all of it for ``shards`` 1)."""
        sequences = max(1, min(policy.min_batch_sequences, self.max_concurrent_requests))
        return float(self.model.kv_bytes_per_token_per_shard(shards) * self.max_total_tokens * sequences)


@dataclass(frozen=True)
class Candidate:
    """The best way to run one replica on one GPU type (or why there is none)."""

    gpu_type: str
    fits: bool
    shards: int  # GPUs per replica (tensor-parallel degree); 0 when nothing fits
    price_per_hour: float  # $/h per replica
    throughput: float  # relative decode tokens/s per sequence (see module docstring)
    reason: str
    weights_per_gpu: float = 0.0  # bytes
    kv_per_gpu: float = 0.0  # bytes reserved for the minimum batch
    usable_per_gpu: float = 0.0  # memory x utilisation, bytes
    kv_tokens: int = 0  # KV cache capacity in tokens with the memory left over
    idle_ttft: float = 0.0  # s, typical prompt on an idle replica (0: not estimated)
    slo_rate: float = 0.0  # requests/s within the SLO per replica (0: not estimated or cannot meet it)
    slo_concurrency: float = 0.0  # requests in flight at slo_rate
    rank_by: str = "slo"  # PlacementPolicy.rank_by; "slo" without slo_rate ranks by decode (see rank_key)
    nodes: int = 1  # nodes (pipeline stages) one replica spans, each with ``shards`` GPUs

    @property
    def gpus_per_replica(self) -> int:
        return self.shards * self.nodes

    @property
    def multi_node(self) -> bool:
        """The replica spans nodes (a LeaderWorkerSet group)."""
        return self.nodes > 1

    @property
    def cost_per_slo_rate(self) -> float:
        """$/h per request/s within the SLO (lower is better; inf when unknown or unusable)."""
        if not self.fits or self.slo_rate <= 0:
            return math.inf
        return self.price_per_hour / self.slo_rate

    @property
    def rank_cost(self) -> float:
        """What the fill order sorts on (``PlacementPolicy.rank_by``)."""
        return self.cost_per_slo_rate if self.rank_by == "slo" and self.slo_rate > 0 else self.cost_per_throughput

    @property
    def cost_per_throughput(self) -> float:
        """$/h per unit of relative throughput (lower is better; inf when it does not fit)."""
        if not self.fits or self.throughput <= 0:
            return math.inf
        return self.price_per_hour / self.throughput


def tp_efficiency(gpu: GPUType, shards: int, policy: PlacementPolicy = DEFAULT_POLICY) -> float:
    per_doubling = policy.tp_efficiency_nvlink if gpu.interconnect == "nvlink" else policy.tp_efficiency_pcie
    return float(per_doubling ** math.log2(shards)) if shards > 1 else 1.0


def relative_throughput(work: Workload, gpu: GPUType, shards: int, policy: PlacementPolicy = DEFAULT_POLICY) -> float:
    """Decode tokens/s per sequence ~ bandwidth x shards x efficiency / decode bytes (MoE: active weights)."""
    return gpu.bandwidth_bytes_per_s * shards * tp_efficiency(gpu, shards, policy) / work.decode_bytes


def _gb(nbytes: float) -> str:
    return f"{nbytes / GB:.1f} GB"


def _fit(work: Workload, gpu: GPUType, shards: int, policy: PlacementPolicy) -> tuple[bool, float, float, float, int]:
    """(fits, weights/GPU, kv/GPU, usable/GPU, kv token capacity) for one degree."""
    weights = work.weight_bytes / shards
    kv = work.kv_reserve_bytes(policy, shards)
    usable = gpu.memory_bytes * policy.utilisation
    free_for_kv = usable - policy.overhead_bytes_per_gpu - weights
    kv_per_token_per_gpu = work.model.kv_bytes_per_token_per_shard(shards)
    tokens = max(0, int(free_for_kv / kv_per_token_per_gpu))
    return weights + kv + policy.overhead_bytes_per_gpu <= usable, weights, kv, usable, tokens


#: The end of the one-node "does not fit" reason; :func:`multi_node_candidate` replaces it with its own answer.
_NOT_ACROSS_NODES = "; replicas spanning nodes need the LeaderWorkerSet CRD"


def candidate_for(work: Workload, gpu: GPUType, policy: PlacementPolicy = DEFAULT_POLICY) -> Candidate:
    """The smallest valid tensor-parallel degree on ``gpu`` that fits ``work`` (or why none does)."""
    node_limit = gpu.max_gpus_per_node
    valid = work.model.valid_shards(max_shards=64, kv_replication=work.kv_replication)
    if work.tensor_parallel is not None:
        tp = work.tensor_parallel
        if tp not in valid:
            return Candidate(
                gpu.name,
                False,
                0,
                0.0,
                0.0,
                f"tensorParallel {tp} does not divide {work.model.attention_heads} attention heads and "
                f"{work.model.kv_heads} KV heads (valid with {work.engine}: "
                f"{', '.join(map(str, work.model.valid_shards(kv_replication=work.kv_replication)))})",
            )
        if tp > node_limit:
            return Candidate(gpu.name, False, 0, 0.0, 0.0, f"tensorParallel {tp} exceeds {node_limit} GPUs per node")
        degrees = [tp]
    else:
        degrees = [n for n in valid if n <= node_limit]
    detail = ""
    for shards in degrees:
        fits, weights, kv, usable, tokens = _fit(work, gpu, shards, policy)
        if fits:
            price = shards * gpu.price_per_gpu_hour
            memory = (
                f"{shards}x {gpu.name}: {_gb(weights)} weights + {_gb(kv)} KV + "
                f"{_gb(policy.overhead_bytes_per_gpu)} overhead <= {_gb(usable)} per GPU; "
                f"KV room for {tokens} tokens ({tokens / work.max_total_tokens:.1f} full-length sequences)"
            )
            cand = Candidate(
                gpu_type=gpu.name,
                fits=True,
                shards=shards,
                price_per_hour=price,
                throughput=relative_throughput(work, gpu, shards, policy),
                reason=memory,
                weights_per_gpu=weights,
                kv_per_gpu=kv,
                usable_per_gpu=usable,
                kv_tokens=tokens,
                rank_by=policy.rank_by,
            )
            return _with_slo(cand, work, gpu) if work.slo_seconds is not None else cand
        detail = (
            f"at {shards} shard{'s' if shards > 1 else ''} needs {_gb(weights)} weights + {_gb(kv)} KV + "
            f"{_gb(policy.overhead_bytes_per_gpu)} overhead > {_gb(usable)} usable per GPU"
        )
    largest = degrees[-1] if degrees else 0
    why = f"does not fit: {detail}" if detail else "no valid tensor-parallel degree"
    if work.tensor_parallel is None and largest:
        why += f" (largest valid degree on one node: {largest})"
        node = node_limit * (gpu.memory_bytes * policy.utilisation - policy.overhead_bytes_per_gpu)
        if work.weight_bytes > node:
            why = (
                f"does not fit on one node: {_gb(work.weight_bytes)} of weights > {_gb(node)} usable on "
                f"{node_limit}x {gpu.name}{_NOT_ACROSS_NODES}"
            )
        elif not work.kv_replication and largest < node_limit:
            wider = [n for n in work.model.valid_shards(node_limit, kv_replication=True) if n > largest]
            fits_wider = [n for n in wider if _fit(work, gpu, n, policy)[0]]
            if fits_wider:
                why += (
                    f"; {fits_wider[0]} shards would fit, but {work.engine} cannot split {work.model.kv_heads} "
                    f"KV heads {fits_wider[0]} ways (engine vllm replicates them)"
                )
    return Candidate(gpu.name, False, 0, 0.0, 0.0, why)


_SLO_CACHE: dict[tuple[object, ...], SLOCapacity | None] = {}
_SLO_CACHE_MAX = 1024


def slo_capacity(work: Workload, gpu: GPUType, shards: int, nodes: int = 1) -> SLOCapacity | None:
    """The replica model's answer for ``work``'s typical request on ``shards`` x ``gpu`` (memoised:
    the reconcile loop asks the same question every few seconds). None: the replica model
    refuses the replica (its memory budget differs slightly from the planner's)."""
    assert work.slo_seconds is not None
    p, o = work.typical_prompt, work.typical_output
    key: tuple[object, ...] = (repr(work.model), gpu, shards, work.quantization, work.max_concurrent_requests)
    key += (work.engine, work.max_input_tokens, work.max_total_tokens, p, o, work.slo_seconds, nodes)
    if key not in _SLO_CACHE:
        if len(_SLO_CACHE) >= _SLO_CACHE_MAX:
            _SLO_CACHE.clear()
        try:
            replica = ReplicaModel(
                work.model,
                gpu,
                shards,
                work.quantization,
                max_concurrent_requests=work.max_concurrent_requests,
                max_input_tokens=work.max_input_tokens,
                max_total_tokens=work.max_total_tokens,
                engine=work.engine,
                nodes=nodes,
            )
        except ValueError:
            _SLO_CACHE[key] = None
        else:
            _SLO_CACHE[key] = replica.slo_capacity(p, o, work.slo_seconds)
    return _SLO_CACHE[key]


def _with_slo(c: Candidate, work: Workload, gpu: GPUType) -> Candidate:
    """``c`` with its time-to-first-token figures; not usable when an idle replica misses the SLO."""
    cap = slo_capacity(work, gpu, c.shards, c.nodes)
    slo, p, o = work.slo_seconds, work.typical_prompt, work.typical_output
    if cap is None:
        return replace(c, reason=f"{c.reason}; time to first token not estimated")
    if cap.rate <= 0:
        return replace(
            c,
            fits=False,
            idle_ttft=cap.idle_ttft,
            reason=f"misses the SLO: time to first token of a {p}-token prompt is {cap.idle_ttft:.2f} s on an idle "
            f"{_shape(c.shards, c.nodes, gpu)} replica > P95 TTFT SLO {slo:g} s (spec.scaling.p95LatencySeconds); "
            f"fits in memory ({c.reason.split(': ', 1)[1]})",
        )
    return replace(
        c,
        idle_ttft=cap.idle_ttft,
        slo_rate=cap.rate,
        slo_concurrency=cap.concurrency,
        reason=f"{c.reason}; TTFT {cap.idle_ttft:.2f} s idle ({p}-token prompt), ~{cap.rate:.2f} req/s "
        f"(~{cap.concurrency:.0f} in flight, {o}-token replies) within P95 TTFT {slo:g} s",
    )


def candidates(work: Workload, gpus: list[GPUType], policy: PlacementPolicy = DEFAULT_POLICY) -> list[Candidate]:
    """One candidate per allowed GPU type, best (lowest :func:`rank_key`) first, unusable last.

    With ``work.multi_node``, a GPU type one node of which holds no replica gets
    :func:`multi_node_candidate` instead (replicas spanning nodes)."""
    found = [candidate_for(work, gpu, policy) for gpu in gpus]
    if work.multi_node:
        found = [multi_node_candidate(work, gpu, policy, c) for gpu, c in zip(gpus, found, strict=True)]
    return sorted(found, key=rank_key)


def _shape(shards: int, nodes: int, gpu: GPUType) -> str:
    """``8x A100-40GB`` or, across nodes, ``2 nodes x 8x A100-40GB``."""
    return f"{shards}x {gpu.name}" if nodes == 1 else f"{nodes} nodes x {shards}x {gpu.name}"


def _fit_stages(
    work: Workload, gpu: GPUType, shards: int, nodes: int, policy: PlacementPolicy
) -> tuple[bool, float, float, float, int]:
    """:func:`_fit` for a replica of ``nodes`` pipeline stages of ``shards`` GPUs, per GPU of the heaviest stage."""
    weights = work.model.stage_weight_bytes(work.quantization, nodes) / shards
    per_token = work.model.kv_bytes_per_token_per_stage_shard(shards, nodes)
    sequences = max(1, min(policy.min_batch_sequences, work.max_concurrent_requests))
    kv = float(per_token * work.max_total_tokens * sequences)
    usable = gpu.memory_bytes * policy.utilisation
    tokens = max(0, int((usable - policy.overhead_bytes_per_gpu - weights) / per_token))
    return weights + kv + policy.overhead_bytes_per_gpu <= usable, weights, kv, usable, tokens


def pipeline_throughput(
    work: Workload, gpu: GPUType, shards: int, nodes: int, policy: PlacementPolicy = DEFAULT_POLICY
) -> float:
    """Relative decode tokens/s per sequence of a replica across ``nodes`` nodes: one token per pass
    through every stage, the stages' decode time (:func:`relative_throughput` at ``shards`` GPUs)
    plus ``nodes - 1`` hops of one token's activations."""
    if nodes == 1:
        return relative_throughput(work, gpu, shards, policy)
    activations = work.model.hidden_size * 2.0 * PIPELINE_ACTIVATION_TENSORS  # one token's, bf16
    hop = PIPELINE_HOP_LATENCY_S + activations / gpu.internode_bytes_per_s
    return 1.0 / (1.0 / relative_throughput(work, gpu, shards, policy) + (nodes - 1) * hop)


#: The WHY text's note on a replica across nodes.
LWS_NOTE = (
    "runs as a LeaderWorkerSet group of {nodes} pods (one per node; vLLM tensor parallel {tp} within a node, "
    "pipeline parallel {nodes} across nodes; needs the LeaderWorkerSet CRD in the cluster)"
)


def multi_node_candidate(
    work: Workload, gpu: GPUType, policy: PlacementPolicy = DEFAULT_POLICY, single: Candidate | None = None
) -> Candidate:
    """The fewest nodes of ``gpu`` one replica of ``work`` fits across, when one node holds none.

    ``single``: :func:`candidate_for`'s answer (computed when not given); returned unchanged when the
    model fits one node in memory (whatever the SLO says) or ``tensorParallel`` names a degree one
    node cannot run. Otherwise: a candidate with ``nodes`` > 1 (engine vllm, a GPU type with an
    inter-node bandwidth), or ``single`` with the reason why no replica spans nodes."""
    single = single if single is not None else candidate_for(work, gpu, policy)
    base = single.reason.replace(_NOT_ACROSS_NODES, "")
    node_limit = gpu.max_gpus_per_node
    own = work.model.valid_shards(node_limit, work.kv_replication)
    if single.fits or any(_fit(work, gpu, n, policy)[0] for n in own):
        return single
    if work.tensor_parallel is not None and work.tensor_parallel not in own:
        return single
    if not supports_pipeline_parallel(work.engine):
        if any(_fit(work, gpu, n, policy)[0] for n in work.model.valid_shards(node_limit, kv_replication=True)):
            return single  # its reason already says vllm would fit one node
        return replace(
            single,
            reason=f"{base}; {work.engine} cannot run one replica across nodes (it shards a replica over "
            "one machine's GPUs only, no pipeline parallelism); engine vllm can",
        )
    if not gpu.internode_bytes_per_s > 0:
        return replace(
            single,
            reason=f"{base}; a replica across nodes needs the node network bandwidth "
            f"(catalog.gpuTypes.{gpu.name}.interNodeGbps)",
        )
    tp = work.tensor_parallel if work.tensor_parallel is not None else (own[-1] if own else 0)
    if not tp:
        return single
    top = min(policy.max_nodes_per_replica, work.model.layers)
    for nodes in range(2, top + 1):
        fits, weights, kv, usable, tokens = _fit_stages(work, gpu, tp, nodes, policy)
        if not fits:
            continue
        memory = (
            f"{_shape(tp, nodes, gpu)}: {_gb(weights)} weights + {_gb(kv)} KV + "
            f"{_gb(policy.overhead_bytes_per_gpu)} overhead <= {_gb(usable)} per GPU of the heaviest pipeline stage; "
            f"KV room for {tokens} tokens ({tokens / work.max_total_tokens:.1f} full-length sequences); "
            + LWS_NOTE.format(nodes=nodes, tp=tp)
        )
        cand = Candidate(
            gpu_type=gpu.name,
            fits=True,
            shards=tp,
            price_per_hour=nodes * tp * gpu.price_per_gpu_hour,
            throughput=pipeline_throughput(work, gpu, tp, nodes, policy),
            reason=memory,
            weights_per_gpu=weights,
            kv_per_gpu=kv,
            usable_per_gpu=usable,
            kv_tokens=tokens,
            rank_by=policy.rank_by,
            nodes=nodes,
        )
        return _with_slo(cand, work, gpu) if work.slo_seconds is not None else cand
    _, weights, kv, usable, _ = _fit_stages(work, gpu, tp, top, policy)
    return replace(
        single,
        reason=f"{base}; nor across up to {top} nodes: at {top} nodes x {tp}x {gpu.name} needs "
        f"{_gb(weights)} weights + {_gb(kv)} KV + {_gb(policy.overhead_bytes_per_gpu)} overhead > "
        f"{_gb(usable)} usable per GPU",
    )


def rank_key(c: Candidate) -> tuple[int, float, float, str]:
    """Fill order: cheapest per unit of capacity (:attr:`Candidate.rank_cost`), then per replica, then name.

    Ranked by ``"slo"``, a candidate without an SLO estimate (its ``rank_cost`` is $/h per decode
    token/s, another unit) comes after every candidate with one.
    """
    unestimated = int(c.rank_by == "slo" and c.slo_rate <= 0)
    return (unestimated, c.rank_cost, c.price_per_hour, c.gpu_type)

"""Qwen models the operator knows how to size and serve.

Architecture numbers come from each model's ``config.json`` on the Hugging Face Hub
(num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim, hidden_size,
intermediate_size, vocab_size, tie_word_embeddings, max_position_embeddings and, for the
mixture-of-experts models, num_experts, num_experts_per_tok, moe_intermediate_size);
parameter counts from the model cards ("Number of Parameters", "Non-Embedding", "activated").
Each entry names its config below. ``tests/unit/test_catalog_moe.py`` recomputes every
entry's total (and, for MoE, activated) parameters from these architecture numbers and
checks them against ``params`` and the card's figures, so a typo in either shows.

Mixture of experts (Qwen3-30B-A3B, Qwen3-235B-A22B, Qwen3-Coder): each layer's MLP is
``experts`` SwiGLU experts of ``moe_intermediate_size`` (3 matrices each, no bias) and a
router; a token goes through ``experts_per_token`` of them (Qwen3 MoE has no shared expert:
``shared_expert_intermediate_size`` is absent / 0 in its config). **Total** parameters
(:attr:`QwenModel.params`) are what sits in GPU memory (every expert is resident);
**active** parameters (:attr:`QwenModel.active_params`: attention + router + the top-k
experts + embeddings) are what one token's forward multiplies by. How many expert weights
a *batch* reads is :meth:`QwenModel.expected_experts_hit`.

Weight bytes per quantization: embeddings and the LM head stay bf16 in every scheme we
serve (TGI and vLLM keep them unquantized); every other weight costs
``BYTES_PER_PARAM[quant]``. That reproduces the design brief's table (Qwen3-14B:
29.5 GB bf16, 16.3 GB fp8). AWQ/GPTQ are 4-bit with group size 128 and an fp16 scale +
zero point per group: 0.5 + 4/128 bytes per parameter.

Runtime support (``quantizations``): TGI serves Qwen3 (dense and MoE) through its generic
transformers path, which rejects awq/gptq; Qwen2.5 has native kernels for all of them.
vLLM supports all four for both families.

Tensor parallelism and KV heads (:meth:`QwenModel.valid_shards`): a degree must divide the
attention heads. TGI's transformers path also divides the KV heads by the degree
(``num_key_value_heads // world_size``), so it needs ``kv_heads % degree == 0``; vLLM
replicates KV heads when the degree exceeds them (``QKVParallelLinear``: one KV head per
GPU, ``degree / kv_heads`` copies), so it also accepts ``degree % kv_heads == 0``. That is
what lets Qwen3-235B-A22B (4 KV heads) run on 8 GPUs under vLLM, not under TGI.

Pipeline stages (:meth:`QwenModel.stage_layers`, :meth:`QwenModel.stage_weight_bytes`): a replica
spanning nodes runs one pipeline stage per node (vLLM: tensor parallelism within a node, pipeline
parallelism across nodes). vLLM splits the decoder layers evenly over the stages (a remainder puts
one more layer on some stages; ``VLLM_PP_LAYER_PARTITION`` overrides it), the first stage also holds
the input embedding and the last one the final norm and the LM head. The heaviest stage is sized as
``ceil(layers / stages)`` layers plus one vocabulary matrix, an upper bound whichever stage it is.

``thinking``: the model has Qwen3's hybrid thinking mode (``enable_thinking`` in its chat
template). Qwen2.5 and the Qwen3-Coder instruct models have none.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .gpus import GB

BYTES_PER_PARAM: dict[str, float] = {
    "none": 2.0,  # bf16
    "fp8": 1.0,
    "awq": 0.5 + 4 / 128,
    "gptq": 0.5 + 4 / 128,
}

QUANTIZATIONS = tuple(BYTES_PER_PARAM)
ENGINES = ("tgi", "vllm")


@dataclass(frozen=True)
class QwenModel:
    """Architecture facts of one model (one catalog entry)."""

    name: str  # Hugging Face id, e.g. "Qwen/Qwen3-14B"
    family: str  # "qwen3" | "qwen2.5"
    layers: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    params: float  # total parameters (all experts of a MoE model)
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768
    quantizations: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {"tgi": QUANTIZATIONS, "vllm": QUANTIZATIONS}
    )
    intermediate_size: int = 0  # dense MLP width (0: not given; MoE models: unused by their layers)
    experts: int = 0  # routed experts per layer (0: a dense model)
    experts_per_token: int = 0  # experts each token goes through (num_experts_per_tok)
    moe_intermediate_size: int = 0  # width of one expert's SwiGLU MLP
    thinking: bool = False  # Qwen3 hybrid thinking mode (enable_thinking in the chat template)

    def __post_init__(self) -> None:
        if self.experts and not 0 < self.experts_per_token <= self.experts:
            raise ValueError(f"{self.name}: experts_per_token must be in 1..{self.experts}")
        if self.experts and self.moe_intermediate_size <= 0:
            raise ValueError(f"{self.name}: a mixture-of-experts model needs moe_intermediate_size")

    @property
    def embedding_params(self) -> float:
        """Parameters kept in bf16 whatever the quantization (embedding + LM head)."""
        per_matrix = self.vocab_size * self.hidden_size
        return per_matrix * (1 if self.tie_word_embeddings else 2)

    # --- mixture of experts ------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.experts > 0

    @property
    def expert_params(self) -> float:
        """Parameters of one expert: gate, up and down projections (3 x hidden x moe_intermediate)."""
        return 3.0 * self.hidden_size * self.moe_intermediate_size if self.is_moe else 0.0

    @property
    def routed_expert_params(self) -> float:
        """Every expert of every layer (0 for a dense model)."""
        return self.layers * self.experts * self.expert_params

    @property
    def active_params(self) -> float:
        """Parameters one token's forward uses: all but the experts the router did not pick
        (attention, router, the top-k experts, embeddings). Equal to ``params`` for a dense model."""
        return self.params - self.layers * (self.experts - self.experts_per_token) * self.expert_params

    def expected_experts_hit(self, tokens: float) -> float:
        """Distinct experts per layer a forward over ``tokens`` tokens reads (documented approximation).

        Each token picks ``k`` of ``E`` experts; if picks were uniform and independent, an expert
        escapes one token with probability ``1 - k/E`` and all ``B`` tokens with ``(1 - k/E)^B``,
        so ``E x (1 - (1 - k/E)^B)`` experts are read: ``k`` at B = 1, then towards all ``E``
        (Qwen3-30B-A3B: 8 of 128 at B = 1, ~52 at B = 8, ~126 at B = 64). Real routers are
        load-balanced in training (Qwen3 uses a global-batch balancing loss) but correlated within
        a sequence, so a real batch hits somewhat fewer experts than this: the figure is an upper
        estimate of the bytes a decode step reads. Dense models: 0.
        """
        if not self.is_moe or tokens <= 0:
            return 0.0
        miss = 1.0 - self.experts_per_token / self.experts
        return self.experts * (1.0 - float(miss ** max(1.0, tokens)))

    def weight_bytes(self, quantization: str = "none") -> float:
        """Bytes of weights for one full copy of the model (every expert resident)."""
        if quantization not in BYTES_PER_PARAM:
            raise ValueError(f"unknown quantization {quantization!r}; known: {', '.join(QUANTIZATIONS)}")
        dense = self.params - self.embedding_params
        return dense * BYTES_PER_PARAM[quantization] + self.embedding_params * 2.0

    def stage_layers(self, stages: int) -> int:
        """Decoder layers on the fullest of ``stages`` pipeline stages (``ceil(layers / stages)``)."""
        return -(-self.layers // max(1, stages))

    def stage_weight_bytes(self, quantization: str = "none", stages: int = 1) -> float:
        """Bytes of weights on the heaviest of ``stages`` pipeline stages (all its GPUs together): its
        share of the decoder layers plus one bf16 vocabulary matrix (the first stage's embedding or the
        last one's LM head; with tied embeddings the last stage keeps its own copy). One stage: the whole
        model (:meth:`weight_bytes`)."""
        whole = self.weight_bytes(quantization)  # validates the quantization name
        if stages <= 1:
            return whole
        body = (self.params - self.embedding_params) * BYTES_PER_PARAM[quantization]
        return body * self.stage_layers(stages) / self.layers + self.vocab_size * self.hidden_size * 2.0

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """KV cache per token: 2 (K and V) x layers x kv_heads x head_dim x dtype bytes."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes

    def kv_heads_per_shard(self, shards: int) -> int:
        """KV heads each GPU holds at tensor-parallel degree ``shards``: ``kv_heads / shards``, or one
        (replicated, vLLM) when the degree exceeds the KV heads."""
        return max(1, self.kv_heads // max(1, shards))

    def kv_bytes_per_token_per_shard(self, shards: int, dtype_bytes: int = 2) -> int:
        """KV cache bytes per token on each GPU of a ``shards``-way replica (replicated heads count in full)."""
        return 2 * self.layers * self.kv_heads_per_shard(shards) * self.head_dim * dtype_bytes

    def kv_bytes_per_token_per_stage_shard(self, shards: int, stages: int, dtype_bytes: int = 2) -> int:
        """KV cache bytes per token on each GPU of the fullest of ``stages`` pipeline stages, each
        ``shards``-way tensor parallel (a stage caches only its own layers' K and V)."""
        return 2 * self.stage_layers(stages) * self.kv_heads_per_shard(shards) * self.head_dim * dtype_bytes

    def valid_shards(self, max_shards: int = 8, kv_replication: bool = False) -> list[int]:
        """Tensor-parallel degrees that divide the attention heads and the KV heads, or, with
        ``kv_replication`` (vLLM), are a multiple of the KV heads (see the module docstring)."""

        def kv_ok(n: int) -> bool:
            return self.kv_heads % n == 0 or (kv_replication and n % self.kv_heads == 0)

        return [n for n in (1, 2, 4, 8, 16) if n <= max_shards and self.attention_heads % n == 0 and kv_ok(n)]

    def supports(self, engine: str, quantization: str) -> bool:
        return quantization in self.quantizations.get(engine, ())

    @property
    def short_name(self) -> str:
        return self.name.split("/")[-1]


_QWEN3_TGI = ("none", "fp8")
_QWEN3_QUANT = {"tgi": _QWEN3_TGI, "vllm": QUANTIZATIONS}

# Sources (config.json and model card of each, https://huggingface.co/<name>):
# - Qwen2.5-7B-Instruct / Qwen2.5-72B-Instruct: config.json (qkv bias, untied embeddings, vocab 152064).
# - Qwen3-0.6B / 1.7B / 4B / 8B / 14B / 32B: config.json; cards: 0.6B (0.44B non-embedding),
#   1.7B (1.4B), 4.0B (3.6B), 8.2B (6.95B), 14.8B (13.2B), 32.8B (31.2B); 0.6B-4B tie their
#   embeddings; max_position_embeddings 40960 (32,768 native context + 8,192 output).
# - Qwen3-30B-A3B: config.json (hidden 2048, 48 layers, 32 Q / 4 KV heads, head_dim 128,
#   num_experts 128, num_experts_per_tok 8, moe_intermediate_size 768); card: 30.5B total,
#   3.3B activated, 29.9B non-embedding.
# - Qwen3-235B-A22B: config.json (hidden 4096, 94 layers, 64 Q / 4 KV heads, 128 experts,
#   8 per token, moe_intermediate_size 1536); card: 235B total, 22B activated, 234B non-embedding.
# - Qwen3-Coder-30B-A3B-Instruct: config.json (the Qwen3-30B-A3B architecture, max_position_embeddings
#   262144); card: 30.5B total, 3.3B activated, non-thinking mode only.
# - Qwen3-Coder-480B-A35B-Instruct: config.json (hidden 6144, 62 layers, 96 Q / 8 KV heads,
#   160 experts, 8 per token, moe_intermediate_size 2560, max_position_embeddings 262144);
#   card: 480B total, 35B activated, non-thinking mode only.
# ``params`` of the Qwen3 entries added with the MoE models is the count those configs give
# (the card's rounded figure to three digits); tests/unit/test_catalog_moe.py recomputes it.


def _qwen3_dense(size: str, layers: int, heads: int, hidden: int, inter: int, params: float, tie: bool) -> QwenModel:
    return QwenModel(
        name=f"Qwen/Qwen3-{size}",
        family="qwen3",
        layers=layers,
        attention_heads=heads,
        kv_heads=8,
        head_dim=128,
        hidden_size=hidden,
        vocab_size=151936,
        params=params,
        tie_word_embeddings=tie,
        max_position_embeddings=40960,
        quantizations=dict(_QWEN3_QUANT),
        intermediate_size=inter,
        thinking=True,
    )


def _qwen3_moe(
    name: str,
    layers: int,
    heads: int,
    kv: int,
    hidden: int,
    experts: int,
    expert_width: int,
    params: float,
    context: int,
    thinking: bool,
) -> QwenModel:
    return QwenModel(
        name=name,
        family="qwen3",
        layers=layers,
        attention_heads=heads,
        kv_heads=kv,
        head_dim=128,
        hidden_size=hidden,
        vocab_size=151936,
        params=params,
        max_position_embeddings=context,
        quantizations=dict(_QWEN3_QUANT),
        experts=experts,
        experts_per_token=8,
        moe_intermediate_size=expert_width,
        thinking=thinking,
    )


DEFAULT_MODELS: dict[str, QwenModel] = {
    m.name: m
    for m in (
        QwenModel(
            name="Qwen/Qwen2.5-7B-Instruct",
            family="qwen2.5",
            layers=28,
            attention_heads=28,
            kv_heads=4,
            head_dim=128,
            hidden_size=3584,
            vocab_size=152064,
            params=7.62e9,
            intermediate_size=18944,
        ),
        _qwen3_dense("0.6B", 28, 16, 1024, 3072, 0.596e9, tie=True),
        _qwen3_dense("1.7B", 28, 16, 2048, 6144, 1.72e9, tie=True),
        _qwen3_dense("4B", 36, 32, 2560, 9728, 4.02e9, tie=True),
        _qwen3_dense("8B", 36, 32, 4096, 12288, 8.19e9, tie=False),
        _qwen3_dense("14B", 40, 40, 5120, 17408, 14.77e9, tie=False),
        _qwen3_dense("32B", 64, 64, 5120, 25600, 32.76e9, tie=False),
        _qwen3_moe("Qwen/Qwen3-30B-A3B", 48, 32, 4, 2048, 128, 768, 30.53e9, 40960, thinking=True),
        _qwen3_moe("Qwen/Qwen3-235B-A22B", 94, 64, 4, 4096, 128, 1536, 235.09e9, 40960, thinking=True),
        _qwen3_moe("Qwen/Qwen3-Coder-30B-A3B-Instruct", 48, 32, 4, 2048, 128, 768, 30.53e9, 262144, thinking=False),
        _qwen3_moe("Qwen/Qwen3-Coder-480B-A35B-Instruct", 62, 96, 8, 6144, 160, 2560, 480.16e9, 262144, thinking=False),
        QwenModel(
            name="Qwen/Qwen2.5-72B-Instruct",
            family="qwen2.5",
            layers=80,
            attention_heads=64,
            kv_heads=8,
            head_dim=128,
            hidden_size=8192,
            vocab_size=152064,
            params=72.71e9,
            intermediate_size=29568,
        ),
    )
}

#: Short spellings accepted wherever a model name is (``Qwen3-14B``, ``qwen2.5-7b``).
MODEL_ALIASES: dict[str, str] = {
    "qwen2.5-7b": "Qwen/Qwen2.5-7B-Instruct",
    "qwen/qwen2.5-7b": "Qwen/Qwen2.5-7B-Instruct",
    "qwen2.5-72b": "Qwen/Qwen2.5-72B-Instruct",
    "qwen/qwen2.5-72b": "Qwen/Qwen2.5-72B-Instruct",
    "qwen3-coder-30b-a3b": "Qwen/Qwen3-Coder-30B-A3B-Instruct",
    "qwen/qwen3-coder-30b-a3b": "Qwen/Qwen3-Coder-30B-A3B-Instruct",
    "qwen3-coder-480b-a35b": "Qwen/Qwen3-Coder-480B-A35B-Instruct",
    "qwen/qwen3-coder-480b-a35b": "Qwen/Qwen3-Coder-480B-A35B-Instruct",
}


def resolve_model_name(name: str, known: dict[str, QwenModel] | None = None) -> str:
    """Map ``Qwen3-14B`` / ``qwen/qwen3-14b`` / an alias to the catalog key, or raise KeyError."""
    models = known if known is not None else DEFAULT_MODELS
    if name in models:
        return name
    lowered = name.lower()
    for key in models:
        if key.lower() == lowered or key.split("/")[-1].lower() == lowered:
            return key
    if lowered in MODEL_ALIASES and MODEL_ALIASES[lowered] in models:
        return MODEL_ALIASES[lowered]
    raise KeyError(name)


def gb(nbytes: float) -> float:
    return nbytes / GB

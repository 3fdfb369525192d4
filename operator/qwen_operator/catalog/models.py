"""Qwen models the operator knows how to size and serve.

Architecture numbers come from each model's ``config.json`` on the Hugging Face Hub
(num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim, hidden_size,
vocab_size, tie_word_embeddings); parameter counts from the model cards.

Weight bytes per quantization: embeddings and the LM head stay bf16 in every scheme we
serve (TGI and vLLM keep them unquantized); every other weight costs
``BYTES_PER_PARAM[quant]``. That reproduces the design brief's table (Qwen3-14B:
29.5 GB bf16, 16.3 GB fp8). AWQ/GPTQ are 4-bit with group size 128 and an fp16 scale +
zero point per group: 0.5 + 4/128 bytes per parameter.

Runtime support (``quantizations``): TGI serves Qwen3 through its generic transformers
path, which rejects awq/gptq; Qwen2.5 has native kernels for all of them. vLLM supports
all four for both families.
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
    params: float  # total parameters
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768
    quantizations: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {"tgi": QUANTIZATIONS, "vllm": QUANTIZATIONS}
    )

    @property
    def embedding_params(self) -> float:
        """Parameters kept in bf16 whatever the quantization (embedding + LM head)."""
        per_matrix = self.vocab_size * self.hidden_size
        return per_matrix * (1 if self.tie_word_embeddings else 2)

    def weight_bytes(self, quantization: str = "none") -> float:
        """Bytes of weights for one full copy of the model."""
        if quantization not in BYTES_PER_PARAM:
            raise ValueError(f"unknown quantization {quantization!r}; known: {', '.join(QUANTIZATIONS)}")
        dense = self.params - self.embedding_params
        return dense * BYTES_PER_PARAM[quantization] + self.embedding_params * 2.0

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """KV cache per token: 2 (K and V) x layers x kv_heads x head_dim x dtype bytes."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes

    def valid_shards(self, max_shards: int = 8) -> list[int]:
        """Tensor-parallel degrees that divide both attention and KV heads."""
        return [
            n for n in (1, 2, 4, 8, 16) if n <= max_shards and self.attention_heads % n == 0 and self.kv_heads % n == 0
        ]

    def supports(self, engine: str, quantization: str) -> bool:
        return quantization in self.quantizations.get(engine, ())

    @property
    def short_name(self) -> str:
        return self.name.split("/")[-1]


_QWEN3_TGI = ("none", "fp8")

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
        ),
        QwenModel(
            name="Qwen/Qwen3-8B",
            family="qwen3",
            layers=36,
            attention_heads=32,
            kv_heads=8,
            head_dim=128,
            hidden_size=4096,
            vocab_size=151936,
            params=8.19e9,
            max_position_embeddings=40960,
            quantizations={"tgi": _QWEN3_TGI, "vllm": QUANTIZATIONS},
        ),
        QwenModel(
            name="Qwen/Qwen3-14B",
            family="qwen3",
            layers=40,
            attention_heads=40,
            kv_heads=8,
            head_dim=128,
            hidden_size=5120,
            vocab_size=151936,
            params=14.77e9,
            max_position_embeddings=40960,
            quantizations={"tgi": _QWEN3_TGI, "vllm": QUANTIZATIONS},
        ),
        QwenModel(
            name="Qwen/Qwen3-32B",
            family="qwen3",
            layers=64,
            attention_heads=64,
            kv_heads=8,
            head_dim=128,
            hidden_size=5120,
            vocab_size=151936,
            params=32.76e9,
            max_position_embeddings=40960,
            quantizations={"tgi": _QWEN3_TGI, "vllm": QUANTIZATIONS},
        ),
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
        ),
    )
}

#: Short spellings accepted wherever a model name is (``Qwen3-14B``, ``qwen2.5-7b``).
MODEL_ALIASES: dict[str, str] = {
    "qwen2.5-7b": "Qwen/Qwen2.5-7B-Instruct",
    "qwen/qwen2.5-7b": "Qwen/Qwen2.5-7B-Instruct",
    "qwen2.5-72b": "Qwen/Qwen2.5-72B-Instruct",
    "qwen/qwen2.5-72b": "Qwen/Qwen2.5-72B-Instruct",
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

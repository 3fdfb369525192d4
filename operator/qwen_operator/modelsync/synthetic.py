"""Synthetic Qwen3-shaped checkpoints and realistic updates of them (tests and bench).

Layer-diff sync is only as good as its behaviour on real update patterns, so tests and
``bench/modelsync_bench.py`` need checkpoints with Qwen3's real tensor names, shapes
(scaled down) and shard layout, plus the updates people actually ship: config-only,
last layers fine-tuned, a LoRA merged into q/v, new tokens, full fine-tune. Tensor bytes
are pseudo-random from a seed per tensor *and* revision, so a tensor that an update does
not touch keeps identical bytes -- exactly what happens in a real fine-tune.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

from qwen_operator.modelsync import safetensors_io


@dataclass(frozen=True)
class Shape:
    """Qwen3 architecture numbers (defaults: Qwen3-14B divided down by ``scale``)."""

    layers: int = 40
    hidden: int = 5120
    intermediate: int = 17408
    heads: int = 40
    kv_heads: int = 8
    head_dim: int = 128
    vocab: int = 151936
    shards: int = 4

    def scaled(self, width: float, layers: int | None = None, vocab: int | None = None) -> Shape:
        def w(x: int, q: int = 64) -> int:
            return max(q, int(x * width) // q * q)

        return replace(
            self,
            layers=layers or self.layers,
            hidden=w(self.hidden),
            intermediate=w(self.intermediate),
            heads=max(1, int(self.heads * width)),
            kv_heads=max(1, int(self.kv_heads * width)) if width < 1 else self.kv_heads,
            vocab=vocab or w(self.vocab),
        )


@dataclass
class Checkpoint:
    """Tensor specs plus a revision per tensor; ``write`` materialises it."""

    shape: Shape
    revisions: dict[str, int] = field(default_factory=dict)
    extra_vocab: int = 0
    config_revision: int = 0

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        s = self.shape
        vocab = s.vocab + self.extra_vocab
        out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (vocab, s.hidden))]
        for i in range(s.layers):
            p = f"model.layers.{i}."
            q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
            out += [
                (p + "input_layernorm.weight", (s.hidden,)),
                (p + "mlp.down_proj.weight", (s.hidden, s.intermediate)),
                (p + "mlp.gate_proj.weight", (s.intermediate, s.hidden)),
                (p + "mlp.up_proj.weight", (s.intermediate, s.hidden)),
                (p + "post_attention_layernorm.weight", (s.hidden,)),
                (p + "self_attn.k_norm.weight", (s.head_dim,)),
                (p + "self_attn.k_proj.weight", (kv, s.hidden)),
                (p + "self_attn.o_proj.weight", (s.hidden, q)),
                (p + "self_attn.q_norm.weight", (s.head_dim,)),
                (p + "self_attn.q_proj.weight", (q, s.hidden)),
                (p + "self_attn.v_proj.weight", (kv, s.hidden)),
            ]
        out += [("model.norm.weight", (s.hidden,)), ("lm_head.weight", (vocab, s.hidden))]
        return out

    def tensor_bytes(self, name: str, shape: tuple[int, ...]) -> bytes:
        n = 2
        for d in shape:
            n *= d
        rev = self.revisions.get(name, 0)
        if name in {"model.embed_tokens.weight", "lm_head.weight"} and self.extra_vocab:
            # New tokens append rows: the old rows keep their bytes.
            old = n * self.shape.vocab // (self.shape.vocab + self.extra_vocab)
            return _random(f"{name}/{rev}", old) + _random(f"{name}/new/{self.extra_vocab}", n - old)
        return _random(f"{name}/{rev}", n)

    def write(self, root: Path) -> list[Path]:
        root.mkdir(parents=True, exist_ok=True)
        tensors = self.tensors()
        layer_of = {name: int(name.split(".")[2]) if name.startswith("model.layers.") else -1 for name, _ in tensors}
        shards: list[list[tuple[str, tuple[int, ...]]]] = [[] for _ in range(self.shape.shards)]
        per = max(1, -(-self.shape.layers // self.shape.shards))
        for name, shape in tensors:
            layer = layer_of[name]
            idx = 0 if layer < 0 and "embed" in name else (self.shape.shards - 1 if layer < 0 else layer // per)
            shards[min(idx, self.shape.shards - 1)].append((name, shape))
        paths, weight_map = [], {}
        total = len(shards)
        for i, group in enumerate(shards, start=1):
            fname = f"model-{i:05d}-of-{total:05d}.safetensors"
            group.sort()
            data = [(n, "BF16", s, self.tensor_bytes(n, s)) for n, s in group]
            safetensors_io.write(root / fname, data)
            paths.append(root / fname)
            weight_map.update({n: fname for n, _ in group})
        index = {"metadata": {"total_size": sum(p.stat().st_size for p in paths)}, "weight_map": weight_map}
        (root / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
        s = self.shape
        config = {
            "architectures": ["Qwen3ForCausalLM"],
            "model_type": "qwen3",
            "hidden_size": s.hidden,
            "intermediate_size": s.intermediate,
            "num_hidden_layers": s.layers,
            "num_attention_heads": s.heads,
            "num_key_value_heads": s.kv_heads,
            "head_dim": s.head_dim,
            "vocab_size": s.vocab + self.extra_vocab,
            "torch_dtype": "bfloat16",
            "max_position_embeddings": 40960,
            "rope_theta": 1000000,
            "revision": self.config_revision,
        }
        (root / "config.json").write_text(json.dumps(config, indent=2))
        (root / "generation_config.json").write_text(json.dumps({"temperature": 0.6, "top_p": 0.95}))
        (root / "tokenizer.json").write_text(_tokenizer(s.vocab + self.extra_vocab, self.config_revision))
        return paths

    # --- the updates the bench measures -----------------------------------------------

    def bump(self, names: list[str]) -> Checkpoint:
        revs = dict(self.revisions)
        for n in names:
            revs[n] = revs.get(n, 0) + 1
        return replace(self, revisions=revs)

    def config_only(self) -> Checkpoint:
        return replace(self, config_revision=self.config_revision + 1)

    def last_layers(self, k: int = 4) -> Checkpoint:
        first = self.shape.layers - k
        return self.bump(
            [n for n, _ in self.tensors() if n.startswith("model.layers.") and int(n.split(".")[2]) >= first]
        )

    def lora_qv(self) -> Checkpoint:
        return self.bump([n for n, _ in self.tensors() if n.endswith(("q_proj.weight", "v_proj.weight"))])

    def new_tokens(self, n: int = 64) -> Checkpoint:
        return replace(self, extra_vocab=self.extra_vocab + n, config_revision=self.config_revision + 1)

    def full(self) -> Checkpoint:
        return self.bump([n for n, _ in self.tensors()])


def _random(seed: str, n: int) -> bytes:
    rng = random.Random(hashlib.sha256(seed.encode()).digest())
    return rng.randbytes(n)


def _tokenizer(vocab: int, revision: int) -> str:
    # A tokenizer.json-like document of realistic size: one entry per token.
    rng = random.Random(7)
    tokens = {f"tok{i}_{rng.getrandbits(24):06x}": i for i in range(vocab)}
    added = [{"id": vocab - 1 - i, "content": f"<|extra_{i}|>", "special": True} for i in range(min(revision, 8))]
    return json.dumps({"version": "1.0", "added_tokens": added, "model": {"type": "BPE", "vocab": tokens}})

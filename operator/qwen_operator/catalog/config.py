"""Catalog overrides from the operator config (a ConfigMap), merged over the defaults.

Cluster operators add GPU types, change prices and add models without a code change::

    catalog:
      prices: {A10G: 0.75}                 # $/GPU-hour
      gpuTypes:
        H100-80GB: {productLabel: NVIDIA-H100-80GB-HBM3, memoryGB: 80,
                    bandwidthGBps: 3350, bf16TFLOPS: 989, pricePerGPUHour: 6.9,
                    fp8Native: true, interconnect: nvlink,
                    interNodeGbps: 3200}     # node network, Gbit/s: replicas spanning nodes
      # (an existing type's field alone also works: A100-40GB: {interNodeGbps: 200})
      models:
        Qwen/Qwen3-4B: {family: qwen3, layers: 36, attentionHeads: 32, kvHeads: 8,
                        headDim: 128, hiddenSize: 2560, vocabSize: 151936, params: 4.02e9,
                        tieWordEmbeddings: true, quantizations: {tgi: [none, fp8]}}
        Qwen/Qwen3-30B-A3B: {experts: 128, expertsPerToken: 8, moeIntermediateSize: 768}  # MoE keys
    gpuProductLabels:                      # further nvidia.com/gpu.product values per GPU type
      A100-80GB: [NVIDIA-A100-80GB-PCIe]   # (the built-in catalog already has the A100 PCIe labels)

Pure: takes the parsed YAML, returns a :class:`Catalog`. Errors name the offending key.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from .gpus import DEFAULT_GPUS, GB, GBPS, GPUType
from .models import DEFAULT_MODELS, ENGINES, QUANTIZATIONS, QwenModel


class CatalogError(ValueError):
    """An override in the operator config is invalid; the message names the key."""


@dataclass(frozen=True)
class Catalog:
    gpus: dict[str, GPUType] = field(default_factory=lambda: dict(DEFAULT_GPUS))
    models: dict[str, QwenModel] = field(default_factory=lambda: dict(DEFAULT_MODELS))


def _num(where: str, value: Any, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CatalogError(f"{where}: expected a number, got {value!r}")
    if positive and value <= 0:
        raise CatalogError(f"{where}: must be > 0, got {value!r}")
    return float(value)


def _gpu(name: str, raw: dict[str, Any], base: GPUType | None) -> GPUType:
    where = f"catalog.gpuTypes.{name}"
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: expected a mapping")
    known = {
        "productLabel",
        "memoryGB",
        "bandwidthGBps",
        "bf16TFLOPS",
        "pricePerGPUHour",
        "maxGPUsPerNode",
        "fp8Native",
        "interconnect",
        "interNodeGbps",
    }
    unknown = set(raw) - known
    if unknown:
        raise CatalogError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    if base is None:
        missing = {"productLabel", "memoryGB", "bandwidthGBps", "bf16TFLOPS", "pricePerGPUHour"} - set(raw)
        if missing:
            raise CatalogError(f"{where}: a new GPU type needs {sorted(missing)}")
        base = GPUType(
            name=name,
            product_label="",
            memory_bytes=0,
            bandwidth_bytes_per_s=0.0,
            bf16_flops=0.0,
            price_per_gpu_hour=0.0,
        )
    g = base
    if "productLabel" in raw:
        g = replace(g, product_label=str(raw["productLabel"]))
    if "memoryGB" in raw:
        g = replace(g, memory_bytes=int(_num(f"{where}.memoryGB", raw["memoryGB"]) * GB))
    if "bandwidthGBps" in raw:
        g = replace(g, bandwidth_bytes_per_s=_num(f"{where}.bandwidthGBps", raw["bandwidthGBps"]) * GB)
    if "bf16TFLOPS" in raw:
        g = replace(g, bf16_flops=_num(f"{where}.bf16TFLOPS", raw["bf16TFLOPS"]) * 1e12)
    if "pricePerGPUHour" in raw:
        g = replace(g, price_per_gpu_hour=_num(f"{where}.pricePerGPUHour", raw["pricePerGPUHour"], positive=False))
    if "maxGPUsPerNode" in raw:
        g = replace(g, max_gpus_per_node=int(_num(f"{where}.maxGPUsPerNode", raw["maxGPUsPerNode"])))
    if "fp8Native" in raw:
        g = replace(g, fp8_native=bool(raw["fp8Native"]))
    if "interconnect" in raw:
        if raw["interconnect"] not in ("pcie", "nvlink"):
            raise CatalogError(f"{where}.interconnect: expected pcie or nvlink, got {raw['interconnect']!r}")
        g = replace(g, interconnect=raw["interconnect"])
    if "interNodeGbps" in raw:
        g = replace(g, internode_bytes_per_s=_num(f"{where}.interNodeGbps", raw["interNodeGbps"]) * GBPS)
    return g


_MODEL_KEYS = {
    "family": ("family", str),
    "layers": ("layers", int),
    "attentionHeads": ("attention_heads", int),
    "kvHeads": ("kv_heads", int),
    "headDim": ("head_dim", int),
    "hiddenSize": ("hidden_size", int),
    "vocabSize": ("vocab_size", int),
    "params": ("params", float),
    "tieWordEmbeddings": ("tie_word_embeddings", bool),
    "maxPositionEmbeddings": ("max_position_embeddings", int),
    "intermediateSize": ("intermediate_size", int),
    "experts": ("experts", int),
    "expertsPerToken": ("experts_per_token", int),
    "moeIntermediateSize": ("moe_intermediate_size", int),
    "thinking": ("thinking", bool),
}


def _model(name: str, raw: dict[str, Any], base: QwenModel | None) -> QwenModel:
    where = f"catalog.models.{name}"
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: expected a mapping")
    unknown = set(raw) - set(_MODEL_KEYS) - {"quantizations"}
    if unknown:
        raise CatalogError(f"{where}: unknown keys {sorted(unknown)}")
    values: dict[str, Any] = {}
    for key, (attr, typ) in _MODEL_KEYS.items():
        if key in raw:
            v = raw[key]
            if typ in (int, float):
                v = typ(_num(f"{where}.{key}", v))
            values[attr] = typ(v)
    if "quantizations" in raw:
        q = raw["quantizations"]
        if not isinstance(q, dict):
            raise CatalogError(f"{where}.quantizations: expected a mapping engine -> list")
        for engine, lst in q.items():
            if engine not in ENGINES:
                raise CatalogError(f"{where}.quantizations.{engine}: unknown engine; known: {', '.join(ENGINES)}")
            bad = [x for x in lst if x not in QUANTIZATIONS]
            if bad:
                raise CatalogError(f"{where}.quantizations.{engine}: unknown {bad}; known: {', '.join(QUANTIZATIONS)}")
        merged = dict(base.quantizations) if base else {"tgi": QUANTIZATIONS, "vllm": QUANTIZATIONS}
        merged.update({k: tuple(v) for k, v in q.items()})
        values["quantizations"] = merged
    if base is not None:
        try:
            return replace(base, **values)
        except ValueError as exc:
            raise CatalogError(f"{where}: {exc}") from None
    required = {"family", "layers", "attentionHeads", "kvHeads", "headDim", "hiddenSize", "vocabSize", "params"}
    missing = required - set(raw)
    if missing:
        raise CatalogError(f"{where}: a new model needs {sorted(missing)}")
    try:
        return QwenModel(name=name, **values)
    except ValueError as exc:
        raise CatalogError(f"{where}: {exc}") from None


def load_catalog(config: dict[str, Any] | None) -> Catalog:
    """Merge the ``catalog`` section (and the top-level ``gpuProductLabels``) of the operator config over the
    defaults."""
    cat = Catalog()
    if not config:
        return cat
    section = config.get("catalog", config)
    if not isinstance(section, dict):
        raise CatalogError("catalog: expected a mapping")
    gpus = dict(cat.gpus)
    for name, raw in (section.get("gpuTypes") or {}).items():
        gpus[name] = _gpu(name, raw, gpus.get(name))
    for name, price in (section.get("prices") or {}).items():
        if name not in gpus:
            raise CatalogError(f"catalog.prices.{name}: unknown GPU type; known: {', '.join(sorted(gpus))}")
        gpus[name] = gpus[name].with_price(_num(f"catalog.prices.{name}", price, positive=False))
    models = dict(cat.models)
    for name, raw in (section.get("models") or {}).items():
        models[name] = _model(name, raw, models.get(name))
    return Catalog(gpus=_with_product_labels(gpus, config.get("gpuProductLabels")), models=models)


def _with_product_labels(gpus: dict[str, GPUType], aliases: Any) -> dict[str, GPUType]:
    """Operator config ``gpuProductLabels``: further ``nvidia.com/gpu.product`` values per GPU type, so nodes
    labelled e.g. ``NVIDIA-A100-80GB-PCIe`` count as ``A100-80GB`` in the inventory and are selected by its
    pools. A label may belong to one GPU type only (a node is one type)."""
    out = dict(gpus)
    for name, labels in (aliases or {}).items():
        where = f"gpuProductLabels.{name}"
        if name not in out:
            raise CatalogError(f"{where}: unknown GPU type; known: {', '.join(sorted(out))}")
        if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
            raise CatalogError(f"{where}: expected a list of nvidia.com/gpu.product values")
        gpu = out[name]
        out[name] = replace(gpu, extra_product_labels=tuple(dict.fromkeys([*gpu.extra_product_labels, *labels])))
    owner: dict[str, str] = {}
    for gpu in out.values():
        for label in gpu.product_labels:
            if label in owner:
                raise CatalogError(
                    f"gpuProductLabels: {label} would mean both {owner[label]} and {gpu.name}; a product label"
                    " names one GPU type"
                )
            owner[label] = gpu.name
    return out

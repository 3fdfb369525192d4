"""Semantic checks admission cannot do: they need the (configurable) catalog.

The CRD schema and CEL rules reject malformed resources at admission. Whether the model
is in the catalog, whether the engine supports its quantization, whether a GPU type is
known and whether a fixed tensor-parallel degree divides the model's heads depend on the
operator's catalog, which the cluster operator can change in a ConfigMap. The controller
turns each :class:`Problem` into a ``Degraded`` condition; ``qwenctl plan`` prints them.
"""

from __future__ import annotations

from typing import NamedTuple

from ..catalog import Catalog, resolve_gpu_name, resolve_model_name
from .spec import QwenDeploymentSpec


class Problem(NamedTuple):
    """One reason the spec cannot be served as written."""

    field: str  # path under the resource, e.g. "spec.model.name"
    message: str  # a sentence naming the value and what would be accepted
    reason: str  # CamelCase condition reason, e.g. "ModelNotInCatalog"


def validate_spec(spec: QwenDeploymentSpec, catalog: Catalog) -> list[Problem]:
    """Every catalog-level problem with ``spec``; empty when it can be planned."""
    problems: list[Problem] = []
    for i, name in enumerate(spec.placement.gpu_types):
        try:
            resolve_gpu_name(name, catalog.gpus)
        except KeyError:
            problems.append(
                Problem(
                    f"spec.placement.gpuTypes[{i}]",
                    f"GPU type {name!r} is not in the catalog; known: {', '.join(sorted(catalog.gpus))}",
                    "UnknownGPUType",
                )
            )
    try:
        model = catalog.models[resolve_model_name(spec.model.name, catalog.models)]
    except KeyError:
        problems.append(
            Problem(
                "spec.model.name",
                f"model {spec.model.name!r} is not in the catalog; known: {', '.join(sorted(catalog.models))}"
                " (cluster operators can add models in the operator config)",
                "ModelNotInCatalog",
            )
        )
        return problems

    engine, quant = spec.runtime.engine, spec.model.quantization
    if not model.supports(engine, quant):
        allowed = ", ".join(model.quantizations.get(engine, ())) or "none"
        problems.append(
            Problem(
                "spec.model.quantization",
                f"{engine} does not support quantization {quant!r} for {model.name}; supported: {allowed}",
                "UnsupportedQuantization",
            )
        )
    tp = spec.placement.tensor_parallel
    replicate_kv = spec.runtime.engine == "vllm"  # vLLM replicates KV heads beyond their count; TGI cannot
    if isinstance(tp, int) and tp not in model.valid_shards(max_shards=64, kv_replication=replicate_kv):
        valid = ", ".join(map(str, model.valid_shards(kv_replication=replicate_kv)))
        problems.append(
            Problem(
                "spec.placement.tensorParallel",
                f"tensorParallel {tp} does not divide {model.name}'s {model.attention_heads} attention heads"
                f" and {model.kv_heads} KV heads ({spec.runtime.engine}); valid: {valid}",
                "InvalidTensorParallel",
            )
        )
    if spec.runtime.max_total_tokens > model.max_position_embeddings:
        problems.append(
            Problem(
                "spec.runtime.maxTotalTokens",
                f"maxTotalTokens {spec.runtime.max_total_tokens} exceeds {model.name}'s context window of"
                f" {model.max_position_embeddings} tokens",
                "ContextTooLong",
            )
        )
    return problems

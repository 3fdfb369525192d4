"""Tensor-parallel admission depends on the engine: vLLM replicates KV heads beyond their count, TGI cannot."""

from __future__ import annotations

from qwen_operator.api import QwenDeploymentSpec, validate_spec
from qwen_operator.catalog import load_catalog

CATALOG = load_catalog(None)


def _problems(engine: str, tp: int) -> dict[str, str]:
    spec = QwenDeploymentSpec.model_validate(
        {
            "model": {"name": "Qwen/Qwen3-235B-A22B", "registry": "s3://models/q235"},
            "runtime": {"engine": engine},
            "placement": {"gpuTypes": ["A100-80GB"], "tensorParallel": tp},
        }
    )
    return {p.field: p.message for p in validate_spec(spec, CATALOG)}


def test_vllm_may_shard_a_4_kv_head_model_8_ways_and_tgi_may_not() -> None:
    assert "spec.placement.tensorParallel" not in _problems("vllm", 8)
    tgi = _problems("tgi", 8)
    assert "spec.placement.tensorParallel" in tgi and "(tgi)" in tgi["spec.placement.tensorParallel"]
    assert "spec.placement.tensorParallel" not in _problems("tgi", 4)

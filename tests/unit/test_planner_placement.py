"""Placement tables: tensor-parallel degree per GPU type, memory fit, cost and throughput."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from qwen_operator.api import QwenDeploymentSpec
from qwen_operator.catalog import DEFAULT_GPUS, DEFAULT_MODELS, GB, Catalog
from qwen_operator.planner import (
    MODEL_NOT_IN_CATALOG,
    NO_GPU_TYPE_FITS,
    OK,
    PlacementPolicy,
    Workload,
    candidate_for,
    plan,
)

ALL_GPUS = ["A10G", "L40S", "A100-40GB", "A100-80GB"]


def spec(model: str, quant: str = "none", gpus: list[str] | None = None, **runtime: Any) -> QwenDeploymentSpec:
    return QwenDeploymentSpec.model_validate(
        {
            "model": {"name": model, "registry": "s3://m/x", "quantization": quant},
            "placement": {"gpuTypes": gpus or ALL_GPUS},
            "runtime": runtime,
        }
    )


def shards(s: QwenDeploymentSpec, catalog: Catalog | None = None) -> dict[str, int]:
    p = plan(s, catalog or Catalog(), replicas=1)
    return {c.gpu_type: c.shards for c in p.candidates}


@pytest.mark.parametrize(
    ("model", "quant", "want"),
    [
        ("Qwen/Qwen3-14B", "none", {"A10G": 2, "L40S": 1, "A100-80GB": 1, "A100-40GB": 1}),
        ("Qwen/Qwen3-14B", "fp8", {"A10G": 1, "L40S": 1, "A100-80GB": 1, "A100-40GB": 1}),
        ("Qwen/Qwen3-32B", "none", {"A10G": 4, "L40S": 2, "A100-80GB": 1, "A100-40GB": 4}),
        ("Qwen/Qwen3-32B", "fp8", {"A10G": 2, "L40S": 1, "A100-80GB": 1, "A100-40GB": 2}),  # 40.6 GB > 36
        ("Qwen/Qwen2.5-7B-Instruct", "none", {"A10G": 1, "L40S": 1, "A100-80GB": 1, "A100-40GB": 1}),
        ("Qwen/Qwen2.5-72B-Instruct", "none", {"A10G": 8, "L40S": 4, "A100-80GB": 4, "A100-40GB": 8}),
        ("Qwen/Qwen2.5-72B-Instruct", "fp8", {"A10G": 8, "L40S": 2, "A100-80GB": 2, "A100-40GB": 4}),  # 4x: 22.1 GB
    ],
)
def test_smallest_fitting_degree(model: str, quant: str, want: dict[str, int]) -> None:
    assert shards(spec(model, quant)) == want


def test_qwen25_72b_bf16_needs_at_least_four_a100_80gb() -> None:
    s = spec("Qwen/Qwen2.5-72B-Instruct", gpus=["A100-80GB"])
    c = plan(s, Catalog(), replicas=1).candidates[0]
    assert c.fits and c.shards >= 4 and c.gpus_per_replica == 4
    assert c.price_per_hour == pytest.approx(4 * DEFAULT_GPUS["A100-80GB"].price_per_gpu_hour)


def test_qwen25_7b_never_uses_eight_shards() -> None:
    model = DEFAULT_MODELS["Qwen/Qwen2.5-7B-Instruct"]
    assert 8 not in model.valid_shards()
    forced = candidate_for(Workload(model, tensor_parallel=8), DEFAULT_GPUS["A10G"])
    assert not forced.fits and forced.shards == 0
    assert "4 KV heads" in forced.reason
    # even a workload that needs more than 4 shards stops at 4
    huge = Workload(model, max_total_tokens=2_000_000)  # 115 GB of KV
    c = candidate_for(huge, DEFAULT_GPUS["A10G"])
    assert not c.fits and "largest valid degree on one node: 4" in c.reason


def test_fixed_tensor_parallel_is_validated() -> None:
    model = DEFAULT_MODELS["Qwen/Qwen3-14B"]
    assert candidate_for(Workload(model, tensor_parallel=4), DEFAULT_GPUS["L40S"]).shards == 4
    too_small = candidate_for(Workload(model, tensor_parallel=1), DEFAULT_GPUS["A10G"])
    assert not too_small.fits and "does not fit" in too_small.reason
    four_per_node = replace(DEFAULT_GPUS["A10G"], max_gpus_per_node=4)
    over_node = candidate_for(Workload(model, tensor_parallel=8), four_per_node)
    assert not over_node.fits and "exceeds 4 GPUs per node" in over_node.reason


def test_model_too_big_for_any_allowed_type_gives_a_plan_with_reason() -> None:
    small_nodes = Catalog(
        gpus={**DEFAULT_GPUS, "A10G": replace(DEFAULT_GPUS["A10G"], max_gpus_per_node=4)},
        models=dict(DEFAULT_MODELS),
    )
    p = plan(spec("Qwen/Qwen2.5-72B-Instruct", gpus=["A10G"]), small_nodes, replicas=2)
    assert p.reason_code == NO_GPU_TYPE_FITS and not p.ok
    assert p.pools == () and p.unplaced == 2
    assert "fits no allowed GPU type" in p.reason and "A10G" in p.reason and "145.4 GB" in p.reason


def test_long_context_changes_the_degree() -> None:
    short = spec("Qwen/Qwen3-14B", "fp8", ["A10G"], maxInputTokens=1024, maxTotalTokens=4096)
    long = spec("Qwen/Qwen3-14B", "fp8", ["A10G"], maxInputTokens=30000, maxTotalTokens=40000)
    assert shards(short) == {"A10G": 1}
    assert shards(long) == {"A10G": 2}


def test_kv_reserve_scales_with_min_batch_policy() -> None:
    model = DEFAULT_MODELS["Qwen/Qwen3-14B"]
    work = Workload(model, "fp8")
    assert candidate_for(work, DEFAULT_GPUS["A10G"]).shards == 1
    demanding = PlacementPolicy(min_batch_sequences=4)
    assert candidate_for(work, DEFAULT_GPUS["A10G"], demanding).shards == 2
    c = candidate_for(work, DEFAULT_GPUS["A10G"], demanding)
    assert c.kv_per_gpu == pytest.approx(model.kv_bytes_per_token() * 16384 * 4 / 2)


def test_memory_breakdown_adds_up() -> None:
    model = DEFAULT_MODELS["Qwen/Qwen3-14B"]
    c = candidate_for(Workload(model), DEFAULT_GPUS["A10G"])
    assert c.shards == 2
    assert c.weights_per_gpu == pytest.approx(model.weight_bytes("none") / 2)
    assert c.usable_per_gpu == pytest.approx(24 * GB * 0.9)
    assert c.weights_per_gpu + c.kv_per_gpu + 2 * GB <= c.usable_per_gpu
    assert c.kv_tokens >= 16384


def test_throughput_and_cost_ranking() -> None:
    p = plan(spec("Qwen/Qwen3-14B", "fp8"), Catalog(), replicas=1)
    by = {c.gpu_type: c for c in p.candidates}
    # decode-bound: A100-80GB's bandwidth makes it fastest per sequence, A10G cheapest per unit
    assert by["A100-80GB"].throughput > by["L40S"].throughput > by["A10G"].throughput
    assert min(p.candidates, key=lambda c: c.cost_per_throughput).gpu_type == "A10G"
    # the default rank is $/h per request/s within the TTFT SLO: L40S first, A10G last
    assert [c.gpu_type for c in p.candidates] == ["L40S", "A100-40GB", "A100-80GB", "A10G"]
    assert [c.cost_per_slo_rate for c in p.candidates] == sorted(c.cost_per_slo_rate for c in p.candidates)
    # rank_by="decode" orders by $/h per decode token/s
    decode = plan(spec("Qwen/Qwen3-14B", "fp8"), Catalog(), replicas=1, policy=PlacementPolicy(rank_by="decode"))
    assert decode.candidates[0].gpu_type == "A10G"
    costs = [c.cost_per_throughput for c in decode.candidates]
    assert costs == sorted(costs)
    # tensor parallelism over PCIe is less efficient than one bigger GPU per replica
    bf16 = {c.gpu_type: c for c in plan(spec("Qwen/Qwen3-14B"), Catalog(), replicas=1).candidates}
    w = DEFAULT_MODELS["Qwen/Qwen3-14B"].weight_bytes("none")
    assert bf16["A10G"].throughput < 2 * 600 * GB / w


def test_model_not_in_catalog_is_a_plan_not_an_exception() -> None:
    p = plan(spec("Qwen/Qwen9-1T"), Catalog(), replicas=3)
    assert p.reason_code == MODEL_NOT_IN_CATALOG and p.unplaced == 3 and "Qwen/Qwen9-1T" in p.reason


def test_unknown_gpu_types_are_reported_and_skipped() -> None:
    p = plan(spec("Qwen/Qwen3-14B", "fp8", ["A10G", "H200"]), Catalog(), replicas=1)
    assert p.reason_code == OK and p.unknown_gpu_types == ("H200",)
    assert [c.gpu_type for c in p.candidates] == ["A10G"]


def test_short_model_names_resolve() -> None:
    assert plan(spec("qwen3-14b", "fp8", ["a10g"]), Catalog(), replicas=1).pool_summary == "A10G:1"

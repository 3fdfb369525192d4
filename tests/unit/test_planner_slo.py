"""SLO-aware placement: time to first token of a typical prompt gates GPU types (simulated replica model)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from qwen_operator.api import QwenDeploymentSpec
from qwen_operator.capacity.model import ReplicaModel
from qwen_operator.catalog import DEFAULT_GPUS, DEFAULT_MODELS, Catalog
from qwen_operator.planner import (
    NO_GPU_TYPE_MEETS_SLO,
    OK,
    PlacementPolicy,
    Workload,
    candidate_for,
    candidates,
    plan,
)
from qwen_operator.planner.placement import rank_key
from qwen_operator.sim.capacity import calibrate_pool
from qwen_operator.sim.trace import TraceRow

GPUS = ["A10G", "L40S", "A100-80GB"]
QWEN14 = DEFAULT_MODELS["Qwen/Qwen3-14B"]


def spec(quant: str = "fp8", gpus: list[str] | None = None, **scaling: Any) -> QwenDeploymentSpec:
    return QwenDeploymentSpec.model_validate(
        {
            "model": {"name": "Qwen/Qwen3-14B", "registry": "s3://m/x", "quantization": quant},
            "placement": {"gpuTypes": gpus or GPUS},
            "scaling": scaling,
        }
    )


def order(p: Any) -> list[str]:
    return [c.gpu_type for c in p.candidates if c.fits]


def test_defaults_are_the_articles_chat_profile() -> None:
    s = spec().scaling
    assert (s.typical_prompt_tokens, s.typical_output_tokens, s.p95_latency_seconds) == (512, 128, 1.2)


def test_512_token_prompts_a10g_qualifies_but_l40s_is_cheapest_per_request() -> None:
    """Default rank ($/h per request/s within the SLO): A10G is usable but last."""
    p = plan(spec(), Catalog(), replicas=3)
    assert p.reason_code == OK and order(p) == ["L40S", "A100-80GB", "A10G"]
    a10g = p.candidate("A10G")
    assert a10g is not None and a10g.fits and a10g.shards == 1
    assert 0.3 < a10g.idle_ttft < 0.5  # one 512-token prefill at 70 TF x 0.5 MFU
    assert 0.7 < a10g.slo_rate < 1.3 and "within P95 TTFT 1.2 s" in a10g.reason
    l40s = p.candidate("L40S")
    assert l40s is not None and l40s.slo_rate > 10 * a10g.slo_rate  # fp8 tensor cores + 48 GB of KV cache
    assert l40s.cost_per_slo_rate < a10g.cost_per_slo_rate / 5  # ~0.16 vs ~0.99 $/h per req/s
    assert a10g.price_per_hour < l40s.price_per_hour  # although the A10G replica is the cheaper one
    assert p.pool_summary == "L40S:3"


def test_2048_token_prompts_exclude_a10g_with_a_reason() -> None:
    p = plan(spec(typicalPromptTokens=2048), Catalog(), replicas=3)
    assert p.reason_code == OK and order(p) == ["L40S", "A100-80GB"]
    a10g = p.candidate("A10G")
    assert a10g is not None and not a10g.fits and a10g.shards == 1  # fits in memory, misses the SLO
    assert a10g.idle_ttft > 1.2
    assert "time to first token" in a10g.reason and "2048-token prompt" in a10g.reason
    assert "SLO 1.2 s" in a10g.reason and "p95LatencySeconds" in a10g.reason
    assert p.pool_summary == "L40S:3"


def test_a_relaxed_slo_brings_a10g_back() -> None:
    p = plan(spec(typicalPromptTokens=2048, p95LatencySeconds=2.5), Catalog(), replicas=3)
    assert order(p) == ["L40S", "A100-80GB", "A10G"] and p.pool_summary == "L40S:3"  # usable again, ranked last
    a10g = p.candidate("A10G")
    assert a10g is not None and a10g.fits and 1.2 < a10g.idle_ttft < 2.5
    only = plan(spec(gpus=["A10G"], typicalPromptTokens=2048, p95LatencySeconds=2.5), Catalog(), replicas=3)
    assert only.reason_code == OK and only.pool_summary == "A10G:3"
    # spill-over reaches it once the better types are full
    full = plan(
        spec(typicalPromptTokens=2048, p95LatencySeconds=2.5),
        Catalog(),
        replicas=3,
        free_gpus={"A10G": 4, "L40S": 1, "A100-80GB": 1},
    )
    assert full.pool_summary == "L40S:1,A100-80GB:1,A10G:1"


def test_spill_over_still_follows_the_rank_among_qualifying_types() -> None:
    p = plan(spec(typicalPromptTokens=2048), Catalog(), replicas=5, free_gpus={"A10G": 8, "L40S": 2, "A100-80GB": 8})
    assert p.pool_summary == "L40S:2,A100-80GB:3"  # never onto the A10G GPUs, however many are free


def test_no_qualifying_type_is_a_plan_that_says_why() -> None:
    p = plan(spec(gpus=["A10G"], typicalPromptTokens=2048), Catalog(), replicas=2)
    assert p.reason_code == NO_GPU_TYPE_MEETS_SLO and not p.ok and p.pools == () and p.unplaced == 2
    assert "time-to-first-token SLO of 1.2 s" in p.reason and "2048-token prompts" in p.reason
    assert "A10G: misses the SLO" in p.reason


def test_bf16_tables() -> None:
    short = plan(spec("none"), Catalog(), replicas=1)
    assert order(short) == ["L40S", "A100-80GB", "A10G"]  # 2x A10G: 140 TF between them, still last per req/s
    assert short.candidate("A10G").shards == 2  # type: ignore[union-attr]
    long = plan(spec("none", typicalPromptTokens=2048), Catalog(), replicas=1)
    assert order(long) == ["L40S", "A100-80GB", "A10G"] and long.candidate("A10G").idle_ttft < 1.2  # type: ignore[union-attr]
    longer = plan(spec("none", typicalPromptTokens=4096), Catalog(), replicas=1)
    assert "A10G" not in order(longer)


def test_rank_by_slo_capacity_is_the_default() -> None:
    """$ per request/s within the SLO: L40S's fp8 tensor cores prefill ~10x faster than an A10G."""
    assert PlacementPolicy().rank_by == "slo"
    p = plan(spec(), Catalog(), replicas=2)
    assert order(p) == ["L40S", "A100-80GB", "A10G"]
    costs = [c.cost_per_slo_rate for c in p.candidates]
    assert costs == sorted(costs)
    assert p == plan(spec(), Catalog(), replicas=2, policy=PlacementPolicy(rank_by="slo"))


def test_rank_by_decode_policy_still_available() -> None:
    """$ per decode token/s (bandwidth only): the A10G's price wins, as before the SLO rank."""
    decode = PlacementPolicy(rank_by="decode")
    p = plan(spec(), Catalog(), replicas=5, free_gpus={"A10G": 4, "L40S": 8, "A100-80GB": 8}, policy=decode)
    assert order(p) == ["A10G", "L40S", "A100-80GB"]
    costs = [c.cost_per_throughput for c in p.candidates]
    assert costs == sorted(costs)
    assert p.pool_summary == "A10G:4,L40S:1"
    # the SLO still gates which types are usable under either rank
    gated = plan(spec(typicalPromptTokens=2048), Catalog(), replicas=1, policy=decode)
    assert order(gated) == ["L40S", "A100-80GB"]


def test_a_type_without_an_slo_estimate_ranks_after_the_estimated_ones() -> None:
    """Mixed units are never compared: no slo_rate (the replica model refused it) means last."""
    l40s = candidate_for(Workload(QWEN14, "fp8", slo_seconds=1.2), DEFAULT_GPUS["L40S"])
    a10g = candidate_for(Workload(QWEN14, "fp8", slo_seconds=1.2), DEFAULT_GPUS["A10G"])
    unestimated = replace(a10g, slo_rate=0.0, idle_ttft=0.0)  # $/h per decode token/s ~0.03 < L40S's 0.16 per req/s
    assert unestimated.rank_cost < l40s.rank_cost
    assert [c.gpu_type for c in candidates(Workload(QWEN14, "fp8"), [DEFAULT_GPUS["L40S"], DEFAULT_GPUS["A10G"]])] == [
        "A10G",
        "L40S",
    ]  # no SLO at all: everything by decode
    assert sorted([unestimated, l40s], key=rank_key)[0].gpu_type == "L40S"


def test_typical_prompt_is_clipped_to_the_runtime_limits() -> None:
    work = Workload(QWEN14, "fp8", max_input_tokens=1024, max_total_tokens=2048, prompt_tokens=4096, slo_seconds=1.2)
    assert (work.typical_prompt, work.typical_output) == (1024, 128)
    assert candidate_for(work, DEFAULT_GPUS["A10G"]).fits  # 1024 tokens: ~0.8 s idle


def test_no_slo_means_no_estimate() -> None:
    c = candidate_for(Workload(QWEN14, "fp8"), DEFAULT_GPUS["A10G"])
    assert c.fits and c.idle_ttft == 0.0 and c.slo_rate == 0.0


def test_custom_gpu_types_get_an_estimate_too() -> None:
    slow = replace(DEFAULT_GPUS["L40S"], name="L4-ish", bf16_flops=60e12, fp8_native=False)
    c = candidate_for(Workload(QWEN14, "fp8", prompt_tokens=2048, slo_seconds=1.2), slow)
    assert not c.fits and c.shards == 1 and "misses the SLO" in c.reason


@pytest.mark.parametrize(("gpu", "prompt"), [("A10G", 512), ("L40S", 2048), ("A10G", 1024)])
def test_analytic_capacity_agrees_with_the_engine(gpu: str, prompt: int) -> None:
    """The planner's rate (analytic queue) vs the simulator's (bisection over engine runs), same replica model."""
    replica = ReplicaModel.build("Qwen3-14B", gpu, 1, "fp8")
    analytic = replica.slo_capacity(prompt, 128, 1.2)
    measured = calibrate_pool(replica, [TraceRow(0.0, prompt, 128)], 1.2)
    assert analytic.rate == pytest.approx(measured.rate_at_slo, rel=0.2)
    assert analytic.idle_ttft == pytest.approx(replica.prefill_seconds(prompt))

"""Pool tables: cheapest per unit of capacity first, spill-over, unplaced replicas, scale-down order."""

from __future__ import annotations

import pytest

from qwen_operator.api import QwenDeploymentSpec
from qwen_operator.catalog import Catalog
from qwen_operator.planner import (
    INSUFFICIENT_GPUS,
    OK,
    Candidate,
    FreeGPUs,
    Pool,
    fill,
    plan,
    removal_order,
    replica_slots,
    resize,
)


def cand(gpu: str, shards: int, price: float, throughput: float, fits: bool = True, slo_rate: float = 0.0) -> Candidate:
    return Candidate(gpu, fits, shards if fits else 0, price, throughput, "test", slo_rate=slo_rate)


# no SLO estimate, so ranked by cost per throughput: A 1.0, B 2.0, C 3.0 (C's price per replica is the
# lowest: rank is by $/throughput)
A, B, C = cand("A", 1, 1.0, 1.0), cand("B", 2, 4.0, 2.0), cand("C", 1, 0.9, 0.3)
NOFIT = cand("D", 1, 0.1, 10.0, fits=False)


def sizes(pools: list[Pool]) -> dict[str, int]:
    return {p.gpu_type: p.replicas for p in pools}


@pytest.mark.parametrize(
    ("desired", "free", "want", "unplaced"),
    [
        (3, None, {"A": 3}, 0),  # unlimited: everything on the cheapest
        (3, {"A": 5, "B": 4, "C": 9}, {"A": 3}, 0),
        (5, {"A": 2, "B": 4, "C": 9}, {"A": 2, "B": 2, "C": 1}, 0),  # spill A -> B -> C
        (5, {"A": 2, "B": 3, "C": 0}, {"A": 2, "B": 1}, 2),  # B needs 2 GPUs per replica: 3 free -> 1
        (4, {"A": 0, "B": [1, 1, 2], "C": 1}, {"B": 1, "C": 1}, 2),  # per-node: only one node holds 2 shards
        (0, {"A": 4}, {}, 0),
        (2, {}, {}, 2),
    ],
)
def test_fill(desired: int, free: FreeGPUs | None, want: dict[str, int], unplaced: int) -> None:
    pools, missing, reason = fill([C, NOFIT, B, A], desired, free)
    assert sizes(pools) == want
    assert missing == unplaced
    assert ("unplaced" in reason) == (unplaced > 0)


def test_pools_come_in_rank_order_and_skip_non_fitting() -> None:
    pools, _, _ = fill([C, NOFIT, B, A], 4, {"A": 1, "B": 2, "C": 5, "D": 100})
    assert [p.gpu_type for p in pools] == ["A", "B", "C"]


def test_unplaced_reason_names_free_gpus() -> None:
    _, missing, reason = fill([A, B], 4, {"A": 1, "B": 1})
    assert missing == 3
    assert "A: 1 free, 1 per replica" in reason and "B: 1 free, 2 per replica" in reason


@pytest.mark.parametrize(
    ("current", "total", "free", "want"),
    [
        ({"A": 2, "B": 2, "C": 2}, 4, None, {"A": 2, "B": 2}),  # C (most expensive) goes first
        ({"A": 2, "B": 2, "C": 2}, 1, None, {"A": 1}),  # then B, then A
        ({"A": 1, "C": 2}, 5, {"A": 1, "B": 2}, {"A": 2, "B": 1, "C": 2}),  # existing pools kept, adds cheapest
        ({"A": 1, "X": 3}, 3, {"A": 10}, {"A": 3}),  # X no longer allowed: dropped, replaced on A
        ({"A": 3}, 3, {}, {"A": 3}),  # steady state: nothing moves, no free GPUs needed
    ],
)
def test_resize(current: dict[str, int], total: int, free: FreeGPUs | None, want: dict[str, int]) -> None:
    pools, missing, _ = resize([A, B, C], current, total, free)
    assert sizes(pools) == want
    assert missing == 0


def test_scale_down_then_up_prefers_cheap_capacity() -> None:
    pools, _, _ = resize([A, B, C], {"B": 2, "C": 2}, 2, None)
    assert sizes(pools) == {"B": 2}
    pools, _, _ = resize([A, B, C], sizes(pools), 4, {"A": 1, "C": 5})
    assert sizes(pools) == {"A": 1, "B": 2, "C": 1}


def test_removal_order_is_most_expensive_first() -> None:
    assert removal_order([A, NOFIT, C, B]) == ["C", "B", "A"]


@pytest.mark.parametrize(("free", "per", "want"), [(5, 2, 2), ([3, 3], 2, 2), ([1, 1, 1, 1], 2, 0), (-1, 1, 0)])
def test_replica_slots(free: int | list[int], per: int, want: int) -> None:
    assert replica_slots(free, per) == want


def chat_spec() -> QwenDeploymentSpec:
    return QwenDeploymentSpec.model_validate(
        {
            "model": {"name": "Qwen/Qwen3-14B", "registry": "s3://m/q", "quantization": "fp8"},
            "placement": {"gpuTypes": ["A10G", "L40S", "A100-80GB"]},
        }
    )


def test_slo_rate_ranks_over_throughput_when_estimated() -> None:
    # $/h per req/s: X 0.5, Y 2.0 (Y is the cheaper per decode token/s: 0.5 vs 1.0)
    x, y = cand("X", 1, 2.0, 2.0, slo_rate=4.0), cand("Y", 1, 1.0, 2.0, slo_rate=0.5)
    pools, _, _ = fill([y, x], 3, {"X": 2, "Y": 4})
    assert [(p.gpu_type, p.replicas) for p in pools] == [("X", 2), ("Y", 1)]
    assert removal_order([x, y]) == ["Y", "X"]
    # a type without an estimate goes after both, whatever its $/h per decode token/s
    z = cand("Z", 1, 0.1, 10.0)
    assert removal_order([z, x, y]) == ["Z", "Y", "X"]


def test_plan_spills_from_l40s_to_a100_to_a10g() -> None:
    """Qwen3-14B fp8, 512-token prompts: $/h per req/s within the SLO ~0.16 L40S, ~0.62 A100-80GB, ~0.99 A10G."""
    p = plan(chat_spec(), Catalog(), replicas=7, free_gpus={"A10G": 8, "L40S": 4, "A100-80GB": 2})
    assert p.pool_summary == "L40S:4,A100-80GB:2,A10G:1"
    assert p.reason_code == OK and p.placed == 7
    assert p.cost_per_hour == pytest.approx(4 * 1.861 + 2 * 5.12 + 1.006)


def test_plan_reports_insufficient_gpus() -> None:
    p = plan(chat_spec(), Catalog(), replicas=5, free_gpus={"A10G": 2})
    assert p.reason_code == INSUFFICIENT_GPUS and p.unplaced == 3 and p.placed == 2
    assert "3 replica(s) unplaced" in p.reason


def test_plan_with_current_pools_scales_down_the_expensive_pool() -> None:
    # most expensive per request/s within the SLO first: A10G, then A100-80GB
    p = plan(chat_spec(), Catalog(), replicas=4, current={"A10G": 2, "L40S": 2, "A100-80GB": 2})
    assert p.pool_summary == "L40S:2,A100-80GB:2"
    p = plan(chat_spec(), Catalog(), replicas=1, current={"A10G": 2, "L40S": 2, "A100-80GB": 2})
    assert p.pool_summary == "L40S:1"

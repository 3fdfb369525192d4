"""The replica performance model: sizes, roofline timings and the articles' figures (all simulated)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from qwen_operator.capacity import model as pm
from qwen_operator.capacity.model import ReplicaModel
from qwen_operator.catalog import DEFAULT_GPUS, DEFAULT_MODELS
from qwen_operator.sim.sessions import percentile, run_chat_sessions

QWEN14 = "Qwen/Qwen3-14B"


def test_kv_capacity_follows_memory_budget() -> None:
    r = ReplicaModel.build("Qwen3-14B", "A10G", 1, "fp8")
    m, g = DEFAULT_MODELS[QWEN14], DEFAULT_GPUS["A10G"]
    free = g.memory_bytes * pm.MEMORY_UTILISATION - m.weight_bytes("fp8") - pm.RUNTIME_OVERHEAD_BYTES
    assert r.kv_capacity_tokens == int(free // m.kv_bytes_per_token())
    # enough for ~20 chats of a median Azure context (~1.1k tokens), not for 20 x 16k
    assert 20 * 1100 < r.kv_capacity_tokens < 20 * 16384


def test_sharding_splits_weights_and_kv() -> None:
    one = ReplicaModel.build("Qwen3-14B", "A100-80GB", 1, "none")
    two = ReplicaModel.build("Qwen3-14B", "A100-80GB", 2, "none")
    assert two.weight_bytes_per_gpu == pytest.approx(one.weight_bytes_per_gpu / 2)
    assert two.kv_bytes_per_token_per_gpu == pytest.approx(one.kv_bytes_per_token_per_gpu / 2)
    assert two.kv_capacity_tokens > 2 * one.kv_capacity_tokens  # weights freed room on each GPU


@pytest.mark.parametrize(
    ("model", "gpu", "shards", "quant", "match"),
    [
        ("Qwen3-14B", "A10G", 3, "fp8", "shards=3"),
        ("Qwen3-14B", "A10G", 1, "none", "KV cache holds"),
        ("Qwen2.5-72B", "A100-80GB", 1, "fp8", "KV cache holds"),
        ("Qwen3-14B", "A10G", 1, "int3", "unknown quantization"),
    ],
)
def test_invalid_replicas_are_refused_with_a_reason(model: str, gpu: str, shards: int, quant: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ReplicaModel.build(model, gpu, shards, quant)


def test_a100_fp8_stream_speed_matches_article() -> None:
    """Article: A100 fp8 serves ~120 tokens/s per stream at low batch. Accept +-15%."""
    r = ReplicaModel.build("Qwen3-14B", "A100-80GB", 1, "fp8")
    assert 102 <= r.tokens_per_second_per_stream(1) <= 138
    assert 90 <= r.tokens_per_second_per_stream(4) <= r.tokens_per_second_per_stream(1)


def test_decode_is_memory_bound_at_small_batch_and_compute_bound_at_large() -> None:
    r = ReplicaModel.build("Qwen3-14B", "A10G", 1, "fp8")
    bw = DEFAULT_GPUS["A10G"].bandwidth_bytes_per_s * pm.BANDWIDTH_EFFICIENCY["A10G"]
    roofline = r.decode_weight_bytes_per_gpu / bw
    assert r.decode_step_seconds(1, 500) == pytest.approx(roofline, rel=0.05)
    # adding sequences is cheap while memory-bound: 8x the batch costs far less than 8x the time
    assert r.decode_step_seconds(8, 8 * 500) < 1.3 * r.decode_step_seconds(1, 500)
    # more context means more KV bytes read per step
    assert r.decode_step_seconds(8, 8 * 4000) > r.decode_step_seconds(8, 8 * 500)
    # at a very large batch compute dominates: time grows ~linearly with the batch
    big, bigger = r.decode_step_seconds(256, 256 * 100), r.decode_step_seconds(512, 512 * 100)
    assert bigger / big > 1.7


def test_prefill_is_compute_bound_and_scales_with_flops() -> None:
    a10 = ReplicaModel.build("Qwen3-14B", "A10G", 1, "fp8")
    a100 = ReplicaModel.build("Qwen3-14B", "A100-80GB", 1, "fp8")
    flops = 2 * (DEFAULT_MODELS[QWEN14].params - DEFAULT_MODELS[QWEN14].embedding_params) * 1000
    ideal = flops / (DEFAULT_GPUS["A10G"].bf16_flops * pm.PREFILL_MFU)
    assert a10.prefill_seconds(1000) == pytest.approx(ideal, rel=0.1)
    ratio = a100.prefill_tokens_per_second / a10.prefill_tokens_per_second
    assert ratio == pytest.approx(312 / 70, rel=0.15)
    # attention makes long prompts super-linear
    assert a10.prefill_seconds(8000) > 8 * a10.prefill_seconds(1000)
    # fp8 tensor cores (L40S) double the compute rate for fp8 but not for bf16
    l40 = ReplicaModel.build("Qwen3-14B", "L40S", 1, "fp8")
    l40_bf16 = ReplicaModel.build("Qwen3-14B", "L40S", 1, "none")
    assert l40.prefill_tokens_per_second > 1.8 * l40_bf16.prefill_tokens_per_second


def test_tensor_parallel_over_pcie_costs_more_than_nvlink() -> None:
    m, g = DEFAULT_MODELS[QWEN14], DEFAULT_GPUS["A10G"]
    pcie = ReplicaModel(m, g, 2, "none")
    nvlink = ReplicaModel(m, replace(g, interconnect="nvlink"), 2, "none")
    single_fp8 = ReplicaModel(m, g, 1, "fp8")
    assert pcie.decode_step_seconds(16, 16_000) > nvlink.decode_step_seconds(16, 16_000)
    assert pcie.prefill_seconds(2000) > nvlink.prefill_seconds(2000)
    # two bf16 shards read about as much per GPU as one fp8 GPU, plus all-reduce overhead
    assert pcie.decode_step_seconds(1, 1000) > single_fp8.decode_step_seconds(1, 1000) * 0.9


def test_cold_start_is_load_plus_warmup() -> None:
    r = ReplicaModel.build("Qwen3-14B", "A10G", 1, "fp8")
    expected = pm.PROCESS_START_S + r.weight_bytes / pm.NODE_CACHE_READ_BYTES_PER_S + pm.WARMUP_S
    assert r.cold_start_seconds == pytest.approx(expected)
    big = ReplicaModel.build("Qwen2.5-72B", "A100-80GB", 4, "none")
    assert big.cold_start_seconds > r.cold_start_seconds + 100  # 145 GB to read
    assert 30 <= r.cold_start_seconds <= 180  # minutes-long loads are what the autoscaler must ride out


def test_percentile_nearest_rank() -> None:
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 0.95) == 95.0
    assert percentile(values, 0.5) == 50.0


# --- the articles' headline: one A10G (fp8 Qwen3-14B) serves ~20 concurrent chats at P95 < 1.2 s ---
# A chat user reads the reply as it streams, so the latency the figure can mean for ordinary
# replies is time to first token: at ~30 ms per decode step on an A10G, a 128-token reply alone
# takes ~4 s end to end, so "end-to-end < 1.2 s" is physically out of reach except for replies
# of a few tokens. Workload: 512-token prompts, 128-token replies, 20 s mean think time.
A10G_CHAT = {"prompt_tokens": 512, "output_tokens": 128, "think_seconds": 20.0, "horizon": 1200.0}


def test_a10g_serves_about_20_chats_under_1_2s_ttft() -> None:
    r = ReplicaModel.build("Qwen3-14B", "A10G", 1, "fp8")
    at20 = run_chat_sessions(r, 20, **A10G_CHAT)  # type: ignore[arg-type]
    at40 = run_chat_sessions(r, 40, **A10G_CHAT)  # type: ignore[arg-type]
    assert at20.turns > 500
    assert at20.ttft_p95 < 1.2
    assert at40.ttft_p95 > 1.2  # ~20 is near the knee, not a figure off by 2x or more
    # and the honest part: end to end, 128-token replies are far over 1.2 s
    assert at20.e2e_p95 > 127 * r.decode_step_seconds(1, 600)
    assert at20.e2e_p95 > 3 * 1.2


def test_a100_serves_the_same_chats_with_room_to_spare() -> None:
    r = ReplicaModel.build("Qwen3-14B", "A100-80GB", 1, "fp8")
    stats = run_chat_sessions(r, 40, **A10G_CHAT)  # type: ignore[arg-type]
    assert stats.ttft_p95 < 0.5


@pytest.mark.parametrize(
    ("model", "gpu", "shards", "quant"),
    [("Qwen3-14B", "A10G", 1, "fp8"), ("Qwen3-14B", "A10G", 2, "none"), ("Qwen2.5-72B", "A100-80GB", 4, "none")],
)
@pytest.mark.parametrize(("batch", "context"), [(1, 100), (20, 20_000), (300, 30_000)])
def test_decode_coefficients_reproduce_the_step_time(
    model: str, gpu: str, shards: int, quant: str, batch: int, context: int
) -> None:
    r = ReplicaModel.build(model, gpu, shards, quant)
    m0, m1, c_b, c_ctx, o0, o_b = r.decode_coefficients()
    fast = max(m0 + m1 * context, c_b * batch + c_ctx * context) + o0 + o_b * batch
    assert fast == pytest.approx(r.decode_step_seconds(batch, context), rel=1e-9)

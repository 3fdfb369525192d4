"""Qwen3 MoE and the current dense family in the catalog; total vs active parameters in the
replica model and the planner; the thinking-mode planning input (all figures simulated)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from qwen_operator.api import QwenDeploymentSpec
from qwen_operator.capacity import model as pm
from qwen_operator.capacity.model import ReplicaModel, typical_output_tokens
from qwen_operator.catalog import DEFAULT_GPUS, DEFAULT_MODELS, Catalog, CatalogError, QwenModel, load_catalog
from qwen_operator.cli import main
from qwen_operator.planner import NO_GPU_TYPE_FITS, OK, Workload, plan
from qwen_operator.sim.capacity import smallest_fit

A3B, Q32, A22B = "Qwen/Qwen3-30B-A3B", "Qwen/Qwen3-32B", "Qwen/Qwen3-235B-A22B"
SANDBOX = ["A10G", "L40S", "A100-80GB"]


def _architecture_params(m: QwenModel) -> tuple[float, float]:
    """(total, active) parameters recomputed from the config numbers: attention (q, k, v, o; Qwen2.5
    has q/k/v biases, Qwen3 q/k RMSNorms), two RMSNorms per layer, the MLP (dense SwiGLU, or the
    experts and the router), embeddings (tied or not) and the final norm."""
    q, kv = m.attention_heads * m.head_dim, m.kv_heads * m.head_dim
    attn = 2 * m.hidden_size * q + 2 * m.hidden_size * kv + 2 * m.hidden_size
    attn += q + 2 * kv if m.family == "qwen2.5" else 2 * m.head_dim
    if m.is_moe:
        expert = 3 * m.hidden_size * m.moe_intermediate_size
        mlp, idle = m.experts * expert + m.hidden_size * m.experts, (m.experts - m.experts_per_token) * expert
    else:
        mlp, idle = 3 * m.hidden_size * m.intermediate_size, 0
    emb = m.vocab_size * m.hidden_size * (1 if m.tie_word_embeddings else 2)
    total = m.layers * (attn + mlp) + m.hidden_size + emb
    return float(total), float(total - m.layers * idle)


@pytest.mark.parametrize("name", sorted(DEFAULT_MODELS))
def test_params_follow_from_the_architecture_numbers(name: str) -> None:
    m = DEFAULT_MODELS[name]
    total, active = _architecture_params(m)
    assert m.params == pytest.approx(total, rel=0.005)
    assert m.active_params == pytest.approx(active, rel=0.005)


@pytest.mark.parametrize(
    ("name", "total_b", "active_b", "non_embedding_b"),
    [  # the model cards' "Number of Parameters" (total / activated / non-embedding)
        ("Qwen/Qwen3-0.6B", 0.6, 0.6, 0.44),
        ("Qwen/Qwen3-1.7B", 1.7, 1.7, 1.4),
        ("Qwen/Qwen3-4B", 4.0, 4.0, 3.6),
        ("Qwen/Qwen3-8B", 8.2, 8.2, 6.95),
        ("Qwen/Qwen3-14B", 14.8, 14.8, 13.2),
        ("Qwen/Qwen3-32B", 32.8, 32.8, 31.2),
        ("Qwen/Qwen3-30B-A3B", 30.5, 3.3, 29.9),
        ("Qwen/Qwen3-235B-A22B", 235, 22, 234),
        ("Qwen/Qwen3-Coder-30B-A3B-Instruct", 30.5, 3.3, 29.9),
        ("Qwen/Qwen3-Coder-480B-A35B-Instruct", 480, 35, 478),
    ],
)
def test_catalog_matches_the_model_cards(name: str, total_b: float, active_b: float, non_embedding_b: float) -> None:
    m = DEFAULT_MODELS[name]
    assert m.params / 1e9 == pytest.approx(total_b, rel=0.02)
    assert m.active_params / 1e9 == pytest.approx(active_b, rel=0.05)
    assert (m.params - m.embedding_params) / 1e9 == pytest.approx(non_embedding_b, rel=0.02)
    assert m.family == "qwen3"
    assert m.thinking is ("Coder" not in name)  # the Coder instruct models have no thinking mode


def test_expected_experts_hit_grows_from_top_k_to_all_experts() -> None:
    m = DEFAULT_MODELS[A3B]
    assert (m.experts, m.experts_per_token) == (128, 8)
    assert m.expected_experts_hit(1) == pytest.approx(8)
    hits = [m.expected_experts_hit(b) for b in (1, 2, 8, 32, 64, 256)]
    assert hits == sorted(hits) and len(set(hits)) == len(hits)
    assert m.expected_experts_hit(8) == pytest.approx(128 * (1 - (1 - 8 / 128) ** 8))
    assert 125 < m.expected_experts_hit(64) < 127 and m.expected_experts_hit(1024) == pytest.approx(128)
    assert DEFAULT_MODELS[Q32].expected_experts_hit(64) == 0.0


def test_memory_counts_total_parameters_decode_counts_active_ones() -> None:
    moe = ReplicaModel.build("Qwen3-30B-A3B", "L40S", 1, "fp8")
    dense = ReplicaModel.build("Qwen3-32B", "L40S", 1, "fp8")
    # weights: every expert resident, about a 30B dense model's
    assert moe.weight_bytes == pytest.approx(DEFAULT_MODELS[A3B].weight_bytes("fp8"))
    assert 0.85 < moe.weight_bytes / dense.weight_bytes < 0.95
    # one token reads the attention, router and 8 of 128 experts (+ the bf16 LM head): a ~3B model
    assert moe.decode_weight_bytes_per_gpu < 0.15 * moe.weight_bytes
    assert moe.tokens_per_second_per_stream(1) > 5 * dense.tokens_per_second_per_stream(1)
    # a large batch hits (almost) every expert: the read approaches the whole model
    assert moe.weight_bytes_read_per_gpu(512) == pytest.approx(moe.weight_bytes - 2 * 151936 * 2048, rel=0.02)
    # FLOPs per token use active parameters: prefill is compute-bound on far fewer FLOPs
    assert moe.prefill_tokens_per_second > 3 * dense.prefill_tokens_per_second


@pytest.mark.parametrize(("batch", "context"), [(1, 100), (8, 8_000), (64, 64_000), (300, 30_000)])
def test_moe_decode_step_is_reproduced_by_the_engine_terms(batch: int, context: int) -> None:
    """The engine's fast path (decode_coefficients, with the batch-dependent weight read) gives the same step."""
    r = ReplicaModel.build("Qwen3-30B-A3B", "A100-80GB", 1, "none")
    _, m1, c_b, c_ctx, o0, o_b = r.decode_coefficients()
    fast = max(r.decode_weight_seconds(batch) + m1 * context, c_b * batch + c_ctx * context) + o0 + o_b * batch
    assert fast == pytest.approx(r.decode_step_seconds(batch, context), rel=1e-9)
    assert r.decode_weight_seconds(batch) >= r.decode_weight_seconds(1)


@pytest.mark.parametrize("name", ["Qwen3-14B", "Qwen3-32B", "Qwen2.5-72B"])
def test_dense_models_read_the_same_bytes_at_every_batch(name: str) -> None:
    r = ReplicaModel.build(name, "A100-80GB", 4 if "72B" in name else 1, "fp8")
    m0 = r.decode_coefficients()[0]
    assert all(r.decode_weight_seconds(b) == m0 for b in (1, 7, 64, 300))
    assert r.model.active_params == r.model.params


def test_kv_replication_only_under_vllm() -> None:
    m = DEFAULT_MODELS[A22B]
    assert (m.attention_heads, m.kv_heads) == (64, 4)
    assert m.valid_shards(8) == [1, 2, 4]
    assert m.valid_shards(8, kv_replication=True) == [1, 2, 4, 8]
    assert m.kv_heads_per_shard(8) == 1 and m.kv_heads_per_shard(2) == 2
    assert m.kv_bytes_per_token_per_shard(8) == m.kv_bytes_per_token_per_shard(4) == m.kv_bytes_per_token() // 4
    with pytest.raises(ValueError, match=r"shards=8 .*\(tgi\)"):
        ReplicaModel(m, DEFAULT_GPUS["A100-80GB"], 8, "none")
    vllm = ReplicaModel(m, DEFAULT_GPUS["A100-80GB"], 8, "none", engine="vllm")
    assert vllm.kv_bytes_per_token_per_gpu == m.kv_bytes_per_token() / 4  # one replicated head per GPU
    # the dense models' degrees do not change: they all have >= 4 KV heads dividing their degrees
    for dense in (mm for mm in DEFAULT_MODELS.values() if not mm.is_moe):
        assert dense.valid_shards(8) == dense.valid_shards(8, kv_replication=True)


def _spec(model: str, quant: str = "none", engine: str = "tgi", gpus: list[str] | None = None) -> QwenDeploymentSpec:
    return QwenDeploymentSpec.model_validate(
        {
            "model": {"name": model, "registry": "s3://m/x", "quantization": quant},
            "runtime": {"engine": engine},
            "placement": {"gpuTypes": gpus or SANDBOX},
        }
    )


def test_planner_a3b_needs_the_gpus_of_a_30b_model_and_serves_like_a_3b() -> None:
    moe = plan(_spec(A3B, gpus=["L40S"]), Catalog(), replicas=1).candidate("L40S")
    dense = plan(_spec(Q32, gpus=["L40S"]), Catalog(), replicas=1).candidate("L40S")
    assert moe is not None and dense is not None and moe.fits and dense.fits
    assert moe.shards == dense.shards == 2  # bf16: 61 GB vs 66 GB of weights, neither fits one 48 GB L40S
    assert moe.throughput > 5 * dense.throughput
    assert moe.slo_rate > 2 * dense.slo_rate
    assert moe.cost_per_slo_rate < dense.cost_per_slo_rate / 2


def test_235b_bf16_fits_no_single_node_of_the_sandbox_mix_under_tgi() -> None:
    p = plan(_spec(A22B), Catalog(), replicas=1)
    assert p.reason_code == NO_GPU_TYPE_FITS and p.pools == ()
    assert "\n" not in p.reason and "470.2 GB of weights" in p.reason
    for gpu in ("A10G", "L40S"):
        c = p.candidate(gpu)
        assert c is not None and c.reason.startswith("does not fit on one node")
        assert "LeaderWorkerSet" in c.reason
    a100 = p.candidate("A100-80GB")
    assert a100 is not None and "engine vllm replicates them" in a100.reason  # 8 shards would fit, TGI can't split 4


def test_235b_bf16_on_eight_a100_under_vllm_and_fp8_on_four_under_tgi() -> None:
    vllm = plan(_spec(A22B, engine="vllm"), Catalog(), replicas=1)
    assert vllm.reason_code == OK and [(p.gpu_type, p.shards) for p in vllm.pools] == [("A100-80GB", 8)]
    fp8 = plan(_spec(A22B, quant="fp8"), Catalog(), replicas=1)
    assert fp8.reason_code == OK and [(p.gpu_type, p.shards) for p in fp8.pools] == [("A100-80GB", 4)]
    l40s = fp8.candidate("L40S")
    assert l40s is not None and not l40s.fits and "engine vllm" in l40s.reason


def test_simulated_pools_respect_the_engine() -> None:
    assert smallest_fit(A22B, "A100-80GB", "none") is None
    r = smallest_fit(A22B, "A100-80GB", "none", engine="vllm")
    assert r is not None and r.shards == 8
    a3b = smallest_fit(A3B, "L40S", "fp8")
    assert a3b is not None and a3b.shards == 1


def test_reasoning_adds_thinking_tokens_to_the_typical_reply() -> None:
    q14, coder, q25 = (
        DEFAULT_MODELS[n] for n in ("Qwen/Qwen3-14B", "Qwen/Qwen3-Coder-30B-A3B-Instruct", "Qwen/Qwen2.5-7B-Instruct")
    )
    assert typical_output_tokens(q14, 128, True) == 128 + pm.TYPICAL_REASONING_TOKENS
    assert typical_output_tokens(q14, 128, None) == typical_output_tokens(q14, 128, False) == 128
    assert typical_output_tokens(coder, 128, True) == typical_output_tokens(q25, 128, True) == 128
    assert Workload(q14, reasoning=True).typical_output == 128 + pm.TYPICAL_REASONING_TOKENS
    assert Workload(q14, reasoning=True, max_total_tokens=1024).typical_output == 1024 - 512  # clipped


def test_reasoning_lowers_requests_per_second_within_the_slo() -> None:
    spec = QwenDeploymentSpec.model_validate(
        {
            "model": {"name": "Qwen/Qwen3-14B", "registry": "s3://m/x", "quantization": "fp8"},
            "placement": {"gpuTypes": ["L40S"]},
        }
    )
    off = plan(spec, Catalog(), replicas=1).candidate("L40S")
    same = plan(spec, Catalog(), replicas=1, reasoning=False).candidate("L40S")
    on = plan(spec, Catalog(), replicas=1, reasoning=True).candidate("L40S")
    assert off is not None and same is not None and on is not None
    assert off.slo_rate == same.slo_rate  # default (None) keeps today's figures
    assert on.slo_rate < 0.5 * off.slo_rate
    assert f"{128 + pm.TYPICAL_REASONING_TOKENS}-token replies" in on.reason


def test_catalog_override_adds_a_moe_model_and_names_bad_keys() -> None:
    raw: dict[str, Any] = {
        "catalog": {
            "models": {
                "Qwen/Tiny-MoE": {
                    "family": "qwen3",
                    "layers": 4,
                    "attentionHeads": 8,
                    "kvHeads": 2,
                    "headDim": 64,
                    "hiddenSize": 512,
                    "vocabSize": 1000,
                    "params": 2e8,
                    "experts": 16,
                    "expertsPerToken": 2,
                    "moeIntermediateSize": 256,
                    "thinking": True,
                }
            }
        }
    }
    m = load_catalog(raw).models["Qwen/Tiny-MoE"]
    assert m.is_moe and m.active_params == pytest.approx(2e8 - 4 * 14 * 3 * 512 * 256) and m.thinking
    raw["catalog"]["models"]["Qwen/Tiny-MoE"]["expertsPerToken"] = 32
    with pytest.raises(CatalogError, match=r"catalog\.models\.Qwen/Tiny-MoE: .*experts_per_token"):
        load_catalog(raw)


def test_qwenctl_plan_says_why_235b_does_not_fit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = {
        "apiVersion": "serving.qwenops.io/v1alpha1",
        "kind": "QwenDeployment",
        "metadata": {"name": "big"},
        "spec": {
            "model": {"name": A22B, "registry": "s3://m/x"},
            "placement": {"gpuTypes": SANDBOX},
            "scaling": {"minReplicas": 1, "maxReplicas": 1},
        },
    }
    path = tmp_path / "cr.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["plan", "-f", str(path), "--gpus", "a10g=8,l40s=4,a100-80gb=8"]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    last = captured.out.strip().splitlines()[-1]
    assert last.startswith("NoGPUTypeFits: Qwen/Qwen3-235B-A22B (bf16, 470.2 GB of weights")
    assert "does not fit on one node" in last


def _decode_per_token(replica: ReplicaModel, batch: int, prompt: int = 100, output: int = 201) -> float:
    from qwen_operator.sim.engine import ReplicaEngine, Request

    eng = ReplicaEngine(replica)
    reqs = [Request(0.0, prompt, output) for _ in range(batch)]
    for r in reqs:
        eng.submit(r)
    eng.advance(float("inf"))
    last = max(reqs, key=lambda r: r.first_token)
    return (last.finish - last.first_token) / (output - 1)


def test_engine_decodes_a_moe_batch_at_the_batch_dependent_read() -> None:
    """The simulated engine's decode steps read the experts the batch hits: a 32-sequence step of
    Qwen3-30B-A3B costs what the replica model says for 32, far more than the batch-1 read."""
    moe = ReplicaModel.build("Qwen3-30B-A3B", "L40S", 1, "fp8")
    one, many = _decode_per_token(moe, 1), _decode_per_token(moe, 32)
    assert one == pytest.approx(moe.decode_step_seconds(1, 200), rel=0.05)
    assert many == pytest.approx(moe.decode_step_seconds(32, 32 * 200), rel=0.05)
    assert many > 3 * one  # a dense model's step barely grows from 1 to 32 sequences while memory-bound
    dense = ReplicaModel.build("Qwen3-32B", "L40S", 1, "fp8")
    assert _decode_per_token(dense, 32) < 1.3 * _decode_per_token(dense, 1)


@pytest.mark.parametrize(("flag", "reply"), [(None, 128), ("disabled", 128), ("enabled", 1128), ("spec", 1128)])
def test_qwenctl_plan_reasoning_flag(flag: str | None, reply: int, capsys: pytest.CaptureFixture[str]) -> None:
    sample = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "qwen3-30b-a3b-moe.yaml"
    args = ["plan", "-f", str(sample), "--gpus", "l40s=4"] + (["--reasoning", flag] if flag else [])
    assert main(args) == 0
    assert f"{reply}-token replies" in capsys.readouterr().out

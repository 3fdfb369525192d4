"""Replicas spanning nodes (#13 item 5, stage 2a): the planning core only.

A model one node of a GPU type cannot hold (Qwen3-235B-A22B in bf16 on A100-40GB) is planned over
the fewest nodes that hold it, vLLM only (tensor parallel within a node, pipeline parallel across
nodes), and only when asked (``Workload.multi_node`` / ``plan(multi_node=True)``, ``qwenctl plan``):
the controller's plans do not change.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from qwen_operator.api.spec import QwenDeploymentSpec
from qwen_operator.capacity.model import PIPELINE_HOP_LATENCY_S, ReplicaModel
from qwen_operator.catalog import DEFAULT_GPUS, DEFAULT_MODELS, Catalog, CatalogError, load_catalog
from qwen_operator.catalog.gpus import GBPS
from qwen_operator.cli import main
from qwen_operator.planner import NO_GPU_TYPE_FITS, OK, Workload, candidate_for, candidates, plan
from qwen_operator.planner.placement import DEFAULT_POLICY, _fit, _fit_stages, multi_node_candidate

BIG = "Qwen/Qwen3-235B-A22B"
A100_40 = DEFAULT_GPUS["A100-40GB"]


def _work(model: str = BIG, engine: str = "vllm", **kw: object) -> Workload:
    return Workload(DEFAULT_MODELS[model], engine=engine, multi_node=True, **kw)  # type: ignore[arg-type]


def test_catalog_has_qwen3_235b() -> None:
    m = DEFAULT_MODELS[BIG]
    assert m.is_moe and m.weight_bytes("none") > 8 * A100_40.memory_bytes  # 470 GB > one 8x 40 GB node


def test_235b_bf16_on_a100_40gb_needs_the_fewest_nodes_that_fit() -> None:
    work = _work()
    single = candidate_for(work, A100_40)
    assert not single.fits and "does not fit on one node" in single.reason
    c = multi_node_candidate(work, A100_40)
    assert c.fits and c.nodes > 1 and c.shards == A100_40.max_gpus_per_node
    assert c.gpus_per_replica == c.nodes * c.shards
    assert c.price_per_hour == pytest.approx(c.gpus_per_replica * A100_40.price_per_gpu_hour)
    # the fewest: one node fewer does not fit (one node is candidate_for's answer above)
    assert _fit_stages(work, A100_40, c.shards, c.nodes, DEFAULT_POLICY)[0]
    if c.nodes > 2:
        assert not _fit_stages(work, A100_40, c.shards, c.nodes - 1, DEFAULT_POLICY)[0]
    assert c.nodes == 2  # 470 GB over 16x 40 GB
    assert "LeaderWorkerSet" in c.reason and "needs the LeaderWorkerSet CRD" in c.reason
    # per GPU: about 1/16 of the weights (the heaviest stage: 47 of 94 layers plus one vocabulary matrix)
    whole = DEFAULT_MODELS[BIG].weight_bytes("none")
    assert whole / 16 <= c.weights_per_gpu < whole / 16 * 1.02


def test_a10g_takes_more_nodes_and_each_fewer_does_not_fit() -> None:
    work, a10g = _work(), DEFAULT_GPUS["A10G"]
    c = multi_node_candidate(work, a10g)
    assert c.fits and c.nodes == 4 and c.gpus_per_replica == 32
    assert not any(_fit_stages(work, a10g, 8, n, DEFAULT_POLICY)[0] for n in range(2, c.nodes))


@pytest.mark.parametrize("model", ["Qwen/Qwen3-14B", "Qwen/Qwen2.5-72B-Instruct", "Qwen/Qwen3-30B-A3B"])
@pytest.mark.parametrize("engine", ["tgi", "vllm"])
def test_a_model_that_fits_one_node_never_spans_nodes(model: str, engine: str) -> None:
    gpus = list(DEFAULT_GPUS.values())
    one = Workload(DEFAULT_MODELS[model], engine=engine, slo_seconds=1.2)
    assert candidates(replace(one, multi_node=True), gpus) == candidates(one, gpus)  # unchanged, field by field
    assert all(c.nodes == 1 for c in candidates(replace(one, multi_node=True), gpus))


def test_a_replica_that_fits_in_memory_but_misses_the_slo_does_not_span_nodes() -> None:
    work = _work("Qwen/Qwen3-32B", slo_seconds=0.001)
    a10g = DEFAULT_GPUS["A10G"]
    single = candidate_for(work, a10g)
    assert not single.fits and single.idle_ttft > 0  # fits in memory, misses the SLO
    assert multi_node_candidate(work, a10g) == single


def test_tgi_gets_no_multi_node_candidate_and_says_why() -> None:
    work = _work(engine="tgi")
    found = candidates(work, list(DEFAULT_GPUS.values()))
    assert all(c.nodes == 1 and not c.fits for c in found)
    a100 = next(c for c in found if c.gpu_type == "A100-40GB")
    assert "tgi cannot run one replica across nodes" in a100.reason and "engine vllm can" in a100.reason
    with pytest.raises(ValueError, match="across nodes"):
        ReplicaModel.build_for("tgi", BIG, "A100-40GB", 4, nodes=2)


def test_multi_node_only_when_asked() -> None:
    spec = QwenDeploymentSpec.model_validate(
        {
            "model": {"name": BIG, "registry": "s3://m/q", "version": "v1"},
            "runtime": {"engine": "vllm"},
            "placement": {"gpuTypes": ["A100-40GB"]},
            "replicas": 1,
        }
    )
    controller = plan(spec, Catalog())
    assert controller.reason_code == NO_GPU_TYPE_FITS and all(c.nodes == 1 for c in controller.candidates)
    cli = plan(spec, Catalog(), multi_node=True, free_gpus={"A100-40GB": [8, 8, 8, 4]})
    assert cli.reason_code == OK and cli.candidates[0].nodes == 2
    pool = cli.pools[0]
    assert (pool.replicas, pool.shards) == (1, 8)  # shards: GPUs per node
    # per node: 3 nodes with a whole stage free make one 2-node group; a second replica has no room
    two = plan(spec, Catalog(), multi_node=True, replicas=2, free_gpus={"A100-40GB": [8, 8, 8, 4]})
    assert two.placed == 1 and two.unplaced == 1
    total = plan(spec, Catalog(), multi_node=True, replicas=3, free_gpus={"A100-40GB": 32})
    assert total.placed == 2  # 32 GPUs = two 16-GPU replicas


def test_per_token_latency_grows_with_nodes() -> None:
    steps = [
        ReplicaModel.build_for("vllm", BIG, "A100-40GB", 8, nodes=n).decode_step_seconds(1, 1000) for n in (2, 3, 4)
    ]
    assert steps[0] < steps[1] < steps[2]  # pipeline stages do not shorten a token; each hop adds
    assert steps[1] - steps[0] == pytest.approx(steps[2] - steps[1])
    assert steps[1] - steps[0] > PIPELINE_HOP_LATENCY_S


def test_lower_internode_bandwidth_lowers_throughput() -> None:
    model = DEFAULT_MODELS[BIG]
    fast = ReplicaModel(model, A100_40, 8, engine="vllm", nodes=4)
    slow = ReplicaModel(model, replace(A100_40, internode_bytes_per_s=10 * GBPS), 8, engine="vllm", nodes=4)
    assert slow.decode_step_seconds(32, 32_000) > fast.decode_step_seconds(32, 32_000)
    assert slow.pipeline_decode_tokens_per_second(32) < fast.pipeline_decode_tokens_per_second(32)
    assert slow.prefill_seconds(4096) > fast.prefill_seconds(4096)
    work = _work()
    planner_fast = multi_node_candidate(work, A100_40)
    planner_slow = multi_node_candidate(work, replace(A100_40, internode_bytes_per_s=10 * GBPS))
    assert planner_slow.nodes == planner_fast.nodes and planner_slow.throughput < planner_fast.throughput


def test_pipeline_throughput_is_nodes_micro_batches_bounded_by_a_pass() -> None:
    r = ReplicaModel.build_for("vllm", BIG, "A100-40GB", 8, nodes=4)
    one_pass = r.decode_step_seconds(32, 32_000)
    rate = r.pipeline_decode_tokens_per_second(32, 1000)
    assert rate <= 4 * 32 / one_pass + 1e-9  # no faster than nodes micro-batches each waiting a full pass
    assert rate > 32 / one_pass  # faster than one batch in flight


def test_replica_model_across_nodes_holds_a_stage_per_node() -> None:
    one_stage_kv = DEFAULT_MODELS[BIG].kv_bytes_per_token_per_shard(8)
    r = ReplicaModel.build_for("vllm", BIG, "A100-40GB", 8, nodes=2)
    assert r.gpus == 16
    assert r.kv_bytes_per_token_per_gpu == one_stage_kv / 2  # 47 of 94 layers
    assert r.kv_capacity_tokens > 16384
    assert r.cold_start.load_s < ReplicaModel.build_for("vllm", BIG, "A100-80GB", 8).cold_start.load_s
    with pytest.raises(ValueError, match="KV cache holds 0 tokens"):
        ReplicaModel.build_for("vllm", BIG, "A100-40GB", 8)  # one node of 40 GB GPUs cannot


def test_catalog_internode_override_and_its_validation() -> None:
    cat = load_catalog({"catalog": {"gpuTypes": {"A100-40GB": {"interNodeGbps": 200}}}})
    assert cat.gpus["A100-40GB"].internode_bytes_per_s == 200 * GBPS
    assert DEFAULT_GPUS["A100-40GB"].internode_bytes_per_s == 400 * GBPS
    for bad in (0, -5, "fast", True):
        with pytest.raises(CatalogError, match=r"catalog\.gpuTypes\.A100-40GB\.interNodeGbps"):
            load_catalog({"catalog": {"gpuTypes": {"A100-40GB": {"interNodeGbps": bad}}}})


def test_a_gpu_type_without_internode_bandwidth_plans_no_replica_across_nodes() -> None:
    cat = load_catalog(
        {
            "catalog": {
                "gpuTypes": {
                    "H20": {
                        "productLabel": "NVIDIA-H20",
                        "memoryGB": 24,
                        "bandwidthGBps": 1000,
                        "bf16TFLOPS": 100,
                        "pricePerGPUHour": 1.0,
                    }
                }
            }
        }
    )
    c = multi_node_candidate(_work(), cat.gpus["H20"])
    assert not c.fits and c.nodes == 1 and "catalog.gpuTypes.H20.interNodeGbps" in c.reason
    assert not any(_fit(_work(), cat.gpus["H20"], n, DEFAULT_POLICY)[0] for n in (1, 2, 4, 8))


def test_qwenctl_plan_shows_nodes_and_the_leaderworkerset_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "q.yaml"
    f.write_text(
        "apiVersion: serving.qwenops.io/v1alpha1\nkind: QwenDeployment\nmetadata: {name: q}\n"
        f"spec:\n  model: {{name: {BIG}, registry: 's3://m/q', version: v1}}\n"
        "  runtime: {engine: vllm}\n  placement: {gpuTypes: [A100-40GB]}\n  replicas: 1\n"
    )
    assert main(["plan", "-f", str(f), "--gpus", "a100-40gb=32"]) == 0
    out = capsys.readouterr().out
    assert "NODES" in out and "LeaderWorkerSetNotInstalled" in out
    row = next(line for line in out.splitlines() if line.startswith("A100-40GB"))
    assert row.split()[:4] == ["A100-40GB", "8", "2", "16"]
    pool = out[out.index("POOL") :].splitlines()[1].split()
    assert pool[:5] == ["A100-40GB", "1", "8", "2", "16"]
    # render shows what the operator applies in a cluster with LeaderWorkerSet: one group of 2 pods
    assert main(["render", "-f", str(f)]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    (lws,) = [d for d in docs if d and d["kind"] == "LeaderWorkerSet"]
    assert not [d for d in docs if d and d["kind"] == "Deployment" and d["metadata"]["name"] == "q-a100-40gb"]
    assert lws["metadata"]["name"] == "q-a100-40gb" and lws["spec"]["leaderWorkerTemplate"]["size"] == 2

"""Pools whose replica spans nodes: planned only with the LeaderWorkerSet CRD, rendered as one
LeaderWorkerSet per pool, reconciled (status, zero writes at rest, removal), simulated, rolled."""

from __future__ import annotations

import copy
from typing import Any

from qwen_operator.api.spec import QwenDeploymentSpec
from qwen_operator.autoscale.loop import pool_targets
from qwen_operator.catalog import load_catalog
from qwen_operator.controller.reconcile import Observed, compute
from qwen_operator.controller.rollout import (
    ModelState,
    Resolution,
    SyncInput,
    decide,
    no_canary_reason,
    pools_on,
    template_version,
)
from qwen_operator.planner import plan
from qwen_operator.render.lws import LEADER_SCRIPT, LWS_KIND, WORKER_COMPONENT, WORKER_SCRIPT
from qwen_operator.render.manifests import render
from qwen_operator.render.names import LABEL_COMPONENT
from qwen_operator.render.workload import RenderContext, pod_gpu_products
from qwen_operator.sim.pod_replica import pod_replica

CATALOG = load_catalog(None)
BIG = "Qwen/Qwen3-235B-A22B"


def big_spec(**over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"name": BIG, "registry": f"hf://{BIG}"},
        "runtime": {"engine": "vllm"},
        "placement": {"gpuTypes": ["A100-40GB"]},
        "replicas": 1,
        "routing": {"enabled": False},
    }
    spec.update(over)
    return spec


def qwd(**over: Any) -> dict[str, Any]:
    return {
        "apiVersion": "serving.qwenops.io/v1alpha1",
        "kind": "QwenDeployment",
        "metadata": {"name": "big", "namespace": "llm", "uid": "u-1", "generation": 1},
        "spec": big_spec(**over),
        "status": {},
    }


def node(name: str, gpus: int = 8) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB"}},
        "spec": {},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}, "conditions": [{"type": "Ready", "status": "True"}]},
    }


NODES = [node(f"a{i}") for i in range(4)]


def lws_of(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    (lws,) = [m for m in manifests if m["kind"] == LWS_KIND]
    return lws


def as_live(m: dict[str, Any], ready: int | None = None) -> dict[str, Any]:
    live = copy.deepcopy(m)
    live["metadata"]["generation"] = 1
    if m["kind"] in ("Deployment", LWS_KIND):
        n = m["spec"]["replicas"]
        r = n if ready is None else ready
        live["status"] = {"observedGeneration": 1, "replicas": n, "updatedReplicas": n, "readyReplicas": r}
    return live


def test_the_planner_spans_nodes_only_when_asked_and_the_pool_carries_its_nodes() -> None:
    spec = QwenDeploymentSpec.model_validate(big_spec(replicas=2))
    one_node = plan(spec, CATALOG, free_gpus={"A100-40GB": [8, 8, 8, 8]})
    assert one_node.reason_code == "NoGPUTypeFits" and not one_node.pools
    across = plan(spec, CATALOG, free_gpus={"A100-40GB": [8, 8, 8, 8]}, multi_node=True)
    (pool,) = across.pools
    assert (pool.replicas, pool.shards, pool.nodes, pool.gpus) == (2, 8, 2, 32)
    # three free nodes hold one group of two, not two groups
    short = plan(spec, CATALOG, free_gpus={"A100-40GB": [8, 8, 8]}, multi_node=True)
    assert short.placed == 1 and short.unplaced == 1


def test_a_pool_across_nodes_renders_one_leader_worker_set_of_leader_and_workers() -> None:
    spec = QwenDeploymentSpec.model_validate(big_spec())
    the_plan = plan(spec, CATALOG, multi_node=True)
    manifests = render(spec, the_plan, RenderContext(name="big", namespace="llm"), CATALOG)
    assert not [m for m in manifests if m["kind"] == "Deployment"]  # no routing: the pool is the only workload
    lws = lws_of(manifests)
    assert lws["apiVersion"] == "leaderworkerset.x-k8s.io/v1" and lws["metadata"]["name"] == "big-a100-40gb"
    body = lws["spec"]
    assert body["replicas"] == 1 and body["leaderWorkerTemplate"]["size"] == 2
    assert body["rolloutStrategy"]["rollingUpdateConfiguration"] == {"maxSurge": 1, "maxUnavailable": 0}
    leader = body["leaderWorkerTemplate"]["leaderTemplate"]
    worker = body["leaderWorkerTemplate"]["workerTemplate"]
    assert leader["metadata"]["labels"][LABEL_COMPONENT] == "server"
    assert worker["metadata"]["labels"][LABEL_COMPONENT] == WORKER_COMPONENT
    (engine,) = leader["spec"]["containers"]
    assert engine["command"] == ["/bin/sh", "-c", LEADER_SCRIPT, "vllm-leader"]
    args = engine["args"]
    flag = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}
    assert flag["--tensor-parallel-size"] == "8" and flag["--pipeline-parallel-size"] == "2"
    assert flag["--distributed-executor-backend"] == "ray"
    assert engine["resources"]["limits"]["nvidia.com/gpu"] == "8"
    (ray,) = worker["spec"]["containers"]
    assert ray["command"] == ["/bin/sh", "-c", WORKER_SCRIPT] and "LWS_LEADER_ADDRESS" in WORKER_SCRIPT
    assert ray["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert "readinessProbe" not in ray and "ports" not in ray
    # every pod of the group pulls the model to its own node and selects the pool's GPU type
    for tmpl in (leader, worker):
        assert [c["name"] for c in tmpl["spec"]["initContainers"]][0] == "model-pull"
        assert pod_gpu_products(tmpl["spec"]) == ["NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-PCIE-40GB"]
    # the watcher reads the version from the leader's template
    assert template_version(lws) == spec.model.version == "stable"


def test_a_full_pool_across_nodes_rolls_in_place_one_group_at_a_time() -> None:
    spec = QwenDeploymentSpec.model_validate(big_spec())
    the_plan = plan(spec, CATALOG, multi_node=True)
    ctx = RenderContext(name="big", namespace="llm", no_surge_pools=("A100-40GB",))
    lws = lws_of(render(spec, the_plan, ctx, CATALOG))
    assert lws["spec"]["rolloutStrategy"]["rollingUpdateConfiguration"] == {"maxSurge": 0, "maxUnavailable": 1}


def test_without_the_crd_the_resource_says_which_controller_to_install() -> None:
    out = compute(Observed(qwd=qwd(), nodes=NODES), CATALOG, now="T")
    assert not [m for m in out.apply if m["kind"] in ("Deployment", LWS_KIND)]
    assert out.status is not None
    degraded = next(c for c in out.status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "LeaderWorkerSetNotInstalled"
    assert "leaderworkersets.leaderworkerset.x-k8s.io" in degraded["message"]
    assert "2 nodes x 8x A100-40GB" in degraded["message"]


def test_with_the_crd_the_pool_is_a_leader_worker_set_that_converges_to_zero_writes() -> None:
    obs = Observed(qwd=qwd(), nodes=NODES, lws_crd=True)
    first = compute(obs, CATALOG, now="T")
    lws = lws_of(first.apply)
    assert any(e.reason == "PoolCreated" and "2 nodes x 8 GPU(s)" in e.message for e in first.events)
    assert first.status is not None
    status = {**first.status}
    live = [as_live(lws)]
    others = [as_live(m) for m in first.apply if m["kind"] != LWS_KIND]
    settled = Observed(qwd={**obs.qwd, "status": status}, deployments=live, others=others, nodes=NODES, lws_crd=True)
    second = compute(settled, CATALOG, now="T")
    assert second.status is not None
    (pool,) = second.status["pools"]
    assert pool["kind"] == LWS_KIND and pool["nodes"] == 2 and pool["shards"] == 8 and pool["readyReplicas"] == 1
    assert pool["costPerHour"] > 0
    ready = next(c for c in second.status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    at_rest = Observed(
        qwd={**obs.qwd, "status": second.status}, deployments=live, others=others, nodes=NODES, lws_crd=True
    )
    assert compute(at_rest, CATALOG, now="T").writes == 0
    # scaled to 2 groups: the LeaderWorkerSet's replicas, nothing else
    scaled = compute(
        Observed(
            qwd={**qwd(replicas=2), "status": second.status},
            deployments=live,
            others=others,
            nodes=NODES,
            lws_crd=True,
        ),
        CATALOG,
        now="T",
    )
    assert [m["spec"]["replicas"] for m in scaled.apply if m["kind"] == LWS_KIND] == [2]
    assert any(e.reason == "PoolResized" for e in scaled.events)


def test_the_simulated_fleet_reads_the_leaders_pipeline_degree() -> None:
    spec = QwenDeploymentSpec.model_validate(big_spec())
    lws = lws_of(
        render(spec, plan(spec, CATALOG, multi_node=True), RenderContext(name="big", namespace="llm"), CATALOG)
    )
    leader = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]
    pod = {"metadata": {"name": "big-a100-40gb-0", **leader["metadata"]}, "spec": leader["spec"], "status": {}}
    rep = pod_replica(pod)
    assert rep.shards == 8 and dict(rep.limits)["nodes"] == 2 and rep.chat.engine == "vllm"


def test_no_canary_for_leader_worker_set_pools_the_roll_is_promoted_without_one() -> None:
    lws = {"kind": LWS_KIND, "metadata": {"name": "big-a100-40gb", "labels": {}}}
    dep = {"kind": "Deployment", "metadata": {"name": "big-l40s", "labels": {}}}
    assert no_canary_reason([lws]) is not None
    assert no_canary_reason([lws, dep]) is None and no_canary_reason([]) is None
    model = ModelState(current="sha256:" + "a" * 64, target="sha256:" + "a" * 64)
    new = "sha256:" + "b" * 64
    step = decide(
        SyncInput(
            spec_version="latest",
            canary_replicas=1,
            model=model,
            resolution=Resolution(digest=new),
            sync_bytes=0,
            pools_settled_on_target=False,
            canary_urls=None,
            no_canary=no_canary_reason([lws]),
        )
    )
    assert step.model.target == new and not step.model.testing
    assert step.model.canary is None and step.condition.reason == "RollingOut"
    assert any(reason == "CanarySkipped" and "spanning nodes" in msg for _, reason, msg in step.events)
    assert not pools_on([lws], new)  # its template is not on the new version yet


def test_autoscaler_pool_targets_need_whole_groups_of_nodes() -> None:
    start, left = pool_targets({"A100-40GB": 2}, {}, {"A100-40GB": [8, 8, 8]}, {"A100-40GB": 8}, {"A100-40GB": 2})
    assert start == {"A100-40GB": 1} and left == {"A100-40GB": [0, 0, 8]}


def test_the_workers_have_their_own_disruption_budget() -> None:
    """A drain that evicts a worker restarts its whole group; the leaders' PDB does not select workers."""
    spec = QwenDeploymentSpec.model_validate(big_spec())
    ctx = RenderContext(name="big", namespace="llm")
    one = render(spec, plan(spec, CATALOG, replicas=1, multi_node=True), ctx, CATALOG)
    (pdb,) = [m for m in one if m["kind"] == "PodDisruptionBudget" and m["metadata"]["name"] == "big-workers"]
    assert pdb["spec"]["maxUnavailable"] == 0  # the only group: no voluntary eviction of its workers
    assert pdb["spec"]["selector"]["matchLabels"] == {
        "serving.qwenops.io/deployment": "big",
        LABEL_COMPONENT: WORKER_COMPONENT,
    }
    two = render(spec, plan(spec, CATALOG, replicas=2, multi_node=True), ctx, CATALOG)
    (pdb,) = [m for m in two if m["kind"] == "PodDisruptionBudget" and m["metadata"]["name"] == "big-workers"]
    assert pdb["spec"]["maxUnavailable"] == 1
    small = QwenDeploymentSpec.model_validate(big_spec(model={"name": "Qwen/Qwen3-14B", "registry": "hf://x/y"}))
    flat = render(small, plan(small, CATALOG, multi_node=True), ctx, CATALOG)
    assert [m["metadata"]["name"] for m in flat if m["kind"] == "PodDisruptionBudget"] == ["big"]


def test_a_pool_moving_from_a_leader_worker_set_to_one_node_keeps_it_until_the_replacement_is_ready() -> None:
    """gpuTypes changed to A100-80GB, where one node holds the model: a pool Deployment replaces the
    LeaderWorkerSet, which is deleted only once the Deployment's replica is Ready."""
    first = compute(Observed(qwd=qwd(), nodes=NODES, lws_crd=True), CATALOG, now="T")
    live_lws = as_live(lws_of(first.apply))
    a100 = {**node("b0"), "metadata": {"name": "b0", "labels": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}}}
    moved = qwd(placement={"gpuTypes": ["A100-80GB"]})
    out = compute(Observed(qwd=moved, deployments=[live_lws], nodes=[*NODES, a100], lws_crd=True), CATALOG, now="T")
    (dep,) = [m for m in out.apply if m["kind"] == "Deployment"]
    assert dep["metadata"]["name"] == "big-a100-80gb"
    assert not out.delete  # the LeaderWorkerSet serves until its replacement is Ready
    ready = compute(
        Observed(qwd=moved, deployments=[live_lws, as_live(dep)], nodes=[*NODES, a100], lws_crd=True),
        CATALOG,
        now="T",
    )
    assert [(d["kind"], d["metadata"]["name"]) for d in ready.delete] == [(LWS_KIND, "big-a100-40gb")]
    assert any(e.reason == "PoolRemoved" and "LeaderWorkerSet big-a100-40gb" in e.message for e in ready.events)

"""The reconciler's data-plane share: router objects applied, pruned when routing is switched off,
never mistaken for a GPU pool, and the router's capacity weights in status.pools."""

from __future__ import annotations

import copy
from typing import Any

from qwen_operator.api import QwenDeploymentSpec
from qwen_operator.catalog import load_catalog
from qwen_operator.controller.reconcile import Observed, compute
from qwen_operator.controller.routing import is_router, pool_capacity, stale_objects
from qwen_operator.planner import plan

CATALOG = load_catalog(None)
DIGEST = "sha256:" + "a" * 64


def qwd(**spec_over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"name": "Qwen/Qwen3-14B", "registry": "s3://models/qwen3-14b", "quantization": "fp8"},
        "placement": {"gpuTypes": ["A10G", "L40S"]},
        "replicas": 2,
    }
    spec.update(spec_over)
    return {
        "apiVersion": "serving.qwenops.io/v1alpha1",
        "kind": "QwenDeployment",
        "metadata": {"name": "chat", "namespace": "llm", "uid": "u-1", "generation": 3},
        "spec": spec,
        # the version watcher resolved the tag (pools are created on a digest)
        "status": {"model": {"currentVersion": DIGEST, "targetVersion": DIGEST, "resolvedFrom": "stable"}},
    }


def node(name: str, product: str, gpus: int) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": product}},
        "spec": {},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}, "conditions": [{"type": "Ready", "status": "True"}]},
    }


NODES = [node("l0", "NVIDIA-L40S", 1), node("a0", "NVIDIA-A10G", 4)]


def as_live(manifest: dict[str, Any], n: int = 0) -> dict[str, Any]:
    live = copy.deepcopy(manifest)
    live["metadata"].update(generation=1, uid=f"uid-{n}")
    if manifest["kind"] == "Deployment":
        r = manifest["spec"]["replicas"]
        live["status"] = {"observedGeneration": 1, "replicas": r, "updatedReplicas": r, "readyReplicas": r}
    return live


def split(objs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """What the handlers hand the reconciler: pool Deployments, and every other owned object."""
    pools = [o for o in objs if o["kind"] == "Deployment" and not is_router(o)]
    return pools, [o for o in objs if o not in pools]


def converge(obs: Observed, rounds: int = 6) -> Observed:
    for _ in range(rounds):
        out = compute(obs, CATALOG, now="T")
        if not out.writes:
            return obs
        live = {(o["kind"], o["metadata"]["name"]): o for o in [*obs.deployments, *obs.others]}
        for i, m in enumerate(out.apply):
            live[(m["kind"], m["metadata"]["name"])] = as_live(m, i)
        for d in out.delete:
            live.pop((d["kind"], d["metadata"]["name"]))
        new_qwd = copy.deepcopy(dict(obs.qwd))
        if out.status is not None:
            new_qwd["status"] = {**new_qwd.get("status", {}), **out.status}
        pools, others = split(list(live.values()))
        obs = Observed(
            qwd=new_qwd,
            deployments=pools,
            others=others,
            nodes=obs.nodes,
            pods=obs.pods,
            service_monitor_crd=obs.service_monitor_crd,
        )
    raise AssertionError("did not converge")


def test_first_reconcile_applies_the_router_objects_without_a_pool_event_for_it() -> None:
    out = compute(Observed(qwd=qwd(), nodes=NODES), CATALOG, now="T")
    applied = {(m["kind"], m["metadata"]["name"]) for m in out.apply}
    assert {
        ("Deployment", "chat-router"),
        ("ServiceAccount", "chat-router"),
        ("Role", "chat-router"),
        ("RoleBinding", "chat-router"),
        ("PodDisruptionBudget", "chat-router"),
        ("Service", "chat-servers"),
        ("Service", "chat"),
    } <= applied
    assert not [e for e in out.events if e.reason.startswith("Pool") and "chat-router" in e.message]
    assert not [e for e in out.events if "None" in e.message]


def test_converged_world_with_the_router_needs_zero_writes_and_lists_only_gpu_pools() -> None:
    obs = converge(Observed(qwd=qwd(), nodes=NODES))
    assert not compute(obs, CATALOG, now="T").writes
    pools = obs.qwd["status"]["pools"]
    assert {p["gpuType"] for p in pools} == {"L40S", "A10G"}  # the router Deployment is not a pool
    assert obs.qwd["status"]["readyReplicas"] == 2  # router replicas are not server replicas
    ready = next(c for c in obs.qwd["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"


def test_status_pools_carry_the_planners_capacity_for_the_router() -> None:
    obs = converge(Observed(qwd=qwd(runtime={"maxConcurrentRequests": 96}), nodes=NODES))
    spec = QwenDeploymentSpec.model_validate(obs.qwd["spec"])
    the_plan = plan(spec, CATALOG)
    for pool in obs.qwd["status"]["pools"]:
        cand = the_plan.candidate(pool["gpuType"])
        assert cand is not None and cand.slo_rate > 0
        assert pool["capacityRequestsPerSecond"] == round(cand.slo_rate, 3)
        assert pool["prefillTokensPerSecond"] > 0
        assert pool["maxConcurrentRequests"] == 96
    by_type = {p["gpuType"]: p for p in obs.qwd["status"]["pools"]}
    # an L40S replica outruns an A10G replica (the router's weights must say so)
    assert by_type["L40S"]["capacityRequestsPerSecond"] > by_type["A10G"]["capacityRequestsPerSecond"]
    assert by_type["L40S"]["prefillTokensPerSecond"] > by_type["A10G"]["prefillTokensPerSecond"]


def test_switching_routing_off_prunes_the_router_and_keeps_the_rest() -> None:
    obs = converge(Observed(qwd=qwd(), nodes=NODES))
    off = copy.deepcopy(dict(obs.qwd))
    off["spec"]["routing"] = {"enabled": False}
    out = compute(Observed(qwd=off, deployments=obs.deployments, others=obs.others, nodes=NODES), CATALOG, now="T")
    deleted = {(d["kind"], d["metadata"]["name"]) for d in out.delete}
    assert deleted == {
        ("Deployment", "chat-router"),
        ("PodDisruptionBudget", "chat-router"),
        ("ServiceAccount", "chat-router"),
        ("Role", "chat-router"),
        ("RoleBinding", "chat-router"),
        ("Service", "chat-servers"),
    }
    assert all(d["metadata"].get("uid") for d in out.delete)  # deleted with a uid precondition
    # the client Service now selects the server pods directly
    svc = next(m for m in out.apply if (m["kind"], m["metadata"]["name"]) == ("Service", "chat"))
    assert svc["spec"]["selector"]["app.kubernetes.io/component"] == "server"
    # and converges with no router left
    final = converge(Observed(qwd=off, deployments=obs.deployments, others=obs.others, nodes=NODES))
    assert not [o for o in final.others if o["metadata"]["name"] in ("chat-router", "chat-servers")]


def test_stale_objects_never_touches_pool_deployments_or_objects_being_deleted() -> None:
    labels = {"app.kubernetes.io/component": "server"}
    pool = {"kind": "Deployment", "metadata": {"name": "chat-a10g", "labels": labels}}
    going = {"kind": "Role", "metadata": {"name": "chat-router", "deletionTimestamp": "T"}}
    assert stale_objects([], [pool, going]) == []


def test_switching_routing_off_prunes_the_routers_service_monitor_too() -> None:
    """With the Prometheus Operator present the router has its own ServiceMonitor; turning routing off
    must delete it (it used to stay, scraping nothing), while the servers' ServiceMonitor stays."""
    obs = converge(Observed(qwd=qwd(), nodes=NODES, service_monitor_crd=True))
    monitors = {o["metadata"]["name"] for o in obs.others if o["kind"] == "ServiceMonitor"}
    assert monitors == {"chat", "chat-router"}, monitors
    off = copy.deepcopy(dict(obs.qwd))
    off["spec"]["routing"] = {"enabled": False}
    out = compute(
        Observed(qwd=off, deployments=obs.deployments, others=obs.others, nodes=NODES, service_monitor_crd=True),
        CATALOG,
        now="T",
    )
    deleted = {(d["kind"], d["metadata"]["name"]) for d in out.delete}
    assert ("ServiceMonitor", "chat-router") in deleted
    assert ("ServiceMonitor", "chat") not in deleted


def test_pool_capacity_leaves_out_what_is_unknown() -> None:
    spec = QwenDeploymentSpec.model_validate(qwd()["spec"])
    assert pool_capacity(spec, CATALOG, None) == {"maxConcurrentRequests": 128}

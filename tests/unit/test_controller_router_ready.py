"""Ready considers the router: with routing on, clients reach the servers only through a Ready
router pod, so no Ready router replica means the QwenDeployment is not Ready (RouterNotReady),
whatever the server pools say; the pure rule, then through the reconciler."""

from __future__ import annotations

import copy
from typing import Any

from qwen_operator.api import QwenDeploymentSpec
from qwen_operator.catalog import load_catalog
from qwen_operator.controller import conditions as cond
from qwen_operator.controller.reconcile import Observed, compute
from qwen_operator.controller.routing import is_router, router_not_ready

CATALOG = load_catalog(None)
DIGEST = "sha256:" + "b" * 64
ROUTER_LABELS = {"app.kubernetes.io/component": "router", "serving.qwenops.io/deployment": "chat"}


def spec(**over: Any) -> QwenDeploymentSpec:
    raw: dict[str, Any] = {
        "model": {"name": "Qwen/Qwen3-14B", "registry": "s3://models/qwen3-14b", "quantization": "fp8"},
        "placement": {"gpuTypes": ["A10G", "L40S"]},
        "replicas": 2,
    }
    raw.update(over)
    return QwenDeploymentSpec.model_validate(raw)


def router_dep(
    ready: int | None, replicas: int = 2, name: str = "chat-router", kind: str = "Deployment"
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "kind": kind,
        "metadata": {"name": name, "labels": dict(ROUTER_LABELS)},
        "spec": {"replicas": replicas},
    }
    if ready is not None:
        obj["status"] = {"replicas": replicas, "readyReplicas": ready}
    return obj


# --- the pure rule ---------------------------------------------------------------------------------


def test_no_ready_router_replica_is_router_not_ready() -> None:
    down = router_not_ready(spec(), "chat", [router_dep(0)])
    assert down is not None and down.type == cond.READY and down.status is False
    assert down.reason == "RouterNotReady"
    assert "0/2 router replicas ready" in down.message and "chat-router" in down.message
    # a Deployment the Deployment controller has not reported on yet has no readyReplicas
    fresh = router_not_ready(spec(), "chat", [router_dep(None)])
    assert fresh is not None and fresh.reason == "RouterNotReady"


def test_the_router_deployment_missing_is_router_not_ready() -> None:
    # other router objects of the same name (PDB, ServiceAccount) are not the Deployment
    others = [router_dep(2, kind="PodDisruptionBudget"), router_dep(2, kind="ServiceAccount")]
    down = router_not_ready(spec(), "chat", others)
    assert down is not None and "does not exist yet" in down.message
    # nor is another QwenDeployment's router
    assert router_not_ready(spec(), "chat", [router_dep(2, name="other-router")]) is not None


def test_one_ready_router_replica_is_enough() -> None:
    assert router_not_ready(spec(), "chat", [router_dep(1)]) is None
    assert router_not_ready(spec(), "chat", [router_dep(2)]) is None


def test_without_the_router_its_readiness_does_not_matter() -> None:
    assert router_not_ready(spec(routing={"enabled": False}), "chat", []) is None
    assert router_not_ready(spec(routing={"enabled": False}), "chat", [router_dep(0)]) is None


# --- through the reconciler ------------------------------------------------------------------------


def qwd(**spec_over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "model": {"name": "Qwen/Qwen3-14B", "registry": "s3://models/qwen3-14b", "quantization": "fp8"},
        "placement": {"gpuTypes": ["A10G", "L40S"]},
        "replicas": 2,
    }
    raw.update(spec_over)
    return {
        "apiVersion": "serving.qwenops.io/v1alpha1",
        "kind": "QwenDeployment",
        "metadata": {"name": "chat", "namespace": "llm", "uid": "u-1", "generation": 1},
        "spec": raw,
        "status": {"model": {"currentVersion": DIGEST, "targetVersion": DIGEST, "resolvedFrom": "stable"}},
    }


NODES = [
    {
        "metadata": {"name": n, "labels": {"nvidia.com/gpu.product": p}},
        "spec": {},
        "status": {"allocatable": {"nvidia.com/gpu": str(g)}, "conditions": [{"type": "Ready", "status": "True"}]},
    }
    for n, p, g in (("l0", "NVIDIA-L40S", 1), ("a0", "NVIDIA-A10G", 4))
]


def as_live(manifest: dict[str, Any], router_ready: int | None) -> dict[str, Any]:
    """The object once applied and the Deployment controller reported (the router with ``router_ready``)."""
    live = copy.deepcopy(manifest)
    live["metadata"]["generation"] = 1
    if manifest["kind"] == "Deployment":
        n = manifest["spec"]["replicas"]
        r = router_ready if is_router(manifest) and router_ready is not None else n
        live["status"] = {"observedGeneration": 1, "replicas": n, "updatedReplicas": n, "readyReplicas": r}
    return live


def converge(obs: Observed, router_ready: int | None = None, rounds: int = 6) -> Observed:
    for _ in range(rounds):
        out = compute(obs, CATALOG, now="T")
        if not out.writes:
            return obs
        live = {(o["kind"], o["metadata"]["name"]): o for o in [*obs.deployments, *obs.others]}
        for m in out.apply:
            live[(m["kind"], m["metadata"]["name"])] = as_live(m, router_ready)
        for d in out.delete:
            live.pop((d["kind"], d["metadata"]["name"]))
        new_qwd = copy.deepcopy(dict(obs.qwd))
        if out.status is not None:
            new_qwd["status"] = {**new_qwd.get("status", {}), **out.status}
        objs = list(live.values())
        pools = [o for o in objs if o["kind"] == "Deployment" and not is_router(o)]
        obs = Observed(qwd=new_qwd, deployments=pools, others=[o for o in objs if o not in pools], nodes=obs.nodes)
    raise AssertionError("did not converge")


def ready_condition(obs: Observed) -> dict[str, Any]:
    return dict(next(c for c in obs.qwd["status"]["conditions"] if c["type"] == "Ready"))


def with_router_ready(obs: Observed, ready: int) -> Observed:
    others = [copy.deepcopy(o) for o in obs.others]
    for o in others:
        if o["kind"] == "Deployment" and is_router(o):
            o["status"]["readyReplicas"] = ready
    return Observed(qwd=obs.qwd, deployments=obs.deployments, others=others, nodes=obs.nodes)


def test_every_server_ready_but_no_router_replica_is_not_ready() -> None:
    obs = converge(Observed(qwd=qwd(), nodes=NODES), router_ready=0)
    ready = ready_condition(obs)
    assert (ready["status"], ready["reason"]) == ("False", "RouterNotReady")
    assert obs.qwd["status"]["readyReplicas"] == 2  # the servers are Ready: the router is what is missing
    # one router replica comes up: Ready, and nothing else to write but that status
    out = compute(with_router_ready(obs, 1), CATALOG, now="T2")
    assert not out.apply and not out.delete and out.status is not None
    after = next(c for c in out.status["conditions"] if c["type"] == "Ready")
    assert (after["status"], after["reason"]) == ("True", "AllReplicasReady")
    # and back down: not Ready again
    again = compute(with_router_ready(obs, 0), CATALOG, now="T3")
    assert again.status is None  # unchanged from the converged (RouterNotReady) status
    assert ready_condition(obs)["reason"] == "RouterNotReady"


def test_servers_not_ready_keep_their_own_reason() -> None:
    obs = converge(Observed(qwd=qwd(), nodes=NODES), router_ready=0)
    pools = [copy.deepcopy(d) for d in obs.deployments]
    for d in pools:
        d["status"]["readyReplicas"] = 0
    out = compute(Observed(qwd=obs.qwd, deployments=pools, others=obs.others, nodes=NODES), CATALOG, now="T2")
    assert out.status is not None
    ready = next(c for c in out.status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ReplicasNotReady")


def test_scaled_to_zero_is_ready_only_with_a_router_to_hold_requests() -> None:
    zero = {"enabled": True, "minReplicas": 0, "maxReplicas": 4}
    held = converge(Observed(qwd=qwd(scaling=zero, replicas=0), nodes=NODES))
    assert (ready_condition(held)["status"], ready_condition(held)["reason"]) == ("True", "ScaledToZero")
    down = converge(Observed(qwd=qwd(scaling=zero, replicas=0), nodes=NODES), router_ready=0)
    assert (ready_condition(down)["status"], ready_condition(down)["reason"]) == ("False", "RouterNotReady")


def test_routing_off_ignores_the_router() -> None:
    obs = converge(Observed(qwd=qwd(routing={"enabled": False}), nodes=NODES))
    assert ready_condition(obs)["reason"] == "AllReplicasReady"
    assert not [o for o in obs.others if is_router(o)]

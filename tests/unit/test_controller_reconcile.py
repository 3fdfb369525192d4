"""The pure reconcile: level-based, zero writes at rest, safe pool moves, status contract."""

from __future__ import annotations

import copy
from typing import Any

from qwen_operator.catalog import load_catalog
from qwen_operator.controller.reconcile import HASH_ANNOTATION, Observed, compute

CATALOG = load_catalog(None)


def qwd(**spec_over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        # hf://: versions are not tracked, so pools render at once (s3:// waits for a digest: test_controller_drift)
        "model": {"name": "Qwen/Qwen3-14B", "registry": "hf://Qwen/Qwen3-14B", "quantization": "fp8"},
        "placement": {"gpuTypes": ["A10G", "L40S"]},
        "replicas": 2,
        # these tests are about GPU pools; the router's objects are covered in test_controller_routing.py
        "routing": {"enabled": False},
    }
    spec.update(spec_over)
    return {
        "apiVersion": "serving.qwenops.io/v1alpha1",
        "kind": "QwenDeployment",
        "metadata": {"name": "chat", "namespace": "llm", "uid": "u-1", "generation": 3},
        "spec": spec,
        "status": {},
    }


def node(name: str, product: str, gpus: int) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": product}},
        "spec": {},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}, "conditions": [{"type": "Ready", "status": "True"}]},
    }


NODES = [node("l0", "NVIDIA-L40S", 1), node("a0", "NVIDIA-A10G", 4)]


def as_live(manifest: dict[str, Any], ready: int | None = None) -> dict[str, Any]:
    """What the API server would hold after applying ``manifest`` and the Deployment controller settling."""
    live = copy.deepcopy(manifest)
    live["metadata"]["generation"] = 1
    if manifest["kind"] == "Deployment":
        n = manifest["spec"]["replicas"]
        r = n if ready is None else ready
        live["status"] = {"observedGeneration": 1, "replicas": n, "updatedReplicas": n, "readyReplicas": r}
    return live


def converge(obs: Observed, rounds: int = 5) -> Observed:
    """Apply outcomes as the API server + controllers would, until nothing changes."""
    for _ in range(rounds):
        out = compute(obs, CATALOG, now="T")
        if not out.writes:
            return obs
        live = {(o["kind"], o["metadata"]["name"]): o for o in [*obs.deployments, *obs.others]}
        for m in out.apply:
            live[(m["kind"], m["metadata"]["name"])] = as_live(m)
        for d in out.delete:
            live.pop(("Deployment", d["metadata"]["name"]))
        new_qwd = copy.deepcopy(dict(obs.qwd))
        if out.status is not None:
            new_qwd["status"] = {**new_qwd.get("status", {}), **out.status}
        objs = list(live.values())
        obs = Observed(
            qwd=new_qwd,
            deployments=[o for o in objs if o["kind"] == "Deployment"],
            others=[o for o in objs if o["kind"] != "Deployment"],
            nodes=obs.nodes,
            pods=obs.pods,
        )
    raise AssertionError("did not converge")


def test_first_reconcile_creates_pools_cheapest_first_and_spills_over() -> None:
    out = compute(Observed(qwd=qwd(), nodes=NODES), CATALOG, now="T")
    deps = {m["metadata"]["name"]: m for m in out.apply if m["kind"] == "Deployment"}
    # L40S is cheapest per request/s within the SLO: its one free GPU takes one fp8 replica,
    # the second spills to A10G
    assert {n: d["spec"]["replicas"] for n, d in deps.items()} == {"chat-l40s": 1, "chat-a10g": 1}
    assert all(HASH_ANNOTATION in m["metadata"]["annotations"] for m in out.apply)
    assert {m["kind"] for m in out.apply} >= {"Service", "PodDisruptionBudget", "Deployment"}
    assert [e.reason for e in out.events] == ["PoolCreated", "PoolCreated"]
    assert out.status is not None and out.status["observedGeneration"] == 3
    ready = next(c for c in out.status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False"


def test_converged_world_needs_zero_writes_and_reports_ready() -> None:
    obs = converge(Observed(qwd=qwd(), nodes=NODES))
    again = compute(obs, CATALOG, now="T-later")
    assert again.writes == 0 and not again.events
    status = obs.qwd["status"]
    assert status["readyReplicas"] == 2 and status["replicas"] == 2 and status["readySummary"] == "2/2"
    assert status["poolSummary"] == "A10G:1,L40S:1"  # status lists planned pools by GPU type name
    assert status["selector"].startswith("app.kubernetes.io/component=server")
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Ready"]["status"] == "True" and conds["Degraded"]["status"] == "False"
    assert conds["Progressing"]["status"] == "False"


def test_changing_gpu_types_keeps_old_pool_until_replacement_is_ready() -> None:
    obs = converge(Observed(qwd=qwd(), nodes=NODES))
    moved = copy.deepcopy(dict(obs.qwd))
    moved["spec"]["placement"]["gpuTypes"] = ["A10G"]
    obs = Observed(qwd=moved, deployments=obs.deployments, others=obs.others, nodes=NODES)
    out = compute(obs, CATALOG, now="T")
    assert not out.delete  # replacement not applied yet
    resized = {m["metadata"]["name"]: m["spec"]["replicas"] for m in out.apply if m["kind"] == "Deployment"}
    assert resized == {"chat-a10g": 2}
    # replacement applied but only 1/2 ready: the L40S pool must stay
    live = [d for d in obs.deployments if d["metadata"]["name"] != "chat-a10g"]
    a10g = next(m for m in out.apply if m["metadata"]["name"] == "chat-a10g")
    half = Observed(qwd=moved, deployments=[*live, as_live(a10g, ready=1)], others=obs.others, nodes=NODES)
    out2 = compute(half, CATALOG, now="T")
    assert not out2.delete and not out2.apply
    prog = next(c for c in out2.status["conditions"] if c["type"] == "Progressing")  # type: ignore[index]
    assert prog["status"] == "True" and prog["reason"] == "WaitingForReplacement"
    # fully ready: now the old pool goes
    full = Observed(qwd=moved, deployments=[*live, as_live(a10g)], others=obs.others, nodes=NODES)
    out3 = compute(full, CATALOG, now="T")
    assert [d["metadata"]["name"] for d in out3.delete] == ["chat-l40s"]
    assert [e.reason for e in out3.events] == ["PoolRemoved"]


def test_invalid_spec_becomes_degraded_condition_without_touching_workloads() -> None:
    bad = qwd()
    bad["spec"]["model"]["name"] = "Qwen/Qwen9-1T"
    out = compute(Observed(qwd=bad, nodes=NODES), CATALOG, now="T")
    assert not out.apply and not out.delete
    conds = {c["type"]: c for c in out.status["conditions"]}  # type: ignore[index]
    assert conds["Degraded"]["status"] == "True" and conds["Degraded"]["reason"] == "ModelNotInCatalog"
    assert "Qwen9-1T" in conds["Degraded"]["message"]


def test_gpu_type_absent_from_cluster_is_degraded_with_reason() -> None:
    spec = qwd(placement={"gpuTypes": ["A100-80GB"]})
    out = compute(Observed(qwd=spec, nodes=NODES), CATALOG, now="T")
    conds = {c["type"]: c for c in out.status["conditions"]}  # type: ignore[index]
    assert conds["Degraded"]["status"] == "True"
    assert conds["Degraded"]["reason"] == "GPUTypeNotInCluster"
    assert "A100-80GB" in conds["Degraded"]["message"]


def test_autoscaler_status_drives_replicas_only_when_scaling_enabled() -> None:
    on = qwd(scaling={"enabled": True, "minReplicas": 1, "maxReplicas": 5})
    on["status"] = {"autoscaler": {"desiredReplicas": 4}}
    out = compute(Observed(qwd=on, nodes=[node("l0", "NVIDIA-L40S", 8)]), CATALOG, now="T")
    assert sum(m["spec"]["replicas"] for m in out.apply if m["kind"] == "Deployment") == 4
    off = qwd(replicas=1)
    off["status"] = {"autoscaler": {"desiredReplicas": 4}}
    out = compute(Observed(qwd=off, nodes=[node("l0", "NVIDIA-L40S", 8)]), CATALOG, now="T")
    assert sum(m["spec"]["replicas"] for m in out.apply if m["kind"] == "Deployment") == 1


def _pod_on(node_name: str, gpus: int, name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "llm", "labels": {"serving.qwenops.io/deployment": "chat"}},
        "spec": {"nodeName": node_name, "containers": [{"resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]},
        "status": {"phase": "Running"},
    }


def test_scale_up_spills_over_when_the_existing_pool_holds_every_gpu_of_its_type() -> None:
    nodes = [node(f"l{i}", "NVIDIA-L40S", 1) for i in range(4)] + [node("a0", "NVIDIA-A10G", 4)]
    obs = converge(Observed(qwd=qwd(replicas=4, placement={"gpuTypes": ["A10G", "L40S"]}), nodes=nodes))
    assert {d["metadata"]["name"]: d["spec"]["replicas"] for d in obs.deployments} == {"chat-l40s": 4}
    pods = [_pod_on(f"l{i}", 1, f"chat-l40s-{i}") for i in range(4)]  # our own pods hold all 4 L40S GPUs
    bigger = copy.deepcopy(dict(obs.qwd))
    bigger["spec"]["replicas"] = 8
    out = compute(
        Observed(qwd=bigger, deployments=obs.deployments, others=obs.others, nodes=nodes, pods=pods), CATALOG, now="T"
    )
    sizes = {m["metadata"]["name"]: m["spec"]["replicas"] for m in out.apply if m["kind"] == "Deployment"}
    assert sizes == {"chat-a10g": 4}, sizes  # L40S stays at 4; the next 4 spill to A10G


def test_rollout_on_a_full_pool_borrows_the_surge_on_another_gpu_type() -> None:
    nodes = [node(f"l{i}", "NVIDIA-L40S", 1) for i in range(4)] + [node("a0", "NVIDIA-A10G", 4)]
    spec = qwd(replicas=4, placement={"gpuTypes": ["A10G", "L40S"]})
    spec["status"] = {"model": {"currentVersion": "sha256:v1", "targetVersion": "sha256:v1"}}
    obs = converge(Observed(qwd=spec, nodes=nodes))
    pods = [_pod_on(f"l{i}", 1, f"chat-l40s-{i}") for i in range(4)]  # the pool fills every L40S GPU
    moving = copy.deepcopy(dict(obs.qwd))
    moving["status"]["model"] = {"currentVersion": "sha256:v1", "targetVersion": "sha256:v2"}
    out = compute(
        Observed(qwd=moving, deployments=obs.deployments, others=obs.others, nodes=nodes, pods=pods), CATALOG, now="T"
    )
    deps = {m["metadata"]["name"]: m for m in out.apply if m["kind"] == "Deployment"}
    assert deps["chat-a10g"]["spec"]["replicas"] == 1  # phase 1: borrow one replica on A10G first
    # the lender is marked, so the autoscaler does not count the loan as the pool's own capacity
    assert deps["chat-a10g"]["metadata"]["annotations"]["serving.qwenops.io/borrowed-replicas"] == "1"
    assert "serving.qwenops.io/borrowed-replicas" not in deps["chat-l40s"]["metadata"]["annotations"]
    assert deps["chat-l40s"]["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert [e.reason for e in out.events if e.reason == "SurgeBorrowed"]
    # phase 2: the borrowed replica is Ready -> the full pool rolls one replica at a time (no deadlock)
    borrowed_ready = as_live(deps["chat-a10g"])
    l40s_live = next(d for d in obs.deployments if d["metadata"]["name"] == "chat-l40s")
    out = compute(
        Observed(
            qwd=moving,
            deployments=[l40s_live, borrowed_ready],
            others=obs.others,
            nodes=nodes,
            pods=[*pods, _pod_on("a0", 1, "chat-a10g-0")],
        ),
        CATALOG,
        now="T",
    )
    l40s = next(m for m in out.apply if m["metadata"]["name"] == "chat-l40s")
    assert l40s["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    assert l40s["spec"]["template"]["metadata"]["annotations"]["serving.qwenops.io/model-version"] == "sha256:v2"
    # mid-roll: the old pod gave its GPU back (a free L40S for a moment): still one at a time, still borrowing
    mid = as_live(l40s, ready=3)
    mid["status"]["updatedReplicas"] = 1
    out_mid = compute(
        Observed(
            qwd=moving,
            deployments=[mid, borrowed_ready],
            others=obs.others,
            nodes=nodes,
            pods=[*pods[:3], _pod_on("a0", 1, "chat-a10g-0")],
        ),
        CATALOG,
        now="T",
    )
    assert not any(m["metadata"]["name"] == "chat-l40s" for m in out_mid.apply)  # strategy unchanged
    assert not any(m["metadata"]["name"] == "chat-a10g" for m in out_mid.apply) and not out_mid.delete
    deps = {"chat-l40s": l40s, "chat-a10g": deps["chat-a10g"]}
    # once the L40S pool has settled on v2, the borrowed replica goes again
    live = [as_live(l40s), as_live(deps["chat-a10g"])]
    done = copy.deepcopy(moving)
    done["status"]["model"] = {"currentVersion": "sha256:v2", "targetVersion": "sha256:v2"}
    pods_after = [*pods, _pod_on("a0", 1, "chat-a10g-0")]
    out2 = compute(
        Observed(qwd=done, deployments=live, others=obs.others, nodes=nodes, pods=pods_after), CATALOG, now="T"
    )
    l40s2 = next((m for m in out2.apply if m["metadata"]["name"] == "chat-l40s"), None)
    if l40s2 is not None:  # first the pool gets its normal strategy back, then the borrowed pool goes
        assert l40s2["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
        assert not out2.delete
        live = [as_live(l40s2), live[1]]
        out2 = compute(
            Observed(qwd=done, deployments=live, others=obs.others, nodes=nodes, pods=pods_after), CATALOG, now="T"
        )
    assert [d["metadata"]["name"] for d in out2.delete] == ["chat-a10g"]


def test_rollout_with_room_keeps_the_surge_strategy_and_borrows_nothing() -> None:
    nodes = [node(f"l{i}", "NVIDIA-L40S", 1) for i in range(6)] + [node("a0", "NVIDIA-A10G", 4)]
    spec = qwd(replicas=4, placement={"gpuTypes": ["A10G", "L40S"]})
    spec["status"] = {"model": {"currentVersion": "sha256:v1", "targetVersion": "sha256:v1"}}
    obs = converge(Observed(qwd=spec, nodes=nodes))
    pods = [_pod_on(f"l{i}", 1, f"chat-l40s-{i}") for i in range(4)]  # 2 L40S GPUs still free
    moving = copy.deepcopy(dict(obs.qwd))
    moving["status"]["model"] = {"currentVersion": "sha256:v1", "targetVersion": "sha256:v2"}
    out = compute(
        Observed(qwd=moving, deployments=obs.deployments, others=obs.others, nodes=nodes, pods=pods), CATALOG, now="T"
    )
    deps = {m["metadata"]["name"]: m for m in out.apply if m["kind"] == "Deployment"}
    assert deps["chat-l40s"]["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert "chat-a10g" not in deps


def test_rollout_with_nowhere_to_borrow_waits_with_surge_and_says_so() -> None:
    nodes = [node(f"a{i}", "NVIDIA-A10G", 1) for i in range(4)]
    spec = qwd(replicas=4, placement={"gpuTypes": ["A10G"]})
    spec["status"] = {"model": {"currentVersion": "sha256:v1", "targetVersion": "sha256:v1"}}
    obs = converge(Observed(qwd=spec, nodes=nodes))
    pods = [_pod_on(f"a{i}", 1, f"chat-a10g-{i}") for i in range(4)]
    moving = copy.deepcopy(dict(obs.qwd))
    moving["status"]["model"] = {"currentVersion": "sha256:v1", "targetVersion": "sha256:v2"}
    out = compute(
        Observed(qwd=moving, deployments=obs.deployments, others=obs.others, nodes=nodes, pods=pods), CATALOG, now="T"
    )
    a10g = next(m for m in out.apply if m["metadata"]["name"] == "chat-a10g")
    assert a10g["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}  # never drop capacity
    assert [e.type for e in out.events if e.reason == "RolloutWaitingForGPU"] == ["Warning"]


def test_borrowed_surge_goes_to_the_next_type_in_the_planners_rank() -> None:
    """Three types, the L40S pool full: the borrower is the next by $/h per req/s within the SLO (A100-80GB,
    ~0.62), not the A10G that is cheaper per decode token/s (~0.99 $/h per req/s)."""
    nodes = [node(f"l{i}", "NVIDIA-L40S", 1) for i in range(4)]
    nodes += [node("a0", "NVIDIA-A10G", 4), node("g0", "NVIDIA-A100-SXM4-80GB", 4)]
    spec = qwd(replicas=4, placement={"gpuTypes": ["A10G", "L40S", "A100-80GB"]})
    spec["status"] = {"model": {"currentVersion": "sha256:v1", "targetVersion": "sha256:v1"}}
    obs = converge(Observed(qwd=spec, nodes=nodes))
    assert {d["metadata"]["name"]: d["spec"]["replicas"] for d in obs.deployments} == {"chat-l40s": 4}
    pods = [_pod_on(f"l{i}", 1, f"chat-l40s-{i}") for i in range(4)]
    moving = copy.deepcopy(dict(obs.qwd))
    moving["status"]["model"] = {"currentVersion": "sha256:v1", "targetVersion": "sha256:v2"}
    out = compute(
        Observed(qwd=moving, deployments=obs.deployments, others=obs.others, nodes=nodes, pods=pods), CATALOG, now="T"
    )
    sizes = {m["metadata"]["name"]: m["spec"]["replicas"] for m in out.apply if m["kind"] == "Deployment"}
    assert sizes == {"chat-l40s": 4, "chat-a100-80gb": 1}, sizes
    assert [e.reason for e in out.events if e.reason == "SurgeBorrowed"]


def _server_pod(node_name: str, name: str, pool: str, version: str, phase: str = "Running") -> dict[str, Any]:
    """A model-server pod of pool ``pool`` on ``version`` (labels and annotation as rendered)."""
    pod = _pod_on(node_name, 1, name)
    pod["metadata"]["labels"].update({"app.kubernetes.io/component": "server", "serving.qwenops.io/pool": pool})
    pod["metadata"]["annotations"] = {"serving.qwenops.io/model-version": version}
    pod["status"]["phase"] = phase
    return pod


def _one_full_l40s_replica_moving_to_v2() -> tuple[list[dict[str, Any]], Observed, dict[str, Any], dict[str, Any]]:
    """One replica on the sandbox's only L40S GPU, converged on v1, now targeting v2 (A10G has room)."""
    nodes = [node("l0", "NVIDIA-L40S", 1), node("a0", "NVIDIA-A10G", 4)]
    spec = qwd(replicas=1, placement={"gpuTypes": ["A10G", "L40S"]})
    spec["status"] = {"model": {"currentVersion": "sha256:v1", "targetVersion": "sha256:v1"}}
    obs = converge(Observed(qwd=spec, nodes=nodes))
    moving = copy.deepcopy(dict(obs.qwd))
    moving["status"]["model"] = {"currentVersion": "sha256:v1", "targetVersion": "sha256:v2"}
    return nodes, obs, moving, _server_pod("l0", "chat-l40s-old", "l40s", "sha256:v1")


def test_one_replica_full_pool_keeps_borrowing_while_its_surge_pod_is_pending() -> None:
    """Regression (seen in the demo): a 1-replica pool on its only GPU. Once the new template is
    applied, the Pending surge pod counts as ``updatedReplicas`` (1 == spec.replicas) while the
    old pod still runs; the roll is not over, so the borrowed replica must stay (deleting it left
    the surge pod Pending forever: a deadlocked roll)."""
    nodes, obs, moving, old_pod = _one_full_l40s_replica_moving_to_v2()
    out = compute(
        Observed(qwd=moving, deployments=obs.deployments, others=obs.others, nodes=nodes, pods=[old_pod]),
        CATALOG,
        now="T",
    )
    deps = {m["metadata"]["name"]: m for m in out.apply if m["kind"] == "Deployment"}
    assert deps["chat-a10g"]["spec"]["replicas"] == 1  # borrowed
    l40s = deps.get("chat-l40s") or next(d for d in obs.deployments if d["metadata"]["name"] == "chat-l40s")
    surge_pending = _server_pod("", "chat-l40s-new", "l40s", "sha256:v2", phase="Pending")
    for observed in (True, False):
        live = as_live(l40s)
        live["spec"]["template"]["metadata"]["annotations"]["serving.qwenops.io/model-version"] = "sha256:v2"
        if observed:  # the Deployment controller saw the new template: 2 pods, the Pending one "updated"
            live["status"].update(replicas=2, updatedReplicas=1, readyReplicas=1)
        else:  # status still from the old generation: only the old pod says the roll is not over
            live["metadata"]["generation"] = 2
        out2 = compute(
            Observed(
                qwd=moving,
                deployments=[live, as_live(deps["chat-a10g"], ready=0)],
                others=obs.others,
                nodes=nodes,
                pods=[old_pod, surge_pending],
            ),
            CATALOG,
            now="T",
        )
        assert not out2.delete, f"observed={observed}: the borrowed pool was removed mid-roll"
        planned = {p.gpu_type: p.replicas for p in out2.plan.pools}
        assert planned == {"L40S": 1, "A10G": 1}, (observed, planned)


def test_one_at_a_time_roll_keeps_the_borrowed_replica_until_the_new_pod_is_ready() -> None:
    """Regression (seen in the demo): the last old pod of a full pool was replaced, every pod is
    "updated", but the new one is still loading its model; removing the borrowed replica then
    dropped ready capacity by one until it finished."""
    nodes, obs, moving, old_pod = _one_full_l40s_replica_moving_to_v2()
    borrowed_pod = _server_pod("a0", "chat-a10g-0", "a10g", "sha256:v2")
    l40s_v1 = next(d for d in obs.deployments if d["metadata"]["name"] == "chat-l40s")
    # phase 1: borrow; phase 2: the borrowed replica is Ready -> the L40S pool rolls one at a time
    out = compute(
        Observed(qwd=moving, deployments=obs.deployments, others=obs.others, nodes=nodes, pods=[old_pod]),
        CATALOG,
        now="T",
    )
    borrowed = as_live(next(m for m in out.apply if m["metadata"]["name"] == "chat-a10g"))
    out = compute(
        Observed(
            qwd=moving, deployments=[l40s_v1, borrowed], others=obs.others, nodes=nodes, pods=[old_pod, borrowed_pod]
        ),
        CATALOG,
        now="T",
    )
    l40s = next(m for m in out.apply if m["metadata"]["name"] == "chat-l40s")
    assert l40s["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    # the old pod is gone, the new one is loading: all "updated", none Ready
    new_pod = _server_pod("l0", "chat-l40s-new", "l40s", "sha256:v2")
    loading = as_live(l40s, ready=0)
    out = compute(
        Observed(
            qwd=moving, deployments=[loading, borrowed], others=obs.others, nodes=nodes, pods=[new_pod, borrowed_pod]
        ),
        CATALOG,
        now="T",
    )
    assert not out.delete and {p.gpu_type: p.replicas for p in out.plan.pools} == {"L40S": 1, "A10G": 1}
    assert not any(m["metadata"]["name"] == "chat-l40s" for m in out.apply)  # still one at a time
    # Ready: settled -> the pool gets its surge strategy back (the borrowed pool goes after)
    out = compute(
        Observed(
            qwd=moving,
            deployments=[as_live(l40s), borrowed],
            others=obs.others,
            nodes=nodes,
            pods=[new_pod, borrowed_pod],
        ),
        CATALOG,
        now="T",
    )
    applied = {m["metadata"]["name"]: m for m in out.apply if m["kind"] == "Deployment"}
    assert applied["chat-l40s"]["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_only_a_resource_short_of_gpus_waits_for_freed_ones() -> None:
    """#10 item 7: a pod exit re-runs the resources whose decision freed GPUs could change, not all."""
    placed = converge(Observed(qwd=qwd(replicas=2), nodes=NODES))
    assert compute(placed, CATALOG, now="T").wants_gpus is False
    short = Observed(qwd=qwd(replicas=9, placement={"gpuTypes": ["L40S"]}), nodes=NODES)  # 1 L40S GPU for 9
    out = compute(short, CATALOG, now="T")
    assert out.plan is not None and out.plan.unplaced > 0
    assert out.wants_gpus is True


def test_a_pod_exit_triggers_its_owner_and_the_resources_waiting_for_gpus_only() -> None:
    import asyncio

    from qwen_operator.controller.handlers import Controller

    ctl = Controller(kube=None, catalog=CATALOG)  # type: ignore[arg-type]  # this path makes no API call
    keys = [("llm", n) for n in ("owner", "waiting", "settled")]
    for k in keys:
        ctl.triggers[k] = asyncio.Event()
    ctl.wants_gpus = {("llm", "waiting")}
    pod = {
        "metadata": {"namespace": "llm", "name": "owner-l40s-1", "labels": {"serving.qwenops.io/deployment": "owner"}},
        "spec": {"nodeName": "l0"},
        "status": {"phase": "Running"},
    }
    ctl.on_pod("ADDED", pod)
    for k in keys:
        ctl.triggers[k].clear()
    ctl.on_pod("DELETED", pod)
    assert {k[1] for k in keys if ctl.triggers[k].is_set()} == {"owner", "waiting"}


def test_a_status_write_the_watch_has_not_delivered_is_not_written_again_with_a_new_timestamp(
    monkeypatch: Any,
) -> None:
    """Under load the cached QwenDeployment lags the operator's own status writes. Deciding from the
    stale copy stamped a new ``lastTransitionTime`` on every pass (a real change, so the dedupe of
    identical writes did not catch it): 1,000 resources kept writing status ~44 times a second at
    rest (bench/controller_bench.py). The controller now decides from what it last wrote while the
    cache still shows the resourceVersion it wrote over."""
    import asyncio

    from qwen_operator.controller import conditions
    from qwen_operator.controller.handlers import Controller

    settled = converge(Observed(qwd=qwd(), nodes=NODES))
    stale = copy.deepcopy(settled.qwd)
    stale["metadata"]["resourceVersion"] = "5"
    for c in stale["status"]["conditions"]:  # the cache still says the replicas were not Ready
        if c["type"] == "Ready":
            c.update(status="False", reason="ReplicasNotReady", lastTransitionTime="T0")
    world = Observed(qwd=stale, deployments=settled.deployments, others=settled.others, nodes=NODES)
    writes: list[dict[str, Any]] = []

    class Kube:
        def apply_status(self, ns: str, name: str, status: dict[str, Any], *_: Any, **__: Any) -> None:
            writes.append(copy.deepcopy(status))

    ctl = Controller(kube=Kube(), catalog=CATALOG)  # type: ignore[arg-type]
    key = ("llm", "chat")
    ctl.qwds[key] = stale
    monkeypatch.setattr(ctl, "observed", lambda k: world)
    clock = iter(f"2026-12-03T06:40:{s:02d}Z" for s in range(60))
    monkeypatch.setattr(conditions, "now_rfc3339", lambda: next(clock))

    asyncio.run(ctl.reconcile(key))
    assert len(writes) == 1 and {c["type"]: c["status"] for c in writes[0]["conditions"]}["Ready"] == "True"
    for _ in range(3):  # resyncs while the watch lags: nothing new to say
        asyncio.run(ctl.reconcile(key))
    assert len(writes) == 1, [w["conditions"] for w in writes]
    # the watch delivers the write: still nothing to write
    delivered = copy.deepcopy(stale)
    delivered["metadata"]["resourceVersion"] = "6"
    delivered["status"].update(writes[0])
    world = Observed(qwd=delivered, deployments=settled.deployments, others=settled.others, nodes=NODES)
    asyncio.run(ctl.reconcile(key))
    assert len(writes) == 1
    # someone else rewrites the status (a new resourceVersion): level-based, it is restored
    edited = copy.deepcopy(delivered)
    edited["metadata"]["resourceVersion"] = "7"
    edited["status"]["readySummary"] = "0/2"
    world = Observed(qwd=edited, deployments=settled.deployments, others=settled.others, nodes=NODES)
    asyncio.run(ctl.reconcile(key))
    assert len(writes) == 2 and writes[1]["readySummary"] == "2/2"


def test_another_writers_event_before_our_own_does_not_repeat_our_status_write(monkeypatch: Any) -> None:
    """The autoscaler (or the version watcher) writes status just before the controller does; the
    watch then delivers that other write first. The cache has moved past the resourceVersion the
    controller wrote over, yet still lacks its write: the controller keeps deciding from its own
    last write until the watch shows the resourceVersion that write produced."""
    import asyncio

    from qwen_operator.controller import conditions
    from qwen_operator.controller.handlers import Controller

    settled = converge(Observed(qwd=qwd(), nodes=NODES))
    stale = copy.deepcopy(settled.qwd)
    stale["metadata"]["resourceVersion"] = "5"
    for c in stale["status"]["conditions"]:
        if c["type"] == "Ready":
            c.update(status="False", reason="ReplicasNotReady", lastTransitionTime="T0")
    worlds = {"now": Observed(qwd=stale, deployments=settled.deployments, others=settled.others, nodes=NODES)}
    writes: list[dict[str, Any]] = []

    class Kube:
        def apply_status(self, ns: str, name: str, status: dict[str, Any], *_: Any, **__: Any) -> str:
            writes.append(copy.deepcopy(status))
            return "7"  # the server's resourceVersion after our write (another writer's is 6)

    ctl = Controller(kube=Kube(), catalog=CATALOG)  # type: ignore[arg-type]
    key = ("llm", "chat")
    ctl.qwds[key] = stale
    ctl.tasks[key] = None  # type: ignore[assignment]  # its reconcile loop: driven by hand here
    monkeypatch.setattr(ctl, "observed", lambda k: worlds["now"])
    clock = iter(f"2026-12-03T06:41:{s:02d}Z" for s in range(60))
    monkeypatch.setattr(conditions, "now_rfc3339", lambda: next(clock))

    asyncio.run(ctl.reconcile(key))
    assert len(writes) == 1
    # the autoscaler's write (rv 6, made before ours) arrives first: our fields are still the stale ones
    theirs = copy.deepcopy(stale)
    theirs["metadata"]["resourceVersion"] = "6"
    theirs["status"]["autoscaler"] = {"desiredReplicas": 2}
    ctl.on_qwd("MODIFIED", theirs)
    worlds["now"] = Observed(qwd=theirs, deployments=settled.deployments, others=settled.others, nodes=NODES)
    for _ in range(3):
        asyncio.run(ctl.reconcile(key))
    assert len(writes) == 1, [w["conditions"] for w in writes]
    # our write arrives (rv 7): the cache is the truth again, and it says nothing new
    ours = copy.deepcopy(theirs)
    ours["metadata"]["resourceVersion"] = "7"
    ours["status"].update(writes[0])
    ctl.on_qwd("MODIFIED", ours)
    assert key not in ctl.last_status_written
    worlds["now"] = Observed(qwd=ours, deployments=settled.deployments, others=settled.others, nodes=NODES)
    asyncio.run(ctl.reconcile(key))
    assert len(writes) == 1


def test_the_caches_keep_no_managed_fields() -> None:
    """Server-side apply bookkeeping is often the largest part of an object and the controller never
    reads it: the caches (every QwenDeployment, owned object and node) drop it; the event's own body
    is left as it was."""
    from qwen_operator.controller.handlers import Controller

    ctl = Controller(kube=None, catalog=CATALOG)  # type: ignore[arg-type]
    fields = [{"manager": "qwen-operator", "operation": "Apply", "fieldsV1": {"f:spec": {}}}]
    dep = {
        "kind": "Deployment",
        "metadata": {"name": "chat-l40s", "namespace": "llm", "labels": {"serving.qwenops.io/deployment": "chat"}},
        "spec": {"replicas": 1},
    }
    dep["metadata"]["managedFields"] = copy.deepcopy(fields)
    node = {"metadata": {"name": "n1", "managedFields": copy.deepcopy(fields)}, "status": {}}
    ctl.on_owned("ADDED", dep)
    ctl.on_node("ADDED", node)
    cached = ctl.owned[("llm", "chat")][("Deployment", "chat-l40s")]
    assert "managedFields" not in cached["metadata"] and cached["spec"] == {"replicas": 1}
    assert "managedFields" not in ctl.nodes["n1"]["metadata"]
    assert dep["metadata"]["managedFields"] == fields  # the caller's copy is untouched

"""Pure controller helpers: Kubernetes-shaped conditions and the free-GPU inventory."""

from __future__ import annotations

from typing import Any

from qwen_operator.catalog import DEFAULT_GPUS
from qwen_operator.controller import conditions as c
from qwen_operator.controller.inventory import compute_inventory


def test_condition_transition_time_changes_only_on_status_change() -> None:
    first, changed = c.merge([], [c.Condition(c.READY, False, "PoolsStarting", "0/2 ready.")], 1, now="T1")
    assert changed and first[0]["lastTransitionTime"] == "T1" and first[0]["status"] == "False"
    # same status, new message: message updates, transition time stays
    second, changed = c.merge(first, [c.Condition(c.READY, False, "PoolsStarting", "1/2 ready.")], 1, now="T2")
    assert changed and second[0]["lastTransitionTime"] == "T1" and second[0]["message"] == "1/2 ready."
    # identical input: no change reported (so no status write)
    third, changed = c.merge(second, [c.Condition(c.READY, False, "PoolsStarting", "1/2 ready.")], 1, now="T3")
    assert not changed and third == second
    # status flips: new transition time
    fourth, changed = c.merge(third, [c.Condition(c.READY, True, "AllReplicasReady", "2/2 ready.")], 2, now="T4")
    assert changed and fourth[0]["lastTransitionTime"] == "T4" and fourth[0]["observedGeneration"] == 2


def test_conditions_are_ordered_and_unrelated_types_kept() -> None:
    existing = [
        {"type": "ModelSynced", "status": "True", "reason": "Synced", "message": "", "lastTransitionTime": "T0"}
    ]
    out, _ = c.merge(
        existing,
        [c.Condition(c.DEGRADED, False, "AsExpected", "."), c.Condition(c.READY, None, "Unknown", "?")],
        3,
        now="T1",
    )
    assert [x["type"] for x in out] == ["Ready", "Degraded", "ModelSynced"]
    assert out[0]["status"] == "Unknown"
    assert c.is_true(out, "ModelSynced") and not c.is_true(out, "Ready")


def _node(name: str, product: str | None, gpus: int, ready: bool = True, cordoned: bool = False) -> dict[str, Any]:
    labels = {"nvidia.com/gpu.product": product} if product else {}
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"unschedulable": cordoned},
        "status": {
            "allocatable": {"nvidia.com/gpu": str(gpus)} if gpus else {},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def _pod(node: str, gpus: int, phase: str = "Running", name: str = "p", init_gpus: int = 0) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "nodeName": node,
        "containers": [{"resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}],
    }
    if init_gpus:
        spec["initContainers"] = [{"resources": {"limits": {"nvidia.com/gpu": str(init_gpus)}}}]
    return {"metadata": {"name": name}, "spec": spec, "status": {"phase": phase}}


def test_inventory_subtracts_requests_per_node_and_ignores_finished_pods() -> None:
    nodes = [
        _node("a0", "NVIDIA-A10G", 4),
        _node("a1", "NVIDIA-A10G", 4),
        _node("l0", "NVIDIA-L40S", 4),
        _node("cpu", None, 0),
    ]
    pods = [
        _pod("a0", 3),
        _pod("a1", 1, phase="Succeeded"),
        _pod("l0", 2),
        _pod("l0", 1, init_gpus=2),  # init containers: max(init, sum(app)) = 2
    ]
    inv = compute_inventory(nodes, pods, DEFAULT_GPUS)
    assert inv.allocatable == {"A10G": 8, "L40S": 4}
    assert inv.free_per_node["A10G"] == [1, 4]
    assert inv.free("L40S") == 0
    assert inv.free_replicas("A10G", 2) == 2  # 1 GPU on a0 is useless for a TP=2 replica
    assert inv.free_replicas("A10G", 1) == 5


def test_inventory_skips_cordoned_notready_and_reports_unknown_products() -> None:
    nodes = [
        _node("a0", "NVIDIA-A10G", 4, cordoned=True),
        _node("a1", "NVIDIA-A10G", 4, ready=False),
        _node("h0", "NVIDIA-H200", 8),
    ]
    inv = compute_inventory(nodes, [], DEFAULT_GPUS)
    assert inv.allocatable == {}
    assert inv.unknown_products == {"NVIDIA-H200"}


def test_inventory_can_exclude_the_planned_deployments_own_pods() -> None:
    nodes = [_node("a0", "NVIDIA-A10G", 4)]
    pods = [_pod("a0", 2, name="mine-1"), _pod("a0", 1, name="other")]
    inv = compute_inventory(nodes, pods, DEFAULT_GPUS, exclude_pod=lambda p: p["metadata"]["name"].startswith("mine"))
    assert inv.free("A10G") == 3

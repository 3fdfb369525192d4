"""LiveInventory (per-event free-GPU accounting) agrees with a full recount after any event sequence."""

from __future__ import annotations

import random
from typing import Any

from qwen_operator.catalog import load_catalog
from qwen_operator.controller.inventory import LiveInventory, compute_inventory

CATALOG = load_catalog(None)
PRODUCTS = ["NVIDIA-L40S", "NVIDIA-A10G", "NVIDIA-A100-SXM4-80GB", "Some-Unknown-GPU"]


def _node(i: int, rng: random.Random) -> dict[str, Any]:
    return {
        "metadata": {"name": f"n{i}", "labels": {"nvidia.com/gpu.product": rng.choice(PRODUCTS)}},
        "spec": {"unschedulable": rng.random() < 0.1},
        "status": {
            "allocatable": {"nvidia.com/gpu": str(rng.choice([0, 1, 4, 8]))},
            "conditions": [{"type": "Ready", "status": "True" if rng.random() < 0.9 else "False"}],
        },
    }


def _pod(j: int, rng: random.Random) -> dict[str, Any]:
    node = rng.choice([None, *(f"n{i}" for i in range(12))])
    return {
        "metadata": {"name": f"p{j}", "namespace": "ns"},
        "spec": {
            **({"nodeName": node} if node else {}),
            "containers": [{"resources": {"limits": {"nvidia.com/gpu": str(rng.choice([0, 1, 2]))}}}],
            "initContainers": [{"resources": {"requests": {"nvidia.com/gpu": str(rng.choice([0, 4]))}}}],
        },
        "status": {"phase": rng.choice(["Pending", "Running", "Running", "Succeeded", "Failed"])},
    }


def test_live_inventory_matches_a_full_recount_after_every_event() -> None:
    rng = random.Random(7)
    live = LiveInventory(CATALOG.gpus)
    nodes: dict[str, dict[str, Any]] = {}
    pods: dict[tuple[str, str], dict[str, Any]] = {}
    for step in range(600):
        roll = rng.random()
        if roll < 0.2:
            i = rng.randrange(12)
            if rng.random() < 0.2 and f"n{i}" in nodes:
                del nodes[f"n{i}"]
                live.node(f"n{i}", None)
            else:
                nodes[f"n{i}"] = _node(i, rng)
                live.node(f"n{i}", nodes[f"n{i}"])
        else:
            j = rng.randrange(40)
            key = ("ns", f"p{j}")
            if rng.random() < 0.25 and key in pods:
                del pods[key]
                live.pod(key, None)
            else:
                pods[key] = _pod(j, rng)
                live.pod(key, pods[key])
        want = compute_inventory(nodes.values(), pods.values(), CATALOG.gpus)
        got = live.inventory()
        assert (got.allocatable, got.requested, got.free_per_node, got.unknown_products) == (
            want.allocatable,
            want.requested,
            want.free_per_node,
            want.unknown_products,
        ), f"step {step}"
    assert any(want.free_per_node.values()) and want.requested  # the sequence exercised real accounting


def test_callers_cannot_corrupt_the_cached_inventory() -> None:
    live = LiveInventory(CATALOG.gpus)
    live.node(
        "n0",
        {
            "metadata": {"name": "n0", "labels": {"nvidia.com/gpu.product": "NVIDIA-L40S"}},
            "spec": {},
            "status": {"allocatable": {"nvidia.com/gpu": "8"}, "conditions": [{"type": "Ready", "status": "True"}]},
        },
    )
    first = live.inventory()
    first.free_per_node["L40S"][0] = 0
    assert live.inventory().free_per_node["L40S"] == [8]

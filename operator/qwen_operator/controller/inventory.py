"""Free GPUs per type in the cluster, computed purely from Node and Pod objects.

Placement needs "how many GPUs of each type could still be scheduled": per node,
allocatable ``nvidia.com/gpu`` minus what non-terminated pods bound to it request
(the scheduler's own accounting: init containers count as the max with the sum of
app containers). Nodes that are unschedulable (cordoned) or not Ready contribute
nothing. Pods of the deployment being planned can be excluded, so a resize sees the
capacity it already holds as its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..catalog import GPUType, gpu_by_product_label

GPU_RESOURCE = "nvidia.com/gpu"
PRODUCT_LABEL = "nvidia.com/gpu.product"


@dataclass
class GPUInventory:
    """Per catalog GPU type: allocatable, requested and free GPUs; largest free block per node."""

    allocatable: dict[str, int] = field(default_factory=dict)
    requested: dict[str, int] = field(default_factory=dict)
    free_per_node: dict[str, list[int]] = field(default_factory=dict)
    unknown_products: set[str] = field(default_factory=set)

    def free(self, gpu: str) -> int:
        return sum(self.free_per_node.get(gpu, []))

    def free_replicas(self, gpu: str, gpus_per_replica: int) -> int:
        """How many replicas of ``gpus_per_replica`` GPUs still fit, node by node."""
        if gpus_per_replica <= 0:
            return 0
        return sum(n // gpus_per_replica for n in self.free_per_node.get(gpu, []))

    def present(self) -> list[str]:
        return sorted(self.allocatable)


def _qty(value: Any) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def _pod_gpus(pod: Mapping[str, Any]) -> int:
    spec = pod.get("spec", {})

    def req(c: Mapping[str, Any]) -> int:
        res = c.get("resources", {}) or {}
        return _qty((res.get("limits") or {}).get(GPU_RESOURCE, (res.get("requests") or {}).get(GPU_RESOURCE, 0)))

    app = sum(req(c) for c in spec.get("containers", []) or [])
    init = max((req(c) for c in spec.get("initContainers", []) or []), default=0)
    return max(app, init)


def _node_ready(node: Mapping[str, Any]) -> bool:
    conds = node.get("status", {}).get("conditions", []) or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


def compute_inventory(
    nodes: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    gpus: Mapping[str, GPUType],
    exclude_pod: Callable[[Mapping[str, Any]], bool] | None = None,
) -> GPUInventory:
    inv = GPUInventory()
    node_type: dict[str, str] = {}
    node_alloc: dict[str, int] = {}
    for node in nodes:
        meta = node.get("metadata", {})
        product = (meta.get("labels") or {}).get(PRODUCT_LABEL)
        alloc = _qty((node.get("status", {}).get("allocatable") or {}).get(GPU_RESOURCE, 0))
        if not product or alloc <= 0:
            continue
        gpu = gpu_by_product_label(product, dict(gpus))
        if gpu is None:
            inv.unknown_products.add(product)
            continue
        if node.get("spec", {}).get("unschedulable") or not _node_ready(node):
            continue
        node_type[meta["name"]] = gpu.name
        node_alloc[meta["name"]] = alloc
        inv.allocatable[gpu.name] = inv.allocatable.get(gpu.name, 0) + alloc
    used: dict[str, int] = {}
    for pod in pods:
        node_name = pod.get("spec", {}).get("nodeName")
        if node_name not in node_type:
            continue
        if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            continue
        if exclude_pod is not None and exclude_pod(pod):
            continue
        used[node_name] = used.get(node_name, 0) + _pod_gpus(pod)
    for name, gpu_name in sorted(node_type.items()):
        taken = used.get(name, 0)
        inv.requested[gpu_name] = inv.requested.get(gpu_name, 0) + taken
        inv.free_per_node.setdefault(gpu_name, []).append(max(0, node_alloc[name] - taken))
    return inv

"""Fake-but-realistic GPU nodes for the sandbox (pure: spec parsing and Node manifests).

``--gpus a10g=4,l40s=2,a100-80gb=8`` asks for that many GPUs of each type. They are cut
into nodes the size clouds sell (A10G: g5.12xlarge, 4 GPUs; L40S: g6e.12xlarge, 4;
A100: p4d/p4de.24xlarge, 8), the last node of a type taking the remainder. ``TYPE=NxM``
asks for N GPUs on nodes of M GPUs each. Labels follow NVIDIA GPU Feature Discovery
(``nvidia.com/gpu.present|product|memory|count``); capacity carries the device plugin's
extended resource ``nvidia.com/gpu``. kwok manages every node annotated
``kwok.x-k8s.io/node=fake``: it keeps them Ready and runs the pods bound to them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..catalog import DEFAULT_GPUS, GPUType, resolve_gpu_name

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}

#: (GPUs per node, instance type, vCPU per GPU, host memory GiB per GPU) per catalog GPU.
NODE_SHAPES: dict[str, tuple[int, str, int, int]] = {
    "A10G": (4, "g5.12xlarge", 12, 48),
    "L40S": (4, "g6e.12xlarge", 12, 96),
    "A100-40GB": (8, "p4d.24xlarge", 12, 144),
    "A100-80GB": (8, "p4de.24xlarge", 12, 144),
}
DEFAULT_GPUS_SPEC = "a10g=8,l40s=4,a100-80gb=8"


class GPUSpecError(ValueError):
    """``--gpus`` could not be parsed; the message lists what is accepted."""


@dataclass(frozen=True)
class NodeSpec:
    name: str
    gpu: GPUType
    gpus: int
    instance_type: str
    cpu: int
    memory_gib: int


def parse_gpus(spec: str, gpus: dict[str, GPUType] | None = None) -> dict[str, tuple[int, int]]:
    """``"a10g=4,l40s=2x1"`` -> ``{"A10G": (4, 4), "L40S": (2, 1)}`` (total, per node)."""
    known = gpus if gpus is not None else DEFAULT_GPUS
    accepted = ", ".join(sorted(k.lower() for k in known))
    out: dict[str, tuple[int, int]] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if "=" not in part:
            raise GPUSpecError(f"--gpus: {part!r} is not TYPE=COUNT (e.g. a10g=4); known GPU types: {accepted}")
        raw_type, raw_count = part.split("=", 1)
        try:
            name = resolve_gpu_name(raw_type.strip(), known)
        except KeyError:
            raise GPUSpecError(f"--gpus: unknown GPU type {raw_type.strip()!r}; known GPU types: {accepted}") from None
        count_s, _, per_s = raw_count.partition("x")
        try:
            count = int(count_s)
            per_node = int(per_s) if per_s else NODE_SHAPES.get(name, (8,))[0]
        except ValueError:
            raise GPUSpecError(
                f"--gpus: {part!r}: COUNT must be an integer, optionally COUNTxPER_NODE (e.g. a10g=8x1)"
            ) from None
        if count < 0 or per_node < 1 or per_node > known[name].max_gpus_per_node:
            raise GPUSpecError(
                f"--gpus: {part!r}: need COUNT >= 0 and 1 <= PER_NODE <= {known[name].max_gpus_per_node}"
            )
        out[name] = (count, per_node)
    return out


def plan_nodes(spec: dict[str, tuple[int, int]], gpus: dict[str, GPUType] | None = None) -> list[NodeSpec]:
    """Cut the requested GPU counts into nodes (deterministic names ``gpu-a10g-0``...)."""
    known = gpus if gpus is not None else DEFAULT_GPUS
    nodes: list[NodeSpec] = []
    for name, (total, per_node) in spec.items():
        shape = NODE_SHAPES.get(name, (per_node, "custom", 12, 96))
        index, left = 0, total
        while left > 0:
            n = min(per_node, left)
            nodes.append(
                NodeSpec(
                    name=f"gpu-{name.lower()}-{index}",
                    gpu=known[name],
                    gpus=n,
                    instance_type=shape[1] if n == shape[0] else f"{shape[1]}-{n}gpu",
                    cpu=max(4, shape[2] * n),
                    memory_gib=max(16, shape[3] * n),
                )
            )
            index += 1
            left -= n
    return nodes


def node_manifest(node: NodeSpec, taint: bool = True) -> dict[str, Any]:
    """The Node object kwok will manage (status included: kwok keeps it Ready)."""
    gpu_mem_mib = node.gpu.memory_bytes * 1000 // (1024 * 1024 * 1000)
    capacity = {
        "cpu": str(node.cpu),
        "memory": f"{node.memory_gib}Gi",
        "pods": "110",
        "ephemeral-storage": "500Gi",
        GPU_RESOURCE: str(node.gpus),
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": node.name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": node.instance_type,
                "type": "kwok",
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": node.gpu.product_label,
                "nvidia.com/gpu.memory": str(gpu_mem_mib),
                "nvidia.com/gpu.count": str(node.gpus),
            },
        },
        "spec": {"taints": [GPU_TAINT] if taint else []},
        "status": {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "fake",
                "kernelVersion": "",
                "osImage": "",
                "containerRuntimeVersion": "",
                "kubeProxyVersion": "",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        },
    }


def cpu_node_manifest(name: str = "cpu-0") -> dict[str, Any]:
    """An untainted CPU-only node for system pods (the operator itself, clients)."""
    capacity = {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "200Gi"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": "m6i.4xlarge",
                "type": "kwok",
            },
        },
        "spec": {},
        "status": {"capacity": capacity, "allocatable": dict(capacity)},
    }

"""Read free GPUs per type from a live cluster (for ``qwenctl plan --from-cluster``).

The same accounting the operator uses (:func:`.inventory.compute_inventory`): node
allocatable ``nvidia.com/gpu`` minus what non-terminated pods bound there request, for
Ready, schedulable nodes whose ``nvidia.com/gpu.product`` label is in the catalog.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..catalog import Catalog
from .inventory import GPUInventory, compute_inventory


def read_inventory(catalog: Catalog, kubeconfig: Path | None = None) -> GPUInventory:
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig) if kubeconfig else None, client_configuration=cfg)  # type: ignore[no-untyped-call]
    api = client.ApiClient(cfg)
    core = client.CoreV1Api(api)
    nodes: list[dict[str, Any]] = [api.sanitize_for_serialization(n) for n in core.list_node().items]  # type: ignore[no-untyped-call]
    pods: list[dict[str, Any]] = [
        api.sanitize_for_serialization(p)  # type: ignore[no-untyped-call]
        for p in core.list_pod_for_all_namespaces(field_selector="status.phase!=Succeeded,status.phase!=Failed").items
    ]
    return compute_inventory(nodes, pods, catalog.gpus)

"""Objects shared by all pools: the Service, the PodDisruptionBudget, the ServiceMonitor.

One Service selects the server pods of every pool, so clients see one endpoint while
replicas move between GPU types. The PDB lets node drains evict one pod at a time and
never blocks on pods that are not ready yet (``unhealthyPodEvictionPolicy: AlwaysAllow``:
a replica still loading its model is no capacity to protect). The ServiceMonitor is only
rendered when the controller saw the Prometheus Operator CRD in the cluster.
"""

from __future__ import annotations

from typing import Any

from ..api.spec import QwenDeploymentSpec
from ..engines.runtimes import runtime_for
from .names import common_labels, server_selector, service_name
from .workload import RenderContext, metadata

SERVICE_PORT = 80


def service(spec: QwenDeploymentSpec, ctx: RenderContext) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(ctx, service_name(ctx.name), common_labels(ctx.name)),
        "spec": {
            "type": "ClusterIP",
            "selector": server_selector(ctx.name),
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def pod_disruption_budget(spec: QwenDeploymentSpec, ctx: RenderContext) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(ctx, service_name(ctx.name), common_labels(ctx.name)),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": server_selector(ctx.name)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def service_monitor(spec: QwenDeploymentSpec, ctx: RenderContext) -> dict[str, Any]:
    rt = runtime_for(spec)
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": metadata(ctx, service_name(ctx.name), common_labels(ctx.name)),
        "spec": {
            "selector": {"matchLabels": common_labels(ctx.name)},
            "namespaceSelector": {"matchNames": [ctx.namespace]},
            "endpoints": [{"port": "http", "path": rt.metrics_path, "interval": f"{spec.scaling.interval_seconds}s"}],
        },
    }

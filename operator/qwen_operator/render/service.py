"""Objects shared by all pools: the Services, the PodDisruptionBudget, the ServiceMonitor.

The client Service ``<name>`` is one endpoint while replicas move between GPU types. With
``spec.routing.enabled`` (the default) it selects the router pods (port 80 -> 8080) and a
second Service ``<name>-servers`` selects the server pods of every pool (what the
ServiceMonitor scrapes). Canary pods are ``component: canary``: none of these selects them; they are
reached only through the router's canary rule (``controller.rollout.as_canary``).
Without the router, ``<name>`` selects the server pods directly. The PDB (over the server pods
of every pool) lets node drains evict one pod at a time while the deployment runs two or more
replicas (``maxUnavailable: 1``); with one replica (or none) it is ``minAvailable: 1``, so a drain
waits instead of evicting the only replica (an outage of the whole model): scale up first (the
new replica lands elsewhere), or accept the outage by deleting the pod. Either way it never
blocks on pods that are not ready yet (``unhealthyPodEvictionPolicy: AlwaysAllow``: a replica
still loading its model is no capacity to protect, and a crash-looping one never holds a drain).
The ServiceMonitor is only rendered when the controller saw the Prometheus Operator CRD in the
cluster.
"""

from __future__ import annotations

from typing import Any

from ..api.spec import QwenDeploymentSpec
from ..engines.runtimes import runtime_for
from .names import (
    ROUTER_COMPONENT,
    common_labels,
    router_selector,
    server_selector,
    servers_service_name,
    service_name,
)
from .workload import RenderContext, metadata

SERVICE_PORT = 80


def service(spec: QwenDeploymentSpec, ctx: RenderContext) -> dict[str, Any]:
    """The client Service ``<name>``: the router pods when routing is enabled, else the server pods."""
    routed = spec.routing.enabled
    labels = common_labels(ctx.name, ROUTER_COMPONENT) if routed else common_labels(ctx.name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(ctx, service_name(ctx.name), labels),
        "spec": {
            "type": "ClusterIP",
            "selector": router_selector(ctx.name) if routed else server_selector(ctx.name),
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def servers_service(spec: QwenDeploymentSpec, ctx: RenderContext) -> dict[str, Any]:
    """``<name>-servers`` over every server pod (rendered only with the router in front)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(ctx, servers_service_name(ctx.name), common_labels(ctx.name)),
        "spec": {
            "type": "ClusterIP",
            "selector": server_selector(ctx.name),
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def pod_disruption_budget(spec: QwenDeploymentSpec, ctx: RenderContext, replicas: int | None = None) -> dict[str, Any]:
    """``replicas``: the planned server replicas over every pool (None: ``spec.desired_replicas()``)."""
    total = spec.desired_replicas() if replicas is None else replicas
    budget: dict[str, int] = {"maxUnavailable": 1} if total > 1 else {"minAvailable": 1}
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(ctx, service_name(ctx.name), common_labels(ctx.name)),
        "spec": {
            **budget,
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

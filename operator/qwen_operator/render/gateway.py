"""Gateway API path: an ``InferencePool`` over the server pods and an ``HTTPRoute`` to it.

For clusters that already run a Gateway API Inference Extension gateway
(``spec.routing.gateway.inferencePool``). The gateway asks the pool's endpoint picker (an
ext-proc Service the cluster's inference gateway ships; the operator's router is an HTTP
proxy, not a picker) which server pod gets each request. Shapes follow the upstream v1
schemas: ``inference.networking.k8s.io/v1`` InferencePool (``selector.matchLabels``, one
``targetPorts`` entry, ``endpointPickerRef`` with ``port.number``) and
``gateway.networking.k8s.io/v1`` HTTPRoute whose backendRef is the InferencePool. The
controller applies them only when both CRDs exist in the cluster.
"""

from __future__ import annotations

from typing import Any

from ..api.spec import QwenDeploymentSpec
from ..engines.runtimes import runtime_for
from .names import common_labels, dns_label, server_selector
from .workload import RenderContext, metadata

INFERENCE_GROUP = "inference.networking.k8s.io"
INFERENCE_POOL_API = f"{INFERENCE_GROUP}/v1"
GATEWAY_GROUP = "gateway.networking.k8s.io"
HTTP_ROUTE_API = f"{GATEWAY_GROUP}/v1"


def endpoint_picker_name(spec: QwenDeploymentSpec, ctx: RenderContext) -> str:
    """``spec.routing.gateway.endpointPicker.name``, else ``<name>-epp``."""
    return spec.routing.gateway.endpoint_picker.name or dns_label(f"{ctx.name}-epp")


def inference_pool(spec: QwenDeploymentSpec, ctx: RenderContext) -> dict[str, Any]:
    """The InferencePool ``<name>``: every server pod, on the engine's port."""
    picker = spec.routing.gateway.endpoint_picker
    return {
        "apiVersion": INFERENCE_POOL_API,
        "kind": "InferencePool",
        "metadata": metadata(ctx, dns_label(ctx.name), common_labels(ctx.name)),
        "spec": {
            "selector": {"matchLabels": server_selector(ctx.name)},
            "targetPorts": [{"number": runtime_for(spec).port}],
            "endpointPickerRef": {
                "kind": "Service",
                "name": endpoint_picker_name(spec, ctx),
                "port": {"number": picker.port},
                "failureMode": picker.failure_mode,
            },
        },
    }


def http_route(spec: QwenDeploymentSpec, ctx: RenderContext) -> dict[str, Any]:
    """The HTTPRoute ``<name>``: every path from the named Gateway to the InferencePool."""
    ref = spec.routing.gateway.parent_ref
    parent: dict[str, Any] = {"group": GATEWAY_GROUP, "kind": "Gateway", "name": ref.name}
    if ref.namespace:
        parent["namespace"] = ref.namespace
    if ref.section_name:
        parent["sectionName"] = ref.section_name
    return {
        "apiVersion": HTTP_ROUTE_API,
        "kind": "HTTPRoute",
        "metadata": metadata(ctx, dns_label(ctx.name), common_labels(ctx.name)),
        "spec": {
            "parentRefs": [parent],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "backendRefs": [{"group": INFERENCE_GROUP, "kind": "InferencePool", "name": dns_label(ctx.name)}],
                }
            ],
        },
    }

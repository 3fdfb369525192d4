"""The Grafana dashboard the chart ships: replicas per pool, queue, P95 and $/h per QwenDeployment.

Generated (by :mod:`.generate`) rather than hand-exported so the queries use the metric
names the runtime adapter knows (TGI: ``tgi_queue_size``, ``tgi_request_duration``) and
the prices come from the GPU catalog. Series come from the ServiceMonitor the operator
renders per QwenDeployment (its ``service`` label is the QwenDeployment's Service) and
from kube-state-metrics (GPU requests per pod). A pod belongs to pool ``<gpu>`` when its
name is ``<deployment>-<gpu>-<replicaset hash>-<pod hash>`` (see ``render.names``), so the
pool is recovered with ``label_replace`` without relabelling.

Prices are Grafana *constant* variables ``price_<gpu>`` defaulting to the catalog; the
chart replaces them with ``config.catalog.prices`` overrides at render time, so the
dashboard's $/h and the operator's placement use the same numbers.
"""

from __future__ import annotations

import re
from typing import Any

from ..catalog.gpus import DEFAULT_GPUS
from ..render.names import pool_slug

UID = "qwen-operator-pools"
SELECTOR = 'namespace="$namespace", service="$deployment"'
POOL_REGEX = "$deployment-(.+)-[a-z0-9]+-[a-z0-9]+"


def price_variable(gpu_type: str) -> str:
    """Grafana variable name holding the $/GPU-h of ``gpu_type`` (``A100-80GB`` -> ``price_a100_80gb``)."""
    return "price_" + re.sub(r"[^a-z0-9]", "_", pool_slug(gpu_type))


def by_pool(expr: str) -> str:
    """Add a ``pool`` label parsed from the pod name."""
    return f'label_replace({expr}, "pool", "$1", "pod", "{POOL_REGEX}")'


def queries() -> dict[str, str]:
    """PromQL of each panel (by title)."""
    gpu_requests = (
        'kube_pod_container_resource_requests{namespace="$namespace", resource="nvidia_com_gpu", '
        'pod=~"$deployment-%s-.*"}'
    )
    cost_terms = [
        f"(sum({gpu_requests % pool_slug(name)}) or vector(0)) * ${price_variable(name)}" for name in DEFAULT_GPUS
    ]
    return {
        "Replicas per pool": f"count by (pool) ({by_pool(f'tgi_queue_size{{{SELECTOR}}}')})",
        "Queue (waiting requests) per pool": f"sum by (pool) ({by_pool(f'tgi_queue_size{{{SELECTOR}}}')})",
        "P95 queue wait (the autoscaler's TTFT SLO signal)": (
            "histogram_quantile(0.95, sum by (le, pool) "
            f"({by_pool(f'rate(tgi_request_queue_duration_bucket{{{SELECTOR}}}[1m])')}))"
        ),
        "Cost ($/h, GPUs requested x catalog price)": " +\n".join(cost_terms),
    }


_UNITS = {
    "Replicas per pool": "short",
    "Queue (waiting requests) per pool": "short",
    "P95 queue wait (the autoscaler's TTFT SLO signal)": "s",
    "Cost ($/h, GPUs requested x catalog price)": "currencyUSD",
}


def _panel(index: int, title: str, expr: str) -> dict[str, Any]:
    stacked = title.startswith("Replicas") or title.startswith("Queue")
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
        "fieldConfig": {
            "defaults": {
                "unit": _UNITS[title],
                "custom": {"stacking": {"mode": "normal" if stacked else "none"}, "fillOpacity": 20 if stacked else 0},
            },
            "overrides": [],
        },
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [
            {
                "refId": "A",
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "expr": expr,
                "legendFormat": "{{pool}}" if "pool" in expr and "Cost" not in title else "$deployment",
            }
        ],
    }


def _query_variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": query, "refId": name},
        "refresh": 2,
        "sort": 1,
    }


def dashboard() -> dict[str, Any]:
    """The whole dashboard model (Grafana schema 39)."""
    variables: list[dict[str, Any]] = [
        {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus"},
        _query_variable("namespace", "Namespace", "label_values(tgi_queue_size, namespace)"),
        _query_variable(
            "deployment", "QwenDeployment", 'label_values(tgi_queue_size{namespace="$namespace"}, service)'
        ),
    ]
    for name, gpu in DEFAULT_GPUS.items():
        price = f"{gpu.price_per_gpu_hour:g}"
        variables.append(
            {
                "name": price_variable(name),
                "label": f"{name} $/GPU-h",
                "type": "constant",
                "hide": 2,
                "query": price,
                "current": {"text": price, "value": price},
                "description": f"{name} price per GPU-hour (config.catalog.prices.{name} overrides it)",
            }
        )
    return {
        "uid": UID,
        "title": "qwen-operator: Qwen serving pools",
        "description": "Replicas per GPU pool, queue depth, P95 latency and GPU cost of one QwenDeployment "
        "(TGI metrics from the operator's ServiceMonitor; GPU requests from kube-state-metrics).",
        "tags": ["qwen-operator", "llm", "tgi"],
        "editable": True,
        "schemaVersion": 39,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "templating": {"list": variables},
        "panels": [_panel(i, title, expr) for i, (title, expr) in enumerate(queries().items())],
    }

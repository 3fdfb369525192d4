"""Manifest renderer (pure): Deployments per GPU pool, Service, PDB, ServiceMonitor.

Inputs are the typed spec, the planner's :class:`~qwen_operator.planner.Plan` and a
:class:`RenderContext`; outputs are plain dicts ready for server-side apply.
"""

from ..engines.runtimes import RUNTIMES, MetricNames, Runtime, runtime_for
from .manifests import render
from .names import pool_deployment_name, selector_string, server_selector
from .workload import RenderContext, default_operator_image

__all__ = [
    "RUNTIMES",
    "MetricNames",
    "RenderContext",
    "Runtime",
    "default_operator_image",
    "pool_deployment_name",
    "render",
    "runtime_for",
    "selector_string",
    "server_selector",
]

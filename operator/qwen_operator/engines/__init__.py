"""Per-engine facts (pure): flags, metric names, ports and probe paths of TGI and vLLM.

Used by the renderer (flags), the Prometheus adapter (metric names), the router and the
simulated servers, so knowledge of an engine lives in one place (:mod:`.runtimes`)."""

from .runtimes import RUNTIMES, MetricNames, Runtime, runtime_for

__all__ = ["RUNTIMES", "MetricNames", "Runtime", "runtime_for"]

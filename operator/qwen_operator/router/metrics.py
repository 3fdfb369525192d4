"""The router's Prometheus metrics, on a registry of its own (served on ``/metrics``).

Why it exists: the router is the one place that sees every request from the client's
side, so it measures what the engines cannot: the real time to first byte (streams
included, hold time included: what the user waited), the requests it holds while no
replica can take them (scale from zero, saturation), retries and rejections. The
autoscaler can then scale on true TTFT and on the router's queue. Counters and histograms
are updated per request; the gauges that mirror the router's state (held, queue length,
in-flight per endpoint, endpoints per pool) are read from that state at scrape time, so
the hot path does not pay for them and a deleted pod's series disappears with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import metric_names as names

#: Seconds: from a few ms (loopback, short prompts) to minutes (held through a scale from zero).
TTFT_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0,
    15.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
#: Estimated prompt tokens (characters / 4): the request-size distribution the planner can use.
PROMPT_TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
HOLD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

#: ``pool`` label of requests that never reached an endpoint (rejected while held).
NO_POOL = "none"


@dataclass(frozen=True)
class StateView:
    """What the scrape-time gauges read: callables into the router's live state."""

    held: Callable[[], int]
    in_flight: Callable[[], Iterable[tuple[str, str, int]]]  # (endpoint, pool, outstanding)
    endpoints_per_pool: Callable[[], Mapping[str, int]]


class _StateCollector(Collector):
    def __init__(self, view: StateView) -> None:
        self.view = view

    def collect(self) -> Iterable[Metric]:
        held = self.view.held()
        in_flight = list(self.view.in_flight())
        g = GaugeMetricFamily(names.HELD, "Requests waiting in the router for an endpoint that can take them")
        g.add_metric([], held)
        yield g
        g = GaugeMetricFamily(
            names.QUEUE_LENGTH,
            "Requests the router has accepted and not answered yet: held plus in flight to endpoints",
        )
        g.add_metric([], held + sum(n for _, _, n in in_flight))
        yield g
        g = GaugeMetricFamily(
            names.ENDPOINT_IN_FLIGHT, "Requests in flight to each Ready endpoint", labels=["endpoint", "pool"]
        )
        for endpoint, pool, n in in_flight:
            g.add_metric([endpoint, pool], n)
        yield g
        g = GaugeMetricFamily(names.ENDPOINTS, "Ready endpoints the router routes to", labels=["pool"])
        for pool, n in sorted(self.view.endpoints_per_pool().items()):
            g.add_metric([pool], n)
        yield g


class RouterMetrics:
    """Every metric the router exports, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.ttft = Histogram(
            names.TTFT_SECONDS,
            "Time from the router receiving a request to the first response body byte reaching it "
            "(hold and retries included; streams: the first token)",
            ["pool", "version"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            names.REQUESTS_TOTAL,
            "Requests answered, by pool and HTTP status (aborted: the endpoint failed after the response "
            "started; 499: the client went away)",
            ["pool", "code"],
            registry=r,
        )
        self.retries = Counter(
            names.RETRIES_TOTAL,
            "Requests sent again to another endpoint (reason: connect, reset before the first byte, 429)",
            ["reason"],
            registry=r,
        )
        self.rejected = Counter(
            names.REJECTED_TOTAL,
            "Requests the router answered 503 itself (queue_full, hold_timeout, no_endpoint: holding is off)",
            ["reason"],
            registry=r,
        )
        self.upstream_errors = Counter(
            names.UPSTREAM_ERRORS_TOTAL,
            "Endpoint failures (phase: connect, response: before the first byte, body: after it)",
            ["pool", "phase"],
            registry=r,
        )
        self.hold_seconds = Histogram(
            names.HOLD_SECONDS,
            "How long held requests waited for an endpoint (served or rejected)",
            buckets=HOLD_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Histogram(
            names.PROMPT_TOKENS,
            "Estimated prompt tokens per request (characters / 4)",
            buckets=PROMPT_TOKEN_BUCKETS,
            registry=r,
        )

    def watch_state(self, view: StateView) -> None:
        """Export the router's live state (held, queue, in flight, endpoints) at scrape time."""
        self.registry.register(_StateCollector(view))

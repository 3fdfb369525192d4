"""The autoscaler's metrics source: PromQL over ``prometheus-api-client``.

Queries (DESIGN.md, "TGI facts"), scoped to one QwenDeployment's pods by namespace and
the pod names of its Deployments (:func:`pod_regex`):

* queue per pod:   ``sum by (pod)(<queue_gauge>{namespace="ns", pod=~"chat-l40s-[a-z0-9]+-[a-z0-9]+"})``
* in flight:       ``sum(<running_gauge>{...})``
* P95 latency:     ``histogram_quantile(0.95, sum by (le)(rate(<slo_latency>_bucket{...}[1m])))``
  where ``<slo_latency>`` is the runtime's time-to-first-token histogram (TGI has none and
  exports ``tgi_request_queue_duration``: the wait before the first batch, which is what
  more replicas shorten; end-to-end ``tgi_request_duration`` grows with the reply length
  and no replica count can bring a 500-token answer under 1.2 s)
* request rate:    ``sum(rate(<requests_counter>{...}[1m]))``

When the QwenDeployment has the built-in router (``spec.routing.enabled``), the router's own
series (:mod:`qwen_operator.router.metric_names`) of its pods ``<name>-router-...`` replace
the engine's where they exist: the real time to first byte as clients see it
(``qwen_router_ttft_seconds``, TGI included, which has no TTFT histogram), the requests the
router holds for want of a replica (``sum(qwen_router_held)``: invisible to the engines, and
the only signal a fleet at zero replicas has), the requests it has accepted and not answered
(``sum(qwen_router_queue_length)``: held plus in flight) and the rate at which it answers
(``sum(rate(qwen_router_requests_total[1m]))``). No ``qwen_router_held`` series at all
means no router is scraped (routing external, a Gateway API gateway, or not scraped yet):
then the engine's signals are the fallback, and so they are field by field where a router
series is empty (e.g. no TTFT sample in the window yet).

A P95 of NaN (no requests in the window) is "no signal", never zero or infinity. Any
failure (Prometheus down, timeout, HTTP error) yields ``Signals.error`` and *no numbers*:
the policy then holds, and the controller reports ``ScalingActive=False``. The client is
synchronous; call :meth:`PrometheusSource.fetch` from a worker thread (the controller uses its
bounded ``executors.METRICS`` pool). Each request is bounded by ``timeout`` and never retried
after a read timeout, and the first failed query ends the fetch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..engines.runtimes import MetricNames
from ..router import metric_names as router_metrics

#: Kubernetes names a Deployment's pods ``<deployment>-<pod-template-hash>-<5 random>``, cutting
#: ``<deployment>-<hash>-`` to this many characters first (``names.SimpleNameGenerator``).
_GENERATED_BASE = 58
_HASH = 10  # longest pod-template-hash (a safe-encoded 32-bit FNV hash)

LatencySource = str  # "router" (real TTFT), "engine" (the runtime's SLO histogram) or "" (none)


@dataclass(frozen=True)
class FleetSignals:
    """What Prometheus says about one QwenDeployment right now."""

    queue_per_pod: dict[str, float] = field(default_factory=dict)
    queue: float | None = None  # total waiting requests in the engines
    in_flight: float | None = None  # requests in the engines' running batches
    p95_seconds: float | None = None  # None: no signal (NaN / idle)
    request_rate: float | None = None  # requests/s over the window
    error: str | None = None  # set when Prometheus could not be read: hold
    held: float | None = None  # requests the router holds for want of a replica (None: no router series)
    router_in_flight: float | None = None  # router's accepted-not-answered (held + sent); None: no router
    latency_source: LatencySource = ""  # where p95_seconds comes from

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def routed(self) -> bool:
        """The router's series were read (its numbers replace the engine's)."""
        return self.held is not None


def pod_regex(deployment: str) -> str:
    """A regex matching exactly the pods of Deployment ``deployment``, never another's.

    ``chat-l40s`` matches ``chat-l40s-7d9f8c6b5-x2k4p`` but not ``chat-l40s-a10g-7d9f8c6b5-x2k4p``
    (a pool of a resource named ``chat-l40s``) nor ``chat-l40s-router-...``: a pod name has exactly
    two generated segments after its Deployment's name. Only when the name is so long that
    Kubernetes cuts the generated part (``<deployment>-<hash>-`` beyond 58 characters) does the
    regex allow any tail, and then two such names sharing 58 characters cannot be told apart."""
    escaped = deployment.replace(".", "\\\\.")  # only "." is special; "\\." inside a PromQL string
    if len(deployment) + 2 + _HASH <= _GENERATED_BASE:
        return f"{escaped}-[a-z0-9]+-[a-z0-9]+"
    return f"{escaped[:_GENERATED_BASE]}[a-z0-9-]*"


def selector(namespace: str, pod_prefixes: list[str]) -> str:
    """Label matchers for the pods of one QwenDeployment's Deployments (its pools, or its router).

    The labels are those Kubernetes pod discovery attaches (``namespace``, ``pod``); a scrape
    target registered any other way must carry them too (:data:`router_metrics.TARGET_LABELS`)."""
    alternatives = "|".join(pod_regex(p) for p in sorted(pod_prefixes)) or "__none__"
    return f'namespace="{namespace}",pod=~"{alternatives}"'


def queries(metrics: MetricNames, sel: str, window: str = "1m", quantile: float = 0.95) -> dict[str, str]:
    return {
        "queue_per_pod": f"sum by (pod)({metrics.queue_gauge}{{{sel}}})",
        "in_flight": f"sum({metrics.running_gauge}{{{sel}}})",
        "p95": f"histogram_quantile({quantile}, sum by (le)"
        f"(rate({metrics.slo_latency_histogram}_bucket{{{sel}}}[{window}])))",
        "rate": f"sum(rate({metrics.requests_counter}{{{sel}}}[{window}]))",
    }


def router_queries(sel: str, window: str = "1m", quantile: float = 0.95) -> dict[str, str]:
    """The router's signals over its pods ``sel`` (summed over router replicas)."""
    m = router_metrics
    return {
        "held": f"sum({m.HELD}{{{sel}}})",
        "queue_length": f"sum({m.QUEUE_LENGTH}{{{sel}}})",
        "p95": f"histogram_quantile({quantile}, sum by (le)(rate({m.TTFT_SECONDS}_bucket{{{sel}}}[{window}])))",
        "rate": f"sum(rate({m.REQUESTS_TOTAL}{{{sel}}}[{window}]))",
    }


def duration(seconds: float) -> str:
    """A Prometheus duration: ``5`` -> ``5s``, ``2.5`` -> ``2500ms`` (``5.0s`` is rejected)."""
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def _scalar(result: list[dict[str, Any]]) -> float | None:
    if not result:
        return None
    value = float(result[0]["value"][1])
    return None if math.isnan(value) or math.isinf(value) else value


class PrometheusSource:
    def __init__(self, url: str, timeout: float = 5.0) -> None:
        from prometheus_api_client import PrometheusConnect
        from urllib3.util.retry import Retry

        self.url = url
        self.timeout = timeout
        # ``timeout`` bounds each request (connect and read); the client's default Retry would
        # repeat a read timeout 3 times with backoff, holding a worker thread for ~20 s per query
        # on a hung Prometheus. One fast reconnect only: a tick that cannot read just holds.
        retry = Retry(total=1, connect=1, read=0, status=0, other=0, backoff_factor=0)
        self._prom = PrometheusConnect(url=url, disable_ssl=True, timeout=int(math.ceil(timeout)), retry=retry)

    def _query(self, promql: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._prom.custom_query(promql, params={"timeout": duration(self.timeout)})
        return result

    def fetch(
        self,
        namespace: str,
        pod_prefixes: list[str],
        metrics: MetricNames,
        router: str | None = None,
        window: str = "1m",
    ) -> FleetSignals:
        """Signals of the pods of Deployments ``pod_prefixes`` (the pools) in ``namespace``; with
        ``router`` (the router Deployment's name, when ``spec.routing.enabled``), the router's
        TTFT, held requests, queue length and request rate where its series exist."""
        q = queries(metrics, selector(namespace, pod_prefixes), window)
        rq = router_queries(selector(namespace, [router]), window) if router else None
        try:
            per_pod_raw = self._query(q["queue_per_pod"])
            in_flight = _scalar(self._query(q["in_flight"]))
            p95 = _scalar(self._query(q["p95"]))
            rate = _scalar(self._query(q["rate"]))
            held = r_queue = r_p95 = r_rate = None
            if rq is not None:
                held = _scalar(self._query(rq["held"]))
                if held is not None:  # a router is scraped: its numbers replace the engine's
                    r_queue = _scalar(self._query(rq["queue_length"]))
                    r_p95 = _scalar(self._query(rq["p95"]))
                    r_rate = _scalar(self._query(rq["rate"]))
        except Exception as exc:  # noqa: BLE001 - any failure means "no signal": hold
            return FleetSignals(error=f"Prometheus at {self.url} could not be queried: {_short(exc)}")
        per_pod = {}
        for row in per_pod_raw:
            v = float(row["value"][1])
            if not math.isnan(v):
                per_pod[row["metric"].get("pod", "?")] = v
        source = "router" if r_p95 is not None else ("engine" if p95 is not None else "")
        return FleetSignals(
            queue_per_pod=per_pod,
            queue=sum(per_pod.values()) if per_pod else None,
            in_flight=in_flight,
            p95_seconds=r_p95 if r_p95 is not None else p95,
            request_rate=r_rate if r_rate is not None else rate,
            held=held,
            router_in_flight=r_queue,
            latency_source=source,
        )


def _short(exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) < 300 else text[:297] + "..."

"""The autoscaler's metrics source: PromQL over ``prometheus-api-client``.

Queries (DESIGN.md, "TGI facts"), scoped to one QwenDeployment's pods by namespace and
the pod-name prefix of each pool Deployment:

* queue per pod:   ``sum by (pod)(<queue_gauge>{namespace="ns", pod=~"chat-.*"})``
* in flight:       ``sum(<running_gauge>{...})``
* P95 latency:     ``histogram_quantile(0.95, sum by (le)(rate(<slo_latency>_bucket{...}[1m])))``
  where ``<slo_latency>`` is the runtime's time-to-first-token histogram (TGI has none and
  exports ``tgi_request_queue_duration``: the wait before the first batch, which is what
  more replicas shorten; end-to-end ``tgi_request_duration`` grows with the reply length
  and no replica count can bring a 500-token answer under 1.2 s)
* request rate:    ``sum(rate(<requests_counter>{...}[1m]))``

A P95 of NaN (no requests in the window) is "no signal", never zero or infinity. Any
failure (Prometheus down, timeout, HTTP error) yields ``Signals.error`` and *no numbers*:
the policy then holds, and the controller reports ``ScalingActive=False``. The client is
synchronous; call :meth:`PrometheusSource.fetch` from a worker thread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..engines.runtimes import MetricNames


@dataclass(frozen=True)
class FleetSignals:
    """What Prometheus says about one QwenDeployment right now."""

    queue_per_pod: dict[str, float] = field(default_factory=dict)
    queue: float | None = None  # total waiting requests
    in_flight: float | None = None  # requests in running batches
    p95_seconds: float | None = None  # None: no signal (NaN / idle)
    request_rate: float | None = None  # requests/s over the window
    error: str | None = None  # set when Prometheus could not be read: hold

    @property
    def ok(self) -> bool:
        return self.error is None


def selector(namespace: str, pod_prefixes: list[str]) -> str:
    """Label matchers for the pods of one QwenDeployment (all its pool Deployments)."""
    # pod prefixes are DNS labels: only "." is special in a regex, written "\\\\." inside a PromQL string
    alternatives = "|".join(p.replace(".", "\\\\.") + "-.*" for p in sorted(pod_prefixes)) or "__none__"
    return f'namespace="{namespace}",pod=~"{alternatives}"'


def queries(metrics: MetricNames, sel: str, window: str = "1m", quantile: float = 0.95) -> dict[str, str]:
    return {
        "queue_per_pod": f"sum by (pod)({metrics.queue_gauge}{{{sel}}})",
        "in_flight": f"sum({metrics.running_gauge}{{{sel}}})",
        "p95": f"histogram_quantile({quantile}, sum by (le)"
        f"(rate({metrics.slo_latency_histogram}_bucket{{{sel}}}[{window}])))",
        "rate": f"sum(rate({metrics.requests_counter}{{{sel}}}[{window}]))",
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

        self.url = url
        self.timeout = timeout
        self._prom = PrometheusConnect(url=url, disable_ssl=True, timeout=int(math.ceil(timeout)))

    def _query(self, promql: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._prom.custom_query(promql, params={"timeout": duration(self.timeout)})
        return result

    def fetch(self, namespace: str, pod_prefixes: list[str], metrics: MetricNames, window: str = "1m") -> FleetSignals:
        q = queries(metrics, selector(namespace, pod_prefixes), window)
        try:
            per_pod_raw = self._query(q["queue_per_pod"])
            in_flight = _scalar(self._query(q["in_flight"]))
            p95 = _scalar(self._query(q["p95"]))
            rate = _scalar(self._query(q["rate"]))
        except Exception as exc:  # noqa: BLE001 - any failure means "no signal": hold
            return FleetSignals(error=f"Prometheus at {self.url} could not be queried: {_short(exc)}")
        per_pod = {}
        for row in per_pod_raw:
            v = float(row["value"][1])
            if not math.isnan(v):
                per_pod[row["metric"].get("pod", "?")] = v
        return FleetSignals(
            queue_per_pod=per_pod,
            queue=sum(per_pod.values()) if per_pod else None,
            in_flight=in_flight,
            p95_seconds=p95,
            request_rate=rate,
        )


def _short(exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) < 300 else text[:297] + "..."

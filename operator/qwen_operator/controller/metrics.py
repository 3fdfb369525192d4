"""The operator's own Prometheus metrics (``qwenctl operator run --metrics-port``).

What an SRE watches on the operator itself: how often it reconciles and how long that
takes, how many API writes it makes (zero at rest), and every autoscaling decision and
scale event per QwenDeployment (the same decisions recorded in status and Events).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILES = Counter("qwen_operator_reconciles", "Reconciles of QwenDeployments", ["result"])
RECONCILE_SECONDS = Histogram(
    "qwen_operator_reconcile_duration_seconds",
    "Wall time of one reconcile (compute + writes)",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
API_WRITES = Counter("qwen_operator_api_writes", "Mutating Kubernetes API calls made by the operator", ["kind"])
DESIRED = Gauge("qwen_operator_autoscaler_desired_replicas", "Replicas the autoscaler wants", ["namespace", "name"])
DECISIONS = Counter(
    "qwen_operator_autoscaler_decisions", "Autoscaler evaluations by outcome", ["namespace", "name", "kind"]
)
SCALE_EVENTS = Counter("qwen_operator_scale_events", "Changes of desired replicas", ["namespace", "name", "direction"])


def serve(port: int, address: str = "0.0.0.0") -> None:  # noqa: S104 - in-cluster scrape endpoint
    start_http_server(port, addr=address)

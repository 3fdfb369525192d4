"""The operator's /metrics endpoint exposes its writes and decisions."""

from __future__ import annotations

import urllib.request

from qwen_operator.controller.kube import WRITES
from qwen_operator.controller.metrics import DECISIONS, serve
from qwen_operator.sandbox.procs import free_port


def test_metrics_endpoint_counts_writes_and_decisions() -> None:
    port = free_port()
    serve(port, address="127.0.0.1")
    WRITES.add("apply:Deployment")
    DECISIONS.labels("llm", "chat", "scale-up").inc()
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'qwen_operator_api_writes_total{kind="apply:Deployment"}' in body
    assert 'qwen_operator_autoscaler_decisions_total{kind="scale-up",name="chat",namespace="llm"}' in body
    assert "qwen_operator_reconcile_duration_seconds_bucket" in body

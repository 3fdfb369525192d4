"""The autoscaler weighs pools at the prompt length the router observes (issue #9 item 4).

A fixed typical request (``spec.scaling.typicalPromptTokens``, 512 by default) overstates what a
replica carries when the real prompts are long: the rate signal then reads the fleet as half idle
while each replica prefills thousands of tokens per request. The router's prompt-token histogram
over the last 10 minutes replaces it once enough requests were seen."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from qwen_operator.api.spec import QwenDeploymentSpec
from qwen_operator.autoscale.prometheus import PROMPT_WINDOW, FleetSignals, router_queries
from qwen_operator.catalog import load_catalog
from qwen_operator.controller.autoscaler import (
    MIN_PROMPT_SAMPLES,
    Autoscaler,
    observed_prompt_tokens,
    pool_estimates,
)
from qwen_operator.controller.reconcile import GPU_TYPE_ANNOTATION, Observed
from qwen_operator.router import metric_names

CATALOG = load_catalog(None)
NOON = dt.datetime(2026, 12, 3, 12, tzinfo=dt.UTC)


def qwd(**scaling: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "chat", "namespace": "llm", "uid": "u-1", "generation": 1},
        "spec": {
            "model": {"name": "Qwen/Qwen3-14B", "registry": "s3://models/qwen3-14b", "quantization": "fp8"},
            "placement": {"gpuTypes": ["L40S"]},
            "scaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 6, **scaling},
            "runtime": {"maxInputTokens": 6000, "maxTotalTokens": 8192},
        },
        "status": {"autoscaler": {"desiredReplicas": 2}},
    }


def spec_of(obj: dict[str, Any]) -> QwenDeploymentSpec:
    return QwenDeploymentSpec.model_validate(obj["spec"])


def signals(prompt: float | None, samples: float | None = 500.0) -> FleetSignals:
    """The router's numbers: 5 requests/s, 10 in flight, P95 well within the SLO, no queue."""
    return FleetSignals(
        queue=0.0,
        in_flight=10.0,
        p95_seconds=0.5,
        request_rate=5.0,
        held=0.0,
        router_in_flight=10.0,
        latency_source="router",
        prompt_tokens=prompt,
        prompt_samples=None if prompt is None else samples,
    )


def tick(obj: dict[str, Any], fleet: FleetSignals) -> dict[str, Any]:
    node = {
        "metadata": {"name": "l0", "labels": {"nvidia.com/gpu.product": "NVIDIA-L40S"}},
        "spec": {},
        "status": {"allocatable": {"nvidia.com/gpu": "8"}, "conditions": [{"type": "Ready", "status": "True"}]},
    }
    dep = {
        "metadata": {"name": "chat-l40s", "annotations": {GPU_TYPE_ANNOTATION: "L40S"}},
        "spec": {"replicas": 2},
        "status": {"readyReplicas": 2},
    }
    obs = Observed(qwd=obj, deployments=[dep], nodes=[node])
    written: dict[str, Any] = {}

    class Kube:
        def apply_status(self, ns: str, name: str, status: dict[str, Any], manager: str) -> None:
            written.update(status)

        def event(self, *_: Any) -> None:
            pass

    scaler = Autoscaler(Kube(), CATALOG, lambda *_: fleet, lambda key: obs, "http://prometheus", clock=lambda: NOON)
    asyncio.run(scaler.tick(("llm", "chat")))
    autoscaler: dict[str, Any] = written["autoscaler"]
    return autoscaler


def test_the_query_is_the_routers_mean_prompt_over_the_window() -> None:
    q = router_queries('namespace="llm",pod=~"chat-router-[a-z0-9]+-[a-z0-9]+"')
    name = metric_names.PROMPT_TOKENS
    assert q["prompt_tokens"] == (
        f'sum(increase({name}_sum{{namespace="llm",pod=~"chat-router-[a-z0-9]+-[a-z0-9]+"}}[{PROMPT_WINDOW}]))'
        f' / sum(increase({name}_count{{namespace="llm",pod=~"chat-router-[a-z0-9]+-[a-z0-9]+"}}[{PROMPT_WINDOW}]))'
    )
    assert q["prompt_samples"].startswith(f"sum(increase({name}_count{{") and PROMPT_WINDOW == "10m"


@pytest.mark.parametrize(
    ("prompt", "samples", "scaling", "want"),
    [
        (2987.4, 500.0, {}, 3000),  # two significant digits: one plan per request shape
        (1234.0, 500.0, {}, 1200),
        (0.4, 500.0, {}, 1),
        (2987.4, MIN_PROMPT_SAMPLES - 1, {}, None),  # too few requests to trust
        (None, None, {}, None),  # no router series
        (2987.4, 500.0, {"learnPromptTokens": False}, None),
        (90000.0, 500.0, {}, 6000),  # never beyond runtime.maxInputTokens
    ],
)
def test_observed_prompt_tokens(
    prompt: float | None, samples: float | None, scaling: dict[str, Any], want: int | None
) -> None:
    fleet = FleetSignals(prompt_tokens=prompt, prompt_samples=samples)
    assert observed_prompt_tokens(spec_of(qwd(**scaling)), fleet) == want


def test_longer_prompts_make_each_replica_worth_less_and_the_pools_stay_placements() -> None:
    spec = spec_of(qwd())
    typical = pool_estimates(spec, CATALOG, {"L40S": 2})
    assert pool_estimates(spec, CATALOG, {"L40S": 2}, 512) == typical  # the spec's own shape
    long = pool_estimates(spec, CATALOG, {"L40S": 2}, 3000)
    assert [e.gpu_type for e in long] == [e.gpu_type for e in typical] == ["L40S"]
    assert long[0].throughput < typical[0].throughput / 3
    assert long[0].target_in_flight is not None and typical[0].target_in_flight is not None
    assert long[0].target_in_flight < typical[0].target_in_flight


def test_a_fleet_serving_long_prompts_scales_up_where_the_typical_request_saw_room() -> None:
    """5 requests/s on 2 L40S replicas: at 512-token prompts they carry ~23 req/s (hold); at the
    3,000-token prompts the router measured, ~5 req/s within the SLO (add one)."""
    held = tick(qwd(), signals(None))
    assert held["desiredReplicas"] == 2 and "observedPromptTokens" not in held
    learned = tick(qwd(), signals(2987.4))
    assert learned["observedPromptTokens"] == 3000
    assert learned["desiredReplicas"] == 3, learned["lastDecision"]
    off = tick(qwd(learnPromptTokens=False), signals(2987.4))
    assert off["desiredReplicas"] == 2 and "observedPromptTokens" not in off

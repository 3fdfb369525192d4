"""The autoscaler weighs pools at the reply length the engines generate (issue #9 item 4, outputs).

``spec.scaling.typicalOutputTokens`` (128 by default) understates what a replica spends on each
request when replies are long (thinking turns, code): every generated token is a decode step.
The engines' own generated-tokens histogram (TGI ``tgi_request_generated_tokens``, vLLM
``vllm:request_generation_tokens``) over the last 10 minutes replaces it once enough requests
finished; the simulated servers export both."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from test_autoscale_prompt_tokens import qwd, spec_of, tick  # the same resource and autoscaler tick

from qwen_operator.autoscale.prometheus import PROMPT_WINDOW, FleetSignals, queries
from qwen_operator.capacity.model import ReplicaModel
from qwen_operator.catalog import load_catalog
from qwen_operator.controller.autoscaler import (
    MIN_PROMPT_SAMPLES,
    learned_estimates,
    observed_output_tokens,
    pool_estimates,
)
from qwen_operator.engines.runtimes import RUNTIMES
from qwen_operator.sim.engine import Request
from qwen_operator.sim.server import SimulatedTGI

CATALOG = load_catalog(None)


def signals(output: float | None, samples: float | None = 500.0, rate: float = 5.0) -> FleetSignals:
    """The engines' numbers: ``rate`` requests/s, 10 in flight, P95 within the SLO, no queue."""
    return FleetSignals(
        queue=0.0,
        in_flight=10.0,
        p95_seconds=0.3,
        request_rate=rate,
        latency_source="engine",
        output_tokens=output,
        output_samples=None if output is None else samples,
    )


@pytest.mark.parametrize("engine", ["tgi", "vllm"])
def test_the_query_is_the_engines_mean_reply_over_the_window(engine: str) -> None:
    sel = 'namespace="llm",pod=~"chat-l40s-[a-z0-9]+-[a-z0-9]+"'
    name = RUNTIMES[engine].metrics.generated_tokens_histogram
    assert name in ("tgi_request_generated_tokens", "vllm:request_generation_tokens")
    q = queries(RUNTIMES[engine].metrics, sel)
    assert q["output_tokens"] == (
        f"sum(increase({name}_sum{{{sel}}}[{PROMPT_WINDOW}])) / sum(increase({name}_count{{{sel}}}[{PROMPT_WINDOW}]))"
    )
    assert q["output_samples"] == f"sum(increase({name}_count{{{sel}}}[{PROMPT_WINDOW}]))"


@pytest.mark.parametrize(
    ("output", "samples", "scaling", "want"),
    [
        (987.4, 500.0, {}, 990),  # two significant digits: one plan per request shape
        (0.3, 500.0, {}, 1),
        (987.4, MIN_PROMPT_SAMPLES - 1, {}, None),  # too few finished requests to trust
        (None, None, {}, None),  # no engine series
        (987.4, 500.0, {"learnOutputTokens": False}, None),
        (90000.0, 500.0, {}, 8191),  # never beyond runtime.maxTotalTokens - 1
    ],
)
def test_observed_output_tokens(
    output: float | None, samples: float | None, scaling: dict[str, Any], want: int | None
) -> None:
    fleet = FleetSignals(output_tokens=output, output_samples=samples)
    assert observed_output_tokens(spec_of(qwd(**scaling)), fleet) == want


def test_longer_replies_make_each_replica_worth_less() -> None:
    spec = spec_of(qwd())
    typical = pool_estimates(spec, CATALOG, {"L40S": 2})
    assert learned_estimates(spec, CATALOG, {"L40S": 2}, typical, None, output_tokens=128) == typical
    long = learned_estimates(spec, CATALOG, {"L40S": 2}, typical, None, output_tokens=1000)
    assert [e.gpu_type for e in long] == ["L40S"]
    assert long[0].throughput < typical[0].throughput / 2


def test_a_fleet_generating_long_replies_scales_up_where_the_typical_reply_saw_room() -> None:
    held = tick(qwd(), signals(None))
    assert held["desiredReplicas"] == 2 and "observedOutputTokens" not in held
    learned = tick(qwd(), signals(987.4))
    assert learned["observedOutputTokens"] == 990
    assert learned["desiredReplicas"] > 2, learned["lastDecision"]
    off = tick(qwd(learnOutputTokens=False), signals(987.4))
    assert off["desiredReplicas"] == 2 and "observedOutputTokens" not in off


def test_the_simulated_tgi_counts_each_finished_requests_generated_tokens() -> None:
    async def scenario() -> str:
        model = ReplicaModel.build_for("tgi", "Qwen/Qwen3-14B", "L40S", 1, "fp8", max_total_tokens=4096)
        sim = SimulatedTGI(model, time_scale=1000.0, cold_start_seconds=0)
        reqs = [sim.submit(100, 10), sim.submit(100, 30)]
        futures = [r.tag for r in reqs if isinstance(r, Request)]
        assert len(futures) == 2
        for _ in range(200):
            await asyncio.sleep(0.01)
            sim.sync()
            if all(f.done() for f in futures):
                break
        return sim.metrics.render(0, 0, 0, "simulated")

    text = asyncio.run(scenario())
    assert "tgi_request_generated_tokens_sum 40" in text and "tgi_request_generated_tokens_count 2" in text
    assert 'tgi_request_generated_tokens_bucket{le="40.96"} 2' in text

"""The autoscaler on the router's signals: scale from zero on held requests, to zero only after a
quiet scale-down window, the router's TTFT replacing TGI's queue wait, and pod selection that
cannot read another resource's pods. Policy, adapter queries, controller tick and simulator."""

from __future__ import annotations

import asyncio
import math
import random
import re
from typing import Any

import pytest

from qwen_operator.autoscale import loop
from qwen_operator.autoscale.loop import Observation
from qwen_operator.autoscale.policy import History, PoolState, Recommendation, Signals, Targets, decide
from qwen_operator.autoscale.prometheus import FleetSignals, pod_regex, queries, router_queries, selector
from qwen_operator.catalog import load_catalog
from qwen_operator.controller.autoscaler import Autoscaler, observation
from qwen_operator.controller.reconcile import GPU_TYPE_ANNOTATION, Observed
from qwen_operator.engines.runtimes import TGI
from qwen_operator.router import metric_names
from qwen_operator.sim.simulate import SimConfig, build_profiles, simulate_policy
from qwen_operator.sim.trace import Trace, TraceRow

NAN = float("nan")
ZERO = Targets(min_replicas=0, max_replicas=8, target_queue_depth=4, p95_latency_seconds=1.2)
IDLE = Signals(queue_depth=0, p95_seconds=NAN, in_flight=0, request_rate=0.0, held=0)


def a10g(ready: int = 0, starting: int = 0, free: int = 8) -> PoolState:
    return PoolState("A10G", cost_per_hour=1.006, throughput=1.0, ready=ready, starting=starting, free=free)


def a100(ready: int = 0, starting: int = 0, free: int = 2) -> PoolState:
    return PoolState("A100-80GB", cost_per_hour=5.12, throughput=3.4, ready=ready, starting=starting, free=free)


# --- policy: scale from zero ------------------------------------------------------------------


def test_at_zero_with_nothing_held_the_fleet_stays_at_zero() -> None:
    d = decide(0.0, [a10g(), a100()], IDLE, ZERO)
    assert d.kind == "hold" and d.total == 0, d.reason
    assert "no replicas and no traffic" in d.reason and "holds no request" in d.reason


def test_a_held_request_wakes_the_fleet_on_the_cheapest_pool_and_says_so() -> None:
    held = Signals(queue_depth=None, p95_seconds=NAN, in_flight=1, request_rate=0.0, held=1)
    d = decide(0.0, [a100(), a10g()], held, ZERO)
    assert d.kind == "scale-up" and d.desired == {"A100-80GB": 0, "A10G": 1}, d.reason
    assert "scale from zero" in d.reason and "holds 1 request(s)" in d.reason and d.reason.startswith("+1 A10G")


@pytest.mark.parametrize(
    ("held", "targets", "want"),
    [
        (3, ZERO, 1),  # up to targetQueueDepth per replica
        (9, ZERO, 3),
        (200, ZERO, 4),  # at most scale_up_pods at once; the queue signal does the rest once Ready
        (200, Targets(min_replicas=0, max_replicas=2), 2),  # never above maxReplicas
    ],
)
def test_the_wake_is_sized_for_what_is_held(held: int, targets: Targets, want: int) -> None:
    d = decide(0.0, [a10g()], Signals(None, NAN, held, 0.0, held=held), targets)
    assert d.total == want, d.reason


def test_no_free_gpu_at_zero_holds_and_says_so() -> None:
    d = decide(0.0, [a10g(free=0)], Signals(None, NAN, 2, 0.0, held=2), ZERO)
    assert d.kind == "hold" and d.total == 0 and "no free GPUs" in d.reason


def test_while_the_woken_replica_starts_the_policy_waits_and_names_the_held_requests() -> None:
    d = decide(30.0, [a10g(starting=1)], Signals(None, NAN, 5, 0.0, held=5), ZERO)
    assert d.kind == "hold" and d.total == 1 and "holds 5 request(s)" in d.reason
    assert d.history.no_ready_at == 30.0


def test_the_hold_in_the_first_ttft_samples_does_not_panic_the_fleet_to_max() -> None:
    """The held request's TTFT is the cold start (90 s here): a ratio of 75 against the SLO."""
    woke = History(no_ready_at=100.0)
    after = Signals(queue_depth=0, p95_seconds=90.0, in_flight=1, request_rate=0.02, held=0)
    d = decide(130.0, [a10g(ready=1)], after, ZERO, woke)
    assert d.kind == "hold" and d.total == 1, d.reason
    assert "P95 90.00s not used until t=220s" in d.reason
    # after the window the P95 is a load signal again: the same reading now scales up (panic)
    later = decide(221.0, [a10g(ready=1)], after, ZERO, d.history)
    assert later.kind == "panic" and later.total > 1, later.reason
    # without a wake in the history the P95 is used at once
    assert decide(130.0, [a10g(ready=1)], after, ZERO).kind == "panic"


def test_held_requests_with_replicas_ready_count_as_waiting() -> None:
    d = decide(0.0, [a10g(ready=1)], Signals(queue_depth=2, p95_seconds=0.5, in_flight=8, held=6), ZERO)
    assert d.total > 1 and "queue 2 + held 6 over 1 ready" in d.reason


# --- policy: scale to zero --------------------------------------------------------------------


def test_the_last_replica_goes_only_after_a_whole_quiet_scale_down_window() -> None:
    targets = Targets(min_replicas=0, max_replicas=8, scale_down_delay_seconds=300)
    busy = Signals(queue_depth=0, p95_seconds=0.4, in_flight=1, request_rate=0.1, held=0)
    d = decide(0.0, [a10g(ready=1)], busy, targets)
    assert d.total == 1
    history = d.history
    totals = {}
    for t in range(15, 331, 15):
        d = decide(float(t), [a10g(ready=1)], IDLE, targets, history)
        history = d.history
        totals[t] = d.total
    # while the busy 0 s recommendation is inside the 300 s window the replica stays
    assert all(n == 1 for t, n in totals.items() if t < 300), totals
    assert totals[300] == 0 and totals[315] == 0


def test_any_traffic_in_the_window_keeps_the_last_replica() -> None:
    targets = Targets(min_replicas=0, max_replicas=8, scale_down_delay_seconds=300)
    history = History(recommendations=(Recommendation(0.0, 0.0),))
    trickle = Signals(queue_depth=0, p95_seconds=NAN, in_flight=0, request_rate=0.01, held=0)
    for t in range(15, 900, 15):
        d = decide(float(t), [a10g(ready=1)], trickle, targets, history)
        history = d.history
        assert d.total == 1, (t, d.reason)


def test_min_replicas_one_never_goes_to_zero() -> None:
    history = History()
    for t in range(0, 900, 15):
        d = decide(float(t), [a10g(ready=1)], IDLE, Targets(min_replicas=1), history)
        history = d.history
        assert d.total == 1


def test_scaling_to_zero_says_so() -> None:
    targets = Targets(min_replicas=0, scale_down_delay_seconds=300)
    d = decide(400.0, [a10g(ready=1)], IDLE, targets, History(recommendations=(Recommendation(50.0, 0.0),)))
    assert d.kind == "scale-down" and d.total == 0
    assert d.reason.startswith("-1 A10G: to zero, no traffic for 300s"), d.reason


def test_the_loop_passes_held_through_to_the_policy() -> None:
    obs = Observation(now=0.0, pools=(a10g(),), queue_depth=None, p95_seconds=None, in_flight=2, held=2)
    d = loop.evaluate(obs, ZERO, History(), 0)
    assert d is not None and d.total == 1 and "holds 2 request(s)" in d.reason


# --- adapter: pod selection and queries -------------------------------------------------------


def _promql_regex(sel: str) -> re.Pattern[str]:
    pattern = sel.split('pod=~"', 1)[1].rstrip('"').replace("\\\\.", "\\.")
    return re.compile(pattern)


def test_a_resource_never_reads_another_resources_pods() -> None:
    chat = _promql_regex(selector("llm", ["chat-l40s", "chat-a10g"]))
    assert chat.fullmatch("chat-l40s-7d9f8c6b5-x2k4p") and chat.fullmatch("chat-a10g-5c4b7d8f9-abcde")
    # resource "chat-l40s" (its A10G pool, its router) and resource "chat" pool "l40s" look alike by prefix
    assert not chat.fullmatch("chat-l40s-a10g-7d9f8c6b5-x2k4p")
    assert not chat.fullmatch("chat-l40s-router-7d9f8c6b5-x2k4p")
    assert not chat.fullmatch("chat-l40s-canary-7d9f8c6b5-x2k4p")  # a canary is its own Deployment
    router = _promql_regex(selector("llm", ["chat-router"]))
    assert router.fullmatch("chat-router-6b8d9c7f4-q9w8e")
    assert not router.fullmatch("chat-router-x-router-6b8d9c7f4-q9w8e")
    assert 'namespace="llm"' in selector("llm", ["chat-router"])


def test_names_too_long_for_kubernetes_generated_suffix_still_match() -> None:
    long = "a-very-long-qwen-deployment-name-for-testing-a100-80gb"  # 54 chars: Kubernetes cuts the pod name
    pod = (long + "-7d9f8c6b5-")[:58] + "x2k4p"
    assert re.fullmatch(pod_regex(long), pod)


def test_router_queries_use_the_routers_metric_names() -> None:
    q = router_queries(selector("llm", ["chat-router"]))
    assert q["p95"].startswith(f"histogram_quantile(0.95, sum by (le)(rate({metric_names.TTFT_SECONDS}_bucket{{")
    assert q["held"].startswith(f"sum({metric_names.HELD}{{") and metric_names.HELD == "qwen_router_held"
    assert metric_names.REQUESTS_TOTAL in q["rate"] and metric_names.QUEUE_LENGTH in q["queue_length"]
    assert TGI().metrics.slo_latency_histogram in queries(TGI().metrics, selector("llm", ["chat-l40s"]))["p95"]


class FakeProm:
    """Answers PromQL by metric name, as Prometheus' instant-vector JSON."""

    def __init__(self, values: dict[str, float | None]) -> None:
        self.values = values
        self.asked: list[str] = []

    def custom_query(self, promql: str, params: Any = None) -> list[dict[str, Any]]:
        self.asked.append(promql)
        for name, value in self.values.items():
            if name in promql:
                if value is None:
                    return []
                metric = {"pod": "chat-l40s-1-a"} if promql.startswith("sum by (pod)") else {}
                return [{"metric": metric, "value": [0, str(value)]}]
        return []


def _source(values: dict[str, float | None]) -> Any:
    from qwen_operator.autoscale.prometheus import PrometheusSource

    src = PrometheusSource.__new__(PrometheusSource)
    src.url, src.timeout = "http://prom", 1.0
    src._prom = FakeProm(values)  # type: ignore[assignment]
    return src


ENGINE = {
    "tgi_queue_size": 2.0,
    "tgi_batch_current_size": 3.0,
    "tgi_request_queue_duration": 0.2,
    "tgi_request_count": 1.5,
}


def test_router_series_replace_the_engines_when_present() -> None:
    router = {
        "qwen_router_held": 4.0,
        "qwen_router_queue_length": 9.0,
        "qwen_router_ttft": 0.9,
        "qwen_router_requests": 2.5,
    }
    s = _source({**router, **ENGINE}).fetch("llm", ["chat-l40s"], TGI().metrics, "chat-router")
    assert s.ok and s.routed and s.latency_source == "router"
    assert (s.p95_seconds, s.held, s.router_in_flight, s.request_rate) == (0.9, 4.0, 9.0, 2.5)
    assert s.queue == 2.0 and s.in_flight == 3.0  # the engines' own gauges are still read


def test_without_router_series_the_engines_are_the_fallback() -> None:
    src = _source({"qwen_router_held": None, **ENGINE})
    s = src.fetch("llm", ["chat-l40s"], TGI().metrics, "chat-router")
    assert s.ok and not s.routed and s.latency_source == "engine"
    assert (s.p95_seconds, s.request_rate, s.held, s.router_in_flight) == (0.2, 1.5, None, None)
    assert not any("qwen_router_ttft" in q for q in src._prom.asked)  # no router: no further router queries
    # routing disabled: the router is not asked about at all
    src = _source(ENGINE)
    assert not src.fetch("llm", ["chat-l40s"], TGI().metrics).routed
    assert not any("qwen_router" in q for q in src._prom.asked)


def test_an_idle_router_gives_no_ttft_and_the_engine_p95_fills_in() -> None:
    s = _source({"qwen_router_held": 0.0, "qwen_router_ttft": None, **ENGINE}).fetch(
        "llm", ["chat-l40s"], TGI().metrics, "chat-router"
    )
    assert s.routed and s.held == 0.0 and s.p95_seconds == 0.2 and s.latency_source == "engine"


# --- controller ------------------------------------------------------------------------------

CATALOG = load_catalog(None)


def _qwd(routing: bool, min_replicas: int) -> dict[str, Any]:
    return {
        "metadata": {"name": "chat", "namespace": "llm", "uid": "u", "generation": 1},
        "spec": {
            "model": {"name": "Qwen/Qwen3-14B", "registry": "s3://models/qwen3-14b", "quantization": "fp8"},
            "placement": {"gpuTypes": ["L40S", "A10G"]},
            "scaling": {"enabled": True, "minReplicas": min_replicas, "maxReplicas": 6},
            "routing": {"enabled": routing},
        },
        "status": {"autoscaler": {"desiredReplicas": 0}} if min_replicas == 0 else {},
    }


def _cluster(qwd: dict[str, Any], ready: int) -> Observed:
    nodes = [
        {
            "metadata": {"name": f"n-{t}", "labels": {"nvidia.com/gpu.product": CATALOG.gpus[t].product_label}},
            "spec": {},
            "status": {"allocatable": {"nvidia.com/gpu": "4"}, "conditions": [{"type": "Ready", "status": "True"}]},
        }
        for t in ("L40S", "A10G")
    ]
    dep = {
        "metadata": {"name": "chat-l40s", "annotations": {GPU_TYPE_ANNOTATION: "L40S"}},
        "spec": {"replicas": ready},
        "status": {"readyReplicas": ready},
    }
    return Observed(qwd=qwd, deployments=[dep] if ready else [], nodes=nodes)


class FakeKube:
    def __init__(self) -> None:
        self.status: dict[str, Any] = {}
        self.events: list[tuple[str, str, str]] = []

    def apply_status(self, ns: str, name: str, status: dict[str, Any], manager: str) -> None:
        self.status = status

    def event(self, obj: Any, kind: str, reason: str, message: str) -> None:
        self.events.append((kind, reason, message))


def _tick(qwd: dict[str, Any], ready: int, signals: FleetSignals) -> tuple[FakeKube, list[tuple[Any, ...]]]:
    calls: list[tuple[Any, ...]] = []

    def fetch(*args: Any) -> FleetSignals:
        calls.append(args)
        return signals

    kube = FakeKube()
    scaler = Autoscaler(kube, CATALOG, fetch, lambda key: _cluster(qwd, ready), "http://prometheus")
    asyncio.run(scaler.tick(("llm", "chat")))
    return kube, calls


def test_the_controller_wakes_a_fleet_at_zero_when_the_router_holds_a_request() -> None:
    held = FleetSignals(held=2.0, router_in_flight=2.0, request_rate=0.0, latency_source="")
    kube, calls = _tick(_qwd(routing=True, min_replicas=0), 0, held)
    ns, prefixes, _, router = calls[0]
    assert (ns, router) == ("llm", "chat-router") and "chat-l40s" in prefixes and "chat-a10g" in prefixes
    a = kube.status["autoscaler"]
    assert a["desiredReplicas"] == 1 and len(a["desiredPools"]) == 1 and a["desiredPools"][0]["replicas"] == 1
    assert "holds 2 request(s)" in a["lastDecision"] and a["queueDepth"] == 2.0
    assert any(r == "ScaledUp" and "scale from zero" in m for _, r, m in kube.events)
    active = kube.status["conditions"][0]
    assert active["status"] == "True" and "router held requests" in active["message"]


def test_the_controller_stays_at_zero_when_nothing_is_held() -> None:
    kube, _ = _tick(_qwd(routing=True, min_replicas=0), 0, FleetSignals(held=0.0, router_in_flight=0.0))
    a = kube.status["autoscaler"]
    assert a["desiredReplicas"] == 0 and not a.get("desiredPools") and "no traffic" in a["lastDecision"]


def test_without_routing_the_router_is_not_queried_and_the_engine_fallback_is_named() -> None:
    signals = FleetSignals(queue=0.0, in_flight=0.0, p95_seconds=0.3, request_rate=0.5, latency_source="engine")
    kube, calls = _tick(_qwd(routing=False, min_replicas=1), 1, signals)
    assert calls[0][3] is None
    assert "engine fallback" in kube.status["conditions"][0]["message"]


def test_observation_takes_in_flight_and_held_from_the_router() -> None:
    pools = [a10g(ready=1)]
    routed = observation(0.0, pools, FleetSignals(queue=1.0, in_flight=2.0, held=3.0, router_in_flight=7.0))
    assert routed.in_flight == 7.0 and routed.held == 3.0 and routed.queue_depth == 1.0
    engine = observation(0.0, pools, FleetSignals(queue=1.0, in_flight=2.0))
    assert engine.in_flight == 3.0 and engine.held is None


# --- simulator: the same decisions at minReplicas 0 ---------------------------------------------

ROWS = [TraceRow(i * 1.0, 300 + (i * 37) % 900, 40 + (i * 13) % 160) for i in range(400)]


def _gap_trace() -> Trace:
    """1 req/s for 3 minutes, nothing for 12, then 1 req/s for 5 minutes."""
    rng = random.Random(3)
    tr = Trace("gap", "test")
    t = 0.0
    while t < 20 * 60:
        t += rng.expovariate(1.0)
        if 3 * 60 <= t < 15 * 60:
            t = 15 * 60.0
            continue
        if t >= 20 * 60:
            break
        row = ROWS[rng.randrange(len(ROWS))]
        tr.arrivals.append(t)
        tr.prompt_tokens.append(row.prompt_tokens)
        tr.output_tokens.append(row.output_tokens)
    tr.duration = 20 * 60.0
    return tr


def test_the_simulator_scales_to_zero_in_the_gap_and_wakes_on_held_requests() -> None:
    cfg = SimConfig(gpus={"L40S": 2, "A10G": 2}, seed=1, min_replicas=0, scale_down_delay_seconds=300)
    profiles, _ = build_profiles(ROWS, cfg)
    stream: list[tuple[Observation, Any]] = []
    result = simulate_policy("qwen", _gap_trace(), profiles, cfg, record=lambda o, d: stream.append((o, d)))
    totals = [(o.now, d.total) for o, d in stream]
    zero = [t for t, n in totals if n == 0]
    assert zero and 3 * 60 + 300 <= min(zero) < 15 * 60, totals  # a whole quiet window after the last request
    wake = next(d for o, d in stream if o.now > 15 * 60 and d.total > 0)
    assert wake.kind == "scale-up" and "scale from zero" in wake.reason and "holds" in wake.reason
    # the simulated fleet has no hold queue: what arrived at zero was rejected, and is what woke it
    assert result.rejected > 0
    assert max(n for t, n in totals if t > 16 * 60) >= 1 and not math.isnan(result.gpu_hours)

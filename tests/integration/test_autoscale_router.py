"""The autoscaler on the router's real signals, against the real Prometheus (and the sandbox
control plane with the real operator): the adapter reads the router's TTFT P95 and held
requests of this resource's router pods only, and a QwenDeployment at ``minReplicas: 0``
whose router holds a request scales from zero.

The router runs in-process (the shipped :class:`~qwen_operator.router.proxy.Router`, fed a
static endpoint set, as ``tests/unit/test_router_proxy.py`` does) and is registered as a
Prometheus target with the labels pod discovery gives a router pod (``namespace``, ``pod``;
:mod:`qwen_operator.router.metric_names`). The engine is the SIMULATED TGI server.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

import pytest
import yaml
from kubernetes import client

from qwen_operator.api.spec import QwenDeploymentSpec
from qwen_operator.autoscale.prometheus import FleetSignals, PrometheusSource
from qwen_operator.capacity.model import ReplicaModel
from qwen_operator.catalog import load_catalog
from qwen_operator.controller.autoscaler import pool_estimates
from qwen_operator.engines.runtimes import TGI
from qwen_operator.render.names import pool_deployment_name, router_selector
from qwen_operator.router import metric_names
from qwen_operator.router.discovery import StaticEndpoints, Target
from qwen_operator.router.picking import estimate_prompt_tokens
from qwen_operator.router.proxy import Router, RouterConfig
from qwen_operator.sandbox.cluster import Sandbox
from qwen_operator.sandbox.prometheus import PrometheusServer
from qwen_operator.sandbox.prometheus import Target as ScrapeTarget
from qwen_operator.sim.server import ServedTGI, SimulatedTGI, serve
from qwen_operator.testing.background import BackgroundLoop
from qwen_operator.testing.operator import OperatorProcess
from qwen_operator.testing.wait import wait_for

pytestmark = pytest.mark.prometheus
T = TypeVar("T")
GROUP, VERSION, PLURAL = "serving.qwenops.io", "v1alpha1", "qwendeployments"
SAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "qwen3-14b-chat.yaml"


Loop = BackgroundLoop  # servers and the router live on it; sync clients call in


@pytest.fixture()
def bg() -> Iterator[Loop]:
    loop = Loop()
    yield loop
    loop.close()


def start_router(bg: Loop, hold_timeout: float = 120) -> Router:
    """A router with no endpoint yet (a fleet at zero replicas): every request is held."""
    router = Router(RouterConfig(affinity=False, hold_timeout=hold_timeout))
    bg.run(router.start(source=StaticEndpoints([]), shutdown_timeout=1))
    wait_for("router synced", lambda: router.synced)
    return router


def send(url: str, answers: list[int], timeout: float = 150) -> threading.Thread:
    """One chat request from a client thread; its HTTP status lands in ``answers``."""
    body = {"messages": [{"role": "user", "content": "Why scale from zero?"}], "max_tokens": 4}

    def go() -> None:
        req = Request(
            url + "/v1/chat/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urlopen(req, timeout=timeout) as resp:
                resp.read()
                answers.append(resp.status)
        except HTTPError as err:
            answers.append(err.code)
        except (URLError, OSError):
            answers.append(-1)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread


def addr(router: Router) -> str:
    return f"127.0.0.1:{router.port}"


def test_adapter_reads_this_resources_router_ttft_and_held_only(prometheus: PrometheusServer, bg: Loop) -> None:
    chat, lookalike = start_router(bg), start_router(bg)
    tgi: ServedTGI = bg.run(
        serve(
            SimulatedTGI(
                ReplicaModel.build("Qwen3-14B", "A10G", 1, "fp8"),
                time_scale=50.0,
                cold_start_seconds=0.0,
                default_max_new_tokens=4,
            )
        )
    )
    try:
        prometheus.set_targets(
            [
                ScrapeTarget(addr(chat), {"namespace": "llm", "pod": "chat-router-5d8c7b9f6-abcde"}),
                # resource "chat-router"'s router: the old prefix regex ("chat-router-.*") would read it
                ScrapeTarget(addr(lookalike), {"namespace": "llm", "pod": "chat-router-router-6f7d8c9b5-zzzzz"}),
                ScrapeTarget(addr(lookalike), {"namespace": "other", "pod": "chat-router-5d8c7b9f6-abcde"}),
                ScrapeTarget(tgi.base_url.split("//", 1)[1], {"namespace": "llm", "pod": "chat-a10g-7c9d8b6f5-qwert"}),
            ]
        )
        wait_for("4 targets up", lambda: sum(t["health"] == "up" for t in prometheus.active_targets()) == 4, 60)
        source = PrometheusSource(prometheus.url, timeout=3)
        metrics = TGI().metrics

        idle = source.fetch("llm", ["chat-a10g"], metrics, "chat-router")
        assert idle.ok and idle.routed and idle.held == 0 and idle.p95_seconds is None
        answers: list[int] = []
        # one request served first, so chat's TTFT series exist before the held ones are measured
        # (Prometheus sees no increase in a series' first sample: a cold router's first requests are lost)
        tgi_target = {"tgi": Target("tgi", tgi.base_url, "A10G")}
        bg.call(lambda: chat.update_targets(tgi_target))
        send(chat.url, answers).join(60)
        assert answers == [200]
        wait_for(
            "chat's TTFT series scraped",
            lambda: prometheus.query(f'{metric_names.TTFT_SECONDS}_count{{pod="chat-router-5d8c7b9f6-abcde"}}'),
            30,
        )
        bg.call(lambda: chat.update_targets({}))  # back to zero replicas
        clients = [send(chat.url, answers) for _ in range(2)] + [send(lookalike.url, answers) for _ in range(3)]
        wait_for("held in both routers", lambda: bg.call(chat.held) == 2 and bg.call(lookalike.held) == 3)
        held = wait_for(
            "Prometheus sees chat's 2 held requests",
            lambda: (s := source.fetch("llm", ["chat-a10g"], metrics, "chat-router")).held == 2 and s,
            30,
        )
        assert held.router_in_flight == 2  # accepted, not answered: held plus sent
        time.sleep(2.0)  # the held requests' TTFT includes this wait, as the client's does
        bg.call(lambda: chat.update_targets(tgi_target))
        bg.call(lambda: lookalike.update_targets(tgi_target))
        for c in clients:
            c.join(60)
        assert answers == [200] * 6, answers
        after = wait_for(
            "the router's TTFT P95",
            lambda: (s := source.fetch("llm", ["chat-a10g"], metrics, "chat-router")).latency_source == "router" and s,
            30,
        )
        # two of the three clients waited >= 2 s for their first byte; TGI's queue wait never saw the hold
        assert after.p95_seconds is not None and after.p95_seconds >= 2.0, after
        assert after.held == 0 and after.request_rate is not None and after.request_rate > 0
        # the request shape the autoscaler weighs pools at: chat's router's mean estimated prompt
        # (every request here is the same body), over its requests only (3, not the lookalike's)
        prompt = estimate_prompt_tokens({"messages": [{"role": "user", "content": "Why scale from zero?"}]})
        shaped = wait_for(
            "the router's prompt-token series",
            lambda: (s := source.fetch("llm", ["chat-a10g"], metrics, "chat-router")).prompt_tokens and s,
            30,
        )
        assert shaped.prompt_tokens == pytest.approx(prompt, rel=1e-6), shaped
        assert shaped.prompt_samples is not None and shaped.prompt_samples > 0, shaped
        # ... and the reply length, from the engine's own generated-tokens histogram (TGI's name): the
        # mean of what the simulated TGI generated for the 6 requests both routers sent it
        gen = tgi.sim.metrics.generated_tokens
        assert gen.count == 6 and gen.sum > 0  # every answer above came from this replica
        mean = gen.sum / gen.count

        def scraped() -> FleetSignals | None:
            s = source.fetch("llm", ["chat-a10g"], metrics)
            return s if s.output_tokens is not None and abs(s.output_tokens - mean) <= 1e-6 * mean else None

        replies = wait_for("the engine's generated-tokens mean over all 6 replies", scraped, 30)
        assert replies.output_samples is not None and replies.output_samples > 0, replies
        engine = source.fetch("llm", ["chat-a10g"], metrics)  # routing external: the fallback
        assert not engine.routed and (engine.p95_seconds is None or engine.p95_seconds < after.p95_seconds)
        # a namespace with no router series: the adapter falls back to the engine's signals
        assert not source.fetch("nowhere", ["chat-a10g"], metrics, "chat-router").routed
    finally:
        bg.run(chat.stop())
        bg.run(lookalike.stop())
        bg.run(tgi.close())


def _resource(name: str) -> dict[str, Any]:
    body = yaml.safe_load(SAMPLE.read_text())
    body["metadata"] = {"name": name}
    body["spec"]["model"].pop("credentialsSecret", None)
    body["spec"]["model"]["registry"] = "hf://Qwen/Qwen3-14B"  # no registry here: pools start at once
    body["spec"]["placement"]["gpuTypes"] = ["A10G", "L40S"]
    body["spec"]["scaling"] = {
        "enabled": True,
        "minReplicas": 0,
        "maxReplicas": 3,
        "intervalSeconds": 5,
        "scaleDownDelaySeconds": 300,
    }
    body["spec"]["routing"] = {"enabled": True}
    return dict(body)


@pytest.mark.cluster
def test_a_held_request_scales_a_resource_at_zero_to_one(
    sandbox: Sandbox,
    kube_api: Any,
    namespace: str,
    qwen_crd: Path,
    prometheus: PrometheusServer,
    bg: Loop,
    tmp_path: Path,
) -> None:
    custom, core, apps = client.CustomObjectsApi(kube_api), client.CoreV1Api(kube_api), client.AppsV1Api(kube_api)
    op = OperatorProcess(sandbox.kubeconfig, tmp_path / "operator.log", ["--prometheus-url", prometheus.url]).start()
    router = start_router(bg)
    answers: list[int] = []
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _resource("wake"))
        selector = ",".join(f"{k}={v}" for k, v in router_selector("wake").items())
        # the router pod the rendered Deployment created: its generated name is what pod discovery labels
        pod = wait_for(
            "a router pod of wake-router",
            lambda: next(
                (p.metadata.name for p in core.list_namespaced_pod(namespace, label_selector=selector).items), None
            ),
            90,
        )
        prometheus.set_targets([ScrapeTarget(addr(router), {"namespace": namespace, "pod": pod})])

        def autoscaler() -> dict[str, Any]:
            obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "wake")
            return dict((obj.get("status") or {}).get("autoscaler") or {})

        idle = wait_for(
            "the autoscaler reads the router at zero (nothing held: stay at zero)",
            lambda: "the router holds no request" in (a := autoscaler()).get("lastDecision", "") and a,
            120,
        )
        assert idle["desiredReplicas"] == 0 and not idle.get("desiredPools"), idle

        send(router.url, answers)
        wait_for("request held", lambda: bg.call(router.held) == 1)
        woke = wait_for(
            "desiredReplicas 1 from the held request", lambda: (a := autoscaler()).get("desiredReplicas") == 1 and a, 90
        )
        # one replica, on the pool the planner rates cheapest per request/s within the SLO
        spec = QwenDeploymentSpec.model_validate(_resource("wake")["spec"])
        cheapest = min(pool_estimates(spec, load_catalog(None), {}), key=lambda e: e.cost_per_hour / e.throughput)
        assert woke["desiredPools"] == [{"gpuType": cheapest.gpu_type, "replicas": 1}], woke
        assert "scale from zero, the router holds 1 request(s)" in woke["lastDecision"], woke
        assert woke["queueDepth"] == 1, woke
        pool = pool_deployment_name("wake", cheapest.gpu_type)
        wait_for(
            "the reconciler sizes that pool to 1",
            lambda: (apps.read_namespaced_deployment(pool, namespace).spec.replicas or 0) == 1,
            60,
        )
        events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=wake").items
        assert any(e.reason == "ScaledUp" and "scale from zero" in (e.message or "") for e in events)
    finally:
        bg.run(router.stop())
        op.stop()
        print(f"--- operator log tail ---\n{op.tail(40)}")

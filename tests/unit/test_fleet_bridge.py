"""The simulated fleet's plumbing: pod -> replica parsing, the balancer, the bridge's
start/route/retire cycle and the load generator's accounting (no cluster: pods are the
dicts the renderer produces, servers are real simulated TGI servers on loopback)."""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from qwen_operator.api import QwenDeploymentSpec
from qwen_operator.catalog import Catalog
from qwen_operator.planner import plan
from qwen_operator.render import RenderContext, render
from qwen_operator.sandbox.prometheus import Target
from qwen_operator.sim.balancer import Backend, LeastOutstandingBalancer
from qwen_operator.sim.fleet_bridge import FleetBridge, p95
from qwen_operator.sim.loadgen import LoadGenerator, Phase, prompt_of, sample_sizes
from qwen_operator.sim.pod_replica import PodSpecError, cold_start_left, parse_go_duration, pod_replica
from qwen_operator.sim.trace import TraceRow


def rendered_pod(name: str, gpu_types: list[str], ready_after: str | None = None, **status: Any) -> dict[str, Any]:
    """A pod as the API returns it for the first pool Deployment the operator renders."""
    spec = QwenDeploymentSpec.model_validate(
        {
            "model": {"name": "Qwen/Qwen3-14B", "registry": "s3://m/q", "quantization": "fp8"},
            "placement": {"gpuTypes": gpu_types},
            "runtime": {"maxConcurrentRequests": 64},
        }
    )
    annotations = (("sandbox.qwenops.io/ready-after", ready_after),) if ready_after else ()
    ctx = RenderContext(name="chat", namespace="llm", pod_annotations=annotations)
    dep = next(o for o in render(spec, plan(spec, Catalog()), ctx, Catalog()) if o["kind"] == "Deployment")
    tpl = copy.deepcopy(dep["spec"]["template"])
    meta = {**tpl["metadata"], "name": name, "uid": f"uid-{name}", "namespace": "llm"}
    return {"metadata": meta, "spec": tpl["spec"], "status": status}


def running(ready: bool, started: datetime | None = None) -> dict[str, Any]:
    started = started or datetime.now(UTC)
    return {
        "phase": "Running",
        "startTime": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }


@pytest.mark.parametrize(
    ("text", "seconds"), [("15s", 15.0), ("1m30s", 90.0), ("250ms", 0.25), ("0", 0.0), ("1h", 3600.0)]
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["15", "s", "1m 30s", "fast"])
def test_bad_go_durations_name_the_value(text: str) -> None:
    with pytest.raises(PodSpecError, match="Go duration"):
        parse_go_duration(text)


def test_replica_follows_the_rendered_pod() -> None:
    now = datetime.now(UTC)  # one clock reading: rendering may take a while on a loaded machine
    started = now - timedelta(seconds=4)
    rep = pod_replica(rendered_pod("chat-a10g-x", ["A10G"], "20s", **running(False, started)))
    assert (rep.gpu, rep.shards, rep.quantization, rep.model) == ("A10G", 1, "fp8", "Qwen/Qwen3-14B")
    assert rep.pool == "a10g" and rep.running and not rep.ready
    assert dict(rep.limits)["max_concurrent_requests"] == 64
    assert 15.0 <= cold_start_left(rep, now.timestamp()) <= 16.5


def test_tensor_parallel_pod_gets_its_shards() -> None:
    # bf16 Qwen3-14B needs two A10Gs per replica
    pod = rendered_pod("chat-a10g-y", ["A10G"], **running(True))
    server = pod["spec"]["containers"][0]
    i = server["args"].index("--quantize")
    del server["args"][i : i + 2]
    server["resources"]["limits"]["nvidia.com/gpu"] = "2"
    rep = pod_replica(pod)
    assert rep.shards == 2 and rep.quantization == "none" and rep.ready


def test_deleting_pod_is_neither_running_nor_ready() -> None:
    pod = rendered_pod("chat-a10g-z", ["A10G"], **running(True))
    pod["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    rep = pod_replica(pod)
    assert not rep.running and not rep.ready


def test_pod_on_an_unknown_gpu_is_refused_with_the_label() -> None:
    pod = rendered_pod("chat-a10g-w", ["A10G"], **running(True))
    pod["spec"]["nodeSelector"]["nvidia.com/gpu.product"] = "NVIDIA-T4"
    with pytest.raises(PodSpecError, match="NVIDIA-T4"):
        pod_replica(pod)


def test_p95_and_sizes() -> None:
    assert p95([]) is None
    assert p95([float(i) for i in range(1, 101)]) == 95.0
    rows = [TraceRow(0.0, 5000, 700), TraceRow(1.0, 100, 10)]
    sizes = sample_sizes(rows, 50, seed=3, max_prompt_tokens=1024, max_output_tokens=32)
    assert sizes == sample_sizes(rows, 50, seed=3, max_prompt_tokens=1024, max_output_tokens=32)
    assert {(s.prompt_tokens, s.output_tokens) for s in sizes} == {(1024, 32), (100, 10)}
    assert len(prompt_of(300)) == 1200


def test_balancer_prefers_the_least_outstanding_ready_backend() -> None:
    lb = LeastOutstandingBalancer()
    lb.backends = {
        "a": Backend("a", "http://x", routable=True, outstanding=3),
        "b": Backend("b", "http://y", routable=True, outstanding=1),
        "c": Backend("c", "http://z", routable=False, outstanding=0),
    }
    assert lb.pick() is lb.backends["b"]
    lb.backends["b"].routable = False
    assert lb.pick() is lb.backends["a"]
    lb.backends["a"].routable = False
    assert lb.pick() is None


def test_bridge_starts_routes_and_retires_servers_and_nothing_is_lost() -> None:
    targets: list[list[Target]] = []
    logs: list[str] = []

    async def run() -> None:
        bridge = FleetBridge(None, "llm", "chat", set_targets=targets.append, log=logs.append)
        await bridge.balancer.start()  # no cluster: drive sync() with pod dicts ourselves
        a = rendered_pod("chat-a10g-a", ["A10G"], **running(True))
        b = rendered_pod("chat-a10g-b", ["A10G"], "30s", **running(False))
        await bridge.sync([a, b])
        assert bridge.counts() == ({"a10g": 2}, {"a10g": 1})  # b loads: not routable
        assert {t.labels["pod"] for t in targets[-1]} == {"chat-a10g-a", "chat-a10g-b"}
        assert all(t.labels["namespace"] == "llm" and t.address.startswith("127.0.0.1:") for t in targets[-1])

        rows = [TraceRow(0.0, 200, 8)]
        load = await LoadGenerator(bridge.url, [Phase("burst", 2.0, 8.0)], rows, seed=1, log=logs.append).start()
        await asyncio.sleep(1.0)
        await bridge.sync([a])  # b deleted mid-run (it never served: it was not Ready)
        stats = await load.wait(drain_seconds=30)
        await asyncio.sleep(0.2)
        assert stats.sent > 5 and stats.ok == stats.sent and stats.lost == 0 and stats.errors == 0
        assert bridge.counts() == ({"a10g": 1}, {"a10g": 1})
        assert {t.labels["pod"] for t in targets[-1]} == {"chat-a10g-a"}
        c = bridge.counters()
        assert (c.ok, c.errors, c.servers_started, c.servers_stopped) == (stats.sent, 0, 2, 1)
        assert bridge.sample().p95_seconds is not None
        await bridge.stop()

    asyncio.run(run())
    assert any("SIMULATED replica for pod chat-a10g-b stopped" in line for line in logs)
    assert all("SIMULATED" in line for line in logs)


def test_a_deleted_pod_drains_its_requests_before_its_server_stops() -> None:
    async def run() -> None:
        from huggingface_hub import AsyncInferenceClient

        bridge = FleetBridge(None, "llm", "chat", log=lambda _m: None)
        await bridge.balancer.start()
        pod = rendered_pod("chat-a10g-d", ["A10G"], **running(True))
        await bridge.sync([pod])
        client = AsyncInferenceClient(base_url=bridge.url)
        reply = asyncio.ensure_future(client.text_generation(prompt_of(100), max_new_tokens=40))  # ~1.3 s (simulated)
        await asyncio.sleep(0.3)
        await bridge.sync([])  # the pod is deleted while its request runs
        assert bridge.balancer.pick() is None  # no new requests go there
        assert bridge.servers_stopped == 0  # but it keeps serving the one in flight
        assert isinstance(await reply, str)
        await asyncio.sleep(0.2)
        assert bridge.servers_stopped == 1 and not bridge.replicas
        assert bridge.counters().ok == 1
        await client.close()
        await bridge.stop()

    asyncio.run(run())

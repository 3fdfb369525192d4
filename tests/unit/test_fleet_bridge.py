"""The simulated fleet's plumbing: pod -> replica parsing, the bridge's start/dial/retire
cycle, the router bridge's pure parts (argv as rendered, ServiceAccount kubeconfig, the
router's request counts) and the load generator's per-request accounting (no cluster: pods
are the dicts the renderer produces, servers are real simulated TGI servers on loopback;
the router path on a real control plane is the e2e's)."""

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
from qwen_operator.render.router import router_deployment
from qwen_operator.sandbox.prometheus import Target
from qwen_operator.sim.fleet_bridge import FleetBridge, p95
from qwen_operator.sim.loadgen import LoadGenerator, Outcome, Phase, RequestSize, prompt_of, sample_sizes
from qwen_operator.sim.pod_replica import PodSpecError, cold_start_left, parse_go_duration, pod_replica
from qwen_operator.sim.router_bridge import local_argv, requests_by_code, service_account_kubeconfig
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
    objs = render(spec, plan(spec, Catalog()), ctx, Catalog())
    dep = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] != "chat-router")
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


def spec_of(gpu_types: list[str]) -> QwenDeploymentSpec:
    return QwenDeploymentSpec.model_validate(
        {"model": {"name": "Qwen/Qwen3-14B", "registry": "s3://m/q", "quantization": "fp8"},
         "placement": {"gpuTypes": gpu_types}}
    )  # fmt: skip


def test_router_argv_is_the_rendered_command_with_only_argv0_resolved(tmp_path: Any) -> None:
    dep = router_deployment(spec_of(["L40S"]), RenderContext(name="chat", namespace="llm"))
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    python = tmp_path / "python"
    argv = local_argv(container, python=str(python))
    assert argv[:3] == [str(python), "-m", "qwen_operator.cli"]  # no qwenctl script next to it
    assert argv[3:] == container["command"][1:] + container["args"]  # every argument as rendered
    (tmp_path / "qwenctl").write_text("")
    assert local_argv(container, python=str(python)) == [str(tmp_path / "qwenctl"), *argv[3:]]
    with pytest.raises(ValueError, match="not 'qwenctl'"):
        local_argv({"command": ["sh", "-c", "true"]})


def test_service_account_kubeconfig_and_router_request_counts() -> None:
    cfg = service_account_kubeconfig("https://127.0.0.1:6443", "/ca.crt", "llm", "chat-router", "tok")
    (user,) = cfg["users"]
    assert user == {"name": "system:serviceaccount:llm:chat-router", "user": {"token": "tok"}}
    assert cfg["clusters"][0]["cluster"] == {"server": "https://127.0.0.1:6443", "certificate-authority": "/ca.crt"}
    page = (
        "# HELP qwen_router_requests_total Requests answered\n"
        'qwen_router_requests_total{code="200",pool="L40S"} 12.0\n'
        'qwen_router_requests_total{code="200",pool="A10G"} 3.0\n'
        'qwen_router_requests_total{code="503",pool="none"} 1.0\n'
        'qwen_router_retries_total{reason="connect"} 2.0\n'
    )
    assert requests_by_code(page) == {"200": 15, "503": 1}


def test_outcome_wait_is_queue_plus_time_outside_the_server() -> None:
    o = Outcome(at=0.0, status=200, seconds=2.5, first_byte_seconds=2.5, queue_seconds=0.4, server_seconds=2.0)
    assert o.wait_seconds == pytest.approx(0.9)  # 0.5 s held in the router or on the way
    assert Outcome(0.0, 502, 0.1, None, None, None).wait_seconds is None


def test_bridge_starts_dials_and_retires_servers_and_nothing_is_lost() -> None:
    targets: list[list[Target]] = []
    logs: list[str] = []

    async def run() -> None:
        bridge = FleetBridge(None, "llm", "chat", set_targets=targets.append, log=logs.append)
        await bridge.start()  # no cluster: no routers; drive sync() with pod dicts ourselves
        a = rendered_pod("chat-a10g-a", ["A10G"], **running(True))
        b = rendered_pod("chat-a10g-b", ["A10G"], "30s", **running(False))
        await bridge.sync([a, b])
        assert bridge.counts() == ({"a10g": 2}, {"a10g": 1})  # b loads: not routable
        assert {t.labels["pod"] for t in targets[-1]} == {"chat-a10g-a", "chat-a10g-b"}
        assert all(t.labels["namespace"] == "llm" and t.address.startswith("127.0.0.1:") for t in targets[-1])
        assert set(bridge.dial_urls) == {"chat-a10g-a", "chat-a10g-b"}  # what the dial annotation would say
        assert {u.rsplit(":", 1)[1] for u in bridge.dial_urls.values()} == {
            t.address.split(":")[1] for t in targets[-1]
        }
        with pytest.raises(LookupError, match="no routers"):
            bridge.target()

        rows = [TraceRow(0.0, 200, 8)]
        url = bridge.dial_urls["chat-a10g-a"]
        load = LoadGenerator(url, [Phase("burst", 2.0, 8.0)], rows, seed=1, log=logs.append, on_outcome=bridge.record)
        await load.start()
        await asyncio.sleep(1.0)
        await bridge.sync([a])  # b deleted mid-run (it never served: it was not Ready)
        stats = await load.wait(drain_seconds=30)
        await asyncio.sleep(1.5)
        assert stats.sent > 5 and stats.ok == stats.sent and stats.lost == 0 and stats.errors == 0
        assert bridge.counts() == ({"a10g": 1}, {"a10g": 1})
        assert {t.labels["pod"] for t in targets[-1]} == {"chat-a10g-a"}
        c = bridge.counters()
        assert (c.requests, c.ok, c.errors, c.servers_started, c.servers_stopped) == (stats.sent, stats.sent, 0, 2, 1)
        assert all(o.queue_seconds is not None and o.server_seconds is not None for o in load.outcomes)
        assert bridge.sample().p95_seconds is not None
        await bridge.stop()

    asyncio.run(run())
    assert any("SIMULATED replica for pod chat-a10g-b stopped" in line for line in logs)
    assert all("SIMULATED" in line for line in logs)


def test_load_generator_counts_every_status_once() -> None:
    async def run() -> None:
        from aiohttp import web

        codes = iter([200, 429, 503])

        async def generate(request: web.Request) -> web.Response:
            code = next(codes)
            return web.json_response({"generated_text": "x"}, status=code, headers={"x-queue-time": "250"})

        app = web.Application()
        app.router.add_post("/generate", generate)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        targets = iter([f"http://127.0.0.1:{port}"] * 3)

        def pick() -> str:
            return next(targets, None) or (_ for _ in ()).throw(LookupError("no Ready router"))

        load = LoadGenerator(pick, [], [TraceRow(0.0, 10, 2)], max_requests=10, log=lambda _m: None)
        await load.start()
        for _ in range(4):
            await load.send_now(RequestSize(10, 2))
        stats = await load.wait()
        await runner.cleanup()
        assert (stats.sent, stats.ok, stats.rejected, stats.errors, stats.lost) == (4, 1, 1, 2, 2)  # lost = errors
        assert sorted(o.status for o in load.outcomes) == [0, 200, 429, 503]
        assert any("HTTP 503" in e for e in stats.error_samples) and any(
            "no Ready router" in e for e in stats.error_samples
        )
        assert load.outcomes[0].queue_seconds == pytest.approx(0.25)

    asyncio.run(run())


def test_a_deleted_pod_drains_its_requests_before_its_server_stops() -> None:
    async def run() -> None:
        bridge = FleetBridge(None, "llm", "chat", log=lambda _m: None)
        await bridge.start()
        pod = rendered_pod("chat-a10g-d", ["A10G"], **running(True))
        await bridge.sync([pod])
        load = LoadGenerator(bridge.dial_urls["chat-a10g-d"], [], [TraceRow(0.0, 10, 2)], log=lambda _m: None)
        await load.start()
        reply = load.send_now(RequestSize(100, 40))  # ~1.3 s (simulated)
        await asyncio.sleep(0.3)
        await bridge.sync([])  # the pod is deleted while its request runs
        assert bridge.counts() == ({}, {})  # not routable any more
        assert bridge.servers_stopped == 0  # but it keeps serving the one in flight
        await reply
        assert load.stats.ok == 1
        await asyncio.sleep(1.5)
        assert bridge.servers_stopped == 1 and not bridge.replicas
        await load.wait()
        await bridge.stop()

    asyncio.run(run())

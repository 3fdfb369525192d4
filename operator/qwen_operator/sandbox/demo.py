"""``qwenctl sandbox demo``: the whole product on a laptop, in a few minutes, no GPU.

It brings up the sandbox control plane with mixed A10G / L40S / A100 pools, the real
Prometheus, a real S3-compatible registry (versitygw), publishes a small model version,
starts the operator, applies an autoscaled QwenDeployment, and replays a compressed
peak-and-trough through the user's data path: the router pods the operator renders
(``qwenctl router``, run as local processes with exactly the rendered command and arguments
and the router's own ServiceAccount) in front of the SIMULATED TGI fleet (one simulated
server per Running pod, with modelled cold starts). The only stand-in on that path is how a
pod address is dialled: there is no pod network, so each pod carries the loopback URL of its
simulated server in ``sandbox.qwenops.io/dial`` (see :mod:`qwen_operator.sim.fleet_bridge`).
Mid-run it publishes a new model version that differs in a few layers (layer-diff: only
changed chunks move) and moves the ``stable`` tag. A live terminal view shows the Ready
router pods, replicas per pool, queue, P95, $/h and the model version; at the end
(or on Ctrl-C) it writes a PNG timeline and tears everything down.

Placement follows the planner's fill order ($/h per request/s within the P95 TTFT SLO):
L40S first, then A100-80GB, then A10G. One simulated L40S replica carries ~20-40 req/s of
these requests within the SLO, so the sandbox has ONE L40S and the base load is 15 req/s:
the 4x spike spills over to A100-80GB, and the model update mid-run finds the L40S pool full
and rolls it one replica at a time with one replica borrowed on the next type with room
(ready capacity never drops).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import yaml

from ..api import GROUP, PLURAL, VERSION
from ..api.crdgen import DEFAULT_OUTPUT as CRD_FILE
from ..router.discovery import DIAL_ENV
from .binaries import locate
from .cluster import Sandbox
from .demo_view import Row, render_row, write_timeline
from .prometheus import PrometheusServer

if TYPE_CHECKING:
    from ..sim.fleet_bridge import Sample

#: One L40S (the first choice): the spike spills over to A100-80GB, and the roll borrows a replica.
DEMO_GPUS = "a10g=4x1,l40s=1,a100-80gb=8"
#: Base request rate, req/s (the spike is 4x): the L40S replica holds the base, not the spike.
DEFAULT_BASE_RATE = 15.0
NAMESPACE = "demo"
NAME = "chat"
BUCKET = "models"
PREFIX = "qwen3-14b"


@dataclass
class DemoOptions:
    name: str = "demo"
    minutes: float = 5.0
    base_rate: float = DEFAULT_BASE_RATE
    cold_start: str = "20s"
    plot: Path = Path("qwen-demo-timeline.png")
    keep: bool = False
    quiet: bool = False


@dataclass
class Demo:
    opts: DemoOptions
    sandbox: Sandbox = field(init=False)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)

    def say(self, msg: str) -> None:
        print(f"[demo] {msg}", flush=True)

    # -- setup -----------------------------------------------------------------------
    def up(self) -> dict[str, Any]:
        from kubernetes import client, config

        from ..modelsync.registry import Registry, make_client
        from ..modelsync.s3server import S3Server

        self.sandbox = Sandbox(self.opts.name)
        self.sandbox.up(gpus=DEMO_GPUS, progress=self.say)
        work = self.sandbox.dir / "demo"
        work.mkdir(parents=True, exist_ok=True)
        kubectl = str(locate().kubectl)
        subprocess.run(
            [kubectl, f"--kubeconfig={self.sandbox.kubeconfig}", "apply", "--server-side", "-f", str(CRD_FILE)],
            check=True,
            capture_output=True,
        )
        self.say("installed the QwenDeployment CRD")
        self.prom = PrometheusServer(work / "prometheus", scrape_interval="2s").start()
        self.say(f"Prometheus (real) on {self.prom.url}")
        self.s3 = S3Server(work / "s3").start()
        s3env = self.s3.env()
        os.environ.update(s3env)  # this process publishes model versions; the operator resolves tags
        s3 = make_client(self.s3.endpoint_url)
        with contextlib.suppress(Exception):
            s3.create_bucket(Bucket=BUCKET)
        self.registry = Registry(f"s3://{BUCKET}/{PREFIX}", s3)
        self.say(f"S3 registry (versitygw, real) on {self.s3.endpoint_url}")
        self.v1 = self._publish(work, "v1", revision=None)

        cfg = work / "operator.yaml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "podAnnotations": {"sandbox.qwenops.io/ready-after": self.opts.cold_start},
                    "modelSync": {"intervalSeconds": 5},
                }
            )
        )
        log = (work / "operator.log").open("ab")
        env = {**os.environ, **s3env, DIAL_ENV: "annotation"}  # a canary's smoke test dials as the routers do
        self.procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "qwen_operator.cli",
                    "operator",
                    "run",
                    "-n",
                    NAMESPACE,
                    "--kubeconfig",
                    str(self.sandbox.kubeconfig),
                    "--config",
                    str(cfg),
                    "--prometheus-url",
                    self.prom.url,
                    "--resync-seconds",
                    "10",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        )
        self.say(f"operator started (log: {work / 'operator.log'})")
        cfg_k8s = client.Configuration()
        config.load_kube_config(config_file=str(self.sandbox.kubeconfig), client_configuration=cfg_k8s)  # type: ignore[no-untyped-call]
        api = client.ApiClient(cfg_k8s)
        core = client.CoreV1Api(api)
        with contextlib.suppress(client.ApiException):
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "QwenDeployment",
            "metadata": {"name": NAME},
            "spec": {
                "model": {
                    "name": "Qwen/Qwen3-14B",
                    "registry": f"s3://{BUCKET}/{PREFIX}",
                    "version": "stable",
                    "quantization": "fp8",
                },
                "placement": {"gpuTypes": ["L40S", "A100-80GB", "A10G"]},
                "scaling": {
                    "enabled": True,
                    "minReplicas": 1,
                    "maxReplicas": 8,
                    "targetQueueDepth": 4,
                    "p95LatencySeconds": 1.2,
                    "scaleDownDelaySeconds": 45,
                    "intervalSeconds": 5,
                },
                "rollout": {"maxSurge": 1},
                # the data plane (the default, spelled out): 2 router pods in front of every pool
                "routing": {"enabled": True, "replicas": 2},
            },
        }
        client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)
        self.say(
            f"applied QwenDeployment {NAMESPACE}/{NAME}: Qwen3-14B fp8, autoscaled 1-8; fills L40S first "
            "(cheapest per request/s within the SLO; 1 GPU in this sandbox), then spills over to A100-80GB, then A10G"
        )
        self.api = api
        return body

    def _publish(self, work: Path, version: str, revision: str | None) -> Any:
        from ..modelsync.push import push
        from ..modelsync.synthetic import Checkpoint, Shape

        ckpt = Checkpoint(Shape().scaled(0.06, layers=8))
        if revision == "last_layers":
            ckpt = ckpt.last_layers(2)
        root = work / f"model-{version}"
        if not root.exists():
            ckpt.write(root)
        with open(os.devnull, "w") as quiet:
            result = push(self.registry, root, version, tag="stable", out=quiet)
        self.say(
            f"published model {version} ({result.digest[:19]}): uploaded {result.bytes_uploaded / 1e6:.1f} MB "
            f"of {result.total_bytes / 1e6:.1f} MB ({result.chunks_uploaded}/{result.chunks_total} chunks); "
            "tag stable -> " + version
        )
        return result

    def qwd(self) -> dict[str, Any]:
        from kubernetes import client

        obj = client.CustomObjectsApi(self.api).get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, NAME)
        return cast(dict[str, Any], obj)

    # -- the run ---------------------------------------------------------------------
    async def run(self) -> None:
        from ..sim.fleet_bridge import FleetBridge
        from ..sim.loadgen import LoadGenerator, peak_and_trough
        from ..sim.trace import default_trace_path, load_azure_csv

        bridge = FleetBridge(
            self.api,
            NAMESPACE,
            NAME,
            set_targets=self.prom.set_targets,
            log=(lambda _m: None) if self.opts.quiet else (lambda m: self.say(m)),
            workdir=self.sandbox.dir / "demo" / "routers",
        )
        await bridge.start()
        self.bridge = bridge
        self.say("waiting for the first replica to load its model (simulated cold start) and a router pod ...")
        for _ in range(180):
            if bridge.counts()[1] and bridge.routers_ready():
                break
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"the operator exited; see {self.sandbox.dir / 'demo' / 'operator.log'}")
            await asyncio.sleep(1)
        total = self.opts.minutes * 60
        phases = peak_and_trough(
            self.opts.base_rate,
            spike=4.0,
            base_seconds=total * 0.2,
            spike_seconds=total * 0.35,
            trough_seconds=total * 0.45,
        )
        load = LoadGenerator(
            bridge.target,  # a Ready router pod, round-robin (the client Service)
            phases,
            load_azure_csv(default_trace_path()),
            max_prompt_tokens=512,
            max_output_tokens=64,
            max_requests=20000,
            log=lambda _m: None,
            on_outcome=bridge.record,
        )
        await load.start()
        self.load = load
        start = time.monotonic()
        published_v2 = False
        try:
            while not load.done_sending:
                now = time.monotonic() - start
                if not published_v2 and now > total * 0.6:
                    published_v2 = True
                    self.events.append((now, "model v2 published"))
                    v2 = await asyncio.to_thread(self._publish, self.sandbox.dir / "demo", "v2", "last_layers")
                    self.v2 = v2
                # the fleet's state is read here, on the event loop that mutates it; only API/PromQL calls
                # go to the worker thread
                sample, routers = self.bridge.sample(), self.bridge.routers_ready()
                row = await asyncio.to_thread(self._row, now, load.current_phase or "-", sample, routers)
                self.rows.append(row)
                print(render_row(row, header=len(self.rows) % 15 == 1), flush=True)
                await asyncio.sleep(2.0)
        finally:
            load.stop_sending()
            stats = await load.wait(drain_seconds=30)
            self.say(stats.summary())
            counters = await bridge.scrape_routers()
            self.say(
                f"router pods ({counters.routers_started} started) answered, by status: {counters.router_by_code}; "
                f"client side: {counters.by_status}"
            )
            if stats.error_samples:
                self.say(f"errors (first 3): {stats.error_samples[:3]}")
            await bridge.stop()

    def _row(self, t: float, phase: str, sample: Sample, routers: int) -> Row:
        obj = self.qwd()
        st = obj.get("status") or {}
        queue = None
        with contextlib.suppress(Exception):
            res = self.prom.query(f'sum(tgi_queue_size{{namespace="{NAMESPACE}"}})')
            queue = float(res[0]["value"][1]) if res else None
        return Row(
            t=t,
            phase=phase,
            sent=self.load.stats.sent,
            ready=dict(sample.ready),
            running=dict(sample.running),
            desired=int((st.get("autoscaler") or {}).get("desiredReplicas") or st.get("desiredReplicas") or 0),
            queue=queue,
            p95=sample.p95_seconds,
            cost=sum(float(p.get("costPerHour") or 0) for p in st.get("pools") or []),
            version=str((st.get("model") or {}).get("currentVersion") or "-"),
            routers=routers,
            decision=str((st.get("autoscaler") or {}).get("lastDecision") or ""),
        )

    # -- teardown --------------------------------------------------------------------
    def down(self) -> None:
        if self.rows:
            with contextlib.suppress(Exception):
                write_timeline(self.rows, self.events, self.opts.plot)
                self.say(f"wrote the timeline {self.opts.plot}")
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(15)
        for closer in ("s3", "prom"):
            with contextlib.suppress(Exception):
                getattr(self, closer).stop()
        if self.opts.keep:
            self.say(
                f"sandbox kept: `qwenctl sandbox env --name {self.opts.name}`; stop it with "
                f"`qwenctl sandbox down --name {self.opts.name}`"
            )
        else:
            self.sandbox.down(progress=self.say)


def run_demo(opts: DemoOptions) -> int:
    demo = Demo(opts)
    try:
        demo.up()
        asyncio.run(demo.run())
    except KeyboardInterrupt:
        demo.say("interrupted: tearing down")
    finally:
        if hasattr(demo, "sandbox"):
            demo.down()
    return 0

"""Model-version rollouts on the real control plane with the real S3 server.

A version is pushed with ``qwenctl model push`` and tagged ``stable``; the operator (a real
``qwenctl operator run`` process with the server's AWS environment) resolves the tag.
Moving the tag must roll every pool with surge while ready replicas never drop below the
replica count, and record ``lastSyncBytes``; a canary answering errors must roll back.
Pods turn Ready 2 s after start (``sandbox.qwenops.io/ready-after`` stamped by the
operator config), so the roll is observable; ready pods are polled every 50 ms.
"""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from qwen_operator.catalog import DEFAULT_GPUS
from qwen_operator.modelsync.manifest import diff
from qwen_operator.modelsync.registry import Registry
from qwen_operator.modelsync.synthetic import Checkpoint, Shape
from qwen_operator.router.discovery import DIAL_ANNOTATION
from qwen_operator.sandbox.cluster import Sandbox
from qwen_operator.sandbox.nodes import NodeSpec, node_manifest
from qwen_operator.testing.operator import OperatorProcess
from qwen_operator.testing.s3 import S3Bucket
from qwen_operator.testing.wait import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.s3]

GROUP, VERSION, PLURAL = "serving.qwenops.io", "v1alpha1", "qwendeployments"
SHAPE = Shape().scaled(0.05, layers=4, vocab=4096)  # ~11 MB in 4 shards
QWENCTL = [sys.executable, "-c", "from qwen_operator.cli import main; raise SystemExit(main())"]
LABEL = "serving.qwenops.io/deployment"
SERVER = "app.kubernetes.io/component in (canary,server)"  # server and canary pods, not the router's
VERSION_ANNOTATION = "serving.qwenops.io/model-version"


def push(bucket: S3Bucket, src: Path, version: str) -> str:
    r = subprocess.run(
        [*QWENCTL, "model", "push", str(src), "--registry", bucket.registry_url(), "--version", version]
        + ["--tag", "stable"],
        env=bucket.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return Registry(bucket.registry_url()).resolve(tag="stable")


class Fleet:
    """The QwenDeployment ``chat`` and its pods, read through the API."""

    def __init__(self, api: Any, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.ns = namespace

    def get(self) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, "chat")
        return obj

    def condition(self, type_: str) -> dict[str, Any]:
        conds = (self.get().get("status") or {}).get("conditions") or []
        return next((c for c in conds if c["type"] == type_), {})

    def model(self) -> dict[str, Any]:
        return dict((self.get().get("status") or {}).get("model") or {})

    def synced_on(self, digest: str) -> bool:
        c = self.condition("ModelSynced")
        return c.get("status") == "True" and self.model().get("currentVersion") == digest

    def ready_pods(self, canary: bool = False) -> list[Any]:
        canary_sel = "serving.qwenops.io/canary" if canary else "!serving.qwenops.io/canary"
        sel = f"{LABEL}=chat,{SERVER},{canary_sel}"
        return [
            p
            for p in self.core.list_namespaced_pod(self.ns, label_selector=sel).items
            if p.metadata.deletion_timestamp is None
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        ]

    def deployments(self) -> dict[str, Any]:
        items = self.apps.list_namespaced_deployment(self.ns, label_selector=f"{LABEL}=chat,{SERVER}").items
        return {d.metadata.name: d for d in items}

    def events(self) -> list[tuple[str, str, str]]:
        only = "involvedObject.kind=QwenDeployment,involvedObject.name=chat"  # not the PDB's or Service's
        evs = self.core.list_namespaced_event(self.ns, field_selector=only).items
        return [(e.type, e.reason, e.message) for e in evs]


class ReadyPoller:
    """Counts Ready pool pods every 50 ms in a thread: the minimum seen is the capacity floor."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), len(self.fleet.ready_pods())))
            time.sleep(0.05)

    def __enter__(self) -> ReadyPoller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def minimum(self) -> int:
        return min(n for _, n in self.samples)


class CanaryEndpoints:
    """The harness's half of the sandbox endpoint contract: point each canary pod at a server."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.url = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            sel = f"{LABEL}=chat,serving.qwenops.io/canary=true"
            for p in self.fleet.core.list_namespaced_pod(self.fleet.ns, label_selector=sel).items:
                if self.url and (p.metadata.annotations or {}).get(DIAL_ANNOTATION) != self.url:
                    patch = {"metadata": {"annotations": {DIAL_ANNOTATION: self.url}}}
                    self.fleet.core.patch_namespaced_pod(p.metadata.name, self.fleet.ns, patch)
            time.sleep(0.1)

    def __enter__(self) -> CanaryEndpoints:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


class _Failing(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = b'{"error":"model weights are corrupt","error_type":"generation"}'
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def failing_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@pytest.fixture
def sim_server() -> Iterator[str]:
    """A simulated TGI replica (``python -m qwen_operator.sim.server``) answering for the canary."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "qwen_operator.sim.server", "--cold-start", "0", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        port = int(line.split("listening on 127.0.0.1:")[1].split()[0])
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Path]:
    base = Checkpoint(SHAPE)
    out = {"v1": tmp_path / "v1", "v2": tmp_path / "v2", "v3": tmp_path / "v3"}
    base.write(out["v1"])
    base.last_layers(1).write(out["v2"])
    base.last_layers(2).write(out["v3"])
    return out


@pytest.fixture
def start_operator(
    sandbox: Sandbox, qwen_crd: Path, namespace: str, s3_bucket: S3Bucket, tmp_path: Path
) -> Iterator[Callable[[], OperatorProcess]]:
    config = tmp_path / "operator.yaml"
    config.write_text(
        yaml.safe_dump(
            {"podAnnotations": {"sandbox.qwenops.io/ready-after": "2s"}, "modelSync": {"intervalSeconds": 1}}
        )
    )
    started: list[OperatorProcess] = []

    def start() -> OperatorProcess:
        op = OperatorProcess(
            sandbox.kubeconfig,
            tmp_path / f"operator-{len(started)}.log",  # one log per process: a restart waits for its own start line
            extra=["--namespace", namespace, "--config", str(config)],
            env=s3_bucket.server.env(),
        ).start()
        started.append(op)
        return op

    yield start
    for op in started:
        op.stop()
    for i, op in enumerate(started):
        print(f"--- operator {i} log tail ---\n{op.tail(60)}")


def create(
    fleet: Fleet,
    bucket: S3Bucket,
    canary_replicas: int,
    replicas: int = 2,
    gpu_types: tuple[str, ...] = ("A10G",),
    canary_timeout: int | None = None,
    routing: dict[str, Any] | None = None,
) -> None:
    rollout: dict[str, Any] = {"maxSurge": 1, "canaryReplicas": canary_replicas}
    if canary_timeout is not None:
        rollout["canaryTimeoutSeconds"] = canary_timeout
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "QwenDeployment",
        "metadata": {"name": "chat"},
        "spec": {
            "model": {
                "name": "Qwen/Qwen3-14B",
                "registry": bucket.registry_url(),
                "version": "stable",
                "quantization": "fp8",
            },
            "placement": {"gpuTypes": list(gpu_types)},
            "replicas": replicas,
            "scaling": {"enabled": False},
            "rollout": rollout,
            **({"routing": routing} if routing is not None else {}),
        },
    }
    fleet.custom.create_namespaced_custom_object(GROUP, VERSION, fleet.ns, PLURAL, body)


def on_v1(
    kube_api: Any,
    namespace: str,
    bucket: S3Bucket,
    models: dict[str, Path],
    start_operator: Callable[[], OperatorProcess],
    **create_kw: Any,
) -> tuple[str, OperatorProcess, Fleet]:
    """Push v1, start the operator, create the resource and wait until it reports v1 synced."""
    v1 = push(bucket, models["v1"], "v1")
    op = start_operator()
    fleet = Fleet(kube_api, namespace)
    create(fleet, bucket, **create_kw)
    wait_for("ModelSynced on v1", lambda: fleet.synced_on(v1))
    return v1, op, fleet


def test_moving_the_tag_rolls_every_pool_without_losing_ready_replicas(
    kube_api: Any, namespace: str, s3_bucket: S3Bucket, models: dict[str, Path], start_operator: Any
) -> None:
    v1, op, fleet = on_v1(kube_api, namespace, s3_bucket, models, start_operator, canary_replicas=0)
    wait_for("Ready", lambda: fleet.condition("Ready").get("status") == "True")
    assert {p.metadata.annotations[VERSION_ANNOTATION] for p in fleet.ready_pods()} == {v1}

    with ReadyPoller(fleet) as poller:
        time.sleep(0.3)
        t0 = time.monotonic()
        v2 = push(s3_bucket, models["v2"], "v2")
        wait_for("targetVersion = v2", lambda: fleet.model().get("targetVersion") == v2, timeout=30)
        t_target = time.monotonic()
        wait_for("ModelSynced on v2", lambda: fleet.synced_on(v2), timeout=120)
        t_done = time.monotonic()
        time.sleep(0.3)
    assert op.alive(), op.tail()
    assert poller.minimum >= 2, f"ready pool replicas dropped to {poller.minimum} during the roll"
    pods = fleet.ready_pods()
    assert len(pods) == 2 and {p.metadata.annotations[VERSION_ANNOTATION] for p in pods} == {v2}
    pull = pods[0].spec.init_containers[0]
    assert pull.name == "model-pull" and pull.args[pull.args.index("--version") + 1] == v2
    reg = Registry(s3_bucket.registry_url())
    expected = diff(reg.get_manifest(v1), reg.get_manifest(v2))
    model = fleet.model()
    assert model["lastSyncBytes"] == expected.bytes_to_move
    assert 0 < expected.bytes_to_move < expected.file_level_bytes < expected.total_bytes
    reasons = [r for _, r, _ in fleet.events()]
    assert "TargetVersionChanged" in reasons and "PoolUpdated" in reasons and "ModelSynced" in reasons
    print(
        f"\nrollout v1->v2: tag moved -> targetVersion {t_target - t0:.1f}s, -> ModelSynced {t_done - t0:.1f}s; "
        f"min ready {poller.minimum}/2 over {len(poller.samples)} samples; lastSyncBytes {model['lastSyncBytes']} "
        f"= diff {expected.bytes_to_move} (file-level {expected.file_level_bytes}, full {expected.total_bytes})"
    )


def test_failing_canary_rolls_back_and_a_passing_one_promotes(
    kube_api: Any,
    namespace: str,
    s3_bucket: S3Bucket,
    models: dict[str, Path],
    start_operator: Any,
    failing_server: str,
    sim_server: str,
) -> None:
    v1, op, fleet = on_v1(kube_api, namespace, s3_bucket, models, start_operator, canary_replicas=1)
    with CanaryEndpoints(fleet) as endpoints, ReadyPoller(fleet) as poller:
        endpoints.url = failing_server
        v2 = push(s3_bucket, models["v2"], "v2")
        wait_for("a canary Deployment", lambda: "chat-a10g-canary" in fleet.deployments(), timeout=30)
        degraded = wait_for(
            "Degraded=CanaryFailed",
            lambda: (c := fleet.condition("Degraded")).get("reason") == "CanaryFailed" and c,
            timeout=60,
        )
        assert degraded["status"] == "True" and "model weights are corrupt" in degraded["message"], degraded
        wait_for("the canary removed", lambda: "chat-a10g-canary" not in fleet.deployments(), timeout=30)
        model = fleet.model()
        assert (model["currentVersion"], model["targetVersion"], model["failedVersion"]) == (v1, v2, v2)
        assert model["canary"]["phase"] == "Failed"
        synced = fleet.condition("ModelSynced")
        assert (synced["status"], synced["reason"]) == ("False", "CanaryFailed")
        deps = fleet.deployments()
        assert list(deps) == ["chat-a10g"]
        assert deps["chat-a10g"].spec.template.metadata.annotations[VERSION_ANNOTATION] == v1
        assert {p.metadata.annotations[VERSION_ANNOTATION] for p in fleet.ready_pods()} == {v1}
        assert ("Warning", "CanaryFailed") in {(t, r) for t, r, _ in fleet.events()}
        time.sleep(3)  # several watcher intervals: the failed digest is not retried
        assert "chat-a10g-canary" not in fleet.deployments() and fleet.model()["failedVersion"] == v2

        # a fixed version: the tag moves on, a new canary answers, the pools are promoted
        endpoints.url = sim_server
        v3 = push(s3_bucket, models["v3"], "v3")
        wait_for("ModelSynced on v3", lambda: fleet.synced_on(v3), timeout=120)
    assert op.alive(), op.tail()
    assert poller.minimum >= 2, f"ready pool replicas dropped to {poller.minimum}"
    assert fleet.model()["canary"]["phase"] == "Passed"
    assert fleet.condition("Degraded")["status"] == "False"
    assert list(fleet.deployments()) == ["chat-a10g"]
    assert {p.metadata.annotations[VERSION_ANNOTATION] for p in fleet.ready_pods()} == {v3}
    reasons = [r for _, r, _ in fleet.events()]
    assert {"CanaryStarted", "CanaryCreated", "CanaryPassed", "CanaryRemoved", "ModelSynced"} <= set(reasons)


class RolloutSampler:
    """Samples (canary phase, currentVersion, the canary Deployment's uid or None) every 50 ms."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.samples: list[tuple[str | None, str | None, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            canary = self.fleet.deployments().get("chat-a10g-canary")
            model = self.fleet.model()
            phase = (model.get("canary") or {}).get("phase")
            self.samples.append((phase, model.get("currentVersion"), canary.metadata.uid if canary else None))
            time.sleep(0.05)

    def __enter__(self) -> RolloutSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def spare_a10g(kube_api: Any) -> Iterator[str]:
    """One more one-GPU A10G kwok node, so the roll below has room beyond its exact fit (2 pool replicas,
    the canary and the surge pod on the sandbox's 4 A10G GPUs). Exactly full, the scheduler may see the
    next surge pod before the GPU its predecessor freed (Unschedulable for a moment), and a pool waiting
    for a GPU is where the operator gives the canary's GPU back by design. Requested before
    ``namespace``: it is deleted after the namespace's pods are gone."""
    core = client.CoreV1Api(kube_api)
    name = f"gpu-a10g-spare-{uuid.uuid4().hex[:5]}"
    core.create_node(node_manifest(NodeSpec(name, DEFAULT_GPUS["A10G"], 1, "g5.xlarge", 4, 16)))
    try:
        wait_for(
            "the spare A10G node Ready (kwok)",
            lambda: any(c.type == "Ready" and c.status == "True" for c in core.read_node(name).status.conditions or []),
            timeout=60,
        )
        yield name
    finally:
        core.delete_node(name)


def test_passed_canary_with_a_traffic_share_serves_until_every_pool_runs_its_version(
    kube_api: Any,
    spare_a10g: str,
    namespace: str,
    s3_bucket: S3Bucket,
    models: dict[str, Path],
    start_operator: Any,
    sim_server: str,
) -> None:
    """With ``routing.canaryTrafficPercent`` the router routes a canary only after ``Passed``, so
    the operator keeps the passed canary while the pools roll (it used to delete it at once,
    leaving the share nothing to go to), removes it once every pool serves the version, and
    never re-creates it; ready pool replicas never drop."""
    v1, op, fleet = on_v1(
        kube_api, namespace, s3_bucket, models, start_operator, canary_replicas=1, routing={"canaryTrafficPercent": 20}
    )
    with CanaryEndpoints(fleet) as endpoints, ReadyPoller(fleet) as poller, RolloutSampler(fleet) as sampler:
        endpoints.url = sim_server
        v2 = push(s3_bucket, models["v2"], "v2")
        wait_for("ModelSynced on v2", lambda: fleet.synced_on(v2), timeout=120)
        wait_for("the canary removed", lambda: "chat-a10g-canary" not in fleet.deployments(), timeout=30)
        time.sleep(1)  # a few more samples: the canary is not re-created
    assert op.alive(), op.tail()
    assert poller.minimum >= 2, f"ready pool replicas dropped to {poller.minimum}"
    kept = [s for s in sampler.samples if s[0] == "Passed" and s[1] == v1 and s[2] is not None]
    rolling = [s for s in sampler.samples if s[0] == "Passed" and s[1] == v1]
    assert rolling, "never saw the roll between Passed and ModelSynced"
    # kept through the whole roll: every sample between Passed and ModelSynced has the canary
    assert len(kept) == len(rolling), sampler.samples
    uids = {s[2] for s in sampler.samples if s[2] is not None}
    assert len(uids) == 1, uids  # one canary: created once for the test, never re-created
    assert sampler.samples[-1][2] is None and fleet.model()["currentVersion"] == v2
    reasons = [r for _, r, _ in fleet.events()]
    assert reasons.count("CanaryCreated") == 1 and "CanaryPassed" in reasons and "CanaryRemoved" in reasons

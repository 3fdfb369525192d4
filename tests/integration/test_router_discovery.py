"""``qwenctl router`` on the real control plane: it discovers a QwenDeployment's Ready server
pods by watching the API server, weights pools from ``status.pools``, and stops sending to a
pod the moment it is deleted.

The pods are real (scheduled on kwok GPU nodes, made Ready by kwok); what answers for them
is a simulated TGI server on loopback whose URL is in the pod's ``sandbox.qwenops.io/dial``
annotation: the router runs with ``QWEN_ROUTER_DIAL=annotation``, the one sandbox seam.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.request import Request as HTTPRequest
from urllib.request import urlopen

import pytest
import yaml
from kubernetes import client

from qwen_operator.api import GROUP, PLURAL, VERSION
from qwen_operator.render.names import LABEL_MODEL_VERSION, LABEL_POOL, pool_slug, server_selector
from qwen_operator.router.discovery import DIAL_ANNOTATION
from qwen_operator.router.proxy import ENDPOINT_HEADER
from qwen_operator.sandbox.cluster import Sandbox
from qwen_operator.sandbox.stages import READY_AFTER_ANNOTATION
from qwen_operator.testing.background import simulated_servers
from qwen_operator.testing.wait import wait_for

pytestmark = pytest.mark.cluster

NAME = "chat"
SAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "qwen3-14b-chat.yaml"
TOLERATE_GPU = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
PRODUCT = {"L40S": "NVIDIA-L40S", "A10G": "NVIDIA-A10G"}


@pytest.fixture
def sim_urls() -> Iterator[list[str]]:
    """Three simulated TGI replicas (``python -m qwen_operator.sim.server``) on loopback."""
    with simulated_servers(3, max_new_tokens=4) as urls:
        yield urls


def server_pod(name: str, gpu: str, dial: str, ready: bool = True, deployment: str = NAME) -> dict[str, Any]:
    """A server pod as the operator's pool Deployment would label it, on a kwok GPU node."""
    annotations = {DIAL_ANNOTATION: dial}
    if not ready:
        annotations[READY_AFTER_ANNOTATION] = "1h"  # Running, still loading: not Ready
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {**server_selector(deployment), LABEL_POOL: pool_slug(gpu), LABEL_MODEL_VERSION: "v1"},
            "annotations": annotations,
        },
        "spec": {
            "nodeSelector": {"nvidia.com/gpu.product": PRODUCT[gpu]},
            "tolerations": TOLERATE_GPU,
            "containers": [
                {
                    "name": "tgi",
                    "image": "example/tgi:1",
                    "ports": [{"name": "http", "containerPort": 80}],
                    "resources": {"limits": {"nvidia.com/gpu": "1"}},
                }
            ],
        },
    }


class RouterProcess:
    """``qwenctl router`` as the rendered Deployment runs it (plus the sandbox dial seam)."""

    def __init__(self, sandbox: Sandbox, namespace: str, log: Path) -> None:
        env = {**os.environ, "QWEN_ROUTER_DIAL": "annotation"}
        self.log = log
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qwen_operator.cli", "router", "--namespace", namespace, "--deployment", NAME]
            + ["--host", "127.0.0.1", "--port", "0", "--kubeconfig", str(sandbox.kubeconfig), "--hold-timeout", "2"]
            # affinity off: which pod answers then follows from discovery and weights alone
            + ["--affinity", "off"],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert "listening on " in line, f"router did not start: {line!r}\n{log.read_text()}"
        self.url = line.split("listening on ")[1].split()[0]

    def health(self) -> dict[str, Any]:
        try:
            with urlopen(self.url + "/health", timeout=5) as resp:
                out: dict[str, Any] = json.loads(resp.read())
                return out
        except (HTTPError, URLError):
            return {}

    def served_by(self) -> str:
        """Send one chat completion; the pod that answered."""
        body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}
        req = HTTPRequest(
            self.url + "/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urlopen(req, timeout=20) as resp:
            assert resp.status == 200
            return str(resp.headers[ENDPOINT_HEADER])

    def metrics(self) -> str:
        with urlopen(self.url + "/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def stop(self) -> int:
        """SIGTERM, as the kubelet sends it; the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(20)
        finally:
            self._log.close()


@pytest.fixture
def router(sandbox: Sandbox, namespace: str, tmp_path: Path) -> Iterator[RouterProcess]:
    r = RouterProcess(sandbox, namespace, tmp_path / "router.log")
    try:
        yield r
    finally:
        r.stop()
        print(f"--- router log ---\n{r.log.read_text()[-4000:]}")


def test_router_routes_to_ready_pods_only_weights_pools_and_drops_a_deleted_pod(
    kube_api: Any, namespace: str, qwen_crd: Path, sim_urls: list[str], router: RouterProcess
) -> None:
    core = client.CoreV1Api(kube_api)
    # before any pod: the router holds (Ready itself) and a request times out with a 503
    wait_for("router synced", lambda: router.health().get("status") == "holding", timeout=30)
    req = HTTPRequest(router.url + "/generate", data=b'{"inputs": "x"}', headers={"Content-Type": "application/json"})
    with pytest.raises(HTTPError) as held:
        urlopen(req, timeout=20)
    assert held.value.code == 503 and int(held.value.headers["Retry-After"]) > 0
    l40s, a10g, loading = sim_urls
    core.create_namespaced_pod(namespace, server_pod("chat-l40s-0", "L40S", l40s))
    core.create_namespaced_pod(namespace, server_pod("chat-a10g-0", "A10G", a10g))
    core.create_namespaced_pod(namespace, server_pod("chat-a10g-1", "A10G", loading, ready=False))
    core.create_namespaced_pod(namespace, server_pod("other-a10g-0", "A10G", loading, deployment="other"))
    wait_for("two Ready endpoints", lambda: router.health().get("endpoints") == 2, timeout=60)

    # equal weights until the operator publishes capacities: both Ready pods, never the others
    served = [router.served_by() for _ in range(8)]
    assert set(served) == {"chat-l40s-0", "chat-a10g-0"}

    # the QwenDeployment's status.pools says one L40S replica carries 10x an A10G one
    custom = client.CustomObjectsApi(kube_api)
    qwd = yaml.safe_load(SAMPLE.read_text())
    qwd["metadata"] = {"name": NAME, "namespace": namespace}
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, qwd)
    pools = [
        {"gpuType": "L40S", "shards": 1, "capacityRequestsPerSecond": 10.0, "maxConcurrentRequests": 128},
        {"gpuType": "A10G", "shards": 1, "capacityRequestsPerSecond": 1.0, "maxConcurrentRequests": 128},
    ]
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, NAME, {"status": {"pools": pools}})
    # one at a time, weighted least-outstanding sends every request to the heavier pool
    wait_for("weights applied", lambda: {router.served_by() for _ in range(4)} == {"chat-l40s-0"}, timeout=30)

    # the pod is deleted: no request reaches it afterwards
    core.delete_namespaced_pod("chat-l40s-0", namespace)
    wait_for("deleted pod dropped", lambda: router.health().get("endpoints") == 1, timeout=30)
    assert {router.served_by() for _ in range(6)} == {"chat-a10g-0"}
    metrics = router.metrics()
    assert 'qwen_router_endpoints{pool="A10G"} 1.0' in metrics
    assert 'pool="L40S"' not in metrics.split("# HELP qwen_router_endpoints ")[1]
    assert 'qwen_router_requests_total{code="200",pool="L40S"}' in metrics  # it did serve before
    assert router.proc.poll() is None  # alive through every change
    assert router.stop() == 0  # and it shuts down cleanly on SIGTERM

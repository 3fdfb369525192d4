"""``qwenctl router``'s canary rule on the real control plane: canary pods (labelled as the
operator's rollout renders them) get nothing while their version's smoke test has not passed
(``status.model.canary.phase`` of the QwenDeployment, as the operator's version watcher
writes it), not even after a router restart, and nothing while they are not Ready; once the
version ``Passed``, exactly ``--canary-percent`` of the requests, nothing at 0; and nothing
again once a newer version is under test.

The rule is a deterministic counter (``router/picking.py``), so the share is asserted exactly
over N sequential requests, not as a statistical band. The pods are real (kwok makes them
Ready, or holds one back); what answers for each is a simulated TGI server on loopback whose
URL is in the pod's ``sandbox.qwenops.io/dial`` annotation (``QWEN_ROUTER_DIAL=annotation``,
the one sandbox seam).
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
from qwen_operator.controller.rollout import LABEL_CANARY, PASSED, TESTING, as_canary
from qwen_operator.render.names import ANNOTATION_MODEL_VERSION, LABEL_MODEL_VERSION, pool_selector
from qwen_operator.router.discovery import DIAL_ANNOTATION
from qwen_operator.router.proxy import ENDPOINT_HEADER
from qwen_operator.sandbox.cluster import Sandbox
from qwen_operator.sandbox.stages import READY_AFTER_ANNOTATION
from qwen_operator.testing.background import simulated_servers
from qwen_operator.testing.wait import wait_for

pytestmark = pytest.mark.cluster

NAME = "chat"
GPU = "A10G"
TOLERATE_GPU = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
SAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "qwen3-14b-chat.yaml"
V1, V2, V3 = "sha256:" + "1" * 64, "sha256:" + "2" * 64, "sha256:" + "3" * 64
HELD_BACK = "Ready but not routed"  # the router's log line for a Ready canary of an untested version


@pytest.fixture
def sim_urls() -> Iterator[list[str]]:
    """Three simulated TGI replicas on loopback: two stable, one canary."""
    with simulated_servers(3, max_new_tokens=2) as urls:
        yield urls


def pod_labels(canary: bool) -> dict[str, str]:
    """A pool pod's template labels, or its canary twin's as :func:`rollout.as_canary` renders them."""
    labels = {**pool_selector(NAME, GPU), LABEL_MODEL_VERSION: "v2" if canary else "v1"}
    if not canary:
        return labels
    dep: dict[str, Any] = {
        "metadata": {"name": "chat-a10g", "labels": dict(labels)},
        "spec": {"replicas": 1, "selector": {"matchLabels": pool_selector(NAME, GPU)}},
    }
    dep["spec"]["template"] = {"metadata": {"labels": dict(labels)}}
    out: dict[str, str] = as_canary(dep, NAME, GPU, 1)["spec"]["template"]["metadata"]["labels"]
    assert out[LABEL_CANARY] == "true"
    return out


def server_pod(name: str, dial: str, *, canary: bool = False, ready: bool = True) -> dict[str, Any]:
    annotations = {DIAL_ANNOTATION: dial, ANNOTATION_MODEL_VERSION: V2 if canary else V1}
    if not ready:
        annotations[READY_AFTER_ANNOTATION] = "1h"  # Running, still loading its model: not Ready
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": pod_labels(canary), "annotations": annotations},
        "spec": {
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A10G"},
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
    """``qwenctl router`` as the rendered Deployment runs it, with ``--canary-percent``."""

    def __init__(self, sandbox: Sandbox, namespace: str, canary_percent: str, log: Path) -> None:
        env = {**os.environ, "QWEN_ROUTER_DIAL": "annotation"}
        self.log = log
        self.percent = canary_percent
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qwen_operator.cli", "router", "--namespace", namespace, "--deployment", NAME]
            + ["--host", "127.0.0.1", "--port", "0", "--kubeconfig", str(sandbox.kubeconfig)]
            + ["--affinity", "off", "--canary-percent", canary_percent],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert "listening on " in line, f"router did not start: {line!r}\n{log.read_text()}"
        self.url = line.split("listening on ")[1].split()[0]

    def held_back(self, pod: str) -> bool:
        """The router logged ``pod`` as a Ready canary it does not route (its version is untested)."""
        return any(HELD_BACK in line and pod in line for line in self.log.read_text().splitlines())

    def endpoints(self) -> int:
        try:
            with urlopen(self.url + "/health", timeout=5) as resp:
                return int(json.loads(resp.read()).get("endpoints", 0))
        except (HTTPError, URLError):
            return 0

    def served_by(self, n: int) -> list[str]:
        """Send ``n`` chat completions one after another; the pod that answered each."""
        body = json.dumps({"messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}).encode()
        out = []
        headers = {"Content-Type": "application/json"}
        for _ in range(n):
            req = HTTPRequest(self.url + "/v1/chat/completions", data=body, headers=headers)
            with urlopen(req, timeout=20) as resp:
                assert resp.status == 200
                out.append(str(resp.headers[ENDPOINT_HEADER]))
        return out

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(20)
        finally:
            self._log.close()


@pytest.fixture
def routers(sandbox: Sandbox, namespace: str, tmp_path: Path) -> Iterator[dict[str, RouterProcess]]:
    """Routers ``0`` and ``20`` (``--canary-percent``), running before anything exists; the test
    adds ``restarted`` (20) later."""
    started: dict[str, RouterProcess] = {}
    try:
        for percent in ("0", "20"):
            started[percent] = RouterProcess(sandbox, namespace, percent, tmp_path / f"router-{percent}.log")
        yield started
    finally:
        for key, r in started.items():
            r.stop()
            print(f"--- router {key} (--canary-percent {r.percent}) log ---\n{r.log.read_text()[-3000:]}")


def set_canary(custom: client.CustomObjectsApi, namespace: str, version: str, phase: str) -> None:
    """``status.model`` as the version watcher writes it while ``version``'s canary is in ``phase``."""
    model = {"currentVersion": V1, "targetVersion": version, "canary": {"version": version, "phase": phase}}
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, NAME, {"status": {"model": model}})


def pod_ready(core: client.CoreV1Api, namespace: str, name: str) -> bool:
    pod = core.read_namespaced_pod(name, namespace)
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def test_canary_pods_get_the_canary_percent_only_after_their_smoke_test_passed(
    kube_api: Any,
    namespace: str,
    qwen_crd: Path,
    sandbox: Sandbox,
    tmp_path: Path,
    sim_urls: list[str],
    routers: dict[str, RouterProcess],
) -> None:
    core = client.CoreV1Api(kube_api)
    custom = client.CustomObjectsApi(kube_api)
    qwd = yaml.safe_load(SAMPLE.read_text())
    qwd["metadata"] = {"name": NAME, "namespace": namespace}
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, qwd)
    set_canary(custom, namespace, V2, TESTING)  # the canary of V2 is starting / under test
    stable_a, stable_b, canary_url = sim_urls
    core.create_namespaced_pod(namespace, server_pod("chat-a10g-0", stable_a))
    core.create_namespaced_pod(namespace, server_pod("chat-a10g-1", stable_b))
    # the canary's pod is Running but not Ready (still loading): no router may send to it
    core.create_namespaced_pod(namespace, server_pod("chat-a10g-canary-0", canary_url, canary=True, ready=False))
    for r in routers.values():
        wait_for("the two Ready stable pods", lambda r=r: r.endpoints() == 2, timeout=60)
    for r in routers.values():
        assert set(r.served_by(20)) == {"chat-a10g-0", "chat-a10g-1"}

    # a Ready canary (the rollout's twin of the pool, labelled serving.qwenops.io/canary=true)
    # whose smoke test has not passed: no router sends it anything, not even by the canary rule
    core.delete_namespaced_pod("chat-a10g-canary-0", namespace, grace_period_seconds=0)
    core.create_namespaced_pod(namespace, server_pod("chat-a10g-canary-1", canary_url, canary=True))
    wait_for("the canary pod Ready", lambda: pod_ready(core, namespace, "chat-a10g-canary-1"), timeout=60)
    for r in routers.values():
        wait_for("the Ready canary seen", lambda r=r: r.held_back("chat-a10g-canary-1"), timeout=60)
        assert r.endpoints() == 2
    assert "chat-a10g-canary-1" not in routers["20"].served_by(50)

    # a router (re)started while the canary is still under test routes nothing to it either
    routers["restarted"] = RouterProcess(sandbox, namespace, "20", tmp_path / "router-restarted.log")
    restarted = routers["restarted"]
    wait_for("the restarted router synced", lambda: restarted.held_back("chat-a10g-canary-1"), timeout=60)
    assert restarted.endpoints() == 2
    assert "chat-a10g-canary-1" not in restarted.served_by(30)

    # the smoke test passed (the version watcher writes Passed): now the canary rule applies
    set_canary(custom, namespace, V2, PASSED)
    for r in routers.values():
        wait_for("the passed canary routed", lambda r=r: r.endpoints() == 3, timeout=60)

    # --canary-percent 0: the canary is routable but gets nothing
    assert "chat-a10g-canary-1" not in routers["0"].served_by(40)

    # --canary-percent 20: exactly one request in five, every fifth, counted from when the
    # canary became routable (the picks made before it passed owe it nothing)
    for key in ("20", "restarted"):
        served = routers[key].served_by(50)
        flags = [name == "chat-a10g-canary-1" for name in served]
        assert sum(flags) == 10, (key, served)
        assert flags == [False, False, False, False, True] * 10, (key, served)
        assert set(served) - {"chat-a10g-canary-1"} == {"chat-a10g-0", "chat-a10g-1"}

    # the tag moved on: V3's canary is under test, so the V2 canary pod is no longer routed
    set_canary(custom, namespace, V3, TESTING)
    for r in routers.values():
        wait_for("the V2 canary dropped", lambda r=r: r.endpoints() == 2, timeout=60)
    assert "chat-a10g-canary-1" not in routers["20"].served_by(20)
    for r in routers.values():
        assert r.proc.poll() is None and r.stop() == 0

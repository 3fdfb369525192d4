"""Pytest fixtures for the sandbox control plane: one per session, a namespace per test.

The guard: every client these fixtures hand out is built from the sandbox's own
kubeconfig and is checked, before first use, against the marker ConfigMap the sandbox
writes at start-up (``kube-system/qwen-operator-sandbox`` with this sandbox's id). A
kubeconfig that points anywhere else — a real cluster in ``~/.kube/config`` or a
``KUBECONFIG`` left in the environment — fails the test instead of touching it.

``QWEN_TEST_SANDBOX=NAME`` reuses an already running ``qwenctl sandbox up --name NAME``
(fast local iteration); otherwise a private sandbox is started and torn down.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ..sandbox.binaries import locate
from ..sandbox.cluster import MARKER_NAME, MARKER_NAMESPACE, Sandbox

__all__ = ["sandbox", "kube_api", "namespace", "kubectl", "assert_sandbox_kubeconfig"]

#: GPUs every test session gets: enough for spill-over tests without being slow.
TEST_GPUS = "a10g=4x1,l40s=8,a100-80gb=8"


class NotTheSandboxError(RuntimeError):
    pass


def assert_sandbox_kubeconfig(kubeconfig: Path, sb: Sandbox) -> None:
    """Refuse any kubeconfig whose cluster is not this sandbox (raises NotTheSandboxError)."""
    st = sb.state()
    if st is None:
        raise NotTheSandboxError(f"sandbox {sb.name!r} is not running")
    doc = yaml.safe_load(kubeconfig.read_text())
    ctx_name = doc.get("current-context")
    ctx = next((c["context"] for c in doc.get("contexts", []) if c["name"] == ctx_name), None)
    cluster = next((c["cluster"] for c in doc.get("clusters", []) if ctx and c["name"] == ctx["cluster"]), None)
    if cluster is None or cluster.get("server") != st.server:
        server = cluster.get("server") if cluster else None
        raise NotTheSandboxError(
            f"refusing to run cluster tests: {kubeconfig} points at {server}, not the sandbox {st.server}"
        )
    marker = sb.client().get(f"/api/v1/namespaces/{MARKER_NAMESPACE}/configmaps/{MARKER_NAME}")
    if marker.get("data", {}).get("sandboxId") != st.sandbox_id:
        raise NotTheSandboxError("refusing to run cluster tests: the API server at that address is not this sandbox")


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    reuse = os.environ.get("QWEN_TEST_SANDBOX")
    sb = Sandbox(reuse or f"pytest-{os.getpid()}")
    if reuse:
        if not sb.healthy():
            pytest.fail(f"QWEN_TEST_SANDBOX={reuse}: that sandbox is not running (qwenctl sandbox up --name {reuse})")
    else:
        sb.up(gpus=TEST_GPUS, progress=lambda m: print(f"[sandbox] {m}"))
    previous = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(sb.kubeconfig)  # subprocesses (kubectl, helm) can only see the sandbox
    try:
        assert_sandbox_kubeconfig(sb.kubeconfig, sb)
        yield sb
    finally:
        if previous is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = previous
        if not reuse:
            sb.down(progress=lambda m: print(f"[sandbox] {m}"))


@pytest.fixture(scope="session")
def kube_api(sandbox: Sandbox) -> Any:
    """A ``kubernetes.client.ApiClient`` for the sandbox admin (guarded)."""
    from kubernetes import client, config

    assert_sandbox_kubeconfig(sandbox.kubeconfig, sandbox)
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(sandbox.kubeconfig), client_configuration=cfg)  # type: ignore[no-untyped-call]
    return client.ApiClient(cfg)


def _ns_name(node_name: str) -> str:
    base = re.sub(r"[^a-z0-9-]", "-", node_name.lower()).strip("-")[:40].strip("-")
    return f"t-{base}-{uuid.uuid4().hex[:5]}"


@pytest.fixture()
def namespace(request: pytest.FixtureRequest, kube_api: Any) -> Iterator[str]:
    """A fresh namespace (with its default ServiceAccount ready), deleted afterwards."""
    from kubernetes import client

    core = client.CoreV1Api(kube_api)
    name = _ns_name(request.node.name)
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"qwen-operator/test": "true"}))
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            core.read_namespaced_service_account("default", name)
            break
        except client.ApiException as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    yield name
    try:
        core.delete_namespace(name, propagation_policy="Background")
    except client.ApiException as exc:
        if exc.status != 404:
            raise
    # GPUs are shared by every test: wait until this namespace's pods are gone
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and core.list_namespaced_pod(name).items:
        time.sleep(0.2)


class Kubectl:
    """Runs the real ``kubectl`` against the sandbox only."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self.binary = locate().kubectl  # the same release as the API server

    def __call__(self, *args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.binary), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            input=stdin,
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc


@pytest.fixture(scope="session")
def kubectl(sandbox: Sandbox) -> Kubectl:
    return Kubectl(sandbox.kubeconfig)

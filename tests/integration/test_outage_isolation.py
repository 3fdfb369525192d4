"""Isolation under outage: a hung S3 endpoint and a hung Prometheus never delay Deployment applies.

The operator runs against the real sandbox control plane with its Prometheus URL and its S3
endpoint both pointing at a loopback TCP server that accepts connections and never answers.
Many ``s3://`` resources with autoscaling on keep the version watcher's and the autoscaler's
calls hanging; meanwhile an ``hf://`` resource (no registry to wait for) must still get its pool
Deployments and have a spec change applied. Before the per-dependency pools
(``controller/executors.py``) all of them shared asyncio's default executor, which the hung
calls could fill.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_controller import Qwd, resource  # the harness of the controller tests

from qwen_operator.sandbox.cluster import Sandbox
from qwen_operator.testing.operator import OperatorProcess
from qwen_operator.testing.wait import wait_for

pytestmark = pytest.mark.cluster

NOISY = 12  # s3:// resources with autoscaling: 2 hung calls each at a time, more than the default executor


class Blackhole:
    """A loopback TCP server that accepts every connection and never sends a byte."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    @property
    def accepted(self) -> int:
        with self.lock:
            return len(self.conns)

    def open_connections(self) -> int:
        """Connections the client has not given up on yet (a closed one reads EOF)."""
        alive = 0
        with self.lock:
            for c in self.conns:
                try:
                    c.setblocking(False)
                    data = c.recv(65536, socket.MSG_PEEK)
                    alive += 1 if data else 0
                except BlockingIOError:
                    alive += 1
                except OSError:
                    pass
        return alive

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(conn)

    def close(self) -> None:
        self.closed = True
        self.sock.close()
        with self.lock:
            for c in self.conns:
                c.close()


@pytest.fixture()
def blackhole() -> Iterator[Blackhole]:
    bh = Blackhole()
    yield bh
    bh.close()


def _noisy(name: str) -> dict[str, Any]:
    body = resource(name, replicas=1, gpu_types=["L40S"])
    body["spec"]["model"]["registry"] = "s3://models/qwen3-14b"  # resolved through the hung endpoint
    body["spec"]["scaling"] = {"enabled": True, "minReplicas": 1, "maxReplicas": 2}  # queries the hung Prometheus
    return body


def test_hung_registry_and_prometheus_do_not_delay_deployment_applies(
    kube_api: Any, namespace: str, sandbox: Sandbox, qwen_crd: Path, tmp_path: Path, blackhole: Blackhole
) -> None:
    qwds = Qwd(kube_api, namespace)
    env = {
        "AWS_ENDPOINT_URL": blackhole.url,
        "AWS_ENDPOINT_URL_S3": blackhole.url,
        "AWS_ACCESS_KEY_ID": "outage-test",
        "AWS_SECRET_ACCESS_KEY": "outage-test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    op = OperatorProcess(
        sandbox.kubeconfig,
        tmp_path / "operator.log",
        extra=["-n", namespace, "--prometheus-url", blackhole.url],
        env=env,
    ).start()
    try:
        for i in range(NOISY):
            qwds.create(_noisy(f"noisy-{i}"))
        # the watcher and the autoscaler are now stuck in calls the blackhole never answers
        wait_for("hung registry and Prometheus calls", lambda: blackhole.open_connections() >= 6, timeout=60)

        qwds.create(resource("victim", replicas=1, gpu_types=["L40S"]))
        # a boto3 call stays hung 15 s per attempt (2 attempts) and the watcher retries every 30 s:
        # a starved apply would wait for those; an isolated one lands long before
        wait_for("victim's pool Deployment", lambda: qwds.deployments("victim"), timeout=20)
        assert blackhole.open_connections() >= 1, "the hung calls ended before the check: it proved nothing"

        qwds.patch("victim", {"spec": {"replicas": 2}})

        def scaled() -> bool:
            return sum(d.spec.replicas or 0 for d in qwds.deployments("victim").values()) == 2

        wait_for("the spec change applied to the pool Deployments", scaled, timeout=20)
        assert blackhole.open_connections() >= 1, "the hung calls ended before the check: it proved nothing"
        assert op.alive(), op.tail()
        # the hung dependencies are reported, not silently ignored
        wait_for(
            "ScalingActive=False naming Prometheus on a noisy resource",
            lambda: (qwds.condition("noisy-0", "ScalingActive") or {}).get("status") == "False",
            timeout=90,
        )
    finally:
        op.stop()

"""Two operator processes with leader election on the real control plane (``--leader-elect``).

Only the Lease holder runs the controller: the standby has no handler, no cache and no write.
The leader is SIGKILLed right after a spec change, while it is applying it: the standby takes
the Lease once it has seen it unrenewed for the lease duration, the change made just before the
kill is applied (no lost decision), the pool Deployment is the same object (no duplicate, no
re-create), one resize Event at most (no duplicate decision) and the Ready replicas never drop
(sampled every 50 ms across the failover). A graceful stop (SIGINT/SIGTERM) releases the Lease,
so the next leader takes it at its next look instead of waiting for expiry.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from test_controller import Qwd, resource

from qwen_operator.sandbox.cluster import Sandbox
from qwen_operator.testing.operator import OperatorProcess
from qwen_operator.testing.wait import wait_for

pytestmark = pytest.mark.cluster

LEASE = "qwen-operator-leader"
LEASE_DURATION, RETRY_PERIOD = 10.0, 2.0  # the flags' defaults, as the chart passes them


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Candidate(OperatorProcess):
    """``qwenctl operator run --leader-elect`` with a known identity and its own health port."""

    def __init__(self, sandbox: Sandbox, workdir: Path, namespace: str, identity: str) -> None:
        self.identity = identity
        self.port = free_port()
        super().__init__(
            sandbox.kubeconfig,
            workdir / f"{identity}.log",
            extra=[
                "--namespace",
                namespace,
                "--leader-elect",
                f"--leader-elect-namespace={namespace}",
                f"--leader-elect-lease-name={LEASE}",
                f"--leader-elect-identity={identity}",
                f"--liveness=http://127.0.0.1:{self.port}/healthz",
            ],
        )

    def probe(self, path: str = "/readyz") -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:  # noqa: S310
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


class LeaseSampler(threading.Thread):
    """Every distinct Lease record (holder, transitions) seen, and the Ready server pods of
    ``name``, every 50 ms: a released Lease, a takeover and any drop in capacity show up."""

    def __init__(self, api: Any, namespace: str, qwds: Qwd, name: str) -> None:
        super().__init__(daemon=True)
        self.coord = client.CoordinationV1Api(api)
        self.ns, self.qwds, self.name = namespace, qwds, name
        self.records: list[tuple[str, int]] = []
        self.min_ready: int | None = None
        self._stop_ev = threading.Event()

    def run(self) -> None:
        while not self._stop_ev.is_set():
            spec = self.coord.read_namespaced_lease(LEASE, self.ns).spec
            assert spec is not None
            record = (spec.holder_identity or "", spec.lease_transitions or 0)
            if not self.records or self.records[-1] != record:
                self.records.append(record)
            ready = len(self.qwds.ready_pods(self.name))
            self.min_ready = ready if self.min_ready is None else min(self.min_ready, ready)
            time.sleep(0.05)

    def holders(self) -> list[str]:
        return [h for h, _ in self.records]

    def __enter__(self) -> LeaseSampler:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop_ev.set()
        self.join(5)


def holder(api: Any, namespace: str) -> str | None:
    try:
        spec = client.CoordinationV1Api(api).read_namespaced_lease(LEASE, namespace).spec
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return (spec.holder_identity or None) if spec is not None else None


@pytest.fixture()
def candidates(sandbox: Sandbox, qwen_crd: Path, namespace: str, tmp_path: Path) -> Iterator[dict[str, Candidate]]:
    procs = {i: Candidate(sandbox, tmp_path, namespace, i) for i in ("op-a", "op-b", "op-c")}
    try:
        yield procs
    finally:
        for p in procs.values():
            p.stop()
            if p.proc is not None:
                print(f"--- {p.identity} log tail ---\n{p.tail(25)}")


def test_only_the_leader_acts_and_a_killed_leader_is_replaced_without_loss(
    kube_api: Any, namespace: str, candidates: dict[str, Candidate]
) -> None:
    a, b = candidates["op-a"], candidates["op-b"]
    a.start()
    wait_for("op-a holds the Lease", lambda: holder(kube_api, namespace) == "op-a")
    b.start()
    wait_for("op-b waits as standby", lambda: "standby: op-a holds the leader Lease" in b.log_text())
    qwds = Qwd(kube_api, namespace)
    qwds.create(resource("chat", replicas=2, gpu_types=["L40S"]))
    wait_for("Ready with 2 replicas", lambda: qwds.ready("chat") and len(qwds.ready_pods("chat")) == 2)
    (dep,) = qwds.deployments("chat").values()
    uid = dep.metadata.uid

    # only the holder acts: the standby reports itself ready but not leading, and has run nothing
    status, state = b.probe()
    assert status == 200 and state["leader"] is False and state["holder"] == "op-a"
    assert a.probe() == (200, {**a.probe()[1], "leader": True})
    assert "reconciled" in a.log_text() and "reconciled" not in b.log_text()
    assert "became leader" not in b.log_text()

    with LeaseSampler(kube_api, namespace, qwds, "chat") as sampler:
        qwds.patch("chat", {"spec": {"replicas": 4}})  # a decision in flight when the leader dies
        time.sleep(0.05)
        killed_at = time.monotonic()
        a.kill()
        wait_for(
            "op-b takes over the Lease",
            lambda: holder(kube_api, namespace) == "op-b",
            timeout=LEASE_DURATION + 1.2 * RETRY_PERIOD + 10,
            interval=0.05,
        )
        print(f"takeover {time.monotonic() - killed_at:.1f} s after SIGKILL (lease duration {LEASE_DURATION:g} s)")
        wait_for("the change made before the kill is applied", lambda: qwds.ready("chat"), timeout=60)
        wait_for("4 Ready replicas", lambda: len(qwds.ready_pods("chat")) == 4, timeout=60)

    assert a.proc is not None and a.proc.returncode == -9
    assert "became leader" in b.log_text()
    deps = qwds.deployments("chat")
    assert list(deps) == ["chat-l40s"] and deps["chat-l40s"].metadata.uid == uid  # no duplicate, no re-create
    assert deps["chat-l40s"].spec.replicas == 4
    assert sampler.holders() == ["op-a", "op-b"]  # never a third state, never back
    assert sampler.records[-1][1] == sampler.records[0][1] + 1  # exactly one leader transition
    assert sampler.min_ready is not None and sampler.min_ready >= 2  # no Ready replica lost
    events = qwds.core.list_namespaced_event(namespace, field_selector="involvedObject.name=chat").items
    assert sum(1 for e in events if e.reason == "PoolCreated") == 1
    assert sum(1 for e in events if e.reason == "PoolResized") <= 1


def test_a_stopped_leader_releases_the_lease_and_the_standby_takes_it_at_once(
    kube_api: Any, namespace: str, candidates: dict[str, Candidate]
) -> None:
    b, c = candidates["op-b"], candidates["op-c"]
    b.start()
    wait_for("op-b holds the Lease", lambda: holder(kube_api, namespace) == "op-b")
    c.start()
    wait_for("op-c waits as standby", lambda: "standby: op-b holds the leader Lease" in c.log_text())
    qwds = Qwd(kube_api, namespace)
    qwds.create(resource("chat", replicas=1, gpu_types=["L40S"]))
    wait_for("Ready", lambda: qwds.ready("chat"))
    with LeaseSampler(kube_api, namespace, qwds, "chat") as sampler:
        b.stop()  # SIGINT, as SIGTERM in a pod: kopf stops, then the Lease is released
        wait_for("op-c takes over", lambda: holder(kube_api, namespace) == "op-c", timeout=LEASE_DURATION * 3)
        qwds.patch("chat", {"spec": {"replicas": 2}})
        wait_for("the new leader acts", lambda: len(qwds.ready_pods("chat")) == 2 and qwds.ready("chat"))
    assert b.proc is not None and b.proc.returncode == 0
    assert "released the leader Lease" in b.log_text()
    # handed over through an empty holder: op-c took a released Lease, it did not wait for expiry
    assert sampler.holders() == ["op-b", "", "op-c"]
    assert sampler.min_ready is not None and sampler.min_ready >= 1

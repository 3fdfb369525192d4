"""Pytest fixtures that run the real operator (``qwenctl operator run``) against the sandbox.

The operator runs as a separate process, exactly as a user runs it locally, so tests can
kill it mid-reconcile and start it again. The CRD comes from ``crds/`` (the generated
file users install), applied with the sandbox's own kubectl.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..api.crdgen import DEFAULT_OUTPUT as CRD_FILE
from ..router.discovery import DIAL_ENV
from ..sandbox.cluster import Sandbox

__all__ = ["qwen_crd", "operator_process", "OperatorProcess"]


#: The sandbox has no pod network: the canary smoke test dials a pod at its ``sandbox.qwenops.io/dial``
#: annotation (the simulated server standing in for it), as the router pods do.
SANDBOX_ENV = {DIAL_ENV: "annotation"}


class OperatorProcess:
    def __init__(
        self, kubeconfig: Path, log: Path, extra: list[str] | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.kubeconfig = kubeconfig
        self.log = log
        self.extra = extra or []
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        cmd = [
            sys.executable,
            "-m",
            "qwen_operator.cli",
            "operator",
            "run",
            "--kubeconfig",
            str(self.kubeconfig),
            "--resync-seconds",
            "5",
            *self.extra,
        ]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **SANDBOX_ENV, **(self.env or {})}
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if "qwen-operator starting" in self.log.read_text(errors="replace"):
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited ({self.proc.returncode}):\n{self.tail()}")
            time.sleep(0.1)
        raise RuntimeError(f"operator did not start:\n{self.tail()}")

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, as when a node dies mid-reconcile."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="session")
def qwen_crd(sandbox: Sandbox, kubectl: Any) -> Path:
    """The generated CRD installed (server-side) and Established."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    # `kubectl wait --for=condition=Established` fails at once (not waits) when the CRD has no status yet,
    # which a freshly applied CRD may not: poll the condition instead
    deadline = time.monotonic() + 60
    while True:
        got = kubectl(
            "get",
            "crd/qwendeployments.serving.qwenops.io",
            "-o",
            'jsonpath={.status.conditions[?(@.type=="Established")].status}',
            check=False,
        )
        if got.returncode == 0 and got.stdout.strip() == "True":
            return CRD_FILE
        if time.monotonic() > deadline:
            raise AssertionError(f"CRD qwendeployments not Established after 60 s: {got.stdout} {got.stderr}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def operator_process(
    sandbox: Sandbox, qwen_crd: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    op = OperatorProcess(sandbox.kubeconfig, log).start()
    try:
        yield op
    finally:
        op.stop()
        print(f"--- operator log tail ({log}) ---\n{op.tail(60)}")

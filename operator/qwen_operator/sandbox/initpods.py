"""The sandbox's stand-in for a kubelet running a server pod's ``model-pull`` init container.

kwok runs no containers: a pod's init containers show *Completed* the moment it starts
(:mod:`.stages`). Where a figure depends on the pull (a roll's time with and without
pre-staging, ``bench/roll_bench.py``), the operator's config adds the pod annotation
``sandbox.qwenops.io/init-pending`` (``podAnnotations``), kwok holds such a pod not Ready, and
:class:`InitPods` does what the kubelet would: it runs the pod's rendered ``model-pull`` init
container -- **its own command and arguments**, its ``env`` and the Secret its ``envFrom``
names -- as a host process, then removes the annotation, so the pod becomes Ready after its
modelled cold start (``sandbox.qwenops.io/ready-after``). A failed pull is retried with a
back-off, as the kubelet restarts a failed init container.

The seam is the filesystem: each node's hostPath cache is a host directory
(``<node_root>/<node>``, the directory a node agent for that node is given as
``--cache-root``), so a hostPath volume ``<nodeCache.path>/<namespace>`` mounted at ``/models``
becomes ``<node_root>/<node>/<namespace>`` in the arguments. ``qwenctl`` is this Python's
``python -m qwen_operator.cli``. Nothing else changes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..api.spec import DEFAULT_CACHE_PATH
from .stages import INIT_PENDING_ANNOTATION

INIT_CONTAINER = "model-pull"
CLI = "qwenctl"


class InitSeamError(ValueError):
    """The pod's init container uses something the seam does not stand in for."""


@dataclass(frozen=True)
class Invocation:
    argv: list[str]
    env: dict[str, str]
    cache_dirs: list[Path]  # host directories standing in for the pod's hostPath volumes


def invocation(
    pod: Mapping[str, Any],
    node_root: Path,
    secret: Callable[[str], Mapping[str, str]],
    cache_path: str = DEFAULT_CACHE_PATH,
) -> Invocation | None:
    """How to run ``pod``'s ``model-pull`` init container on this host; None when it has none."""
    spec = pod.get("spec") or {}
    container = next((c for c in spec.get("initContainers") or [] if c.get("name") == INIT_CONTAINER), None)
    if container is None:
        return None
    node = spec.get("nodeName")
    if not node:
        raise InitSeamError("the pod is not bound to a node yet")
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    mounts: dict[str, Path] = {}
    for m in container.get("volumeMounts") or []:
        host = (volumes.get(m["name"]) or {}).get("hostPath")
        if host is None:
            continue  # emptyDir (/tmp): the process's own temp directory serves
        rel = PurePosixPath(host["path"]).relative_to(PurePosixPath(cache_path))  # ValueError: not a cache dir
        mounts[m["mountPath"].rstrip("/")] = node_root / node / rel
    command = list(container.get("command") or [])
    if not command or command[0] != CLI:
        raise InitSeamError(f"init container {INIT_CONTAINER} runs {command[:1]}, not {CLI}")
    argv = [sys.executable, "-m", "qwen_operator.cli", *command[1:]]
    for arg in container.get("args") or []:
        for mount, host_dir in mounts.items():
            if arg == mount or arg.startswith(mount + "/"):
                arg = str(host_dir) + arg[len(mount) :]
                break
        argv.append(arg)
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        ref = source.get("secretRef")
        if ref is None:
            raise InitSeamError(f"envFrom {source}: only secretRef is stood in for")
        env.update(secret(ref["name"]))
    for var in container.get("env") or []:
        if "value" not in var:
            raise InitSeamError(f"env {var.get('name')}: only plain values are stood in for")
        env[var["name"]] = str(var["value"])
    return Invocation(argv, env, list(mounts.values()))


@dataclass
class InitRun:
    pod: str
    node: str
    seconds: float
    returncode: int
    attempt: int


@dataclass
class InitPods:
    """Runs the held pods' ``model-pull`` init containers of one namespace (see the module doc)."""

    api_client: Any
    namespace: str
    node_root: Path
    cache_path: str = DEFAULT_CACHE_PATH
    poll_seconds: float = 0.2
    log: Callable[[str], None] = print
    runs: list[InitRun] = field(default_factory=list)
    _started: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> InitPods:
        t = threading.Thread(target=self._watch, name="init-pods", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def _core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api_client)

    def _secret(self, name: str) -> dict[str, str]:
        import base64

        data = self._core().read_namespaced_secret(name, self.namespace).data or {}
        return {k: base64.b64decode(v).decode() for k, v in data.items()}

    def _watch(self) -> None:
        core = self._core()
        while not self._stop.is_set():
            try:
                pods = core.list_namespaced_pod(self.namespace).items
            except Exception as exc:  # noqa: BLE001 - the API server may be busy; the next poll retries
                self.log(f"init seam: listing pods: {exc}")
                pods = []
            for pod in pods:
                annotations = pod.metadata.annotations or {}
                if INIT_PENDING_ANNOTATION not in annotations or not pod.spec.node_name:
                    continue
                if pod.metadata.uid in self._started or pod.metadata.deletion_timestamp is not None:
                    continue
                self._started.add(pod.metadata.uid)
                raw = self.api_client.sanitize_for_serialization(pod)
                t = threading.Thread(target=self._run, args=(raw,), name=f"init-{pod.metadata.name}", daemon=True)
                t.start()
                self._threads.append(t)
            self._stop.wait(self.poll_seconds)

    def _run(self, pod: dict[str, Any]) -> None:
        name, node = pod["metadata"]["name"], pod["spec"]["nodeName"]
        try:
            inv = invocation(pod, self.node_root, self._secret, self.cache_path)
        except (InitSeamError, ValueError) as exc:
            self.log(f"init seam: pod {name}: {exc}; left not Ready")
            return
        backoff = 1.0
        for attempt in range(1, 6):
            if inv is None:
                break
            for d in inv.cache_dirs:
                d.mkdir(parents=True, exist_ok=True)  # hostPath type DirectoryOrCreate
            env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OCI_"))}
            began = time.monotonic()
            proc = subprocess.run(inv.argv, env={**env, **inv.env}, capture_output=True, text=True, check=False)
            self.runs.append(InitRun(name, node, time.monotonic() - began, proc.returncode, attempt))
            if proc.returncode == 0:
                break
            self.log(f"init seam: pod {name} on {node}: model-pull exited {proc.returncode}: {proc.stderr[-300:]}")
            if self._stop.wait(backoff):
                return
            backoff *= 2
        else:
            return  # left not Ready, as a pod in Init:CrashLoopBackOff
        try:
            patch = {"metadata": {"annotations": {INIT_PENDING_ANNOTATION: None}}}
            self._core().patch_namespaced_pod(name, self.namespace, patch)
        except Exception as exc:  # noqa: BLE001 - the pod may be gone (a roll moved on)
            self.log(f"init seam: pod {name}: releasing it: {exc}")

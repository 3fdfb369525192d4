"""A real Kubernetes control plane on 127.0.0.1 with kwok-simulated GPU nodes.

``Sandbox(name).up()`` generates PKI and kubeconfigs, starts etcd, kube-apiserver (RBAC
and ServiceAccounts on), kube-controller-manager, kube-scheduler and kwok, waits for the
API and the ``default`` ServiceAccount, then registers fake GPU nodes and waits until
kwok reports them Ready. State (pids, ports, PKI, logs, etcd data) lives in
``<cache>/sandboxes/<name>/``; ``down()`` stops exactly the recorded processes and removes
it. ``up()`` on a healthy sandbox is a no-op; on a broken one it cleans up and restarts.

Only the *containers* are simulated (kwok marks pods Running/Ready); scheduling, RBAC,
admission, garbage collection and the workload controllers are the real ones.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import procs
from .apiclient import ApiClient, ApiError
from .binaries import Binaries, cache_root, locate
from .nodes import DEFAULT_GPUS_SPEC, cpu_node_manifest, node_manifest, parse_gpus, plan_nodes
from .pki import ADMIN, CONTROLLER_MANAGER, KWOK, PKI, SCHEDULER
from .stages import stages_yaml

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
POD_CIDR = "10.244.0.0/16"
MARKER_NAMESPACE = "kube-system"
MARKER_NAME = "qwen-operator-sandbox"

Progress = Callable[[str], None]


def sandboxes_root() -> Path:
    return cache_root() / "sandboxes"


@dataclass
class SandboxState:
    name: str
    sandbox_id: str
    server: str
    ports: dict[str, int]
    pids: dict[str, int] = field(default_factory=dict)
    binaries: dict[str, str] = field(default_factory=dict)
    gpus: str = DEFAULT_GPUS_SPEC
    taint: bool = True
    nodes: list[str] = field(default_factory=list)


class SandboxError(RuntimeError):
    """The sandbox could not be started; the message points at the log to read."""


class Sandbox:
    def __init__(self, name: str = "default") -> None:
        self.name = name
        self.dir = sandboxes_root() / name
        self.pki = PKI(self.dir / "pki")

    # -- locations -------------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    def log(self, component: str) -> Path:
        return self.dir / "logs" / f"{component}.log"

    def state(self) -> SandboxState | None:
        try:
            return SandboxState(**json.loads(self.state_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _save(self, st: SandboxState) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(st), indent=2))
        tmp.replace(self.state_file)

    def client(self) -> ApiClient:
        st = self.state()
        if st is None:
            raise SandboxError(f"sandbox {self.name!r} is not running (run `qwenctl sandbox up`)")
        return ApiClient(st.server, self.pki.ca_cert, self.pki.client_cert(ADMIN), self.pki.client_key(ADMIN))

    # -- health ----------------------------------------------------------------------
    def components(self) -> dict[str, bool]:
        st = self.state()
        if st is None:
            return {}
        return {c: procs.is_running(pid, st.binaries.get(c)) for c, pid in st.pids.items()}

    def healthy(self) -> bool:
        comps = self.components()
        if not comps or not all(comps.values()):
            return False
        try:
            return self.client().get_raw("/readyz") == b"ok"
        except (ApiError, OSError):
            return False

    # -- lifecycle -------------------------------------------------------------------
    def up(
        self, gpus: str = DEFAULT_GPUS_SPEC, taint: bool = True, progress: Progress = print, timeout: float = 120.0
    ) -> SandboxState:
        node_plan = plan_nodes(parse_gpus(gpus))  # fail fast on bad input, before starting anything
        if self.healthy():
            st = self.state()
            assert st is not None
            progress(f"sandbox {self.name!r} already running at {st.server}")
            self._ensure_nodes(st, node_plan, taint, progress, timeout)
            return st
        if self.state_file.exists():
            progress(f"sandbox {self.name!r} is not healthy: cleaning up and starting again")
            self.down(progress=lambda _m: None)
        bins = locate()
        started = time.monotonic()
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        self.pki.ensure(service_ip=SERVICE_IP)
        ports = {c: procs.free_port() for c in ("etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler")}
        server = f"https://127.0.0.1:{ports['apiserver']}"
        st = SandboxState(
            name=self.name,
            sandbox_id=f"{self.name}-{int(time.time() * 1000):x}",
            server=server,
            ports=ports,
            binaries={k: str(v) for k, v in bins.all().items()},
            gpus=gpus,
            taint=taint,
        )
        self._save(st)
        try:
            self._start_all(st, bins, progress, timeout)
            self._ensure_nodes(st, node_plan, taint, progress, timeout)
        except BaseException:
            self.down(progress=lambda _m: None, keep_logs=True)
            raise
        progress(f"sandbox {self.name!r} up in {time.monotonic() - started:.1f}s: {server}")
        return st

    def _start(self, st: SandboxState, component: str, cmd: list[str]) -> None:
        st.pids[component] = procs.start(cmd, self.log(component))
        self._save(st)

    def _wait(self, what: str, check: Callable[[], bool], timeout: float, st: SandboxState) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [c for c, ok in self.components().items() if not ok]
            if dead:
                raise SandboxError(
                    f"{dead[0]} exited while waiting for {what}; see {self.log(dead[0])}:\n" + _tail(self.log(dead[0]))
                )
            try:
                if check():
                    return
            except (ApiError, OSError):
                pass
            time.sleep(0.2)
        raise SandboxError(f"timed out after {timeout:.0f}s waiting for {what}; logs in {self.dir / 'logs'}")

    def _start_all(self, st: SandboxState, bins: Binaries, progress: Progress, timeout: float) -> None:
        d, p, pki = self.dir, st.ports, self.pki
        progress(f"starting etcd on 127.0.0.1:{p['etcd']}")
        self._start(
            st,
            "etcd",
            [
                str(bins.etcd),
                "--name",
                "sandbox",
                "--data-dir",
                str(d / "etcd"),
                "--listen-client-urls",
                f"http://127.0.0.1:{p['etcd']}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{p['etcd']}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{p['etcd-peer']}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{p['etcd-peer']}",
                "--initial-cluster",
                f"sandbox=http://127.0.0.1:{p['etcd-peer']}",
                "--unsafe-no-fsync",  # a throwaway sandbox: durability is not worth the latency
                "--log-level",
                "warn",
            ],
        )
        progress(f"starting kube-apiserver on 127.0.0.1:{p['apiserver']}")
        self._start(
            st,
            "kube-apiserver",
            [
                str(bins.kube_apiserver),
                f"--etcd-servers=http://127.0.0.1:{p['etcd']}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                # no pod runs a container, so nothing dials the `kubernetes` Service from inside;
                # the endpoint reconciler refuses a loopback advertise address
                "--endpoint-reconciler-type=none",
                f"--secure-port={p['apiserver']}",
                f"--cert-dir={d / 'apiserver-certs'}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ],
        )
        client = ApiClient(st.server, pki.ca_cert, pki.client_cert(ADMIN), pki.client_key(ADMIN))
        self._wait("kube-apiserver /readyz", lambda: client.get_raw("/readyz") == b"ok", timeout, st)
        for ident in (ADMIN, CONTROLLER_MANAGER, SCHEDULER, KWOK):
            target = self.kubeconfig if ident is ADMIN else d / f"{ident.name}.kubeconfig"
            pki.write_kubeconfig(target, st.server, ident, f"qwen-sandbox-{self.name}")
        cm_kc, sched_kc = d / "controller-manager.kubeconfig", d / "scheduler.kubeconfig"
        progress("starting kube-controller-manager, kube-scheduler and kwok")
        self._start(
            st,
            "kube-controller-manager",
            [
                str(bins.kube_controller_manager),
                f"--kubeconfig={cm_kc}",
                f"--authentication-kubeconfig={cm_kc}",
                f"--authorization-kubeconfig={cm_kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={p['controller-manager']}",
                f"--cert-dir={d / 'cm-certs'}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki.sa_key}",
                f"--root-ca-file={pki.ca_cert}",
                f"--cluster-signing-cert-file={pki.ca_cert}",
                f"--cluster-signing-key-file={pki.ca_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allocate-node-cidrs=false",
                "--profiling=false",
                "--v=1",
            ],
        )
        self._start(
            st,
            "kube-scheduler",
            [
                str(bins.kube_scheduler),
                f"--kubeconfig={sched_kc}",
                f"--authentication-kubeconfig={sched_kc}",
                f"--authorization-kubeconfig={sched_kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={p['scheduler']}",
                f"--cert-dir={d / 'scheduler-certs'}",
                "--leader-elect=false",
                "--profiling=false",
                "--v=1",
            ],
        )
        stages = d / "kwok-stages.yaml"
        stages.write_text(stages_yaml())
        self._start(
            st,
            "kwok",
            [
                str(bins.kwok),
                f"--kubeconfig={d / 'kwok.kubeconfig'}",
                f"--config={stages}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                "--manage-nodes-with-label-selector=",
                "--manage-single-node=",
                f"--cidr={POD_CIDR}",
                "--node-ip=10.0.0.1",
                "--node-lease-duration-seconds=40",
            ],
        )
        self._wait(
            "the default ServiceAccount",
            lambda: client.exists("/api/v1/namespaces/default/serviceaccounts/default"),
            timeout,
            st,
        )
        marker = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": MARKER_NAME, "namespace": MARKER_NAMESPACE},
            "data": {"sandboxId": st.sandbox_id, "name": self.name},
        }
        client.apply(marker)

    def _ensure_nodes(
        self, st: SandboxState, node_plan: list[Any], taint: bool, progress: Progress, timeout: float
    ) -> None:
        client = self.client()
        manifests = [node_manifest(n, taint=taint) for n in node_plan] + [cpu_node_manifest()]
        for m in manifests:
            client.apply(m)
        st.nodes = [m["metadata"]["name"] for m in manifests]
        self._save(st)
        summary = ", ".join(f"{n.name} ({n.gpus}x {n.gpu.name})" for n in node_plan)
        progress(f"registered {len(manifests)} nodes: {summary}, cpu-0")

        def all_ready() -> bool:
            items = client.get("/api/v1/nodes")["items"]
            ready = {
                i["metadata"]["name"]
                for i in items
                if any(
                    c["type"] == "Ready" and c["status"] == "True" for c in i.get("status", {}).get("conditions", [])
                )
            }
            return set(st.nodes) <= ready

        self._wait("all nodes Ready (kwok)", all_ready, timeout, st)

    def down(self, progress: Progress = print, keep_logs: bool = False) -> list[str]:
        """Stop exactly the processes this sandbox started; remove its state. Returns what was stopped."""
        st = self.state()
        stopped: list[str] = []
        if st is not None:
            order = ["kwok", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"]
            for comp in sorted(st.pids, key=lambda c: order.index(c) if c in order else -1):
                pid, binary = st.pids[comp], st.binaries.get(comp, "")
                if procs.is_running(pid, binary):
                    procs.stop(pid, binary)
                    stopped.append(comp)
        if self.dir.exists():
            if keep_logs:
                for child in self.dir.iterdir():
                    if child.name != "logs":
                        shutil.rmtree(child) if child.is_dir() else child.unlink()
            else:
                shutil.rmtree(self.dir, ignore_errors=True)
        progress(f"sandbox {self.name!r} down" + (f" (stopped {', '.join(stopped)})" if stopped else ""))
        return stopped


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"

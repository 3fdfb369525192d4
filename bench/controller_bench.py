"""Controller figures for issue 3, measured on a fresh sandbox with the real operator process.

Why it exists: the issue asks for numbers, not assertions: apply -> pool Deployments
created and apply -> ``Ready`` (p50/p95 over 20 QwenDeployments, one at a time and all at
once), API writes during 60 s of steady state (target 0, counted by the kube-apiserver's
own ``apiserver_request_total``) and API requests of every verb in that window (the drift
check compares live objects in the watch cache, so a resync costs none), operator RSS while
managing 100 resources (target < 250 MB) and reconcile throughput (100 applied at once).
Prints figures; asserts nothing.

    .venv/bin/python bench/controller_bench.py [--steady-seconds 60] [--manage 100] [--routing on|off] [--json OUT]

Phases, each on a clean namespace: ``sequential`` (apply, wait for Ready, next),
``burst-20`` and ``burst-100`` (all created concurrently). The 100 alternate between
``gpuTypes: [A10G]`` and ``[L40S]`` with 1 replica each on a sandbox of 64 + 64 GPUs, so
every one can be placed; the operator runs as ``qwenctl operator run --resync-seconds 5``.
Times come from this process's own watches (first ADDED Deployment; first event with
``Ready=True`` at the current ``observedGeneration``) measured from the create call's return.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config, watch

from qwen_operator.api import GROUP, PLURAL, VERSION
from qwen_operator.api.crdgen import DEFAULT_OUTPUT as CRD_FILE
from qwen_operator.render.names import LABEL_DEPLOYMENT, LABEL_MANAGED_BY, MANAGED_BY
from qwen_operator.sandbox.binaries import locate
from qwen_operator.sandbox.cluster import Sandbox
from qwen_operator.testing.operator import OperatorProcess

SAMPLE = Path(__file__).resolve().parents[1] / "manifests" / "samples" / "qwen3-14b-chat.yaml"
NAMESPACE = "bench"
GPUS = "a10g=64,l40s=64"  # 16 + 16 kwok nodes; Qwen3-14B fp8 takes 1 GPU per replica on either
WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE", "APPLY")
OWNED = ("deployments", "services", "poddisruptionbudgets", "events")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


#: ``--routing off``: resources without the router (its Deployment, Services, PDB, RBAC and 2 pods
#: each): the controller's own cost, on a sandbox whose single CPU node cannot hold 2 router pods
#: per resource at 1,000 resources.
ROUTING = {"enabled": True}


def resource(name: str, gpu_types: list[str], replicas: int = 1) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load(SAMPLE.read_text())
    body["spec"]["routing"] = dict(ROUTING)
    body["metadata"] = {"name": name, "namespace": NAMESPACE}
    body["spec"]["scaling"] = {"enabled": False}
    body["spec"]["replicas"] = replicas
    body["spec"]["model"].pop("credentialsSecret", None)
    # no registry runs here: hf:// versions are not tracked, so pools start at once (an s3://
    # registry waits for its digest before creating any pool, see test_drift.py)
    body["spec"]["model"]["registry"] = "hf://Qwen/Qwen3-14B"
    body["spec"]["placement"]["gpuTypes"] = gpu_types
    return body


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (p95 of 20 values is the 19th)."""
    s = sorted(values)
    return s[max(0, math.ceil(q * len(s)) - 1)] if s else float("nan")


# -- what the API server and /proc say ------------------------------------------------------
def api_writes(sb: Sandbox) -> Counter[str]:
    """Mutating requests per ``verb resource[/subresource]`` from the apiserver's own metrics."""
    return api_requests(sb, WRITE_VERBS)


def api_requests(sb: Sandbox, verbs: tuple[str, ...] | None = None) -> Counter[str]:
    """Requests (reads too unless ``verbs``) on QwenDeployments and the kinds the operator owns.

    Counted by the kube-apiserver, so every client is in it; at rest the only one touching
    these kinds is the operator (the controller-manager's informers hold open watches, which
    count once when opened). Status subresources of owned kinds are left out: the Deployment
    and disruption controllers write those, never the operator.
    """
    out: Counter[str] = Counter()
    for line in sb.client().get_raw("/metrics").decode().splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels_s, value = line.rsplit(" ", 1)
        labels = dict(_LABEL.findall(labels_s))
        res, sub, verb = labels.get("resource", ""), labels.get("subresource", ""), labels.get("verb", "")
        if verbs is not None and verb not in verbs:
            continue
        if res == "qwendeployments" or (res in OWNED and not sub):
            out[f"{verb} {res}{'/' + sub if sub else ''}"] += int(float(value))
    return out


def diff(after: Counter[str], before: Counter[str]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in sorted(after) if after[k] != before.get(k, 0)}


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("Vm")
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


# -- watches ----------------------------------------------------------------------------------
@dataclass
class Observer:
    """Background watches on QwenDeployments and pool Deployments, stamped with time.monotonic()."""

    api: client.ApiClient
    dep_seen: dict[str, tuple[str, float]] = field(default_factory=dict)  # deployment -> (owner, t)
    ready_at: dict[str, float] = field(default_factory=dict)
    pools: dict[str, list[str]] = field(default_factory=dict)  # qwd -> deployments in status.pools
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Observer:
        custom = client.CustomObjectsApi(self.api)  # plain dicts, for apps/v1 as for our group

        def qwd_list(**kw: Any) -> Any:
            return custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, **kw)

        def dep_list(**kw: Any) -> Any:
            kw["label_selector"] = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
            return custom.list_namespaced_custom_object("apps", "v1", NAMESPACE, "deployments", **kw)

        for fn, handle in ((qwd_list, self._on_qwd), (dep_list, self._on_dep)):
            threading.Thread(target=self._run, args=(fn, handle), daemon=True).start()
        return self

    def _run(self, list_fn: Callable[..., Any], handle: Callable[[str, Any], None]) -> None:
        while not self.stop.is_set():
            w = watch.Watch()
            try:
                for ev in w.stream(list_fn, timeout_seconds=60):
                    if ev["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        handle(ev["type"], ev["object"])
                    if self.stop.is_set():
                        w.stop()
            except Exception as exc:  # noqa: BLE001 - a dropped watch is re-opened; first-seen times survive
                if not self.stop.is_set():
                    print(f"  (watch re-opened after {type(exc).__name__}: {exc})", file=sys.stderr)
                time.sleep(0.5)

    def _on_dep(self, kind: str, obj: dict[str, Any]) -> None:
        now = time.monotonic()
        owner = (obj["metadata"].get("labels") or {}).get(LABEL_DEPLOYMENT, "")
        with self.lock:
            if kind != "DELETED":
                self.dep_seen.setdefault(obj["metadata"]["name"], (owner, now))

    def _on_qwd(self, kind: str, obj: dict[str, Any]) -> None:
        now = time.monotonic()
        name, gen = obj["metadata"]["name"], obj["metadata"].get("generation")
        status = obj.get("status") or {}
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
        with self.lock:
            if kind == "DELETED":
                self.ready_at.pop(name, None)
                self.pools.pop(name, None)
                return
            self.pools[name] = [p["deployment"] for p in status.get("pools") or []]
            if ready and ready.get("status") == "True" and ready.get("observedGeneration") == gen:
                self.ready_at.setdefault(name, now)

    def created_at(self, name: str) -> float | None:
        """When the last of the resource's pool Deployments was first seen."""
        with self.lock:
            wanted = self.pools.get(name) or [d for d, (o, _) in self.dep_seen.items() if o == name]
            times = [self.dep_seen[d][1] for d in wanted if d in self.dep_seen]
        return max(times) if times and len(times) == len(wanted) else None

    def reset(self) -> None:
        with self.lock:
            self.dep_seen.clear()
            self.ready_at.clear()
            self.pools.clear()


# -- phases -----------------------------------------------------------------------------------
@dataclass
class PhaseResult:
    name: str
    applied: int
    ready: int
    to_created: list[float]
    to_ready: list[float]
    wall_s: float
    writes: dict[str, int]

    def summary(self) -> dict[str, Any]:
        return {
            "applied": self.applied,
            "ready": self.ready,
            "created_p50_s": pct(self.to_created, 0.5),
            "created_p95_s": pct(self.to_created, 0.95),
            "ready_p50_s": pct(self.to_ready, 0.5),
            "ready_p95_s": pct(self.to_ready, 0.95),
            "wall_s": self.wall_s,
            "ready_per_s": self.ready / self.wall_s if self.wall_s else 0.0,
            "api_writes": self.writes,
        }


class Bench:
    def __init__(self, sb: Sandbox, api: client.ApiClient, obs: Observer) -> None:
        self.sb, self.api, self.obs = sb, api, obs
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)

    def create(self, body: dict[str, Any]) -> float:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)
        return time.monotonic()

    def wait(self, names: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.obs.lock:
                if all(n in self.obs.ready_at for n in names):
                    return
            time.sleep(0.1)

    def result(self, phase: str, applied: dict[str, float], start: float, before: Counter[str]) -> PhaseResult:
        created, ready = [], []
        for name, t0 in applied.items():
            c = self.obs.created_at(name)
            if c is not None:
                created.append(c - t0)
            r = self.obs.ready_at.get(name)
            if r is not None:
                ready.append(r - t0)
        last = max((self.obs.ready_at.get(n, 0.0) for n in applied), default=start)
        return PhaseResult(
            phase, len(applied), len(ready), created, ready, max(0.0, last - start), diff(api_writes(self.sb), before)
        )

    def sequential(self, n: int, timeout: float) -> PhaseResult:
        before, start, applied = api_writes(self.sb), time.monotonic(), {}
        for i in range(n):
            name = f"seq-{i:03d}"
            applied[name] = self.create(resource(name, ["A10G", "L40S"]))
            self.wait([name], timeout)
            r = self.obs.ready_at.get(name)
            print(f"  {name}: " + (f"Ready after {r - applied[name]:.2f}s" if r else "not Ready"), flush=True)
        return self.result("sequential", applied, start, before)

    def burst(self, phase: str, bodies: list[dict[str, Any]], timeout: float) -> PhaseResult:
        before, start = api_writes(self.sb), time.monotonic()
        with ThreadPoolExecutor(max_workers=10) as pool:
            stamps = list(pool.map(self.create, bodies))
        applied = {b["metadata"]["name"]: t for b, t in zip(bodies, stamps, strict=True)}
        print(f"  {len(bodies)} created in {time.monotonic() - start:.1f}s; waiting for Ready", flush=True)
        self.wait(list(applied), timeout)
        return self.result(phase, applied, start, before)

    def clean(self, kubectl: Callable[..., str], timeout: float = 180.0) -> None:
        """Delete every QwenDeployment and wait for the garbage collector to free their GPUs."""
        kubectl("delete", "qwd", "--all", "-n", NAMESPACE, "--wait=true", "--timeout=120s")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pods = self.core.list_namespaced_pod(NAMESPACE).items
            deps = self.apps.list_namespaced_deployment(NAMESPACE).items
            if not pods and not deps:
                break
            time.sleep(0.5)
        self.obs.reset()


def pods_by_phase(core: client.CoreV1Api) -> dict[str, int]:
    return dict(Counter(p.status.phase for p in core.list_namespaced_pod(NAMESPACE).items))


# -- main -------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    sb = Sandbox(f"ctlbench-{os.getpid()}")
    kubectl_bin = str(locate().kubectl)
    workdir = Path(tempfile.mkdtemp(prefix="controller-bench-"))
    report: dict[str, Any] = {"gpus": args.gpus, "resync_seconds": 5, "operator_log": str(workdir / "operator.log")}

    def kubectl(*argv: str) -> str:
        cmd = [kubectl_bin, "--kubeconfig", str(sb.kubeconfig), *argv]
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout

    op: OperatorProcess | None = None
    obs: Observer | None = None
    try:
        sb.up(gpus=args.gpus, progress=print)
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
        kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{PLURAL}.{GROUP}")
        kubectl("create", "namespace", NAMESPACE)
        # KUBECONFIG too: `operator run --kubeconfig` alone leaves kopf's login on ~/.kube/config
        env = {"KUBECONFIG": str(sb.kubeconfig)}
        op = OperatorProcess(sb.kubeconfig, workdir / "operator.log", env=env).start()
        assert op.proc is not None
        pid = op.proc.pid
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(sb.kubeconfig), client_configuration=cfg)
        cfg.connection_pool_maxsize = 16  # two watches + ten concurrent creates
        api = client.ApiClient(cfg)
        obs = Observer(api).start()
        bench = Bench(sb, api, obs)
        time.sleep(3)
        report["rss_idle_mb"] = rss_mb(pid)[0]
        print(f"operator pid {pid} up, idle RSS {report['rss_idle_mb']:.0f} MB; log {report['operator_log']}")

        phases: list[PhaseResult] = []
        if args.sequential:
            print(f"phase sequential: {args.sequential} resources, one at a time")
            phases.append(bench.sequential(args.sequential, timeout=60))
            bench.clean(kubectl)
        if args.burst:
            print(f"phase burst-{args.burst}: all created at once")
            bodies = [resource(f"burst-{i:03d}", ["A10G", "L40S"]) for i in range(args.burst)]
            phases.append(bench.burst(f"burst-{args.burst}", bodies, timeout=180))
            bench.clean(kubectl)

        print(f"phase burst-{args.manage}: managing {args.manage} resources (alternating A10G / L40S, 1 replica)")
        cpu0 = cpu_seconds(pid)
        bodies = [resource(f"fleet-{i:03d}", ["A10G"] if i % 2 == 0 else ["L40S"]) for i in range(args.manage)]
        big = bench.burst(f"burst-{args.manage}", bodies, timeout=args.timeout)
        phases.append(big)
        report["burst_cpu_s"] = cpu_seconds(pid) - cpu0
        report["pods"] = pods_by_phase(bench.core)
        report["rss_after_burst_mb"], _ = rss_mb(pid)
        print(f"  {big.ready}/{big.applied} Ready in {big.wall_s:.1f}s; pods {report['pods']}")

        time.sleep(args.settle)  # the last status writes and their watch echoes
        print(f"steady state: {args.steady_seconds:.0f}s with {big.ready} Ready resources")
        before, cpu0, t0 = api_writes(sb), cpu_seconds(pid), time.monotonic()
        requests_before = api_requests(sb)
        rss_samples = []
        while time.monotonic() - t0 < args.steady_seconds:
            rss_samples.append(rss_mb(pid)[0])
            time.sleep(min(5.0, max(0.0, args.steady_seconds - (time.monotonic() - t0))))
        steady_s = time.monotonic() - t0
        report["steady_seconds"] = steady_s
        report["steady_writes"] = diff(api_writes(sb), before)
        report["steady_requests"] = diff(api_requests(sb), requests_before)
        report["steady_cpu_s"] = cpu_seconds(pid) - cpu0
        report["rss_steady_mb"] = max(rss_samples)
        report["rss_peak_mb"] = rss_mb(pid)[1]
        report["managed"] = args.manage
        report["placed"] = sum(1 for p in bench.core.list_namespaced_pod(NAMESPACE).items if p.spec.node_name)
        report["phases"] = {p.name: p.summary() for p in phases}
        report["operator_alive"] = op.alive()
        errors = [ln for ln in (workdir / "operator.log").read_text(errors="replace").splitlines() if " ERROR " in ln]
        report["operator_errors"] = len(errors)
        if errors:
            print("operator errors (first 3):\n  " + "\n  ".join(errors[:3]))
    finally:
        if obs is not None:
            obs.stop.set()
        if op is not None:
            op.stop()
        sb.down(progress=print)
    return report


def table(report: dict[str, Any], resync: float) -> str:
    rows: list[tuple[str, str, str]] = []
    for name, p in report["phases"].items():
        rows.append(
            (
                f"{name}: apply -> pool Deployments created",
                f"p50 {p['created_p50_s']:.2f}s  p95 {p['created_p95_s']:.2f}s",
                "-",
            )
        )
        rows.append(
            (
                f"{name}: apply -> Ready",
                f"p50 {p['ready_p50_s']:.2f}s  p95 {p['ready_p95_s']:.2f}s  ({p['ready']}/{p['applied']} Ready)",
                "-",
            )
        )
    big = report["phases"][f"burst-{report['managed']}"]
    n = report["managed"]
    rows.append(
        (
            f"reconcile throughput ({n} at once)",
            f"{big['ready_per_s']:.1f} resources Ready/s ({big['ready']} in {big['wall_s']:.1f}s)",
            "-",
        )
    )
    writes = sum(big["api_writes"].values())
    label = f"API writes converging {n} (all clients)"  # incl. the creates and the cluster's own Events
    rows.append((label, f"{writes} ({writes / max(1, n):.1f} per resource)", "-"))
    steady = sum(report["steady_writes"].values())
    rows.append(
        (
            f"API writes in {report['steady_seconds']:.0f}s steady state",
            f"{steady} {report['steady_writes'] or ''}",
            "0",
        )
    )
    requests = sum(report["steady_requests"].values())
    per_min = 60.0 * requests / max(1.0, report["steady_seconds"])
    rows.append(
        (
            "API requests at rest (all verbs; qwd + owned kinds)",
            f"{per_min:.1f}/min = {per_min / max(1, n):.3f}/min per resource {report['steady_requests'] or ''}",
            "-",
        )
    )
    resyncs = n * report["steady_seconds"] / resync
    rows.append(
        (
            f"steady-state no-op reconciles (resync {resync:.0f}s)",
            f"~{resyncs / report['steady_seconds']:.0f}/s, operator CPU {report['steady_cpu_s']:.1f}s "
            f"= {1000 * report['steady_cpu_s'] / max(1.0, resyncs):.1f} ms each",
            "-",
        )
    )
    rows.append(
        (
            f"operator RSS managing {n}",
            f"{report['rss_steady_mb']:.0f} MB (idle {report['rss_idle_mb']:.0f}, peak {report['rss_peak_mb']:.0f})",
            "< 250 MB",
        )
    )
    rows.append((f"placed of {n} (pods bound)", f"{report['placed']} {report['pods']}", str(n)))
    w = max(len(r[0]) for r in rows)
    v = max(len(r[1]) for r in rows)
    lines = [f"{'figure':<{w}}  {'measured':<{v}}  target", "-" * (w + v + 12)]
    lines += [f"{a:<{w}}  {b:<{v}}  {c}" for a, b, c in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--sequential", type=int, default=20, help="resources applied one at a time (0 = skip)")
    ap.add_argument("--burst", type=int, default=20, help="resources applied at once (0 = skip)")
    ap.add_argument("--manage", type=int, default=100, help="resources applied at once and then managed")
    ap.add_argument("--steady-seconds", type=float, default=60.0)
    # 60 s: in the first minute after a create another client (not the operator: its HTTP clients were traced)
    # GETs each new QwenDeployment about once, which is not steady state
    ap.add_argument("--settle", type=float, default=60.0, help="seconds between the last Ready and steady state")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the managed set to be Ready")
    ap.add_argument("--json", type=Path, metavar="OUT", help="also write the figures as JSON")
    ap.add_argument("--gpus", default=GPUS, help="sandbox GPUs per type, 4 per node (a10g=1000,l40s=1000: 500 nodes)")
    ap.add_argument(
        "--routing",
        choices=("on", "off"),
        default="on",
        help="spec.routing.enabled of every resource (off: no router objects or pods; see ROUTING)",
    )
    args = ap.parse_args()
    ROUTING["enabled"] = args.routing == "on"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout` still tears the sandbox down
    started = time.monotonic()
    report = run(args)
    report["bench_seconds"] = time.monotonic() - started
    print()
    print(table(report, resync=5.0))
    big = report["phases"][f"burst-{report['managed']}"]["api_writes"]
    print(f"\nAPI writes while converging burst-{report['managed']}: {big}")
    print(f"operator alive at the end: {report['operator_alive']}; ERROR log lines: {report['operator_errors']}")
    print(f"benchmark took {report['bench_seconds']:.0f}s; operator log kept at {report['operator_log']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

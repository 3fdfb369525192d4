"""Leader failover figures (issue 10, item 8): two ``qwenctl operator run --leader-elect`` processes
on a fresh sandbox, the leader SIGKILLed N times in a row.

Why it exists: the issue asks how long a QwenDeployment goes unmanaged when the operator's
leader dies (target < 15 s) and whether any decision is lost or taken twice. Prints figures;
asserts nothing.

    .venv/bin/python bench/failover_bench.py [--kills 20] [--graceful 3] [--sandbox NAME] [--json OUT]

Each round: wait a random 0-2 s (so the kill falls anywhere in the 2 s renew cycle), SIGKILL
the leader, and right after the kill change ``spec.replicas`` (1 <-> 2): a decision nobody is
there to take. The killed process is restarted at once as a new candidate (as the kubelet
restarts a container), so two candidates are always running. Measured per round:

- takeover: SIGKILL -> the new leader's Lease ``acquireTime`` (written by the new leader);
- first action: SIGKILL -> the pool Deployment carries the new replica count (polled every 50 ms);
- converged: SIGKILL -> ``Ready`` at the new generation with that many Ready replicas;
- lost: the change never applied (within ``--timeout``); duplicate: a second pool Deployment or
  a re-created one (uid changed); capacity: fewest Ready replicas seen (every 50 ms) against
  the fewer of the counts before and after the change.

Baseline in the same run: ``--graceful`` handovers where the leader gets SIGTERM instead (it
releases the Lease, so the standby takes it at its next look): the ratio shows what the lease
duration costs when a leader dies without saying so. Lease timing is the flags' defaults
(lease duration 10 s, renew deadline 7 s, retry period 2 s), as the chart runs it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import random
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

from qwen_operator.api import GROUP, PLURAL, VERSION
from qwen_operator.api.crdgen import DEFAULT_OUTPUT as CRD_FILE
from qwen_operator.controller.leader import LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD
from qwen_operator.sandbox.binaries import locate
from qwen_operator.sandbox.cluster import Sandbox
from qwen_operator.testing.operator import OperatorProcess

SAMPLE = Path(__file__).resolve().parents[1] / "manifests" / "samples" / "qwen3-14b-chat.yaml"
NAMESPACE = "failover"
LEASE = "qwen-operator-leader"
GPUS = "l40s=8"
SERVER = "serving.qwenops.io/deployment=chat,app.kubernetes.io/component=server"


def resource(replicas: int) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load(SAMPLE.read_text())
    body["metadata"] = {"name": "chat", "namespace": NAMESPACE}
    body["spec"]["scaling"] = {"enabled": False}
    body["spec"]["replicas"] = replicas
    body["spec"]["model"].pop("credentialsSecret", None)
    body["spec"]["model"]["registry"] = "hf://Qwen/Qwen3-14B"  # no registry here: pools start at once
    body["spec"]["placement"]["gpuTypes"] = ["L40S"]
    return body


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[max(0, math.ceil(q * len(s)) - 1)] if s else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def candidate(sb: Sandbox, workdir: Path) -> OperatorProcess:
    identity = f"cand-{uuid.uuid4().hex[:6]}"
    op = OperatorProcess(
        sb.kubeconfig,
        workdir / f"{identity}.log",
        extra=[
            "--namespace",
            NAMESPACE,
            "--leader-elect",
            f"--leader-elect-namespace={NAMESPACE}",
            f"--leader-elect-lease-name={LEASE}",
            f"--leader-elect-identity={identity}",
            f"--liveness=http://127.0.0.1:{free_port()}/healthz",
        ],
        env={"KUBECONFIG": str(sb.kubeconfig)},
    )
    op.identity = identity  # type: ignore[attr-defined]
    return op.start()


def ident(op: OperatorProcess) -> str:
    return str(op.identity)  # type: ignore[attr-defined]


@dataclass
class Round:
    kind: str  # "kill" or "graceful"
    replicas: int
    takeover: float | None = None
    first_action: float | None = None
    converged: float | None = None
    lost: bool = False
    duplicate: bool = False
    min_ready: int | None = None
    floor: int = 0
    new_leader: str = ""
    notes: list[str] = field(default_factory=list)


class Cluster:
    def __init__(self, api: Any) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.coord = client.CoordinationV1Api(api)

    def lease(self) -> Any:
        return self.coord.read_namespaced_lease(LEASE, NAMESPACE)

    def holder(self) -> str:
        try:
            return str(self.lease().spec.holder_identity or "")
        except client.ApiException as exc:
            if exc.status == 404:  # no candidate has created it yet
                return ""
            raise

    def qwd(self) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "chat")
        return obj

    def ready(self, replicas: int) -> bool:
        obj = self.qwd()
        cond = next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"), None)
        return bool(
            cond
            and cond["status"] == "True"
            and cond.get("observedGeneration") == obj["metadata"]["generation"]
            and self.ready_pods() == replicas
        )

    def deployments(self) -> list[Any]:
        return list(self.apps.list_namespaced_deployment(NAMESPACE, label_selector=SERVER).items)

    def ready_pods(self) -> int:
        pods = self.core.list_namespaced_pod(NAMESPACE, label_selector=SERVER).items
        return sum(
            1
            for p in pods
            if p.metadata.deletion_timestamp is None
            and any(c.type == "Ready" and c.status == "True" for c in (p.status.conditions or []))
        )

    def scale(self, replicas: int) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            NAMESPACE,
            PLURAL,
            "chat",
            {"spec": {"replicas": replicas}},
            _content_type="application/merge-patch+json",
        )


def wait(what: str, check: Any, timeout: float, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(interval)
    raise TimeoutError(what)


def one_round(
    cl: Cluster, sb: Sandbox, workdir: Path, ops: list[OperatorProcess], kind: str, replicas: int, timeout: float
) -> Round:
    before = cl.deployments()
    uid = before[0].metadata.uid if before else None
    prev = before[0].spec.replicas if before else 0
    rnd = Round(kind=kind, replicas=replicas, floor=min(prev, replicas))
    leader_id = cl.holder()
    leader = next(op for op in ops if ident(op) == leader_id)
    time.sleep(random.uniform(0.0, RETRY_PERIOD))  # noqa: S311 - anywhere in the renew cycle
    killed_wall = dt.datetime.now(dt.UTC)
    killed = time.monotonic()
    if kind == "kill":
        leader.kill()
    else:
        assert leader.proc is not None
        leader.proc.terminate()  # SIGTERM, as the kubelet stops a pod: the Lease is released
    cl.scale(replicas)  # a change nobody is there to apply
    ready_floor: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            ready_floor.append(cl.ready_pods())
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        if kind == "graceful" and leader.proc is not None:
            leader.proc.wait(30)
        ops.remove(leader)
        ops.append(candidate(sb, workdir))  # the kubelet restarts the container: a new candidate
        deadline = killed + timeout
        while time.monotonic() < deadline:
            now = time.monotonic()
            lease = cl.lease()
            holder = lease.spec.holder_identity or ""
            if rnd.takeover is None and holder and holder != leader_id:
                rnd.new_leader = holder
                acquired = lease.spec.acquire_time
                rnd.takeover = (acquired - killed_wall).total_seconds()
            deps = cl.deployments()
            if len(deps) != 1 or (uid is not None and deps[0].metadata.uid != uid):
                rnd.duplicate = True
            if rnd.first_action is None and deps and deps[0].spec.replicas == replicas:
                rnd.first_action = now - killed
            if rnd.first_action is not None and cl.ready(replicas):
                rnd.converged = time.monotonic() - killed
                break
            time.sleep(0.05)
        else:
            rnd.lost = rnd.first_action is None
            rnd.notes.append("not converged within the timeout")
    finally:
        stop.set()
        sampler.join(5)
    rnd.min_ready = min(ready_floor) if ready_floor else None
    wait("one leader and a standby again", lambda: settled(cl, ops), 60)
    return rnd


def settled(cl: Cluster, ops: list[OperatorProcess]) -> bool:
    """A live leader, and every other candidate standing by for it (ready to take over)."""
    holder = cl.holder()
    if not any(ident(op) == holder and op.alive() for op in ops):
        return False
    return all(f"standby: {holder} holds" in op.log.read_text(errors="replace") for op in ops if ident(op) != holder)


def run(args: argparse.Namespace) -> dict[str, Any]:
    sb = Sandbox(args.sandbox or f"failover-{os.getpid()}")
    kubectl_bin = str(locate().kubectl)
    workdir = Path(tempfile.mkdtemp(prefix="failover-bench-"))

    def kubectl(*argv: str, check: bool = True) -> str:
        cmd = [kubectl_bin, "--kubeconfig", str(sb.kubeconfig), *argv]
        return subprocess.run(cmd, check=check, capture_output=True, text=True).stdout

    ops: list[OperatorProcess] = []
    rounds: list[Round] = []
    try:
        if not args.sandbox:
            sb.up(gpus=GPUS, progress=print)
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
        kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{PLURAL}.{GROUP}")
        kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true")
        kubectl("create", "namespace", NAMESPACE)
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(sb.kubeconfig), client_configuration=cfg)
        cl = Cluster(client.ApiClient(cfg))
        ops.append(candidate(sb, workdir))
        wait("the first candidate leads", lambda: cl.holder() == ident(ops[0]), 60)
        ops.append(candidate(sb, workdir))
        wait("the second stands by", lambda: settled(cl, ops), 60)
        cl.custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, resource(1))
        wait("chat Ready", lambda: cl.ready(1), 120)
        plan = ["graceful"] * args.graceful + ["kill"] * args.kills
        for i, kind in enumerate(plan):
            replicas = 2 if i % 2 == 0 else 1
            rnd = one_round(cl, sb, workdir, ops, kind, replicas, args.timeout)
            rounds.append(rnd)
            print(
                f"{kind:8s} {i + 1:2d}/{len(plan)}: replicas -> {replicas}, takeover {_s(rnd.takeover)},"
                f" first action {_s(rnd.first_action)}, converged {_s(rnd.converged)}, min Ready {rnd.min_ready}"
                f" (floor {rnd.floor}){' LOST' if rnd.lost else ''}{' DUPLICATE' if rnd.duplicate else ''}",
                flush=True,
            )
        lease = cl.lease()
        transitions = lease.spec.lease_transitions
    finally:
        for op in ops:
            op.stop()
        if not args.sandbox:
            sb.down(progress=print)
    return summarize(rounds, transitions, workdir)


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}s"


def summarize(rounds: list[Round], transitions: int, workdir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {
        "lease": {"duration_s": LEASE_DURATION, "renew_deadline_s": RENEW_DEADLINE, "retry_period_s": RETRY_PERIOD},
        "lease_transitions": transitions,
        "logs": str(workdir),
    }
    for kind in ("kill", "graceful"):
        rs = [r for r in rounds if r.kind == kind]
        if not rs:
            continue
        fig: dict[str, Any] = {"rounds": len(rs)}
        for metric in ("takeover", "first_action", "converged"):
            vals = [getattr(r, metric) for r in rs if getattr(r, metric) is not None]
            fig[metric] = {"p50": pct(vals, 0.5), "max": max(vals) if vals else float("nan"), "n": len(vals)}
        fig["lost"] = sum(r.lost for r in rs)
        fig["duplicates"] = sum(r.duplicate for r in rs)
        fig["capacity_drops"] = sum(1 for r in rs if r.min_ready is not None and r.min_ready < r.floor)
        out[kind] = fig
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--kills", type=int, default=20, help="leader SIGKILLs in a row")
    ap.add_argument("--graceful", type=int, default=3, help="SIGTERM handovers first, the baseline (0 = skip)")
    ap.add_argument("--timeout", type=float, default=90.0, help="seconds a round may take before it counts as lost")
    ap.add_argument("--sandbox", help="a running sandbox (qwenctl sandbox up --name NAME) instead of a fresh one")
    ap.add_argument("--json", type=Path, metavar="OUT", help="also write the figures as JSON")
    args = ap.parse_args()
    report = run(args)
    print()
    print(
        f"leader failover, two candidates, Lease {LEASE_DURATION:g}/{RENEW_DEADLINE:g}/{RETRY_PERIOD:g} s"
        " (duration/renew deadline/retry period)"
    )
    print(f"{'':34s} {'rounds':>6s} {'p50':>7s} {'max':>7s}")
    for kind, label in (("kill", "SIGKILL"), ("graceful", "SIGTERM (baseline)")):
        fig = report.get(kind)
        if not fig:
            continue
        for metric in ("takeover", "first_action", "converged"):
            m = fig[metric]
            print(f"{label + ' ' + metric.replace('_', ' '):34s} {m['n']:6d} {m['p50']:6.1f}s {m['max']:6.1f}s")
        print(
            f"{label + ' decisions lost':34s} {fig['lost']:6d}   duplicates {fig['duplicates']},"
            f" capacity drops {fig['capacity_drops']}"
        )
    if report.get("kill") and report.get("graceful"):
        k, g = report["kill"]["takeover"]["p50"], report["graceful"]["takeover"]["p50"]
        print(f"takeover after SIGKILL / after SIGTERM (p50): {k / g:.1f}x (the lease duration a dead leader costs)")
    print(f"Lease transitions: {report['lease_transitions']}; operator logs in {report['logs']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

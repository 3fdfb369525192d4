"""Roll time in the sandbox: from a tag move to every pool serving the new version, with and
without pre-staging (issue #12).

Both runs, one after the other in one sandbox (the real API server, scheduler and controller
manager, kwok one-GPU L40S nodes), with the real S3 server (versitygw) on 127.0.0.1 and one
operator process:

* **pulled**: ``spec.model.prestage: false``, no node agent: each new pod's ``model-pull`` init
  container pulls what its node lacks (all of it on a node that never held the model, the
  changed chunks where the old version is cached) while the pod waits, not Ready;
* **pre-staged**: a node agent per node (``qwenctl node-agent``, the DaemonSet's command, as a
  host process on that node's cache directory, as in ``tests/integration/test_node_agent.py``)
  pulls the new version onto every eligible node; the roll waits for the nodes serving the
  resource (``status.model.prestage``), then each new pod's init container only re-verifies.

Per run: push v1 to a fresh registry path, create the resource (``replicas``, ``maxSurge: 1``, no
canary), wait until v1 is served (pre-staged: and staged on every node), then ``qwenctl model
push`` of a fine-tune (``--changed`` last layers differ) moves the ``stable`` tag; the clock runs
from the push's return (the tag moved) until ``ModelSynced`` says every pool serves it. Each run
starts from empty node caches.

What is real: the pulls (the pods' rendered ``model-pull`` commands, run by the init-container
seam :mod:`qwen_operator.sandbox.initpods`, and the agents'), the S3 server, the operator's
version watcher, pre-staging gate and roll. What is SIMULATED: the engine's load after the pull
(``--ready-after`` seconds, kwok's ready-after annotation, the same in both runs); the registry
is on loopback, so a pull is much faster than from a real registry (``prestage_bench.py``
extrapolates that part). Figures are printed (``--json OUT`` writes them), never asserted.

    .venv/bin/python bench/roll_bench.py [--scale 0.1] [--replicas 3] [--changed 2] [--ready-after 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

from qwen_operator.api import GROUP, PLURAL, VERSION
from qwen_operator.api.crdgen import DEFAULT_OUTPUT as CRD_FILE
from qwen_operator.modelsync.registry import Registry, make_client
from qwen_operator.modelsync.s3server import S3Server
from qwen_operator.modelsync.synthetic import Checkpoint, Shape
from qwen_operator.sandbox.binaries import locate
from qwen_operator.sandbox.cluster import Sandbox
from qwen_operator.sandbox.initpods import InitPods
from qwen_operator.sandbox.stages import INIT_PENDING_ANNOTATION, READY_AFTER_ANNOTATION
from qwen_operator.testing.operator import OperatorProcess

QWENCTL = [sys.executable, "-m", "qwen_operator.cli"]
NAME = "chat"
BUCKET = "roll"


def say(msg: str) -> None:
    print(f"[roll-bench] {msg}", flush=True)


def push(env: dict[str, str], src: Path, registry: str, version: str) -> str:
    cmd = [*QWENCTL, "model", "push", str(src), "--registry", registry, "--version", version, "--tag", "stable"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if r.returncode:
        raise SystemExit(f"qwenctl model push failed: {r.stderr.strip()[-500:]}")
    return Registry(registry).resolve(tag="stable")


def wait(what: str, check: Any, timeout: float, every: float = 0.2) -> float:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


class Run:
    """One resource in its own namespace, its node caches, its agents (pre-staged only)."""

    def __init__(
        self, api: Any, s3: S3Server, work: Path, mode: str, nodes: list[str], args: Any, kubeconfig: Path
    ) -> None:
        self.api, self.s3, self.mode, self.nodes, self.args = api, s3, mode, nodes, args
        self.kubeconfig = kubeconfig
        self.ns = f"roll-{mode}"
        self.root = work / mode / "nodes"  # <root>/<node>: that node's hostPath cache
        self.registry = f"s3://{BUCKET}/{mode}/qwen3-14b"
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.agents: list[subprocess.Popen[bytes]] = []
        self.seam = InitPods(api, self.ns, self.root, log=say)
        self.work = work / mode

    def model(self) -> dict[str, Any]:
        obj = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, NAME)
        return dict((obj.get("status") or {}).get("model") or {})

    def synced_on(self, digest: str) -> bool:
        obj = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, NAME)
        status = obj.get("status") or {}
        cond = next((c for c in status.get("conditions") or [] if c["type"] == "ModelSynced"), {})
        return cond.get("status") == "True" and (status.get("model") or {}).get("currentVersion") == digest

    def setup(self) -> None:
        self.core.create_namespace({"metadata": {"name": self.ns}})
        secret = {k: base64.b64encode(v.encode()).decode() for k, v in self.s3.env().items()}
        self.core.create_namespaced_secret(self.ns, {"metadata": {"name": "registry-creds"}, "data": secret})
        self.seam.start()
        if self.mode == "prestaged":
            env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}  # the Secret only
            env["KUBECONFIG"] = str(self.kubeconfig)
            for node in self.nodes:
                cmd = [*QWENCTL, "node-agent", "--node", node, "--cache-root", str(self.root / node)]
                cmd += ["--interval", "1", "--namespace", self.ns]
                log = (self.work / f"agent-{node}.log").open("ab")
                self.agents.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))

    def create(self) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "QwenDeployment",
            "metadata": {"name": NAME},
            "spec": {
                "model": {
                    "name": "Qwen/Qwen3-14B",
                    "registry": self.registry,
                    "version": "stable",
                    "credentialsSecret": "registry-creds",
                    "prestage": self.mode == "prestaged",
                },
                "placement": {"gpuTypes": ["L40S"]},
                "replicas": self.args.replicas,
                "scaling": {"enabled": False},
                "routing": {"enabled": False},
                "rollout": {"maxSurge": 1, "canaryReplicas": 0},
            },
        }
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, body)

    def stop(self) -> None:
        for p in self.agents:
            p.terminate()
        for p in self.agents:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        self.seam.stop()
        try:
            self.core.delete_namespace(self.ns)
        except client.ApiException:
            pass


def measure(run: Run, env: dict[str, str], v1_dir: Path, v2_dir: Path) -> dict[str, Any]:
    run.setup()
    v1 = push(env, v1_dir, run.registry, "v1")
    run.create()
    wait(f"{run.mode}: every pool serving v1", lambda: run.synced_on(v1), 300)
    if run.mode == "prestaged":  # the agents have staged v1 on every eligible node: steady state
        staged = lambda: any(  # noqa: E731
            s.get("version") == v1 and (s.get("nodesWithVersion") or 0) >= len(run.nodes)
            for s in (run.model().get("staging") or [])
        )
        wait("v1 staged on every node", staged, 300)
    init_before = len(run.seam.runs)
    say(f"{run.mode}: v1 served by {run.args.replicas} replicas; moving the tag to v2")
    t0 = time.monotonic()
    v2 = push(env, v2_dir, run.registry, "v2")
    pushed = time.monotonic()
    target = wait("the watcher to see v2", lambda: run.model().get("targetVersion") == v2, 120)
    gate: dict[str, float] = {}

    def rolled() -> bool:
        prestage = run.model().get("prestage") or {}
        if prestage.get("version") == v2 and prestage.get("phase") != "Waiting" and "open" not in gate:
            gate["open"] = time.monotonic()  # the node agents hold v2 where the roll needs it
        return run.synced_on(v2)

    done = wait(f"{run.mode}: every pool serving v2", rolled, 900)
    inits = [r.seconds for r in run.seam.runs[init_before:] if r.returncode == 0]
    result = {
        "mode": run.mode,
        "roll_seconds": done - pushed,  # from the tag move (the push's last write) on
        "push_seconds": pushed - t0,
        "seen_seconds": target - pushed,
        "after_target_seconds": done - target,
        "prestage_wait_seconds": gate["open"] - pushed if "open" in gate else None,
        "init_pulls": len(inits),
        "init_seconds_median": statistics.median(inits) if inits else None,
        "init_seconds_max": max(inits) if inits else None,
        "init_failures": sum(1 for r in run.seam.runs[init_before:] if r.returncode != 0),
    }
    say(f"{run.mode}: {json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()})}")
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=0.1, help="checkpoint size as a fraction of Qwen3-14B's shape")
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--changed", type=int, default=2, help="last layers the new version changes")
    ap.add_argument("--ready-after", type=int, default=5, help="SIMULATED engine load after the pull, seconds")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="roll-bench-"))
    say(f"work directory {work}")
    shape = Shape().scaled(args.scale)
    base = Checkpoint(shape)
    base.write(work / "v1")
    base.last_layers(args.changed).write(work / "v2")
    size = sum(f.stat().st_size for f in (work / "v1").rglob("*") if f.is_file())
    s3 = S3Server(data_dir=work / "s3").start()
    os.environ.update(s3.env())  # this process reads the registry (tags); pods and agents get the Secret only
    env = dict(os.environ)
    make_client().create_bucket(Bucket=BUCKET)  # the registry's own client, from the environment above
    sb = Sandbox("roll-bench")
    nodes_n = args.replicas + 2  # a surge pod and one spare
    sb.up(gpus=f"l40s={nodes_n}x1", progress=say)
    results: list[dict[str, Any]] = []
    op: OperatorProcess | None = None
    try:
        kubectl = [str(locate().kubectl), "--kubeconfig", str(sb.kubeconfig)]
        subprocess.run([*kubectl, "apply", "--server-side", "-f", str(CRD_FILE)], check=True, capture_output=True)
        subprocess.run(
            [*kubectl, "wait", "--for=condition=Established", "--timeout=60s", f"crd/{PLURAL}.{GROUP}"],
            check=True,
            capture_output=True,
        )
        cfg = work / "operator.yaml"
        annotations = {READY_AFTER_ANNOTATION: f"{args.ready_after}s", INIT_PENDING_ANNOTATION: "model-pull"}
        cfg.write_text(yaml.safe_dump({"podAnnotations": annotations, "modelSync": {"intervalSeconds": 1}}))
        op = OperatorProcess(sb.kubeconfig, work / "operator.log", extra=["--config", str(cfg)], env=s3.env())
        op.start()
        kcfg = client.Configuration()
        config.load_kube_config(config_file=str(sb.kubeconfig), client_configuration=kcfg)  # type: ignore[no-untyped-call]
        api = client.ApiClient(kcfg)
        nodes = [n.metadata.name for n in client.CoreV1Api(api).list_node().items if "l40s" in n.metadata.name]
        for mode in ("pulled", "prestaged"):
            (work / mode).mkdir(parents=True, exist_ok=True)
            run = Run(api, s3, work, mode, nodes, args, sb.kubeconfig)
            try:
                results.append(measure(run, env, work / "v1", work / "v2"))
            finally:
                run.stop()
    finally:
        if op is not None:
            op.stop()
        sb.down(progress=say)
        s3.stop()
    pulled, staged = results
    print(
        f"\nRoll time, tag move -> every pool serving the new version (Qwen3-14B shape x{args.scale}, "
        f"{size / 1e6:.0f} MB, last {args.changed} layers changed; {args.replicas} replicas on one-GPU L40S "
        f"nodes, maxSurge 1; S3 on loopback; engine load SIMULATED at {args.ready_after} s):"
    )
    print(
        f"{'mode':<12}{'roll s':>9}{'push s':>9}{'seen s':>9}{'staged s':>10}"
        f"{'init pulls':>12}{'init s p50':>12}{'init s max':>12}"
    )
    for r in results:
        med = "-" if r["init_seconds_median"] is None else f"{r['init_seconds_median']:.2f}"
        mx = "-" if r["init_seconds_max"] is None else f"{r['init_seconds_max']:.2f}"
        gate = "-" if r["prestage_wait_seconds"] is None else f"{r['prestage_wait_seconds']:.1f}"
        print(
            f"{r['mode']:<12}{r['roll_seconds']:>9.1f}{r['push_seconds']:>9.1f}{r['seen_seconds']:>9.1f}{gate:>10}"
            f"{r['init_pulls']:>12}{med:>12}{mx:>12}"
        )
    ratio = staged["roll_seconds"] / pulled["roll_seconds"]
    print(f"pre-staged / pulled roll time: {ratio:.2f}x (same run); staged s: until the roll's pre-staging wait ended")
    if args.json:
        doc = {"size_bytes": size, "args": {**vars(args), "json": str(args.json)}, "runs": results, "ratio": ratio}
        args.json.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

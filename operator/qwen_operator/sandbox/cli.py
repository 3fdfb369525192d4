"""``qwenctl sandbox up|down|status|env``: a local control plane with fake GPU pools."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ..cli import UserError
from . import procs
from .binaries import MissingToolError
from .cluster import Sandbox, SandboxError, sandboxes_root
from .nodes import DEFAULT_GPUS_SPEC, GPUSpecError


def register(sub: Any) -> None:
    sb = sub.add_parser("sandbox", help="local Kubernetes control plane with simulated GPU nodes")
    sbs = sb.add_subparsers(dest="sandbox_command", metavar="ACTION", required=True)

    up = sbs.add_parser("up", help="start (or reuse) a sandbox and register GPU nodes")
    up.add_argument("--name", default="default", help="sandbox name (default: %(default)s)")
    up.add_argument(
        "--gpus",
        default=DEFAULT_GPUS_SPEC,
        help="GPUs per type, TYPE=COUNT[xPER_NODE], e.g. a10g=4,l40s=2,a100-80gb=8 (default: %(default)s)",
    )
    up.add_argument("--no-taint", action="store_true", help="do not taint GPU nodes with nvidia.com/gpu:NoSchedule")
    up.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for readiness")
    up.set_defaults(handler=_up)

    down = sbs.add_parser("down", help="stop the sandbox's processes and remove its state")
    down.add_argument("--name", default="default")
    down.set_defaults(handler=_down)

    env = sbs.add_parser("env", help="print `export KUBECONFIG=...` for the sandbox")
    env.add_argument("--name", default="default")
    env.set_defaults(handler=_env)

    demo = sbs.add_parser(
        "demo",
        help="the whole product on a laptop: sandbox, operator, Prometheus, S3, "
        "SIMULATED fleet under a peak-and-trough, layer-diff model update",
    )
    demo.add_argument("--name", default="demo", help="sandbox name (default: %(default)s)")
    demo.add_argument("--minutes", type=float, default=5.0, help="length of the load replay (default: %(default)s)")
    demo.add_argument(
        "--rate",
        type=float,
        default=15.0,  # demo.DEFAULT_BASE_RATE: one simulated L40S replica holds the base, not the 4x spike
        help="base request rate, req/s (spike = 4x; default: %(default)s)",
    )
    demo.add_argument(
        "--cold-start", default="20s", help="simulated model load time per replica (default: %(default)s)"
    )
    demo.add_argument("--plot", type=Path, default=Path("qwen-demo-timeline.png"), help="PNG timeline to write")
    demo.add_argument("--keep", action="store_true", help="leave the sandbox running afterwards")
    demo.add_argument("--quiet", action="store_true", help="no fleet log lines, only the live view")
    demo.set_defaults(handler=_demo)

    status = sbs.add_parser("status", help="components, listening ports and nodes")
    status.add_argument("--name", default="default")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_status)


def _up(args: argparse.Namespace) -> int:
    sandbox = Sandbox(args.name)
    try:
        sandbox.up(gpus=args.gpus, taint=not args.no_taint, timeout=args.timeout)
    except (GPUSpecError, MissingToolError, SandboxError) as exc:
        raise UserError(str(exc)) from None
    print(f"export KUBECONFIG={sandbox.kubeconfig}")
    return 0


def _down(args: argparse.Namespace) -> int:
    sandbox = Sandbox(args.name)
    if sandbox.state() is None and not sandbox.dir.exists():
        print(f"sandbox {args.name!r} is not running")
        return 0
    sandbox.down()
    return 0


def _env(args: argparse.Namespace) -> int:
    sandbox = Sandbox(args.name)
    if sandbox.state() is None:
        known = sorted(p.name for p in sandboxes_root().glob("*") if (p / "state.json").exists())
        hint = f"; running sandboxes: {', '.join(known)}" if known else ""
        raise UserError(f"sandbox {args.name!r} is not running (start it with `qwenctl sandbox up`){hint}")
    print(f"export KUBECONFIG={sandbox.kubeconfig}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoOptions, run_demo

    try:
        return run_demo(
            DemoOptions(
                name=args.name,
                minutes=args.minutes,
                base_rate=args.rate,
                cold_start=args.cold_start,
                plot=args.plot,
                keep=args.keep,
                quiet=args.quiet,
            )
        )
    except (MissingToolError, SandboxError) as exc:
        raise UserError(str(exc)) from None


def _node_rows(sandbox: Sandbox) -> list[dict[str, Any]]:
    rows = []
    pods = sandbox.client().get("/api/v1/pods")["items"]
    used: dict[str, int] = {}
    for pod in pods:
        node = pod.get("spec", {}).get("nodeName")
        if not node or pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            continue
        for c in pod["spec"].get("containers", []):
            used[node] = used.get(node, 0) + int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
    for n in sandbox.client().get("/api/v1/nodes")["items"]:
        labels = n["metadata"].get("labels", {})
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))
        gpus = int(n.get("status", {}).get("allocatable", {}).get("nvidia.com/gpu", 0))
        rows.append(
            {
                "name": n["metadata"]["name"],
                "ready": ready,
                "gpu": labels.get("nvidia.com/gpu.product", "-"),
                "gpus": gpus,
                "gpusUsed": used.get(n["metadata"]["name"], 0),
            }
        )
    return rows


def _status(args: argparse.Namespace) -> int:
    sandbox = Sandbox(args.name)
    st = sandbox.state()
    if st is None:
        raise UserError(f"sandbox {args.name!r} is not running (start it with `qwenctl sandbox up`)")
    comps = sandbox.components()
    listening = procs.listeners(st.pids.values())
    by_pid: dict[int, list[str]] = {}
    for listener in listening:
        by_pid.setdefault(listener.pid, []).append(f"{listener.address}:{listener.port}")
    healthy = sandbox.healthy()
    nodes = _node_rows(sandbox) if healthy else []
    if args.json:
        print(
            json.dumps(
                {
                    "name": st.name,
                    "server": st.server,
                    "healthy": healthy,
                    "kubeconfig": str(sandbox.kubeconfig),
                    "components": {
                        c: {"pid": st.pids[c], "running": ok, "listening": by_pid.get(st.pids[c], [])}
                        for c, ok in comps.items()
                    },
                    "nodes": nodes,
                },
                indent=2,
            )
        )
        return 0 if healthy else 1
    print(f"sandbox {st.name!r}  server {st.server}  {'healthy' if healthy else 'UNHEALTHY'}")
    print(f"kubeconfig {sandbox.kubeconfig}")
    print(f"\n{'COMPONENT':<26}{'PID':>8}  {'STATE':<9}LISTENING")
    for comp, ok in comps.items():
        pid = st.pids[comp]
        print(f"{comp:<26}{pid:>8}  {'running' if ok else 'stopped':<9}{', '.join(by_pid.get(pid, [])) or '-'}")
    if nodes:
        print(f"\n{'NODE':<22}{'READY':<7}{'GPU':<24}{'GPUS (used/total)'}")
        for row in nodes:
            print(
                f"{row['name']:<22}{'yes' if row['ready'] else 'no':<7}{row['gpu']:<24}{row['gpusUsed']}/{row['gpus']}"
            )
    exposed = [f"{x.address}:{x.port}" for x in listening if not x.loopback]
    if exposed:
        print(f"\nWARNING: listening beyond loopback: {', '.join(exposed)}")
    print(f"\nchecked {time.strftime('%H:%M:%S')}")
    return 0 if healthy else 1

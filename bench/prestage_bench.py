"""Scale-out time to Ready: weights pulled now vs pre-staged on the node.

A new replica on a node without the model waits for its ``model-pull`` init container to
download the whole checkpoint before TGI even starts; on a node where the node agent
pre-staged the version, the init container only re-verifies what is there. Three parts:

(a) **measured**, real S3 server (versitygw) on 127.0.0.1: a generated Qwen3-shaped
    checkpoint (``--scale``; the default 0.1 is ~300 MB) is pushed, then ``pull()`` -- the
    code the init container runs -- is timed into an empty node cache ("weights pulled
    now") and again into that cache once it holds the version ("pre-staged": every chunk is
    found, each file re-hashed), with the cache's pages dropped from the page cache first
    (``posix_fadvise(DONTNEED)``: a version pre-staged hours ago is on disk, not in RAM) and
    then warm, ``--repeat`` times. The loopback throughput is scaled to the real checkpoint
    size only as a labelled EXTRAPOLATION (a real registry is further away than loopback).
(b) **simulated**: time to Ready of a scale-out replica of ``--model`` on each of
    ``--gpu-types``: the replica model's on-node cold start (process start, TP init, load,
    warm-up) plus the init container's work -- the pre-staged check (measured rate,
    extrapolated), the pull at the measured loopback throughput (extrapolated), or the pull
    at the documented registry bandwidth
    (:data:`qwen_operator.capacity.model.DEFAULT_REGISTRY_BYTES_PER_S`).
(c) **simulated**: ``qwenctl simulate`` itself (the CLI entry point, its JSON output) on
    ``--envelope`` with ``--weights on-node``, ``--weights pulled`` at the documented
    registry bandwidth and at the measured loopback throughput: SLO-minute share, rejected
    requests and GPU-hours side by side.

Figures are printed (``--json OUT`` writes them), never asserted. Every simulated figure
says so. The S3 server binary comes from ``QWEN_OPERATOR_CACHE`` (``make s3server``).

    .venv/bin/python bench/prestage_bench.py [--scale 0.1] [--repeat 3] [--envelope diurnal] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# bench/ is on sys.path when this file runs as a script: reuse the model-sync bench's S3 setup
from modelsync_bench import Backend, start_s3
from qwen_operator.capacity.model import DEFAULT_REGISTRY_BYTES_PER_S, ColdStart
from qwen_operator.catalog.gpus import resolve_gpu_name
from qwen_operator.catalog.models import resolve_model_name
from qwen_operator.cli import main as qwenctl
from qwen_operator.modelsync.pull import pull
from qwen_operator.modelsync.push import push
from qwen_operator.modelsync.synthetic import Checkpoint, Shape
from qwen_operator.sim.capacity import smallest_fit

MB = 1e6


def drop_page_cache(root: Path) -> int:
    """Ask the kernel to drop the cached pages of every file under ``root`` (after ``os.sync``,
    so they are clean); returns the bytes advised. Only this bench's files, not the machine's cache."""
    os.sync()
    n = 0
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                n += os.fstat(fd).st_size
            finally:
                os.close(fd)
    return n


def timed_pull(be: Backend, cache: Path, workers: int) -> tuple[float, int, int]:
    """(seconds, bytes fetched, version bytes) of one ``pull()`` of version ``v1`` into ``cache``."""
    reg = be.registry()
    t = time.perf_counter()
    r = pull(reg, cache, "qwen", version="v1", workers=workers, out=io.StringIO())
    return time.perf_counter() - t, r.bytes_fetched, r.total_bytes


def measure(work: Path, scale: float, repeat: int, workers: int) -> dict[str, Any]:
    """Part (a): cold pulls vs pre-staged pulls against the real S3 server on loopback."""
    be = start_s3(work)
    try:
        shape = Shape().scaled(scale)
        Checkpoint(shape).write(work / "ckpt")
        pushed = push(be.registry(), work / "ckpt", "v1", out=io.StringIO())
        shutil.rmtree(work / "ckpt")
        size = pushed.manifest.total_bytes
        print(f"(a) MEASURED on loopback: {shape} -> {size / MB:,.0f} MB checkpoint pushed to versitygw")
        runs: list[dict[str, float]] = []
        for i in range(max(1, repeat)):
            cache = work / f"node{i}"
            os.sync()  # earlier runs' dirty pages must not be flushed inside this timing
            cold_s, cold_bytes, total = timed_pull(be, cache, workers)
            dropped = drop_page_cache(cache)
            pre_s, pre_bytes, _ = timed_pull(be, cache, workers)
            warm_s, warm_bytes, _ = timed_pull(be, cache, workers)
            if cold_bytes != total or pre_bytes or warm_bytes:
                print(f"  warning: run {i + 1} fetched {cold_bytes}/{pre_bytes}/{warm_bytes} bytes of {total}")
            runs.append(
                {
                    "pulled_now_s": cold_s,
                    "prestaged_s": pre_s,
                    "prestaged_warm_s": warm_s,
                    "fetched_bytes": cold_bytes,
                    "prestaged_fetched_bytes": pre_bytes + warm_bytes,
                    "page_cache_dropped_bytes": dropped,
                }
            )
            print(
                f"  run {i + 1}: weights pulled now {cold_s:6.2f}s ({cold_bytes / MB:,.0f} MB fetched, "
                f"{cold_bytes / cold_s / MB:,.0f} MB/s); pre-staged {pre_s:5.2f}s page cache dropped, "
                f"{warm_s:5.2f}s warm (0 bytes fetched: {pre_bytes + warm_bytes == 0}) -> "
                f"{cold_s / pre_s:.1f}x faster pre-staged"
            )
            shutil.rmtree(cache)
    finally:
        be.stop()
    med = sorted(runs, key=lambda r: r["pulled_now_s"])[len(runs) // 2]
    med_pre = sorted(r["prestaged_s"] for r in runs)[len(runs) // 2]
    med_warm = sorted(r["prestaged_warm_s"] for r in runs)[len(runs) // 2]
    out: dict[str, Any] = {
        "checkpoint_bytes": size,
        "workers": workers,
        "cores": os.cpu_count(),
        "runs": runs,
        "pulled_now_s": med["pulled_now_s"],
        "prestaged_s": med_pre,
        "prestaged_warm_s": med_warm,
        "pull_bytes_per_s": size / med["pulled_now_s"],
        "prestaged_bytes_per_s": size / med_pre,
        "ratio_pulled_over_prestaged": med["pulled_now_s"] / med_pre,
    }
    print(
        f"  median of {len(runs)}: pulled now {out['pulled_now_s']:.2f}s vs pre-staged {med_pre:.2f}s "
        f"(page cache dropped; {med_warm:.2f}s warm) = {out['ratio_pulled_over_prestaged']:.1f}x; "
        f"loopback pull {out['pull_bytes_per_s'] / MB:,.0f} MB/s, pre-staged check "
        f"{out['prestaged_bytes_per_s'] / MB:,.0f} MB/s, {workers} workers, {os.cpu_count()} cores"
    )
    return out


def scale_out(model: str, quantization: str, gpus: list[str], measured: dict[str, Any]) -> list[dict[str, Any]]:
    """Part (b): SIMULATED time to Ready of one scale-out replica per GPU type, on two consistent bases:

    * loopback basis: the init container's work at the rates measured in (a) -- the pre-staged check
      (re-hash) or the full pull -- EXTRAPOLATED to the real checkpoint, plus the on-node cold start;
    * model basis (what ``qwenctl simulate`` uses): pre-staged = the on-node cold start (the init
      container's check is not modelled), pulled = the pull at the documented registry bandwidth first.
    """
    pull_bps, check_bps = measured["pull_bytes_per_s"], measured["prestaged_bytes_per_s"]
    rows: list[dict[str, Any]] = []
    print()
    print(f"(b) SIMULATED scale-out time to Ready, {model} {quantization} (on node: the replica model's cold start)")
    head = (
        f"{'':<10} {'':>7} {'':>8} | {'loopback basis (EXTRAPOLATED from (a))':^45} | "
        f"{'model basis (qwenctl simulate)':^36}"
    )
    sub = (
        f"{'GPU':<10} {'ckpt GB':>7} {'on node':>8} | {'check':>7} {'pull':>7} {'Ready pre':>10} {'Ready pull':>11} "
        f"{'ratio':>6} | {'Ready pre':>10} {'pull':>6} {'Ready pull':>11} {'ratio':>6}"
    )
    print(head)
    print(sub)
    print("-" * len(sub))
    for gpu in gpus:
        replica = smallest_fit(model, gpu, quantization)
        if replica is None:
            print(f"{gpu:<10} {model} {quantization} does not fit one node")
            continue
        c: ColdStart = replica.cold_start
        check = c.checkpoint_bytes / check_bps  # EXTRAPOLATED: measured loopback re-hash rate
        loop = c.pull_seconds(pull_bps)  # EXTRAPOLATED: measured loopback pull rate
        reg = c.pull_seconds(DEFAULT_REGISTRY_BYTES_PER_S)  # simulated: documented registry bandwidth
        row: dict[str, Any] = {
            "gpu": gpu,
            "shards": replica.shards,
            "checkpoint_bytes": c.checkpoint_bytes,
            "on_node_s": c.on_node,
            "components_s": {
                "process_start": c.process_start_s,
                "tp_init": c.tp_init_s,
                "load": c.load_s,
                "warmup": c.warmup_s,
            },
            "loopback_extrapolated": {
                "prestaged_check_s": check,
                "pull_s": loop,
                "ready_prestaged_s": c.on_node + check,
                "ready_pulled_s": c.on_node + loop,
                "ratio": (c.on_node + loop) / (c.on_node + check),
            },
            "model": {
                "ready_prestaged_s": c.on_node,
                "pull_s": reg,
                "ready_pulled_s": c.pulled(DEFAULT_REGISTRY_BYTES_PER_S),
                "ratio": c.pulled(DEFAULT_REGISTRY_BYTES_PER_S) / c.on_node,
            },
        }
        rows.append(row)
        lb, md = row["loopback_extrapolated"], row["model"]
        name = gpu + (f"x{replica.shards}" if replica.shards > 1 else "")
        print(
            f"{name:<10} {c.checkpoint_bytes / 1e9:7.1f} {c.on_node:7.0f}s | {check:6.1f}s {loop:6.0f}s "
            f"{lb['ready_prestaged_s']:9.0f}s {lb['ready_pulled_s']:10.0f}s {lb['ratio']:5.2f}x | "
            f"{md['ready_prestaged_s']:9.0f}s {reg:5.0f}s {md['ready_pulled_s']:10.0f}s {md['ratio']:5.2f}x"
        )
    print(
        f"(on node = process start + TP init + load at 1 GB/s + warm-up, simulated. Loopback basis: check = the "
        f"init container re-verifying the pre-staged version at the measured {check_bps / MB:,.0f} MB/s, pull = "
        f"{pull_bps / MB:,.0f} MB/s measured on loopback, both scaled to the real checkpoint: an extrapolation. "
        f"Model basis: pull at {DEFAULT_REGISTRY_BYTES_PER_S / MB:,.0f} MB/s, the documented registry bandwidth; "
        "the pre-staged check is not modelled)"
    )
    return rows


def run_simulate(argv: list[str]) -> dict[str, Any]:
    """``qwenctl simulate ARGV --json tmp``: the CLI's own code path; returns its JSON, prints its table."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sim.json"
        printed, progress = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(progress):
            rc = qwenctl(["simulate", *argv, "--json", str(out)])
        if rc != 0:
            raise SystemExit(f"qwenctl simulate {' '.join(argv)} failed (rc {rc}): {progress.getvalue()[-2000:]}")
        lines = printed.getvalue().splitlines()
        shown = [ln for ln in lines if ln.startswith(("cold start:", "  pool"))]
        print("\n".join(f"    {ln.strip()}" for ln in shown))
        data: dict[str, Any] = json.loads(out.read_text())
        return data


def fleet(args: argparse.Namespace, measured: dict[str, Any]) -> dict[str, Any]:
    """Part (c): ``qwenctl simulate`` with the weights on node vs pulled now (SIMULATED fleet)."""
    base = [
        "--envelope",
        args.envelope,
        "--model",
        args.model,
        "--quantization",
        args.quantization,
        "--policy",
        args.policy,
        "--seed",
        str(args.seed),
    ]
    if args.sim_gpus:
        base += ["--gpus", args.sim_gpus]
    variants = {
        "on-node": ["--weights", "on-node"],
        f"pulled @ {DEFAULT_REGISTRY_BYTES_PER_S / MB:,.0f} MB/s (registry)": [
            "--weights",
            "pulled",
            "--registry-bandwidth",
            f"{DEFAULT_REGISTRY_BYTES_PER_S:.0f}",
        ],
        f"pulled @ {measured['pull_bytes_per_s'] / MB:,.0f} MB/s (loopback)": [
            "--weights",
            "pulled",
            "--registry-bandwidth",
            f"{measured['pull_bytes_per_s']:.0f}",
        ],
    }
    print()
    print(f"(c) SIMULATED fleet, qwenctl simulate {' '.join(base)} --weights ...")
    results: dict[str, Any] = {}
    for label, extra in variants.items():
        t = time.monotonic()
        print(f"  {label}:")
        results[label] = run_simulate([*base, *extra])
        print(f"    (simulated in {time.monotonic() - t:.0f}s)")
    w = max(len(k) for k in results) + 2
    head = f"{'weights':<{w}} {'policy':<14} {'SLO min':>8} {'rejected':>9} {'GPU-h':>7} {'cost $':>8} {'P95 s':>6}"
    print(head)
    print("-" * len(head))
    for label, data in results.items():
        for policy, m in data["policies"].items():
            print(
                f"{label:<{w}} {policy:<14} {m['slo_minutes_fraction']:8.2%} {m['rejected_fraction']:9.3%} "
                f"{m['gpu_hours']:7.2f} {m['cost_usd']:8.2f} {m['p95_seconds']:6.2f}"
            )
    return {"command_base": ["qwenctl", "simulate", *base], "runs": results}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=0.1, help="checkpoint width vs Qwen3-14B (0.1 ~ 300 MB)")
    ap.add_argument("--repeat", type=int, default=3, help="measured runs (median reported)")
    ap.add_argument("--workers", type=int, default=8, help="parallel GETs (the init container's default)")
    ap.add_argument("--workdir", type=Path, default=None, help="where the S3 store and node caches live")
    ap.add_argument("--model", default="Qwen/Qwen3-14B")
    ap.add_argument("--quantization", default="fp8")
    ap.add_argument("--gpu-types", default="A10G,L40S", help="GPU types for the scale-out table (b)")
    ap.add_argument("--envelope", default="diurnal", help="qwenctl simulate --envelope for (c)")
    ap.add_argument("--policy", default="qwen,hpa-queue", help="qwenctl simulate --policy for (c)")
    ap.add_argument("--sim-gpus", default=None, help="qwenctl simulate --gpus for (c) (default: its own)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-fleet", action="store_true", help="parts (a) and (b) only")
    ap.add_argument("--json", metavar="OUT", type=Path)
    args = ap.parse_args()
    model = resolve_model_name(args.model)
    gpus = [resolve_gpu_name(g.strip()) for g in args.gpu_types.split(",") if g.strip()]
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="prestage-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        measured = measure(work, args.scale, args.repeat, args.workers)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    rows = scale_out(model, args.quantization, gpus, measured)
    sim = None if args.skip_fleet else fleet(args, measured)
    print(f"(bench wall clock {time.monotonic() - started:.0f}s)")
    if args.json:
        payload = {
            "command": sys.argv,
            "measured_loopback": measured,
            "scale_out_simulated": {"model": model, "quantization": args.quantization, "rows": rows},
            "registry_bytes_per_s": DEFAULT_REGISTRY_BYTES_PER_S,
            "fleet_simulated": sim,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

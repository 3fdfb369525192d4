"""Sandbox figures: cold build time, warm `sandbox up` to all nodes Ready, clean `down`.

    .venv/bin/python bench/sandbox_bench.py [--runs 3] [--gpus a10g=8,l40s=4,a100-80gb=8] [--cold]

`--cold` rebuilds every control-plane binary into an empty temporary cache (tens of
minutes on 2 cores); without it, the cold build time recorded by `make setup` is shown.
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from qwen_operator.sandbox import binaries, procs
from qwen_operator.sandbox.cluster import Sandbox
from qwen_operator.sandbox.nodes import DEFAULT_GPUS_SPEC


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--gpus", default=DEFAULT_GPUS_SPEC)
    ap.add_argument("--cold", action="store_true", help="time a cold build into an empty cache")
    args = ap.parse_args()

    if args.cold:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["QWEN_OPERATOR_CACHE"] = tmp
            t = time.monotonic()
            binaries.build()
            print(f"cold build (empty cache): {time.monotonic() - t:.0f}s")
            del os.environ["QWEN_OPERATOR_CACHE"]
    else:
        record = binaries.bin_dir().parent / "build-times.json"
        history = json.loads(record.read_text()) if record.exists() else []
        full = [h for h in history if len(h["built"]) == len(binaries.expected().all())]
        if full:
            print(f"cold build recorded by make setup: {full[-1]['seconds']:.0f}s at {full[-1]['at']}")
        for h in history:
            print(f"  build of {', '.join(h['built'])}: {h['seconds']:.0f}s ({h['at']})")
        if not history:
            print("no recorded build (binaries predate the record); use --cold to measure")

    ups: list[float] = []
    leftovers: list[str] = []
    for i in range(args.runs):
        sb = Sandbox(f"bench-{os.getpid()}-{i}")
        t = time.monotonic()
        st = sb.up(gpus=args.gpus, progress=lambda _m: None)
        ups.append(time.monotonic() - t)
        pids = list(st.pids.values())
        ports = [x.port for x in procs.listeners(pids)]
        t = time.monotonic()
        sb.down(progress=lambda _m: None)
        down_s = time.monotonic() - t
        alive = [p for p in pids if procs.is_running(p)]
        listening = [p for p in ports if procs.port_listening(p)]
        if alive or listening or Path(sb.dir).exists():
            leftovers.append(f"run {i}: alive pids {alive}, listening ports {listening}")
        print(
            f"run {i}: up to all {len(st.nodes)} nodes Ready {ups[-1]:.1f}s, down {down_s:.1f}s, "
            f"{len(ports)} loopback listeners closed"
        )
    print(
        f"\nwarm `sandbox up` to all nodes Ready: median {statistics.median(ups):.1f}s, "
        f"max {max(ups):.1f}s over {len(ups)} runs (target < 20 s)"
    )
    print(
        "`sandbox down`: "
        + ("no process and no listening port left behind" if not leftovers else "LEFTOVERS: " + "; ".join(leftovers))
    )


if __name__ == "__main__":
    main()

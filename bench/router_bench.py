"""Router overhead for issue 9: the router process vs direct, against SIMULATED TGI backends.

Why it exists: the issue asks what the data plane costs, measured, not asserted: added
p50/p99 latency at a fixed rate (target: p99 added <= 5 ms at 500 req/s), the most short
non-streaming requests/s one router core sustains (target >= 1,500), and stream tokens/s
through the router vs direct (target >= 98%). Every figure is printed next to the direct
baseline measured in the same run, as a ratio. Prints figures; asserts nothing.

    .venv/bin/python bench/router_bench.py [--rate 500] [--seconds 8] [--json OUT]

Processes (all on loopback): the backends are ``qwen_operator.sim.server`` simulated TGI
replicas (their timing is SIMULATED; the HTTP, JSON and SSE are real), one process each;
the router is a separate process running the shipped :class:`~qwen_operator.router.proxy.Router`
with its default settings, fed the backends by ``StaticEndpoints`` (the only difference
from ``qwenctl router``: discovery, which is off the request path); the load generator is
this process (aiohttp). Phases, each direct then through the router:

* ``latency``: open loop at ``--rate`` req/s of ``/generate`` with a short prompt and one
  new token, on backends sped up 10,000x (so the engine adds ~nothing): p50/p99 of the
  request as the client sees it; "added" is routed minus direct at the same quantile.
* ``max``: closed loop, ``--concurrency`` clients sending the same requests back to back;
  requests/s and the router process's CPU seconds (from /proc), so req/s per router core =
  requests / router CPU seconds (fair even when the machine's cores are shared).
* ``streams``: ``--streams`` concurrent ``/generate_stream`` requests of 256 tokens, repeated:
  tokens/s received, at the simulated A10G pace (time scale 1: what a client sees) and as
  fast as the backends emit (time scale 10,000: the proxy's ceiling).

The load generator, backends and router share this machine's cores: on a small VM the
generator competes with the router, so absolute req/s are lower than on a dedicated host;
the per-core figure and the ratios are the comparable ones.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import aiohttp

BANNER = "router overhead vs direct, SIMULATED TGI backends on loopback"
FAST = 10_000.0  # backend time scale: engine time ~0, so the HTTP path is what is measured
PACED = 1.0  # the simulated A10G's own pace


# --- child processes ------------------------------------------------------------------------------


def _backend_main(conn: Connection, time_scale: float) -> None:
    from qwen_operator.capacity.model import ReplicaModel
    from qwen_operator.sim.server import SimulatedTGI, serve

    async def main() -> None:
        model = ReplicaModel.build("Qwen3-14B", "A10G", 1, "fp8", max_concurrent_requests=1024)
        served = await serve(SimulatedTGI(model, time_scale=time_scale, cold_start_seconds=0.0))
        conn.send(served.base_url)
        await asyncio.Event().wait()

    asyncio.run(main())


def _router_main(conn: Connection, urls: list[str]) -> None:
    from qwen_operator.router.discovery import StaticEndpoints, Target
    from qwen_operator.router.proxy import Router

    async def main() -> None:
        targets = [Target(f"sim-{i}", url, "A10G") for i, url in enumerate(urls)]
        router = await Router().start(source=StaticEndpoints(targets), shutdown_timeout=1)
        conn.send(router.url)
        await asyncio.Event().wait()

    asyncio.run(main())


def start(target: Callable[..., None], *args: Any) -> tuple[BaseProcess, str]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(child, *args), daemon=True)
    proc.start()
    if not parent.poll(60):
        raise RuntimeError(f"{target.__name__} did not start")
    return proc, str(parent.recv())


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- load ---------------------------------------------------------------------------------------------


def quantile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def body(i: int) -> bytes:
    # distinct prompts, so the router's prefix affinity spreads them like real traffic
    return json.dumps({"inputs": f"request {i}: what is a GPU?", "parameters": {"max_new_tokens": 1}}).encode()


Pick = Callable[[int], str]


async def open_loop(session: aiohttp.ClientSession, pick: Pick, rate: float, seconds: float) -> dict[str, float]:
    """``rate`` req/s for ``seconds``: latency of each (send -> response read), errors, lag."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors = 0
    lags: list[float] = []

    async def one(i: int, due: float) -> None:
        nonlocal errors
        t = loop.time()
        lags.append(t - due)
        try:
            async with session.post(pick(i) + "/generate", data=body(i)) as resp:
                await resp.read()
                if resp.status != 200:
                    errors += 1
                    return
        except aiohttp.ClientError:
            errors += 1
            return
        latencies.append(loop.time() - t)

    t0 = loop.time() + 0.05
    n = int(rate * seconds)
    tasks = []
    for i in range(n):
        due = t0 + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    return {
        "requests": n,
        "errors": errors,
        "p50_ms": quantile(latencies, 0.50) * 1000,
        "p99_ms": quantile(latencies, 0.99) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000 if latencies else float("nan"),
        "generator_lag_p99_ms": quantile(lags, 0.99) * 1000,
    }


async def closed_loop(
    session: aiohttp.ClientSession, pick: Pick, concurrency: int, seconds: float, router_pid: int | None
) -> dict[str, float]:
    """``concurrency`` clients back to back for ``seconds``: req/s (and router CPU seconds)."""
    loop = asyncio.get_running_loop()
    done = errors = 0
    counter = iter(range(10**9))
    stop_at = loop.time() + seconds

    async def client() -> None:
        nonlocal done, errors
        while loop.time() < stop_at:
            i = next(counter)
            try:
                async with session.post(pick(i) + "/generate", data=body(i)) as resp:
                    await resp.read()
                    if resp.status == 200:
                        done += 1
                    else:
                        errors += 1
            except aiohttp.ClientError:
                errors += 1

    cpu0 = cpu_seconds(router_pid) if router_pid else 0.0
    t0 = loop.time()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = loop.time() - t0
    out = {"requests": done, "errors": errors, "rps": done / wall}
    if router_pid:
        cpu = cpu_seconds(router_pid) - cpu0
        out["router_cpu_s"] = cpu
        out["router_cores_busy"] = cpu / wall
        out["rps_per_router_core"] = done / cpu if cpu > 0 else float("nan")
    return out


async def streams(
    session: aiohttp.ClientSession, pick: Pick, n: int, seconds: float, router_pid: int | None
) -> dict[str, float]:
    """``n`` concurrent 256-token streams, repeated for ``seconds``: tokens/s received."""
    loop = asyncio.get_running_loop()
    tokens = errors = finished = 0
    ttfts: list[float] = []
    stop_at = loop.time() + seconds

    def payload(i: int) -> str:  # distinct prompts (distinct users), so affinity spreads them
        prompt = f"{i}: " + "Explain continuous batching. " * 8
        return json.dumps({"inputs": prompt, "parameters": {"max_new_tokens": 256}})

    async def client(c: int) -> None:
        nonlocal tokens, errors, finished
        i = c
        while loop.time() < stop_at:
            t = loop.time()
            first = True
            try:
                async with session.post(pick(i) + "/generate_stream", data=payload(i)) as resp:
                    async for line in resp.content:
                        if line.startswith(b"data:"):
                            if first:
                                ttfts.append(loop.time() - t)
                                first = False
                            tokens += 1
                finished += 1
            except aiohttp.ClientError:
                errors += 1
            i += n

    cpu0 = cpu_seconds(router_pid) if router_pid else 0.0
    t0 = loop.time()
    await asyncio.gather(*(client(c) for c in range(n)))
    wall = loop.time() - t0
    out = {
        "streams_finished": finished,
        "errors": errors,
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "ttft_p50_ms": quantile(ttfts, 0.5) * 1000,
    }
    if router_pid:
        out["router_cpu_us_per_token"] = (cpu_seconds(router_pid) - cpu0) / max(1, tokens) * 1e6
    return out


# --- the run -----------------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    direct: dict[str, float]
    routed: dict[str, float]


async def both(
    urls: list[str], router_url: str, router_pid: int, run: Callable[[Pick, int | None], Awaitable[dict[str, float]]]
) -> tuple[dict[str, float], dict[str, float]]:
    direct = await run(lambda i: urls[i % len(urls)], None)
    routed = await run(lambda i: router_url, router_pid)
    return direct, routed


async def bench(args: argparse.Namespace) -> list[Phase]:
    fast = [start(_backend_main, FAST) for _ in range(args.backends)]
    paced = [start(_backend_main, PACED) for _ in range(args.backends)]
    fast_urls, paced_urls = [u for _, u in fast], [u for _, u in paced]
    r_fast, r_fast_url = start(_router_main, fast_urls)
    r_paced, r_paced_url = start(_router_main, paced_urls)
    assert r_fast.pid is not None and r_paced.pid is not None
    phases: list[Phase] = []
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as s:
            # warm up both paths (connections, code paths)
            await both(fast_urls, r_fast_url, r_fast.pid, lambda p, pid: open_loop(s, p, 200, 1.0))
            print(f"[latency] open loop {args.rate:g} req/s x {args.seconds:g} s", file=sys.stderr)
            d, r = await both(
                fast_urls, r_fast_url, r_fast.pid, lambda p, pid: open_loop(s, p, args.rate, args.seconds)
            )
            phases.append(Phase(f"latency @ {args.rate:g} req/s", d, r))
            print(f"[max] closed loop, {args.concurrency} clients x {args.seconds:g} s", file=sys.stderr)
            d, r = await both(
                fast_urls, r_fast_url, r_fast.pid, lambda p, pid: closed_loop(s, p, args.concurrency, args.seconds, pid)
            )
            phases.append(Phase("max short requests", d, r))
            for label, urls, rurl, pid in (
                ("streams, simulated A10G pace", paced_urls, r_paced_url, r_paced.pid),
                ("streams, as fast as emitted", fast_urls, r_fast_url, r_fast.pid),
            ):
                print(f"[streams] {label}: {args.streams} concurrent x {args.seconds:g} s", file=sys.stderr)
                d, r = await both(urls, rurl, pid, lambda p, pid: streams(s, p, args.streams, args.seconds, pid))
                phases.append(Phase(label, d, r))
    finally:
        for proc, _ in [*fast, *paced, (r_fast, ""), (r_paced, "")]:
            proc.terminate()
            proc.join(5)
    return phases


def report(phases: list[Phase], args: argparse.Namespace) -> None:
    print(f"\n{BANNER}; {os.cpu_count()} CPU cores shared by generator, router and {args.backends} backends")
    print(f"load average before / after the run: {args.load_before:.2f} / {os.getloadavg()[0]:.2f}\n")
    lat, mx, paced, fast = phases
    d, r = lat.direct, lat.routed
    print(f"{'':34}{'direct':>12}{'router':>12}{'added':>12}{'ratio':>9}")
    for key, label in (("p50_ms", "p50 latency (ms)"), ("p99_ms", "p99 latency (ms)"), ("mean_ms", "mean (ms)")):
        print(f"{lat.name + ' ' + label:34}{d[key]:12.2f}{r[key]:12.2f}{r[key] - d[key]:12.2f}{r[key] / d[key]:9.2f}x")
    print(f"{'  errors':34}{d['errors']:12.0f}{r['errors']:12.0f}")
    print(f"{'  generator lag p99 (ms)':34}{d['generator_lag_p99_ms']:12.2f}{r['generator_lag_p99_ms']:12.2f}")
    d, r = mx.direct, mx.routed
    print(f"{mx.name + ' (req/s)':34}{d['rps']:12.0f}{r['rps']:12.0f}{'':12}{r['rps'] / d['rps']:9.2f}x")
    print(f"{'  router CPU cores busy':34}{'':12}{r['router_cores_busy']:12.2f}")
    print(f"{'  req/s per router core':34}{'':12}{r['rps_per_router_core']:12.0f}")
    for ph in (paced, fast):
        d, r = ph.direct, ph.routed
        ratio = r["tokens_per_s"] / d["tokens_per_s"]
        print(f"{ph.name + ' (tok/s)':34}{d['tokens_per_s']:12.0f}{r['tokens_per_s']:12.0f}{'':12}{ratio:9.3f}x")
        print(f"{'  first token p50 (ms)':34}{d['ttft_p50_ms']:12.1f}{r['ttft_p50_ms']:12.1f}")
        print(f"{'  router CPU per token (us)':34}{'':12}{r['router_cpu_us_per_token']:12.1f}")
    print("\ntargets (issue 9): p99 added <= 5 ms at 500 req/s; >= 1,500 req/s per router core;")
    print("                   stream tokens/s >= 98% of direct")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=BANNER)
    ap.add_argument("--rate", type=float, default=500.0, help="open-loop request rate (default 500 req/s)")
    ap.add_argument("--seconds", type=float, default=8.0, help="length of each measured phase (default 8)")
    ap.add_argument("--concurrency", type=int, default=32, help="closed-loop clients (default 32)")
    ap.add_argument("--streams", type=int, default=32, help="concurrent streams (default 32)")
    ap.add_argument("--backends", type=int, default=2, help="simulated replicas per group (default 2)")
    ap.add_argument("--json", metavar="OUT", help="write the figures as JSON")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    args.load_before = os.getloadavg()[0]  # other work on the machine skews every figure: say how much
    phases = asyncio.run(bench(args))
    report(phases, args)
    print(f"({time.monotonic() - t0:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"banner": BANNER, "args": vars(args), "phases": [asdict(p) for p in phases]}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

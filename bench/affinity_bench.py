"""Session affinity benchmark: the router with and without affinity on multi-turn chat (SIMULATED).

Why it exists: issue 9 asks whether the router's prefix / session affinity (consistent
hashing with bounded load, :class:`qwen_operator.router.picking.Picker`) pays for itself:
on a multi-turn chat workload, at least 2x the requests/s within the TTFT SLO against the
same router with affinity off; on a workload with no shared prefixes, no more than 5%
worse. This measures both in one run, on the simulator's fleet, continuous-batching
engine and prefix cache (:mod:`qwen_operator.sim.engine`: a replica that still caches a
session's previous turn prefills only the new part), for two fixed fleets of Qwen3-14B fp8.

Workloads:

* ``sessions`` (SYNTHETIC, :func:`qwen_operator.sim.workloads.build_sessions`): chat
  sessions arriving open-loop (Poisson), each turn resending the conversation so far plus a
  new user message; per-turn message and reply sizes drawn from the bundled Azure trace;
  think time between turns. Affinity key = session id (the router's ``x-session-id`` key).
* ``plain``: the Azure trace's size mix with Poisson arrivals and no shared prefixes; every
  request has its own key (what the router derives from distinct first messages), so
  affinity can only cost (hashing instead of least-outstanding), never gain.

Per fleet and mode (``no cache``: requests carry no prefix, the engine never reuses KV, a
floor; ``affinity off``: the router's weighted least-outstanding, cache hits by chance;
``affinity on``), "SLO capacity" is the highest arrival rate whose P95 TTFT over the
measured window stays <= 1.2 s (rejections count as infinitely slow), found by doubling,
then bisecting the rate to within ``--tolerance``; it is reported as requests/s (for
sessions: turns/s measured in the window, and sessions/s). Mean / P95 TTFT and the prefix
cache hit rate are reported at one common load: the affinity-off capacity. The router's
pool weights are the planner's requests/s within the SLO for the workload's mean request
(what ``spec.scaling.typicalPromptTokens``/``typicalOutputTokens`` would say). Prints
figures and ratios against the affinity-off baseline measured in the same run; asserts
nothing. Every figure is SIMULATED.

    .venv/bin/python bench/affinity_bench.py [--seconds 900] [--sync 0.02] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qwen_operator.sim.capacity import PoolProfile
from qwen_operator.sim.fleet import FixedRun, serve_fixed
from qwen_operator.sim.trace import TraceRow, default_trace_path, load_azure_csv
from qwen_operator.sim.workloads import (
    MEAN_TURNS,
    READ_TOKENS_PER_SECOND,
    THINK_MEAN_SECONDS,
    build_sessions,
    distinct_prompt_keys,
)
from routing_bench import planned_profiles, replica  # the same pool sizing as the routing figures

MODEL, QUANT, SLO = "Qwen/Qwen3-14B", "fp8", 1.2
FLEETS = (("L40S:2 + A10G:4", {"L40S": 2, "A10G": 4}), ("L40S:4 + A100-80GB:2", {"L40S": 4, "A100-80GB": 2}))
MODES = ("no cache", "affinity off", "affinity on")
WARMUP_SECONDS = 300.0  # sessions build up over ~ mean turns x (reading + think) before load is steady


@dataclass(frozen=True)
class Point:
    """One run at one arrival rate (SIMULATED)."""

    rate: float  # the swept rate: sessions/s (sessions) or requests/s (plain)
    requests_per_second: float  # requests arriving per second in the measured window
    run: FixedRun

    @property
    def ok(self) -> bool:
        return self.run.p95_seconds <= SLO

    @property
    def hit_rate(self) -> float:
        tried = self.run.prefix_hits + self.run.prefix_misses
        return self.run.prefix_hits / tried if tried else math.nan


Runner = Callable[[float, str], Point]


def capacity(run: Runner, mode: str, start: float, tolerance: float) -> Point | None:
    """The highest rate whose P95 TTFT is within the SLO: doubling (or halving) from ``start``
    to bracket it, then bisection to within ``tolerance`` (None: not even ``start`` / 1024)."""
    p = run(start, mode)
    best: Point | None = None
    if p.ok:
        while p.ok:
            best, p = p, run(p.rate * 2.0, mode)
        hi = p.rate
    else:
        while not p.ok:
            hi = p.rate
            if hi < start / 1024:
                return None
            p = run(hi / 2.0, mode)
        best = p
    while hi / best.rate > 1.0 + tolerance:
        p = run(math.sqrt(best.rate * hi), mode)
        if p.ok:
            best = p
        else:
            hi = p.rate
    return best


def sessions_runner(
    profiles: dict[str, PoolProfile], gpus: dict[str, int], rows: list[TraceRow], args: argparse.Namespace
) -> Runner:
    seconds = WARMUP_SECONDS + args.seconds

    def run(rate: float, mode: str) -> Point:
        tr = build_sessions(
            rows, rate, seconds, args.seed, think_mean_seconds=args.think, read_tokens_per_second=args.read
        )
        prefix = [0] * len(tr) if mode == "no cache" else tr.prefix_tokens
        r = serve_fixed(
            profiles,
            gpus,
            tr.arrivals,
            tr.prompt_tokens,
            tr.output_tokens,
            "router",
            SLO,
            sync_seconds=args.sync,
            seed=args.seed,
            keys=tr.keys,
            prefix_tokens=prefix,
            warmup_seconds=WARMUP_SECONDS,
            affinity=mode == "affinity on",
        )
        measured = sum(1 for t in tr.arrivals if t >= WARMUP_SECONDS)
        return Point(rate, measured / args.seconds, r)

    return run


def plain_runner(
    profiles: dict[str, PoolProfile], gpus: dict[str, int], mix: list[TraceRow], args: argparse.Namespace
) -> Runner:
    seconds = WARMUP_SECONDS + args.seconds

    def run(rate: float, mode: str) -> Point:
        rng = random.Random(args.seed)
        arr: list[float] = []
        t = rng.expovariate(rate)
        while t < seconds:
            arr.append(t)
            t += rng.expovariate(rate)
        rows = [mix[rng.randrange(len(mix))] for _ in arr]
        r = serve_fixed(
            profiles,
            gpus,
            arr,
            [x.prompt_tokens for x in rows],
            [x.output_tokens for x in rows],
            "router",
            SLO,
            sync_seconds=args.sync,
            seed=args.seed,
            keys=distinct_prompt_keys(len(arr), args.seed),
            warmup_seconds=WARMUP_SECONDS,
            affinity=mode == "affinity on",
        )
        measured = sum(1 for t in arr if t >= WARMUP_SECONDS)
        return Point(rate, measured / args.seconds, r)

    return run


def _fmt_cap(p: Point | None, base: Point | None, sessions: bool) -> str:
    if p is None:
        return f"{'none within the SLO':>34}"
    ratio = f"{p.requests_per_second / base.requests_per_second:.2f}x" if base is not None else "n/a"
    rate = f"{p.requests_per_second:.2f} req/s" + (f" ({p.rate:.3f} sess/s)" if sessions else "")
    return f"{rate + ' ' + ratio:>34}"


def bench(
    label: str,
    run: Runner,
    modes: tuple[str, ...],
    start: float,
    sessions: bool,
    args: argparse.Namespace,
    base_mode: str = "affinity off",
) -> dict[str, Any]:
    """SLO capacity per mode, then mean / P95 TTFT of every mode at ``base_mode``'s capacity."""
    caps = {m: capacity(run, m, start, args.tolerance) for m in modes}
    base = caps[base_mode]
    common = base.rate if base is not None else start
    at = {m: run(common, m) for m in modes}
    print(f"\n{label}")
    head = (
        f"{'':<13} {'SLO capacity (x ' + base_mode + ')':>34} {'mean TTFT s':>12} {'P95 TTFT s':>11} "
        f"{'ratio P95':>10} {'cache hits':>11}"
    )
    print(head)
    print("-" * len(head))
    out: dict[str, Any] = {"common_rate": common}
    for m in modes:
        p = at[m]
        ratio = p.run.p95_seconds / at[base_mode].run.p95_seconds
        hits = f"{p.hit_rate:.0%}" if not math.isnan(p.hit_rate) else "-"
        p95 = "unbounded" if math.isinf(p.run.p95_seconds) else f"{p.run.p95_seconds:.3f}"
        print(
            f"{m:<13} {_fmt_cap(caps[m], base, sessions)} {p.run.mean_seconds:12.3f} {p95:>11} {ratio:9.2f}x {hits:>11}"
        )
        cap = caps[m]
        out[m] = {
            "slo_capacity_rps": cap.requests_per_second if cap else 0.0,
            "slo_capacity_rate": cap.rate if cap else 0.0,
            "capacity_vs_" + base_mode.replace(" ", "_"): (cap.requests_per_second / base.requests_per_second)
            if cap and base
            else None,
            "at_common_rate": {
                "requests_per_second": p.requests_per_second,
                "mean_ttft_seconds": p.run.mean_seconds,
                "p95_ttft_seconds": p.run.p95_seconds,
                "rejected": p.run.rejected,
                "prefix_hit_rate": None if math.isnan(p.hit_rate) else p.hit_rate,
                "cached_prompt_tokens": p.run.cached_prompt_tokens,
            },
        }
    print(
        f"(mean / P95 TTFT and cache hits at {at[base_mode].requests_per_second:.2f} req/s: the {base_mode} "
        "SLO capacity)"
    )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument(
        "--seconds", type=float, default=900.0, help=f"measured simulated seconds per run (after {WARMUP_SECONDS:g} s)"
    )
    ap.add_argument("--sync", type=float, default=0.02, help="how often the router sees completions (simulated s)")
    ap.add_argument("--tolerance", type=float, default=0.03, help="bisect the SLO capacity to within this fraction")
    ap.add_argument("--think", type=float, default=THINK_MEAN_SECONDS, help="sessions: mean think time (s)")
    ap.add_argument(
        "--read", type=float, default=READ_TOKENS_PER_SECOND, help="sessions: reply reading speed (tokens/s; inf: none)"
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args()
    if not (args.seconds > 0 and args.sync > 0 and args.tolerance > 0):
        ap.error("--seconds, --sync and --tolerance must be positive")
    started = time.monotonic()
    rows = load_azure_csv(default_trace_path())
    limit = replica("A10G")  # the same runtime limits on every pool
    mix = [
        r
        for r in rows
        if r.prompt_tokens <= limit.max_input_tokens and r.prompt_tokens + r.output_tokens <= limit.max_total_tokens
    ]
    probe = build_sessions(
        rows,
        1.0,
        WARMUP_SECONDS + args.seconds,
        args.seed,
        think_mean_seconds=args.think,
        read_tokens_per_second=args.read,
    )
    s_prompt = round(sum(probe.prompt_tokens) / len(probe))
    s_output = round(sum(probe.output_tokens) / len(probe))
    s_shared = sum(probe.prefix_tokens) / sum(probe.prompt_tokens)
    p_prompt = round(sum(r.prompt_tokens for r in mix) / len(mix))
    p_output = round(sum(r.output_tokens for r in mix) / len(mix))
    print(
        "SIMULATED fleets (replica model + continuous-batching engine with prefix caching; no real GPUs), fixed size, "
        f"no autoscaling; {MODEL} {QUANT}, SLO P95 TTFT <= {SLO:g}s; {args.seconds:g}s measured per run after "
        f"{WARMUP_SECONDS:g}s warm-up; router = qwen_operator.router.picking (capacity-weighted, size-aware, "
        f"affinity on/off), sees completions every {args.sync:g}s. SLO capacity: highest rate with P95 TTFT within "
        f"the SLO (to {args.tolerance:.0%}); ratios against affinity off in this run."
    )
    out: dict[str, Any] = {"simulated": True, "slo_p95_ttft_seconds": SLO, "sessions": [], "plain": []}
    print(
        f"\n== multi-turn chat sessions (SYNTHETIC: Azure-trace turn sizes, mean {MEAN_TURNS:g} turns, "
        f"reading {args.read:g} tokens/s + {args.think:g}s mean think; mean request {s_prompt} in / {s_output} out, "
        f"{s_shared:.0%} of prompt "
        "tokens shared with the previous turn; pools planned with that mean request) =="
    )
    for label, gpus in FLEETS:
        profiles = planned_profiles(gpus, s_prompt, s_output)
        weights = ", ".join(f"{g} {p.rate_at_slo:.2f}" for g, p in profiles.items())
        res = bench(
            f"{label} (router weights, req/s per replica: {weights})",
            sessions_runner(profiles, gpus, rows, args),
            MODES,
            0.1,
            True,
            args,
        )
        out["sessions"].append({"fleet": label, **res})
    # the ceiling: one replica takes every turn, so every shared prefix is on the replica that needs
    # it (what perfect affinity achieves) and only its KV capacity limits the cache
    one = {"L40S": 1}
    out["sessions_ceiling_one_l40s"] = bench(
        "ceiling, L40S:1 (every turn on the one replica = perfect affinity; prefix caching vs none)",
        sessions_runner(planned_profiles(one, s_prompt, s_output), one, rows, args),
        ("no cache", "affinity on"),
        0.1,
        True,
        args,
        base_mode="no cache",
    )
    print(
        f"\n== no shared prefixes: Azure trace size mix, Poisson arrivals, a distinct key per request "
        f"(mean {p_prompt} in / {p_output} out; pools planned with that mean request) =="
    )
    for label, gpus in FLEETS:
        profiles = planned_profiles(gpus, p_prompt, p_output)
        res = bench(label, plain_runner(profiles, gpus, mix, args), MODES[1:], 1.0, False, args)
        out["plain"].append({"fleet": label, **res})
    print(f"\n(simulated in {time.monotonic() - started:.0f}s wall clock)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2, default=lambda v: None)
            fh.write("\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

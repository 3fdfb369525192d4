"""Routing benchmark: a Kubernetes Service, least-outstanding and the router on mixed GPU pools (SIMULATED).

Why it exists: issue 9 claims that on mixed pools a Service (uniform spread) breaks the
TTFT SLO near 20% of the capacity the planner bought, while the router's algorithm
(:class:`qwen_operator.router.picking.Picker`: capacity-weighted least outstanding,
size-aware) holds it to >= 95%. This measures it side by side in one run, on the
simulator's fleet and continuous-batching engine (:func:`qwen_operator.sim.fleet.serve_fixed`)
with a fixed fleet (no autoscaling), for two fleets, load stepped to 20..100% of the planned
SLO capacity: the planner's requests/s within the SLO per replica
(:meth:`ReplicaModel.slo_capacity`, the number the operator publishes as the router's
weight), summed over the fleet. Two request mixes:

* ``fixed``: 512-token prompts, 128-token replies (the planner's default typical request);
* ``azure``: prompt/reply sizes drawn from the bundled Azure LLM conversation trace (rows
  over the runtime's limits dropped); planned with the trace's mean request as the typical
  one (what ``spec.scaling.typicalPromptTokens``/``typicalOutputTokens`` would say).

Arrivals are Poisson, the same arrivals for every routing. The router sees completions and
first tokens every ``--sync`` seconds of simulated time. Rejected requests (HTTP 429, or
the router holding a request because every replica is at its concurrency bound, which the
simulator counts as rejected) count as infinitely slow in the P95. Prints figures; asserts
nothing. Every figure is SIMULATED.

    .venv/bin/python bench/routing_bench.py [--seconds 600] [--sync 0.02] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from typing import Any

from qwen_operator.capacity.model import ReplicaModel
from qwen_operator.sim.capacity import PoolProfile, smallest_fit
from qwen_operator.sim.fleet import FixedRun, serve_fixed
from qwen_operator.sim.trace import TraceRow, default_trace_path, load_azure_csv

MODEL, QUANT, SLO = "Qwen/Qwen3-14B", "fp8", 1.2
LOADS = (0.2, 0.4, 0.6, 0.8, 0.95, 1.0)
FLEETS = (("L40S:2 + A10G:4", {"L40S": 2, "A10G": 4}), ("L40S:4 + A100-80GB:2", {"L40S": 4, "A100-80GB": 2}))
ROUTINGS = ("service", "least-outstanding", "router")
WARMUP_SECONDS = 60.0


def replica(gpu: str) -> ReplicaModel:
    r = smallest_fit(MODEL, gpu, QUANT)
    if r is None:
        raise SystemExit(f"{MODEL} {QUANT} does not fit on {gpu}")
    return r


def planned_profiles(gpus: dict[str, int], prompt: int, output: int) -> dict[str, PoolProfile]:
    """Each pool weighted by the planner's requests/s within the SLO for a ``prompt``/``output`` request."""
    out = {}
    for gpu in gpus:
        r = replica(gpu)
        cap = r.slo_capacity(prompt, output, SLO)
        cost = r.gpu.price_per_gpu_hour * r.shards
        out[gpu] = PoolProfile(gpu, r.shards, r, cost, cap.rate, cap.concurrency, r.cold_start_seconds)
    return out


def arrivals(rate: float, seconds: float, seed: int) -> list[float]:
    rng, t, out = random.Random(seed), 0.0, list[float]()
    while True:
        t += rng.expovariate(rate)
        if t >= seconds:
            return out
        out.append(t)


def sizes(n: int, mix: list[TraceRow] | None, seed: int) -> tuple[list[int], list[int]]:
    if mix is None:
        return [512] * n, [128] * n
    rng = random.Random(seed + 1)
    rows = [mix[rng.randrange(len(mix))] for _ in range(n)]
    return [r.prompt_tokens for r in rows], [r.output_tokens for r in rows]


def within(run: FixedRun) -> bool:
    return run.p95_seconds <= SLO


def bench_fleet(
    label: str, gpus: dict[str, int], mix: list[TraceRow] | None, typical: tuple[int, int], args: argparse.Namespace
) -> dict[str, Any]:
    profiles = planned_profiles(gpus, *typical)
    planned = sum(profiles[g].rate_at_slo * n for g, n in gpus.items())
    weights = ", ".join(f"{g} {p.rate_at_slo:.2f}" for g, p in profiles.items())
    print(f"\n{label}: planned SLO capacity {planned:.1f} req/s (per replica: {weights} req/s)")
    head = f"{'load':>5} {'req/s':>6} " + " ".join(f"{r + ' P95 s / rej':>30}" for r in ROUTINGS)
    print(head)
    print("-" * len(head))
    rows: list[dict[str, Any]] = []
    keeps = dict.fromkeys(ROUTINGS, 0.0)
    broken = dict.fromkeys(ROUTINGS, False)
    for frac in LOADS:
        rate = planned * frac
        arr = arrivals(rate, WARMUP_SECONDS + args.seconds, args.seed)
        prompts, outputs = sizes(len(arr), mix, args.seed)
        runs = {
            r: serve_fixed(profiles, gpus, arr, prompts, outputs, r, SLO, sync_seconds=args.sync, seed=args.seed)
            for r in ROUTINGS
        }
        cells = []
        for r, run in runs.items():
            p95 = "unbounded" if math.isinf(run.p95_seconds) else f"{run.p95_seconds:.2f}"
            cells.append(f"{p95 + ' / ' + format(run.rejected / max(1, run.requests), '.1%'):>30}")
            if within(run) and not broken[r]:
                keeps[r] = frac
            else:
                broken[r] = True
        print(f"{frac:5.0%} {rate:6.1f} " + " ".join(cells))
        rows.append(
            {
                "load_fraction": frac,
                "rate": rate,
                **{
                    r: {"p95_seconds": run.p95_seconds, "rejected_fraction": run.rejected / max(1, run.requests)}
                    for r, run in runs.items()
                },
            }
        )
    print(
        f"P95 TTFT <= {SLO:g}s up to: "
        + ", ".join(f"{r} {keeps[r]:.0%}" if keeps[r] else f"{r} below {LOADS[0]:.0%}" for r in ROUTINGS)
        + " of planned capacity (SIMULATED)"
    )
    return {"fleet": label, "planned_rps": planned, "steps": rows, "keeps_slo_up_to": keeps}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=600.0, help="measured simulated seconds per step (after 60 s)")
    ap.add_argument("--sync", type=float, default=0.02, help="how often the router sees completions (simulated s)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args()
    if not (args.seconds > 0 and args.sync > 0):
        ap.error("--seconds and --sync must be positive")
    started = time.monotonic()
    rows = load_azure_csv(default_trace_path())
    limit = replica("A10G")  # the same runtime limits on every pool
    mix = [
        r
        for r in rows
        if r.prompt_tokens <= limit.max_input_tokens and r.prompt_tokens + r.output_tokens <= limit.max_total_tokens
    ]
    mean_p = round(sum(r.prompt_tokens for r in mix) / len(mix))
    mean_o = round(sum(r.output_tokens for r in mix) / len(mix))
    print(
        "SIMULATED fleets (replica model + continuous-batching engine; no real GPUs), fixed size, no autoscaling; "
        f"{MODEL} {QUANT}, SLO P95 TTFT <= {SLO:g}s, Poisson arrivals, {args.seconds:g}s measured per step "
        f"after {WARMUP_SECONDS:g}s warm-up; router sees completions every {args.sync:g}s.\n"
        "Routing: service = uniform random ready replica (kube-proxy); least-outstanding = unweighted; "
        "router = qwen_operator.router.picking (capacity-weighted, size-aware). Cells: P95 TTFT / rejected share."
    )
    out: dict[str, Any] = {"simulated": True, "slo_p95_ttft_seconds": SLO, "workloads": {}}
    print("\n== 512-token prompts, 128-token replies ==")
    out["workloads"]["fixed-512-128"] = [bench_fleet(lbl, g, None, (512, 128), args) for lbl, g in FLEETS]
    print(
        f"\n== Azure LLM conversation trace size mix ({len(mix)} of {len(rows)} rows within the runtime limits; "
        f"mean {mean_p} in / {mean_o} out, planned with that mean as the typical request) =="
    )
    out["workloads"]["azure-mix"] = [bench_fleet(lbl, g, mix, (mean_p, mean_o), args) for lbl, g in FLEETS]
    print(f"\n(simulated in {time.monotonic() - started:.0f}s wall clock)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2, default=lambda v: None)
            fh.write("\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Autoscaling benchmark: every policy on the diurnal day and the raw hour, checked against issue 4's targets.

Why it exists: the targets (qwen >= 99% SLO minutes, <= 0.1% rejected, <= 40% of
static-peak GPU-hours, <= 1.25x oracle, beats hpa-queue on SLO minutes at no more
GPU-hours, <= 1/3 of its oscillations) are claims to be measured side by side on the
same SIMULATED fleet, and reported honestly, including on traces the policy was not
tuned on (``--untuned``: another seed of the diurnal day and the ``week`` envelope).
Prints figures; asserts nothing. ``--prewarm`` adds, after the usual output, the pre-warm
variants (``qwen+schedule``, ``qwen+predictive``) side by side with plain qwen and the oracle
on the diurnal day and the week. ``--equal-slo`` compares qwen with hpa-queue at equal or better SLO
(hpa-queue's queue threshold lowered until it matches qwen's SLO minutes and rejections).

    .venv/bin/python bench/autoscale_bench.py [--untuned] [--prewarm] [--equal-slo] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace

from qwen_operator.sim.cli import format_table
from qwen_operator.sim.simulate import PolicyResult, SimConfig, build_profiles, simulate_policy
from qwen_operator.sim.trace import build_trace, default_trace_path, load_azure_csv

POLICIES = ("qwen", "hpa-queue", "static-peak", "static-mean", "oracle")
PREWARM = ("qwen", "qwen+schedule", "qwen+predictive", "oracle")


def check_targets(res: dict[str, PolicyResult]) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for each of the issue's targets."""
    q, hpa, peak, oracle = res["qwen"], res["hpa-queue"], res["static-peak"], res["oracle"]
    return [
        (">= 99% SLO minutes", f"{q.slo_minutes_fraction:.2%}", q.slo_minutes_fraction >= 0.99),
        ("<= 0.1% rejected", f"{q.rejected_fraction:.3%}", q.rejected_fraction <= 0.001),
        ("<= 40% of static-peak GPU-h", f"{q.gpu_hours / peak.gpu_hours:.1%}", q.gpu_hours <= 0.4 * peak.gpu_hours),
        ("<= 1.25x oracle GPU-h", f"{q.gpu_hours / oracle.gpu_hours:.2f}x", q.gpu_hours <= 1.25 * oracle.gpu_hours),
        (
            "beats hpa-queue SLO minutes",
            f"{q.slo_minutes_fraction:.2%} vs {hpa.slo_minutes_fraction:.2%}",
            q.slo_minutes_fraction > hpa.slo_minutes_fraction,
        ),
        ("... at no more GPU-h", f"{q.gpu_hours:.2f} vs {hpa.gpu_hours:.2f}", q.gpu_hours <= hpa.gpu_hours),
        (
            "<= 1/3 hpa-queue oscillations",
            f"{q.oscillations} vs {hpa.oscillations}",
            q.oscillations * 3 <= hpa.oscillations,
        ),
    ]


def run(
    envelope: str,
    seed: int,
    cfg: SimConfig,
    rows: list,  # type: ignore[type-arg]
    label: str,
    policies: tuple[str, ...] = POLICIES,
) -> dict[str, PolicyResult]:
    trace = build_trace(rows, envelope, seed=seed)
    profiles, notes = build_profiles(rows, cfg)
    print(f"\n=== {label}: envelope {envelope}, seed {seed}: {len(trace)} requests, {trace.duration / 3600:.0f}h ===")
    for note in notes:
        print(f"  pool {note}")
    results = {}
    for name in policies:
        started = time.monotonic()
        results[name] = simulate_policy(name, trace, profiles, cfg)
        print(f"  [simulated] {name} done in {time.monotonic() - started:.1f}s", file=sys.stderr, flush=True)
    print(format_table(results, cfg.slo_seconds, cfg.latency_metric))
    if policies != POLICIES:
        return results
    print("targets (qwen):")
    for target, measured, met in check_targets(results):
        print(f"  {'MET ' if met else 'MISS'} {target:<32} {measured}")
    return results


#: hpa-queue thresholds swept by ``--equal-slo`` (queued requests per replica; 4 is the default).
HPA_TARGETS = (3.0, 2.0, 1.5, 1.0, 0.5)


def equal_slo(envelope: str, seed: int, cfg: SimConfig, rows: list, label: str) -> dict[str, object]:  # type: ignore[type-arg]
    """qwen vs hpa-queue *at equal or better SLO*: hpa-queue's queue threshold is lowered step by step
    (``HPA_TARGETS``) until its SLO minutes and rejections are no worse than qwen's at the default
    settings; the GPU-hours are compared there. The default threshold (4, the same ``targetQueueDepth``
    qwen uses) buys hpa-queue its GPU-hours with rejected requests and missed minutes, so comparing
    GPU-hours at that point compares different service levels."""
    trace = build_trace(rows, envelope, seed=seed)
    profiles, _ = build_profiles(rows, cfg)
    q = simulate_policy("qwen", trace, profiles, cfg)
    print(f"\n=== equal SLO ({label}): envelope {envelope}, seed {seed} ===")
    print(
        f"  qwen (targetQueueDepth {cfg.target_queue_depth:g}): {q.gpu_hours:.2f} GPU-h, "
        f"{q.slo_minutes_fraction:.2%} SLO minutes, {q.rejected_fraction:.3%} rejected"
    )
    found = None
    sweep = []
    for target in HPA_TARGETS:
        h = simulate_policy("hpa-queue", trace, profiles, replace(cfg, target_queue_depth=target))
        ok = h.slo_minutes_fraction >= q.slo_minutes_fraction and h.rejected_fraction <= q.rejected_fraction
        sweep.append({"target": target, **h.metrics(), "matches_qwen_slo": ok})
        print(
            f"  hpa-queue threshold {target:g}: {h.gpu_hours:.2f} GPU-h, {h.slo_minutes_fraction:.2%} SLO minutes, "
            f"{h.rejected_fraction:.3%} rejected{'  <- first at equal or better SLO' if ok else ''}"
        )
        if ok:
            found = h
            break
    if found is None:
        print(f"  no swept hpa-queue threshold reaches qwen's SLO (lowest tried: {HPA_TARGETS[-1]:g})")
    else:
        print(f"  GPU-hours qwen / hpa-queue at equal or better SLO: {q.gpu_hours / found.gpu_hours:.3f}")
    return {"qwen": q.metrics(), "hpa_sweep": sweep}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", default=None, help="Azure trace CSV (default: the copy shipped with the package)")
    parser.add_argument("--untuned", action="store_true", help="also run the diurnal day with seed 7 and the week")
    parser.add_argument("--prewarm", action="store_true", help="also compare the pre-warm variants (diurnal, week)")
    parser.add_argument(
        "--equal-slo",
        action="store_true",
        help="compare qwen with hpa-queue at equal or better SLO (sweeps hpa-queue's threshold) on the day, "
        "the other seed and the week; nothing else runs",
    )
    parser.add_argument("--json", help="write every figure as JSON")
    args = parser.parse_args()
    rows = load_azure_csv(args.trace or default_trace_path())
    cfg = SimConfig()
    print("SIMULATED fleet; trace: Azure LLM inference trace 2023 (conversation), CC-BY 4.0")
    if args.equal_slo:
        eq = {
            f"{env}/seed{seed}": equal_slo(env, seed, cfg, rows, label)
            for env, seed, label in (
                ("diurnal", 0, "tuned on"),
                ("diurnal", 7, "NOT tuned on"),
                ("week", 0, "NOT tuned on"),
            )
        }
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"simulated": True, "equal_slo": eq}, fh, indent=2)
        return 0
    runs = [("diurnal", 0, "tuned on"), ("flat", 0, "tuned on")]
    if args.untuned:
        runs += [("diurnal", 7, "NOT tuned on"), ("week", 0, "NOT tuned on")]
    out = {}
    for envelope, seed, label in runs:
        res = run(envelope, seed, cfg, rows, label)
        out[f"{envelope}/seed{seed}"] = {
            "policies": {k: r.metrics() for k, r in res.items()},
            "targets": [{"target": t, "measured": m, "met": ok} for t, m, ok in check_targets(res)],
        }
    if args.prewarm:
        for envelope in ("diurnal", "week"):
            res = run(envelope, 0, cfg, rows, "pre-warm variants", PREWARM)
            q = res["qwen"]
            for name in ("qwen+schedule", "qwen+predictive"):
                r = res[name]
                print(
                    f"  {name}: {r.gpu_hours - q.gpu_hours:+.2f} GPU-h ({r.gpu_hours / q.gpu_hours - 1:+.1%}) vs qwen, "
                    f"SLO minutes {r.slo_minutes_fraction - q.slo_minutes_fraction:+.2%}, "
                    f"rejected {r.rejected - q.rejected:+d} requests; the floor changed {r.floor_decisions} decisions"
                )
            out[f"{envelope}/seed0/prewarm"] = {
                "policies": {k: {**r.metrics(), "floor_decisions": r.floor_decisions} for k, r in res.items()}
            }
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"simulated": True, "runs": out}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

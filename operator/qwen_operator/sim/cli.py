"""``qwenctl simulate``: replay a trace through a SIMULATED fleet under each autoscaling policy.

Why it exists: the command a user (or the benchmark) runs to compare the qwen policy with
KEDA+HPA, static fleets and the oracle on the same trace, printing a table and optionally
writing JSON and a plot. Flags are validated here and bad input raises
:class:`qwen_operator.cli.UserError` naming the flag and what it accepts.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from ..capacity.model import DEFAULT_REGISTRY_BYTES_PER_S, WEIGHTS_MODES
from ..catalog.gpus import DEFAULT_GPUS, resolve_gpu_name
from ..catalog.models import DEFAULT_MODELS, QUANTIZATIONS, resolve_model_name
from ..cli import UserError
from .capacity import LATENCY_METRICS
from .fleet import ROUTINGS
from .simulate import ALL_POLICIES, POLICIES, PolicyResult, SimConfig, build_profiles, run_policies
from .trace import ENVELOPES, Trace, TraceError, build_trace, default_trace_path, load_azure_csv
from .workloads import WORKLOADS, build_session_trace

BANNER = "SIMULATED fleet (replica model + continuous-batching engine; no real GPUs)"
#: ``--policy`` groups: ``all`` (the README table) and ``prewarm`` (pre-warm variants side by side).
POLICY_GROUPS = {"all": POLICIES, "prewarm": ("qwen", "qwen+schedule", "qwen+predictive", "oracle")}


def parse_policies(text: str) -> tuple[str, ...]:
    """``qwen,qwen+schedule`` / ``all`` / ``prewarm`` -> the policies to run, in order, once each."""
    out: list[str] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if part in POLICY_GROUPS:
            names: tuple[str, ...] = POLICY_GROUPS[part]
        elif part in ALL_POLICIES:
            names = (part,)
        else:
            valid = ", ".join([*ALL_POLICIES, *POLICY_GROUPS])
            raise UserError(f"--policy: {part!r} is not valid; valid: {valid} (comma-separated)")
        out += [n for n in names if n not in out]
    if not out:
        raise UserError("--policy: give a policy, e.g. all, prewarm or qwen,qwen+schedule")
    return tuple(out)


def parse_gpus(text: str) -> dict[str, int]:
    """``a10g=8,l40s=4`` -> ``{"A10G": 8, "L40S": 4}`` (GPU counts per type)."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, count = part.partition("=")
        try:
            key = resolve_gpu_name(name.strip())
        except KeyError:
            raise UserError(f"--gpus: unknown GPU type {name!r}; valid: {', '.join(DEFAULT_GPUS)}") from None
        if not sep or not count.strip().isdigit():
            raise UserError(f"--gpus: {part!r} must be TYPE=COUNT with a whole number, e.g. a10g=8")
        out[key] = int(count)
    if not out or sum(out.values()) == 0:
        raise UserError("--gpus: give at least one GPU, e.g. a10g=8,l40s=4,a100-80gb=2")
    return out


#: ``--registry-bandwidth`` suffixes: powers of 1024, as ``qwenctl model pull --limit-rate`` reads them.
_RATE_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_bandwidth(text: str) -> float:
    """``1G`` / ``680M`` / ``500k`` / ``680000000`` -> bytes/s (K/M/G: 2^10/2^20/2^30, case-insensitive)."""
    value = text.strip()
    scale = 1.0
    if value[-1:].upper() in _RATE_UNITS:
        scale, value = float(_RATE_UNITS[value[-1].upper()]), value[:-1]
    try:
        rate = float(value) * scale
    except ValueError:
        rate = math.nan
    if not (rate > 0 and math.isfinite(rate)):
        raise UserError(
            f"--registry-bandwidth: {text!r} must be a positive number of bytes/s, e.g. 680M or 1G "
            "(K/M/G = 2^10/2^20/2^30)"
        )
    return rate


def _choice(flag: str, value: str, valid: tuple[str, ...] | list[str]) -> None:
    if value not in valid:
        raise UserError(f"{flag}: {value!r} is not valid; valid: {', '.join(valid)}")


def config_from_args(args: argparse.Namespace) -> SimConfig:
    _choice("--envelope", args.envelope, list(ENVELOPES))
    parse_policies(args.policy)
    _choice("--quantization", args.quantization, QUANTIZATIONS)
    _choice("--latency", args.latency, LATENCY_METRICS)
    _choice("--routing", args.routing, ROUTINGS)
    _choice("--workload", args.workload, WORKLOADS)
    _choice("--weights", args.weights, WEIGHTS_MODES)
    bandwidth = DEFAULT_REGISTRY_BYTES_PER_S
    if args.registry_bandwidth is not None:
        bandwidth = parse_bandwidth(args.registry_bandwidth)
    if args.rate_scale is not None and not (args.rate_scale > 0 and math.isfinite(args.rate_scale)):
        raise UserError(f"--rate-scale: must be a positive number, got {args.rate_scale}")
    try:
        model = resolve_model_name(args.model)
    except KeyError:
        raise UserError(f"--model: unknown model {args.model!r}; valid: {', '.join(DEFAULT_MODELS)}") from None
    if args.slo_p95 <= 0 or not math.isfinite(args.slo_p95):
        raise UserError(f"--slo-p95: must be a positive number of seconds, got {args.slo_p95}")
    return SimConfig(
        model=model,
        quantization=args.quantization,
        gpus=parse_gpus(args.gpus),
        slo_seconds=args.slo_p95,
        latency_metric=args.latency,
        seed=args.seed,
        routing=args.routing,
        weights=args.weights,
        registry_bytes_per_s=bandwidth,
    )


def format_table(results: dict[str, PolicyResult], slo: float, metric: str, routing: str = "router") -> str:
    w = max(12, *(len(name) for name in results))
    head = (
        f"{'policy':<{w}} {'GPU-h':>8} {'cost $':>9} {'SLO min':>8} {'P95 s':>7} "
        f"{'rejected':>9} {'scales':>7} {'osc':>5}"
    )
    lines = [f"{BANNER}; SLO: P95 {metric} <= {slo:g}s; routing: {routing}", head, "-" * len(head)]
    for name, r in results.items():
        lines.append(
            f"{name:<{w}} {r.gpu_hours:8.2f} {r.cost_usd:9.2f} {r.slo_minutes_fraction:8.2%} {r.p95_seconds:7.2f} "
            f"{r.rejected_fraction:9.3%} {r.scale_events:7d} {r.oscillations:5d}"
        )
    return "\n".join(lines)


def _progress(policy: str, now: float, total: float) -> None:
    print(f"  [simulated] {policy}: {now / 3600:.0f}h / {total / 3600:.0f}h", file=sys.stderr, flush=True)


def run_simulate(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    policies = parse_policies(args.policy)
    try:
        rows = load_azure_csv(args.trace or default_trace_path())
        trace: Trace
        if args.workload == "sessions":
            trace = build_session_trace(rows, args.envelope, seed=args.seed, rate_scale=args.rate_scale)
        else:
            trace = build_trace(rows, args.envelope, seed=args.seed, rate_scale=args.rate_scale)
    except TraceError as exc:
        raise UserError(f"--trace: {exc}") from None
    print(
        f"{BANNER}\ntrace: {args.trace or default_trace_path()} (Azure LLM trace, CC-BY 4.0), "
        f"envelope {args.envelope}: {len(trace)} requests over {trace.duration / 3600:.1f}h"
    )
    if args.workload == "sessions":
        print(f"workload: {trace.description} (affinity key = session id; replicas cache prefixes)")
    print(f"cold start: {cfg.cold_start_label()}")
    started = time.monotonic()
    try:
        profiles, notes = build_profiles(rows, cfg)
        results = run_policies(trace, profiles, cfg, policies, _progress)
    except ValueError as exc:
        raise UserError(f"--gpus/--model/--slo-p95: {exc}") from None
    for note in notes:
        print(f"  pool {note}")
    print(format_table(results, cfg.slo_seconds, cfg.latency_metric, cfg.routing))
    floored = {name: r.floor_decisions for name, r in results.items() if "+" in name}
    if floored:
        print("decisions a pre-warm floor changed: " + ", ".join(f"{k} {v}" for k, v in floored.items()))
    print(f"(simulated in {time.monotonic() - started:.1f}s wall clock)")
    if args.json:
        payload: dict[str, Any] = {
            "simulated": True,
            "envelope": args.envelope,
            "slo_p95_seconds": cfg.slo_seconds,
            "latency_metric": cfg.latency_metric,
            "routing": cfg.routing,
            "workload": args.workload,
            "weights": cfg.weights,
            "registry_bytes_per_s": cfg.registry_bytes_per_s if cfg.weights == "pulled" else None,
            "cold_start_seconds": {name: p.cold_start_seconds for name, p in profiles.items()},
            "policies": {name: r.metrics() for name, r in results.items()},
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        from .plot import plot_results

        plot_results(results, args.plot, title=f"SIMULATED fleet, envelope {args.envelope}", slo=cfg.slo_seconds)
        print(f"wrote {args.plot}")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="replay a trace through a SIMULATED TGI fleet under each autoscaling policy",
        description=f"{BANNER}. Compares autoscaling policies on one trace.",
    )
    p.add_argument("--trace", help=f"Azure LLM trace CSV (default: {default_trace_path()})")
    p.add_argument("--envelope", default="flat", help=f"one of {', '.join(ENVELOPES)} (default flat)")
    p.add_argument("--model", default="Qwen/Qwen3-14B", help="catalog model (default Qwen/Qwen3-14B)")
    p.add_argument("--quantization", default="fp8", help=f"one of {', '.join(QUANTIZATIONS)} (default fp8)")
    p.add_argument("--gpus", default="a10g=8,l40s=4,a100-80gb=2", help="GPU counts per type")
    p.add_argument("--slo-p95", type=float, default=1.2, help="P95 latency SLO in seconds")
    p.add_argument("--latency", default="ttft", help="SLO latency: ttft (time to first token, default) or e2e")
    p.add_argument(
        "--policy",
        default="all",
        help=f"comma-separated: {', '.join(ALL_POLICIES)}; or all (the first five, default), prewarm "
        "(qwen, qwen+schedule, qwen+predictive, oracle)",
    )
    p.add_argument(
        "--routing",
        default="router",
        help="how requests reach replicas: router (the router's algorithm: capacity-weighted, size-aware; "
        "default), least-outstanding (unweighted), service (uniform random, what a Kubernetes Service gives)",
    )
    p.add_argument(
        "--workload",
        default="trace",
        help="trace (the Azure trace under the envelope, default) or sessions (SYNTHETIC multi-turn chat: "
        "prompts grow by each turn, turn sizes from the trace, session starts follow the envelope)",
    )
    p.add_argument(
        "--weights",
        default="on-node",
        help="where a scale-out replica finds its weights: on-node (pre-staged on the node: load from the node "
        "cache, default) or pulled (its init container downloads the whole checkpoint from the registry first)",
    )
    p.add_argument(
        "--registry-bandwidth",
        metavar="BYTES/S",
        default=None,
        help=f"registry -> node download rate for --weights pulled, e.g. 680M or 1G (K/M/G = 2^10/2^20/2^30, "
        f"as model pull --limit-rate); default {DEFAULT_REGISTRY_BYTES_PER_S / 1e6:.0f} MB/s: 8 parallel GETs "
        "x 85 MB/s per in-region S3 connection (AWS S3 performance guide)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rate-scale", type=float, default=None, help="multiply the envelope's arrival rate")
    p.add_argument("--json", metavar="OUT", help="write the metrics per policy as JSON")
    p.add_argument("--plot", metavar="OUT.png", help="plot load, replicas per pool and P95 per policy")
    p.set_defaults(handler=run_simulate)

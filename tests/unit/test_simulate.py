"""Tests of the fleet simulator and ``qwenctl simulate`` on small synthetic traces (fast)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from qwen_operator.cli import UserError, main
from qwen_operator.sim.cli import parse_gpus
from qwen_operator.sim.simulate import METRIC_KEYS, SimConfig, build_profiles, minute_rates, simulate_policy
from qwen_operator.sim.trace import Trace, TraceRow

ROWS = [TraceRow(i * 1.0, 300 + (i * 37) % 900, 40 + (i * 13) % 160) for i in range(400)]
CFG = SimConfig(gpus={"L40S": 4, "A10G": 2}, seed=1)


@pytest.fixture(scope="module")
def profiles() -> dict:  # type: ignore[type-arg]
    return build_profiles(ROWS, CFG)[0]


def spike_trace(base: float = 1.0, peak: float = 12.0, minutes: int = 30) -> Trace:
    """``base`` req/s, then ``peak`` req/s from minute 8 to 16, then ``base`` again."""
    rng = random.Random(5)
    tr = Trace("spike", "test")
    t = 0.0
    while t < minutes * 60:
        rate = peak if 8 * 60 <= t < 16 * 60 else base
        t += rng.expovariate(rate)
        if t >= minutes * 60:
            break
        row = ROWS[rng.randrange(len(ROWS))]
        tr.arrivals.append(t)
        tr.prompt_tokens.append(row.prompt_tokens)
        tr.output_tokens.append(row.output_tokens)
    tr.duration = minutes * 60.0
    return tr


def test_pools_that_miss_the_slo_are_left_out_with_a_reason() -> None:
    profiles, notes = build_profiles(ROWS, SimConfig(gpus={"L40S": 1, "A10G": 1}, slo_seconds=0.05))
    assert "A10G" not in profiles
    assert any(n.startswith("A10G") and "exceeds the SLO" in n for n in notes)


def test_static_fleet_gpu_hours_are_replicas_times_duration(profiles: dict) -> None:  # type: ignore[type-arg]
    tr = spike_trace()
    r = simulate_policy("static-peak", tr, profiles, CFG)
    replicas = {p: c[0] for p, c in r.timeline.replicas.items()}
    shards = sum(profiles[p].shards * n for p, n in replicas.items())
    assert r.gpu_hours == pytest.approx(shards * tr.duration / 3600, rel=1e-6)
    assert r.scale_events == 0
    assert r.requests == len(tr)


def test_qwen_scales_up_for_the_spike_and_back_down(profiles: dict) -> None:  # type: ignore[type-arg]
    r = simulate_policy("qwen", spike_trace(), profiles, CFG)
    totals = [sum(c) for c in zip(*r.timeline.replicas.values(), strict=True)]
    at = {round(t): n for t, n in zip(r.timeline.t, totals, strict=True)}
    assert at[7 * 60] < at[12 * 60]  # more replicas during the spike
    assert at[29 * 60] < at[12 * 60]  # fewer after it
    assert r.rejected_fraction < 0.01
    assert set(r.metrics()) == set(METRIC_KEYS)


def test_oracle_needs_no_more_than_static_peak(profiles: dict) -> None:  # type: ignore[type-arg]
    tr = spike_trace()
    oracle = simulate_policy("oracle", tr, profiles, CFG)
    peak = simulate_policy("static-peak", tr, profiles, CFG)
    assert oracle.gpu_hours < peak.gpu_hours
    assert oracle.rejected_fraction <= 0.01


def test_undersized_static_fleet_rejects_and_misses_the_slo(profiles: dict) -> None:  # type: ignore[type-arg]
    tr = spike_trace(base=2.0, peak=30.0)
    r = simulate_policy("static-mean", tr, profiles, CFG)
    assert r.rejected_fraction > 0
    assert r.slo_minutes_fraction < 1.0


def test_minute_rates() -> None:
    tr = Trace("t", "t", arrivals=[1.0, 2.0, 61.0], prompt_tokens=[1, 1, 1], output_tokens=[1, 1, 1], duration=180.0)
    assert minute_rates(tr) == pytest.approx([2 / 60, 1 / 60, 0.0])


@pytest.mark.parametrize(
    ("text", "expected"),
    [("a10g=8,l40s=4,a100-80gb=2", {"A10G": 8, "L40S": 4, "A100-80GB": 2}), ("L40S=1", {"L40S": 1})],
)
def test_parse_gpus(text: str, expected: dict[str, int]) -> None:
    assert parse_gpus(text) == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--gpus", "h200=1"], "--gpus: unknown GPU type 'h200'; valid: A10G"),
        (["--gpus", "a10g=x"], "--gpus: 'a10g=x' must be TYPE=COUNT"),
        (["--envelope", "monthly"], "--envelope: 'monthly' is not valid; valid: flat, diurnal, week"),
        (["--policy", "kpa"], "--policy: 'kpa' is not valid; valid: qwen, hpa-queue"),
        (["--model", "llama"], "--model: unknown model 'llama'"),
        (["--slo-p95", "-1"], "--slo-p95: must be a positive"),
        (["--trace", "/nonexistent.csv"], "--trace: trace file /nonexistent.csv does not exist"),
    ],
)
def test_bad_flags_raise_user_errors(argv: list[str], message: str) -> None:
    from qwen_operator.cli import build_parser

    args = build_parser().parse_args(["simulate", *argv])
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        args.handler(args)


def test_cli_writes_json_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "t.csv"
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    rng = random.Random(2)
    t = 0.0
    while t < 600:
        t += rng.expovariate(2.0)
        row = ROWS[rng.randrange(len(ROWS))]
        lines.append(f"2023-11-16 18:{int(t // 60):02d}:{t % 60:09.6f},{row.prompt_tokens},{row.output_tokens}")
    csv.write_text("\n".join(lines) + "\n")
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    rc = main(
        ["simulate", "--trace", str(csv), "--gpus", "l40s=2", "--policy", "all", "--json", str(out), "--plot", str(png)]
    )
    assert rc == 0
    data = json.loads(out.read_text())
    assert set(data["policies"]) == {"qwen", "hpa-queue", "static-peak", "static-mean", "oracle"}
    for metrics in data["policies"].values():
        assert set(metrics) == set(METRIC_KEYS)
        assert all(isinstance(v, int | float) and not math.isnan(v) for v in metrics.values())
    assert png.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "SIMULATED" in printed
    assert "qwen" in printed


# --- pre-warm variants ---------------------------------------------------------------------------

from qwen_operator.sim import trace as trace_mod  # noqa: E402
from qwen_operator.sim.simulate import ALL_POLICIES, envelope_schedule, prewarm_lead  # noqa: E402
from qwen_operator.sim.trace import Envelope, build_trace  # noqa: E402

#: Two short days: a quiet night (0.2 req/s), a 10 req/s half-hour from 09:00, known in advance.
TEST_DAY = Envelope(
    "testday",
    "quiet, 09:00-09:30 x50",
    days=2,
    points=((0.0, 0.02), (9.0, 0.02), (9.1, 1.0), (9.5, 1.0), (9.6, 0.02), (24.0, 0.02)),
    rate_scale=10.0,
)


@pytest.fixture(scope="module")
def prewarm_runs(profiles: dict) -> dict:  # type: ignore[type-arg]
    mp = pytest.MonkeyPatch()
    mp.setitem(trace_mod.ENVELOPES, "testday", TEST_DAY)
    try:
        tr = build_trace(ROWS, TEST_DAY, seed=3)
        return {p: simulate_policy(p, tr, profiles, CFG) for p in ("qwen", "qwen+schedule", "qwen+predictive")}
    finally:
        mp.undo()


def _replicas_at(r: object, t: float) -> int:
    tl = r.timeline  # type: ignore[attr-defined]
    k = next(i for i, x in enumerate(tl.t) if x >= t)
    return sum(c[k] for c in tl.replicas.values())


def test_envelope_schedule_opens_a_cold_start_ahead_of_the_known_peak(profiles: dict) -> None:  # type: ignore[type-arg]
    from qwen_operator.sim.fleet import Fleet

    tr = build_trace(ROWS, "diurnal", seed=0, rate_scale=0.05)
    lead = prewarm_lead(profiles, CFG)
    assert lead == pytest.approx(max(p.cold_start_seconds for p in profiles.values()) + CFG.tick_seconds)
    (w,) = envelope_schedule(tr, Fleet(profiles, CFG.gpus, "ttft"), CFG, lead)
    assert w.end == 11 * 60 and w.start == 9 * 60 - math.ceil(lead / 60) and w.min_replicas >= 1
    assert envelope_schedule(Trace("flat", "replay"), Fleet(profiles, CFG.gpus, "ttft"), CFG, lead) == []
    assert set(ALL_POLICIES) >= {"qwen", "oracle", "qwen+schedule", "qwen+predictive"}


def test_schedule_variant_is_warm_before_the_peak_and_plain_qwen_is_not(prewarm_runs: dict) -> None:  # type: ignore[type-arg]
    q, s = prewarm_runs["qwen"], prewarm_runs["qwen+schedule"]
    before_peak = 9 * 3600.0  # the window opened a cold start earlier; the rise starts now
    assert _replicas_at(s, before_peak) > _replicas_at(q, before_peak)
    assert s.floor_decisions > 0 and q.floor_decisions == 0
    assert s.gpu_hours > q.gpu_hours  # pre-warming is not free


def test_predictive_variant_learns_day_one_and_prewarms_day_two(prewarm_runs: dict) -> None:  # type: ignore[type-arg]
    q, p = prewarm_runs["qwen"], prewarm_runs["qwen+predictive"]
    day1, day2 = 9 * 3600.0, 86400.0 + 9 * 3600.0
    assert _replicas_at(p, day1) == _replicas_at(q, day1)  # nothing to learn from yet
    assert _replicas_at(p, day2) > _replicas_at(q, day2)
    assert p.floor_decisions > 0


def test_cli_policy_lists_and_groups() -> None:
    from qwen_operator.sim.cli import parse_policies

    assert parse_policies("all") == ("qwen", "hpa-queue", "static-peak", "static-mean", "oracle")
    assert parse_policies("prewarm") == ("qwen", "qwen+schedule", "qwen+predictive", "oracle")
    assert parse_policies("qwen, qwen+schedule,qwen") == ("qwen", "qwen+schedule")
    with pytest.raises(UserError, match=r"--policy: 'qwen\+magic' is not valid"):
        parse_policies("qwen+magic")


# --- routing: the router's algorithm against a Service and plain least-outstanding ----------------

from qwen_operator.sim.capacity import PoolProfile, smallest_fit  # noqa: E402
from qwen_operator.sim.fleet import ROUTINGS, Fleet, router_pools, serve_fixed  # noqa: E402

SLO = 1.2


def planner_profile(gpu: str) -> PoolProfile:
    """A pool weighted by the replica model's requests/s within the SLO for 512/128-token requests."""
    r = smallest_fit("Qwen/Qwen3-14B", gpu, "fp8")
    assert r is not None
    cap = r.slo_capacity(512, 128, SLO)
    return PoolProfile(gpu, r.shards, r, r.gpu.price_per_gpu_hour, cap.rate, cap.concurrency, r.cold_start_seconds)


@pytest.fixture(scope="module")
def mixed() -> dict[str, PoolProfile]:
    return {g: planner_profile(g) for g in ("L40S", "A10G")}


def poisson(rate: float, seconds: float, seed: int = 1) -> list[float]:
    rng, t, out = random.Random(seed), 0.0, list[float]()
    while True:
        t += rng.expovariate(rate)
        if t >= seconds:
            return out
        out.append(t)


def test_router_pools_publish_the_slo_rate_prefill_speed_and_concurrency_bound(mixed: dict) -> None:  # type: ignore[type-arg]
    caps = router_pools(mixed)
    assert caps["L40S"].weight == mixed["L40S"].rate_at_slo > 5 * caps["A10G"].weight
    assert caps["L40S"].prefill_tokens_per_second == mixed["L40S"].replica.prefill_tokens_per_second
    assert caps["A10G"].max_concurrency == 128


def test_router_holds_the_slo_on_mixed_pools_where_a_service_breaks(mixed: dict) -> None:  # type: ignore[type-arg]
    fleet = {"L40S": 2, "A10G": 4}
    planned = sum(mixed[g].rate_at_slo * n for g, n in fleet.items())
    arr = poisson(0.6 * planned, 180.0)
    n = len(arr)
    runs = {r: serve_fixed(mixed, fleet, arr, [512] * n, [128] * n, r, SLO) for r in ROUTINGS}
    assert runs["router"].p95_seconds <= SLO and runs["router"].rejected == 0
    assert runs["service"].p95_seconds > SLO  # uniform: the A10G replicas get 1/6 of the traffic each
    assert runs["router"].p95_seconds < runs["least-outstanding"].p95_seconds < runs["service"].p95_seconds


@pytest.mark.parametrize(("routing", "long_on_a10g"), [("router", False), ("least-outstanding", True)])
def test_router_keeps_long_prompts_off_a_pool_whose_prefill_breaks_the_slo(
    mixed: dict,  # type: ignore[type-arg]
    routing: str,
    long_on_a10g: bool,
) -> None:
    fl = Fleet(mixed, {"L40S": 1, "A10G": 2}, "ttft", routing, SLO)
    fl.apply(0.0, {"L40S": 1, "A10G": 2}, instant=True)
    went: dict[tuple[str, int], int] = {}
    for i, t in enumerate(poisson(2.0, 60.0)):
        fl.sync(t)
        prompt = 2048 if i % 2 else 256  # a 2,048-token prefill takes ~1.6 s on an idle A10G
        r = fl.route(t, prompt, 64)
        assert r is not None
        went[r.pool, prompt] = went.get((r.pool, prompt), 0) + 1
    assert (went.get(("A10G", 2048), 0) > 0) == long_on_a10g
    assert went.get(("L40S", 2048), 0) > 0


def test_unknown_routing_is_rejected() -> None:
    with pytest.raises(ValueError, match="routing 'dns'"):
        Fleet({}, {}, "ttft", "dns")


def test_cli_routing_flag_is_validated_and_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from qwen_operator.cli import build_parser

    args = build_parser().parse_args(["simulate", "--routing", "round-robin"])
    with pytest.raises(UserError, match="--routing: 'round-robin' is not valid; valid: router, least-outstanding"):
        args.handler(args)

"""Cold start "weights on node" vs "weights pulled now" in the replica model and ``qwenctl simulate``
(all figures simulated)."""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from pathlib import Path

import pytest

from qwen_operator.capacity import model as pm
from qwen_operator.capacity.model import ColdStart, ReplicaModel
from qwen_operator.catalog import DEFAULT_MODELS
from qwen_operator.cli import UserError, build_parser, main
from qwen_operator.sim.cli import parse_bandwidth
from qwen_operator.sim.fleet import Fleet
from qwen_operator.sim.simulate import SimConfig, build_profiles, prewarm_lead, simulate_policy
from qwen_operator.sim.trace import Trace, TraceRow

ROWS = [TraceRow(i * 1.0, 300 + (i * 37) % 900, 40 + (i * 13) % 160) for i in range(400)]


def test_on_node_breakdown_sums_to_the_cold_start_the_controller_uses() -> None:
    r = ReplicaModel.build("Qwen3-14B", "L40S", 1, "fp8")
    c = r.cold_start
    assert c.on_node == pytest.approx(c.process_start_s + c.tp_init_s + c.load_s + c.warmup_s)
    assert r.cold_start_seconds == c.on_node
    assert c.tp_init_s == 0.0  # one shard: no NCCL communicator
    assert ReplicaModel.build("Qwen3-14B", "A10G", 2, "none").cold_start.tp_init_s == pm.TP_INIT_S


def test_pulled_adds_the_whole_checkpoint_download_before_loading() -> None:
    r = ReplicaModel.build("Qwen3-14B", "A10G", 1, "fp8")
    bw = 500e6
    pull = DEFAULT_MODELS["Qwen/Qwen3-14B"].weight_bytes("fp8") / bw
    assert r.cold_start_pull_seconds(bw) == pytest.approx(r.cold_start_seconds + pull)
    assert r.cold_start.pull_seconds(bw) == pytest.approx(pull)
    assert r.cold_start_pull_seconds() == pytest.approx(r.cold_start.pulled(pm.DEFAULT_REGISTRY_BYTES_PER_S))


def test_a_sharded_replica_pulls_every_shard_not_one_gpus_share() -> None:
    one = ReplicaModel.build("Qwen3-14B", "A10G", 1, "fp8")
    two = ReplicaModel.build("Qwen3-14B", "A10G", 2, "fp8")
    # each GPU loads half the weights, but the node's init container downloads the whole checkpoint
    assert two.cold_start.load_s == pytest.approx(one.cold_start.load_s)  # load reads all shards' files too
    assert two.cold_start.checkpoint_bytes == pytest.approx(2 * two.weight_bytes_per_gpu)
    assert two.cold_start.pull_seconds(1e9) == pytest.approx(one.cold_start.pull_seconds(1e9))
    bf16 = ReplicaModel.build("Qwen3-14B", "A100-80GB", 1, "none")
    assert bf16.cold_start.pull_seconds(1e9) > 1.7 * one.cold_start.pull_seconds(1e9)  # 2 bytes/param vs 1


def test_slower_registry_means_a_longer_cold_start() -> None:
    c = ReplicaModel.build("Qwen3-14B", "L40S", 1, "fp8").cold_start
    times = [c.pulled(bw) for bw in (100e6, 680e6, 5e9)]
    assert times == sorted(times, reverse=True)
    assert all(t > c.on_node for t in times)


def test_default_registry_bandwidth_is_parallel_gets_times_the_per_connection_figure() -> None:
    assert pm.DEFAULT_REGISTRY_BYTES_PER_S == pm.REGISTRY_PULL_STREAMS * pm.REGISTRY_BYTES_PER_S_PER_STREAM
    assert 85e6 <= pm.REGISTRY_BYTES_PER_S_PER_STREAM <= 90e6  # AWS S3 guide: 85-90 MB/s per connection
    assert pm.DEFAULT_REGISTRY_BYTES_PER_S < 1.25e9  # under a 10 Gb/s NIC


@pytest.mark.parametrize("bw", [0.0, -1.0, math.nan, math.inf])
def test_bad_bandwidth_is_refused(bw: float) -> None:
    c = ColdStart(15.0, 0.0, 16.0, 20.0, 16e9)
    with pytest.raises(ValueError, match="registry bandwidth"):
        c.pulled(bw)


def test_weights_mode_selects_the_cold_start() -> None:
    c = ColdStart(15.0, 5.0, 16.0, 20.0, 16e9)
    assert c.seconds("on-node") == 56.0
    assert c.seconds("pulled", 1e9) == 72.0
    with pytest.raises(ValueError, match="weights 'maybe'"):
        c.seconds("maybe")


# --- the simulated fleet ---------------------------------------------------------------------------

CFG = SimConfig(gpus={"L40S": 4}, seed=1)


@pytest.fixture(scope="module")
def both() -> dict[str, dict]:  # type: ignore[type-arg]
    return {
        "on-node": build_profiles(ROWS, CFG)[0],
        "pulled": build_profiles(ROWS, replace(CFG, weights="pulled", registry_bytes_per_s=20e6))[0],
    }


def test_profiles_carry_the_cold_start_of_the_weights_mode(both: dict) -> None:  # type: ignore[type-arg]
    on, pulled = both["on-node"]["L40S"], both["pulled"]["L40S"]
    assert on.cold_start_seconds == pytest.approx(on.replica.cold_start_seconds)
    assert pulled.cold_start_seconds == pytest.approx(pulled.replica.cold_start_pull_seconds(20e6))
    assert pulled.rate_at_slo == on.rate_at_slo  # serving speed is the same; only the start differs
    # the controller's pre-warm lead models the on-node cold start either way
    assert prewarm_lead(both["pulled"], CFG) == pytest.approx(prewarm_lead(both["on-node"], CFG))


def test_unknown_weights_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="weights 'cached'"):
        build_profiles(ROWS, replace(CFG, weights="cached"))


def test_a_scale_out_replica_becomes_ready_after_its_pools_cold_start(both: dict) -> None:  # type: ignore[type-arg]
    for mode, profiles in both.items():
        fleet = Fleet(profiles, CFG.gpus, "ttft")
        fleet.apply(0.0, {"L40S": 1}, instant=True)
        fleet.apply(100.0, {"L40S": 2})
        cold = profiles["L40S"].cold_start_seconds
        assert sorted(r.ready_at for r in fleet.active) == [0.0, pytest.approx(100.0 + cold)], mode
        assert fleet.ready_counts(100.0 + cold - 1.0)["L40S"] == 1
        assert fleet.ready_counts(100.0 + cold)["L40S"] == 2


def _spike(base: float = 0.5, peak: float = 12.0, minutes: int = 40) -> Trace:
    rng = random.Random(5)
    tr = Trace("spike", "test")
    t = 0.0
    while True:
        t += rng.expovariate(peak if 8 * 60 <= t < 20 * 60 else base)
        if t >= minutes * 60:
            break
        row = ROWS[rng.randrange(len(ROWS))]
        tr.arrivals.append(t)
        tr.prompt_tokens.append(row.prompt_tokens)
        tr.output_tokens.append(row.output_tokens)
    tr.duration = minutes * 60.0
    return tr


def test_pulling_weights_at_scale_out_costs_slo_minutes_on_a_spike(both: dict) -> None:  # type: ignore[type-arg]
    tr = _spike()
    on = simulate_policy("qwen", tr, both["on-node"], CFG)
    pulled = simulate_policy("qwen", tr, both["pulled"], replace(CFG, weights="pulled", registry_bytes_per_s=20e6))
    assert on.scale_events > 0
    assert pulled.slo_minutes_fraction < on.slo_minutes_fraction
    assert pulled.rejected >= on.rejected


# --- qwenctl simulate ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1G", float(1 << 30)),
        ("680M", 680.0 * (1 << 20)),
        ("500k", 500.0 * 1024),
        ("6.8e8", 6.8e8),
        (" 2g ", 2.0 * (1 << 30)),
    ],
)
def test_parse_bandwidth(text: str, expected: float) -> None:
    assert parse_bandwidth(text) == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--weights", "cached"], "--weights: 'cached' is not valid; valid: on-node, pulled"),
        (["--weights", "pulled", "--registry-bandwidth", "0"], "--registry-bandwidth: '0' must be a positive"),
        (["--weights", "pulled", "--registry-bandwidth", "fast"], "--registry-bandwidth: 'fast' must be a positive"),
        (["--registry-bandwidth=-1G"], "--registry-bandwidth: '-1G' must be a positive"),
        (["--registry-bandwidth", "G"], "--registry-bandwidth: 'G' must be a positive"),
    ],
)
def test_bad_weight_flags_raise_user_errors(argv: list[str], message: str) -> None:
    args = build_parser().parse_args(["simulate", *argv])
    with pytest.raises(UserError, match=message):
        args.handler(args)


def _csv(tmp_path: Path) -> Path:
    csv = tmp_path / "t.csv"
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    rng = random.Random(2)
    t = 0.0
    while t < 300:
        t += rng.expovariate(2.0)
        row = ROWS[rng.randrange(len(ROWS))]
        lines.append(f"2023-11-16 18:{int(t // 60):02d}:{t % 60:09.6f},{row.prompt_tokens},{row.output_tokens}")
    csv.write_text("\n".join(lines) + "\n")
    return csv


def test_cli_reports_which_cold_start_it_used(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = _csv(tmp_path)
    base = ["simulate", "--trace", str(csv), "--gpus", "l40s=2", "--policy", "qwen"]
    assert main([*base, "--json", str(tmp_path / "on.json")]) == 0
    printed = capsys.readouterr().out
    assert "cold start: weights on node" in printed
    on = json.loads((tmp_path / "on.json").read_text())
    assert on["weights"] == "on-node" and on["registry_bytes_per_s"] is None

    out = tmp_path / "pulled.json"
    assert main([*base, "--weights", "pulled", "--registry-bandwidth", "100M", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "cold start: weights pulled now" in printed
    assert f"{100 * (1 << 20) / 1e6:,.0f} MB/s" in printed
    pulled = json.loads(out.read_text())
    assert pulled["weights"] == "pulled"
    assert pulled["registry_bytes_per_s"] == 100 * (1 << 20)
    r = ReplicaModel.build("Qwen3-14B", "L40S", 1, "fp8")
    assert pulled["cold_start_seconds"]["L40S"] == pytest.approx(r.cold_start_pull_seconds(100 * (1 << 20)))
    assert on["cold_start_seconds"]["L40S"] == pytest.approx(r.cold_start_seconds)
    assert "pull of 16.3 GB" in printed

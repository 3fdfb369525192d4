"""Tests of the trace loader and the synthetic envelopes (small CSVs written by the tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwen_operator.sim.trace import (
    ENVELOPES,
    TraceError,
    TraceRow,
    build_trace,
    default_trace_path,
    envelope_multiplier,
    load_azure_csv,
)


def write_csv(path: Path, n: int = 120, every: float = 0.5) -> Path:
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for i in range(n):
        sec = 10 + i * every
        lines.append(f"2023-11-16 18:{int(sec // 60):02d}:{sec % 60:09.6f},{100 + i},{10 + i % 7}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_load_offsets_from_first_request(tmp_path: Path) -> None:
    rows = load_azure_csv(write_csv(tmp_path / "t.csv", n=5, every=2.0))
    assert [r.offset for r in rows] == pytest.approx([0.0, 2.0, 4.0, 6.0, 8.0])
    assert rows[0].prompt_tokens == 100
    assert rows[3].output_tokens == 13


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a,b,c\n1,2,3\n", "expected columns"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n", "no requests"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\nnot-a-time,1,2\n", ":2:"),
    ],
)
def test_bad_csv_names_the_problem(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(TraceError, match=message):
        load_azure_csv(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="does not exist"):
        load_azure_csv(tmp_path / "nope.csv")


def test_default_trace_ships_with_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A fresh clone or a pip-installed qwenctl finds the trace inside the package, nowhere else."""
    monkeypatch.delenv("QWEN_TRACES_DIR", raising=False)
    path = default_trace_path()
    assert path.parts[-4:] == ("qwen_operator", "sim", "data", "azure-llm-conv-2023.csv.gz")
    assert "shared" not in path.parts
    rows = load_azure_csv(path)
    assert len(rows) == 19366  # the published hour, every request
    assert (path.parent / "README.md").read_text().count("CC-BY 4.0") >= 1
    monkeypatch.setenv("QWEN_TRACES_DIR", str(tmp_path))
    assert default_trace_path() == tmp_path / "azure-llm-conv-2023.csv"
    with pytest.raises(TraceError, match="unset \\$QWEN_TRACES_DIR"):
        load_azure_csv(default_trace_path())


def test_flat_replays_as_recorded(tmp_path: Path) -> None:
    rows = load_azure_csv(write_csv(tmp_path / "t.csv"))
    tr = build_trace(rows, "flat")
    assert tr.arrivals == [r.offset for r in rows]
    assert tr.prompt_tokens == [r.prompt_tokens for r in rows]


@pytest.mark.parametrize(
    ("hour", "expected"),
    [(3.0, 0.08), (8.5, 1.0), (10.0, 4.0), (13.0, 1.0), (22.0, 0.08)],
)
def test_diurnal_envelope_shape(hour: float, expected: float) -> None:
    assert envelope_multiplier(ENVELOPES["diurnal"], hour * 3600) == pytest.approx(expected)


def test_diurnal_spike_is_300_percent_over_base_and_night_is_mostly_trough() -> None:
    env = ENVELOPES["diurnal"]
    minutes = [envelope_multiplier(env, m * 60.0 + 30) for m in range(1440)]
    low = sum(1 for v in minutes if v < 0.5) / len(minutes)
    assert 0.65 <= low <= 0.75
    assert max(minutes) / 1.0 == pytest.approx(4.0)


def rows_uniform(n: int = 600) -> list[TraceRow]:
    return [TraceRow(i * 6.0, 100 + i, 20 + i % 5) for i in range(n)]  # 1 req / 6 s over an hour


def test_diurnal_is_deterministic_and_follows_the_envelope() -> None:
    rows = rows_uniform()
    a = build_trace(rows, "diurnal", seed=3, rate_scale=20.0)
    b = build_trace(rows, "diurnal", seed=3, rate_scale=20.0)
    c = build_trace(rows, "diurnal", seed=4, rate_scale=20.0)
    assert a.arrivals == b.arrivals
    assert a.arrivals != c.arrivals
    assert a.duration == 86400.0
    night = sum(1 for t in a.arrivals if 2 * 3600 <= t < 4 * 3600)
    spike = sum(1 for t in a.arrivals if 9.5 * 3600 <= t < 10.5 * 3600)
    day = sum(1 for t in a.arrivals if 12 * 3600 <= t < 13 * 3600)
    # base 1/6 x 20 = 3.33 req/s: ~12,000 per daytime hour, x4 in the spike, x0.08 at night
    assert spike / day == pytest.approx(4.0, rel=0.1)
    assert night / 2 / day == pytest.approx(0.08, rel=0.2)
    sizes = {(r.prompt_tokens, r.output_tokens) for r in rows}
    assert all((p, g) in sizes for p, g in zip(a.prompt_tokens[:500], a.output_tokens[:500], strict=True))


def test_week_has_a_friday_batch_of_long_documents() -> None:
    tr = build_trace(rows_uniform(), "week", seed=1, rate_scale=1.0)
    friday_14 = 4 * 86400 + 14 * 3600
    batch = [i for i, t in enumerate(tr.arrivals) if friday_14 <= t < friday_14 + 120 and tr.prompt_tokens[i] >= 3000]
    assert len(batch) >= 100
    assert tr.duration == 7 * 86400


def test_unknown_envelope() -> None:
    with pytest.raises(TraceError, match="valid: flat, diurnal, week"):
        build_trace(rows_uniform(10), "monthly")

"""The demo's live view and timeline (pure formatting + a real PNG)."""

from __future__ import annotations

from pathlib import Path

from qwen_operator.sandbox.demo_view import Row, render_row, write_timeline


def test_live_view_line_counts_pools_by_label_or_name_and_says_simulated() -> None:
    row = Row(
        t=12,
        phase="spike",
        sent=40,
        ready={"l40s": 1, "A100-80GB": 1},
        running={"l40s": 1, "A100-80GB": 2},
        desired=3,
        queue=7.0,
        p95=0.84,
        cost=12.10,
        version="sha256:9668697efd6463024acfd9",
    )
    text = render_row(row, header=True)
    assert "SIMULATED" in text.splitlines()[0]
    line = text.splitlines()[1]
    assert "L40S 1/1" in line and "A100-80GB 1/2" in line and "A10G -" in line
    # pools in the planner's fill order: spill-over reads left to right
    assert line.index("L40S") < line.index("A100-80GB") < line.index("A10G")
    assert "desired 3" in line and "P95  0.84s" in line and "$ 12.10/h" in line and "sha256:9668697efd64" in line


def test_timeline_png_is_written(tmp_path: Path) -> None:
    rows = [
        Row(
            t=float(i),
            phase="base",
            sent=i * 3,
            ready={"l40s": 1, "a100-80gb": i // 5},
            running={"l40s": 1, "a100-80gb": i // 4},
            desired=1 + i // 4,
            p95=0.5 if i % 3 else None,
            cost=1.861 + 5.12 * (i // 5),
            version="v1" if i < 10 else "v2",
        )
        for i in range(20)
    ]
    out = write_timeline(rows, [(8.0, "model v2 published")], tmp_path / "t.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000

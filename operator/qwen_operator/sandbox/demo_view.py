"""What the demo shows: one terminal line every two seconds, and a PNG timeline at the end.

Pure formatting (no I/O besides writing the PNG): :class:`Row` is one observation of the
world (SIMULATED fleet + the operator's status), :func:`render_row` the live view,
:func:`write_timeline` the picture people would rather look at than read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: In the planner's fill order for the demo's chat profile (spill-over reads left to right).
POOLS = ("L40S", "A100-80GB", "A10G")


@dataclass(frozen=True)
class Row:
    t: float  # seconds since the load started
    phase: str
    sent: int  # requests sent so far
    ready: dict[str, int] = field(default_factory=dict)  # per pool, routable replicas
    running: dict[str, int] = field(default_factory=dict)  # per pool, replicas with a process (loading or ready)
    desired: int = 0  # status.autoscaler.desiredReplicas
    queue: float | None = None  # sum(tgi_queue_size) from Prometheus
    p95: float | None = None  # P95 queue wait (the SLO latency) over the last window
    cost: float = 0.0  # $/h of the pools (status.pools[].costPerHour)
    version: str = "-"  # status.model.currentVersion
    decision: str = ""
    routers: int = 0  # Ready router pods (qwenctl router processes) the load goes through


def _count(counts: dict[str, int], pool: str) -> int:
    """Counts keyed by catalog name (A10G) or pool label (a10g)."""
    return counts.get(pool, 0) + counts.get(pool.lower(), 0)


def _pools(row: Row) -> str:
    cells = []
    for pool in POOLS:
        r, n = _count(row.ready, pool), _count(row.running, pool)
        cells.append(f"{pool} {r}/{n}" if n else f"{pool} -")
    return "  ".join(f"{c:<14}" for c in cells)


def render_row(row: Row, header: bool = False) -> str:
    """One line of the live view (with a header line every so often)."""
    line = (
        f"{row.t:6.0f}s  {row.phase:<7} routers {row.routers}  {_pools(row)} desired {row.desired:<3}"
        f"queue {'-' if row.queue is None else f'{row.queue:5.1f}'}  "
        f"P95 {'-' if row.p95 is None else f'{row.p95:5.2f}s'}  ${row.cost:6.2f}/h  "
        f"model {row.version[:19]}"
    )
    if not header:
        return line
    head = (
        "  time  phase   router pods  ready/running per pool (SIMULATED TGI fleet)          autoscaler"
        "  queue    P95 TTFT-wait  cost      model"
    )
    return head + "\n" + line


def write_timeline(rows: Sequence[Row], events: Sequence[tuple[float, str]], out: Path, slo: float = 1.2) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r.t for r in rows]
    fig, axes = plt.subplots(4, 1, figsize=(11, 10), sharex=True)
    rate = [0.0] + [max(0.0, (b.sent - a.sent) / max(b.t - a.t, 1e-9)) for a, b in zip(rows, rows[1:], strict=False)]
    axes[0].plot(t, rate, color="0.4")
    axes[0].set_ylabel("load (req/s)")
    for i, pool in enumerate(POOLS):
        axes[1].step(t, [_count(r.ready, pool) for r in rows], where="post", label=f"{pool} ready", color=f"C{i}")
        axes[1].step(t, [_count(r.running, pool) for r in rows], where="post", linestyle=":", color=f"C{i}")
    axes[1].step(t, [r.desired for r in rows], where="post", color="k", linewidth=0.8, label="desired (autoscaler)")
    axes[1].set_ylabel("replicas")
    axes[1].legend(loc="upper left", fontsize=8)
    axes[2].plot(t, [r.p95 if r.p95 is not None else float("nan") for r in rows], color="C3")
    axes[2].axhline(slo, color="C3", linestyle="--", linewidth=0.8)
    axes[2].set_ylabel("P95 TTFT wait (s)")
    axes[3].step(t, [r.cost for r in rows], where="post", color="C2")
    axes[3].set_ylabel("$/h")
    axes[3].set_xlabel("seconds")
    versions = [(r.t, r.version) for i, r in enumerate(rows) if i == 0 or r.version != rows[i - 1].version]
    for ax in axes:
        for when, _label in events:
            ax.axvline(when, color="C4", linestyle="--", linewidth=0.8)
        for when, _v in versions[1:]:
            ax.axvline(when, color="C5", linewidth=0.8)
    for when, label in events:
        axes[0].annotate(label, (when, 0), fontsize=8, rotation=90, va="bottom")
    for when, v in versions[1:]:
        axes[0].annotate(f"serving {v[:19]}", (when, 0), fontsize=8, rotation=90, va="bottom", color="C5")
    fig.suptitle("qwen-operator demo: sandbox control plane, real Prometheus and S3; SIMULATED TGI fleet")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

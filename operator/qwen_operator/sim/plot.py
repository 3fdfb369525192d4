"""Plot of a simulation: load, replicas per pool and P95 against time, one panel per policy.

Why it exists: a table hides *when* a policy was late or wasteful; the plot shows the
morning spike, the cold starts and the slow scale-down side by side. Kept apart from
:mod:`.simulate` because matplotlib is an optional dependency (``.[plot]``); every figure
is titled as SIMULATED.
"""

from __future__ import annotations

import math
from pathlib import Path

from .simulate import PolicyResult


def plot_results(results: dict[str, PolicyResult], out: str | Path, title: str, slo: float) -> None:
    """Write a PNG with one row per policy (load + replicas on the left axis, P95 on the right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    fig, axes = plt.subplots(n, 1, figsize=(12, 2.6 * n), sharex=True, squeeze=False)
    for ax, (name, r) in zip(axes[:, 0], results.items(), strict=True):
        tl = r.timeline
        hours = [t / 3600.0 for t in tl.t]
        ax.plot(hours, tl.load, color="0.6", lw=0.8, label="load (req/s)")
        ax.set_ylabel("req/s | replicas")
        bottom = [0] * len(hours)
        for pool, counts in tl.replicas.items():
            top = [b + c for b, c in zip(bottom, counts, strict=True)]
            ax.fill_between(hours, bottom, top, step="post", alpha=0.35, label=f"{pool} replicas")
            bottom = top
        ax2 = ax.twinx()
        ax2.plot(hours, [v if not math.isnan(v) else None for v in tl.p95], color="tab:red", lw=0.8, label="P95 (s)")
        ax2.axhline(slo, color="tab:red", ls="--", lw=0.6)
        ax2.set_ylabel("P95 s")
        ax.set_title(
            f"SIMULATED - {name}: {r.gpu_hours:.1f} GPU-h, {r.slo_minutes_fraction:.1%} SLO minutes, "
            f"{r.rejected_fraction:.2%} rejected",
            fontsize=9,
        )
        handles = ax.get_legend_handles_labels()
        handles2 = ax2.get_legend_handles_labels()
        ax.legend(handles[0] + handles2[0], handles[1] + handles2[1], loc="upper left", fontsize=7)
    axes[-1, 0].set_xlabel("hours")
    fig.suptitle(title + " (SIMULATED fleet)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)

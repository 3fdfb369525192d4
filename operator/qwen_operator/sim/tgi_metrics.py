"""TGI's Prometheus metrics, as the simulated server exposes them.

The autoscaler's PromQL (``tgi_queue_size``, ``histogram_quantile(0.95, ...
tgi_request_duration_bucket ...)``) must work unchanged against simulated replicas, so the
names, label and buckets are TGI's own: counters without a ``_total`` suffix (TGI renders
them through ``metrics-exporter-prometheus``), histogram buckets ``0.0001 x 1.5^n`` for
n = 1..35 (up to ~145 s). Pure: it only formats text.
"""

from __future__ import annotations

import bisect

#: TGI's duration buckets (router ``main.rs``: ``duration_matcher`` 0.0001 x 1.5^n).
DURATION_BUCKETS: tuple[float, ...] = tuple(0.0001 * 1.5**n for n in range(1, 36))


class Histogram:
    """A cumulative Prometheus histogram with fixed upper bounds."""

    def __init__(self, bounds: tuple[float, ...] = DURATION_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def render(self, name: str) -> list[str]:
        lines = [f"# TYPE {name} histogram"]
        cumulative = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            cumulative += n
            lines.append(f'{name}_bucket{{le="{bound!r}"}} {cumulative}')
        lines.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{name}_sum {self.sum!r}")
        lines.append(f"{name}_count {self.count}")
        return lines


class TGIMetrics:
    """The subset of TGI's metrics the operator reads, plus a few it shows to people."""

    def __init__(self, max_total_tokens: int = 4096) -> None:
        self.request_count = 0
        self.request_success = 0
        self.request_failure: dict[str, int] = {}
        self.duration = Histogram()
        self.queue_duration = Histogram()
        # generated tokens per successful request (TGI's tgi_request_generated_tokens): 100 equal buckets
        # up to the replica's total-token limit (the autoscaler reads only _sum and _count)
        step = max(1, max_total_tokens) / 100
        self.generated_tokens = Histogram(tuple(step * (i + 1) for i in range(100)))

    def failure(self, err: str) -> None:
        self.request_failure[err] = self.request_failure.get(err, 0) + 1

    def render(self, queue_size: int, batch_size: int, kv_reserved: int, header: str) -> str:
        lines = [f"# {header}"]
        lines += ["# TYPE tgi_queue_size gauge", f"tgi_queue_size {queue_size}"]
        lines += ["# TYPE tgi_batch_current_size gauge", f"tgi_batch_current_size {batch_size}"]
        lines += ["# TYPE tgi_batch_current_max_tokens gauge", f"tgi_batch_current_max_tokens {kv_reserved}"]
        lines += ["# TYPE tgi_request_count counter", f"tgi_request_count {self.request_count}"]
        lines += ["# TYPE tgi_request_success counter", f"tgi_request_success {self.request_success}"]
        lines.append("# TYPE tgi_request_failure counter")
        lines += [f'tgi_request_failure{{err="{err}"}} {n}' for err, n in sorted(self.request_failure.items())]
        lines += self.duration.render("tgi_request_duration")
        lines += self.queue_duration.render("tgi_request_queue_duration")
        lines += self.generated_tokens.render("tgi_request_generated_tokens")
        return "\n".join(lines) + "\n"

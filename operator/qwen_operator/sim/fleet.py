"""The simulated fleet: replicas per GPU pool, cold starts, draining, a least-outstanding balancer.

Why it exists: the simulator (:mod:`.simulate`) needs the mechanics every policy shares
(pods that take a cold start to become ready, scale-down that drains in-flight requests
before the GPU is released, a load balancer, GPU-hour accounting, the Prometheus-like
signals) kept apart from the policy loop. Each replica runs the shared continuous-batching
engine (:mod:`.engine`) on the shared replica model (:mod:`.model`). Everything here is
SIMULATED.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from .capacity import PoolProfile, latency_of
from .engine import OVERLOADED, ReplicaEngine, Request

P95_WINDOW_SECONDS = 60.0  # rate(...[1m]) in the DESIGN.md PromQL


@dataclass(eq=False)
class Replica:
    pool: str
    engine: ReplicaEngine
    created: float
    ready_at: float
    outstanding: int = 0  # what the balancer counts: sent, response not yet seen
    draining_since: float | None = None
    last_finish: float = 0.0


@dataclass
class Stats:
    """What every policy is scored on, accumulated while the fleet runs."""

    requests: int = 0
    rejected: int = 0  # HTTP 429 (TGI max_concurrent_requests) or no ready replica
    invalid: int = 0  # HTTP 422: prompt over max_input_tokens (same for every policy)
    gpu_seconds: float = 0.0
    cost_usd: float = 0.0
    latencies: list[float] = field(default_factory=list)
    per_minute: dict[int, list[float]] = field(default_factory=dict)  # arrival minute -> latencies (inf = rejected)


class Fleet:
    """Replicas of each pool, the balancer in front of them and the signals it exports."""

    def __init__(self, profiles: dict[str, PoolProfile], gpu_limits: dict[str, int], metric: str) -> None:
        self.profiles = profiles
        self.limits = {name: gpu_limits.get(name, 0) // p.shards for name, p in profiles.items()}
        self.metric = metric
        self.active: list[Replica] = []
        self.draining: list[Replica] = []
        self.stats = Stats()
        self._window: deque[tuple[float, float]] = deque()
        self._outstanding = 0
        self._arrivals: deque[float] = deque()
        self._weight = {name: max(p.concurrency_at_slo, 1.0) for name, p in profiles.items()}

    # --- shape of the fleet ------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(self.profiles, 0)
        for r in self.active:
            out[r.pool] += 1
        return out

    def ready_counts(self, now: float) -> dict[str, int]:
        out = dict.fromkeys(self.profiles, 0)
        for r in self.active:
            if r.ready_at <= now:
                out[r.pool] += 1
        return out

    def free(self, pool: str) -> int:
        """Replicas of ``pool`` that still fit on its GPUs (draining replicas hold theirs)."""
        used = sum(1 for r in self.active if r.pool == pool) + sum(1 for r in self.draining if r.pool == pool)
        return max(0, self.limits[pool] - used)

    def apply(self, now: float, desired: dict[str, int], instant: bool = False) -> None:
        """Converge each pool to ``desired`` replicas: create (cold start) or drain."""
        for pool, want in desired.items():
            mine = [r for r in self.active if r.pool == pool]
            if want > len(mine):
                prof = self.profiles[pool]
                for _ in range(min(want - len(mine), self.free(pool))):
                    ready = now if instant else now + prof.cold_start_seconds
                    self.active.append(Replica(pool, ReplicaEngine(prof.replica, start_time=ready), now, ready))
            elif want < len(mine):
                # starting pods go first (newest first), then the least loaded ready ones
                victims = sorted(mine, key=lambda r: (r.ready_at <= now, -r.ready_at, r.outstanding))
                for r in victims[: len(mine) - want]:
                    self.active.remove(r)
                    if r.ready_at > now or r.outstanding == 0:
                        self._release(r, now)
                    else:
                        r.draining_since = now
                        self.draining.append(r)

    def _release(self, r: Replica, end: float) -> None:
        prof = self.profiles[r.pool]
        seconds = max(0.0, end - r.created)
        self.stats.gpu_seconds += seconds * prof.shards
        self.stats.cost_usd += seconds / 3600.0 * prof.cost_per_hour

    def close(self, end: float) -> None:
        """End of the trace: finish every request, bill every replica."""
        for r in self.active + self.draining:
            for req in r.engine.advance(math.inf):
                self._record(req)
                r.last_finish = max(r.last_finish, req.finish)
        for r in self.active:
            self._release(r, end)
        for r in self.draining:
            self._release(r, max(r.last_finish, r.draining_since or end))
        self.active, self.draining = [], []

    # --- traffic -----------------------------------------------------------------------
    def request_rate(self, now: float) -> float:
        """``sum(rate(tgi_request_count[1m]))``: requests per second that arrived in the last minute."""
        while self._arrivals and self._arrivals[0] < now - P95_WINDOW_SECONDS:
            self._arrivals.popleft()
        return len(self._arrivals) / P95_WINDOW_SECONDS

    def route(self, t: float, prompt: int, output: int) -> None:
        """Weighted least outstanding requests among ready replicas (ties: oldest replica).

        The weight of a replica is its pool's concurrency at the SLO (what the operator
        would publish as endpoint weights, e.g. Envoy's weighted ``LEAST_REQUEST``): plain
        least-outstanding would hand an A100 replica, which holds ~7 streams within the
        SLO, as many requests as an L40S holding ~70.
        """
        self.stats.requests += 1
        self._arrivals.append(t)
        minute = int(t // 60)
        best: Replica | None = None
        best_load = math.inf
        for r in self.active:
            if r.ready_at <= t:
                load = r.outstanding / self._weight[r.pool]
                if load < best_load:
                    best, best_load = r, load
        if best is None:
            self._reject(minute)
            return
        req = Request(t, prompt, output)
        if best.engine.submit(req):
            best.outstanding += 1
            self._outstanding += 1
        elif req.status == OVERLOADED:
            self._reject(minute)
        else:
            self.stats.invalid += 1

    def _reject(self, minute: int) -> None:
        self.stats.rejected += 1
        self.stats.per_minute.setdefault(minute, []).append(math.inf)

    def sync(self, t: float) -> None:
        """Let every replica run to ``t`` and hand finished requests back to the balancer."""
        if self._outstanding == 0:
            return
        for r in self.active:
            if r.outstanding:
                self._collect(r, r.engine.advance(t))
        if self.draining:
            for r in list(self.draining):
                self._collect(r, r.engine.advance(t))
                if r.outstanding == 0:
                    self.draining.remove(r)
                    self._release(r, r.last_finish)

    def _collect(self, r: Replica, done: list[Request]) -> None:
        for req in done:
            r.outstanding -= 1
            self._outstanding -= 1
            r.last_finish = max(r.last_finish, req.finish)
            self._record(req)

    def _record(self, req: Request) -> None:
        lat = latency_of(req, self.metric)
        self.stats.latencies.append(lat)
        self.stats.per_minute.setdefault(int(req.arrival // 60), []).append(lat)
        seen = req.first_token if self.metric == "ttft" else req.finish
        self._window.append((seen, lat))

    # --- signals (what Prometheus would return) ----------------------------------------
    def p95(self, now: float) -> float:
        """P95 latency of requests observed in the last minute; NaN when there were none."""
        while self._window and self._window[0][0] < now - P95_WINDOW_SECONDS:
            self._window.popleft()
        lo = now - P95_WINDOW_SECONDS
        vals = sorted(v for seen, v in self._window if lo <= seen <= now)
        if not vals:
            return math.nan
        return vals[min(len(vals) - 1, math.ceil(0.95 * len(vals)) - 1)]

    def queue_and_in_flight(self, now: float) -> tuple[int, int]:
        """``sum(tgi_queue_size)`` and running + waiting requests over ready replicas."""
        queue = in_flight = 0
        for r in self.active:
            if r.ready_at <= now:
                queue += r.engine.queue_size
                in_flight += r.engine.queue_size + r.engine.batch_size
        return queue, in_flight

"""The simulated fleet: replicas per GPU pool, cold starts, draining, the router in front.

Why it exists: the simulator (:mod:`.simulate`) needs the mechanics every policy shares
(pods that take their pool's cold start, ``PoolProfile.cold_start_seconds``, to become ready:
weights on the node or pulled from the registry first; scale-down that drains in-flight requests
before the GPU is released, request routing, GPU-hour accounting, the Prometheus-like
signals) kept apart from the policy loop. Each replica runs the shared continuous-batching
engine (:mod:`.engine`) on the shared replica model (:mod:`qwen_operator.capacity.model`).
Routing (``routing``): ``router`` is the router's own algorithm
(:class:`qwen_operator.router.picking.Picker`, one implementation) weighted by each pool's
requests/s within the SLO, sized by its prefill speed; ``least-outstanding`` is the same
Picker with equal weights and no affinity or size awareness (Envoy's ``LEAST_REQUEST``);
``service`` is a uniformly random ready replica per request (what kube-proxy gives a
ClusterIP Service). Everything here is SIMULATED.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field

from ..router.picking import Endpoint, Picker, PoolCapacity
from .capacity import PoolProfile, latency_of
from .engine import OVERLOADED, ReplicaEngine, Request

P95_WINDOW_SECONDS = 60.0  # rate(...[1m]) in the DESIGN.md PromQL
#: How requests reach the replicas (see the module docstring); ``router`` is the default.
ROUTINGS = ("router", "least-outstanding", "service")


@dataclass(eq=False)
class Replica:
    pool: str
    engine: ReplicaEngine
    created: float
    ready_at: float
    ep: Endpoint  # what the router knows of it: in-flight requests, prompt tokens awaiting prefill
    draining_since: float | None = None
    last_finish: float = 0.0
    prefilling: list[Request] = field(default_factory=list)  # sent, first token not yet seen by the router

    @property
    def outstanding(self) -> int:
        """Requests sent, response not yet seen (what the router counts)."""
        return self.ep.outstanding


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


def router_pools(profiles: dict[str, PoolProfile]) -> dict[str, PoolCapacity]:
    """What the operator publishes per pool for the router: requests/s one replica sustains
    within the SLO, its prefill speed (replica model) and TGI's max_concurrent_requests."""
    return {
        name: PoolCapacity(p.rate_at_slo, p.replica.prefill_tokens_per_second, p.replica.max_concurrent_requests)
        for name, p in profiles.items()
    }


class Fleet:
    """Replicas of each pool, the router (or Service) in front of them and the signals it exports.

    ``slo_seconds``: the TTFT SLO the router's size-aware rule estimates against (0: off);
    ``affinity``: the router's session / prefix affinity (requests routed with a ``key``).
    A request the router would hold (every replica at its concurrency bound) counts as
    rejected: the simulator does not model the router's hold queue.
    """

    def __init__(
        self,
        profiles: dict[str, PoolProfile],
        gpu_limits: dict[str, int],
        metric: str,
        routing: str = "router",
        slo_seconds: float = 0.0,
        seed: int = 0,
        affinity: bool = True,
    ) -> None:
        if routing not in ROUTINGS:
            raise ValueError(f"routing {routing!r}; valid: {', '.join(ROUTINGS)}")
        self.profiles = profiles
        self.limits = {name: gpu_limits.get(name, 0) // p.shards for name, p in profiles.items()}
        self.metric = metric
        self.routing = routing
        self.active: list[Replica] = []
        self.draining: list[Replica] = []
        self.stats = Stats()
        self._window: deque[tuple[float, float]] = deque()
        self._outstanding = 0
        self._arrivals: deque[float] = deque()
        self._starting: list[Replica] = []  # created, not yet handed to the router
        self._by_name: dict[str, Replica] = {}
        self._seq = 0
        self._rng = random.Random(seed)
        if routing == "router":
            self.picker = Picker(affinity=affinity, ttft_slo_seconds=slo_seconds, seed=seed)
            self.picker.set_pools(router_pools(profiles))
        else:  # least-outstanding (and the Service's ready set): every replica alike
            self.picker = Picker(affinity=False, seed=seed)
            self.picker.set_pools({name: PoolCapacity(1.0) for name in profiles})

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
                    self._seq += 1
                    ep = Endpoint(f"{pool.lower()}-{self._seq}", pool)
                    r = Replica(pool, ReplicaEngine(prof.replica, start_time=ready), now, ready, ep)
                    self.active.append(r)
                    self._starting.append(r)
                    self._by_name[ep.name] = r
            elif want < len(mine):
                # starting pods go first (newest first), then the least loaded ready ones
                victims = sorted(mine, key=lambda r: (r.ready_at <= now, -r.ready_at, r.outstanding))
                for r in victims[: len(mine) - want]:
                    self.active.remove(r)
                    self.picker.remove(r.ep.name)  # no new requests; those in flight finish
                    if r in self._starting:
                        self._starting.remove(r)
                    if r.ready_at > now or r.outstanding == 0:
                        self._release(r, now)
                    else:
                        r.draining_since = now
                        self.draining.append(r)

    def _release(self, r: Replica, end: float) -> None:
        self._by_name.pop(r.ep.name, None)
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

    def route(
        self, t: float, prompt: int, output: int, key: str | None = None, prefix_tokens: int = 0
    ) -> Replica | None:
        """Send one request arriving at ``t`` to a ready replica, as ``self.routing`` says;
        the replica that accepted it (None: rejected or invalid).

        ``key`` is the request's affinity key (a chat session id, as
        :func:`~qwen_operator.router.picking.affinity_key` derives it) and, on the replica, the
        key its prefix is cached under; ``prefix_tokens``: leading prompt tokens an earlier
        request with that key already had (the replica prefills only what it does not cache).
        Every routing sends the same keyed requests: only ``router`` (with affinity on) uses
        the key to choose.

        ``router``: :meth:`Picker.pick` with the request's prompt size and affinity ``key``
        (a session id); the weights are each pool's requests/s within the SLO, the number
        the operator publishes: a uniform spread would hand an A10G replica as many
        requests as an L40S that carries several times more within the SLO.
        """
        self.stats.requests += 1
        self._arrivals.append(t)
        minute = int(t // 60)
        if self._starting:
            for r in [r for r in self._starting if r.ready_at <= t]:
                self._starting.remove(r)
                self.picker.add(r.ep)
        ep: Endpoint | None
        if self.routing == "service":
            ready = list(self.picker.endpoints.values())
            ep = ready[self._rng.randrange(len(ready))] if ready else None
        else:
            ep = self.picker.pick(key=key, prompt_tokens=prompt)
        if ep is None:
            self._reject(minute)
            return None
        best = self._by_name[ep.name]
        req = Request(t, prompt, output, prefix_key=key, prefix_tokens=prefix_tokens)
        if best.engine.submit(req):
            self.picker.acquire(ep, prompt)
            best.prefilling.append(req)
            self._outstanding += 1
            return best
        if req.status == OVERLOADED:
            self._reject(minute)
        else:
            self.stats.invalid += 1
        return None

    def _reject(self, minute: int) -> None:
        self.stats.rejected += 1
        self.stats.per_minute.setdefault(minute, []).append(math.inf)

    def sync(self, t: float) -> None:
        """Let every replica run to ``t`` and hand finished requests back to the router."""
        if self._outstanding == 0:
            return
        for r in self.active:
            if r.outstanding:
                self._collect(r, r.engine.advance(t), t)
        if self.draining:
            for r in list(self.draining):
                self._collect(r, r.engine.advance(t), t)
                if r.outstanding == 0:
                    self.draining.remove(r)
                    self._release(r, r.last_finish)

    def _collect(self, r: Replica, done: list[Request], now: float) -> None:
        if r.prefilling:  # first tokens the router has seen come back by ``now``
            keep = []
            for req in r.prefilling:
                if req.first_token <= now:  # NaN (not yet) compares False
                    self.picker.prefilled(r.ep, req.prompt_tokens)
                else:
                    keep.append(req)
            r.prefilling = keep
        for req in done:
            self.picker.release(r.ep)
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


@dataclass(frozen=True)
class FixedRun:
    """One trace through a fixed fleet (no autoscaling). Every figure is SIMULATED."""

    requests: int
    rejected: int
    invalid: int
    p95_seconds: float  # P95 latency of requests arriving after the warm-up; rejected count as infinite
    mean_seconds: float  # mean latency of the answered ones after the warm-up
    prefix_hits: int = 0  # keyed requests that found part of their prompt in their replica's prefix cache
    prefix_misses: int = 0  # keyed requests with a shared prefix that found none of it cached
    cached_prompt_tokens: int = 0  # prompt tokens not prefilled thanks to the prefix cache


def serve_fixed(
    profiles: dict[str, PoolProfile],
    replicas: dict[str, int],
    arrivals: list[float],
    prompts: list[int],
    outputs: list[int],
    routing: str = "router",
    slo_seconds: float = 0.0,
    metric: str = "ttft",
    seed: int = 0,
    sync_seconds: float = 0.1,
    keys: list[str | None] | None = None,
    warmup_seconds: float = 60.0,
    affinity: bool = True,
    prefix_tokens: list[int] | None = None,
) -> FixedRun:
    """Replay arrivals (sorted) through ``replicas`` per pool, all warm from t=0, routed by ``routing``.

    The router sees completions and first tokens every ``sync_seconds`` (the real router sees
    them as they happen); ``keys``: an affinity key per request (e.g. a chat session id);
    ``prefix_tokens``: per request, the leading prompt tokens an earlier request with the
    same key already had (what the replica's prefix cache may spare it).
    """
    limits = {pool: n * profiles[pool].shards for pool, n in replicas.items()}
    fleet = Fleet(profiles, limits, metric, routing, slo_seconds if metric == "ttft" else 0.0, seed, affinity)
    fleet.apply(0.0, dict(replicas), instant=True)
    next_sync = sync_seconds
    for i, t in enumerate(arrivals):
        if t >= next_sync:
            fleet.sync(t)
            next_sync = t + sync_seconds
        fleet.route(
            t,
            prompts[i],
            outputs[i],
            keys[i] if keys is not None else None,
            prefix_tokens[i] if prefix_tokens is not None else 0,
        )
    end = arrivals[-1] if arrivals else 0.0
    engines = [r.engine for r in fleet.active]
    fleet.close(end)
    warm_minute = math.ceil(warmup_seconds / 60.0)
    lats = sorted(v for m, vs in fleet.stats.per_minute.items() if m >= warm_minute for v in vs)
    answered = [v for v in lats if math.isfinite(v)]
    p95 = lats[min(len(lats) - 1, math.ceil(0.95 * len(lats)) - 1)] if lats else math.nan
    st = fleet.stats
    mean = sum(answered) / len(answered) if answered else math.nan
    return FixedRun(
        st.requests,
        st.rejected,
        st.invalid,
        p95,
        mean,
        sum(e.prefix_hits for e in engines),
        sum(e.prefix_misses for e in engines),
        sum(e.cached_prompt_tokens for e in engines),
    )

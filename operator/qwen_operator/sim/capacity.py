"""How much traffic one replica of each GPU pool carries within the latency SLO (simulated).

Why it exists: the policy places capacity by price per unit throughput and the static and
oracle baselines size fleets from a rate, so each pool needs a *throughput at the SLO*.
It is measured, not guessed: a short run of the same replica model and continuous-batching
engine (:mod:`.model`, :mod:`.engine`) under Poisson arrivals with request sizes drawn from
the trace, bisecting the arrival rate at which the P95 latency meets the SLO. A GPU type
that misses the SLO even nearly idle (e.g. A10G prefilling 4k-token prompts) gets rate 0
and is left out of the simulated fleet, with the reason reported.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from ..capacity.model import ReplicaModel
from .engine import OK, ReplicaEngine, Request
from .trace import TraceRow

LATENCY_METRICS = ("ttft", "e2e")
_PROBE_REQUESTS = 400  # at least this many requests ...
_PROBE_SECONDS = 900.0  # ... over at least this long: long generations take minutes to reach steady state
_WARMUP_SECONDS = 300.0  # not measured


@dataclass(frozen=True)
class PoolProfile:
    """One GPU pool of the simulated fleet. Every figure is SIMULATED."""

    gpu_type: str
    shards: int
    replica: ReplicaModel
    cost_per_hour: float  # one replica (all shards)
    rate_at_slo: float  # requests/s one replica sustains with P95 latency within the SLO
    concurrency_at_slo: float  # mean requests in flight at that rate (Little's law)
    #: Pod start -> Ready for a scale-out replica of this pool: the replica model's cold start with the
    #: weights on the node (:func:`calibrate_pool`), or pulled from the registry first
    #: (:func:`.simulate.build_profiles` with ``SimConfig.weights="pulled"``).
    cold_start_seconds: float
    note: str = ""


def latency_of(req: Request, metric: str) -> float:
    """The latency the SLO is about: time to first token (``ttft``) or end to end (``e2e``)."""
    return req.ttft if metric == "ttft" else req.duration


def _probe(replica: ReplicaModel, rows: list[TraceRow], rate: float, metric: str, seed: int) -> tuple[float, float]:
    """(P95 latency, mean in-flight) of one replica under Poisson arrivals at ``rate``."""
    rng = random.Random(seed)
    eng = ReplicaEngine(replica)
    t = 0.0
    reqs: list[Request] = []
    limit_in, limit_total = replica.max_input_tokens, replica.max_total_tokens
    while len(reqs) < _PROBE_REQUESTS or t < _PROBE_SECONDS:
        t += rng.expovariate(rate)
        row = rows[rng.randrange(len(rows))]
        if row.prompt_tokens > limit_in or row.prompt_tokens + row.output_tokens > limit_total:
            continue
        req = Request(t, row.prompt_tokens, row.output_tokens)
        eng.submit(req)
        reqs.append(req)
    eng.advance(math.inf)
    measured = [r for r in reqs if r.arrival >= _WARMUP_SECONDS] or reqs
    if any(r.status != OK for r in measured):
        return math.inf, math.inf
    lat = sorted(latency_of(r, metric) for r in measured)
    span = measured[-1].arrival - measured[0].arrival
    busy = sum(r.duration for r in measured)
    return lat[int(0.95 * (len(lat) - 1))], busy / max(span, 1e-9)


def calibrate_pool(
    replica: ReplicaModel, rows: list[TraceRow], slo_seconds: float, metric: str = "ttft", seed: int = 0
) -> PoolProfile:
    """Bisect the largest arrival rate whose P95 latency stays within ``slo_seconds``."""
    if metric not in LATENCY_METRICS:
        raise ValueError(f"latency metric {metric!r}; valid: {', '.join(LATENCY_METRICS)}")
    cost = replica.gpu.price_per_gpu_hour * replica.shards
    base = PoolProfile(replica.gpu.name, replica.shards, replica, cost, 0.0, 0.0, replica.cold_start_seconds)
    lo, hi = 0.02, 64.0
    p95_lo, conc_lo = _probe(replica, rows, lo, metric, seed)
    if p95_lo > slo_seconds:
        note = f"P95 {metric} {p95_lo:.2f}s at {lo} req/s already exceeds the SLO {slo_seconds:g}s"
        return PoolProfile(**{**base.__dict__, "note": note})
    for _ in range(14):
        mid = math.sqrt(lo * hi)
        p95, conc = _probe(replica, rows, mid, metric, seed)
        if p95 <= slo_seconds:
            lo, conc_lo = mid, conc
        else:
            hi = mid
        if hi / lo < 1.03:
            break
    return PoolProfile(**{**base.__dict__, "rate_at_slo": lo, "concurrency_at_slo": conc_lo})


def smallest_fit(model: str, gpu: str, quantization: str, engine: str = "tgi", **limits: int) -> ReplicaModel | None:
    """The replica with the fewest shards of ``gpu`` that holds ``model`` (None if none fits).

    ``engine``: vllm may also shard beyond the model's KV heads (it replicates them); TGI cannot."""
    for shards in (1, 2, 4, 8):
        try:
            return ReplicaModel.build_for(engine, model, gpu, shards, quantization, **limits)
        except ValueError:
            continue
    return None

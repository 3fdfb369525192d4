"""Closed-loop chat sessions against one simulated replica: the calibration workload.

The figures the project grew from are phrased as "N concurrent chats": N users, each
sending a message, reading the streamed reply, thinking, and sending the next one. That
is a closed loop (a user never has two requests in flight), unlike a trace replay (open
loop). This module drives a :class:`~qwen_operator.sim.engine.ReplicaEngine` that way so
the model's calibration tests and the benchmarks measure the same thing. Pure.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass

from ..capacity.model import ReplicaModel
from .engine import ReplicaEngine, Request


@dataclass(frozen=True)
class SessionStats:
    """Latency percentiles (seconds, simulated) of the finished chat turns."""

    turns: int
    ttft_p50: float
    ttft_p95: float
    e2e_p50: float
    e2e_p95: float


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def run_chat_sessions(
    model: ReplicaModel,
    sessions: int,
    prompt_tokens: int,
    output_tokens: int,
    think_seconds: float,
    horizon: float = 1800.0,
    warmup: float = 120.0,
    seed: int = 0,
    chunked_prefill: bool = True,
) -> SessionStats:
    """``sessions`` users, each sending a turn, waiting for the reply, then thinking for an
    exponentially distributed time (mean ``think_seconds``); turns finishing after
    ``warmup`` and arriving before ``horizon`` are measured."""
    rng = random.Random(seed)
    engine = ReplicaEngine(model, chunked_prefill=chunked_prefill)
    arrivals = [(rng.uniform(0.0, think_seconds), i) for i in range(sessions)]
    heapq.heapify(arrivals)
    finished: list[Request] = []

    def collect(done: list[Request]) -> None:
        for req in done:
            finished.append(req)
            heapq.heappush(arrivals, (req.finish + rng.expovariate(1.0 / think_seconds), int(str(req.tag))))

    while True:
        t_next = arrivals[0][0] if arrivals else math.inf
        t_engine = engine.next_event_time()
        if t_engine < t_next:
            collect(engine.advance(t_engine))
            continue
        if t_next > horizon:  # every user is thinking past the horizon (or none left)
            break
        _, user = heapq.heappop(arrivals)
        collect(engine.advance(t_next))
        engine.submit(Request(t_next, prompt_tokens, output_tokens, tag=user))
    measured = [r for r in finished if r.finish >= warmup]
    ttft = [r.ttft for r in measured]
    e2e = [r.duration for r in measured]
    return SessionStats(
        turns=len(measured),
        ttft_p50=percentile(ttft, 0.5),
        ttft_p95=percentile(ttft, 0.95),
        e2e_p50=percentile(e2e, 0.5),
        e2e_p95=percentile(e2e, 0.95),
    )

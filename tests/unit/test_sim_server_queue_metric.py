"""The simulated TGI observes the queue wait when a request enters a batch (as TGI does)."""

from __future__ import annotations

import asyncio

from qwen_operator.capacity.model import ReplicaModel
from qwen_operator.sim.server import SimulatedTGI


def test_queue_wait_is_observed_at_batch_entry_not_at_the_end() -> None:
    async def scenario() -> tuple[int, int, int]:
        model = ReplicaModel.build("Qwen3-14B", "A10G", 1, "fp8")
        sim = SimulatedTGI(model, time_scale=1.0, cold_start_seconds=0)
        for _ in range(8):  # ~7k-token prompts: the KV cache (~30k tokens) admits a few, the rest wait
            sim.submit(7000, 200)
        await asyncio.sleep(0.05)
        sim.sync()
        observed, finished = sim.metrics.queue_duration.count, sim.metrics.duration.count
        waiting = sim.engine.queue_size
        sim.cancel_pending()
        return observed, finished, waiting

    observed, finished, waiting = asyncio.run(scenario())
    assert finished == 0  # nothing can finish 50 ms into 7k-token prefills
    assert observed >= 1  # the admitted requests' queue waits are already in the histogram
    assert waiting >= 1 and observed + waiting == 8  # the rest are still queued, not yet observed

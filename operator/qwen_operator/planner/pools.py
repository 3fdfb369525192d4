"""Pool sizing: how many replicas go on each GPU type, given free GPUs.

Scale-up fills the cheapest GPU type per unit of capacity first (by default $/h per request/s
within the TTFT SLO; see :func:`~.placement.rank_key`) and spills to the next when its free
GPUs run out; scale-down removes the most expensive capacity first. Pools
that already exist keep their replicas where possible (:func:`resize`), so an autoscaler
step changes one pool instead of reshuffling all of them.

Free GPUs per type are either one integer (the total; fragmentation across nodes is
ignored) or a list with the free GPUs of each node (a replica needs all its shards on one
node, so a node with 3 free GPUs holds one 2-shard replica). "Free" means not requested
by any pod: GPUs held by the deployment's existing replicas are not counted again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .placement import Candidate, rank_key

FreeGPUs = Mapping[str, int | Sequence[int]]


@dataclass(frozen=True)
class Pool:
    """Replicas of one GPU type (one Deployment, or one LeaderWorkerSet when a replica spans nodes)."""

    gpu_type: str
    shards: int  # GPUs per node of a replica (the tensor-parallel degree)
    replicas: int
    price_per_replica_hour: float
    throughput_per_replica: float = 0.0
    nodes: int = 1  # nodes one replica spans (pipeline stages of ``shards`` GPUs each)

    @property
    def gpus(self) -> int:
        return self.shards * self.nodes * self.replicas

    @property
    def multi_node(self) -> bool:
        """A replica is a LeaderWorkerSet group of :attr:`nodes` pods."""
        return self.nodes > 1

    @property
    def cost_per_hour(self) -> float:
        return self.price_per_replica_hour * self.replicas


def replica_slots(free: int | Sequence[int], gpus_per_replica: int) -> int:
    """How many more replicas of ``gpus_per_replica`` GPUs fit in ``free``."""
    if gpus_per_replica <= 0:
        return 0
    if isinstance(free, int):
        return max(0, free) // gpus_per_replica
    return sum(max(0, n) // gpus_per_replica for n in free)


def _slots(c: Candidate, free: FreeGPUs | None) -> int | None:
    """None means unlimited (no free-GPU information)."""
    if free is None:
        return None
    return replica_slots(free.get(c.gpu_type, 0), c.shards)


def _describe_free(fitting: list[Candidate], free: FreeGPUs | None) -> str:
    if free is None:
        return ""
    parts = []
    for c in fitting:
        f = free.get(c.gpu_type, 0)
        total = f if isinstance(f, int) else sum(f)
        parts.append(f"{c.gpu_type}: {total} free, {c.shards} per replica")
    return "; ".join(parts)


def _unplaced_reason(count: int, fitting: list[Candidate], free: FreeGPUs | None) -> str:
    if count <= 0:
        return ""
    if not fitting:
        return f"{count} replica(s) unplaced: the model fits no allowed GPU type"
    return f"{count} replica(s) unplaced: not enough free GPUs in the allowed types ({_describe_free(fitting, free)})"


def _pool(c: Candidate, replicas: int) -> Pool:
    return Pool(c.gpu_type, c.shards, replicas, c.price_per_hour, c.throughput, c.nodes)


def fill(candidates: Sequence[Candidate], desired: int, free: FreeGPUs | None = None) -> tuple[list[Pool], int, str]:
    """Place ``desired`` replicas from scratch: (pools, unplaced count, reason when unplaced)."""
    return resize(candidates, {}, desired, free)


def resize(
    candidates: Sequence[Candidate],
    current: Mapping[str, int],
    total: int,
    free: FreeGPUs | None = None,
) -> tuple[list[Pool], int, str]:
    """New pool sizes for ``total`` replicas starting from ``current`` (gpu type -> replicas).

    Pools whose GPU type no longer fits (or is no longer allowed) drop to zero; surplus
    replicas come off the most expensive pool first; missing ones go on the cheapest type
    with free GPUs, spilling over in rank order. Returns the pools with replicas > 0 in
    rank order, the number of replicas that could not be placed, and why.
    """
    fitting = sorted((c for c in candidates if c.fits), key=rank_key)
    sizes = {c.gpu_type: max(0, current.get(c.gpu_type, 0)) for c in fitting}
    target = max(0, total)
    excess = sum(sizes.values()) - target
    for c in reversed(fitting):  # most expensive first
        if excess <= 0:
            break
        take = min(excess, sizes[c.gpu_type])
        sizes[c.gpu_type] -= take
        excess -= take
    missing = target - sum(sizes.values())
    for c in fitting:  # cheapest first
        if missing <= 0:
            break
        slots = _slots(c, free)
        add = missing if slots is None else min(missing, slots)
        sizes[c.gpu_type] += add
        missing -= add
    pools = [_pool(c, sizes[c.gpu_type]) for c in fitting if sizes[c.gpu_type] > 0]
    return pools, missing, _unplaced_reason(missing, fitting, free)


def removal_order(candidates: Sequence[Candidate]) -> list[str]:
    """GPU types in the order scale-down empties them (most expensive per unit of capacity first)."""
    return [c.gpu_type for c in sorted((c for c in candidates if c.fits), key=rank_key, reverse=True)]

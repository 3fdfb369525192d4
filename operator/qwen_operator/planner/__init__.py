"""Placement planner (pure): GPU type, tensor-parallel shards, pool sizes and cost.

No Kubernetes, kopf or cloud imports: the controller gathers free GPUs and current pool
sizes, calls :func:`plan`, and applies what the renderer makes of the result.
"""

from .placement import DEFAULT_POLICY, Candidate, PlacementPolicy, Workload, candidate_for, candidates
from .plan import (
    INSUFFICIENT_GPUS,
    MODEL_NOT_IN_CATALOG,
    NO_GPU_TYPE_FITS,
    NO_GPU_TYPE_MEETS_SLO,
    OK,
    Plan,
    plan,
    workload_for,
)
from .pools import FreeGPUs, Pool, fill, removal_order, replica_slots, resize

__all__ = [
    "Candidate",
    "DEFAULT_POLICY",
    "FreeGPUs",
    "INSUFFICIENT_GPUS",
    "MODEL_NOT_IN_CATALOG",
    "NO_GPU_TYPE_FITS",
    "NO_GPU_TYPE_MEETS_SLO",
    "OK",
    "PlacementPolicy",
    "Plan",
    "Pool",
    "Workload",
    "candidate_for",
    "candidates",
    "fill",
    "plan",
    "removal_order",
    "replica_slots",
    "resize",
    "workload_for",
]

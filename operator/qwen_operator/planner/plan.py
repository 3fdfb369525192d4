"""The planner's entry point: spec + catalog + free GPUs -> :class:`Plan`.

A plan is always returned, never an exception: a model missing from the catalog, a model
that fits no allowed GPU type or a cluster without free GPUs all give a plan whose
``reason_code``/``reason`` the controller copies into a condition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from ..api.spec import QwenDeploymentSpec
from ..catalog import Catalog, GPUType, resolve_gpu_name, resolve_model_name
from .placement import DEFAULT_POLICY, Candidate, PlacementPolicy, Workload, candidates
from .pools import FreeGPUs, Pool, resize

#: ``Plan.reason_code`` values (CamelCase condition reasons).
OK = "Planned"
MODEL_NOT_IN_CATALOG = "ModelNotInCatalog"
NO_GPU_TYPE_FITS = "NoGPUTypeFits"
NO_GPU_TYPE_MEETS_SLO = "NoGPUTypeMeetsSLO"
INSUFFICIENT_GPUS = "InsufficientGPUs"
#: The model fits across nodes only and the cluster has no LeaderWorkerSet CRD (set by the controller).
LWS_NOT_INSTALLED = "LeaderWorkerSetNotInstalled"


@dataclass(frozen=True)
class Plan:
    """Where the replicas of one QwenDeployment go."""

    model: str
    desired_replicas: int
    candidates: tuple[Candidate, ...] = ()
    pools: tuple[Pool, ...] = ()
    unplaced: int = 0
    reason_code: str = OK
    reason: str = ""
    unknown_gpu_types: tuple[str, ...] = field(default=())

    @property
    def placed(self) -> int:
        return sum(p.replicas for p in self.pools)

    @property
    def ok(self) -> bool:
        return self.reason_code == OK

    @property
    def cost_per_hour(self) -> float:
        return sum(p.cost_per_hour for p in self.pools)

    @property
    def pool_summary(self) -> str:
        """``A10G:2,L40S:1`` (the status.poolSummary printer column)."""
        return ",".join(f"{p.gpu_type}:{p.replicas}" for p in self.pools)

    def pool(self, gpu_type: str) -> Pool | None:
        return next((p for p in self.pools if p.gpu_type == gpu_type), None)

    def candidate(self, gpu_type: str) -> Candidate | None:
        return next((c for c in self.candidates if c.gpu_type == gpu_type), None)


def workload_for(spec: QwenDeploymentSpec, catalog: Catalog, reasoning: bool | None = None) -> Workload:
    """The sizing inputs of ``spec`` (raises KeyError when the model is not in the catalog).

    ``reasoning``: whether thinking tokens count in the typical reply (see :attr:`Workload.reasoning`);
    pass ``spec.runtime.reasoning == "enabled"`` to count them, None (default) to keep
    ``typicalOutputTokens`` as the whole reply."""
    model = catalog.models[resolve_model_name(spec.model.name, catalog.models)]
    tp = spec.placement.tensor_parallel
    return Workload(
        model=model,
        quantization=spec.model.quantization,
        max_total_tokens=spec.runtime.max_total_tokens,
        max_concurrent_requests=spec.runtime.max_concurrent_requests,
        tensor_parallel=tp if isinstance(tp, int) else None,
        max_input_tokens=spec.runtime.max_input_tokens,
        slo_seconds=spec.scaling.p95_latency_seconds,
        prompt_tokens=spec.scaling.typical_prompt_tokens,
        output_tokens=spec.scaling.typical_output_tokens,
        engine=spec.runtime.engine,
        reasoning=reasoning,
    )


def allowed_gpus(spec: QwenDeploymentSpec, catalog: Catalog) -> tuple[list[GPUType], list[str]]:
    """(catalog GPU types allowed by the spec, spellings not in the catalog)."""
    known: list[GPUType] = []
    unknown: list[str] = []
    for name in spec.placement.gpu_types:
        try:
            gpu = catalog.gpus[resolve_gpu_name(name, catalog.gpus)]
        except KeyError:
            unknown.append(name)
            continue
        if gpu not in known:
            known.append(gpu)
    return known, unknown


def plan(
    spec: QwenDeploymentSpec,
    catalog: Catalog,
    *,
    replicas: int | None = None,
    free_gpus: FreeGPUs | None = None,
    current: Mapping[str, int] | None = None,
    policy: PlacementPolicy = DEFAULT_POLICY,
    reasoning: bool | None = None,
    multi_node: bool = False,
) -> Plan:
    """Plan ``replicas`` (default: :meth:`QwenDeploymentSpec.desired_replicas`) for ``spec``.

    ``free_gpus``: GPUs not requested by any pod, per catalog GPU type (None: unlimited,
    as in an offline ``qwenctl plan``). ``current``: replicas per GPU type the deployment
    runs now; existing pools are kept and resized rather than re-planned from scratch.
    ``reasoning``: count Qwen3 thinking tokens in the typical reply (:func:`workload_for`); the
    controller passes ``spec.runtime.reasoning == "enabled"``, None keeps today's figures.
    ``multi_node``: also plan replicas spanning nodes on GPU types one node of which holds none
    (:attr:`Workload.multi_node`; ``qwenctl plan`` passes True, the controller only when the
    LeaderWorkerSet CRD is installed: such a pool renders as a LeaderWorkerSet). Their pools keep
    ``shards`` as the tensor-parallel degree per node and carry ``nodes``.
    """
    desired = spec.desired_replicas() if replicas is None else max(0, replicas)
    try:
        work = workload_for(spec, catalog, reasoning)
    except KeyError:
        return Plan(
            model=spec.model.name,
            desired_replicas=desired,
            unplaced=desired,
            reason_code=MODEL_NOT_IN_CATALOG,
            reason=f"model {spec.model.name!r} is not in the catalog; known: {', '.join(sorted(catalog.models))}",
        )
    if multi_node:
        work = replace(work, multi_node=True)
    gpus, unknown = allowed_gpus(spec, catalog)
    found = tuple(candidates(work, gpus, policy))
    common = {"model": work.model.name, "desired_replicas": desired, "unknown_gpu_types": tuple(unknown)}
    if not any(c.fits for c in found):
        quant = "bf16" if work.quantization == "none" else work.quantization
        detail = "; ".join(f"{c.gpu_type}: {c.reason}" for c in found) or "no allowed GPU type is in the catalog"
        if unknown:
            detail += f"; not in the catalog: {', '.join(unknown)}"
        if any(c.idle_ttft > 0 for c in found):  # some fit in memory, every one of them misses the SLO
            return Plan(
                candidates=found,
                unplaced=desired,
                reason_code=NO_GPU_TYPE_MEETS_SLO,
                reason=f"{work.model.name} ({quant}) meets the P95 time-to-first-token SLO of "
                f"{work.slo_seconds:g} s for {work.typical_prompt}-token prompts on no allowed GPU type "
                f"(raise spec.scaling.p95LatencySeconds, lower typicalPromptTokens or allow a faster GPU type): "
                f"{detail}",
                **common,  # type: ignore[arg-type]
            )
        where = "no allowed GPU type"
        if not multi_node and found and all("does not fit on one node" in c.reason for c in found):
            where += " on a single node (replicas spanning nodes need the LeaderWorkerSet CRD)"
        return Plan(
            candidates=found,
            unplaced=desired,
            reason_code=NO_GPU_TYPE_FITS,
            reason=f"{work.model.name} ({quant}, {work.weight_bytes / 1e9:.1f} GB of weights, "
            f"maxTotalTokens {work.max_total_tokens}) fits {where}: {detail}",
            **common,  # type: ignore[arg-type]
        )
    pools, unplaced, why = _resize(found, current or {}, desired, free_gpus)
    return Plan(
        candidates=found,
        pools=tuple(pools),
        unplaced=unplaced,
        reason_code=INSUFFICIENT_GPUS if unplaced else OK,
        reason=why,
        **common,  # type: ignore[arg-type]
    )


def _resize(
    found: tuple[Candidate, ...], current: Mapping[str, int], desired: int, free: FreeGPUs | None
) -> tuple[list[Pool], int, str]:
    """:func:`.pools.resize`, also for candidates spanning nodes: such a replica needs ``nodes`` nodes
    with ``shards`` free GPUs each, so resize sees it as one replica of ``nodes x shards`` GPUs and the
    free GPUs of its type as whole groups of nodes; its pool keeps ``shards`` (GPUs per node)."""
    spanning = {c.gpu_type: c for c in found if c.nodes > 1}
    if not spanning:
        return resize(found, current, desired, free)
    view = [replace(c, shards=c.gpus_per_replica, nodes=1) if c.gpu_type in spanning else c for c in found]
    groups: dict[str, int | Sequence[int]] | None = None
    if free is not None:
        groups = dict(free)
        for name, c in spanning.items():
            f = free.get(name, 0)
            if not isinstance(f, int):  # per node: nodes with a whole stage's GPUs free, in groups of ``nodes``
                stages = sum(max(0, n) // c.shards for n in f)
                groups[name] = stages // c.nodes * c.gpus_per_replica
            # a total (an int): fragmentation across nodes is ignored, as for one-node replicas
    pools, unplaced, why = resize(view, current, desired, groups)
    back = [
        replace(p, shards=spanning[p.gpu_type].shards, nodes=spanning[p.gpu_type].nodes)
        if p.gpu_type in spanning
        else p
        for p in pools
    ]
    return back, unplaced, why

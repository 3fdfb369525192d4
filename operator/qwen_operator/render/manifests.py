"""The renderer's entry point: spec + plan -> every manifest the operator applies.

Output is plain dicts, ordered Service, [Service ``<name>-servers``], PodDisruptionBudget, [PDB ``<name>-workers``],
[ServiceMonitor], [router ServiceAccount, Role, RoleBinding, PDB, Deployment],
[InferencePool, HTTPRoute], then one Deployment per pool in plan order (a LeaderWorkerSet for a
pool whose replica spans nodes: :mod:`.lws`). The router objects
come with ``spec.routing.enabled``; the Gateway API objects with
``spec.routing.gateway.inferencePool`` and only when the controller saw both CRDs
(``RenderContext.gateway_api``; ``qwenctl render`` prints them regardless). Pools with
zero replicas are not rendered: the controller deletes owned Deployments that are absent from this list (after their
replacements are ready).
"""

from __future__ import annotations

from typing import Any

from ..api.spec import QwenDeploymentSpec
from ..catalog import Catalog, resolve_gpu_name
from ..engines.runtimes import model_has_thinking
from ..planner.plan import Plan
from .gateway import http_route, inference_pool
from .lws import leader_worker_set, workers_pod_disruption_budget
from .router import router_objects
from .service import pod_disruption_budget, servers_service, service, service_monitor
from .workload import RenderContext, pool_deployment


def render(spec: QwenDeploymentSpec, plan: Plan, ctx: RenderContext, catalog: Catalog) -> list[dict[str, Any]]:
    """All manifests for one QwenDeployment; pure and deterministic."""
    out = [service(spec, ctx)]
    if spec.routing.enabled:
        out.append(servers_service(spec, ctx))
    out.append(pod_disruption_budget(spec, ctx, sum(max(0, p.replicas) for p in plan.pools)))
    groups = sum(max(0, p.replicas) for p in plan.pools if p.multi_node)
    if groups:  # the worker pods of LeaderWorkerSet groups: the leaders' PDB does not select them
        out.append(workers_pod_disruption_budget(ctx, groups))
    if ctx.service_monitor:
        out.append(service_monitor(spec, ctx))
    if spec.routing.enabled:
        out += router_objects(spec, ctx)
    if spec.routing.gateway.inference_pool and ctx.gateway_api:
        out += [inference_pool(spec, ctx), http_route(spec, ctx)]
    for pool in plan.pools:
        if pool.replicas <= 0:
            continue
        gpu = catalog.gpus[resolve_gpu_name(pool.gpu_type, catalog.gpus)]
        thinking = model_has_thinking(spec, catalog)
        if pool.multi_node:  # a replica across nodes: a LeaderWorkerSet group per replica
            out.append(leader_worker_set(spec, ctx, pool, gpu, thinking))
        else:
            out.append(pool_deployment(spec, ctx, pool, gpu, thinking))
    return out

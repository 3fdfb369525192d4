"""A pool whose replica spans nodes: one LeaderWorkerSet, a group of ``nodes`` pods per replica.

LeaderWorkerSet (``leaderworkerset.x-k8s.io/v1``, a Kubernetes SIG Apps project) runs each
replica as a *group*: a leader pod and ``size - 1`` worker pods, created, scheduled, restarted
and rolled together; its pod webhook gives every pod of a group ``LWS_LEADER_ADDRESS`` (the
leader's stable DNS name) and ``LWS_GROUP_SIZE``. vLLM runs such a replica with tensor
parallelism within a node and pipeline parallelism across nodes ("set ``tensor_parallel_size``
to the number of GPUs per node and ``pipeline_parallel_size`` to the number of nodes", vLLM
docs, *Parallelism and Scaling*) over a Ray cluster, the shape of vLLM's own LWS example:

- the **leader** (``app.kubernetes.io/component: server``, the only pod that serves) starts a Ray
  head, waits until the group's ``LWS_GROUP_SIZE`` nodes joined, then ``exec``s ``vllm serve`` with
  the pool's flags plus ``--pipeline-parallel-size <nodes> --distributed-executor-backend ray``.
  Its flags stay the container's ``args`` (the wrapper passes them on as ``"$@"``), so what runs
  is what ``kubectl get -o yaml`` shows and what the sandbox's simulated fleet parses;
- each **worker** (``app.kubernetes.io/component: worker``: no Service, PDB, router or scale
  selector ever reaches one) joins the leader's Ray head and blocks. It holds the same GPUs per
  node and mounts the same model cache: its pipeline stage loads its layers from its own node's
  copy (the ``model-pull`` init container runs in every pod of the group).

Both templates are the pool's server pod spec (``spec.pod``, pool overlays and the admin's
defaults included, :func:`..workload.server_pod_spec`), so a multi-node pool gets the same
security context, tolerations and GPU node selection as a one-node pool.

Rollout: the LWS controller's rolling update, group by group, with ``maxUnavailable: 0`` and the
resource's ``spec.rollout.maxSurge`` (LWS refuses both at 0, as the operator's no-surge roll does
for a full pool: then one group at a time is replaced in place). ``restartPolicy:
RecreateGroupOnPodRestart``: a failed pod restarts its whole group (a pipeline missing a stage
serves nothing).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..api.spec import QwenDeploymentSpec
from ..catalog import GPUType
from ..planner.pools import Pool
from .names import (
    LABEL_COMPONENT,
    LABEL_DEPLOYMENT,
    common_labels,
    dns_label,
    pool_deployment_name,
)
from .workload import (
    NO_SURGE_ROLLING_UPDATE,
    RenderContext,
    metadata,
    pool_labels,
    server_pod_metadata,
    server_pod_spec,
)

LWS_GROUP = "leaderworkerset.x-k8s.io"
LWS_VERSION = "v1"
LWS_PLURAL = "leaderworkersets"
LWS_KIND = "LeaderWorkerSet"
LWS_API_VERSION = f"{LWS_GROUP}/{LWS_VERSION}"
LWS_CRD = f"{LWS_PLURAL}.{LWS_GROUP}"
#: The label LWS puts on every pod of a group: its index in the group (0: the leader).
LWS_WORKER_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/worker-index"
WORKER_COMPONENT = "worker"
WORKER_CONTAINER = "ray-worker"
RAY_PORT = 6379

#: The leader's wrapper: Ray head, wait for the group, then the engine with the container's args.
LEADER_SCRIPT = f"""set -e
ray start --head --port={RAY_PORT} --disable-usage-stats
python3 -c '
import os, time, ray
ray.init(address="auto")
want = int(os.environ["LWS_GROUP_SIZE"])
while sum(n["Alive"] for n in ray.nodes()) < want:
    time.sleep(5)
'
exec vllm serve "$@"
"""
#: The worker: join the leader's Ray head and stay in the foreground (the pod lives as long as Ray).
WORKER_SCRIPT = f'exec ray start --block --address="$LWS_LEADER_ADDRESS:{RAY_PORT}" --disable-usage-stats'


def workers_pod_disruption_budget(ctx: RenderContext, groups: int) -> dict[str, Any]:
    """``<name>-workers``: the PodDisruptionBudget over the worker pods of every LeaderWorkerSet pool.

    A worker evicted by a drain restarts its whole group (``RecreateGroupOnPodRestart``): one replica
    down, as if its leader were evicted, and the leaders' PDB (``app.kubernetes.io/component:
    server``) does not see workers. So at most one worker at a time, and none while ``groups`` is 1
    (the only replica, as the leaders' PDB keeps its leader)."""
    budget = {"maxUnavailable": 1 if groups > 1 else 0}
    labels = common_labels(ctx.name, WORKER_COMPONENT)
    selector = {k: labels[k] for k in (LABEL_DEPLOYMENT, LABEL_COMPONENT)}
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(ctx, dns_label(f"{ctx.name}-workers"), labels),
        "spec": {**budget, "selector": {"matchLabels": selector}, "unhealthyPodEvictionPolicy": "AlwaysAllow"},
    }


def pipeline_args(nodes: int) -> list[str]:
    """vLLM's flags for a replica of ``nodes`` pipeline stages over Ray."""
    return ["--pipeline-parallel-size", str(nodes), "--distributed-executor-backend", "ray"]


def _rolling_update(spec: QwenDeploymentSpec, ctx: RenderContext, pool: Pool) -> dict[str, Any]:
    surge = 0 if pool.gpu_type in ctx.no_surge_pools else spec.rollout.max_surge
    if surge <= 0:
        return dict(NO_SURGE_ROLLING_UPDATE)
    return {"maxSurge": surge, "maxUnavailable": 0}


def _leader_spec(pod: dict[str, Any], nodes: int) -> dict[str, Any]:
    server = pod["containers"][0]
    server["command"] = ["/bin/sh", "-c", LEADER_SCRIPT, "vllm-leader"]
    server["args"] = [*server["args"], *pipeline_args(nodes)]
    server["ports"] = [*server["ports"], {"name": "ray", "containerPort": RAY_PORT, "protocol": "TCP"}]
    return pod


def _worker_spec(pod: dict[str, Any]) -> dict[str, Any]:
    server = pod["containers"][0]
    worker: dict[str, Any] = {
        "name": WORKER_CONTAINER,
        "image": server["image"],
        "command": ["/bin/sh", "-c", WORKER_SCRIPT],
        "env": server["env"],
        "resources": server["resources"],
        "volumeMounts": server["volumeMounts"],
        "securityContext": server["securityContext"],
    }
    pod["containers"] = [worker]
    return pod


def leader_worker_set(
    spec: QwenDeploymentSpec, ctx: RenderContext, pool: Pool, gpu: GPUType, thinking_model: bool = False
) -> dict[str, Any]:
    """The LeaderWorkerSet of one GPU pool whose replicas span ``pool.nodes`` nodes (engine vllm)."""
    leader = server_pod_metadata(spec, ctx, pool)
    worker = {
        "labels": {**leader["labels"], LABEL_COMPONENT: WORKER_COMPONENT},
        "annotations": dict(leader["annotations"]),
    }
    return {
        "apiVersion": LWS_API_VERSION,
        "kind": LWS_KIND,
        "metadata": metadata(ctx, pool_deployment_name(ctx.name, pool.gpu_type), pool_labels(ctx, pool)),
        "spec": {
            "replicas": pool.replicas,
            "startupPolicy": "LeaderCreated",
            "rolloutStrategy": {
                "type": "RollingUpdate",
                "rollingUpdateConfiguration": _rolling_update(spec, ctx, pool),
            },
            "leaderWorkerTemplate": {
                "size": pool.nodes,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": {
                    "metadata": leader,
                    "spec": _leader_spec(server_pod_spec(spec, ctx, pool, gpu, thinking_model), pool.nodes),
                },
                "workerTemplate": {
                    "metadata": worker,
                    "spec": _worker_spec(server_pod_spec(spec, ctx, pool, gpu, thinking_model)),
                },
            },
        },
    }


def pod_template(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The server pod template of a pool object: a Deployment's, or a LeaderWorkerSet's leader's."""
    spec = obj.get("spec") or {}
    if obj.get("kind") == LWS_KIND:
        return dict((spec.get("leaderWorkerTemplate") or {}).get("leaderTemplate") or {})
    return dict(spec.get("template") or {})

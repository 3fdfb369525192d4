"""The data plane of one QwenDeployment: the router Deployment and what it needs to run.

``qwenctl router`` (same image as the operator) sits between the client Service ``<name>``
and the server pods of every pool: it watches the server pods and the QwenDeployment
(``status.pools`` carries each pool's capacity weight) and picks a replica per request.

Pod shape, and why:
- 2 replicas by default, spread across nodes (topology spread, plus a preferred
  anti-affinity for schedulers without the spread plugin) and a PDB keeping one up: the
  router is on every request's path, so a node drain must never take all of it.
- ``automountServiceAccountToken: true`` on a ServiceAccount of its own: the router reads
  the API (pods and the QwenDeployment, nothing else; see :func:`router_role`).
- Small requests (a Python proxy: about one core per 1,000 short requests/s), restricted
  security (non-root, read-only root filesystem, no capabilities).
- Readiness on ``/health`` (200 once a server replica is Ready or while the router holds
  requests; 503 while draining), liveness on the TCP port only: ``/health`` is about
  whether to send traffic, not whether the process is stuck, and a router correctly
  holding at zero server replicas, or failing readiness for a reason a restart cannot fix,
  must never be killed for it.
- Shutdown without dropped requests: a ``preStop`` ``sleep`` (the built-in action, GA since
  Kubernetes v1.34: the image needs no ``sleep`` binary) keeps the router serving while
  the endpoint removal reaches every kube-proxy / gateway; only then SIGTERM starts the
  drain (``/health`` fails, in-flight requests and streams get ``DRAIN_SECONDS``), and the
  grace period covers both.
- With the Prometheus Operator present (the same check as the servers' ServiceMonitor), a
  ServiceMonitor ``<name>-router`` scrapes each router pod's ``/metrics`` (real TTFT per
  pool and version, held requests, retries, rejections) through the client Service.
- Labels carry ``app.kubernetes.io/component: router``: the server selector (component
  ``server``) never selects a router pod, nor the router selector a server pod.
- ``spec.routing.pod`` and the admin's ``podDefaults`` add labels, annotations, nodeSelector,
  tolerations, priorityClassName and imagePullSecrets (the same precedence as on the server
  pods); its affinity adds nodeAffinity / podAffinity, and a podAntiAffinity there replaces the
  operator's preferred spread; its resources set the CPU request and the memory request and limit.
"""

from __future__ import annotations

from typing import Any

from ..api import GROUP, PLURAL
from ..api.spec import QwenDeploymentSpec
from .names import (
    ROUTER_COMPONENT,
    common_labels,
    router_name,
    router_selector,
)
from .workload import (
    RenderContext,
    default_operator_image,
    k8s,
    merged_labels,
    metadata,
    pull_secrets,
    tolerations,
)

ROUTER_PORT = 8080
ROUTER_COMMAND = ("qwenctl", "router")
ROUTER_UID = 65532
HOSTNAME_TOPOLOGY = "kubernetes.io/hostname"
ROUTER_METRICS_PATH = "/metrics"
#: Seconds a terminating router keeps serving before SIGTERM: endpoint removal takes a few
#: seconds to reach every kube-proxy (and gateway), which still send it new connections meanwhile.
PRESTOP_SLEEP_SECONDS = 5
#: Seconds ``qwenctl router`` gives in-flight requests after SIGTERM (``router/cli.py``
#: ``DRAIN_SECONDS``; kept equal by a unit test: render may not import the router's I/O).
ROUTER_DRAIN_SECONDS = 30
#: The pod's grace period: the preStop sleep, the drain, and a margin for the process to exit.
ROUTER_GRACE_SECONDS = PRESTOP_SLEEP_SECONDS + ROUTER_DRAIN_SECONDS + 5


def _num(value: float) -> str:
    """``1.25`` -> ``1.25``, ``30.0`` -> ``30``: flag values as a user would type them."""
    return f"{value:g}"


def router_args(spec: QwenDeploymentSpec, ctx: RenderContext) -> list[str]:
    """``qwenctl router`` flags (after :data:`ROUTER_COMMAND`) from ``spec.routing``; the router checks them again."""
    r = spec.routing
    return [
        "--namespace",
        ctx.namespace,
        "--deployment",
        ctx.name,
        "--port",
        str(ROUTER_PORT),
        "--affinity",
        "on" if r.affinity else "off",
        "--load-bound",
        _num(r.load_bound),
        "--hold-queue",
        str(r.hold_queue),
        "--hold-timeout",
        _num(r.hold_timeout_seconds),
        "--retries",
        str(r.retries),
        "--canary-percent",
        _num(r.canary_traffic_percent),
    ]


def router_labels(name: str) -> dict[str, str]:
    return common_labels(name, ROUTER_COMPONENT)


ROUTER_CPU_REQUEST = "250m"
ROUTER_MEMORY_REQUEST = "256Mi"
ROUTER_MEMORY_LIMIT = "1Gi"


def router_resources(spec: QwenDeploymentSpec) -> dict[str, Any]:
    """CPU request (never a limit: a throttled router delays every request), memory request and limit."""
    res = spec.routing.pod.resources
    memory_limit = res.memory or ROUTER_MEMORY_LIMIT
    return {
        "requests": {"cpu": res.cpu or ROUTER_CPU_REQUEST, "memory": res.memory or ROUTER_MEMORY_REQUEST},
        "limits": {"memory": memory_limit},
    }


def router_affinity(spec: QwenDeploymentSpec, selector: dict[str, str]) -> dict[str, Any]:
    """The operator's preferred spread over nodes, with ``spec.routing.pod.affinity`` over it."""
    out: dict[str, Any] = {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {"topologyKey": HOSTNAME_TOPOLOGY, "labelSelector": {"matchLabels": selector}},
                }
            ]
        }
    }
    if spec.routing.pod.affinity is not None:
        out.update(k8s(spec.routing.pod.affinity))
    return out


def router_deployment(spec: QwenDeploymentSpec, ctx: RenderContext) -> dict[str, Any]:
    """The router Deployment ``<name>-router``."""
    labels = router_labels(ctx.name)
    selector = router_selector(ctx.name)
    readiness = {"httpGet": {"path": "/health", "port": "http"}, "timeoutSeconds": 2}
    liveness = {"tcpSocket": {"port": "http"}, "timeoutSeconds": 2}
    pod, admin = spec.routing.pod, ctx.defaults.pods
    template_meta: dict[str, Any] = {"labels": merged_labels(admin.labels, pod.labels, labels)}
    annotations = merged_labels(ctx.pod_annotations, admin.annotations, pod.annotations)
    if annotations:
        template_meta["annotations"] = annotations
    scheduling: dict[str, Any] = {}
    node_selector = merged_labels(admin.node_selector, pod.node_selector)
    if node_selector:
        scheduling["nodeSelector"] = node_selector
    tols = tolerations(admin.tolerations, pod.tolerations)
    if tols:
        scheduling["tolerations"] = tols
    priority = pod.priority_class_name or admin.priority_class_name
    if priority:
        scheduling["priorityClassName"] = priority
    secrets = pull_secrets(admin, [s.name for s in pod.image_pull_secrets])
    if secrets:
        scheduling["imagePullSecrets"] = secrets
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(ctx, router_name(ctx.name), labels),
        "spec": {
            "replicas": spec.routing.replicas,
            "selector": {"matchLabels": selector},
            # a new router pod is Ready (watching endpoints) before an old one goes
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "revisionHistoryLimit": 3,
            "template": {
                "metadata": template_meta,
                "spec": {
                    "serviceAccountName": router_name(ctx.name),
                    "automountServiceAccountToken": True,
                    "enableServiceLinks": False,
                    # preStop sleep, then the router's drain (in-flight requests and streams finish)
                    "terminationGracePeriodSeconds": ROUTER_GRACE_SECONDS,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": ROUTER_UID,
                        "runAsGroup": ROUTER_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": HOSTNAME_TOPOLOGY,
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": selector},
                        }
                    ],
                    "affinity": router_affinity(spec, selector),
                    **scheduling,
                    "containers": [
                        {
                            "name": "router",
                            "image": ctx.operator_image or default_operator_image(),
                            "command": list(ROUTER_COMMAND),
                            "args": router_args(spec, ctx),
                            "ports": [{"name": "http", "containerPort": ROUTER_PORT, "protocol": "TCP"}],
                            "readinessProbe": {**readiness, "periodSeconds": 2, "failureThreshold": 2},
                            "livenessProbe": {**liveness, "periodSeconds": 10, "failureThreshold": 6},
                            "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_SECONDS}}},
                            "resources": router_resources(spec),
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                                "seccompProfile": {"type": "RuntimeDefault"},
                            },
                        }
                    ],
                },
            },
        },
    }


def router_pdb(spec: QwenDeploymentSpec, ctx: RenderContext) -> dict[str, Any]:
    """Keep one router pod through voluntary disruptions (it carries every request)."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(ctx, router_name(ctx.name), router_labels(ctx.name)),
        "spec": {
            "minAvailable": 1,
            "selector": {"matchLabels": router_selector(ctx.name)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def router_service_account(spec: QwenDeploymentSpec, ctx: RenderContext) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(ctx, router_name(ctx.name), router_labels(ctx.name)),
        "automountServiceAccountToken": True,
    }


def router_role(spec: QwenDeploymentSpec, ctx: RenderContext) -> dict[str, Any]:
    """What the router reads, and nothing else: pods (endpoints) and QwenDeployments (capacity, settings).

    The operator may only grant what it holds itself (RBAC escalation prevention); its chart
    gives it exactly these verbs on these resources."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": metadata(ctx, router_name(ctx.name), router_labels(ctx.name)),
        "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "list", "watch"]},
        ],
    }


def router_role_binding(spec: QwenDeploymentSpec, ctx: RenderContext) -> dict[str, Any]:
    name = router_name(ctx.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": metadata(ctx, name, router_labels(ctx.name)),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ctx.namespace}],
    }


def router_service_monitor(spec: QwenDeploymentSpec, ctx: RenderContext) -> dict[str, Any]:
    """``<name>-router``: Prometheus scrapes every router pod's ``/metrics`` through the client Service
    ``<name>`` (which carries the router labels); the servers' ServiceMonitor selects only
    ``<name>-servers``, so each pod is scraped once, by the monitor that knows its path."""
    labels = router_labels(ctx.name)
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": metadata(ctx, router_name(ctx.name), labels),
        "spec": {
            "selector": {"matchLabels": dict(labels)},
            "namespaceSelector": {"matchNames": [ctx.namespace]},
            "endpoints": [
                {"port": "http", "path": ROUTER_METRICS_PATH, "interval": f"{spec.scaling.interval_seconds}s"}
            ],
        },
    }


def router_objects(spec: QwenDeploymentSpec, ctx: RenderContext) -> list[dict[str, Any]]:
    """ServiceAccount, Role, RoleBinding, PDB, Deployment (the order they are applied in), and the
    ServiceMonitor when the Prometheus Operator's CRD exists (``ctx.service_monitor``)."""
    out = [
        router_service_account(spec, ctx),
        router_role(spec, ctx),
        router_role_binding(spec, ctx),
        router_pdb(spec, ctx),
        router_deployment(spec, ctx),
    ]
    if ctx.service_monitor:
        out.append(router_service_monitor(spec, ctx))
    return out

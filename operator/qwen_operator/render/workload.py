"""One Deployment per GPU pool: the inference server plus the model-pull init container.

Pod shape, and why:
- ``model-pull`` init container (operator image, ``qwenctl model pull``) fills the model
  cache and switches ``current`` atomically; the server then reads, read-only with
  ``HF_HUB_OFFLINE=1``, ``/models/models/<namespace>.<name>/versions/<id>`` when its version is a
  ``sha256:`` manifest digest (its own tree: :func:`model_path`), else ``.../current``.
- ``nvidia.com/gpu`` = shards, a nodeSelector on ``nvidia.com/gpu.product`` (a required node
  expression ``In`` every label when the catalog type has several, e.g. A100 SXM4 and PCIe) and a
  toleration for the usual ``nvidia.com/gpu:NoSchedule`` taint.
- ``/dev/shm`` is a memory emptyDir (NCCL between shards); ``/tmp`` an emptyDir for caches.
- Probes: the port refuses connections until the model is loaded and warmed up, so a
  startup probe with a 30-minute budget guards readiness and liveness on ``/health``.
- Graceful stop: a ``preStop`` sleep (``spec.pod.preStopSleepSeconds``, default 10 s; the built-in
  sleep action, as on the router pods) keeps a stopping replica serving while its endpoint removal
  reaches the router and every kube-proxy, then SIGTERM starts the engine's drain;
  ``terminationGracePeriodSeconds`` is the sleep plus 120 s (TGI drains for up to 90 s) unless
  ``spec.pod.terminationGracePeriodSeconds`` says otherwise.
- ``spec.pod`` (:func:`server_pod_spec`): labels, annotations, nodeSelector (merged with the GPU
  selection), tolerations (added), affinity (the GPU expression added to each required term),
  topology spread (unset labelSelector: this deployment's server pods), priorityClassName,
  imagePullSecrets (the engine and the model-pull image), serviceAccountName, server env and extra
  engine flags; ``spec.pod.pools[]`` adds nodeSelector, tolerations, env and flags for one pool.
  Admission refused every key, variable and flag the operator sets, so the operator's never lose.
- Restricted pod security (non-root, no privilege escalation, all capabilities dropped,
  RuntimeDefault seccomp, read-only root filesystems: HOME, HF_HOME and every engine cache
  live under the ``/tmp`` emptyDir), and no ServiceAccount token (the servers never call the
  API). With a PVC cache the pod passes the ``restricted`` Pod Security level. A hostPath
  cache is created root-owned by the kubelet, so with a hostPath the model-pull container
  alone runs as root (still without capabilities or escalation); hostPath volumes are
  forbidden by the ``baseline`` level, so that mode needs a ``privileged`` namespace.
- Multi-tenancy: the node directory comes from the admin's allowlist (``nodeCache.path`` /
  ``nodeCache.allowedPaths``, :func:`cache_path_problem`; the reconciler refuses any other
  with ``CachePathNotAllowed``) and each namespace mounts its own ``<path>/<namespace>``.
- ServiceAccount: none of the API's (``automountServiceAccountToken: false``) unless
  ``spec.pod.serviceAccountName`` names one for a workload identity (IRSA, GKE Workload Identity):
  then the pod leaves the token to that ServiceAccount's own ``automountServiceAccountToken``.
- RollingUpdate with ``maxUnavailable: 0``: capacity never drops during a version roll;
  the model version is a pod template label and annotation, so a new version rolls pods.

Operator-config defaults (:class:`OperatorDefaults`) fill what a resource leaves unset, and
the resource always wins:

- ``podDefaults`` (:class:`PodDefaults`): labels, annotations, nodeSelector, tolerations,
  imagePullSecrets and priorityClassName of every server and router pod, under ``spec.pod``;
- the hostPath cache directory: ``spec.model.cache.path``, else ``nodeCache.path`` (plus
  ``/<namespace>``);
- the model-pull ``envFrom`` Secret: ``spec.model.credentialsSecret``, else
  ``registry.credentialsSecret``, else none;
- ``AWS_ENDPOINT_URL`` (``registry.endpointURL``) and ``AWS_REGION`` / ``AWS_DEFAULT_REGION``
  (``registry.region``), for ``s3://`` registries, only when the resource does **not** name
  its own ``spec.model.credentialsSecret``: that Secret is then its whole registry
  environment (credentials, endpoint, region). Kubernetes lets ``env`` override ``envFrom``,
  so injecting the defaults next to it would silently replace the Secret's own values. Next
  to ``registry.credentialsSecret`` they do win over the same keys in that Secret (both are
  operator config; set each value in one place).
"""

from __future__ import annotations

import functools
import posixpath
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from ..api import API_VERSION, KIND
from ..api.spec import (
    DEFAULT_CACHE_PATH,
    Affinity,
    PoolPodSpec,
    QwenDeploymentSpec,
    ServerPodSpec,
    TopologySpreadConstraint,
)
from ..catalog import GPUType, resolve_gpu_name
from ..engines.runtimes import runtime_for
from ..modelsync.manifest import DIGEST_RE, short_id
from ..planner.pools import Pool
from .names import (
    ANNOTATION_MODEL,
    ANNOTATION_MODEL_VERSION,
    LABEL_MODEL_VERSION,
    LABEL_POOL,
    common_labels,
    label_value,
    pool_deployment_name,
    pool_selector,
    pool_slug,
    server_selector,
)

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
MODELS_MOUNT = "/models"
SERVER_UID = 1000
STARTUP_BUDGET_SECONDS = 1800
#: What the engine gets after SIGTERM (TGI drains for up to 90 s); the preStop sleep comes on top.
TERMINATION_GRACE_SECONDS = 120
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}


# how a pool with no GPU for a surge pod rolls: one replica at a time (a borrowed replica covers it)
NO_SURGE_ROLLING_UPDATE = {"maxSurge": 0, "maxUnavailable": 1}


@dataclass(frozen=True)
class PodDefaults:
    """Operator config ``podDefaults``: the cluster admin's additions to every server and router pod.

    Under the resource's own ``spec.pod`` / ``spec.routing.pod``: maps (labels, annotations, nodeSelector)
    merge with the resource winning per key, lists (imagePullSecrets, tolerations) add up, and the
    resource's priorityClassName wins. The operator's own keys win over both."""

    image_pull_secrets: tuple[str, ...] = ()
    tolerations: tuple[dict[str, Any], ...] = ()
    node_selector: tuple[tuple[str, str], ...] = ()
    priority_class_name: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class OperatorDefaults:
    """Operator-config defaults for what a QwenDeployment leaves unset (``registry.*``, ``nodeCache.path``,
    ``podDefaults``)."""

    registry_endpoint_url: str | None = None  # registry.endpointURL -> AWS_ENDPOINT_URL of model-pull
    registry_region: str | None = None  # registry.region -> AWS_REGION and AWS_DEFAULT_REGION of model-pull
    credentials_secret: str | None = None  # registry.credentialsSecret -> envFrom of model-pull
    node_cache_path: str = DEFAULT_CACHE_PATH  # nodeCache.path -> the hostPath cache directory
    allowed_cache_paths: tuple[str, ...] = ()  # nodeCache.allowedPaths: what spec.model.cache.path may name too
    pods: PodDefaults = field(default_factory=PodDefaults)  # podDefaults: every server and router pod

    def allowed_paths(self) -> tuple[str, ...]:
        """The cache directories a resource may choose among: ``nodeCache.path`` and ``nodeCache.allowedPaths``."""
        paths = [_normal(self.node_cache_path), *(_normal(p) for p in self.allowed_cache_paths)]
        return tuple(dict.fromkeys(paths))


@dataclass(frozen=True)
class RenderContext:
    """Facts about the resource that are not in its spec."""

    name: str
    namespace: str
    model_version: str | None = None  # status.model.targetVersion when known, else spec.model.version
    operator_image: str | None = None  # None: ghcr.io/qwenops/qwen-operator:<package version>
    owner_uid: str | None = None  # adds an ownerReference when set
    service_monitor: bool = False  # render a ServiceMonitor (only when that CRD exists)
    gateway_api: bool = False  # render InferencePool + HTTPRoute when asked (only when both CRDs exist)
    pod_annotations: tuple[tuple[str, str], ...] = ()  # operator config podAnnotations (mesh, scraping, ...)
    # pools rolling without room to surge on their own GPU type: one replica at a time (the
    # controller borrows the surge on another pool so ready capacity does not drop)
    no_surge_pools: tuple[str, ...] = ()
    defaults: OperatorDefaults = field(default_factory=OperatorDefaults)  # operator config registry, nodeCache


@functools.cache  # package metadata is read from disk: ~1 ms a call, on every reconcile otherwise
def operator_version() -> str:
    try:
        return version("qwen-operator")
    except PackageNotFoundError:
        return "latest"


def default_operator_image() -> str:
    return f"ghcr.io/qwenops/qwen-operator:{operator_version()}"


def model_key(ctx: RenderContext) -> str:
    """The model-sync name of this deployment: ``<namespace>.<name>``."""
    return f"{ctx.namespace}.{ctx.name}"


def model_path(ctx: RenderContext, model_version: str | None = None) -> str:
    """The directory the server loads (its ``--model-id`` / ``--model``). A ``sha256:`` manifest digest
    pins the pod to its own version tree, ``versions/<digest hex[:16]>`` (what the init container's
    pull builds): during a roll a node holds several versions and ``current`` follows the latest pull,
    so an old-version pod whose server restarts must not load the new version another pod's init
    container flipped ``current`` to. Any other version (a tag, a version name, ``hf://``) reads
    ``current``, the version this pod's own pull left there."""
    base = f"{MODELS_MOUNT}/models/{model_key(ctx)}"
    if model_version is not None and DIGEST_RE.match(model_version):
        return f"{base}/versions/{short_id(model_version)}"
    return f"{base}/current"


def version_of(spec: QwenDeploymentSpec, ctx: RenderContext) -> str:
    return ctx.model_version or spec.model.version


def owner_references(ctx: RenderContext) -> list[dict[str, Any]]:
    if not ctx.owner_uid:
        return []
    return [
        {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": ctx.name,
            "uid": ctx.owner_uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def metadata(ctx: RenderContext, name: str, labels: dict[str, str]) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ctx.namespace, "labels": labels}
    refs = owner_references(ctx)
    if refs:
        meta["ownerReferences"] = refs
    return meta


def cache_path(spec: QwenDeploymentSpec, ctx: RenderContext) -> str:
    """The hostPath cache directory: ``spec.model.cache.path``, else the operator's ``nodeCache.path``."""
    return spec.model.cache.path or ctx.defaults.node_cache_path


def _normal(path: str) -> str:
    return path.rstrip("/") or "/"


def namespace_cache_dir(spec: QwenDeploymentSpec, ctx: RenderContext) -> str:
    """The node directory the pods mount: ``<cache path>/<namespace>``, so a tenant never reads (or poisons)
    another namespace's models on a shared node. A namespace name is a DNS label: never ``..`` or a ``/``."""
    return f"{_normal(cache_path(spec, ctx)).rstrip('/')}/{ctx.namespace}"


def cache_path_problem(spec: QwenDeploymentSpec, defaults: OperatorDefaults) -> str | None:
    """Why ``spec.model.cache.path`` may not be used (None: allowed). Only the cluster admin's directories
    (operator config ``nodeCache.path`` / ``nodeCache.allowedPaths``) may be mounted from the node; the
    admission webhook cannot know them, so the reconciler reports this as a condition."""
    path = spec.model.cache.path
    if spec.model.cache.type != "hostPath" or path is None:
        return None
    allowed = defaults.allowed_paths()
    if _normal(path) in allowed and posixpath.normpath(path) == _normal(path):
        return None
    return (
        f"spec.model.cache.path: {path} is not an allowed node cache directory; the operator config allows "
        f"{', '.join(allowed)} (nodeCache.path, nodeCache.allowedPaths). Unset it to use {allowed[0]}, "
        "or ask the cluster admin to allow the directory."
    )


def credentials_secret(spec: QwenDeploymentSpec, ctx: RenderContext) -> str | None:
    """The model-pull Secret: ``spec.model.credentialsSecret``, else the operator's ``registry.credentialsSecret``."""
    return spec.model.credentials_secret or ctx.defaults.credentials_secret or None


def registry_env(spec: QwenDeploymentSpec, ctx: RenderContext) -> list[dict[str, str]]:
    """``registry.endpointURL`` / ``registry.region`` as model-pull environment (see the module docstring)."""
    if spec.model.credentials_secret or not spec.model.registry.startswith("s3://"):
        return []
    env = []
    if ctx.defaults.registry_endpoint_url:
        env.append({"name": "AWS_ENDPOINT_URL", "value": ctx.defaults.registry_endpoint_url})
    if ctx.defaults.registry_region:
        # boto3 reads AWS_DEFAULT_REGION; AWS_REGION is what the other AWS SDKs and CLIs read
        env.append({"name": "AWS_REGION", "value": ctx.defaults.registry_region})
        env.append({"name": "AWS_DEFAULT_REGION", "value": ctx.defaults.registry_region})
    return env


def _cache_volume(spec: QwenDeploymentSpec, ctx: RenderContext) -> dict[str, Any]:
    cache = spec.model.cache
    if cache.type == "pvc":
        return {"name": "model-cache", "persistentVolumeClaim": {"claimName": cache.claim_name}}
    return {"name": "model-cache", "hostPath": {"path": namespace_cache_dir(spec, ctx), "type": "DirectoryOrCreate"}}


def _restricted(run_as_root: bool = False) -> dict[str, Any]:
    # every write goes to a volume (the cache, /tmp with HOME and HF_HOME in it, /dev/shm)
    ctx: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if run_as_root:
        ctx.update(runAsNonRoot=False, runAsUser=0)
    return ctx


def model_pull_container(spec: QwenDeploymentSpec, ctx: RenderContext) -> dict[str, Any]:
    """The init container that syncs the model version into the node cache (agreed contract)."""
    container: dict[str, Any] = {
        "name": "model-pull",
        "image": ctx.operator_image or default_operator_image(),
        "command": ["qwenctl", "model", "pull"],
        "args": [
            "--registry",
            spec.model.registry,
            "--version",
            version_of(spec, ctx),
            "--cache",
            MODELS_MOUNT,
            "--name",
            model_key(ctx),
        ],
        "volumeMounts": [{"name": "model-cache", "mountPath": MODELS_MOUNT}, {"name": "tmp", "mountPath": "/tmp"}],
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
        "securityContext": _restricted(run_as_root=spec.model.cache.type == "hostPath"),
    }
    secret = credentials_secret(spec, ctx)
    if secret:
        container["envFrom"] = [{"secretRef": {"name": secret}}]
    env = registry_env(spec, ctx)
    if env:
        container["env"] = env
    return container


def chat_template_container(
    spec: QwenDeploymentSpec, ctx: RenderContext, thinking_model: bool
) -> dict[str, Any] | None:
    """``reasoning: disabled``: writes the engine's non-thinking chat template into the ``/tmp`` emptyDir the
    server reads it from (``engines.chat_template``). Inline in the pod template, not a ConfigMap: no
    extra object or RBAC, and a changed template rolls the pods like any other server setting."""
    files = runtime_for(spec).chat_files(spec, thinking_model)
    if not files:
        return None
    env = [{"name": f"QWEN_CHAT_FILE_{i}", "value": content} for i, content in enumerate(files.values())]
    steps = [
        f'mkdir -p "$(dirname {path})" && printf %s "$QWEN_CHAT_FILE_{i}" > {path}' for i, path in enumerate(files)
    ]
    return {
        "name": "chat-template",
        "image": ctx.operator_image or default_operator_image(),
        "command": ["sh", "-c", " && ".join(steps)],
        "env": env,
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        "securityContext": _restricted(),
    }


def _probe(path: str, period: int, failures: int, timeout: int = 5) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
    }


def k8s(model: Any) -> Any:
    """An API model as the Kubernetes object it mirrors (camelCase, unset and empty fields left out)."""
    return model.model_dump(by_alias=True, exclude_none=True, exclude_defaults=True)


def pool_overlay(spec: QwenDeploymentSpec, gpu: GPUType) -> PoolPodSpec | None:
    """The ``spec.pod.pools`` entry of ``gpu``'s pool (its gpuType in any spelling the catalog accepts)."""

    def matches(name: str) -> bool:
        try:
            return resolve_gpu_name(name, {gpu.name: gpu}) == gpu.name
        except KeyError:
            return False

    return spec.pod.for_pool(matches)


def gpu_selection(gpu: GPUType) -> tuple[dict[str, str], dict[str, Any] | None]:
    """How a pool's pods find their GPU type: a nodeSelector on the one product label, or (a type with
    several labels, e.g. A100-80GB SXM4 and PCIe) a required node expression ``In`` all of them."""
    labels = gpu.product_labels
    if len(labels) == 1:
        return {GPU_PRODUCT_LABEL: labels[0]}, None
    return {}, {"key": GPU_PRODUCT_LABEL, "operator": "In", "values": list(labels)}


def pod_gpu_products(pod_spec: dict[str, Any]) -> list[str]:
    """The ``nvidia.com/gpu.product`` values a rendered server pod spec selects (see :func:`gpu_selection`)."""
    product = (pod_spec.get("nodeSelector") or {}).get(GPU_PRODUCT_LABEL)
    if product:
        return [str(product)]
    required = ((pod_spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    for term in required.get("nodeSelectorTerms") or []:
        for expr in term.get("matchExpressions") or []:
            if expr.get("key") == GPU_PRODUCT_LABEL and expr.get("operator") == "In":
                return [str(v) for v in expr.get("values") or []]
    return []


def with_gpu_affinity(affinity: Affinity | None, gpu_expr: dict[str, Any] | None) -> dict[str, Any] | None:
    """The pod's affinity: the resource's, with the GPU product expression added to every required node term
    (terms are alternatives, so each must carry it)."""
    out: dict[str, Any] = k8s(affinity) if affinity is not None else {}
    if gpu_expr is not None:
        node = out.setdefault("nodeAffinity", {})
        required = node.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
        terms = required.get("nodeSelectorTerms") or [{}]
        required["nodeSelectorTerms"] = [
            {**term, "matchExpressions": [*(term.get("matchExpressions") or []), gpu_expr]} for term in terms
        ]
    return out or None


def merged_labels(*maps: Any) -> dict[str, str]:
    """Maps (dicts or key/value tuples) merged left to right: a later one wins per key."""
    out: dict[str, str] = {}
    for m in maps:
        out.update(dict(m))
    return out


def pull_secrets(defaults: PodDefaults, names: list[str]) -> list[dict[str, str]]:
    """``imagePullSecrets``: the admin's podDefaults, then the resource's, each name once."""
    return [{"name": n} for n in dict.fromkeys([*defaults.image_pull_secrets, *names])]


def tolerations(*lists: Any) -> list[dict[str, Any]]:
    """Tolerations added up, each distinct one once."""
    out: list[dict[str, Any]] = []
    for lst in lists:
        for tol in lst:
            item = tol if isinstance(tol, dict) else k8s(tol)
            if item not in out:
                out.append(item)
    return out


def spread_constraints(pod: ServerPodSpec, name: str) -> list[dict[str, Any]]:
    """``topologySpreadConstraints``; one without a labelSelector counts this deployment's server pods."""

    def one(c: TopologySpreadConstraint) -> dict[str, Any]:
        out: dict[str, Any] = k8s(c)
        if c.label_selector is None:
            out["labelSelector"] = {"matchLabels": server_selector(name)}
        return out

    return [one(c) for c in pod.topology_spread_constraints]


def server_env(spec: QwenDeploymentSpec, pool: PoolPodSpec | None) -> list[dict[str, Any]]:
    """``spec.pod.env`` with the pool's entries over it (same name: the pool's), after the engine's own."""
    user = {e.name: e for e in spec.pod.env}
    user.update({e.name: e for e in (pool.env if pool else [])})
    return [k8s(e) for e in user.values()]


def termination_grace_seconds(spec: QwenDeploymentSpec) -> int:
    """``spec.pod.terminationGracePeriodSeconds``, else the preStop sleep plus the engine's drain budget."""
    pod = spec.pod
    if pod.termination_grace_period_seconds is not None:
        return pod.termination_grace_period_seconds
    return pod.pre_stop_sleep_seconds + TERMINATION_GRACE_SECONDS


def server_container(
    spec: QwenDeploymentSpec,
    ctx: RenderContext,
    shards: int,
    thinking_model: bool = False,
    pool: PoolPodSpec | None = None,
) -> dict[str, Any]:
    rt = runtime_for(spec)
    limits: dict[str, Any] = {GPU_RESOURCE: str(shards)}
    requests: dict[str, Any] = {GPU_RESOURCE: str(shards)}
    for key, value in (("cpu", spec.runtime.resources.cpu), ("memory", spec.runtime.resources.memory)):
        if value is not None:
            limits[key] = requests[key] = value
    container: dict[str, Any] = {
        "name": rt.name,
        "image": spec.runtime.image or rt.default_image,
        # the extra flags come last: admission refused every flag the engine adapter renders
        "args": [*rt.args(spec, shards, model_path(ctx, version_of(spec, ctx)), thinking_model), *spec.pod.extra_args]
        + (list(pool.extra_args) if pool else []),
        "env": [*rt.env(spec, shards), *server_env(spec, pool)],
        "ports": [{"name": "http", "containerPort": rt.port, "protocol": "TCP"}],
        "resources": {"requests": requests, "limits": limits},
        "startupProbe": _probe(rt.health_path, 10, STARTUP_BUDGET_SECONDS // 10),
        "readinessProbe": _probe(rt.health_path, 5, 3),
        "livenessProbe": _probe(rt.health_path, 15, 4),
        "volumeMounts": [
            {"name": "model-cache", "mountPath": MODELS_MOUNT, "readOnly": True},
            {"name": "shm", "mountPath": "/dev/shm"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "securityContext": _restricted(),
    }
    if spec.pod.pre_stop_sleep_seconds:
        # keep serving while the endpoint removal reaches the router and every kube-proxy; then SIGTERM
        # starts the engine's drain. The built-in sleep action: the engine image needs no sleep binary.
        container["lifecycle"] = {"preStop": {"sleep": {"seconds": spec.pod.pre_stop_sleep_seconds}}}
    return container


def server_pod_spec(
    spec: QwenDeploymentSpec, ctx: RenderContext, pool: Pool, gpu: GPUType, thinking_model: bool = False
) -> dict[str, Any]:
    """The server pod spec of one pool: the operator's shape with ``spec.pod``, its pool entry and the
    admin's ``podDefaults`` added (see :class:`PodDefaults` for who wins)."""
    chat = chat_template_container(spec, ctx, thinking_model)
    pod, admin, overlay = spec.pod, ctx.defaults.pods, pool_overlay(spec, gpu)
    gpu_selector, gpu_expr = gpu_selection(gpu)
    out: dict[str, Any] = {
        "terminationGracePeriodSeconds": termination_grace_seconds(spec),
        "nodeSelector": merged_labels(
            admin.node_selector, pod.node_selector, overlay.node_selector if overlay else {}, gpu_selector
        ),
        "tolerations": tolerations(
            [GPU_TOLERATION], admin.tolerations, pod.tolerations, overlay.tolerations if overlay else []
        ),
    }
    affinity = with_gpu_affinity(pod.affinity, gpu_expr)
    if affinity:
        out["affinity"] = affinity
    spread = spread_constraints(pod, ctx.name)
    if spread:
        out["topologySpreadConstraints"] = spread
    priority = pod.priority_class_name or admin.priority_class_name
    if priority:
        out["priorityClassName"] = priority
    secrets = pull_secrets(admin, [s.name for s in pod.image_pull_secrets])
    if secrets:
        out["imagePullSecrets"] = secrets  # the engine image and the operator image of model-pull
    out["securityContext"] = {
        "runAsNonRoot": True,
        "runAsUser": SERVER_UID,
        "runAsGroup": SERVER_UID,
        "fsGroup": SERVER_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    out["enableServiceLinks"] = False
    if pod.service_account_name:
        # a workload identity for model pulls (IRSA, GKE Workload Identity, Azure): the ServiceAccount's own
        # automountServiceAccountToken decides (the identity webhooks project their own token anyway)
        out["serviceAccountName"] = pod.service_account_name
    else:
        # the servers never call the Kubernetes API: no token for a user-chosen image to read
        out["automountServiceAccountToken"] = False
    out["initContainers"] = [model_pull_container(spec, ctx), *([chat] if chat else [])]
    out["containers"] = [server_container(spec, ctx, pool.shards, thinking_model, overlay)]
    out["volumes"] = [
        _cache_volume(spec, ctx),
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.runtime.shm_size}},
        {"name": "tmp", "emptyDir": {}},
    ]
    return out


def pool_labels(ctx: RenderContext, pool: Pool) -> dict[str, str]:
    """The labels of a pool's object (Deployment or LeaderWorkerSet) and its server pods."""
    return {**common_labels(ctx.name), LABEL_POOL: pool_slug(pool.gpu_type)}


def server_pod_metadata(spec: QwenDeploymentSpec, ctx: RenderContext, pool: Pool) -> dict[str, Any]:
    """A pool's server pod template metadata: admin defaults, then the resource's, then the operator's
    own keys (admission refused those), and the model version as a label and an annotation."""
    model_version = version_of(spec, ctx)
    admin = ctx.defaults.pods
    own_labels = {**pool_labels(ctx, pool), LABEL_MODEL_VERSION: label_value(model_version)}
    return {
        "labels": merged_labels(admin.labels, spec.pod.labels, own_labels),
        "annotations": merged_labels(
            ctx.pod_annotations,
            admin.annotations,
            spec.pod.annotations,
            {ANNOTATION_MODEL_VERSION: model_version, ANNOTATION_MODEL: spec.model.name},
        ),
    }


def pool_deployment(
    spec: QwenDeploymentSpec, ctx: RenderContext, pool: Pool, gpu: GPUType, thinking_model: bool = False
) -> dict[str, Any]:
    """The Deployment of one GPU pool; ``thinking_model``: the catalog model has Qwen3's thinking mode."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(ctx, pool_deployment_name(ctx.name, pool.gpu_type), pool_labels(ctx, pool)),
        "spec": {
            "replicas": pool.replicas,
            "selector": {"matchLabels": pool_selector(ctx.name, pool.gpu_type)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": dict(NO_SURGE_ROLLING_UPDATE)
                if pool.gpu_type in ctx.no_surge_pools
                else {"maxSurge": spec.rollout.max_surge, "maxUnavailable": 0},
            },
            "progressDeadlineSeconds": STARTUP_BUDGET_SECONDS + 600,
            "revisionHistoryLimit": 3,
            "template": {
                "metadata": server_pod_metadata(spec, ctx, pool),
                "spec": server_pod_spec(spec, ctx, pool, gpu, thinking_model),
            },
        },
    }

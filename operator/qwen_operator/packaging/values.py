"""The Helm chart's values as typed models: the one source of ``values.yaml`` and its schema.

Every chart value is a field here with a docstring; :mod:`.generate` writes
``charts/qwen-operator/values.yaml`` (each value preceded by its documentation, defaults
from the field defaults) and ``values.schema.json`` (JSON Schema, with ``$ref`` inlined
so Helm's validator and editors see one plain document) from these models. A typo'd key,
a wrong enum or an out-of-range number then fails at ``helm install`` with the value's
path and what is accepted, instead of rendering a broken Deployment.

Models are strict and forbid unknown keys; free-form Kubernetes snippets (resources,
tolerations, affinity) stay ``dict`` because the API server validates those.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

from ..api.spec import DEFAULT_CACHE_PATH
from ..api.types import DNS_SUBDOMAIN_PATTERN

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DURATION = r"^[0-9]+(ms|s|m|h)$"
IMAGE_REPOSITORY = r"^[a-z0-9]+([._/:-][a-z0-9]+)*$"
Port = Annotated[int, Field(ge=1, le=65535)]
# a Kubernetes annotation key: optional DNS-subdomain prefix and "/", then a name of at most 63 characters
ANNOTATION_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
Namespace = Annotated[str, Field(pattern=DNS_LABEL, max_length=63)]


def _config() -> ConfigDict:
    return ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        strict=True,
        use_attribute_docstrings=True,
    )


class _Values(BaseModel):
    model_config = _config()


class Image(_Values):
    """The operator image (also used for the model-pull init container of every replica)."""

    repository: str = Field(default="ghcr.io/qwenops/qwen-operator", pattern=IMAGE_REPOSITORY)
    """Image repository, without tag."""
    tag: str = Field(default="", pattern=r"^([A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$")
    """Image tag; empty means the chart's appVersion."""
    digest: str = Field(default="", pattern=r"^(sha256:[a-f0-9]{64})?$")
    """Image digest (sha256:...); when set it pins the image and wins over the tag."""
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    """Kubernetes imagePullPolicy of the operator container."""


class LocalObjectReference(_Values):
    """A reference to a Secret by name."""

    name: str = Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)
    """Name of a Secret: in the release namespace (imagePullSecrets of the operator pod), in each
    QwenDeployment's namespace (config.podDefaults.imagePullSecrets)."""


class Crds(_Values):
    """The QwenDeployment CustomResourceDefinition (generated from the API models, never hand-edited)."""

    enabled: bool = True
    """Install and upgrade the CRD with the chart; turn off when CRDs are managed separately."""
    keep: bool = True
    """Annotate the CRD with helm.sh/resource-policy=keep so `helm uninstall` never deletes it (and every
    QwenDeployment with it)."""


class ServiceAccount(_Values):
    """The operator's ServiceAccount (the identity every RBAC rule is granted to)."""

    create: bool = True
    """Create the operator's ServiceAccount."""
    name: str = Field(default="", pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$", max_length=253)
    """ServiceAccount name; empty means the release's full name. Must exist when create is false."""
    annotations: dict[str, str] = Field(default_factory=dict)
    """Annotations on the ServiceAccount (e.g. eks.amazonaws.com/role-arn for registry access)."""


class Rbac(_Values):
    """The operator's permissions."""

    create: bool = True
    """Create the (Cluster)Roles and bindings the operator needs; least privilege, each rule commented."""
    service_monitors: bool = True
    """Let the operator create a Prometheus Operator ServiceMonitor per QwenDeployment (and read whether that
    CRD exists). Off: no ServiceMonitors are made and the autoscaler needs another scrape configuration."""
    gateway_api: bool = Field(default=True, alias="gatewayAPI")
    """Let the operator manage the Gateway API path (spec.routing.gateway.inferencePool): InferencePools and
    HTTPRoutes, and read whether those CRDs exist. Off: only the built-in router is rendered."""
    leader_worker_set: bool = Field(default=True, alias="leaderWorkerSet")
    """Let the operator run replicas that span nodes as LeaderWorkerSets (leaderworkerset.x-k8s.io) and read
    whether that CRD exists. Off: a model no single node holds is reported, never placed."""


class OperatorArgs(_Values):
    """Command-line flags of `qwenctl operator run`."""

    log_format: Literal["plain", "json"] = "json"
    """Log line format: json for log pipelines, plain for people."""
    verbose: bool = False
    """Debug logging."""
    liveness_port: Port = 8080
    """Port of the health endpoint probed by the kubelet: /healthz (liveness) and, with leader election,
    /readyz (readiness: the leader, or a standby that can reach its Lease); kopf's own /healthz without."""
    extra_args: list[str] = Field(default_factory=list)
    """Extra arguments appended to `qwenctl operator run`."""
    extra_env: list[dict[str, Any]] = Field(default_factory=list)
    """Extra environment variables (Kubernetes EnvVar objects) for the operator container."""


class LeaderElection(_Values):
    """Leader election between operator replicas on a coordination.k8s.io Lease (<fullname>-leader in the
    release namespace): only the holder runs handlers and writes; a standby runs nothing until it holds the
    Lease; a leader that cannot renew in time exits (and restarts as a standby); on SIGTERM the leader
    releases the Lease so a rolling upgrade hands over at once. Required for replicaCount > 1."""

    enabled: bool = True
    """Run `qwenctl operator run --leader-elect` (off: one replica, Recreate upgrades)."""
    lease_duration_seconds: int = Field(default=10, ge=2, le=300)
    """Seconds a standby waits after the Lease last changed before taking it over: a killed leader is
    replaced about this long after its last renewal. Must exceed renewDeadlineSeconds."""
    renew_deadline_seconds: int = Field(default=7, ge=2, le=299)
    """Seconds the leader keeps leading without a successful renewal before it exits; the gap to
    leaseDurationSeconds is the safety margin against two writers."""
    retry_period_seconds: int = Field(default=2, ge=1, le=60)
    """Seconds between the leader's renewals and between a standby's looks at the Lease."""


class PodDisruptionBudget(_Values):
    """A PodDisruptionBudget for the operator pods (rendered only with replicaCount > 1): a node drain
    never evicts the last operator replica."""

    enabled: bool = True
    """Create the PodDisruptionBudget."""
    min_available: int = Field(default=1, ge=1)
    """Operator pods that must stay up during voluntary disruptions (drains, cluster upgrades)."""


class Probe(_Values):
    """Timing of the liveness and readiness probes (see operator.livenessPort)."""

    initial_delay_seconds: int = Field(default=5, ge=0)
    """Seconds before the first probe."""
    period_seconds: int = Field(default=10, ge=1)
    """Seconds between probes."""
    timeout_seconds: int = Field(default=5, ge=1)
    """Seconds before a probe times out."""
    failure_threshold: int = Field(default=6, ge=1)
    """Failed probes in a row before the container is restarted (liveness) or marked unready."""


class GPUTypeOverride(_Values):
    """A GPU type override or a new GPU type (a new one needs productLabel, memoryGB, bandwidthGBps, bf16TFLOPS,
    pricePerGPUHour)."""

    product_label: str | None = None
    """Value of the node label nvidia.com/gpu.product for this GPU type."""
    memory_gb: float | None = Field(default=None, gt=0, alias="memoryGB")
    """GPU memory in GB."""
    bandwidth_g_bps: float | None = Field(default=None, gt=0, alias="bandwidthGBps")
    """Memory bandwidth in GB/s."""
    bf16_tflops: float | None = Field(default=None, gt=0, alias="bf16TFLOPS")
    """Dense BF16 tensor TFLOP/s."""
    price_per_gpu_hour: float | None = Field(default=None, ge=0, alias="pricePerGPUHour")
    """Price per GPU-hour in dollars."""
    max_gpus_per_node: int | None = Field(default=None, ge=1, alias="maxGPUsPerNode")
    """Most GPUs of this type on one node (bounds tensor parallelism)."""
    fp8_native: bool | None = None
    """FP8 tensor cores (Ada / Hopper)."""
    interconnect: Literal["pcie", "nvlink"] | None = None
    """GPU-to-GPU link used by tensor-parallel all-reduce."""
    inter_node_gbps: float | None = Field(default=None, gt=0, alias="interNodeGbps")
    """Network bandwidth of one node in Gbit/s, between the pipeline stages of a replica spanning nodes."""


class ModelOverride(_Values):
    """A Qwen model catalog override or a new model (a new one needs every architecture field)."""

    family: str | None = None
    """Model family, e.g. qwen3."""
    layers: int | None = Field(default=None, ge=1)
    """Transformer layers."""
    attention_heads: int | None = Field(default=None, ge=1)
    """Query attention heads."""
    kv_heads: int | None = Field(default=None, ge=1)
    """Key/value heads (tensor parallelism must divide them)."""
    head_dim: int | None = Field(default=None, ge=1)
    """Dimension of one attention head."""
    hidden_size: int | None = Field(default=None, ge=1)
    """Hidden size."""
    vocab_size: int | None = Field(default=None, ge=1)
    """Vocabulary size."""
    params: float | None = Field(default=None, gt=0)
    """Parameter count."""
    tie_word_embeddings: bool | None = None
    """Input and output embeddings shared."""
    max_position_embeddings: int | None = Field(default=None, ge=1)
    """Longest context the model supports."""
    quantizations: dict[Literal["tgi", "vllm"], list[Literal["none", "fp8", "awq", "gptq"]]] | None = None
    """Quantizations each engine supports for this model."""


class Catalog(_Values):
    """GPU and model catalog overrides merged over the built-in catalog at operator start (catalog.load_catalog;
    the planner, the autoscaler and status cost figures then use the merged catalog)."""

    gpu_types: dict[str, GPUTypeOverride] = Field(default_factory=dict, alias="gpuTypes")
    """GPU types by catalog name (A10G, L40S, A100-40GB, A100-80GB, or new ones)."""
    prices: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    """Price per GPU-hour by GPU type, e.g. your negotiated or spot prices (placement is cheapest-first).
    Decimals need a values file or --set-json (--set passes 0.9 as a string, which is rejected)."""
    models: dict[str, ModelOverride] = Field(default_factory=dict)
    """Models by catalog name, e.g. Qwen/Qwen3-14B."""


ABSOLUTE_PATH_OR_EMPTY = r"^(/[^\s]*)?$"
# an HTTP header name (RFC 9110 token)
HEADER_NAME = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"


class PrometheusTLS(_Values):
    """How the operator checks Prometheus's TLS certificate (https URLs). Verified by default."""

    ca_file: str = Field(default="", pattern=ABSOLUTE_PATH_OR_EMPTY, max_length=512)
    """PEM CA bundle the server certificate is verified with (e.g.
    /var/run/secrets/qwen-operator/prometheus/ca.crt from prometheusSecret); empty: the image's system trust
    store."""
    cert_file: str = Field(default="", pattern=ABSOLUTE_PATH_OR_EMPTY, max_length=512)
    """Client certificate (PEM) for mutual TLS; needs keyFile."""
    key_file: str = Field(default="", pattern=ABSOLUTE_PATH_OR_EMPTY, max_length=512)
    """Client certificate key (PEM) for mutual TLS; needs certFile."""
    insecure_skip_verify: bool = False
    """Do not verify the server certificate at all (anyone on the path can read the credentials and forge
    metrics). An explicit opt-out for test clusters; never combined with caFile."""


class PrometheusBasicAuth(_Values):
    """HTTP basic auth towards Prometheus (or a proxy in front of it). Exclusive with bearerTokenFile."""

    username: str = Field(default="", max_length=256)
    """User name (not a secret)."""
    password_file: str = Field(default="", pattern=ABSOLUTE_PATH_OR_EMPTY, max_length=512)
    """File holding the password, re-read on every request (e.g.
    /var/run/secrets/qwen-operator/prometheus/password from prometheusSecret); empty:
    $QWEN_OPERATOR_PROMETHEUS_PASSWORD (operator.extraEnv from a Secret)."""


class PrometheusConfig(_Values):
    """Where queue depth and latency metrics are read from, and how to authenticate. Credentials are only ever
    referenced (files from a mounted Secret, or environment variables), never written here; they never appear
    in conditions, status, Events or logs (URLs are shown without userinfo and query values)."""

    url: str = Field(default="", pattern=r"^(https?://[^\s]+)?$")
    """Prometheus base URL the autoscaler queries for queue depth and the latency SLO histogram (TGI:
    tgi_queue_size, tgi_request_queue_duration); the --prometheus-url flag wins. Empty: autoscaling holds
    replicas, it never scales on missing metrics. A user:password@ in it is basic auth (prefer
    basicAuth.passwordFile: a ConfigMap is not a Secret); a query string is refused."""
    tls: PrometheusTLS = Field(default_factory=PrometheusTLS)
    bearer_token_file: str = Field(default="", pattern=ABSOLUTE_PATH_OR_EMPTY, max_length=512)
    """File holding a bearer token sent as Authorization: Bearer, re-read on every request so a rotated token
    (e.g. a projected ServiceAccount token for kube-rbac-proxy / OpenShift's Thanos querier) keeps working.
    Empty: $QWEN_OPERATOR_PROMETHEUS_TOKEN if set, else no token."""
    basic_auth: PrometheusBasicAuth = Field(default_factory=PrometheusBasicAuth)
    headers: dict[Annotated[str, Field(pattern=HEADER_NAME, max_length=256)], str] = Field(
        default_factory=dict,
        json_schema_extra={"additionalProperties": False},
    )
    """Extra HTTP headers on every query, e.g. X-Scope-OrgID for a Mimir, Cortex or Thanos tenant. Values
    are config, not secrets (those of headers named like *auth*, *token*, *key* are still scrubbed from
    messages); put credentials in bearerTokenFile or basicAuth."""


class RegistryDefaults(_Values):
    """S3 model registry defaults, for the operator's version watcher and for the model-pull init container of
    QwenDeployments that do not name their own spec.model.credentialsSecret (a resource that does gets exactly
    that Secret as its registry environment: put AWS_ENDPOINT_URL / AWS_REGION in it when needed)."""

    endpoint_url: str = Field(default="", pattern=r"^(https?://[^\s]+)?$", alias="endpointURL")
    """S3 endpoint URL of an S3-compatible registry. The version watcher's S3 client uses it (over the operator's
    AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL); model-pull gets it as AWS_ENDPOINT_URL. Empty: the operator's
    environment, else AWS S3."""
    region: str = Field(default="", pattern=r"^([a-z0-9-]+)?$")
    """S3 region. The version watcher's S3 client uses it (over the operator's AWS_DEFAULT_REGION / profile);
    model-pull gets it as AWS_REGION and AWS_DEFAULT_REGION. Empty: the AWS SDK's own default."""
    credentials_secret: str = Field(default="", pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$", max_length=253)
    """Secret (in each QwenDeployment's namespace) whose keys become the model-pull init container's environment
    (envFrom) when spec.model.credentialsSecret is unset; endpointURL / region above win over the same keys in
    it. The operator never reads Secrets: its own registry credentials are its AWS environment (e.g. IRSA via
    serviceAccount.annotations, or operator.extraEnv)."""


class NodeCache(_Values):
    """The node-local model cache."""

    path: str = Field(default=DEFAULT_CACHE_PATH, pattern=r"^/", max_length=512)
    """Node directory of the hostPath model cache (the model-pull init container fills <path>/<namespace>, the
    server reads it) for QwenDeployments that do not set spec.model.cache.path. Resources created while the CRD
    still defaulted that field to /var/lib/qwen-operator/models keep it explicitly (allow it in allowedPaths
    if this path differs)."""
    allowed_paths: list[Annotated[str, Field(pattern=r"^/[^\s]*$", max_length=512)]] = Field(default_factory=list)
    """Further node directories a QwenDeployment may name in spec.model.cache.path (path above is always
    allowed). A resource naming any other directory gets Degraded=True, reason CachePathNotAllowed, and no
    pods: tenants who may create QwenDeployments cannot mount arbitrary node directories. Each namespace gets
    its own subdirectory <path>/<namespace>, so no tenant reads another namespace's models."""


class ModelSyncConfig(_Values):
    """How often the version watcher resolves spec.model.version against the registry."""

    interval_seconds: int = Field(default=30, ge=1, le=3600)
    """Seconds between the version watcher's registry look-ups per QwenDeployment (a moved tag is noticed
    within this)."""


# the keys the operator sets on server and router pods (api.spec: admission refuses them in spec.pod too)
_OWNED_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by",
)
_OWNED_PREFIX = "serving.qwenops.io/"
_GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
LabelKey = Annotated[str, Field(pattern=ANNOTATION_KEY, max_length=317)]
LabelValue = Annotated[str, Field(pattern=r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$", max_length=63)]
_KEY_MAP: JsonDict = {"additionalProperties": False}  # a key off the pattern is an error


def _refuse(where: str, keys: Any, *, owned: tuple[str, ...] = (), prefix: str | None = None) -> None:
    bad = [k for k in keys if k in owned or (prefix is not None and k.startswith(prefix))]
    if bad:
        raise ValueError(f"{where}: {', '.join(bad)} set by the operator on every pod; choose other keys")


class PodDefaults(_Values):
    """Added to every model server and router pod the operator renders (a private image mirror, a dedicated
    node pool, a priority class, cost-allocation labels). A QwenDeployment's spec.pod / spec.routing.pod
    goes over them: maps merge with the resource winning per key, lists add up, its priorityClassName
    wins. Keys the operator sets itself (app.kubernetes.io/name, instance, component, managed-by, anything
    under serving.qwenops.io/, and the nvidia.com/gpu.product node selector) are refused here."""

    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list)
    """Secrets (in each QwenDeployment's namespace) for pulling the server images and the operator image of
    the model-pull init container and the router, e.g. a private registry mirroring
    ghcr.io/qwenops/qwen-operator. Each namespace needs its own copy of the Secret."""
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    """Tolerations (Kubernetes Toleration objects) added to every pod, e.g. for a tainted dedicated node
    pool; the server pods also tolerate nvidia.com/gpu:NoSchedule."""
    node_selector: dict[LabelKey, LabelValue] = Field(default_factory=dict, json_schema_extra=_KEY_MAP)
    """Node labels every pod must match (also the router pods, which need no GPU), merged with each
    pool's GPU selection."""
    priority_class_name: str = Field(default="", pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$", max_length=253)
    """PriorityClass of every pod unless the resource names its own; empty: none."""
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, json_schema_extra=_KEY_MAP)
    """Labels on every pod (e.g. team or cost-center for cost allocation)."""
    annotations: dict[LabelKey, str] = Field(default_factory=dict, json_schema_extra=_KEY_MAP)
    """Annotations on every pod, over podAnnotations (same key: this one)."""

    @model_validator(mode="after")
    def _operator_keys(self) -> Any:
        _refuse("podDefaults.labels", self.labels, owned=_OWNED_LABELS, prefix=_OWNED_PREFIX)
        _refuse("podDefaults.annotations", self.annotations, prefix=_OWNED_PREFIX)
        _refuse("podDefaults.nodeSelector", self.node_selector, owned=(_GPU_PRODUCT_LABEL,))
        return self


class OperatorConfig(_Values):
    """The operator config file (a ConfigMap mounted at /etc/qwen-operator/config.yaml), read once at start by
    `qwenctl operator run --config`, which validates it against this schema: an unknown key or invalid value
    stops the operator with the key's path. A config change rolls the operator pod."""

    catalog: Catalog = Field(default_factory=Catalog)
    """GPU and model catalog overrides merged over the built-in catalog at operator start."""
    resync_seconds: float = Field(default=60.0, gt=0)
    """Seconds between periodic re-reconciles of every QwenDeployment (watch events reconcile at once); the
    --resync-seconds flag wins."""
    operator_image: str = ""
    """Image of the model-pull init container the reconciler renders into every pool Deployment; empty means
    the operator image above (the chart fills it in; the bare operator uses
    ghcr.io/qwenops/qwen-operator:<its version>)."""
    pod_annotations: dict[Annotated[str, Field(pattern=ANNOTATION_KEY, max_length=317)], str] = Field(
        default_factory=dict,
        json_schema_extra={"additionalProperties": False},  # a key off the pattern is an error
    )
    """Annotations the reconciler adds to the pod template of every model server Deployment (service mesh,
    log shipping, ...); the operator's own serving.qwenops.io annotations win over the same keys."""
    pod_defaults: PodDefaults = Field(default_factory=PodDefaults)
    gpu_product_labels: dict[str, list[Annotated[str, Field(min_length=1, max_length=63)]]] = Field(
        default_factory=dict, alias="gpuProductLabels"
    )
    """Further nvidia.com/gpu.product node label values per catalog GPU type, e.g.
    {A100-80GB: [NVIDIA-A100-80GB-PCIe]}: nodes with them count as that type in placement and the inventory,
    and its pools select them too. The built-in catalog already knows the A100 PCIe labels
    (NVIDIA-A100-80GB-PCIe, NVIDIA-A100-PCIE-40GB). GPU Feature Discovery (part of the NVIDIA GPU Operator)
    sets the label; a node without it is never used."""
    prometheus: PrometheusConfig = Field(default_factory=PrometheusConfig)
    registry: RegistryDefaults = Field(default_factory=RegistryDefaults)
    node_cache: NodeCache = Field(default_factory=NodeCache)
    model_sync: ModelSyncConfig = Field(default_factory=ModelSyncConfig)


class ServiceMonitor(_Values):
    """A ServiceMonitor (and Service) scraping the operator's own /metrics."""

    enabled: bool = False
    """Create them (needs the Prometheus Operator CRDs); the operator then serves its own /metrics
    (reconciles, API writes, autoscaler decisions and scale events) on ``port``."""
    port: Port = 9090
    """Metrics port of the operator container."""
    interval: str = Field(default="30s", pattern=DURATION)
    """Scrape interval."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Extra labels, e.g. the release label your Prometheus selects ServiceMonitors by."""


class GrafanaDashboard(_Values):
    """A ConfigMap holding the Grafana dashboard (replicas per pool, queue, P95, $/h) for the sidecar."""

    enabled: bool = False
    """Create the dashboard ConfigMap."""
    namespace: str = Field(default="", pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$", max_length=63)
    """Namespace of the ConfigMap; empty means the release namespace."""
    labels: dict[str, str] = Field(default_factory=lambda: {"grafana_dashboard": "1"})
    """Labels the Grafana sidecar selects dashboards by."""
    annotations: dict[str, str] = Field(default_factory=dict)
    """Annotations, e.g. grafana_folder for the sidecar's folder."""


#: A size or rate in bytes with an optional binary unit, as `qwenctl node-agent` reads it (200M, 500G).
BYTES = r"^([0-9]+(\.[0-9]+)?[KMGT]?)?$"


def _gpu_tolerations() -> list[dict[str, Any]]:
    return [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


class NodeAgentValues(_Values):
    """The node agent: a DaemonSet on GPU nodes running `qwenctl node-agent`. It pre-stages the current and
    target model versions of every QwenDeployment the node could serve (an allowed GPU type, matching node
    selectors; spec.model.prestage) into the node's hostPath cache, so a scale-out replica's model-pull finds
    every chunk present and a roll can wait for the nodes to hold the target (spec.rollout.
    prestageTimeoutSeconds); it evicts versions no resource needs (never one a pod on the node serves, nor a
    current or target version) and publishes what the node holds as the Node annotation
    serving.qwenops.io/model-cache, which the operator counts into status.model.staging. It requests no GPU.
    It runs as root without capabilities (like the model-pull init container: hostPath directories are
    root-owned), mounts config.nodeCache.path and config.nodeCache.allowedPaths at the same paths, and may
    get/patch nodes (its own Node's annotation), list/watch pods (those on its node) and QwenDeployments, and
    get Secrets (each resource's credentials Secret, the model-pull environment)."""

    enabled: bool = True
    """Deploy the node agent DaemonSet (off: replicas pull when they start; rolls never wait)."""
    bandwidth: str = Field(default="200M", pattern=BYTES)
    """Download cap of one node's pre-staging in bytes/s (one pull at a time per node), e.g. 200M; empty:
    unlimited. Leave room for the replicas' own model pulls and serving traffic."""
    max_bytes: str = Field(default="", pattern=BYTES)
    """Size bound of each cache directory (<nodeCache.path>/<namespace>), e.g. 500G: the oldest unprotected
    versions go first; empty: no bound (keepOthers alone)."""
    keep_others: int = Field(default=1, ge=0, le=100)
    """Versions kept per model besides the protected ones (served on the node, current, target), most recently
    pulled first."""
    interval_seconds: int = Field(default=30, ge=1, le=3600)
    """Seconds between full re-lists (watch events on QwenDeployments and the node's pods act at once)."""
    node_selector: dict[str, str] = Field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    """Nodes the agent runs on: GPU nodes (GPU Feature Discovery's label by default)."""
    tolerations: list[dict[str, Any]] = Field(default_factory=_gpu_tolerations)
    """Tolerations of the agent pods (GPU nodes are usually tainted nvidia.com/gpu:NoSchedule)."""
    resources: dict[str, Any] = Field(
        default_factory=lambda: {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "2Gi"}}
    )
    """Agent container resources (no GPU; a pull hashes every byte it writes)."""
    priority_class_name: str = Field(default="", pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$")
    """PriorityClass of the agent pods."""
    extra_env: list[dict[str, Any]] = Field(default_factory=list)
    """Extra environment variables (e.g. OCI_CA_BUNDLE, or AWS_* for a registry without a credentials Secret)."""


def _restricted_pod() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}}


def _restricted_container() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


class Values(_Values):
    """qwen-operator chart values."""

    name_override: str = Field(default="", max_length=40)
    """Replaces the chart name in object names."""
    fullname_override: str = Field(default="", max_length=52)
    """Replaces the full object name prefix (release-chart)."""
    image: Image = Field(default_factory=Image)
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list)
    """Secrets for pulling the operator image."""
    crds: Crds = Field(default_factory=Crds)
    service_account: ServiceAccount = Field(default_factory=ServiceAccount)
    rbac: Rbac = Field(default_factory=Rbac)
    watch_namespaces: list[Namespace] = Field(default_factory=list)
    """Namespaces whose QwenDeployments the operator serves; empty means every namespace. With a list, RBAC is
    Roles in those namespaces (plus a ClusterRole for nodes, which are cluster-scoped)."""
    operator: OperatorArgs = Field(default_factory=OperatorArgs)
    replica_count: int = Field(default=2, ge=1, le=5)
    """Operator pods: one leader and standbys (more than one needs leaderElection.enabled). Upgrades roll
    one new pod at a time (maxSurge 1, maxUnavailable 0) with leader election, else Recreate."""
    leader_election: LeaderElection = Field(default_factory=LeaderElection)
    pod_disruption_budget: PodDisruptionBudget = Field(default_factory=PodDisruptionBudget)
    pod_anti_affinity: Literal["preferred", "required", "none"] = "preferred"
    """Spread operator replicas over nodes (kubernetes.io/hostname) so one node failure cannot take the
    leader and its standby together: preferred (a soft rule), required, or none. Used only while
    `affinity` is empty."""
    config: OperatorConfig = Field(default_factory=OperatorConfig)
    prometheus_secret: str = Field(default="", pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$", max_length=253)
    """Secret in the release namespace mounted read-only into the operator at
    /var/run/secrets/qwen-operator/prometheus (each key a file): point config.prometheus.bearerTokenFile,
    basicAuth.passwordFile and tls.caFile / certFile / keyFile at its files. Files are re-read on every
    query, so a rotated Secret needs no restart. Empty: nothing is mounted."""
    resources: dict[str, Any] = Field(
        default_factory=lambda: {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}
    )
    """Operator container resources (watch caches grow with the number of GPU pods and nodes)."""
    liveness_probe: Probe = Field(default_factory=Probe)
    pod_security_context: dict[str, Any] = Field(default_factory=_restricted_pod)
    """Pod securityContext (restricted Pod Security Standard by default)."""
    security_context: dict[str, Any] = Field(default_factory=_restricted_container)
    """Container securityContext (restricted: non-root, read-only root filesystem, no privilege escalation,
    every capability dropped, RuntimeDefault seccomp)."""
    priority_class_name: str = Field(default="", pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$")
    """PriorityClass of the operator pod."""
    pod_annotations: dict[str, str] = Field(default_factory=dict)
    """Extra annotations on the operator pod."""
    pod_labels: dict[str, str] = Field(default_factory=dict)
    """Extra labels on the operator pod."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node selector of the operator pod (it needs no GPU)."""
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    """Tolerations of the operator pod."""
    affinity: dict[str, Any] = Field(default_factory=dict)
    """Affinity of the operator pod; when set it replaces the podAntiAffinity rule."""
    node_agent: NodeAgentValues = Field(default_factory=NodeAgentValues)
    service_monitor: ServiceMonitor = Field(default_factory=ServiceMonitor)
    grafana_dashboard: GrafanaDashboard = Field(default_factory=GrafanaDashboard)
    global_: dict[str, Any] = Field(default_factory=dict, alias="global")
    """Values shared with a parent chart (unused here; accepted so the chart works as a dependency)."""

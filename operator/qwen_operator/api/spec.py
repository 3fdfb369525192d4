"""The ``QwenDeployment`` spec: the typed source the CRD schema is generated from.

Every field's docstring becomes its CRD description (``use_attribute_docstrings``);
defaults, enums and bounds become the schema's defaults, enums and min/max; the
:class:`~qwen_operator.api.types.Rule` lists become CEL ``x-kubernetes-validations``.
Models are strict (``"128"`` is not an integer, unknown fields are errors) so reading a
file offline accepts exactly what the apiserver accepts.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from .types import (
    DNS_SUBDOMAIN_PATTERN,
    Engine,
    Quantity,
    Quantization,
    Rule,
    TensorParallel,
    check_rules,
    rules_schema,
)

DEFAULT_CACHE_PATH = "/var/lib/qwen-operator/models"
DEFAULT_GPU_TYPES = ("A10G", "L40S", "A100-80GB")
_QWEN3 = re.compile(r"(?i)^(qwen/)?qwen3")


def _config(rules: tuple[Rule, ...] = ()) -> ConfigDict:
    return ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        strict=True,
        frozen=True,
        use_attribute_docstrings=True,
        json_schema_extra=rules_schema(rules) if rules else None,
    )


class _Checked(BaseModel):
    """Runs the class's CEL-mirroring rules after field validation."""

    RULES: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _rules(self) -> Any:
        check_rules(self, type(self).RULES)
        return self


_CACHE_RULES = (
    Rule(
        cel="!has(self.type) || self.type != 'pvc' || has(self.claimName)",
        message="claimName is required when type is pvc",
        check=lambda c: c.type != "pvc" or c.claim_name is not None,
        field_path=".claimName",
        reason="FieldValueRequired",
    ),
)


class ModelCache(_Checked):
    """Where model files live on the node; the model-pull init container fills it."""

    model_config = _config(_CACHE_RULES)
    RULES = _CACHE_RULES

    type: Literal["hostPath", "pvc"] = "hostPath"
    """hostPath: a node-local directory shared by every replica on the node (layer-diff pulls only move
    missing chunks); pvc: a PersistentVolumeClaim (ReadWriteMany when replicas span nodes)."""
    path: str | None = Field(default=None, max_length=512, pattern=r"^/")
    """Absolute directory on the node used when type is hostPath (created if missing). Unset: the operator
    config's nodeCache.path (default /var/lib/qwen-operator/models)."""
    claim_name: str | None = Field(default=None, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    """Name of the PersistentVolumeClaim in the same namespace; required when type is pvc."""


class ModelSpec(BaseModel):
    """Which model to serve and where its weights come from."""

    model_config = _config()

    name: str = Field(max_length=128, min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
    """Model catalog entry, e.g. Qwen/Qwen3-14B (architecture, parameters and heads come from the catalog)."""
    registry: str = Field(max_length=512, pattern=r"^(s3|oci|hf)://[^\s]+$")
    """Private model registry holding the weights: s3://bucket/prefix, oci://registry/repo (chunked
    layer-diff) or hf://org/repo."""
    version: str = Field(default="stable", max_length=128, min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@+-]*$")
    """A tag to track (e.g. stable) or a pinned version / digest; a change rolls the pods."""
    quantization: Quantization = "none"
    """Weight quantization: none (bf16), fp8, awq or gptq; must be supported by the engine for this model."""
    credentials_secret: str | None = Field(default=None, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    """Secret in the same namespace whose keys (e.g. AWS_ACCESS_KEY_ID) become the model-pull environment."""
    cache: ModelCache = Field(default_factory=ModelCache)
    """Node-local model cache the weights are pulled into and served from (read-only for the server)."""


class ResourceRequests(BaseModel):
    """CPU and memory per replica, on top of the GPUs the planner assigns."""

    model_config = _config()

    cpu: Quantity | None = None
    """CPU request and limit per replica (a Kubernetes quantity, e.g. 8 or 7500m); unset means none."""
    memory: Quantity | None = None
    """Memory request and limit per replica (e.g. 64Gi); weights pass through host memory while loading."""


#: vLLM ``--tool-call-parser`` values for Qwen models (vLLM's tool-calling docs: Qwen2.5/Qwen3 emit
#: Hermes-style ``<tool_call>`` JSON, parser ``hermes``; the Qwen3-Coder recipe uses ``qwen3_coder``,
#: in vLLM since v0.10.0). TGI has none: it constrains a tool call with its JSON grammar instead.
ToolCallParser = Literal["hermes", "qwen3_coder"]


class ToolCallingSpec(BaseModel):
    """Function calling through the OpenAI chat API (``tools`` / ``tool_choice`` in, ``tool_calls`` out)."""

    model_config = _config()

    enabled: bool = False
    """Serve tool calls with tool_choice auto. vllm: renders --enable-auto-tool-choice --tool-call-parser
    (without it vLLM answers tool_choice auto with HTTP 400; named and required choices work either way).
    tgi: TGI answers tools natively through its JSON grammar whatever this says (no flag exists)."""
    parser: ToolCallParser | None = None
    """vLLM tool-call parser: hermes (Qwen3, Qwen2.5, QwQ) or qwen3_coder (Qwen3-Coder); unset: qwen3_coder for
    a Qwen3-Coder model, else hermes. Not allowed with engine tgi (it has no parser)."""


_RUNTIME_RULES = (
    Rule(
        cel="!has(self.maxInputTokens) || !has(self.maxTotalTokens) || self.maxInputTokens < self.maxTotalTokens",
        message="maxInputTokens must be less than maxTotalTokens",
        check=lambda r: r.max_input_tokens < r.max_total_tokens,
        field_path=".maxInputTokens",
        reason="FieldValueInvalid",
    ),
    Rule(
        cel="!has(self.toolCalling) || !has(self.toolCalling.parser) || (has(self.engine) && self.engine == 'vllm')",
        message="toolCalling.parser names a vLLM tool-call parser; TGI has none (it answers tools through its"
        " JSON grammar): remove the parser or set engine vllm",
        check=lambda r: r.tool_calling.parser is None or r.engine == "vllm",
        field_path=".toolCalling.parser",
        reason="FieldValueForbidden",
    ),
)


class RuntimeSpec(_Checked):
    """The inference server running in each replica."""

    model_config = _config(_RUNTIME_RULES)
    RULES = _RUNTIME_RULES

    engine: Engine = "tgi"
    """Inference server: tgi (text-generation-inference, default) or vllm."""
    image: str | None = Field(default=None, max_length=512, min_length=1)
    """Container image; unset means the operator's default image for the engine."""
    max_concurrent_requests: int = Field(default=128, ge=1, le=4096)
    """Requests a replica accepts at once; more are rejected with HTTP 429 (TGI --max-concurrent-requests)."""
    max_input_tokens: int = Field(default=8192, ge=1, le=1048576)
    """Longest prompt in tokens (TGI --max-input-tokens)."""
    max_total_tokens: int = Field(default=16384, ge=2, le=1048576)
    """Longest prompt plus generated tokens (TGI --max-total-tokens, vLLM --max-model-len); sizes the KV cache."""
    reasoning: Literal["enabled", "disabled"] = "enabled"
    """Qwen3 thinking mode by default: enabled (the model's own chat template: it thinks before answering), or
    disabled (the pods get a non-thinking chat template written by the operator: tgi --tokenizer-config-path,
    vllm --chat-template).
    Clients still switch per request: /think or /no_think in a message, and with vllm
    chat_template_kwargs {"enable_thinking": true|false}. No effect on models without a thinking mode."""
    tool_calling: ToolCallingSpec = Field(default_factory=ToolCallingSpec)
    """Function calling (tools) in the chat API."""
    shm_size: Quantity = "1Gi"
    """Size of the in-memory /dev/shm volume (NCCL uses it between tensor-parallel shards)."""
    resources: ResourceRequests = Field(default_factory=ResourceRequests)
    """CPU and memory per replica."""


class PlacementSpec(BaseModel):
    """Which GPU types replicas may use and how they are split across GPUs."""

    model_config = _config()

    gpu_types: list[str] = Field(
        default_factory=lambda: list(DEFAULT_GPU_TYPES),
        min_length=1,
        max_length=8,
        json_schema_extra={
            "default": list(DEFAULT_GPU_TYPES),
            "x-kubernetes-list-type": "set",
            "items": {
                "description": "A GPU type from the operator's catalog.",
                "type": "string",
                "maxLength": 32,
                "pattern": r"^[A-Za-z0-9][A-Za-z0-9-]*$",
            },
        },
    )
    """Allowed GPU catalog types (e.g. A10G, L40S, A100-80GB); the cheapest per unit of throughput that
    fits is filled first and replicas spill over to the next when its GPUs run out."""
    tensor_parallel: TensorParallel = "auto"
    """GPUs per replica: auto (the smallest degree that fits on each GPU type) or 1, 2, 4 or 8
    (must divide the model's attention and KV heads)."""


Weekday = Literal["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
WEEKDAYS: tuple[Weekday, ...] = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
#: Wall-clock time of day, 00:00 to 23:59.
HHMM_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
#: The shape of an IANA time zone name (whether it exists is checked at runtime: CEL has no tz database).
TIMEZONE_PATTERN = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$"

_SCHEDULE_RULES = (
    Rule(
        cel="self.start != self.end",
        message="end must differ from start (a window crossing midnight is written e.g. start 22:00, end 06:00)",
        check=lambda w: w.start != w.end,
        field_path=".end",
        reason="FieldValueInvalid",
    ),
)


class ScalingSchedule(_Checked):
    """A recurring window with a replica floor (pre-warm ahead of a known peak, like KEDA's cron scaler)."""

    model_config = _config(_SCHEDULE_RULES)
    RULES = _SCHEDULE_RULES

    name: str | None = Field(default=None, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    """Label used in status.autoscaler.lastDecision and events, e.g. morning (default: the window's index)."""
    days: list[Weekday] = Field(
        default_factory=lambda: list(WEEKDAYS),
        min_length=1,
        max_length=7,
        json_schema_extra={
            "default": list(WEEKDAYS),
            "x-kubernetes-list-type": "set",
            "items": {"description": "A day of the week.", "type": "string", "enum": list(WEEKDAYS)},
        },
    )
    """Days the window starts on (Mon..Sun, default every day); a window crossing midnight ends the next day."""
    start: str = Field(max_length=5, pattern=HHMM_PATTERN)
    """Local time the window opens, HH:MM (24-hour). Set it a cold start ahead of the peak: replicas take
    minutes to load the model."""
    end: str = Field(max_length=5, pattern=HHMM_PATTERN)
    """Local time the window closes, HH:MM (exclusive); earlier than start means the next day."""
    timezone: str = Field(default="UTC", min_length=1, max_length=64, pattern=TIMEZONE_PATTERN)
    """IANA time zone of start and end, e.g. Europe/Berlin (daylight saving time is followed). An unknown
    name is reported as ScalingActive=False, reason InvalidSchedule, and that window is ignored."""
    min_replicas: int = Field(ge=0, le=1000)
    """Fewest replicas while the window is open: the floor is max(scaling.minReplicas, this), at most
    scaling.maxReplicas; load can still scale above it."""


class PredictiveScaling(BaseModel):
    """Pre-warm ahead of recurring peaks learned from previous days (opt-in)."""

    model_config = _config()

    enabled: bool = False
    """Raise the floor to the replicas the autoscaler needed at the same time of day on previous days, leadSeconds
    ahead (the per-slot profile is kept in status.autoscaler.profile)."""
    lookback_days: int = Field(default=7, ge=1, le=28)
    """Half-life of a learned peak in days: a slot's peak not seen again halves over this many days."""
    lead_seconds: int | None = Field(default=None, ge=0, le=86400)
    """How far ahead the floor looks; unset: the modelled cold start of the slowest allowed GPU type plus
    intervalSeconds."""
    timezone: str = Field(default="UTC", min_length=1, max_length=64, pattern=TIMEZONE_PATTERN)
    """IANA time zone whose days and times of day the profile is kept in (daylight saving time is followed)."""


_SCALING_RULES = (
    Rule(
        cel="!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas",
        message="minReplicas must be less than or equal to maxReplicas",
        check=lambda s: s.min_replicas <= s.max_replicas,
        field_path=".minReplicas",
        reason="FieldValueInvalid",
    ),
    Rule(
        cel="!has(self.schedules) || !has(self.maxReplicas)"
        " || self.schedules.all(w, w.minReplicas <= self.maxReplicas)",
        message="every schedule's minReplicas must be less than or equal to maxReplicas",
        check=lambda s: all(w.min_replicas <= s.max_replicas for w in s.schedules),
        field_path=".schedules",
        reason="FieldValueInvalid",
    ),
)


class ScalingSpec(_Checked):
    """Autoscaling from queue depth and P95 latency; when disabled spec.replicas is used."""

    model_config = _config(_SCALING_RULES)
    RULES = _SCALING_RULES

    enabled: bool = False
    """Let the operator size the deployment from metrics (status.autoscaler.desiredReplicas); when false
    spec.replicas (kubectl scale, HPA, KEDA) decides."""
    min_replicas: int = Field(default=1, ge=0, le=1000)
    """Fewest replicas the autoscaler keeps (0 allows scale to zero)."""
    max_replicas: int = Field(default=4, ge=1, le=1000)
    """Most replicas the autoscaler creates."""
    target_queue_depth: float = Field(default=4.0, gt=0, le=10000)
    """Waiting requests per ready replica the autoscaler aims for."""
    p95_latency_seconds: float = Field(default=1.2, gt=0, le=3600)
    """P95 time-to-first-token SLO in seconds; above it the autoscaler adds replicas (TGI: queue wait; vLLM: TTFT).
    Placement also uses it: a GPU type whose idle time to first token for typicalPromptTokens exceeds it is not
    used (qwenctl plan shows each type's time to first token and requests/s within it)."""
    typical_prompt_tokens: int = Field(default=512, ge=1, le=1048576)
    """Prompt length, in tokens, of a typical request; sizes placement's time-to-first-token estimate."""
    typical_output_tokens: int = Field(default=128, ge=1, le=1048576)
    """Generated tokens of a typical request; sizes placement's per-replica capacity estimate."""
    scale_down_delay_seconds: int = Field(default=300, ge=0, le=86400)
    """How long load must stay low before replicas are removed (stabilisation window)."""
    interval_seconds: int = Field(default=15, ge=5, le=3600)
    """How often the autoscaler evaluates metrics."""
    schedules: list[ScalingSchedule] = Field(default_factory=list, max_length=16)
    """Recurring windows with a replica floor, e.g. weekdays 08:50-11:00 Europe/Berlin minReplicas 6."""
    predictive: PredictiveScaling = Field(default_factory=PredictiveScaling)
    """Learned pre-warm ahead of recurring peaks (off by default)."""


class RolloutSpec(BaseModel):
    """How pods are replaced when the model version or the server configuration changes."""

    model_config = _config()

    max_surge: int = Field(default=1, ge=0, le=100)
    """Extra pods per pool during a rolling update (pods are never taken down before replacements are ready)."""
    canary_replicas: int = Field(default=0, ge=0, le=100)
    """Replicas that receive a new model version first (0: roll all pools directly)."""
    canary_timeout_seconds: int = Field(default=900, ge=10, le=86400)
    """Seconds the canary replicas get to become Ready, counted from the canary Deployment's creation.
    A canary still not Ready then (no free GPU to schedule on, or the server never passes its
    readiness probe) is rolled back like a failed one: removed, Degraded=CanaryTimeout, and its
    digest not retried until spec.model.version changes or the tag moves to another digest."""


#: DNS-1123 label (namespaces; Gateway listener section names are the same shape in Gateway API).
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class GatewayParentRef(BaseModel):
    """The Gateway the HTTPRoute attaches to (Gateway API ``parentRefs``)."""

    model_config = _config()

    name: str | None = Field(default=None, min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    """Name of the Gateway (required when inferencePool is true)."""
    namespace: str | None = Field(default=None, min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)
    """Namespace of the Gateway; unset: the QwenDeployment's namespace."""
    section_name: str | None = Field(default=None, min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    """Listener of the Gateway to attach to (its sectionName); unset: every listener that allows the route."""


class EndpointPickerRef(BaseModel):
    """The endpoint picker (ext-proc) Service the gateway asks which pod gets a request.

    The operator's router is an HTTP proxy, not a Gateway API Inference Extension endpoint
    picker: on this path the picker is the one the cluster's inference gateway ships."""

    model_config = _config()

    name: str | None = Field(default=None, min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    """Service of the endpoint picker in the same namespace; unset: <name>-epp."""
    port: int = Field(default=9002, ge=1, le=65535)
    """gRPC port of the endpoint picker Service (9002 is the upstream default)."""
    failure_mode: Literal["FailOpen", "FailClose"] = "FailClose"
    """What the gateway does when the picker does not answer: FailClose drops the request, FailOpen picks a pod
    itself."""


_GATEWAY_RULES = (
    Rule(
        cel="!has(self.inferencePool) || !self.inferencePool || (has(self.parentRef) && has(self.parentRef.name))",
        message="parentRef.name (the Gateway) is required when inferencePool is true",
        check=lambda g: not g.inference_pool or g.parent_ref.name is not None,
        field_path=".parentRef.name",
        reason="FieldValueRequired",
    ),
)


class GatewaySpec(_Checked):
    """Gateway API path: an InferencePool over the server pods and an HTTPRoute from a Gateway."""

    model_config = _config(_GATEWAY_RULES)
    RULES = _GATEWAY_RULES

    inference_pool: bool = False
    """Render an InferencePool (inference.networking.k8s.io/v1) selecting the server pods and an HTTPRoute
    (gateway.networking.k8s.io/v1) from parentRef to it; applied only when those CRDs exist in the cluster.
    Independent of enabled: the built-in router can run beside it."""
    parent_ref: GatewayParentRef = Field(default_factory=GatewayParentRef)
    """The Gateway the HTTPRoute attaches to."""
    endpoint_picker: EndpointPickerRef = Field(default_factory=EndpointPickerRef)
    """The InferencePool's endpointPickerRef."""


class RoutingSpec(BaseModel):
    """The data plane: a router per QwenDeployment in front of every pool (qwenctl router).

    Clients talk to the Service <name>, which selects the router pods; the router picks a server pod by
    capacity-weighted least-outstanding requests, with prefix/session affinity and request holding. The
    server pods sit behind their own Service <name>-servers."""

    model_config = _config()

    enabled: bool = True
    """Deploy the router; false: the Service <name> selects the server pods directly (kube-proxy spreads
    connections uniformly, blind to GPU type and load; scaling.minReplicas 0 is then not allowed)."""
    affinity: bool = False
    """Prefix/session affinity (consistent hashing with bounded load) so repeated prefixes reuse a replica's
    KV cache; the session header x-session-id, else the leading part of the prompt, is the key. Off by
    default: on the simulated multi-turn and trace workloads it cost 4-12% of the SLO capacity (see the
    README's routing figures); turn it on where prefixes are long and shared."""
    load_bound: float = Field(default=1.25, ge=1, le=100)
    """Affinity gives way when the preferred replica's load exceeds loadBound x the fleet's mean load (>= 1)."""
    hold_queue: int = Field(default=256, ge=0, le=100000)
    """Requests the router holds while no replica is Ready or all are at maxConcurrentRequests (0: none;
    over it requests are answered 503 with Retry-After)."""
    hold_timeout_seconds: float = Field(default=30, gt=0, le=3600)
    """Longest a held request waits for a replica before a 503 with Retry-After; a scale from zero needs
    a cold start within it."""
    retries: int = Field(default=2, ge=0, le=10)
    """Attempts on another replica after connection refused, reset before the first response byte, or 429
    (never once bytes reached the client)."""
    canary_traffic_percent: float = Field(default=0, ge=0, le=100)
    """Share of requests (0..100) sent to canary replicas once their smoke test passed; 0: none."""
    replicas: int = Field(default=2, ge=1, le=100)
    """Router pods (spread across nodes, a PodDisruptionBudget keeps one up)."""
    gateway: GatewaySpec = Field(default_factory=GatewaySpec)
    """Gateway API Inference Extension path, instead of or beside the router."""


_SPEC_RULES = (
    Rule(
        cel="!has(self.scaling) || !has(self.scaling.minReplicas) || self.scaling.minReplicas > 0"
        " || !has(self.routing) || !has(self.routing.enabled) || self.routing.enabled",
        message="scaling.minReplicas 0 requires routing.enabled true: only the router holds requests while a"
        " replica starts from zero; set scaling.minReplicas to 1 or more, or enable routing",
        check=lambda s: s.scaling.min_replicas > 0 or s.routing.enabled,
        field_path=".scaling.minReplicas",
        reason="FieldValueForbidden",
    ),
    Rule(
        cel="!(self.runtime.engine == 'tgi' && self.model.quantization in ['awq', 'gptq']"
        " && self.model.name.matches('(?i)^(qwen/)?qwen3'))",
        message="TGI serves Qwen3 through its generic transformers path, which rejects awq/gptq;"
        " use fp8 or none, or engine vllm",
        check=lambda s: (
            not (s.runtime.engine == "tgi" and s.model.quantization in ("awq", "gptq") and _QWEN3.match(s.model.name))
        ),
        field_path=".model.quantization",
        reason="FieldValueForbidden",
    ),
)


class QwenDeploymentSpec(_Checked):
    """Desired state of a QwenDeployment."""

    model_config = _config(_SPEC_RULES)
    RULES = _SPEC_RULES

    model: ModelSpec
    """The model to serve."""
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)
    """Inference server settings."""
    placement: PlacementSpec = Field(default_factory=PlacementSpec)
    """GPU types and tensor parallelism."""
    replicas: int = Field(default=1, ge=0, le=1000)
    """Replicas when autoscaling is disabled; the scale subresource (kubectl scale, HPA, KEDA) sets it."""
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    """Autoscaling policy."""
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    """Rolling update policy."""
    routing: RoutingSpec = Field(default_factory=RoutingSpec)
    """Request routing: the router in front of the pools, and the Gateway API path."""

    def desired_replicas(self, autoscaler_desired: int | None = None) -> int:
        """Replicas to run: the autoscaler's figure (clamped) when enabled, else spec.replicas."""
        if not self.scaling.enabled:
            return self.replicas
        want = self.scaling.min_replicas if autoscaler_desired is None else autoscaler_desired
        return max(self.scaling.min_replicas, min(self.scaling.max_replicas, want))

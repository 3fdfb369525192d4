"""The ``QwenDeployment`` spec: the typed source the CRD schema is generated from.

Every field's docstring becomes its CRD description (``use_attribute_docstrings``);
defaults, enums and bounds become the schema's defaults, enums and min/max; the
:class:`~qwen_operator.api.types.Rule` lists become CEL ``x-kubernetes-validations``.
Models are strict (``"128"`` is not an integer, unknown fields are errors) so reading a
file offline accepts exactly what the apiserver accepts.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

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


#: Registries the node agent pre-stages (the content-addressed chunked layout).
PRESTAGE_SCHEMES = ("s3://", "oci://")
_MODEL_RULES = (
    Rule(
        cel="!has(self.prestage) || !self.prestage || self.registry.startsWith('s3://')"
        " || self.registry.startsWith('oci://')",
        message="prestage needs an s3:// or oci:// registry (the node agent pulls chunked layer-diff versions);"
        " hf:// models are pulled by each pod when it starts",
        check=lambda m: not m.prestage or m.registry.startswith(PRESTAGE_SCHEMES),
        field_path=".prestage",
        reason="FieldValueForbidden",
    ),
)


class ModelSpec(_Checked):
    """Which model to serve and where its weights come from."""

    model_config = _config(_MODEL_RULES)
    RULES = _MODEL_RULES

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
    prestage: bool | None = None
    """Pre-stage versions on GPU nodes: the node agent (a DaemonSet, qwenctl node-agent) pulls the current
    and target versions into the hostPath cache of every node of an allowed GPU type that lacks them, so a
    scale-out replica's model-pull finds every chunk present and a roll waits (spec.rollout.
    prestageTimeoutSeconds) until the nodes serving the resource hold the target. Unset: true for s3:// and
    oci:// registries; false turns it off (true with hf:// is refused)."""

    def prestage_enabled(self) -> bool:
        """Whether the node agent stages this model (unset means yes for s3:// and oci://)."""
        managed = self.registry.startswith(PRESTAGE_SCHEMES)
        return self.prestage is not False and managed and self.cache.type == "hostPath"


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
    learn_prompt_tokens: bool = True
    """With the router: the autoscaler weighs each pool's replicas at the mean prompt length the router saw over
    the last 10 minutes (status.autoscaler.observedPromptTokens; at least 100 requests) instead of
    typicalPromptTokens. Placement keeps typicalPromptTokens; false: always typicalPromptTokens."""
    typical_output_tokens: int = Field(default=128, ge=1, le=1048576)
    """Generated tokens of a typical request; sizes placement's per-replica capacity estimate."""
    learn_output_tokens: bool = True
    """The autoscaler weighs each pool's replicas at the mean reply length the engines generated over the last
    10 minutes (their own generated-tokens histogram, thinking included: status.autoscaler.observedOutputTokens;
    at least 100 finished requests) instead of typicalOutputTokens. Placement keeps typicalOutputTokens; false:
    always typicalOutputTokens."""
    scale_down_delay_seconds: int = Field(default=300, ge=0, le=86400)
    """How long load must stay low before replicas are removed (stabilisation window)."""
    interval_seconds: int = Field(default=15, ge=5, le=3600)
    """How often the autoscaler evaluates metrics."""
    schedules: list[ScalingSchedule] = Field(default_factory=list, max_length=16)
    """Recurring windows with a replica floor, e.g. weekdays 08:50-11:00 Europe/Berlin minReplicas 6."""
    predictive: PredictiveScaling = Field(default_factory=PredictiveScaling)
    """Learned pre-warm ahead of recurring peaks (off by default)."""


# --- pod customisation (spec.pod, spec.pod.pools, spec.routing.pod) ------------------------------------
# Named like the Kubernetes PodSpec fields they land in (KServe's predictor and KubeAI's Model take the
# same names: nodeSelector, tolerations, affinity, priorityClassName, imagePullSecrets, serviceAccountName,
# env; KubeAI's Model has args for extra engine flags). What the operator sets itself is refused by name.

#: Prefix of every label and annotation key the operator owns.
OWNED_PREFIX = "serving.qwenops.io/"
#: Labels the operator sets outside its prefix (``render.names.common_labels``; a unit test keeps them equal).
OWNED_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by",
)
#: The node label the operator selects the pool's GPU type with (``render.workload.GPU_PRODUCT_LABEL``).
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
#: Server environment the operator sets (``engines.runtimes``; a unit test keeps them equal).
OWNED_ENV = ("HF_HUB_OFFLINE", "HF_HOME", "HOME", "VLLM_NO_USAGE_STATS", "DO_NOT_TRACK")
#: Engine flags the operator renders from the spec (``engines.runtimes``; a unit test renders every option
#: and checks each flag is here), with their short spellings. Compared after ``=value`` is cut off and
#: ``_`` turned into ``-`` (vLLM's parser accepts --max_model_len for --max-model-len).
OWNED_FLAGS: dict[str, tuple[str, ...]] = {
    "tgi": (
        "--model-id",
        "--num-shard",
        "--max-concurrent-requests",
        "--max-input-tokens",
        "--max-input-length",
        "--max-total-tokens",
        "--port",
        "-p",
        "--hostname",
        "--quantize",
        "--tokenizer-config-path",
        "--usage-stats",
        "--sharded",
    ),
    "vllm": (
        "--model",
        "--served-model-name",
        "--tensor-parallel-size",
        "-tp",
        "--pipeline-parallel-size",  # placement's: a replica across nodes (LeaderWorkerSet), render/lws.py
        "-pp",
        "--distributed-executor-backend",
        "--max-model-len",
        "--max-num-seqs",
        "--port",
        "--host",
        "--quantization",
        "-q",
        "--reasoning-parser",
        "--chat-template",
        "--enable-auto-tool-choice",
        "--tool-call-parser",
    ),
}

#: Kubernetes qualified name (label / annotation / nodeSelector key); ``[.]`` instead of ``\.`` so the
#: same text is a valid CEL string literal.
QUALIFIED_NAME_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_QUALIFIED_NAME = re.compile(QUALIFIED_NAME_PATTERN)
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
MAX_MAP_ENTRIES = 64


def _unique(field: str, names: list[str], key: str = "name") -> None:
    """What the list-map's key uniqueness enforces at admission, for offline reads."""
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{field}: each {key} may appear once; repeated: {', '.join(dup)}")


def _cel_list(items: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(f"'{x}'" for x in items) + "]"


def flag_name(arg: str) -> str:
    """``--max_model_len=4096`` -> ``--max-model-len``: the flag an extra argument sets (the CEL rule does the
    same with split and replace)."""
    return arg.split("=")[0].replace("_", "-")


def owned_flags(engine: str, args: list[str]) -> list[str]:
    """The arguments in ``args`` that set a flag the operator renders for ``engine``."""
    return [a for a in args if flag_name(a) in OWNED_FLAGS[engine]]


def _cel_owned_args(args: str, engine: str) -> str:
    """CEL: the elements of list ``args`` that set a flag the operator owns for the engine expression."""
    owned = f"({engine} == 'vllm' ? {_cel_list(OWNED_FLAGS['vllm'])} : {_cel_list(OWNED_FLAGS['tgi'])})"
    return f"{args}.filter(a, a.split('=')[0].replace('_', '-') in {owned})"


def _label_map(description: str, value_pattern: str | None = LABEL_VALUE_PATTERN, value_max: int = 63) -> Any:
    value: dict[str, Any] = {"type": "string", "maxLength": value_max}
    if value_pattern:
        value["pattern"] = value_pattern
    return Field(
        default_factory=dict,
        description=description,
        json_schema_extra={"maxProperties": MAX_MAP_ENTRIES, "additionalProperties": value},
    )


def _key_rules(field: str, *, owned: tuple[str, ...] = (), prefix: str | None = None, what: str) -> tuple[Rule, ...]:
    """A map's keys are qualified names and none is one the operator sets (named in the message)."""
    attr = re.sub(r"(?<!^)([A-Z])", r"_\1", field).lower()
    bad_cel = " || ".join(
        [*([f"k.startsWith('{prefix}')"] if prefix else []), *([f"k in {_cel_list(owned)}"] if owned else [])]
    )

    def bad(k: str) -> bool:
        return (prefix is not None and k.startswith(prefix)) or k in owned

    refused = ", ".join([*([f"keys under {prefix}"] if prefix else []), *owned])
    fmt = (
        Rule(
            cel=f"!has(self.{field}) || self.{field}.all(k, k.matches('{QUALIFIED_NAME_PATTERN}'))",
            message="keys must be qualified names ([prefix/]name, e.g. example.com/team)",
            message_expression="'%s: not a qualified name ([prefix/]name, e.g. example.com/team)'.format("
            f"[self.{field}.filter(k, !k.matches('{QUALIFIED_NAME_PATTERN}'))[0]])",
            check=lambda o: all(_QUALIFIED_NAME.match(k) for k in getattr(o, attr)),
            explain=lambda o: (
                "keys must be qualified names ([prefix/]name, e.g. example.com/team): "
                + ", ".join(k for k in getattr(o, attr) if not _QUALIFIED_NAME.match(k))
            ),
            field_path=f".{field}",
            reason="FieldValueInvalid",
        ),
    )
    if not bad_cel:
        return fmt
    return (
        *fmt,
        Rule(
            cel=f"!has(self.{field}) || !self.{field}.exists(k, {bad_cel})",
            message=f"keys set by the operator ({what}) are refused: {refused}",
            message_expression=f"'%s: set by the operator ({what}); refused: {refused}'"
            f".format([self.{field}.filter(k, {bad_cel})[0]])",
            check=lambda o: not any(bad(k) for k in getattr(o, attr)),
            explain=lambda o: (
                ", ".join(k for k in getattr(o, attr) if bad(k)) + f": set by the operator ({what}); refused: {refused}"
            ),
            field_path=f".{field}",
            reason="FieldValueForbidden",
        ),
    )


_TOLERATION_RULES = (
    Rule(
        cel="!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
        message="value must be empty when operator is Exists",
        check=lambda t: t.operator != "Exists" or not t.value,
        field_path=".value",
        reason="FieldValueInvalid",
    ),
)


class Toleration(_Checked):
    """A Kubernetes toleration (core/v1 Toleration)."""

    model_config = _config(_TOLERATION_RULES)
    RULES = _TOLERATION_RULES

    key: str | None = Field(default=None, max_length=316)
    """Taint key to tolerate; empty with operator Exists tolerates every taint."""
    operator: Literal["Exists", "Equal"] | None = None
    """Exists or Equal (the Kubernetes default)."""
    value: str | None = Field(default=None, max_length=63)
    """Taint value for operator Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to tolerate; empty: all."""
    toleration_seconds: int | None = Field(default=None, ge=0)
    """For NoExecute: how long the pod stays bound after the taint appears."""


class LocalObjectReference(BaseModel):
    """A Secret in the same namespace, by name."""

    model_config = _config()

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    """Name of the Secret."""


class KeyReference(BaseModel):
    """One key of a Secret or ConfigMap in the same namespace."""

    model_config = _config()

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    """Name of the Secret or ConfigMap."""
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")
    """The key whose value becomes the variable."""
    optional: bool | None = None
    """Start the pod even when the object or key does not exist."""


_ENV_SOURCE_RULES = (
    Rule(
        cel="has(self.secretKeyRef) != has(self.configMapKeyRef)",
        message="valueFrom needs exactly one of secretKeyRef and configMapKeyRef",
        check=lambda s: (s.secret_key_ref is None) != (s.config_map_key_ref is None),
        reason="FieldValueInvalid",
    ),
)


class EnvVarSource(_Checked):
    """Where a variable's value comes from."""

    model_config = _config(_ENV_SOURCE_RULES)
    RULES = _ENV_SOURCE_RULES

    secret_key_ref: KeyReference | None = None
    """A key of a Secret in the same namespace."""
    config_map_key_ref: KeyReference | None = None
    """A key of a ConfigMap in the same namespace."""


_ENV_RULES = (
    Rule(
        cel="!(has(self.value) && has(self.valueFrom))",
        message="set value or valueFrom, not both",
        check=lambda e: e.value is None or e.value_from is None,
        field_path=".valueFrom",
        reason="FieldValueInvalid",
    ),
)


class EnvVar(_Checked):
    """An environment variable of the inference server container."""

    model_config = _config(_ENV_RULES)
    RULES = _ENV_RULES

    name: str = Field(min_length=1, max_length=256, pattern=ENV_NAME_PATTERN)
    """Variable name (those the operator sets, e.g. HF_HOME, are refused)."""
    value: str | None = Field(default=None, max_length=32768)
    """Literal value."""
    value_from: EnvVarSource | None = None
    """Value read from a Secret or ConfigMap key (e.g. an API token for a tracing exporter)."""


def _env_list(description: str) -> Any:
    return Field(
        default_factory=list,
        max_length=64,
        description=description,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )


def _env_rules(field: str = "env") -> tuple[Rule, ...]:
    return (
        Rule(
            cel=f"!has(self.{field}) || !self.{field}.exists(e, e.name in {_cel_list(OWNED_ENV)})",
            message=f"variables set by the operator are refused: {', '.join(OWNED_ENV)}",
            message_expression=f"'%s: set by the operator; refused: {', '.join(OWNED_ENV)}'"
            f".format([self.{field}.filter(e, e.name in {_cel_list(OWNED_ENV)})[0].name])",
            check=lambda o: not any(e.name in OWNED_ENV for e in o.env),
            explain=lambda o: (
                ", ".join(e.name for e in o.env if e.name in OWNED_ENV)
                + f": set by the operator; refused: {', '.join(OWNED_ENV)}"
            ),
            field_path=f".{field}",
            reason="FieldValueForbidden",
        ),
    )


class LabelSelectorRequirement(BaseModel):
    """One expression of a label selector."""

    model_config = _config()

    key: str = Field(min_length=1, max_length=316)
    """Label key."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    """How the key's value is matched."""
    values: list[Annotated[str, Field(max_length=63, description="A label value.")]] = Field(
        default_factory=list, max_length=64
    )
    """Values for In and NotIn."""


class LabelSelector(BaseModel):
    """A label selector (meta/v1 LabelSelector)."""

    model_config = _config()

    match_labels: dict[str, str] = _label_map("Labels a pod must carry.")
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list, max_length=16)
    """Expressions a pod must satisfy."""


class TopologySpreadConstraint(BaseModel):
    """How server pods spread over a topology (core/v1 TopologySpreadConstraint)."""

    model_config = _config()

    max_skew: int = Field(ge=1)
    """Largest allowed difference of matching pods between two topology domains."""
    topology_key: str = Field(min_length=1, max_length=316)
    """Node label whose values are the domains, e.g. topology.kubernetes.io/zone."""
    when_unsatisfiable: Literal["DoNotSchedule", "ScheduleAnyway"]
    """DoNotSchedule (a hard rule) or ScheduleAnyway (a preference)."""
    label_selector: LabelSelector | None = None
    """Pods counted per domain; unset: this QwenDeployment's server pods (every pool)."""
    match_label_keys: list[Annotated[str, Field(max_length=316, description="A label key.")]] = Field(
        default_factory=list, max_length=8
    )
    """Label keys whose values, taken from the incoming pod, narrow the selector (e.g. pod-template-hash)."""
    min_domains: int | None = Field(default=None, ge=1)
    """Fewest eligible domains (DoNotSchedule only)."""
    node_affinity_policy: Literal["Honor", "Ignore"] | None = None
    """Whether the pod's nodeAffinity / nodeSelector limit the domains counted (Kubernetes default Honor)."""
    node_taints_policy: Literal["Honor", "Ignore"] | None = None
    """Whether node taints limit the domains counted (Kubernetes default Ignore)."""


_AFFINITY_TERM: JsonDict = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


class NodeSelectorRequirement(BaseModel):
    """One node label expression."""

    model_config = _config()

    key: str = Field(min_length=1, max_length=316)
    """Node label key."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]
    """How the label's value is matched."""
    values: list[Annotated[str, Field(max_length=63, description="A label value.")]] = Field(
        default_factory=list, max_length=64
    )
    """Values for In / NotIn, one integer for Gt / Lt."""


class NodeSelectorTerm(BaseModel):
    """Node expressions that must all hold (terms of a list are alternatives)."""

    model_config = _config()

    match_expressions: list[NodeSelectorRequirement] = Field(default_factory=list, max_length=16)
    """Expressions on node labels."""
    match_fields: list[NodeSelectorRequirement] = Field(default_factory=list, max_length=4)
    """Expressions on node fields (metadata.name)."""


class NodeSelector(BaseModel):
    """Required node terms (any one of them)."""

    model_config = _config()

    node_selector_terms: list[NodeSelectorTerm] = Field(min_length=1, max_length=8)
    """Alternatives; a node must match one."""


class PreferredSchedulingTerm(BaseModel):
    """A weighted node preference."""

    model_config = _config()

    weight: int = Field(ge=1, le=100)
    """Weight added to a node's score when it matches."""
    preference: NodeSelectorTerm
    """The node expressions."""


class NodeAffinity(BaseModel):
    """Node affinity (core/v1 NodeAffinity)."""

    model_config = _config()

    required_during_scheduling_ignored_during_execution: NodeSelector | None = None
    """Nodes the pods may only run on; the operator adds its GPU product expression to each term."""
    preferred_during_scheduling_ignored_during_execution: list[PreferredSchedulingTerm] = Field(
        default_factory=list, max_length=16
    )
    """Nodes the scheduler prefers, e.g. a zone with reserved capacity."""


class Affinity(BaseModel):
    """Scheduling affinity (core/v1 Affinity). nodeAffinity is checked here; podAffinity and podAntiAffinity
    are passed to the pod as written and checked by the API server when the Deployment is applied. A
    required nodeAffinity is combined with the operator's GPU type selection (each of your
    nodeSelectorTerms also gets the GPU product expression)."""

    model_config = _config()

    node_affinity: NodeAffinity | None = None
    """Node affinity (required and preferred node terms)."""
    pod_affinity: dict[str, Any] | None = Field(default=None, json_schema_extra=_AFFINITY_TERM)
    """core/v1 PodAffinity."""
    pod_anti_affinity: dict[str, Any] | None = Field(default=None, json_schema_extra=_AFFINITY_TERM)
    """core/v1 PodAntiAffinity."""


def _tolerations() -> Any:
    return Field(default_factory=list, max_length=32)


_NODE_SELECTOR_DOC = (
    "Node labels the pods must match, merged with the operator's GPU selection (nvidia.com/gpu.product, "
    "which is refused here)."
)
_POOL_RULES = (
    *_key_rules("nodeSelector", owned=(GPU_PRODUCT_LABEL,), what="the GPU type of the pool"),
    *_env_rules(),
)


class PoolPodSpec(_Checked):
    """Settings for the pods of one GPU pool, over spec.pod (e.g. a taint only the L40S nodes carry)."""

    model_config = _config(_POOL_RULES)
    RULES = _POOL_RULES

    gpu_type: str = Field(max_length=32, pattern=r"^[A-Za-z0-9][A-Za-z0-9-]*$")
    """The pool: one of spec.placement.gpuTypes."""
    node_selector: dict[str, str] = _label_map(_NODE_SELECTOR_DOC + " Merged over spec.pod.nodeSelector.")
    tolerations: list[Toleration] = _tolerations()
    """Tolerations added to spec.pod's."""
    env: list[EnvVar] = _env_list("Server environment merged over spec.pod.env (same name: this one).")
    extra_args: list[Annotated[str, Field(max_length=256, description="One argument.")]] = Field(
        default_factory=list, max_length=32
    )
    """Engine flags appended after spec.pod.extraArgs (flags the operator sets are refused)."""

    @model_validator(mode="after")
    def _unique_env(self) -> Any:
        _unique("env", [e.name for e in self.env])
        return self


_SERVER_POD_RULES = (
    *_key_rules("labels", owned=OWNED_LABELS, prefix=OWNED_PREFIX, what="selectors and bookkeeping"),
    *_key_rules("annotations", prefix=OWNED_PREFIX, what="model version and bookkeeping"),
    *_key_rules("nodeSelector", owned=(GPU_PRODUCT_LABEL,), what="the GPU type of the pool"),
    *_env_rules(),
    Rule(
        cel="!has(self.terminationGracePeriodSeconds) || !has(self.preStopSleepSeconds)"
        " || self.preStopSleepSeconds == 0 || self.preStopSleepSeconds < self.terminationGracePeriodSeconds",
        message="preStopSleepSeconds must be less than terminationGracePeriodSeconds (the sleep counts against"
        " the grace period; the engine's drain gets the rest)",
        check=lambda p: (
            p.termination_grace_period_seconds is None
            or p.pre_stop_sleep_seconds == 0
            or p.pre_stop_sleep_seconds < p.termination_grace_period_seconds
        ),
        field_path=".preStopSleepSeconds",
        reason="FieldValueInvalid",
    ),
)


class ServerPodSpec(_Checked):
    """What to add to every server pod: scheduling, identity, metadata, environment and engine flags.

    Operator config podDefaults (the cluster admin's) apply under these: maps merge (this resource wins per
    key), lists add up, priorityClassName here wins."""

    model_config = _config(_SERVER_POD_RULES)
    RULES = _SERVER_POD_RULES

    labels: dict[str, str] = _label_map(
        "Labels on the server pods (cost allocation, mesh membership, ...); app.kubernetes.io/name, instance,"
        " component, managed-by and keys under serving.qwenops.io/ are the operator's and refused."
    )
    annotations: dict[str, str] = _label_map(
        "Annotations on the server pods; keys under serving.qwenops.io/ are the operator's and refused.",
        value_pattern=None,
        value_max=8192,
    )
    node_selector: dict[str, str] = _label_map(_NODE_SELECTOR_DOC)
    tolerations: list[Toleration] = _tolerations()
    """Tolerations added to the operator's (which tolerates the nvidia.com/gpu NoSchedule taint)."""
    affinity: Affinity | None = None
    """Node and pod (anti-)affinity, e.g. preferring a zone or spreading replicas off a node."""
    topology_spread_constraints: list[TopologySpreadConstraint] = Field(default_factory=list, max_length=8)
    """How replicas spread over zones or nodes; a constraint without labelSelector counts this QwenDeployment's
    server pods."""
    priority_class_name: str | None = Field(default=None, min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    """PriorityClass of the server pods (e.g. so serving preempts batch jobs on GPU nodes)."""
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list, max_length=16)
    """Secrets for pulling the server image and the operator image of the model-pull init container (a private
    mirror); added to the operator config's podDefaults.imagePullSecrets."""
    service_account_name: str | None = Field(default=None, min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    """ServiceAccount of the server pods, e.g. one annotated for IRSA (eks.amazonaws.com/role-arn) or GKE
    Workload Identity so the model-pull init container reads the registry without static keys. Unset: the
    namespace's default account with no API token mounted (automountServiceAccountToken false). Set: the
    pod leaves automountServiceAccountToken to the ServiceAccount (Kubernetes' default mounts it; the IRSA and
    Azure webhooks add their own projected token either way). Like a Pod, a QwenDeployment may name any
    ServiceAccount of its namespace: grant QwenDeployment create only where you would grant Pod create."""
    env: list[EnvVar] = _env_list(
        "Extra environment of the inference server container (value, or valueFrom secretKeyRef / configMapKeyRef);"
        " the operator's variables (HF_HUB_OFFLINE, HF_HOME, HOME, VLLM_NO_USAGE_STATS, DO_NOT_TRACK) are refused."
    )
    extra_args: list[Annotated[str, Field(max_length=256, description="One argument.")]] = Field(
        default_factory=list, max_length=32
    )
    """Extra engine flags appended to the server's arguments, e.g. [--max-num-batched-tokens, "8192"] (vllm) or
    [--max-batch-prefill-tokens=8192] (tgi). Flags the operator sets from the spec (--model-id, --port,
    --num-shard, --max-concurrent-requests, --max-input-tokens, --max-total-tokens, --quantize; vllm --model,
    --tensor-parallel-size, --max-model-len, --max-num-seqs, --quantization, ...) are refused: set the spec
    field instead."""
    termination_grace_period_seconds: int | None = Field(default=None, ge=0, le=3600)
    """Seconds a stopping server pod gets (the preStop sleep included); unset: preStopSleepSeconds + 120 (TGI
    drains in-flight requests for up to 90 s after SIGTERM)."""
    pre_stop_sleep_seconds: int = Field(default=10, ge=0, le=300)
    """Seconds a stopping server pod keeps serving before SIGTERM (a preStop sleep, Kubernetes >= 1.30): the
    router and every kube-proxy stop sending it requests meanwhile, so none lands on a closing port. 0: none."""
    pools: list[PoolPodSpec] = Field(
        default_factory=list,
        max_length=8,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["gpuType"]},
    )
    """Per-pool settings, e.g. [{gpuType: L40S, tolerations: [...], extraArgs: [...]}]; gpuType must be one of
    spec.placement.gpuTypes."""

    @model_validator(mode="after")
    def _unique(self) -> Any:
        _unique("env", [e.name for e in self.env])
        _unique("pools", [p.gpu_type for p in self.pools], "gpuType")
        return self

    def for_pool(self, matches: Callable[[str], bool]) -> PoolPodSpec | None:
        """The pools entry whose gpuType ``matches`` (the caller resolves catalog spellings)."""
        return next((p for p in self.pools if matches(p.gpu_type)), None)


class RouterResources(BaseModel):
    """CPU and memory of each router pod."""

    model_config = _config()

    cpu: Quantity | None = None
    """CPU request (no limit: a throttled router delays every request); unset: 250m."""
    memory: Quantity | None = None
    """Memory request and limit; unset: 256Mi requested, 1Gi limit."""


_ROUTER_POD_RULES = (
    *_key_rules("labels", owned=OWNED_LABELS, prefix=OWNED_PREFIX, what="selectors and bookkeeping"),
    *_key_rules("annotations", prefix=OWNED_PREFIX, what="bookkeeping"),
    *_key_rules("nodeSelector", what=""),
)


class RouterPodSpec(_Checked):
    """What to add to the router pods (they need no GPU: usually the general node pool)."""

    model_config = _config(_ROUTER_POD_RULES)
    RULES = _ROUTER_POD_RULES

    labels: dict[str, str] = _label_map("Labels on the router pods (the operator's keys are refused).")
    annotations: dict[str, str] = _label_map(
        "Annotations on the router pods (keys under serving.qwenops.io/ are refused).",
        value_pattern=None,
        value_max=8192,
    )
    node_selector: dict[str, str] = _label_map("Node labels the router pods must match.")
    tolerations: list[Toleration] = _tolerations()
    """Tolerations of the router pods."""
    affinity: Affinity | None = None
    """Affinity of the router pods; a podAntiAffinity here replaces the operator's (a preferred spread over
    nodes), nodeAffinity and podAffinity are added."""
    priority_class_name: str | None = Field(default=None, min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    """PriorityClass of the router pods (every request passes through them)."""
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list, max_length=16)
    """Secrets for pulling the operator image the router runs; added to podDefaults.imagePullSecrets."""
    resources: RouterResources = Field(default_factory=RouterResources)
    """CPU and memory per router pod."""


class RolloutSpec(BaseModel):
    """How pods are replaced when the model version or the server configuration changes."""

    model_config = _config()

    max_surge: int = Field(default=1, ge=0, le=100)
    """Extra pods per pool during a rolling update (pods are never taken down before replacements are ready)."""
    canary_replicas: int = Field(default=0, ge=0, le=100)
    """Replicas that receive a new model version first (0: roll all pools directly)."""
    prestage_timeout_seconds: int = Field(default=300, ge=0, le=86400)
    """Seconds a roll waits for the node agent to pre-stage the target version (status.model.prestage) on
    the nodes serving this resource (all eligible nodes when fewer serve it) before the pools move; the
    wait then ends anyway (each new pod pulls what is missing). 0: never wait. Only with spec.model.prestage
    and node agents publishing their caches."""
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
    pod: RouterPodSpec = Field(default_factory=RouterPodSpec)
    """Scheduling, metadata and resources of the router pods."""


_SPEC_RULES: tuple[Rule, ...] = (
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


def _owned_extra_args(s: Any) -> list[str]:
    return owned_flags(s.runtime.engine, s.pod.extra_args)


def _owned_pool_args(s: Any) -> list[str]:
    return [a for p in s.pod.pools for a in owned_flags(s.runtime.engine, p.extra_args)]


def _pool_type_known(s: Any) -> list[str]:
    return [p.gpu_type for p in s.pod.pools if p.gpu_type not in s.placement.gpu_types]


_FLAG_HINT = "set by the operator from the spec (runtime, placement, model); set those fields instead"
_SPEC_RULES += (
    Rule(
        cel="!has(self.pod) || !has(self.pod.extraArgs) || "
        + _cel_owned_args("self.pod.extraArgs", "self.runtime.engine")
        + ".size() == 0",
        message=f"flags {_FLAG_HINT}",
        message_expression=f"'%s: flag {_FLAG_HINT} (engine %s)'.format(["
        + _cel_owned_args("self.pod.extraArgs", "self.runtime.engine")
        + "[0], self.runtime.engine])",
        check=lambda s: not _owned_extra_args(s),
        explain=lambda s: f"{', '.join(_owned_extra_args(s))}: flags {_FLAG_HINT} (engine {s.runtime.engine})",
        field_path=".pod.extraArgs",
        reason="FieldValueForbidden",
    ),
    Rule(
        cel="!has(self.pod) || !has(self.pod.pools) || self.pod.pools.all(p, !has(p.extraArgs) || "
        + _cel_owned_args("p.extraArgs", "self.runtime.engine")
        + ".size() == 0)",
        message=f"pools[].extraArgs: flags {_FLAG_HINT}",
        message_expression=f"'pools[].extraArgs %s: flag {_FLAG_HINT} (engine %s)'.format([self.pod.pools.map(p, "
        + _cel_owned_args("p.extraArgs", "self.runtime.engine")
        + ").filter(x, x.size() > 0)[0][0], self.runtime.engine])",
        check=lambda s: not _owned_pool_args(s),
        explain=lambda s: (
            f"pools[].extraArgs {', '.join(_owned_pool_args(s))}: flags {_FLAG_HINT} (engine {s.runtime.engine})"
        ),
        field_path=".pod.pools",
        reason="FieldValueForbidden",
    ),
    Rule(
        cel="!has(self.pod) || !has(self.pod.pools) || self.pod.pools.all(p, p.gpuType in self.placement.gpuTypes)",
        message="pools[].gpuType must be one of placement.gpuTypes",
        message_expression="'pools[].gpuType %s: not one of placement.gpuTypes'.format("
        "[self.pod.pools.filter(p, !(p.gpuType in self.placement.gpuTypes))[0].gpuType])",
        check=lambda s: not _pool_type_known(s),
        explain=lambda s: (
            f"pools[].gpuType {', '.join(_pool_type_known(s))}: not one of placement.gpuTypes"
            f" ({', '.join(s.placement.gpu_types)})"
        ),
        field_path=".pod.pools",
        reason="FieldValueInvalid",
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
    pod: ServerPodSpec = Field(default_factory=ServerPodSpec)
    """Customisation of the server pods: node selection, tolerations, affinity, spread, priority, pull
    secrets, ServiceAccount, labels, annotations, environment, extra engine flags, graceful stop; per-pool
    overrides in pools."""

    def desired_replicas(self, autoscaler_desired: int | None = None) -> int:
        """Replicas to run: the autoscaler's figure (clamped) when enabled, else spec.replicas."""
        if not self.scaling.enabled:
            return self.replicas
        want = self.scaling.min_replicas if autoscaler_desired is None else autoscaler_desired
        return max(self.scaling.min_replicas, min(self.scaling.max_replicas, want))

"""The ``QwenDeployment`` status: what the controller and autoscaler report.

Status is a contract read by ``kubectl get``/``wait``, Argo CD and humans: conditions in
the metav1.Condition shape, the scale subresource's ``replicas``/``selector``, per-pool
facts, and two preformatted strings (``poolSummary``, ``readySummary``) that exist only
so printer columns can show them (JSONPath cannot join a list).

Status models are lenient about extra keys (``extra="ignore"``) so an older operator
reading a status written by a newer one does not fail; the CRD still prunes unknown keys.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

_CONFIG = ConfigDict(
    alias_generator=to_camel,
    populate_by_name=True,
    extra="ignore",
    use_attribute_docstrings=True,
)

CONDITION_TYPES = ("Ready", "Progressing", "Degraded", "ModelSynced", "ScalingActive")


class Condition(BaseModel):
    """One observation of the resource's state (metav1.Condition)."""

    model_config = _CONFIG

    type: str = Field(
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
        r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
    )
    """Condition type: Ready, Progressing, Degraded, ModelSynced or ScalingActive."""
    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds: True, False or Unknown."""
    observed_generation: int | None = Field(default=None, ge=0)
    """metadata.generation the condition was computed from."""
    last_transition_time: str = Field(json_schema_extra={"format": "date-time"})
    """When status last changed (RFC 3339); unchanged while status stays the same."""
    reason: str = Field(max_length=1024, min_length=1, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    """CamelCase reason for the last transition, e.g. PoolsReady or ModelNotInCatalog."""
    message: str = Field(default="", max_length=32768)
    """Human-readable details a user can act on."""


class PoolStatus(BaseModel):
    """One GPU pool: a Deployment of identical replicas on one GPU type (a LeaderWorkerSet of
    identical groups when a replica spans nodes)."""

    model_config = _CONFIG

    gpu_type: str = Field(max_length=32)
    """GPU catalog type of this pool, e.g. L40S."""
    deployment: str = Field(default="", max_length=253)
    """Name of the pool's Deployment (or LeaderWorkerSet: see kind)."""
    kind: str | None = Field(default=None, max_length=32)
    """LeaderWorkerSet when a replica spans nodes; absent for a Deployment."""
    shards: int = Field(ge=1, le=64)
    """Tensor-parallel shards (GPUs) per replica, per node when the replica spans nodes."""
    nodes: int | None = Field(default=None, ge=2, le=64)
    """Nodes one replica spans (pipeline stages, one pod each in its LeaderWorkerSet group); absent: one node."""
    replicas: int = Field(default=0, ge=0)
    """Replicas the pool is sized to."""
    ready_replicas: int = Field(default=0, ge=0)
    """Replicas passing their readiness probe."""
    cost_per_hour: float = Field(default=0.0, ge=0)
    """Catalog price of the pool's GPUs in $/hour (replicas x shards x $/GPU-hour)."""
    capacity_requests_per_second: float | None = Field(default=None, ge=0)
    """Requests/s one replica of this pool sustains with P95 time to first token within
    spec.scaling.p95LatencySeconds (the planner's figure for the typical request): the router's weight."""
    prefill_tokens_per_second: float | None = Field(default=None, ge=0)
    """Prompt tokens/s one replica prefills (replica model): the router's size-aware TTFT estimate."""
    max_concurrent_requests: int | None = Field(default=None, ge=0)
    """Requests one replica accepts at once (spec.runtime.maxConcurrentRequests): the router holds or
    sends elsewhere beyond it."""


class CanaryStatus(BaseModel):
    """The canary of one target version: a few replicas on it, smoke-tested before the pools move."""

    model_config = _CONFIG

    version: str = Field(max_length=128)
    """Manifest digest the canary replicas run."""
    phase: Literal["Testing", "Passed", "Failed"]
    """Testing: canary replicas starting or under test; Passed: promoted to every pool; Failed: rolled back."""
    message: str = Field(default="", max_length=1024)
    """Outcome of the smoke test, e.g. the error a failed canary returned."""


class StagingStatus(BaseModel):
    """How many eligible GPU nodes hold one version in their cache (the node agents' Node annotations)."""

    model_config = _CONFIG

    version: str = Field(max_length=128)
    """Manifest digest (currentVersion or targetVersion)."""
    eligible_nodes: int = Field(default=0, ge=0)
    """Nodes of an allowed GPU type (matching spec.pod's node selectors) the replicas could run on."""
    nodes_with_version: int = Field(default=0, ge=0)
    """Of those, nodes whose node agent reports the version complete in its cache
    (annotation serving.qwenops.io/model-cache)."""


class PrestageStatus(BaseModel):
    """The roll's wait for the node agents to pre-stage the target version (spec.rollout.prestageTimeoutSeconds)."""

    model_config = _CONFIG

    version: str = Field(max_length=128)
    """Manifest digest the roll waits for (targetVersion)."""
    phase: Literal["Waiting", "Staged", "TimedOut"]
    """Waiting: pools stay on currentVersion; Staged: the nodes hold it, pools roll; TimedOut: rolled anyway."""
    since: str = Field(json_schema_extra={"format": "date-time"})
    """When the wait began (RFC 3339): the timeout is counted from it, across operator restarts."""
    message: str = Field(default="", max_length=1024)
    """Which nodes hold the version and which still lack it."""


class ModelStatus(BaseModel):
    """Which model version is served and which is being synced."""

    model_config = _CONFIG

    current_version: str | None = None
    """Manifest digest every pool's replicas serve (set once a rollout completes)."""
    target_version: str | None = None
    """Manifest digest spec.model.version resolves to; pools move to it (after a passing canary)."""
    resolved_from: str | None = Field(default=None, max_length=128)
    """The spec.model.version value (tag, version name or digest) targetVersion was resolved from."""
    last_sync_bytes: int | None = Field(default=None, ge=0)
    """Bytes of chunks in targetVersion absent from currentVersion: what a node holding the current version pulls."""
    failed_version: str | None = Field(default=None, max_length=128)
    """Digest whose canary failed: not retried until spec.model.version changes (a tag moving elsewhere retries)."""
    canary: CanaryStatus | None = None
    """The canary of the latest target version (absent when spec.rollout.canaryReplicas is 0)."""
    staging: list[StagingStatus] = Field(
        default_factory=list,
        max_length=2,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["version"]},
    )
    """Per version (current and target): eligible GPU nodes and how many of them hold it (pre-staging by the
    node agent, spec.model.prestage); absent while no eligible node runs the node agent."""
    prestage: PrestageStatus | None = None
    """The roll's wait for pre-staging of the target version (absent when no roll waited)."""


class PredictiveProfile(BaseModel):
    """What the autoscaler needed per time-of-day slot on previous days (spec.scaling.predictive).

    Kept in status so it survives operator restarts without writing spec; 96 slots of 15 minutes."""

    model_config = _CONFIG

    slot_seconds: int = Field(default=900, ge=60, le=86400)
    """Length of one slot in seconds (900: 96 slots per day)."""
    day: str = Field(default="", max_length=10)
    """Local date (YYYY-MM-DD, in spec.scaling.predictive.timezone) today holds."""
    peaks: list[float] = Field(
        default_factory=list,
        max_length=1440,
        json_schema_extra={"items": {"description": "Replicas (decayed) in one slot.", "type": "number"}},
    )
    """Per slot, the replicas load needed on previous days: the maximum, each day without it decaying by
    half over spec.scaling.predictive.lookbackDays."""
    today: list[int] = Field(
        default_factory=list,
        max_length=1440,
        json_schema_extra={"items": {"description": "Replicas in one slot.", "type": "integer"}},
    )
    """Per slot, the most replicas load needed so far today (folded into peaks when the day ends)."""


class DesiredPool(BaseModel):
    """Replicas the autoscaler wants on one GPU pool."""

    model_config = _CONFIG

    gpu_type: str = Field(max_length=32)
    """GPU catalog type of the pool, e.g. A10G."""
    replicas: int = Field(ge=0)
    """Replicas (ready + starting) the pool's Deployment is sized to."""


class AutoscalerStatus(BaseModel):
    """The autoscaler's last decision; the reconciler sizes pools from desiredPools (total: desiredReplicas)."""

    model_config = _CONFIG

    desired_replicas: int | None = Field(default=None, ge=0)
    """Replicas the autoscaler wants (clamped to scaling.minReplicas..maxReplicas)."""
    desired_pools: list[DesiredPool] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["gpuType"]},
    )
    """Replicas the autoscaler wants per GPU pool (the same decision qwenctl simulate runs): the reconciler
    sizes each pool Deployment from it, spilling over to the next GPU type only when a pool has no free GPU left."""
    queue_depth: float | None = None
    """Waiting requests per ready replica at the last evaluation."""
    p95_seconds: float | None = None
    """P95 request latency at the last evaluation (absent when idle: no signal)."""
    observed_prompt_tokens: int | None = Field(default=None, ge=1)
    """Mean prompt length (the router's estimate, characters / 4) over the last 10 minutes, rounded to two
    significant digits, that sized each pool's replicas at the last evaluation (spec.scaling.learnPromptTokens;
    absent: typicalPromptTokens did)."""
    observed_output_tokens: int | None = Field(default=None, ge=1)
    """Mean generated tokens per finished request in the engines' own histogram (thinking included) over the
    last 10 minutes, rounded to two significant digits, that sized each pool's replicas at the last evaluation
    (spec.scaling.learnOutputTokens; absent: typicalOutputTokens did)."""
    last_scale_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    """When the autoscaler last changed desiredReplicas."""
    last_decision: str | None = Field(default=None, max_length=1024)
    """Why the last decision was taken, in one sentence."""
    floor: int | None = Field(default=None, ge=0)
    """Replicas a schedule window or the predictive pre-warm keeps at least (absent when neither applies)."""
    floor_reason: str | None = Field(default=None, max_length=256)
    """Which window or prediction sets floor, e.g. schedule 'morning' floor 4."""
    profile: PredictiveProfile | None = None
    """The learned time-of-day profile (only with spec.scaling.predictive.enabled)."""


class QwenDeploymentStatus(BaseModel):
    """Observed state of a QwenDeployment."""

    model_config = _CONFIG

    observed_generation: int | None = Field(default=None, ge=0)
    """metadata.generation the status describes."""
    replicas: int | None = Field(default=None, ge=0)
    """Replicas across all pools (the scale subresource's status replicas)."""
    ready_replicas: int | None = Field(default=None, ge=0)
    """Replicas ready to serve."""
    desired_replicas: int | None = Field(default=None, ge=0)
    """Replicas the reconciler is sizing to (spec.replicas, or the autoscaler's figure when enabled)."""
    selector: str | None = Field(default=None, max_length=1024)
    """Label selector of every server pod (the scale subresource's selector)."""
    pool_summary: str | None = Field(default=None, max_length=256)
    """Replicas per GPU pool for kubectl get, e.g. A10G:2,L40S:1."""
    ready_summary: str | None = Field(default=None, max_length=32)
    """Ready over desired replicas for kubectl get, e.g. 2/3."""
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Latest observations: Ready, Progressing, Degraded, ModelSynced, ScalingActive."""
    pools: list[PoolStatus] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["gpuType"]},
    )
    """GPU pools as planned and observed."""
    model: ModelStatus = Field(default_factory=ModelStatus)
    """Model versions."""
    autoscaler: AutoscalerStatus = Field(default_factory=AutoscalerStatus)
    """Autoscaler state."""


def pool_summary(pools: list[tuple[str, int]]) -> str:
    """``A10G:2,L40S:1`` from (gpu type, replicas) pairs, in the given order."""
    return ",".join(f"{gpu}:{n}" for gpu, n in pools)


def ready_summary(ready: int, desired: int) -> str:
    """``2/3``: ready over desired replicas."""
    return f"{ready}/{desired}"

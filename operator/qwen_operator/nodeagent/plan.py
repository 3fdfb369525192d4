"""What one node's agent does next, decided purely from what it observed.

Inputs: this node's labels, the QwenDeployments (spec + ``status.model``), the pods bound
to this node, and the versions each cache directory holds (``modelsync.evict.held_versions``
per ``<cache path>/<namespace>``). Outputs (:class:`NodePlan`):

* ``pulls``: versions to pull, in order -- first the targets of resources in the middle of a
  roll (a roll waits for them, :mod:`qwen_operator.controller.prestage`), then current
  versions (a scale-out replica's model-pull then finds every chunk present). Only for
  resources this node is **eligible** for: ``spec.model.prestage`` on (the default for
  ``s3://`` and ``oci://``), a hostPath cache the agent was given, the node's GPU type (its
  ``nvidia.com/gpu.product`` label through the catalog) among ``spec.placement.gpuTypes``, and
  the node matching the pods' own node selectors (``podDefaults``, ``spec.pod`` and the
  pool's entry). A version already held is not pulled again.
* ``protect``: per cache directory, model -> versions eviction must keep: what a pod on this
  node serves (its ``serving.qwenops.io/model-version`` annotation), and the current and
  target versions of every resource, eligible or not (a pod may still be scheduled here).
* ``report``: the Node annotation ``serving.qwenops.io/model-cache``: model name ->
  complete version ids (manifest digest hex[:16]) held in any cache directory.

Names and paths are the ones the pods use (:mod:`qwen_operator.render.workload`): the model
``<namespace>.<name>``, the directory ``<spec.model.cache.path or nodeCache.path>/<namespace>``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from ..api.spec import QwenDeploymentSpec
from ..catalog import GPUType, gpu_by_product_label, resolve_gpu_name
from ..render.names import ANNOTATION_MODEL_VERSION, LABEL_DEPLOYMENT, label_value
from ..render.workload import (
    GPU_PRODUCT_LABEL,
    OperatorDefaults,
    RenderContext,
    cache_path,
    cache_path_problem,
    credentials_secret,
    model_key,
    namespace_cache_dir,
    pool_overlay,
)

#: Node annotation the agent publishes: compact JSON ``{"<ns>.<name>": ["<id>", ...]}``.
CACHE_ANNOTATION = "serving.qwenops.io/model-cache"
_HEX = frozenset("0123456789abcdef")


def version_id(digest: str) -> str | None:
    """The cache directory id of a manifest digest (``sha256:<hex>`` -> hex[:16]); None for a tag or name."""
    if not digest.startswith("sha256:"):
        return None
    hexpart = digest.split(":", 1)[1].lower()
    if len(hexpart) < 16 or not set(hexpart) <= _HEX:
        return None
    return hexpart[:16]


@dataclass(frozen=True)
class Resource:
    """One QwenDeployment as the agent sees it."""

    namespace: str
    name: str
    spec: QwenDeploymentSpec
    current: str | None = None  # status.model.currentVersion
    target: str | None = None  # status.model.targetVersion

    @property
    def model(self) -> str:
        return f"{self.namespace}.{self.name}"

    @property
    def mid_roll(self) -> bool:
        return self.target is not None and self.target != self.current

    def context(self, defaults: OperatorDefaults) -> RenderContext:
        return RenderContext(name=self.name, namespace=self.namespace, defaults=defaults)

    def cache_dir(self, defaults: OperatorDefaults) -> str:
        """The node directory this resource's pods mount (``<path>/<namespace>``)."""
        return namespace_cache_dir(self.spec, self.context(defaults))

    def versions(self) -> list[str]:
        """Target first (a roll waits for it), then current; digests only, no duplicates."""
        out = [v for v in (self.target, self.current) if v and version_id(v)]
        return list(dict.fromkeys(out))


def parse_resource(obj: Mapping[str, Any]) -> Resource | None:
    """A QwenDeployment object as a :class:`Resource`; None when its spec is invalid (the operator reports it)."""
    meta = obj.get("metadata") or {}
    try:
        spec = QwenDeploymentSpec.model_validate(obj.get("spec") or {})
    except ValidationError:
        return None
    model = (obj.get("status") or {}).get("model") or {}
    return Resource(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        spec=spec,
        current=model.get("currentVersion"),
        target=model.get("targetVersion"),
    )


def node_gpu_type(labels: Mapping[str, str], gpus: Mapping[str, GPUType]) -> str | None:
    """The catalog GPU type of a node from its ``nvidia.com/gpu.product`` label (None: no GPU or unknown)."""
    product = labels.get(GPU_PRODUCT_LABEL)
    if not product:
        return None
    gpu = gpu_by_product_label(product, dict(gpus))
    return gpu.name if gpu is not None else None


def _allowed_types(spec: QwenDeploymentSpec, gpus: Mapping[str, GPUType]) -> set[str]:
    out = set()
    for name in spec.placement.gpu_types:
        try:
            out.add(resolve_gpu_name(name, dict(gpus)))
        except KeyError:
            continue
    return out


def ineligible_reason(
    res: Resource,
    labels: Mapping[str, str],
    gpus: Mapping[str, GPUType],
    defaults: OperatorDefaults,
) -> str | None:
    """Why this node does not stage ``res`` (None: it does). Does not look at the agent's cache roots."""
    if not res.spec.model.prestage_enabled():
        return "pre-staging is off (spec.model.prestage false, an hf:// registry or a pvc cache)"
    gpu = node_gpu_type(labels, gpus)
    if gpu is None:
        return "the node has no catalog GPU type (nvidia.com/gpu.product)"
    if gpu not in _allowed_types(res.spec, gpus):
        return f"the node's GPU type {gpu} is not in spec.placement.gpuTypes"
    overlay = pool_overlay(res.spec, gpus[gpu])
    wanted = {
        **dict(defaults.pods.node_selector),
        **res.spec.pod.node_selector,
        **(overlay.node_selector if overlay is not None else {}),
    }
    missing = sorted(k for k, v in wanted.items() if labels.get(k) != v)
    if missing:
        return f"the node does not match the pods' nodeSelector ({', '.join(missing)})"
    if cache_path_problem(res.spec, defaults) is not None:
        return "spec.model.cache.path is not an allowed node cache directory"
    return None


@dataclass(frozen=True)
class Pull:
    """One version to pull into one cache directory (the init container's ``qwenctl model pull``)."""

    namespace: str
    name: str  # the QwenDeployment
    model: str  # <namespace>.<name>: the cache's model directory
    registry: str
    digest: str
    cache_dir: str  # node directory (<path>/<namespace>)
    cache_root: str  # node directory of the cache path (<path>)
    credentials_secret: str | None  # Secret in ``namespace`` whose keys are the pull's environment
    why: str  # "target" (mid-roll) or "current"


@dataclass(frozen=True)
class NodePlan:
    pulls: tuple[Pull, ...] = ()
    #: node cache directory -> model -> version ids eviction must keep
    protect: Mapping[str, Mapping[str, frozenset[str]]] = field(default_factory=dict)
    #: the Node annotation's content: model -> held version ids
    report: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: model -> why this node does not stage it (for the log)
    skipped: Mapping[str, str] = field(default_factory=dict)

    def annotation(self) -> str:
        return report_json(self.report)


def report_json(report: Mapping[str, Sequence[str]]) -> str:
    """Compact, key-sorted JSON: equal content gives an equal string (a patch only when it changed)."""
    return json.dumps({k: list(v) for k, v in sorted(report.items()) if v}, separators=(",", ":"))


def parse_report(value: str | None) -> dict[str, list[str]]:
    """The Node annotation back into model -> version ids; anything malformed reads as empty."""
    if not value:
        return {}
    try:
        data = json.loads(value)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): [str(i) for i in v] for k, v in data.items() if isinstance(v, list)}


def served_versions(pods: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """(namespace, deployment label) -> version ids the live pods on this node serve (or are pulling)."""
    out: dict[tuple[str, str], set[str]] = {}
    for pod in pods:
        meta = pod.get("metadata") or {}
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        owner = (meta.get("labels") or {}).get(LABEL_DEPLOYMENT)
        vid = version_id(str((meta.get("annotations") or {}).get(ANNOTATION_MODEL_VERSION) or ""))
        if owner and vid:
            out.setdefault((str(meta.get("namespace") or ""), owner), set()).add(vid)
    return out


def plan(
    labels: Mapping[str, str],
    resources: Iterable[Resource],
    pods: Iterable[Mapping[str, Any]],
    held: Mapping[str, Mapping[str, Sequence[str]]],
    gpus: Mapping[str, GPUType],
    defaults: OperatorDefaults,
    cache_roots: Iterable[str] | None = None,
) -> NodePlan:
    """This node's next steps. ``held``: node cache directory (``<path>/<namespace>``) -> model -> held ids.
    ``cache_roots``: the node cache paths the agent can write (None: any)."""
    roots = None if cache_roots is None else {r.rstrip("/") or "/" for r in cache_roots}
    served = served_versions(pods)
    protect: dict[str, dict[str, set[str]]] = {}
    targets: list[Pull] = []
    currents: list[Pull] = []
    skipped: dict[str, str] = {}
    for res in sorted(resources, key=lambda r: (r.namespace, r.name)):
        if res.spec.model.cache.type != "hostPath":
            continue
        ctx = res.context(defaults)
        cdir = namespace_cache_dir(res.spec, ctx)
        keep = protect.setdefault(cdir, {}).setdefault(model_key(ctx), set())
        keep.update(i for i in (version_id(v) for v in (res.current or "", res.target or "")) if i)
        keep.update(served.get((res.namespace, label_value(res.name)), set()))
        why = ineligible_reason(res, labels, gpus, defaults)
        root = cache_path(res.spec, ctx).rstrip("/") or "/"
        if why is None and roots is not None and root not in roots:
            why = f"the agent has no --cache-root for {root}"
        if why is not None:
            skipped[res.model] = why
            continue
        have = set(held.get(cdir, {}).get(res.model, ()))
        for digest in res.versions():
            if version_id(digest) in have:
                continue
            kind = "target" if digest == res.target and res.mid_roll else "current"
            pull = Pull(
                namespace=res.namespace,
                name=res.name,
                model=res.model,
                registry=res.spec.model.registry,
                digest=digest,
                cache_dir=cdir,
                cache_root=root,
                credentials_secret=credentials_secret(res.spec, ctx),
                why=kind,
            )
            (targets if kind == "target" else currents).append(pull)
    report: dict[str, list[str]] = {}
    for cdir in sorted(held):
        for model, ids in held[cdir].items():
            bucket = report.setdefault(model, [])
            bucket.extend(i for i in ids if i not in bucket)
    return NodePlan(
        pulls=tuple(targets + currents),
        protect={d: {m: frozenset(v) for m, v in ms.items()} for d, ms in protect.items()},
        report={m: tuple(v) for m, v in report.items() if v},
        skipped=skipped,
    )


def holds(annotation: str | None, model: str, digest: str | None) -> bool:
    """Whether a node's ``model-cache`` annotation lists ``digest`` of ``model``."""
    vid = version_id(digest or "")
    return vid is not None and vid in parse_report(annotation).get(model, [])

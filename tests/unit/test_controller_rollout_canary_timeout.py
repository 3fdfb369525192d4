"""Canary deadlines and placement, decided purely from cluster state.

The clock is the canary Deployment's ``creationTimestamp`` and the inputs are what the
API server holds, so a restarted operator reaches the same decision; the record of a
timeout is the version watcher's own ``status.model`` subset, which the watcher then
computes unchanged (no write, no second event).
"""

from __future__ import annotations

import copy
import datetime as dt
from dataclasses import replace
from typing import Any

from qwen_operator.catalog import load_catalog
from qwen_operator.controller import conditions as cond
from qwen_operator.controller.reconcile import Observed, compute, with_watcher_status
from qwen_operator.controller.rollout import (
    FAILED,
    GPU_TYPE_ANNOTATION,
    TESTING,
    TIMEOUT_MARK,
    Canary,
    ModelState,
    Resolution,
    SyncInput,
    canary_deadline,
    canary_wanted,
    decide,
    degraded_reason,
    is_canary,
    pool_version,
    template_version,
    timed_out,
    watcher_status,
)
from qwen_operator.render.names import server_selector, serving_selector_string

CATALOG = load_catalog(None)
V1, V2, V3 = "sha256:" + "1" * 64, "sha256:" + "2" * 64, "sha256:" + "3" * 64
T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
TESTING_V2 = ModelState(current=V1, target=V2, resolved_from="stable", canary=Canary(V2, TESTING))


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def stamp(seconds: float) -> str:
    return at(seconds).strftime("%Y-%m-%dT%H:%M:%SZ")


def node(name: str, product: str, gpus: int) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": product}},
        "spec": {},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def gpu_pod(name: str, node_name: str | None, version: str, canary: bool = False, ready: bool = True) -> dict[str, Any]:
    labels = {"serving.qwenops.io/deployment": "chat"}
    if canary:
        labels["serving.qwenops.io/canary"] = "true"
    spec: dict[str, Any] = {"containers": [{"resources": {"limits": {"nvidia.com/gpu": "1"}}}]}
    if node_name:
        spec["nodeName"] = node_name
    return {
        "metadata": {
            "name": name,
            "namespace": "llm",
            "labels": labels,
            "annotations": {"serving.qwenops.io/model-version": version},
        },
        "spec": spec,
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def canary_dep(version: str, created: float, gpu: str = "L40S") -> dict[str, Any]:
    return {
        "kind": "Deployment",
        "metadata": {
            "name": f"chat-{gpu.lower()}-canary",
            "namespace": "llm",
            "creationTimestamp": stamp(created),
            "labels": {"serving.qwenops.io/deployment": "chat", "serving.qwenops.io/canary": "true"},
            "annotations": {GPU_TYPE_ANNOTATION: gpu},
        },
        "spec": {
            "replicas": 1,
            "template": {"metadata": {"annotations": {"serving.qwenops.io/model-version": version}}},
        },
        "status": {},
    }


# -- canary_deadline ----------------------------------------------------------------------
def test_no_deadline_without_a_canary_under_test() -> None:
    dep = [canary_dep(V2, 0)]
    assert canary_deadline(ModelState(current=V1, target=V1), "chat", "llm", 1, 60, dep, [], at(999)) is None
    assert canary_deadline(TESTING_V2, "chat", "llm", 0, 60, dep, [], at(999)) is None  # canaryReplicas 0
    assert canary_deadline(TESTING_V2, "chat", "llm", 1, 60, [], [], at(999)) is None  # not created yet
    assert canary_deadline(TESTING_V2, "chat", "llm", 1, 60, [canary_dep(V3, 0)], [], at(999)) is None  # other version
    no_stamp = canary_dep(V2, 0)
    del no_stamp["metadata"]["creationTimestamp"]
    assert canary_deadline(TESTING_V2, "chat", "llm", 1, 60, [no_stamp], [], at(999)) is None


def test_deadline_counts_from_the_canary_deployments_creation() -> None:
    dep = [canary_dep(V2, created=100)]
    running = canary_deadline(TESTING_V2, "chat", "llm", 1, 60, dep, [], at(130))
    assert running is not None and running.remaining == 30 and not running.expired and running.version == V2
    late = canary_deadline(TESTING_V2, "chat", "llm", 1, 60, dep, [], at(160))
    assert late is not None and late.expired


def test_pending_for_a_gpu_and_not_ready_are_told_apart() -> None:
    dep = [canary_dep(V2, 0, gpu="L40S")]
    pending = canary_deadline(TESTING_V2, "chat", "llm", 1, 60, dep, [], at(61))
    assert pending is not None and "Pending" in pending.message and "L40S" in pending.message
    unready = [gpu_pod("c", "l0", V2, canary=True, ready=False)]
    not_ready = canary_deadline(TESTING_V2, "chat", "llm", 1, 60, dep, unready, at(61))
    assert not_ready is not None and "never Ready" in not_ready.message and "Pending" not in not_ready.message
    # pods of the pools, of another version or another namespace are not the canary's
    others = [gpu_pod("p", "l0", V2, canary=False), gpu_pod("old", "l0", V1, canary=True)]
    other_ns = gpu_pod("x", "l0", V2, canary=True)
    other_ns["metadata"]["namespace"] = "elsewhere"
    blind = canary_deadline(TESTING_V2, "chat", "llm", 1, 60, dep, [*others, other_ns], at(61))
    assert blind is not None and "Pending" in blind.message


def test_a_ready_canary_is_the_watchers_to_judge_never_timed_out() -> None:
    ready = [gpu_pod("c", "a0", V2, canary=True)]
    assert canary_deadline(TESTING_V2, "chat", "llm", 1, 60, [canary_dep(V2, 0)], ready, at(10_000)) is None


# -- the record: the watcher's own subset, a fixed point of the watcher -------------------
def test_timeout_is_recorded_as_a_rollback_the_watcher_computes_unchanged() -> None:
    deadline = canary_deadline(TESTING_V2, "chat", "llm", 1, 60, [canary_dep(V2, 0)], [], at(61))
    assert deadline is not None
    model = timed_out(TESTING_V2, deadline, 60)
    assert model.failed == V2 and model.canary == Canary(V2, FAILED, model.canary.message if model.canary else "")
    assert model.canary is not None and model.canary.message.startswith(TIMEOUT_MARK)
    assert pool_version(model) == V1 and canary_wanted(model, 1) is None  # rolled back: pools stay, canary goes
    live = {"conditions": [{"type": "ModelSynced", "status": "False", "reason": "CanaryStarting", "message": "m"}]}
    written = watcher_status(live, model, generation=4, now="T")
    synced = cond.get(written["conditions"], cond.MODEL_SYNCED)
    assert synced is not None and synced["reason"] == "CanaryTimeout" and "Pending" in synced["message"]
    assert [c["type"] for c in written["conditions"]] == ["ModelSynced"]
    assert written["model"]["failedVersion"] == V2 and written["model"]["canary"]["phase"] == FAILED
    d = degraded_reason(model)
    assert d is not None and (d.status, d.reason) == (True, "CanaryTimeout")

    # the watcher reads it back, resolves the same digest, and computes exactly that status: no write
    back = ModelState.from_status(written)
    step = decide(SyncInput("stable", 1, back, Resolution(V2), None, False, None))
    assert step.model == back and not step.events and not step.smoke_urls
    merged, changed = cond.merge(written["conditions"], [step.condition], 4, now="later")
    assert not changed and {"model": step.model.to_status(), "conditions": merged} == written


def test_timed_out_digest_is_not_retried_until_the_tag_or_spec_moves() -> None:
    deadline = canary_deadline(TESTING_V2, "chat", "llm", 1, 60, [canary_dep(V2, 0)], [], at(61))
    assert deadline is not None
    model = timed_out(TESTING_V2, deadline, 60)
    same = decide(SyncInput("stable", 1, model, Resolution(V2), None, False, None))
    assert canary_wanted(same.model, 1) is None and same.condition.reason == "CanaryTimeout"
    moved = decide(SyncInput("stable", 1, model, Resolution(V3), None, False, None))
    assert canary_wanted(moved.model, 1) == V3  # a new digest: a new canary
    respec = decide(SyncInput("v2-name", 1, model, Resolution(V2), None, False, None))
    assert respec.model.failed is None  # a new request forgets the failure


# -- through the reconciler --------------------------------------------------------------
def qwd(status_model: ModelState, timeout: int = 60, gpu_types: tuple[str, ...] = ("A10G", "L40S")) -> dict[str, Any]:
    return {
        "apiVersion": "serving.qwenops.io/v1alpha1",
        "kind": "QwenDeployment",
        "metadata": {"name": "chat", "namespace": "llm", "uid": "u-1", "generation": 2, "resourceVersion": "7"},
        "spec": {
            "model": {"name": "Qwen/Qwen3-14B", "registry": "s3://m/q", "quantization": "fp8", "version": "stable"},
            "placement": {"gpuTypes": list(gpu_types)},
            "replicas": 2,
            "rollout": {"canaryReplicas": 1, "canaryTimeoutSeconds": timeout},
            "routing": {"enabled": False},  # these tests are about GPU pools and canaries
        },
        "status": {"model": status_model.to_status()},
    }


L40S_NODES = [node(f"l{i}", "NVIDIA-L40S", 1) for i in range(2)]
NODES = [*L40S_NODES, node("a0", "NVIDIA-A10G", 4)]


def settled(manifest: dict[str, Any], created: float = 0) -> dict[str, Any]:
    live = copy.deepcopy(manifest)
    n = (manifest.get("spec") or {}).get("replicas", 0)  # ServiceAccount, Role: no spec
    live["metadata"].update(generation=1, creationTimestamp=stamp(created), uid=manifest["metadata"]["name"])
    live["status"] = {"observedGeneration": 1, "replicas": n, "updatedReplicas": n, "readyReplicas": n}
    return live


def stable_world(gpu_types: tuple[str, ...] = ("A10G", "L40S")) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The L40S pool on V1 holding both L40S GPUs (so L40S is full)."""
    out = compute(Observed(qwd=qwd(ModelState(current=V1, target=V1), gpu_types=gpu_types), nodes=NODES), CATALOG)
    live = [settled(m) for m in out.apply]
    assert {m["metadata"]["name"] for m in live if m["kind"] == "Deployment"} == {"chat-l40s"}
    pods = [gpu_pod(f"chat-l40s-{i}", f"l{i}", V1) for i in range(2)]
    return live, pods


def split(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "deployments": [o for o in objs if o["kind"] == "Deployment"],
        "others": [o for o in objs if o["kind"] != "Deployment"],
    }


def test_full_pool_type_places_the_canary_on_the_cheapest_other_type_with_room() -> None:
    live, pods = stable_world()
    out = compute(Observed(qwd=qwd(TESTING_V2), nodes=NODES, pods=pods, **split(live)), CATALOG, at=at(0))
    canaries = [m for m in out.apply if m["kind"] == "Deployment" and is_canary(m)]
    assert [c["metadata"]["name"] for c in canaries] == ["chat-a10g-canary"]
    assert canaries[0]["metadata"]["annotations"][GPU_TYPE_ANNOTATION] == "A10G"
    assert template_version(canaries[0]) == V2
    # the canary's own pod now uses A10G room; L40S frees up: the canary stays where it is
    live_canary = settled(canaries[0])
    freed = pods[:1]
    again = compute(
        Observed(qwd=qwd(TESTING_V2), nodes=NODES, pods=freed, **split([*live, live_canary])), CATALOG, at=at(1)
    )
    assert not [m for m in again.apply if is_canary(m)] and not again.delete


def test_a_pool_type_with_room_keeps_the_canary_and_nowhere_falls_back_to_it() -> None:
    live, pods = stable_world()
    roomy = compute(Observed(qwd=qwd(TESTING_V2), nodes=NODES, pods=pods[:1], **split(live)), CATALOG, at=at(0))
    assert [m["metadata"]["name"] for m in roomy.apply if is_canary(m)] == ["chat-l40s-canary"]
    live1, pods1 = stable_world(("L40S",))
    only = qwd(TESTING_V2, gpu_types=("L40S",))
    full = compute(Observed(qwd=only, nodes=NODES, pods=pods1, **split(live1)), CATALOG, at=at(0))
    assert [m["metadata"]["name"] for m in full.apply if is_canary(m)] == ["chat-l40s-canary"]  # waits for a GPU
    assert full.requeue_after is None  # not created yet: no clock


def test_reconciler_times_out_a_pending_canary_once_and_survives_a_restart() -> None:
    live1, pods1 = stable_world(("L40S",))
    obj = qwd(TESTING_V2, timeout=60, gpu_types=("L40S",))
    canary = settled(canary_dep(V2, created=0), created=0)
    canary["status"] = {"observedGeneration": 1, "replicas": 1, "unavailableReplicas": 1}
    world = Observed(qwd=obj, nodes=NODES, pods=pods1, **split([*live1, canary]))

    early = compute(world, CATALOG, at=at(20))
    assert early.model_status is None and not early.delete and early.requeue_after == 40

    out = compute(world, CATALOG, at=at(61))  # a fresh process computes the same: nothing is in memory
    assert out.model_status is not None
    assert out.model_status["model"]["failedVersion"] == V2
    assert [d["metadata"]["name"] for d in out.delete] == ["chat-l40s-canary"]
    assert not [m for m in out.apply if m["kind"] == "Deployment"]  # pools untouched, still on V1
    warnings = [e for e in out.events if e.type == "Warning"]
    assert [e.reason for e in warnings] == ["CanaryTimeout"] and "Pending" in warnings[0].message
    assert out.status is not None
    degraded = cond.get(out.status["conditions"], cond.DEGRADED)
    assert degraded is not None and degraded["reason"] == "CanaryTimeout" and degraded["status"] == "True"

    # the watch has not delivered the status write yet: the controller overlays it, and neither the
    # timeout nor the canary comes back
    gone = Observed(qwd=obj, nodes=NODES, pods=pods1, **split(live1))
    stale = compute(with_watcher_status(gone, out.model_status), CATALOG, at=at(62))
    assert stale.model_status is None and not [m for m in stale.apply if is_canary(m)] and not stale.events
    # and once delivered, same: the rolled-back digest is not retried
    delivered = copy.deepcopy(obj)
    delivered["status"] = {**obj["status"], **out.model_status}
    later = compute(replace(gone, qwd=delivered), CATALOG, at=at(500))
    assert later.model_status is None and not [m for m in later.apply if is_canary(m)]
    # crash between the status write and the delete: the next process deletes the canary, no second timeout
    leftover = compute(replace(world, qwd=delivered), CATALOG, at=at(500))
    assert leftover.model_status is None and [d["metadata"]["name"] for d in leftover.delete] == ["chat-l40s-canary"]
    assert "CanaryTimeout" not in [e.reason for e in leftover.events]


def test_a_canary_of_another_version_is_recreated_so_its_clock_restarts() -> None:
    live1, pods1 = stable_world(("L40S",))
    old = settled(canary_dep(V2, created=0), created=0)
    testing_v3 = replace(TESTING_V2, target=V3, canary=Canary(V3, TESTING))
    obj = qwd(testing_v3, timeout=60, gpu_types=("L40S",))
    out = compute(Observed(qwd=obj, nodes=NODES, pods=pods1, **split([*live1, old])), CATALOG, at=at(500))
    assert out.model_status is None  # V3's canary has no Deployment yet: no clock, no timeout
    assert [d["metadata"]["name"] for d in out.delete] == ["chat-l40s-canary"]
    assert not [m for m in out.apply if is_canary(m)]
    after = compute(Observed(qwd=obj, nodes=NODES, pods=pods1, **split(live1)), CATALOG, at=at(501))
    created = [m for m in after.apply if is_canary(m)]
    assert len(created) == 1 and template_version(created[0]) == V3


def test_canary_pods_are_outside_every_server_selector_and_inside_the_routers() -> None:
    """No Service, PDB, InferencePool or scale selector over the server pods reaches a canary pod
    by accident: its component label is ``canary``; the router's (set-based) selector spans both."""
    live, pods = stable_world()
    out = compute(Observed(qwd=qwd(TESTING_V2), nodes=NODES, pods=pods, **split(live)), CATALOG, at=at(0))
    (canary,) = [m for m in out.apply if m["kind"] == "Deployment" and is_canary(m)]
    labels = canary["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "canary"
    assert canary["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "canary"
    assert not server_selector("chat").items() <= labels.items()
    (pool,) = [m for m in live if m["kind"] == "Deployment" and not is_canary(m)]
    assert server_selector("chat").items() <= pool["spec"]["template"]["metadata"]["labels"].items()
    services = [m for m in live if m["kind"] in ("Service", "PodDisruptionBudget")]
    assert services and all(
        (m["spec"].get("selector") or {}).get("matchLabels", m["spec"].get("selector")) == server_selector("chat")
        for m in services
    )
    assert serving_selector_string("chat") == (
        "app.kubernetes.io/component in (canary,server),serving.qwenops.io/deployment=chat"
    )


def test_a_canary_an_older_operator_rendered_with_the_server_component_is_recreated() -> None:
    """A Deployment's selector is immutable: a live canary selecting ``component: server`` (what
    operators before the canary component rendered) is deleted and created anew, never applied over."""
    live, pods = stable_world()
    out = compute(Observed(qwd=qwd(TESTING_V2), nodes=NODES, pods=pods, **split(live)), CATALOG, at=at(0))
    (canary,) = [m for m in out.apply if m["kind"] == "Deployment" and is_canary(m)]
    old = settled(canary)
    for labels in (old["spec"]["selector"]["matchLabels"], old["spec"]["template"]["metadata"]["labels"]):
        labels["app.kubernetes.io/component"] = "server"
    again = compute(Observed(qwd=qwd(TESTING_V2), nodes=NODES, pods=pods, **split([*live, old])), CATALOG, at=at(5))
    assert [d["metadata"]["name"] for d in again.delete] == [canary["metadata"]["name"]]
    assert not [m for m in again.apply if is_canary(m)]
    current = compute(
        Observed(qwd=qwd(TESTING_V2), nodes=NODES, pods=pods, **split([*live, settled(canary)])), CATALOG, at=at(5)
    )
    assert not current.delete  # today's canary stays

"""Model-version rollouts, decided purely: the watcher's steps, what the reconciler renders,
and whole rollouts (direct, canary passing, canary failing) played through both."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest

from qwen_operator.catalog import load_catalog
from qwen_operator.controller.reconcile import Observed, compute
from qwen_operator.controller.rollout import (
    FAILED,
    PASSED,
    TESTING,
    Canary,
    ModelState,
    Resolution,
    SyncInput,
    canary_urls,
    canary_wanted,
    decide,
    is_canary,
    pool_version,
    pools_on,
    template_version,
)
from qwen_operator.router.discovery import DIAL_ANNOTATION

CATALOG = load_catalog(None)
V1, V2, V3 = "sha256:" + "1" * 64, "sha256:" + "2" * 64, "sha256:" + "3" * 64


def inp(model: ModelState, digest: str | None = V2, **kw: Any) -> SyncInput:
    base: dict[str, Any] = {
        "spec_version": "stable",
        "canary_replicas": 0,
        "model": model,
        "resolution": Resolution(digest) if digest else Resolution(None, "RegistryUnreachable", "cannot reach."),
        "sync_bytes": 1234,
        "pools_settled_on_target": False,
        "canary_urls": None,
    }
    base.update(kw)
    return SyncInput(**base)


SYNCED_V1 = ModelState(current=V1, target=V1, resolved_from="stable", last_sync_bytes=10)


# -- pool_version / canary_wanted: what each workload renders -----------------------------
@pytest.mark.parametrize(
    ("model", "canary_replicas", "pools", "canary"),
    [
        (ModelState(), 1, None, None),  # not resolved yet: spec.model.version
        (ModelState(target=V1), 1, V1, None),  # first version: no canary, nothing to compare with
        (SYNCED_V1, 1, V1, None),
        (replace(SYNCED_V1, target=V2), 0, V2, None),  # direct roll
        (replace(SYNCED_V1, target=V2, canary=Canary(V2, TESTING)), 1, V1, V2),  # canary on trial
        (replace(SYNCED_V1, target=V2, canary=Canary(V2, PASSED)), 1, V2, None),  # promoted
        (replace(SYNCED_V1, target=V2, canary=Canary(V2, FAILED), failed=V2), 1, V1, None),  # rolled back
        (replace(SYNCED_V1, target=V3, canary=Canary(V2, FAILED), failed=V2), 0, V3, None),  # tag moved on
        (replace(SYNCED_V1, target=V2, canary=Canary(V2, TESTING)), 0, V1, None),  # watcher will promote
    ],
)
def test_versions_each_workload_renders(
    model: ModelState, canary_replicas: int, pools: str | None, canary: str | None
) -> None:
    assert pool_version(model) == pools
    assert canary_wanted(model, canary_replicas) == canary


def test_status_round_trip_drops_unset_fields() -> None:
    m = replace(SYNCED_V1, target=V2, canary=Canary(V2, FAILED, "HTTPError: 500"), failed=V2)
    status = m.to_status()
    assert status["canary"] == {"version": V2, "phase": "Failed", "message": "HTTPError: 500"}
    assert ModelState.from_status({"model": status}) == m
    assert ModelState().to_status() == {}


# -- decide: the watcher's steps ----------------------------------------------------------
def test_first_resolution_targets_the_digest_and_rolls_without_canary() -> None:
    step = decide(inp(ModelState(), V1, canary_replicas=1, sync_bytes=500))
    assert step.model == ModelState(target=V1, resolved_from="stable", last_sync_bytes=500)
    assert (step.condition.status, step.condition.reason) == (False, "RollingOut")
    assert [e[1] for e in step.events] == ["TargetVersionChanged"]
    done = decide(inp(step.model, V1, pools_settled_on_target=True))
    assert done.model.current == V1 and (done.condition.status, done.condition.reason) == (True, "Synced")
    assert [e[1] for e in done.events] == ["ModelSynced"]


def test_synced_and_unchanged_is_a_fixed_point() -> None:
    step = decide(inp(SYNCED_V1, V1, pools_settled_on_target=True))
    assert step.model == SYNCED_V1 and step.events == [] and step.condition.reason == "Synced"


def test_moved_tag_records_target_and_diff_bytes_then_completes_when_pools_settle() -> None:
    step = decide(inp(SYNCED_V1, V2, sync_bytes=4096))
    assert (step.model.target, step.model.current, step.model.last_sync_bytes) == (V2, V1, 4096)
    assert step.condition.reason == "RollingOut" and "4096 byte(s)" in step.events[0][2]
    assert decide(inp(step.model, V2)).events == []  # still rolling: no new events
    done = decide(inp(step.model, V2, pools_settled_on_target=True))
    assert done.model.current == V2 and done.condition.status is True


@pytest.mark.parametrize("reason", ["RegistryUnreachable", "VersionNotFound"])
def test_registry_failures_change_nothing_but_the_condition(reason: str) -> None:
    model = replace(SYNCED_V1, target=V2)
    step = decide(inp(model, None, resolution=Resolution(None, reason, "It failed.")))
    assert step.model == model and step.events == []
    assert (step.condition.status, step.condition.reason) == (False, reason)
    assert "It failed." in step.condition.message and "no workload was changed" in step.condition.message


def test_canary_waits_for_ready_replicas_then_asks_for_a_smoke_test() -> None:
    step = decide(inp(SYNCED_V1, V2, canary_replicas=1))
    assert step.model.canary == Canary(V2, TESTING)
    assert [e[1] for e in step.events] == ["TargetVersionChanged", "CanaryStarted"]
    waiting = decide(inp(step.model, V2, canary_replicas=1))
    assert waiting.condition.reason == "CanaryStarting" and waiting.smoke_urls is None
    ready = decide(inp(step.model, V2, canary_replicas=1, canary_urls=["http://c:80"]))
    assert ready.smoke_urls == ["http://c:80"] and ready.model == step.model


def test_passing_canary_promotes() -> None:
    testing = replace(SYNCED_V1, target=V2, canary=Canary(V2, TESTING))
    step = decide(inp(testing, V2, canary_replicas=1, canary_urls=["http://c"], smoke=(True, "1 answered")))
    assert step.model.canary == Canary(V2, PASSED, "1 answered") and step.model.failed is None
    assert pool_version(step.model) == V2 and canary_wanted(step.model, 1) is None
    assert [e[1] for e in step.events] == ["CanaryPassed"] and step.condition.reason == "RollingOut"


def test_failing_canary_rolls_back_and_is_not_retried_until_spec_or_tag_changes() -> None:
    testing = replace(SYNCED_V1, target=V2, canary=Canary(V2, TESTING))
    step = decide(inp(testing, V2, canary_replicas=1, canary_urls=["http://c"], smoke=(False, "HTTP 500")))
    assert step.model.failed == V2 and step.model.canary == Canary(V2, FAILED, "HTTP 500")
    assert pool_version(step.model) == V1 and canary_wanted(step.model, 1) is None
    assert [(e[0], e[1]) for e in step.events] == [("Warning", "CanaryFailed")]
    assert (step.condition.status, step.condition.reason) == (False, "CanaryFailed")
    assert "HTTP 500" in step.condition.message
    # the next ticks: same digest -> nothing happens
    again = decide(inp(step.model, V2, canary_replicas=1, canary_urls=["http://c"]))
    assert again.model == step.model and again.events == [] and again.smoke_urls is None
    # the tag moves to a fixed version: a new canary
    moved = decide(inp(step.model, V3, canary_replicas=1))
    assert moved.model.canary == Canary(V3, TESTING) and moved.model.failed == V2
    # the tag moves back to the failed digest: not retried
    back = decide(inp(replace(moved.model, target=V3), V2, canary_replicas=1))
    assert back.model.target == V2 and back.condition.reason == "CanaryFailed"
    assert [e[1] for e in back.events] == ["TargetVersionChanged", "CanaryNotRetried"]
    # a spec change (a pinned digest, even the same one) clears the failure and retries
    pinned = decide(inp(step.model, V2, spec_version=V2, canary_replicas=1))
    assert pinned.model.failed is None and pinned.model.resolved_from == V2
    assert pool_version(pinned.model) == V2  # canaries start only when the target changes


def test_canary_replicas_set_to_zero_mid_test_promotes() -> None:
    testing = replace(SYNCED_V1, target=V2, canary=Canary(V2, TESTING))
    step = decide(inp(testing, V2, canary_replicas=0))
    assert step.model.canary is not None and step.model.canary.phase == PASSED
    assert pool_version(step.model) == V2 and step.events[0][1] == "CanarySkipped"


# -- observation helpers ------------------------------------------------------------------
def pod(name: str, version: str, ready: bool = True, canary: bool = True, **meta: Any) -> dict[str, Any]:
    labels = {"serving.qwenops.io/deployment": "chat"}
    if canary:
        labels["serving.qwenops.io/canary"] = "true"
    return {
        "metadata": {
            "name": name,
            "namespace": "llm",
            "labels": labels,
            "annotations": {"serving.qwenops.io/model-version": version, **meta.pop("annotations", {})},
            **meta,
        },
        "spec": {"containers": [{"name": "tgi", "ports": [{"name": "http", "containerPort": 80}]}]},
        "status": {"podIP": "10.0.0.7", "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def test_the_smoke_test_dials_a_canary_as_the_router_does() -> None:
    sandbox = pod("c1", V2, annotations={DIAL_ANNOTATION: "http://127.0.0.1:9/"})
    # a cluster: the pod IP and its port named http; the annotation is ignored
    assert canary_urls("chat", "llm", V2, 1, [sandbox]) == ["http://10.0.0.7:80"]
    # the sandbox ($QWEN_ROUTER_DIAL=annotation): the simulated server the annotation names
    assert canary_urls("chat", "llm", V2, 1, [sandbox], "annotation") == ["http://127.0.0.1:9"]
    no_ip = pod("c1", V2)
    no_ip["status"].pop("podIP")
    assert canary_urls("chat", "llm", V2, 1, [no_ip]) is None
    assert canary_urls("chat", "llm", V2, 1, [no_ip], "annotation") is None


def test_canary_urls_need_every_canary_replica_ready_on_the_target() -> None:
    pods = [pod("c1", V2), pod("c2", V2, ready=False), pod("old", V1), pod("stable", V2, canary=False)]
    assert canary_urls("chat", "llm", V2, 2, pods) is None
    assert canary_urls("chat", "llm", V2, 1, pods) == ["http://10.0.0.7:80"]
    assert canary_urls("chat", "other-ns", V2, 1, pods) is None
    deleting = [pod("c1", V2, deletionTimestamp="2025-01-01T00:00:00Z")]
    assert canary_urls("chat", "llm", V2, 1, deleting) is None


# -- whole rollouts through the reconciler and the watcher ---------------------------------
def node(name: str, product: str, gpus: int) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": product}},
        "spec": {},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}, "conditions": [{"type": "Ready", "status": "True"}]},
    }


NODES = [node("l0", "NVIDIA-L40S", 8), node("a0", "NVIDIA-A10G", 4)]


class World:
    """The API server and Deployment controller, settling instantly: enough to play a rollout."""

    def __init__(self, canary_replicas: int) -> None:
        spec = {
            "model": {"name": "Qwen/Qwen3-14B", "registry": "s3://models/q", "quantization": "fp8"},
            "placement": {"gpuTypes": ["A10G", "L40S"]},
            "replicas": 2,
            "rollout": {"maxSurge": 1, "canaryReplicas": canary_replicas},
            "routing": {"enabled": False},  # these tests are about GPU pools and canaries
        }
        meta = {"name": "chat", "namespace": "llm", "uid": "u", "generation": 1}
        self.qwd: dict[str, Any] = {"metadata": meta, "spec": spec, "status": {}}
        self.live: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: list[str] = []

    def obs(self) -> Observed:
        objs = list(self.live.values())
        return Observed(
            qwd=copy.deepcopy(self.qwd),
            deployments=[o for o in objs if o["kind"] == "Deployment"],
            others=[o for o in objs if o["kind"] != "Deployment"],
            nodes=NODES,
        )

    def reconcile(self) -> None:
        for _ in range(6):
            out = compute(self.obs(), CATALOG, now="T")
            if not out.writes:
                return
            for m in out.apply:
                live = copy.deepcopy(m)
                n = m["spec"].get("replicas", 0)
                live["metadata"]["generation"] = 1
                live["status"] = {"observedGeneration": 1, "replicas": n, "updatedReplicas": n, "readyReplicas": n}
                self.live[(m["kind"], m["metadata"]["name"])] = live
            for d in out.delete:
                self.live.pop(("Deployment", d["metadata"]["name"]))
            if out.status is not None:
                self.qwd["status"] = {**self.qwd["status"], **out.status}
            self.events += [e.reason for e in out.events]
        raise AssertionError("reconcile did not converge")

    def deployments(self) -> dict[str, dict[str, Any]]:
        return {n: d for (k, n), d in self.live.items() if k == "Deployment"}

    def watch(self, digest: str, smoke: tuple[bool, str] | None = None) -> None:
        model = ModelState.from_status(self.qwd["status"])
        deps = list(self.deployments().values())
        canary_pods = [
            pod(d["metadata"]["name"] + "-0", template_version(d) or "")
            for d in deps
            if is_canary(d) and d["status"]["readyReplicas"]
        ]
        n = self.qwd["spec"]["rollout"]["canaryReplicas"]
        urls = canary_urls("chat", "llm", digest, n, canary_pods)
        base = SyncInput("stable", n, model, Resolution(digest), 77, pools_on(deps, digest), urls)
        step = decide(base)
        if step.smoke_urls:
            assert smoke is not None, "a smoke test was due"
            step = decide(replace(base, smoke=smoke))
        self.qwd["status"]["model"] = step.model.to_status()
        self.qwd["status"]["modelSynced"] = step.condition.reason  # test-only shortcut
        self.events += [e[1] for e in step.events]

    def run(self, digest: str, smoke: tuple[bool, str] | None = None, rounds: int = 4) -> None:
        for _ in range(rounds):
            self.watch(digest, smoke)
            self.reconcile()


def pool_versions(w: World) -> dict[str, str | None]:
    return {n: template_version(d) for n, d in w.deployments().items()}


def degraded(w: World) -> dict[str, Any]:
    return next(c for c in w.qwd["status"]["conditions"] if c["type"] == "Degraded")


def test_direct_rollout_moves_every_pool_and_records_current() -> None:
    w = World(canary_replicas=0)
    w.reconcile()
    assert pool_versions(w) == {}  # unresolved: no pool on a guess (create once), only a condition
    w.run(V1)
    assert pool_versions(w) == {"chat-l40s": V1} and w.qwd["status"]["model"]["currentVersion"] == V1
    w.run(V2)
    assert pool_versions(w) == {"chat-l40s": V2}
    assert w.qwd["status"]["model"]["currentVersion"] == V2 and w.qwd["status"]["modelSynced"] == "Synced"
    # created on V1 (create once: never on the tag first), then one roll to V2
    assert w.events.count("PoolCreated") == 1 and w.events.count("PoolUpdated") == 1
    assert w.events.count("ModelSynced") == 2


def test_canary_rollout_passing_promotes_and_removes_the_canary() -> None:
    w = World(canary_replicas=1)
    w.reconcile()
    w.run(V1)
    w.watch(V2)
    w.reconcile()
    deps = w.deployments()
    assert set(deps) == {"chat-l40s", "chat-l40s-canary"}
    canary = deps["chat-l40s-canary"]
    assert template_version(canary) == V2 and template_version(deps["chat-l40s"]) == V1
    assert canary["spec"]["replicas"] == 1
    sel = canary["spec"]["selector"]["matchLabels"]
    assert sel["serving.qwenops.io/pool"] == "l40s-canary" and sel["serving.qwenops.io/canary"] == "true"
    assert deps["chat-l40s"]["spec"]["selector"]["matchLabels"]["serving.qwenops.io/pool"] == "l40s"
    service = w.live[("Service", "chat")]
    # the Service (this World runs without the router) never reaches a canary pod: only its smoke test does
    assert not set(service["spec"]["selector"].items()) <= set(canary["spec"]["template"]["metadata"]["labels"].items())
    status = w.qwd["status"]
    assert [p["gpuType"] for p in status["pools"]] == ["L40S"] and status["readyReplicas"] == 2  # canary apart
    w.run(V2, smoke=(True, "ok"))
    assert pool_versions(w) == {"chat-l40s": V2}
    assert w.qwd["status"]["model"]["currentVersion"] == V2
    assert ["CanaryStarted", "CanaryCreated", "CanaryPassed", "CanaryRemoved"] == [
        e for e in w.events if e.startswith("Canary")
    ]
    assert degraded(w)["status"] == "False"


def test_canary_rollout_failing_rolls_back_and_degrades() -> None:
    w = World(canary_replicas=1)
    w.reconcile()
    w.run(V1)
    w.watch(V2)
    w.reconcile()
    w.run(V2, smoke=(False, "HfHubHTTPError: 500 Server Error"))
    assert pool_versions(w) == {"chat-l40s": V1}  # the canary is gone, pools never moved
    model = w.qwd["status"]["model"]
    assert (model["currentVersion"], model["targetVersion"], model["failedVersion"]) == (V1, V2, V2)
    d = degraded(w)
    assert (d["status"], d["reason"]) == ("True", "CanaryFailed") and "500 Server Error" in d["message"]
    assert "CanaryFailed" in w.events and "CanaryRemoved" in w.events
    # a fixed version: the failure clears from Degraded as soon as the target moves on
    w.watch(V3)
    w.reconcile()
    assert degraded(w)["status"] == "False" and "chat-l40s-canary" in w.deployments()


def test_a_new_resource_without_pools_is_not_synced_yet() -> None:
    assert not pools_on([], V1, desired=2)
    assert pools_on([], V1, desired=0)  # scaled to zero: nothing to move

"""The router routes to a canary pod only once its version passed the operator's smoke test.

Pure parts of ``router/discovery.py`` (which versions passed, which pods are routable) and
the :class:`PodWatcher`'s state machine fed the API server's list/watch callbacks directly,
in the orders a (re)started router sees them: the gate is level-based on
``status.model.canary`` of the QwenDeployment, so every order ends in the same targets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from qwen_operator.router.discovery import (
    DIAL_ANNOTATION,
    KubeCredentials,
    PodWatcher,
    Target,
    canary_routable,
    passed_canary_versions,
    pod_target,
)
from qwen_operator.router.picking import PoolCapacity

V1, V2, V3 = "sha256:" + "1" * 64, "sha256:" + "2" * 64, "sha256:" + "3" * 64


def qwd(phase: str | None, version: str = V2) -> dict[str, Any]:
    model: dict[str, Any] = {"currentVersion": V1, "targetVersion": version}
    if phase is not None:
        model["canary"] = {"version": version, "phase": phase}
    return {"metadata": {"name": "chat"}, "status": {"model": model}}


def pod(name: str, version: str, canary: bool, ready: bool = True) -> dict[str, Any]:
    labels = {"serving.qwenops.io/pool": "a10g-canary" if canary else "a10g"}
    labels["serving.qwenops.io/model-version"] = version[:20]
    if canary:
        labels["serving.qwenops.io/canary"] = "true"
    return {
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {DIAL_ANNOTATION: f"http://127.0.0.1:1/{name}", "serving.qwenops.io/model-version": version},
        },
        "spec": {"containers": [{"name": "tgi", "ports": [{"name": "http", "containerPort": 80}]}]},
        "status": {"podIP": "10.0.0.9", "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


@pytest.mark.parametrize(
    ("obj", "passed"),
    [
        (None, frozenset()),  # the router has not listed the QwenDeployment (yet)
        ({"metadata": {"name": "chat"}}, frozenset()),  # no status yet
        (qwd(None), frozenset()),  # no canary (canaryReplicas 0)
        (qwd("Testing"), frozenset()),
        (qwd("Failed"), frozenset()),
        (qwd("Passed"), frozenset({V2})),
        ({"status": {"model": {"canary": {"phase": "Passed"}}}}, frozenset()),  # no version: nothing
    ],
)
def test_passed_canary_versions(obj: Mapping[str, Any] | None, passed: frozenset[str]) -> None:
    assert passed_canary_versions(obj) == passed


def test_only_a_canary_of_a_passed_version_is_routable() -> None:
    stable, canary = pod("chat-a10g-0", V1, canary=False), pod("chat-a10g-canary-0", V2, canary=True)
    assert canary_routable(stable, ()) and canary_routable(stable, {V3})  # the gate is for canaries only
    assert not canary_routable(canary, ())
    assert not canary_routable(canary, {V3})  # another version passed: not this pod's
    assert canary_routable(canary, {V2})
    no_version = pod("c", V2, canary=True)
    del no_version["metadata"]["annotations"]["serving.qwenops.io/model-version"]
    assert not canary_routable(no_version, {V2})
    # the target a passed canary becomes: still flagged canary (the picker's canary rule applies)
    t = pod_target(canary, "annotation", {}, {V2})
    assert t == Target("chat-a10g-canary-0", "http://127.0.0.1:1/chat-a10g-canary-0", "a10g-canary", V2[:20], True)
    assert pod_target(canary, "annotation", {}) is None  # default: no version passed
    assert pod_target(pod("c", V2, canary=True, ready=False), "annotation", {}, {V2}) is None  # and Ready


class Sink:
    def __init__(self) -> None:
        self.targets: dict[str, Target] = {}

    def update_targets(self, targets: Mapping[str, Target]) -> None:
        self.targets = dict(targets)

    def update_pools(self, pools: Mapping[str, PoolCapacity], ttft_slo_seconds: float | None) -> None:
        pass


def watcher() -> tuple[PodWatcher, Sink]:
    w = PodWatcher(KubeCredentials("https://127.0.0.1:1", False), "llm", "chat", dial="annotation")
    sink = Sink()
    w._sink = sink  # run() sets it before the first list; the callbacks are what the watches drive
    return w, sink


PODS = [pod("chat-a10g-0", V1, canary=False), pod("chat-a10g-canary-0", V2, canary=True)]


def test_a_restarted_router_sees_pods_before_the_qwendeployment_and_routes_no_canary() -> None:
    w, sink = watcher()
    w._pods_listed([dict(p) for p in PODS])  # pods listed first, the QwenDeployment not yet
    assert set(sink.targets) == {"chat-a10g-0"}
    w._qwd_listed([qwd("Testing")])
    assert set(sink.targets) == {"chat-a10g-0"}
    w._qwd_event("MODIFIED", qwd("Passed"))  # the watcher recorded the passing smoke test
    assert set(sink.targets) == {"chat-a10g-0", "chat-a10g-canary-0"} and sink.targets["chat-a10g-canary-0"].canary


def test_the_gate_follows_status_and_pods_in_any_order() -> None:
    w, sink = watcher()
    w._qwd_listed([qwd("Passed")])
    w._pods_listed([PODS[0]])
    assert set(sink.targets) == {"chat-a10g-0"}
    w._pod_event("ADDED", pod("chat-a10g-canary-1", V2, canary=True, ready=False))
    assert set(sink.targets) == {"chat-a10g-0"}
    w._pod_event("MODIFIED", pod("chat-a10g-canary-1", V2, canary=True))  # a later canary pod, Ready
    assert set(sink.targets) == {"chat-a10g-0", "chat-a10g-canary-1"}
    # the tag moved on: a new canary (V3) under test; the V2 canary pod is no longer routed,
    # nor is the new one until it passes
    w._pod_event("ADDED", pod("chat-a10g-canary-2", V3, canary=True))
    w._qwd_event("MODIFIED", qwd("Testing", V3))
    assert set(sink.targets) == {"chat-a10g-0"}
    w._qwd_event("MODIFIED", qwd("Failed", V3))
    assert set(sink.targets) == {"chat-a10g-0"}
    w._qwd_event("DELETED", qwd("Failed", V3))
    assert set(sink.targets) == {"chat-a10g-0"}

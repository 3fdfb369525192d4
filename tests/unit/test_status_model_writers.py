"""``status.model`` has two writers (the reconciler's canary timeout, the version watcher's smoke
result): both write over the ``resourceVersion`` they decided from, so racing never lets one
overwrite the other (controller/kube.py, the ownership table)."""

from __future__ import annotations

import asyncio
import copy
from dataclasses import replace
from typing import Any
from unittest import mock

import pytest
from kubernetes import client

from qwen_operator.controller.kube import Kube, StatusConflictError
from qwen_operator.controller.reconcile import Observed
from qwen_operator.controller.rollout import (
    FAILED,
    LABEL_CANARY,
    TESTING,
    Canary,
    ModelState,
    watcher_status,
)
from qwen_operator.controller.versions import MANAGER, VersionWatcher
from qwen_operator.render.names import ANNOTATION_MODEL_VERSION, LABEL_DEPLOYMENT, label_value
from qwen_operator.router.discovery import DIAL_ANNOTATION

V1, V2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
KEY = ("llm", "chat")


class VersionedApi:
    """Status apply with the API server's ``resourceVersion`` precondition (409 on a stale one)."""

    def __init__(self, qwd: dict[str, Any]) -> None:
        self.qwd = qwd
        self.rejected: list[dict[str, Any]] = []
        self.events: list[tuple[str, str]] = []

    @property
    def rv(self) -> str:
        return str(self.qwd["metadata"]["resourceVersion"])

    def apply_status(
        self, ns: str, name: str, status: dict[str, Any], manager: str, resource_version: str | None = None
    ) -> None:
        assert manager == MANAGER
        if resource_version is not None and resource_version != self.rv:
            self.rejected.append(copy.deepcopy(status))
            raise StatusConflictError(f"{ns}/{name} changed since resourceVersion {resource_version}")
        self.qwd["status"] = {**self.qwd.get("status", {}), **copy.deepcopy(status)}
        self.qwd["metadata"]["resourceVersion"] = str(int(self.rv) + 1)

    def event(self, qwd: Any, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason))


class StableIsV2:
    url = "s3://b/p"

    def resolve(self, version: str | None = None, tag: str | None = None) -> str:
        return V2


def canary_testing() -> dict[str, Any]:
    spec = {
        "model": {"name": "Qwen/Qwen3-14B", "registry": "s3://b/p", "version": "stable"},
        "replicas": 1,
        "rollout": {"canaryReplicas": 1},
    }
    model = ModelState(current=V1, target=V2, resolved_from="stable", canary=Canary(V2, TESTING))
    return {
        "metadata": {"name": "chat", "namespace": "llm", "generation": 1, "resourceVersion": "10"},
        "spec": spec,
        "status": {"model": model.to_status(), "conditions": []},
    }


def canary_pod() -> dict[str, Any]:
    return {
        "metadata": {
            "name": "chat-canary-abc",
            "namespace": "llm",
            "labels": {LABEL_DEPLOYMENT: label_value("chat"), LABEL_CANARY: "true"},
            "annotations": {ANNOTATION_MODEL_VERSION: V2, DIAL_ANNOTATION: "http://canary.test"},
        },
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


def reconciler_times_out(api: VersionedApi) -> None:
    """What ``handlers.Controller.reconcile`` writes for an expired canary deadline, at the live version."""
    status = api.qwd["status"]
    m = ModelState.from_status(status)
    rolled_back = replace(m, canary=Canary(V2, FAILED, "canary-timeout=900: not Ready"), failed=V2)
    api.apply_status("llm", "chat", watcher_status(status, rolled_back, 1), MANAGER, resource_version=api.rv)


def test_a_smoke_result_never_overwrites_a_canary_timeout_recorded_during_the_smoke_test() -> None:
    api = VersionedApi(canary_testing())
    cache = {"qwd": copy.deepcopy(api.qwd)}  # the informer, as the watcher read it before the smoke test

    def smoke(urls: list[str], *args: Any, **kwargs: Any) -> tuple[bool, str]:
        assert urls == ["http://canary.test"]
        reconciler_times_out(api)  # the deadline passes while the canary is being tested
        return True, "1 canary replica(s) answered"

    watcher = VersionWatcher(
        api,
        lambda key: Observed(qwd=cache["qwd"], pods=[canary_pod()]),
        interval=0.0,
        smoke=smoke,
        registry_factory=lambda url: StableIsV2(),  # type: ignore[arg-type, return-value]
        dial="annotation",
    )
    asyncio.run(watcher.tick(KEY))

    model = api.qwd["status"]["model"]
    assert model["canary"]["phase"] == FAILED and model["failedVersion"] == V2, "the timeout must stand"
    assert len(api.rejected) == 1 and api.rejected[0]["model"]["canary"]["phase"] != FAILED
    assert ("Normal", "CanaryPassed") not in api.events  # no Event for a write that did not happen

    cache["qwd"] = copy.deepcopy(api.qwd)  # the watch delivers the timeout: the watcher decides again
    asyncio.run(watcher.tick(KEY))
    model = api.qwd["status"]["model"]
    assert model["canary"]["phase"] == FAILED and model["currentVersion"] == V1  # rolled back, not promoted
    assert ("Normal", "CanaryPassed") not in api.events


def test_a_canary_timeout_decided_over_a_stale_version_is_refused_not_forced() -> None:
    """The reconciler's side: the watcher wrote a smoke pass after the reconciler read the resource."""
    api = VersionedApi(canary_testing())
    stale = api.rv
    passed = ModelState(current=V1, target=V2, resolved_from="stable", canary=Canary(V2, "Passed", "ok"))
    api.apply_status("llm", "chat", {"model": passed.to_status()}, MANAGER, resource_version=stale)
    with pytest.raises(StatusConflictError):
        reconciler_times_out_at(api, stale)
    assert api.qwd["status"]["model"]["canary"]["phase"] == "Passed"


def reconciler_times_out_at(api: VersionedApi, rv: str) -> None:
    m = ModelState(current=V1, target=V2, canary=Canary(V2, FAILED, "timeout"), failed=V2)
    api.apply_status("llm", "chat", {"model": m.to_status()}, MANAGER, resource_version=rv)


def test_kube_apply_status_sends_the_precondition_and_raises_status_conflict_on_409() -> None:
    kube = Kube(client.ApiClient())
    kube.custom = mock.Mock()
    kube.apply_status("llm", "chat", {"model": {}}, MANAGER, resource_version="42")
    body = kube.custom.patch_namespaced_custom_object_status.call_args.args[5]
    assert body["metadata"]["resourceVersion"] == "42"

    kube.custom.patch_namespaced_custom_object_status.side_effect = client.ApiException(status=409)
    with pytest.raises(StatusConflictError, match="resourceVersion 42"):
        kube.apply_status("llm", "chat", {"model": {}}, MANAGER, resource_version="42")
    with pytest.raises(client.ApiException):  # without a precondition a 409 is not a version race
        kube.apply_status("llm", "chat", {"model": {}}, MANAGER)

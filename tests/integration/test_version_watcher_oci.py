"""The operator's version watcher on an ``oci://`` registry (the real CNCF distribution on loopback):
it resolves the tag to the version's digest and follows a tag move with the bytes the new version
adds. The API server is a dict here; the watcher's write discipline and an unreachable registry are
covered in tests/unit/test_controller_versions_io.py. The registry is real."""

from __future__ import annotations

import asyncio
import copy
import os
from pathlib import Path
from typing import Any

import pytest

from qwen_operator.controller.reconcile import Observed
from qwen_operator.controller.versions import MANAGER, VersionWatcher, make_registry
from qwen_operator.modelsync.manifest import diff
from qwen_operator.modelsync.oci import OCIRegistry
from qwen_operator.modelsync.push import push
from qwen_operator.modelsync.synthetic import Checkpoint, Shape
from qwen_operator.testing.oci import OCIRepo

SHAPE = Shape().scaled(0.02, layers=2, vocab=2048)


class ApiServer:
    def __init__(self, qwd: dict[str, Any]) -> None:
        self.qwd = qwd
        self.writes: list[dict[str, Any]] = []
        self.events: list[tuple[str, str]] = []

    def apply_status(self, ns: str, name: str, status: dict[str, Any], manager: str) -> None:
        assert manager == MANAGER
        self.writes.append(copy.deepcopy(status))
        self.qwd["status"] = {**self.qwd.get("status", {}), **copy.deepcopy(status)}

    def event(self, qwd: Any, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason))


def test_the_watcher_tracks_an_oci_tag(oci_repo: OCIRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k in [k for k in os.environ if k.startswith("OCI_")]:
        monkeypatch.delenv(k)
    assert isinstance(make_registry(oci_repo.url), OCIRegistry)
    base = Checkpoint(SHAPE)
    base.write(tmp_path / "v1")
    base.lora_qv().write(tmp_path / "v2")
    v1 = push(OCIRegistry(oci_repo.url), tmp_path / "v1", "v1", tag="stable")
    spec = {"model": {"name": "Qwen/Qwen3-14B", "registry": oci_repo.url, "version": "stable"}, "replicas": 0}
    api = ApiServer({"metadata": {"name": "chat", "namespace": "llm", "generation": 1}, "spec": spec})
    watcher = VersionWatcher(api, lambda key: Observed(qwd=copy.deepcopy(api.qwd)), interval=0.0)

    def tick() -> None:
        asyncio.run(watcher.tick(("llm", "chat")))

    tick()
    model = api.writes[-1]["model"]
    assert (model["currentVersion"], model["targetVersion"], model["resolvedFrom"]) == (v1.digest, v1.digest, "stable")
    assert api.writes[-1]["conditions"][0]["reason"] == "Synced"
    v2 = push(OCIRegistry(oci_repo.url), tmp_path / "v2", "v2", tag="stable")  # the tag moves
    tick()
    model = api.writes[-1]["model"]
    assert model["targetVersion"] == v2.digest
    added = diff(v1.manifest, v2.manifest)
    assert model["lastSyncBytes"] == added.bytes_to_move
    assert ("Normal", "TargetVersionChanged") in api.events
    writes = len(api.writes)
    tick()
    assert len(api.writes) == writes  # at rest: no write

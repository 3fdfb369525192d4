"""Each outside dependency has its own bounded pool: a full one never delays another's calls;
version resolutions are shared per (registry, ref) for the interval; a tag miss reads no tags."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from qwen_operator.controller import executors
from qwen_operator.controller.executors import KUBE, REGISTRY, run
from qwen_operator.controller.versions import VersionWatcher, resolve
from qwen_operator.modelsync.registry import NotFoundError, Registry

DIGEST = "sha256:" + "ab" * 32


def test_a_saturated_registry_pool_does_not_delay_kubernetes_calls() -> None:
    release = threading.Event()

    async def scenario() -> tuple[str, list[bool]]:
        hung = [run(REGISTRY, release.wait, 30) for _ in range(executors.REGISTRY_THREADS + 2)]
        tasks = [asyncio.ensure_future(h) for h in hung]
        await asyncio.sleep(0.05)
        assert not any(t.done() for t in tasks)  # every registry thread is taken
        name = await run(KUBE, lambda: threading.current_thread().name)
        release.set()
        return name, await asyncio.gather(*tasks)

    name, results = asyncio.run(scenario())
    assert name.startswith("qwen-kube")
    assert results == [True] * (executors.REGISTRY_THREADS + 2)


class CountingRegistry:
    """Only what ``resolve`` touches: tags miss, versions hit."""

    url = "s3://models/x"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def resolve(self, version: str | None = None, tag: str | None = None) -> str:
        self.calls.append(f"tag:{tag}" if tag is not None else f"version:{version}")
        if tag is not None:
            raise NotFoundError(f"tag {tag!r} not found")
        return DIGEST


def test_resolutions_are_shared_per_registry_and_version_for_the_interval() -> None:
    reg = CountingRegistry()
    watcher = VersionWatcher(
        kube=None,
        observed=lambda key: None,
        interval=60.0,
        registry_factory=lambda url: reg,  # type: ignore[arg-type, return-value]
    )
    first = watcher._resolve_cached("s3://models/x", "v1")
    second = watcher._resolve_cached("s3://models/x", "v1")
    assert first.digest == second.digest == DIGEST
    assert reg.calls == ["tag:v1", "version:v1"]  # resolved once, not once per resource
    watcher._resolve_cached("s3://models/x", "v2")
    assert reg.calls[-2:] == ["tag:v2", "version:v2"]


class MissClient:
    """An S3 client where tag ``stable`` is missing and three tags exist."""

    def __init__(self) -> None:
        self.gets: list[str] = []
        self.lists: list[dict[str, Any]] = []

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803 - boto3's names
        from botocore.exceptions import ClientError

        self.gets.append(Key)
        raise ClientError({"Error": {"Code": "NoSuchKey", "Message": "missing"}}, "GetObject")

    def list_objects_v2(self, **kw: Any) -> dict[str, Any]:
        self.lists.append(kw)
        prefix = kw["Prefix"]
        return {"Contents": [{"Key": prefix + n} for n in ("canary", "beta", "alpha")]}


def test_a_tag_miss_lists_names_once_and_reads_no_other_tag() -> None:
    s3 = MissClient()
    reg = Registry("s3://models/x", client=s3)
    try:
        resolve(reg, "stable")
    except NotFoundError as exc:
        message = str(exc)
    else:
        raise AssertionError("a missing tag and version must raise")
    assert "alpha, beta, canary" in message and "spec.model.version 'stable'" in message
    assert len(s3.gets) == 2  # tags/stable, then versions/stable: nothing per listed name
    assert all(kw["MaxKeys"] == 10 for kw in s3.lists) and len(s3.lists) == 2

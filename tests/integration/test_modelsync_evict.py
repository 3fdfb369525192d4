"""Node cache eviction against the real S3 server: four versions of a synthetic checkpoint that
share most chunks are pulled onto one node, evicted with an old version protected, and an evicted
version is pulled again moving only the chunks no kept version holds."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from qwen_operator.modelsync.evict import CachePolicy, evict, held_versions, store_bytes
from qwen_operator.modelsync.manifest import Manifest, short_id
from qwen_operator.modelsync.pull import pull
from qwen_operator.modelsync.push import push
from qwen_operator.modelsync.registry import Registry
from qwen_operator.modelsync.store import Store
from qwen_operator.modelsync.synthetic import Checkpoint, Shape
from qwen_operator.testing.s3 import S3Bucket

pytestmark = pytest.mark.s3

SHAPE = Shape().scaled(0.05, layers=4, vocab=4096)  # ~11 MB, 4 shards


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def verifies(vdir: Path, manifest: Manifest) -> bool:
    """Every file of the version tree is there with its manifest's sha256, and nothing else."""
    on_disk = sorted(p.relative_to(vdir).as_posix() for p in vdir.rglob("*") if p.is_file())
    return on_disk == sorted(f.path for f in manifest.files) and all(
        file_sha256(vdir / f.path) == f.sha256 for f in manifest.files
    )


def test_eviction_keeps_protected_and_current_and_re_pull_moves_only_missing_chunks(
    s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    reg = Registry(s3_bucket.registry_url())
    ckpt = Checkpoint(SHAPE)
    digests: dict[str, str] = {}
    for n in range(1, 5):  # each version changes the last layer again: consecutive ones share most chunks
        src = tmp_path / f"src-v{n}"
        ckpt.write(src)
        digests[f"v{n}"] = push(reg, src, f"v{n}").digest
        ckpt = ckpt.last_layers(1)
    manifests = {v: reg.get_manifest(d) for v, d in digests.items()}
    ids = {v: short_id(d) for v, d in digests.items()}
    cache = tmp_path / "cache"
    with open(os.devnull, "w") as quiet:
        for v in ("v1", "v2", "v3", "v4"):
            pull(Registry(s3_bucket.registry_url()), cache, "ns.chat", version=digests[v], keep=99, out=quiet)
    mdir = cache / "models" / "ns.chat"
    assert held_versions(cache) == {"ns.chat": [ids["v4"], ids["v3"], ids["v2"], ids["v1"]]}

    # the node agent: pods here still serve v1 (by its digest); nothing else is needed beyond current
    report = evict(cache, {"ns.chat": [digests["v1"]]}, CachePolicy(keep_others=0))
    assert not report.busy and not report.over_budget
    assert set(report.removed) == {("ns.chat", ids["v2"]), ("ns.chat", ids["v3"])}
    assert held_versions(cache) == {"ns.chat": [ids["v4"], ids["v1"]]}
    assert (mdir / "current").resolve() == mdir / "versions" / ids["v4"]
    for v in ("v1", "v4"):
        assert verifies(mdir / "versions" / ids[v], manifests[v]), v
    for v in ("v2", "v3"):
        assert not (mdir / "versions" / ids[v]).exists() and not (mdir / "manifests" / f"{ids[v]}.json").exists()
    assert report.bytes_after < report.bytes_before and report.bytes_after == store_bytes(cache)
    # no file on disk is stored twice: what is left is the distinct files of v1 and v4
    distinct = {f.sha256: f.size for v in ("v1", "v4") for f in manifests[v].files}
    assert report.bytes_after == sum(distinct.values())

    # re-pulling the evicted v3 moves only the chunks neither v1 nor v4 holds
    held_chunks, _ = Store(cache).local_index()
    missing = {d: size for d, size in manifests["v3"].unique_chunks().items() if d not in held_chunks}
    assert missing and sum(missing.values()) < manifests["v3"].total_bytes / 4
    gets_before = len(s3_bucket.requests("GET"))
    with open(os.devnull, "w") as quiet:
        again = pull(Registry(s3_bucket.registry_url()), cache, "ns.chat", version=digests["v3"], keep=99, out=quiet)
    blob_gets = [r for r in s3_bucket.requests("GET")[gets_before:] if "/blobs/" in r[1]]
    assert again.bytes_fetched == sum(missing.values())
    assert len(blob_gets) == len(missing)
    assert verifies(mdir / "versions" / ids["v3"], manifests["v3"])
    for v in ("v1", "v4"):  # the pull's own trim (keep=99) touched neither
        assert verifies(mdir / "versions" / ids[v], manifests[v]), v

"""The node cache's building blocks and the pull planner, against an in-memory registry."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from qwen_operator.modelsync.manifest import ChunkRef, FileEntry, Manifest
from qwen_operator.modelsync.pull import PullError, pull
from qwen_operator.modelsync.registry import READ_BLOCK, DigestMismatchError, Registry
from qwen_operator.modelsync.store import (
    PARTIAL_MAX_AGE_S,
    Store,
    copy_range,
    covered,
    hash_range,
    read_journal,
)


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class MemoryRegistry(Registry):
    """Serves one manifest and its chunks from memory; counts bytes served per chunk."""

    def __init__(self, manifest: Manifest, chunks: dict[str, bytes], fail_after: int | None = None) -> None:
        super().__init__("s3://memory/models", client=cast(Any, object()))
        self.manifest, self.chunks = manifest, chunks
        self.gets: Counter[str] = Counter()
        self.fail_after = fail_after
        self.served = 0

    def resolve(self, version: str | None = None, tag: str | None = None) -> str:
        return self.manifest.digest()

    def get_manifest(self, digest: str) -> Manifest:
        return self.manifest

    def get_blob(self, digest: str, start: int = 0, block_size: int = READ_BLOCK) -> Iterator[memoryview]:
        self.gets[digest] += 1
        data = memoryview(self.chunks[digest])
        for pos in range(start, len(data), 1000):
            block = data[pos : pos + 1000]
            if self.fail_after is not None and self.served + len(block) > self.fail_after:
                raise ConnectionResetError("injected: connection reset")
            self.served += len(block)
            yield block


def make_version(files: dict[str, list[bytes]]) -> tuple[Manifest, dict[str, bytes]]:
    chunks: dict[str, bytes] = {}
    entries = []
    for path, parts in files.items():
        for p in parts:
            chunks[digest(p)] = p
        whole = b"".join(parts)
        entries.append(FileEntry(path, len(whole), digest(whole), tuple(ChunkRef(digest(p), len(p)) for p in parts)))
    return Manifest("v1", "2026-01-01T00:00:00Z", tuple(entries)), chunks


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- journal and byte ranges ---------------------------------------------------------------


def test_journal_ranges_merge_and_ignore_torn_lines(tmp_path: Path) -> None:
    j = tmp_path / "x.journal"
    j.write_text("0 10\n20 5\n10 4\n30 0\ngarbage\n25 5\n40 1")  # last line torn (no newline) still parses
    assert read_journal(j) == [(0, 14), (20, 30), (40, 41)]
    assert read_journal(tmp_path / "missing.journal") == []
    ranges = read_journal(j)
    assert covered(ranges, 0, 10) == 10 and covered(ranges, 5, 20) == 9 and covered(ranges, 14, 3) == 0
    assert covered(ranges, 22, 100) == 8


def test_copy_range_and_hash_range(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    data = os.urandom(3 * 1024 * 1024 + 17)
    src.write_bytes(data)
    dst.write_bytes(b"\0" * 100)
    with src.open("rb") as s, dst.open("r+b") as d:
        copy_range(s.fileno(), 5, d.fileno(), 50, len(data) - 5)
        assert hash_range(d.fileno(), 50, len(data) - 5) == digest(data[5:])
        with pytest.raises(DigestMismatchError):
            copy_range(s.fileno(), len(data) - 3, d.fileno(), 0, 10)  # source too short
    assert dst.read_bytes()[50:] == data[5:]


def test_partial_lock_waits_for_the_other_builder_and_follows_a_commit(tmp_path: Path) -> None:
    store = Store(tmp_path / "cache")
    d = digest(b"hello")
    order: list[str] = []
    holding = threading.Event()

    def first() -> None:
        with store.partial(d) as part:
            holding.set()
            part.reset(5)
            os.pwrite(part.fd, b"hello", 0)
            part.record(0, 5)
            time.sleep(0.2)
            order.append("first commits")
            part.commit(store.blob_path(d))

    t = threading.Thread(target=first)
    t.start()
    holding.wait()
    with store.partial(d) as part:  # waits, then finds the path gone and opens a fresh partial
        order.append("second holds")
        assert os.fstat(part.fd).st_size == 0 and part.written(5) == []
        part.discard()
    t.join()
    assert order == ["first commits", "second holds"]
    assert store.blob_path(d).read_bytes() == b"hello" and not list(store.tmp.iterdir())


def test_gc_drops_stale_partials_but_not_ones_being_built(tmp_path: Path) -> None:
    store = Store(tmp_path / "cache")
    old = time.time() - PARTIAL_MAX_AGE_S - 60
    busy, stale = digest(b"busy"), digest(b"stale")
    (store.tmp / "orphan.journal").write_text("0 1\n")
    with store.partial(busy) as part:
        part.reset(10)
        part.record(0, 4)
        with store.partial(stale) as other:
            other.reset(10)
            other.record(0, 4)
        for p in store.tmp.iterdir():
            os.utime(p, (old, old))
        store.collect_blobs()
        left = sorted(p.name for p in store.tmp.iterdir())
    assert left == sorted([busy[7:] + ".partial", busy[7:] + ".journal"])


# --- pulls against the in-memory registry ----------------------------------------------------


def test_duplicate_chunks_are_fetched_once_and_copied_locally(tmp_path: Path) -> None:
    a, b, c, d = (os.urandom(n) for n in (70_000, 5_000, 130_000, 1))
    manifest, chunks = make_version(
        {
            "w-1.safetensors": [a, b, a, c],  # a twice in one file
            "w-2.safetensors": [c, d, b],  # c and b also in another file
            "same-as-d.txt": [d],  # a single-chunk file equal to a chunk of w-2
            "copy/w-1.safetensors": [a, b, a, c],  # an identical file
            "empty": [],
        }
    )
    reg = MemoryRegistry(manifest, chunks)
    result = pull(reg, tmp_path / "cache", "m", out=io.StringIO())
    assert set(reg.gets.values()) == {1} and set(reg.gets) == set(chunks)
    assert result.bytes_fetched == sum(len(x) for x in chunks.values())
    got = tree(tmp_path / "cache/models/m/current")
    assert got == {
        "copy/w-1.safetensors": a + b + a + c,
        "empty": b"",
        "same-as-d.txt": d,
        "w-1.safetensors": a + b + a + c,
        "w-2.safetensors": c + d + b,
    }
    blobs = tmp_path / "cache/blobs/sha256"
    assert all(p.stat().st_nlink > 1 for p in blobs.iterdir())  # nothing stored twice
    assert not list((tmp_path / "cache/tmp").iterdir())


def test_killed_pull_resumes_from_the_journal_mid_chunk(tmp_path: Path) -> None:
    parts = [os.urandom(n) for n in (9_500, 12_000, 3_000)]
    manifest, chunks = make_version({"w.safetensors": parts, "config.json": [b"{}"]})
    total = sum(len(x) for x in chunks.values())
    broken = MemoryRegistry(manifest, chunks, fail_after=15_000)
    with pytest.raises(PullError, match="connection reset"):
        pull(broken, tmp_path / "cache", "m", workers=1, out=io.StringIO())
    cache = tmp_path / "cache"
    kept = sum(f.size for f in manifest.files if (cache / "blobs/sha256" / f.sha256[7:]).exists())
    for f in manifest.files:
        kept += sum(b - a for a, b in read_journal(cache / "tmp" / f"{f.sha256[7:]}.journal"))
    assert kept == broken.served  # every byte received is on disk and journalled, mid-chunk too
    resumed = MemoryRegistry(manifest, chunks)
    result = pull(resumed, tmp_path / "cache", "m", out=io.StringIO())
    assert broken.served + result.bytes_fetched == total
    assert tree(tmp_path / "cache/models/m/current") == {"config.json": b"{}", "w.safetensors": b"".join(parts)}


def test_corrupt_registry_chunk_is_named_and_current_kept(tmp_path: Path) -> None:
    parts = [os.urandom(4000), os.urandom(4000)]
    manifest, chunks = make_version({"w.safetensors": parts})
    reg = MemoryRegistry(manifest, dict(chunks, **{digest(parts[1]): b"\xff" * 4000}))
    with pytest.raises(PullError, match=f"chunk {digest(parts[1])} from s3://memory/models is corrupt"):
        pull(reg, tmp_path / "cache", "m", out=io.StringIO())
    assert reg.gets[digest(parts[1])] == 2  # fetched again, verified, before blaming the registry
    assert not (tmp_path / "cache/models/m/current").exists()


def test_inconsistent_manifest_is_reported(tmp_path: Path) -> None:
    parts = [os.urandom(100), os.urandom(100)]
    manifest, chunks = make_version({"w.safetensors": parts})
    f = manifest.files[0]
    bad = Manifest("v1", manifest.created, (FileEntry(f.path, f.size, digest(b"other"), f.chunks),))
    with pytest.raises(PullError, match="every chunk matches its digest but the file is"):
        pull(MemoryRegistry(bad, chunks), tmp_path / "cache", "m", out=io.StringIO())

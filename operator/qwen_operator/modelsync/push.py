"""Publish a model directory as a registry version, uploading only chunks it lacks.

Chunk the directory (pure), ask the registry which chunks it lacks (S3: one listing of
its blobs; OCI: a HEAD per chunk), upload the missing ones in parallel, then write the
manifest, the immutable version pointer and optionally a tag. Blobs go up before the
manifest, and the manifest before the pointers, so a reader never sees a version whose
chunks are not all there.
"""

from __future__ import annotations

import datetime as dt
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from qwen_operator.modelsync.backend import ModelRegistry, NotFoundError, RegistryError, check_name
from qwen_operator.modelsync.chunking import Chunk, FileChunks, chunk_file, model_files
from qwen_operator.modelsync.manifest import FileEntry, Manifest


@dataclass(frozen=True)
class PushResult:
    digest: str
    manifest: Manifest
    total_bytes: int
    chunks_total: int
    chunks_uploaded: int
    bytes_uploaded: int


class Progress:
    """Throttled one-line progress on a stream (a line per ~5% or at the end)."""

    def __init__(self, label: str, total: int, out: TextIO | None = None) -> None:
        self.label, self.total, self.done = label, total, 0
        self.out = out if out is not None else sys.stderr
        self._lock = threading.Lock()
        self._last = -1

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            pct = 100 * self.done // self.total if self.total else 100
            if pct // 5 != self._last // 5 or self.done >= self.total:
                self._last = pct
                print(f"{self.label}: {_fmt(self.done)} / {_fmt(self.total)} ({pct}%)", file=self.out, flush=True)


def _fmt(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


fmt_bytes = _fmt


def chunk_dir(root: Path, log: Callable[[str], None] = lambda _: None) -> list[FileChunks]:
    files = model_files(root)
    if not files:
        raise RegistryError(f"{root} holds no files to push")
    out = []
    for rel, path in files:
        log(f"chunking {rel}")
        out.append(chunk_file(path, rel))
    return out


def push(
    registry: ModelRegistry,
    root: Path,
    version: str,
    tag: str | None = None,
    workers: int = 8,
    out: TextIO | None = None,
) -> PushResult:
    check_name("version", version)
    if tag is not None:
        check_name("tag", tag)
    err = out if out is not None else sys.stderr
    files = chunk_dir(root, log=lambda m: print(m, file=err, flush=True))
    entries = tuple(FileEntry.from_chunks(fc) for fc in files)
    try:
        existing = registry.resolve(version=version)
    except NotFoundError:
        existing = None
    if existing is not None:
        old = registry.get_manifest(existing)
        if sorted(old.files, key=lambda f: f.path) != sorted(entries, key=lambda f: f.path):
            raise RegistryError(
                f"version {version!r} already exists in {registry.url} as {existing} with different content; "
                "versions are immutable, push under a new version name"
            )
    # First occurrence of each digest: where to read it from.
    sources: dict[str, tuple[Path, Chunk]] = {}
    for fc in files:
        for c in fc.chunks:
            sources.setdefault(c.digest, (root / fc.path, c))
    missing = registry.missing_blobs(list(sources))
    to_upload = sum(sources[d][1].size for d in missing)
    total = sum(fc.size for fc in files)
    print(
        f"{len(sources)} unique chunks, {len(missing)} missing from {registry.url} ({_fmt(to_upload)} to upload)",
        file=err,
        flush=True,
    )
    progress = Progress("uploaded", to_upload, err)

    def upload(digest: str) -> None:
        path, c = sources[digest]
        with path.open("rb") as f:
            registry.put_blob(digest, f, c.offset, c.size)
        progress.add(c.size)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for fut in [pool.submit(upload, d) for d in missing]:
            fut.result()
    if existing is not None:  # identical re-push: keep the original manifest (and digest)
        manifest, digest = old, existing
    else:
        manifest = Manifest(
            version=version, created=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), files=entries
        )
        digest = registry.put_manifest(manifest)
        registry.set_version(version, digest)
    if tag is not None:
        registry.set_tag(tag, digest)
    return PushResult(digest, manifest, total, len(sources), len(missing), to_upload)

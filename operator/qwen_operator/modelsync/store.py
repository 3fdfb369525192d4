"""The node-local model cache: a content-addressed chunk store plus version trees.

Layout of ``DIR`` (the contract the operator's init container and TGI rely on)::

    .lock                           shared while pulling, exclusive to collect blobs
    blobs/sha256/<hex>              verified chunks, read-only, shared by every model
    tmp/<hex>.partial               a chunk being downloaded (flock'd; resumed by a ranged GET)
    models/NAME/.lock               serialises assembling and flipping NAME
    models/NAME/current             -> versions/<id>  (flipped atomically; TGI's --model-id)
    models/NAME/versions/<id>/      complete version trees (id = manifest digest hex[:16])
    models/NAME/manifests/<id>.json manifest of each kept version
    models/NAME/history             kept version ids, most recent first

A chunk is committed by write-temp, fsync, rename, so a killed pull leaves either a whole
verified blob or a partial file that the next pull continues from. Chunks that live
inside a kept version file are also readable from there (``local_index``); blob GC drops
such blobs, so a multi-chunk file does not cost its size twice on disk.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from qwen_operator.modelsync.manifest import Manifest, ManifestError
from qwen_operator.modelsync.registry import DigestMismatchError, Registry, TransientError

MODEL_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
PARTIAL_MAX_AGE_S = 24 * 3600
RETRIES = 4


def sanitise_name(prefix: str) -> str:
    """A model directory name from a registry prefix (``org/Qwen3-14B`` -> ``org-qwen3-14b``)."""
    name = re.sub(r"[^a-z0-9._-]+", "-", prefix.lower()).strip("-.")
    return name[:128] or "model"


@dataclass(frozen=True)
class Located:
    """Where a chunk can be read locally: a file and an offset."""

    path: Path
    offset: int
    size: int


class RateLimiter:
    """A token bucket shared by download threads (``--limit-rate``); None means unlimited."""

    def __init__(self, bytes_per_s: float | None) -> None:
        self.rate = bytes_per_s
        self._lock = threading.Lock()
        self._next = time.monotonic()

    def take(self, n: int) -> None:
        if not self.rate:
            return
        with self._lock:
            now = time.monotonic()
            self._next = max(self._next, now) + n / self.rate
            wait = self._next - now
        if wait > 0:
            time.sleep(wait)


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.tmp = root / "tmp"
        self.models = root / "models"
        for d in (self.blobs, self.tmp, self.models):
            d.mkdir(parents=True, exist_ok=True)

    # --- locks ----------------------------------------------------------------------

    @contextmanager
    def lock(self, path: Path, exclusive: bool, blocking: bool = True) -> Iterator[bool]:
        """flock ``path``; yields False (without the lock) when non-blocking and busy."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            flags = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if blocking else fcntl.LOCK_NB)
            try:
                fcntl.flock(fd, flags)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    def model_dir(self, name: str) -> Path:
        if not MODEL_NAME_RE.match(name):
            raise ValueError(f"model name {name!r} is invalid: use lowercase [a-z0-9._-], up to 128 characters")
        return self.models / name

    # --- blobs ----------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.blobs / digest.split(":", 1)[1]

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def fetch(
        self, registry: Registry, digest: str, size: int, limiter: RateLimiter, on_bytes: Callable[[int], None]
    ) -> int:
        """Download one chunk into the store unless present; returns bytes fetched.

        The partial file is flock'd, so two pullers never download the same chunk at
        once: the second waits and then finds the committed blob.
        """
        final = self.blob_path(digest)
        partial = self.tmp / (final.name + ".partial")
        fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if final.is_file():
                if os.fstat(fd).st_size == 0:
                    partial.unlink(missing_ok=True)  # we created it after the blob was committed
                return 0
            have = os.fstat(fd).st_size
            h = hashlib.sha256()
            if have > size:
                os.ftruncate(fd, 0)
                have = 0
            pos = 0
            while pos < have:  # continue the hash over what an earlier pull fetched
                block = os.pread(fd, min(8 << 20, have - pos), pos)
                h.update(block)
                pos += len(block)
            fetched = 0
            for attempt in range(1, RETRIES + 1):
                if have + fetched >= size:
                    break
                try:
                    os.lseek(fd, have + fetched, os.SEEK_SET)
                    for block in registry.get_blob(digest, start=have + fetched):
                        limiter.take(len(block))
                        os.write(fd, block)
                        h.update(block)
                        fetched += len(block)
                        on_bytes(len(block))
                    break
                except TransientError:
                    if attempt == RETRIES:
                        raise
                    time.sleep(0.2 * attempt)  # then continue with a ranged GET
            got = "sha256:" + h.hexdigest()
            if got != digest or have + fetched != size:
                os.ftruncate(fd, 0)
                raise DigestMismatchError(
                    f"chunk {digest} from {registry.url} is corrupt: got {have + fetched} bytes "
                    f"with digest {got}; the registry blob must be re-pushed"
                )
            os.fdatasync(fd)
            os.fchmod(fd, 0o444)
            os.rename(partial, final)  # the caller fsyncs the directory once per pull
            return fetched
        finally:
            os.close(fd)

    # --- local versions -------------------------------------------------------------

    def kept_versions(self) -> Iterator[tuple[Path, str, Manifest]]:
        """``(version dir, id, manifest)`` of every complete version of every model."""
        for model in sorted(self.models.iterdir()) if self.models.is_dir() else []:
            mdir = model / "manifests"
            for mf in sorted(mdir.glob("*.json")) if mdir.is_dir() else []:
                vdir = model / "versions" / mf.stem
                if not vdir.is_dir():
                    continue
                try:
                    yield vdir, mf.stem, Manifest.from_json(mf.read_bytes())
                except (ManifestError, OSError):
                    continue

    def local_index(self) -> tuple[dict[str, Located], dict[str, Path]]:
        """Chunks readable from kept version files, and kept files by their sha256."""
        chunks: dict[str, Located] = {}
        files: dict[str, Path] = {}
        for vdir, _, manifest in self.kept_versions():
            for f in manifest.files:
                path = vdir / f.path
                if not path.is_file():
                    continue
                files.setdefault(f.sha256, path)
                offset = 0
                for c in f.chunks:
                    chunks.setdefault(c.digest, Located(path, offset, c.size))
                    offset += c.size
        return chunks, files

    def collect_blobs(self) -> tuple[int, int]:
        """Drop blobs no kept version needs, and blobs whose bytes a kept file already
        holds (unless hard-linked). Caller holds the exclusive store lock."""
        referenced: set[str] = set()
        for _, _, manifest in self.kept_versions():
            referenced.update(manifest.unique_chunks())
        in_files, _ = self.local_index()
        removed = freed = 0
        for blob in list(self.blobs.iterdir()):
            digest = "sha256:" + blob.name
            st = blob.stat()
            if digest not in referenced or (digest in in_files and st.st_nlink == 1):
                blob.unlink()
                removed += 1
                freed += st.st_size
        now = time.time()
        for partial in list(self.tmp.glob("*.partial")):
            if now - partial.stat().st_mtime > PARTIAL_MAX_AGE_S:
                partial.unlink(missing_ok=True)
        return removed, freed

    def read_history(self, mdir: Path) -> list[str]:
        try:
            data = json.loads((mdir / "history").read_text())
            return [str(x) for x in data] if isinstance(data, list) else []
        except (OSError, ValueError):
            return []

    def write_history(self, mdir: Path, ids: list[str]) -> None:
        tmp = mdir / f".history.{os.getpid()}"
        tmp.write_text(json.dumps(ids))
        os.replace(tmp, mdir / "history")

    def prune_versions(self, mdir: Path, keep: int) -> list[str]:
        """Keep the ``keep`` most recent versions of one model (the current one always)."""
        history = self.read_history(mdir)
        kept = history[: max(1, keep)]
        removed = []
        for vdir in sorted((mdir / "versions").iterdir()) if (mdir / "versions").is_dir() else []:
            if vdir.name not in kept:
                shutil.rmtree(vdir, ignore_errors=True)
                (mdir / "manifests" / f"{vdir.name}.json").unlink(missing_ok=True)
                removed.append(vdir.name)
        staging = mdir / "staging"
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
        self.write_history(mdir, kept)
        return removed


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

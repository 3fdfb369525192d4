"""Pull a model version into the node cache and switch ``current`` atomically.

Steps: resolve the reference to a manifest digest; under a shared store lock fetch the
chunks the node has neither as a blob nor inside a kept version file (parallel,
verified, resumable); then under the model's lock assemble the version tree in a
staging directory, rename it into ``versions/<id>``, flip ``current`` (a symlink made
under a temporary name and ``os.replace``d over the old one) and prune old versions;
finally collect unreferenced blobs if no other pull is running.

Disk use: a file identical to one in a kept version is hard-linked to it, and a file
that is a single chunk is hard-linked to its blob, so neither costs space twice. A file
of several chunks (a safetensors shard) is written once, by copying its chunks through
userspace so its sha256 is verified in the same pass; blob GC then drops the blobs
whose bytes that file already holds, and later pulls read those chunks from the file.
Reflinks would avoid the copy, but chunk boundaries follow tensor offsets, which are not
filesystem-block aligned, so FICLONERANGE would rarely apply: we keep the single
verified copy instead. Peak disk during an update is the new chunks plus the new files.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from qwen_operator.modelsync.manifest import FileEntry, Manifest, short_id
from qwen_operator.modelsync.push import Progress, fmt_bytes
from qwen_operator.modelsync.registry import DigestMismatchError, Registry, RegistryError
from qwen_operator.modelsync.store import Located, RateLimiter, Store, fsync_dir


class PullError(RegistryError):
    """A pull failed; ``current`` was left as it was."""


@dataclass(frozen=True)
class PullResult:
    digest: str
    version: str
    path: Path  # the version directory
    chunks_fetched: int
    bytes_fetched: int  # payload bytes of chunks downloaded (excluding the manifest)
    bytes_needed: int  # bytes of chunks the node lacked before this pull
    total_bytes: int
    removed_versions: tuple[str, ...]


def pull(
    registry: Registry,
    cache: Path,
    name: str,
    version: str | None = None,
    tag: str | None = None,
    keep: int = 2,
    workers: int = 8,
    limit_rate: float | None = None,
    out: TextIO | None = None,
) -> PullResult:
    err = out if out is not None else sys.stderr
    digest = registry.resolve(version=version, tag=tag)
    manifest = registry.get_manifest(digest)
    vid = short_id(digest)
    print(f"pulling {manifest.version} ({digest}) from {registry.url} into {cache}", file=err, flush=True)
    try:
        store = Store(cache)
        mdir = store.model_dir(name)
        with store.lock(cache / ".lock", exclusive=False):
            fetched, needed = _fetch_missing(store, registry, manifest, workers, limit_rate, err)
            with store.lock(mdir / ".lock", exclusive=True):
                vdir = mdir / "versions" / vid
                if not vdir.is_dir():
                    _assemble(store, mdir, vid, manifest, workers, err)
                (mdir / "manifests").mkdir(exist_ok=True)
                mf = mdir / "manifests" / f"{vid}.json"
                if not mf.exists():
                    tmp = mf.with_suffix(f".tmp{os.getpid()}")
                    tmp.write_bytes(manifest.to_json())
                    os.replace(tmp, mf)
                _flip(mdir, vid)
                store.write_history(mdir, [vid] + [v for v in store.read_history(mdir) if v != vid])
                removed = store.prune_versions(mdir, keep)
        with store.lock(cache / ".lock", exclusive=True, blocking=False) as got:
            if got:
                n, freed = store.collect_blobs()
                if n:
                    print(f"collected {n} blobs ({fmt_bytes(freed)})", file=err, flush=True)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(cache).free if cache.exists() else 0
            raise PullError(
                f"disk full while pulling {manifest.version} into {cache} ({fmt_bytes(free)} free); "
                "free space or raise the cache volume size; current version left unchanged"
            ) from exc
        raise PullError(f"pull of {manifest.version} into {cache} failed: {exc}; current left unchanged") from exc
    except DigestMismatchError as exc:
        raise PullError(f"{exc}; current version left unchanged") from exc
    print(
        f"pulled {manifest.version}: fetched {fmt_bytes(fetched)} of {fmt_bytes(manifest.total_bytes)} "
        f"-> {mdir / 'current'}",
        file=err,
        flush=True,
    )
    return PullResult(
        digest, manifest.version, vdir, len(needed), fetched, sum(needed.values()), manifest.total_bytes, tuple(removed)
    )


def _fetch_missing(
    store: Store, registry: Registry, manifest: Manifest, workers: int, limit_rate: float | None, err: TextIO
) -> tuple[int, dict[str, int]]:
    local, _ = store.local_index()
    need = {d: s for d, s in manifest.unique_chunks().items() if d not in local and not store.has_blob(d)}
    total = sum(need.values())
    print(f"{len(need)} chunks missing on this node ({fmt_bytes(total)} to fetch)", file=err, flush=True)
    _check_space(store.root, total + _assembly_bytes(manifest))
    progress = Progress("fetched", total, err)
    limiter = RateLimiter(limit_rate)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(store.fetch, registry, d, s, limiter, progress.add) for d, s in need.items()]
        fetched = 0
        first_error: BaseException | None = None
        for fut in futures:
            try:
                fetched += fut.result()
            except BaseException as exc:  # let the others commit what they have (resume)
                first_error = first_error or exc
        if first_error is not None:
            raise first_error
    fsync_dir(store.blobs)  # make the committed names durable (their data already is)
    return fetched, need


def _assembly_bytes(manifest: Manifest) -> int:
    return sum(f.size for f in manifest.files if len(f.chunks) > 1)


def _check_space(root: Path, need: int) -> None:
    free = shutil.disk_usage(root).free
    if need > free:
        raise OSError(errno.ENOSPC, f"need {fmt_bytes(need)}, {fmt_bytes(free)} free")


def _assemble(store: Store, mdir: Path, vid: str, manifest: Manifest, workers: int, err: TextIO) -> None:
    staging = mdir / "staging" / f"{vid}.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    local, files = store.local_index()
    to_write: list[tuple[FileEntry, Path]] = []
    for f in manifest.files:
        dest = staging / f.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        same = files.get(f.sha256)
        if same is not None and same.stat().st_size == f.size:
            os.link(same, dest)  # unchanged since a kept version: share the inode
        elif len(f.chunks) == 1 and store.has_blob(f.chunks[0].digest):
            if f.chunks[0].digest != f.sha256:
                raise DigestMismatchError(f"manifest: {f.path} is one chunk {f.chunks[0].digest} but has {f.sha256}")
            if _drop_corrupt_blobs(store, [f.sha256]):  # verify the file before sharing the inode
                raise DigestMismatchError(
                    f"{f.path}: local chunk {f.sha256} was corrupt and has been removed; re-run the pull to fetch it"
                )
            os.link(store.blob_path(f.chunks[0].digest), dest)
        else:
            to_write.append((f, dest))
    # Files are written in parallel: hashlib and file I/O release the GIL.
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(to_write)))) as pool:
        for fut in [pool.submit(_write_file, store, local, f, dest) for f, dest in to_write]:
            fut.result()
    print(f"assembled {len(manifest.files)} files", file=err, flush=True)
    (mdir / "versions").mkdir(exist_ok=True)
    os.rename(staging, mdir / "versions" / vid)
    fsync_dir(mdir / "versions")
    shutil.rmtree(mdir / "staging", ignore_errors=True)


def _write_file(store: Store, local: dict[str, Located], f: FileEntry, dest: Path) -> None:
    h = hashlib.sha256()
    with dest.open("wb") as out:
        for c in f.chunks:
            blob = store.blob_path(c.digest)
            src = Located(blob, 0, c.size) if blob.is_file() else local.get(c.digest)
            if src is None:
                raise DigestMismatchError(f"chunk {c.digest} of {f.path} vanished from the node cache")
            with src.path.open("rb") as inp:
                pos, left = src.offset, c.size
                while left:
                    block = os.pread(inp.fileno(), min(left, 8 << 20), pos)
                    if not block:
                        raise DigestMismatchError(f"chunk {c.digest} of {f.path} is truncated in {src.path}")
                    h.update(block)
                    out.write(block)
                    pos += len(block)
                    left -= len(block)
        out.flush()
        os.fdatasync(out.fileno())
    if "sha256:" + h.hexdigest() != f.sha256:
        removed = _drop_corrupt_blobs(store, [c.digest for c in f.chunks])
        hint = f"; removed {removed} corrupt local chunks, re-run the pull to fetch them again" if removed else ""
        raise DigestMismatchError(
            f"{f.path}: assembled file digest sha256:{h.hexdigest()} != manifest {f.sha256}{hint}"
        )
    dest.chmod(0o444)


def _drop_corrupt_blobs(store: Store, digests: list[str]) -> int:
    """Re-hash local blobs and delete those whose bytes no longer match their name."""
    removed = 0
    for digest in dict.fromkeys(digests):
        blob = store.blob_path(digest)
        if not blob.is_file():
            continue
        h = hashlib.sha256()
        with blob.open("rb") as inp:
            while block := inp.read(8 << 20):
                h.update(block)
        if "sha256:" + h.hexdigest() != digest:
            blob.unlink(missing_ok=True)
            removed += 1
    return removed


def _flip(mdir: Path, vid: str) -> None:
    """Point ``current`` at ``versions/<vid>`` atomically (rename over the old link)."""
    tmp = mdir / f".current.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(f"versions/{vid}", tmp)
    os.replace(tmp, mdir / "current")
    fsync_dir(mdir)

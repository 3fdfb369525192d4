"""Pull a model version into the node cache and switch ``current`` atomically.

Steps: resolve the reference to a manifest digest; under a shared store lock build every
file the node lacks as a verified blob (``blobs/sha256/<file sha256>``); then under the
model's lock hard-link the version tree in a staging directory, make it durable, rename
it into ``versions/<id>``, flip ``current`` (a symlink made under a temporary name and
``os.replace``d over the old one) and trim old versions (``Store.prune_versions``: beyond
``keep``, never the version just pulled, ``current``, nor one the node agent last reported
served -- the agent's ``modelsync.evict`` is the real policy); finally collect unreferenced
blobs if no other pull is running.

Building a file writes each byte once. The file is created at full size in
``tmp/<hex>.partial``; every chunk goes straight to its offset -- downloaded (parallel
ranged GETs, streamed with ``readinto``), or copied in the kernel from a kept version
file or blob that already holds it -- and a journal records what is written, so a killed
pull resumes where it stopped. A follower thread hashes the file in order while its
chunks arrive (from the page cache: one sha256 pass over every byte). If the digest is
right, every chunk is right too; if not, each chunk is hashed against its own digest and
the damaged ones are fetched again with their digest checked on the fly -- a chunk the
registry serves corrupt is then reported as such, a local copy that rotted is replaced.
The file is fdatasync'd and renamed into ``blobs/``; the kernel is asked to start writing
each chunk back as soon as it lands, so that fdatasync waits for little. ``current`` only
moves after every file of the version and every directory on the way is durable.

Disk use: the version tree is hard links to blobs or to identical files of kept
versions, so nothing is stored twice; blob GC drops blobs no kept version needs, and
later pulls read unchanged chunks from the kept files. Peak disk during an update is the
new files. Concurrent pulls of the same file wait on its partial's lock and then use the
blob the first one built, so each chunk crosses the network once. (Two pulls building
*different* files that share a chunk at the same moment -- two versions pulled at once
onto a node that has neither -- may each fetch that chunk; nothing is wrong, only moved
twice.) A chunk that occurs more than once in a version is fetched once and copied.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import shutil
import sys
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TextIO

from qwen_operator.modelsync.backend import DigestMismatchError, ModelRegistry, RegistryError, TransientError
from qwen_operator.modelsync.manifest import ChunkRef, FileEntry, Manifest, short_id
from qwen_operator.modelsync.push import Progress, fmt_bytes
from qwen_operator.modelsync.store import (
    HASH_BLOCK,
    RETRIES,
    Located,
    Partial,
    RateLimiter,
    Store,
    copy_range,
    covered,
    fsync_dir,
    hash_range,
    read_journal,
    start_writeback,
    sync_path,
)

JOURNAL_STEP = 4 << 20  # a long download records its progress every 4 MiB


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
    registry: ModelRegistry,
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
            builder = _Builder(store, registry, manifest, workers, RateLimiter(limit_rate), err)
            builder.run()
            fetched, needed = builder.fetched, builder.need
            with store.lock(mdir / ".lock", exclusive=True):
                vdir = mdir / "versions" / vid
                if not vdir.is_dir():
                    _assemble(store, mdir, vid, manifest, builder.verified, workers, err, builder.kept_ok)
                _write_manifest(mdir, vid, manifest)
                _flip(mdir, vid)
                store.write_history(mdir, [vid] + [v for v in store.read_history(mdir) if v != vid])
                removed = store.prune_versions(mdir, keep, pulled=vid)
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
        digest,
        manifest.version,
        vdir,
        builder.chunks,
        fetched,
        sum(needed.values()),
        manifest.total_bytes,
        tuple(removed),
    )


@dataclass(frozen=True)
class _Slot:
    """One chunk position of a file being built and how it gets its bytes."""

    offset: int
    chunk: ChunkRef
    kind: str  # done (journal) | task (download or local copy) | dup (same file) | wait (another file)
    future: Future[None] | None = None
    source: Located | None = None  # dup/wait: where to copy from (wait: a blob, once built)
    owner: str = ""  # wait: the sha256 of the file that holds the chunk


class _Builder:
    """Builds the files of one manifest that the node lacks into verified blobs."""

    def __init__(
        self, store: Store, registry: ModelRegistry, manifest: Manifest, workers: int, limiter: RateLimiter, err: TextIO
    ) -> None:
        self.store, self.registry, self.manifest = store, registry, manifest
        self.workers, self.limiter, self.err = max(1, workers), limiter, err
        self.verified: set[str] = set()  # file digests whose blob this process built or re-hashed
        # file digest -> a kept version's file this pull re-hashed and found right: only those are
        # shared into the new version (a matching size proves nothing: a file may be corrupted or
        # replaced in place)
        self.kept_ok: dict[str, Path] = {}
        self.fetched = 0  # payload bytes downloaded
        self.chunks = 0  # chunk downloads (a resumed chunk counts once)
        self.need: dict[str, int] = {}
        self._lock = threading.Lock()
        self._progress = Progress("fetched", 0, err)
        self._pool: ThreadPoolExecutor | None = None

    # --- planning ---------------------------------------------------------------------

    def _plan(self) -> None:
        self.local, kept = self.store.local_index()
        todo: dict[str, FileEntry] = {}
        for f in self.manifest.files:
            path = kept.get(f.sha256)
            if path is None or f.sha256 in todo:
                todo.setdefault(f.sha256, f)
            elif f.sha256 not in self.kept_ok:
                if _file_ok(path, f):
                    self.kept_ok[f.sha256] = path
                else:
                    todo[f.sha256] = f
        # One build order for every process (by digest), so two pulls that share files
        # take their locks in the same order.
        self.todo = [todo[d] for d in sorted(todo)]
        self.done: dict[str, Future[None]] = {d: Future() for d in todo}
        # The first position (in build order) of each chunk that no local file holds.
        self.owner: dict[str, tuple[str, int]] = {}
        for f in self.todo:
            present = _size(self.store.blob_path(f.sha256)) == f.size
            partial = self.store.tmp / f"{f.sha256[7:]}.partial"
            ranges = [] if present or _size(partial) != f.size else read_journal(partial.with_suffix(".journal"))
            offset = 0
            for c in f.chunks:
                if c.digest not in self.owner and self._local_source(c) is None:
                    self.owner[c.digest] = (f.sha256, offset)
                    left = 0 if present else c.size - covered(ranges, offset, c.size)
                    if left:
                        self.need[c.digest] = left
                offset += c.size

    def _local_source(self, c: ChunkRef) -> Located | None:
        """A file on this node that holds chunk ``c`` (checked by the file digest later)."""
        loc = self.local.get(c.digest)
        if loc is not None:
            return loc
        blob = self.store.blob_path(c.digest)  # a single-chunk file's blob is that chunk
        return Located(blob, 0, c.size) if _size(blob) == c.size else None

    def _space_needed(self) -> int:
        need = 0
        for f in self.todo:
            if _size(self.store.blob_path(f.sha256)) == f.size:
                continue
            try:
                allocated = os.stat(self.store.tmp / f"{f.sha256[7:]}.partial").st_blocks * 512
            except FileNotFoundError:
                allocated = 0
            need += max(0, f.size - allocated)
        return need

    # --- running ----------------------------------------------------------------------

    def run(self) -> None:
        self._plan()
        total = sum(self.need.values())
        print(f"{len(self.need)} chunks missing on this node ({fmt_bytes(total)} to fetch)", file=self.err, flush=True)
        _check_space(self.store.root, self._space_needed())
        self._progress = Progress("fetched", total, self.err)
        first_error: BaseException | None = None
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            self._pool = pool
            with ThreadPoolExecutor(max_workers=max(1, min(len(self.todo), self.workers))) as builders:
                futures = [builders.submit(self._build, f) for f in self.todo]
                for fut in futures:
                    try:
                        fut.result()
                    except BaseException as exc:  # the other files still commit what they have (resume)
                        first_error = first_error or exc
        if first_error is not None:
            raise first_error
        fsync_dir(self.store.blobs)

    def _build(self, f: FileEntry) -> None:
        done = self.done[f.sha256]
        try:
            with self.store.partial(f.sha256) as part:
                blob = self.store.blob_path(f.sha256)
                if blob.exists():
                    if self._blob_ok(blob, f):
                        part.discard()
                        done.set_result(None)
                        return
                    print(f"{f.path}: the local copy {blob} is damaged; fetching it again", file=self.err, flush=True)
                    blob.unlink(missing_ok=True)
                self._fill(f, part)
                part.commit(blob)
                with self._lock:
                    self.verified.add(f.sha256)
            done.set_result(None)
        except BaseException as exc:
            done.set_exception(exc)
            raise

    def _blob_ok(self, blob: Path, f: FileEntry) -> bool:
        """A blob built by someone else (another pull, or a pull a crash interrupted) is
        used only if its size and digest are right."""
        with self._lock:
            if f.sha256 in self.verified:
                return True
        try:
            fd = os.open(blob, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            ok = os.fstat(fd).st_size == f.size and hash_range(fd, 0, f.size) == f.sha256
        finally:
            os.close(fd)
        if ok:
            with self._lock:
                self.verified.add(f.sha256)
        return ok

    def _fill(self, f: FileEntry, part: Partial) -> None:
        """Put every chunk of ``f`` into the partial, verify the file, repair it if needed."""
        assert self._pool is not None
        ranges = part.written(f.size)
        if not ranges:
            part.reset(f.size)
        slots: list[_Slot] = []
        first: dict[str, int] = {}  # chunk digest -> its first offset in this file
        offset = 0
        for c in f.chunks:
            if covered(ranges, offset, c.size) == c.size:
                slots.append(_Slot(offset, c, "done"))
            elif c.digest in first:
                slots.append(_Slot(offset, c, "dup", source=Located(part.path, first[c.digest], c.size)))
            else:
                src = self._local_source(c)
                owner = self.owner.get(c.digest)
                if src is None and owner is not None and owner[0] != f.sha256:
                    blob = self.store.blob_path(owner[0])
                    slots.append(_Slot(offset, c, "wait", source=Located(blob, owner[1], c.size), owner=owner[0]))
                else:
                    have = covered(ranges, offset, c.size)
                    fut = (
                        self._pool.submit(self._copy, part, src, offset, c)
                        if src is not None
                        else self._pool.submit(self._download, part, c, offset, have)
                    )
                    slots.append(_Slot(offset, c, "task", fut, src))
            first.setdefault(c.digest, offset)
            offset += c.size
        try:
            got = self._follow(f, part, slots)
        finally:
            pending = [s.future for s in slots if s.future is not None]
            for fut in pending:
                fut.cancel()  # not started: left for the resume
            wait(pending)  # none may still write to the descriptor once we return
        if got != f.sha256:
            self._repair(f, part, slots, got)

    def _follow(self, f: FileEntry, part: Partial, slots: list[_Slot]) -> str:
        """Hash the file in order as its chunks land; returns ``sha256:<hex>``."""
        h = hashlib.sha256()
        mm = mmap.mmap(part.fd, f.size, prot=mmap.PROT_READ) if f.size else None
        view = memoryview(mm) if mm is not None else memoryview(b"")
        try:
            for s in slots:
                if s.kind == "task" and s.future is not None:
                    s.future.result()
                elif s.kind == "dup" and s.source is not None:
                    copy_range(part.fd, s.source.offset, part.fd, s.offset, s.chunk.size)
                    part.record(s.offset, s.chunk.size)
                elif s.kind == "wait" and s.source is not None:
                    self.done[s.owner].result()  # the file that holds it is built (its blob verified)
                    self._copy(part, s.source, s.offset, s.chunk)
                end = s.offset + s.chunk.size
                for pos in range(s.offset, end, HASH_BLOCK):
                    h.update(view[pos : min(end, pos + HASH_BLOCK)])
        finally:
            view.release()
            if mm is not None:
                mm.close()
        return "sha256:" + h.hexdigest()

    def _repair(self, f: FileEntry, part: Partial, slots: list[_Slot], got: str) -> None:
        """The file digest is wrong: find the chunks that are, fetch them again verified."""
        bad = [s for s in slots if hash_range(part.fd, s.offset, s.chunk.size) != s.chunk.digest]
        if not bad:
            raise DigestMismatchError(
                f"{f.path}: every chunk matches its digest but the file is {got}, not {f.sha256}: "
                "the manifest is inconsistent; push the version again"
            )
        dropped = 0
        fixed: dict[str, int] = {}
        for s in bad:
            src = s.source if s.kind == "task" else None
            if src is not None and src.path.parent == self.store.blobs and _blob_damaged(src):
                src.path.unlink(missing_ok=True)  # a single-chunk blob that rotted on disk
                dropped += 1
            if s.chunk.digest in fixed:
                copy_range(part.fd, fixed[s.chunk.digest], part.fd, s.offset, s.chunk.size)
            else:
                self._download(part, s.chunk, s.offset, 0, verify=True)
                fixed[s.chunk.digest] = s.offset
        print(
            f"{f.path}: {len(bad)} damaged chunks fetched again"
            + (f" ({dropped} damaged blobs removed)" if dropped else ""),
            file=self.err,
            flush=True,
        )
        got = hash_range(part.fd, 0, f.size)
        if got != f.sha256:
            raise DigestMismatchError(f"{f.path}: assembled file digest {got} != manifest {f.sha256}")

    # --- chunk tasks (the worker pool) ----------------------------------------------------

    def _copy(self, part: Partial, src: Located | None, offset: int, c: ChunkRef) -> None:
        """Copy a chunk from a local file; download it if that file has gone."""
        try:
            if src is None:
                raise FileNotFoundError
            sfd = os.open(src.path, os.O_RDONLY)
        except FileNotFoundError:
            self._download(part, c, offset, 0)
            return
        try:
            copy_range(sfd, src.offset, part.fd, offset, c.size)
        except DigestMismatchError:  # the source is shorter than it should be
            os.close(sfd)
            self._download(part, c, offset, 0)
            return
        os.close(sfd)
        part.record(offset, c.size)
        start_writeback(part.fd, offset, c.size)

    def _download(self, part: Partial, c: ChunkRef, offset: int, have: int, verify: bool = False) -> None:
        """GET the chunk (from byte ``have`` on) into its offset of the partial.

        Broken streams are continued with ranged GETs. ``verify`` hashes the chunk on the
        fly (the repair path); otherwise the file digest checks it.
        """
        h = hashlib.sha256() if verify else None
        got = recorded = have
        with self._lock:
            self.chunks += 1
        url = self.registry.url
        try:
            for attempt in range(1, RETRIES + 1):
                try:
                    for block in self.registry.get_blob(c.digest, start=got):
                        n = len(block)
                        if got + n > c.size:
                            raise DigestMismatchError(
                                f"chunk {c.digest} from {url} is corrupt: longer than its {c.size} bytes; "
                                "the registry blob must be re-pushed"
                            )
                        self.limiter.take(n)
                        _pwrite_all(part.fd, block, offset + got)
                        if h is not None:
                            h.update(block)
                        got += n
                        with self._lock:
                            self.fetched += n
                        self._progress.add(n)
                        if h is None and got - recorded >= JOURNAL_STEP:
                            part.record(offset + recorded, got - recorded)
                            recorded = got
                    break
                except TransientError:
                    if attempt == RETRIES:
                        raise
                    time.sleep(0.2 * attempt)  # then continue with a ranged GET
        finally:
            if h is None:
                part.record(offset + recorded, got - recorded)  # what a resume need not fetch again
        if got != c.size or (h is not None and "sha256:" + h.hexdigest() != c.digest):
            digest = "sha256:" + h.hexdigest() if h is not None else "unchecked"
            raise DigestMismatchError(
                f"chunk {c.digest} from {url} is corrupt: got {got} of {c.size} bytes with digest {digest}; "
                "the registry blob must be re-pushed"
            )
        if h is not None:
            part.record(offset, c.size)
        start_writeback(part.fd, offset, c.size)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], offset + done)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except (FileNotFoundError, NotADirectoryError):
        return -1


def _blob_damaged(src: Located) -> bool:
    try:
        fd = os.open(src.path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        return hash_range(fd, 0, src.size) != "sha256:" + src.path.name or os.fstat(fd).st_size != src.size
    finally:
        os.close(fd)


def _check_space(root: Path, need: int) -> None:
    free = shutil.disk_usage(root).free
    if need > free:
        raise OSError(errno.ENOSPC, f"need {fmt_bytes(need)}, {fmt_bytes(free)} free")


def _file_ok(path: Path, f: FileEntry) -> bool:
    """``path`` holds exactly ``f`` (size and sha256 re-read from disk)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        return os.fstat(fd).st_size == f.size and hash_range(fd, 0, f.size) == f.sha256
    finally:
        os.close(fd)


def _assemble(
    store: Store,
    mdir: Path,
    vid: str,
    manifest: Manifest,
    verified: set[str],
    workers: int,
    err: TextIO,
    kept_ok: Mapping[str, Path] | None = None,
) -> None:
    """Hard-link the version tree in a staging directory, make it durable, rename it in.

    A file of a kept version is shared only if this pull re-hashed it (``kept_ok``)."""
    staging = mdir / "staging" / f"{vid}.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    dirs = {staging}
    for f in manifest.files:
        dest = staging / f.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        dirs.update(p for p in dest.parents if p.is_relative_to(staging))
        same = (kept_ok or {}).get(f.sha256)
        if same is not None and _size(same) == f.size:
            os.link(same, dest)  # unchanged since a kept version (re-hashed by this pull): share the inode
        elif f.sha256 in verified:
            os.link(store.blob_path(f.sha256), dest)
        else:
            raise DigestMismatchError(f"{f.path} ({f.sha256}) vanished from the node cache during the pull; re-run it")
    # The durability point: every file's data (mostly written back already), then names.
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(manifest.files)))) as pool:
        list(pool.map(partial(sync_path, data_only=True), [staging / f.path for f in manifest.files]))
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(d)
    print(f"assembled {len(manifest.files)} files", file=err, flush=True)
    (mdir / "versions").mkdir(exist_ok=True)
    os.rename(staging, mdir / "versions" / vid)
    fsync_dir(mdir / "versions")
    shutil.rmtree(mdir / "staging", ignore_errors=True)


def _write_manifest(mdir: Path, vid: str, manifest: Manifest) -> None:
    (mdir / "manifests").mkdir(exist_ok=True)
    mf = mdir / "manifests" / f"{vid}.json"
    if mf.exists():
        os.utime(mf)  # its mtime says when the version was last pulled (eviction's age across models)
        return
    tmp = mf.with_suffix(f".tmp{os.getpid()}")
    with tmp.open("wb") as out:
        out.write(manifest.to_json())
        out.flush()
        os.fdatasync(out.fileno())
    os.replace(tmp, mf)
    fsync_dir(mdir / "manifests")


def _flip(mdir: Path, vid: str) -> None:
    """Point ``current`` at ``versions/<vid>`` atomically (rename over the old link)."""
    tmp = mdir / f".current.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(f"versions/{vid}", tmp)
    os.replace(tmp, mdir / "current")
    fsync_dir(mdir)

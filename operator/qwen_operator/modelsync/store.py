"""The node-local model cache: content-addressed files plus version trees.

Layout of ``DIR`` (the contract the operator's init container and TGI rely on)::

    .lock                           shared while pulling, exclusive to collect blobs or evict
    blobs/sha256/<hex>              verified whole files, read-only, by their sha256 (a
                                    single-chunk file's digest is its chunk's digest)
    tmp/<hex>.partial               a file being built at full size, chunks written at their
                                    offsets (flock'd by its builder; resumed by the next pull)
    tmp/<hex>.journal               byte ranges of that partial already written ("OFFSET LEN")
    models/NAME/.lock               serialises assembling and flipping NAME
    models/NAME/current             -> versions/<id>  (flipped atomically by each pull; the
                                    server's --model-id when its version is not a digest)
    models/NAME/versions/<id>/      complete version trees (id = manifest digest hex[:16]),
                                    hard links to blobs or to files of kept versions; a pod
                                    whose version is a sha256: digest reads its own tree here
    models/NAME/manifests/<id>.json manifest of each kept version (mtime: last pulled)
    models/NAME/history             kept version ids, most recently pulled first
    models/NAME/protected           ids the node agent last said are served (written by evict)
    models/NAME/trash/              version trees being deleted (renamed here first)

A version is *complete* when both its manifest and its tree exist. Old versions leave by
one of two paths, both under the model lock and crash-safe (the tree is renamed into
``trash/`` before its manifest goes, so a killed removal never leaves a half-deleted tree
that looks complete): each pull trims its model to ``keep`` versions, never the one just
pulled, ``current`` or a ``protected`` one (:meth:`Store.prune_versions`); the node agent's
:func:`~qwen_operator.modelsync.evict.evict` (``qwenctl model gc``) applies the policy --
keep the versions the node's pods serve, each model's current and target versions and N
others, then shed the oldest others until the store fits a size bound.

Every byte is written once: a chunk is downloaded (or copied from a local file that
holds it) straight into its offset of ``tmp/<hex>.partial``. The journal records what
was written, so a killed pull resumes without fetching it again; the file's sha256 is
checked before it is renamed into ``blobs/`` (after an fdatasync), and a file whose
digest is wrong is repaired chunk by chunk (see ``pull``). A blob that this process did
not build is re-hashed before it is used, so one whose data a crash lost is rebuilt, not
served. Chunks inside kept version files are readable from there (``local_index``); blob
GC drops blobs no kept version needs, so a file does not cost its size twice on disk.
"""

from __future__ import annotations

import ctypes
import errno
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
from typing import cast

from qwen_operator.modelsync.backend import DigestMismatchError
from qwen_operator.modelsync.manifest import Manifest, ManifestError

MODEL_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
PARTIAL_MAX_AGE_S = 24 * 3600
RETRIES = 4
HASH_BLOCK = 8 << 20
TRASH = "trash"  # models/NAME/trash/: version trees being deleted (see Store.remove_version)


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

    @contextmanager
    def partial(self, digest: str) -> Iterator[Partial]:
        """Hold ``tmp/<hex>.partial`` (and its journal) exclusively, waiting for another
        builder of the same file -- in this or another process -- to finish first."""
        path = self.tmp / (digest.split(":", 1)[1] + ".partial")
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                st = os.fstat(fd)
                try:
                    now = os.stat(path)
                except FileNotFoundError:
                    now = None
                if now is None or (now.st_ino, now.st_dev) != (st.st_ino, st.st_dev):
                    os.close(fd)  # committed or removed by the holder we waited for: retry
                    continue
            except BaseException:
                os.close(fd)
                raise
            break
        part = Partial(path, fd)
        try:
            yield part
        finally:
            part.close_journal()
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
            try:
                if now - partial.stat().st_mtime <= PARTIAL_MAX_AGE_S:
                    continue
                fd = os.open(partial, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                partial.unlink(missing_ok=True)
                partial.with_suffix(".journal").unlink(missing_ok=True)
            except BlockingIOError:
                pass  # being built right now
            finally:
                os.close(fd)
        for journal in list(self.tmp.glob("*.journal")):
            if not journal.with_suffix(".partial").exists():
                journal.unlink(missing_ok=True)
        return removed, freed

    @staticmethod
    def read_history(mdir: Path) -> list[str]:
        try:
            data = json.loads((mdir / "history").read_text())
            return [str(x) for x in data] if isinstance(data, list) else []
        except (OSError, ValueError):
            return []

    def write_history(self, mdir: Path, ids: list[str]) -> None:
        tmp = mdir / f".history.{os.getpid()}"
        tmp.write_text(json.dumps(ids))
        os.replace(tmp, mdir / "history")

    def current_id(self, mdir: Path) -> str | None:
        """The version id ``current`` points at (None without a ``current`` link)."""
        try:
            return Path(os.readlink(mdir / "current")).name
        except OSError:
            return None

    def read_protected(self, mdir: Path) -> set[str]:
        """Version ids the node agent last said are in use (``models/NAME/protected``, written by
        ``evict``); empty when no agent ever ran."""
        try:
            data = json.loads((mdir / "protected").read_text())
            ids = data.get("ids", []) if isinstance(data, dict) else []
            return {str(x) for x in ids} if isinstance(ids, list) else set()
        except (OSError, ValueError):
            return set()

    def write_protected(self, mdir: Path, ids: set[str]) -> None:
        tmp = mdir / f".protected.{os.getpid()}"
        tmp.write_text(json.dumps({"ids": sorted(ids), "at": time.time()}))
        os.replace(tmp, mdir / "protected")

    def remove_version(self, mdir: Path, vid: str) -> None:
        """Remove one version so that no crash leaves a half-removed tree that looks complete:
        ``versions/<vid>`` is first renamed into ``trash/`` (one atomic step: from then on the
        version is not complete, so no pull shares its files and no ``local_index`` reads them),
        then its manifest goes, then the trash is deleted. A leftover trash entry or manifest
        without a tree is swept by :meth:`sweep`."""
        vdir = mdir / "versions" / vid
        if vdir.is_dir():
            trash = mdir / TRASH
            trash.mkdir(exist_ok=True)
            dest = trash / f"{vid}.{os.getpid()}.{time.monotonic_ns()}"
            os.rename(vdir, dest)
            fsync_dir(mdir / "versions")
        else:
            dest = None
        (mdir / "manifests" / f"{vid}.json").unlink(missing_ok=True)
        if dest is not None:
            shutil.rmtree(dest, ignore_errors=True)

    def sweep(self, mdir: Path) -> None:
        """Finish removals a crash interrupted: delete ``trash/`` entries and manifests whose
        version tree is gone. Caller holds the model lock (no pull is between its rename of
        the tree and its manifest write)."""
        trash = mdir / TRASH
        if trash.is_dir():
            for entry in list(trash.iterdir()):
                shutil.rmtree(entry, ignore_errors=True)
        manifests = mdir / "manifests"
        for mf in list(manifests.glob("*.json")) if manifests.is_dir() else []:
            if not (mdir / "versions" / mf.stem).is_dir():
                mf.unlink(missing_ok=True)

    def prune_versions(self, mdir: Path, keep: int, pulled: str | None = None) -> list[str]:
        """The pull's own, conservative clean-up of one model: versions beyond the ``keep`` most
        recent (history order) are removed, but never ``pulled`` (the version just pulled), the
        one ``current`` points at, nor one the node agent last reported in use
        (:meth:`read_protected`). The agent (``modelsync.evict``) applies the real policy, with
        the versions the node's pods serve; without it this is the only clean-up."""
        history = self.read_history(mdir)
        vdirs = sorted((mdir / "versions").iterdir()) if (mdir / "versions").is_dir() else []
        present = [v.name for v in vdirs]
        ordered = [v for v in history if v in present] + [v for v in present if v not in history]
        keep_ids = set(ordered[: max(1, keep)]) | self.read_protected(mdir)
        keep_ids |= {v for v in (pulled, self.current_id(mdir)) if v}
        removed = []
        for vid in ordered:
            if vid not in keep_ids:
                self.remove_version(mdir, vid)
                removed.append(vid)
        staging = mdir / "staging"
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
        self.sweep(mdir)
        self.write_history(mdir, [v for v in ordered if v not in removed])
        return removed


class Partial:
    """A file being built in ``tmp/``: its open descriptor (flock'd) and its journal.

    The journal lists byte ranges already written, as ``OFFSET LEN`` lines appended after
    the bytes are in the file (so after a killed process it never claims more than the
    page cache holds). Ranges are of the file's content, whatever the chunking, because
    the file is named by its sha256. They are trusted only until the file's digest is
    checked: a range whose bytes a crash lost shows up there and is fetched again.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.journal = path.with_suffix(".journal")
        self._jfd = -1
        self._lock = threading.Lock()

    def written(self, size: int) -> list[tuple[int, int]]:
        """Merged ``(offset, end)`` ranges the journal says are written; none unless the
        partial already has the expected size (otherwise it is started afresh)."""
        if os.fstat(self.fd).st_size != size:
            return []
        return read_journal(self.journal)

    def reset(self, size: int) -> None:
        """Start the file afresh: an empty journal and a sparse file of ``size`` bytes."""
        self.close_journal()
        self.journal.unlink(missing_ok=True)
        os.ftruncate(self.fd, 0)
        os.ftruncate(self.fd, size)

    def record(self, offset: int, length: int) -> None:
        if length <= 0:
            return
        with self._lock:
            if self._jfd < 0:
                self._jfd = os.open(self.journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.write(self._jfd, f"{offset} {length}\n".encode())

    def close_journal(self) -> None:
        with self._lock:
            if self._jfd >= 0:
                os.close(self._jfd)
                self._jfd = -1

    def commit(self, dest: Path) -> None:
        """Make the verified file durable and read-only, then rename it to ``dest``."""
        os.fdatasync(self.fd)
        os.fchmod(self.fd, 0o444)
        os.rename(self.path, dest)  # the caller fsyncs the directory before it relies on the name
        self.close_journal()
        self.journal.unlink(missing_ok=True)

    def discard(self) -> None:
        self.close_journal()
        self.path.unlink(missing_ok=True)
        self.journal.unlink(missing_ok=True)


def read_journal(path: Path) -> list[tuple[int, int]]:
    """Merged ``(offset, end)`` ranges listed in a partial's journal (torn lines ignored)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    spans: list[tuple[int, int]] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            spans.append((int(parts[0]), int(parts[0]) + int(parts[1])))
    merged: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def covered(ranges: list[tuple[int, int]], offset: int, size: int) -> int:
    """How many bytes from ``offset`` (at most ``size``) the merged ranges cover."""
    for a, b in ranges:
        if a <= offset < b:
            return min(size, b - offset)
    return 0


def hash_range(fd: int, offset: int, size: int) -> str:
    """``sha256:<hex>`` of ``size`` bytes of a file at ``offset``."""
    h = hashlib.sha256()
    pos, end = offset, offset + size
    while pos < end:
        block = os.pread(fd, min(HASH_BLOCK, end - pos), pos)
        if not block:
            break  # short file: the digest will not match
        h.update(block)
        pos += len(block)
    return "sha256:" + h.hexdigest()


def copy_range(src: int, src_off: int, dst: int, dst_off: int, size: int) -> None:
    """Copy bytes between files in the kernel (copy_file_range), else through userspace."""
    done = 0
    while done < size:
        try:
            n = os.copy_file_range(src, dst, size - done, src_off + done, dst_off + done)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
                raise
            n = -1
        if n <= 0:
            break
        done += n
    while done < size:
        block = os.pread(src, min(HASH_BLOCK, size - done), src_off + done)
        if not block:
            raise DigestMismatchError(f"local source is {size - done} bytes short")
        done += os.pwrite(dst, block, dst_off + done)


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], fn)


_SYNC_FILE_RANGE = _sync_file_range()
SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, size: int) -> None:
    """Ask the kernel to start writing a range to disk now (not waiting for it), so the
    disk works while the download goes on and the final fdatasync has little left to do.
    Only a hint: durability still comes from fdatasync."""
    if _SYNC_FILE_RANGE is not None and size > 0:
        _SYNC_FILE_RANGE(fd, offset, size, SYNC_FILE_RANGE_WRITE)


def sync_path(path: Path, data_only: bool = False) -> None:
    """fsync a directory (its entries) or file by path; ``data_only``: fdatasync a file's bytes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        (os.fdatasync if data_only else os.fsync)(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    sync_path(path)

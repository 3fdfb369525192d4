"""The version manifest and the diff between two versions (pure: plain data only).

A manifest lists every file of a model version as an ordered list of chunk digests and
sizes plus the file's own sha256. It is serialised canonically (sorted keys, no
whitespace), so its sha256 -- the *manifest digest* -- is the version's identity: two
pushes of the same bytes under the same name give the same digest, and a pinned digest
can never silently change meaning.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from qwen_operator.modelsync.chunking import FileChunks

MEDIA_TYPE = "application/vnd.qwenops.model.manifest.v1+json"
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


class ManifestError(ValueError):
    """A manifest document is malformed."""


@dataclass(frozen=True)
class ChunkRef:
    digest: str
    size: int


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str
    chunks: tuple[ChunkRef, ...]

    @classmethod
    def from_chunks(cls, fc: FileChunks) -> FileEntry:
        return cls(fc.path, fc.size, fc.sha256, tuple(ChunkRef(c.digest, c.size) for c in fc.chunks))


@dataclass(frozen=True)
class Manifest:
    version: str
    created: str  # RFC 3339, UTC
    files: tuple[FileEntry, ...]

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "mediaType": MEDIA_TYPE,
            "version": self.version,
            "created": self.created,
            "files": [
                {
                    "path": f.path,
                    "size": f.size,
                    "sha256": f.sha256,
                    "chunks": [{"digest": c.digest, "size": c.size} for c in f.chunks],
                }
                for f in sorted(self.files, key=lambda f: f.path)
            ],
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.to_json()).hexdigest()

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def unique_chunks(self) -> dict[str, int]:
        """Digest -> size of every distinct chunk the version needs."""
        return {c.digest: c.size for f in self.files for c in f.chunks}

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        try:
            doc = json.loads(raw)
            if doc.get("mediaType") != MEDIA_TYPE:
                raise ManifestError(f"unknown manifest mediaType {doc.get('mediaType')!r}, expected {MEDIA_TYPE}")
            files = tuple(
                FileEntry(
                    path=_safe_path(f["path"]),
                    size=int(f["size"]),
                    sha256=_digest(f["sha256"]),
                    chunks=tuple(ChunkRef(_digest(c["digest"]), int(c["size"])) for c in f["chunks"]),
                )
                for f in doc["files"]
            )
            m = cls(version=str(doc["version"]), created=str(doc["created"]), files=files)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ManifestError):
                raise
            raise ManifestError(f"malformed manifest: {exc!r}") from exc
        for f in m.files:
            if sum(c.size for c in f.chunks) != f.size:
                raise ManifestError(f"file {f.path!r}: chunk sizes do not add up to the file size {f.size}")
        return m


def _digest(value: object) -> str:
    if not isinstance(value, str) or not DIGEST_RE.match(value):
        raise ManifestError(f"not a sha256 digest: {value!r}")
    return value


def _safe_path(value: object) -> str:
    """Reject absolute paths and ``..`` so a manifest cannot write outside its directory."""
    if not isinstance(value, str) or not value or value.startswith("/") or "\\" in value:
        raise ManifestError(f"unsafe file path in manifest: {value!r}")
    if any(part in {"", ".", ".."} for part in value.split("/")):
        raise ManifestError(f"unsafe file path in manifest: {value!r}")
    return value


@dataclass(frozen=True)
class FileDiff:
    path: str
    status: str  # added | removed | changed | unchanged
    size: int  # size in the new version (old size for removed)
    chunks_total: int
    chunks_new: int
    bytes_new: int  # bytes of chunks the new version needs and the old one lacks


@dataclass(frozen=True)
class VersionDiff:
    files: tuple[FileDiff, ...]
    bytes_to_move: int  # unique new chunk bytes (what a pull on a node holding `old` fetches)
    chunks_to_move: int
    file_level_bytes: int  # bytes a file-level diff (skip files with unchanged sha256) would move
    total_bytes: int  # full download of the new version


def diff(old: Manifest | None, new: Manifest, have: Iterable[str] = ()) -> VersionDiff:
    """What moving from ``old`` (None: empty node) to ``new`` transfers."""
    present = set(have)
    old_files = {f.path: f for f in old.files} if old else {}
    if old:
        present.update(old.unique_chunks())
    out: list[FileDiff] = []
    counted: set[str] = set()
    moved = 0
    file_level = 0
    for f in sorted(new.files, key=lambda f: f.path):
        before = old_files.get(f.path)
        status = "added" if before is None else ("unchanged" if before.sha256 == f.sha256 else "changed")
        if status != "unchanged":
            file_level += f.size
        new_chunks = [c for c in f.chunks if c.digest not in present]
        for c in new_chunks:
            if c.digest not in counted:
                counted.add(c.digest)
                moved += c.size
        out.append(FileDiff(f.path, status, f.size, len(f.chunks), len(new_chunks), sum(c.size for c in new_chunks)))
    new_paths = {f.path for f in new.files}
    for path, f in sorted(old_files.items()):
        if path not in new_paths:
            out.append(FileDiff(path, "removed", f.size, len(f.chunks), 0, 0))
    return VersionDiff(tuple(out), moved, len(counted), file_level, new.total_bytes)


def short_id(digest: str) -> str:
    """The directory name of a version: the first 16 hex digits of its manifest digest."""
    return _digest(digest).split(":", 1)[1][:16]

"""Manifests are canonical (digest = identity), validated, and diffed per file."""

from __future__ import annotations

import json

import pytest

from qwen_operator.modelsync.manifest import ChunkRef, FileEntry, Manifest, ManifestError, diff, short_id
from qwen_operator.modelsync.store import sanitise_name


def d(c: str) -> str:
    return "sha256:" + c * 64


def entry(path: str, *chunks: tuple[str, int], sha: str = "f") -> FileEntry:
    return FileEntry(path, sum(s for _, s in chunks), d(sha), tuple(ChunkRef(d(c), s) for c, s in chunks))


OLD = Manifest("v1", "2026-01-01T00:00:00Z", (entry("a", ("1", 10), ("2", 20), sha="a"), entry("b", ("3", 5), sha="b")))


def test_digest_is_canonical_and_order_independent() -> None:
    reordered = Manifest(OLD.version, OLD.created, tuple(reversed(OLD.files)))
    assert reordered.digest() == OLD.digest()
    assert Manifest.from_json(OLD.to_json()) == Manifest(
        OLD.version, OLD.created, tuple(sorted(OLD.files, key=lambda f: f.path))
    )
    assert len(short_id(OLD.digest())) == 16


@pytest.mark.parametrize(
    ("new_files", "moved", "file_level", "statuses"),
    [
        ((entry("a", ("1", 10), ("2", 20), sha="a"), entry("b", ("3", 5), sha="b")), 0, 0, ["unchanged", "unchanged"]),
        ((entry("a", ("1", 10), ("4", 20), sha="c"), entry("b", ("3", 5), sha="b")), 20, 30, ["changed", "unchanged"]),
        # a new file made of chunks the node already holds moves nothing
        (
            (entry("a", ("1", 10), ("2", 20), sha="a"), entry("c", ("3", 5), sha="b")),
            0,
            5,
            ["unchanged", "added", "removed"],
        ),
        # a chunk used twice is moved once
        ((entry("a", ("5", 7), ("5", 7), sha="e"),), 7, 14, ["changed", "removed"]),
    ],
)
def test_diff_table(new_files: tuple[FileEntry, ...], moved: int, file_level: int, statuses: list[str]) -> None:
    new = Manifest("v2", "2026-01-02T00:00:00Z", new_files)
    result = diff(OLD, new)
    assert result.bytes_to_move == moved
    assert result.file_level_bytes == file_level
    assert [f.status for f in result.files] == statuses
    assert result.total_bytes == new.total_bytes


def test_diff_from_empty_node_moves_everything_once() -> None:
    result = diff(None, OLD)
    assert result.bytes_to_move == 35 == result.total_bytes


@pytest.mark.parametrize("path", ["/etc/passwd", "../x", "a/../../x", "a//b", ""])
def test_unsafe_paths_are_rejected(path: str) -> None:
    doc = json.loads(OLD.to_json())
    doc["files"][0]["path"] = path
    with pytest.raises(ManifestError, match="unsafe"):
        Manifest.from_json(json.dumps(doc).encode())


def test_sizes_must_add_up() -> None:
    doc = json.loads(OLD.to_json())
    doc["files"][0]["size"] = 999
    with pytest.raises(ManifestError, match="do not add up"):
        Manifest.from_json(json.dumps(doc).encode())


@pytest.mark.parametrize(
    ("prefix", "name"),
    [("models/Qwen3-14B", "models-qwen3-14b"), ("", "model"), ("a b/c", "a-b-c")],
)
def test_sanitise_name(prefix: str, name: str) -> None:
    assert sanitise_name(prefix) == name

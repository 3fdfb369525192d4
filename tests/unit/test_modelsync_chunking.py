"""Chunking is deterministic and local: an update changes only the chunks it touches."""

from __future__ import annotations

import io
import random
import struct
from pathlib import Path

import pytest

from qwen_operator.modelsync import safetensors_io
from qwen_operator.modelsync.chunking import (
    ChunkingError,
    Span,
    cdc_spans,
    chunk_file,
    safetensors_spans,
)
from qwen_operator.modelsync.synthetic import Checkpoint, Shape

KIB = 1024


def _header(sizes: list[tuple[str, int]]) -> bytes:
    return safetensors_io.header_bytes([(n, "U8", (s,)) for n, s in sizes])


@pytest.mark.parametrize(
    ("sizes", "max_piece", "expected_sizes"),
    [
        # one big tensor split into fixed pieces from its start
        ([("a", 1000 * KIB)], 256 * KIB, [256 * KIB, 256 * KIB, 256 * KIB, 232 * KIB]),
        # small tensors grouped, a big one alone
        ([("n1", 10), ("n2", 20), ("w", 300 * KIB), ("n3", 30)], 1024 * KIB, [30, 300 * KIB, 30]),
        # empty tensor contributes nothing
        ([("e", 0), ("w", 300 * KIB)], 1024 * KIB, [300 * KIB]),
    ],
)
def test_safetensors_spans_table(sizes: list[tuple[str, int]], max_piece: int, expected_sizes: list[int]) -> None:
    header = _header(sizes)
    total = len(header) + sum(s for _, s in sizes)
    spans = safetensors_spans(header, total, max_piece=max_piece)
    assert spans[0] == Span(0, len(header))
    assert [s.size for s in spans[1:]] == expected_sizes
    # spans tile the file exactly
    assert sum(s.size for s in spans) == total
    assert all(a.offset + a.size == b.offset for a, b in zip(spans, spans[1:], strict=False))


def test_small_groups_are_bounded() -> None:
    sizes = [(f"n{i:03d}", 100 * KIB) for i in range(30)]  # 3 MB of small tensors
    header = _header(sizes)
    spans = safetensors_spans(header, len(header) + 3000 * KIB, small=256 * KIB, group=1024 * KIB)
    assert all(s.size <= 1024 * KIB for s in spans[1:])
    assert len(spans) - 1 == 3  # 10 tensors of 100 KiB per 1 MiB group


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (struct.pack("<Q", 0), "out of range"),
        (struct.pack("<Q", 5) + b"nope!", "not valid JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
        (struct.pack("<Q", 17) + b'{"t":{"dtype":1}}', "data_offsets"),
    ],
)
def test_malformed_headers_are_rejected(tmp_path: Path, raw: bytes, message: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(raw + b"\0" * 64)
    with pytest.raises(ChunkingError, match=message):
        chunk_file(path)


def test_tensor_past_end_of_file_is_rejected() -> None:
    header = _header([("w", 1000)])
    with pytest.raises(ChunkingError, match="past the end"):
        safetensors_spans(header, len(header) + 10)


def test_cdc_is_deterministic_and_bounded() -> None:
    data = random.Random(1).randbytes(3 * 1024 * KIB)
    a = list(cdc_spans(io.BytesIO(data)))
    b = list(cdc_spans(io.BytesIO(data)))
    assert [s for s, _ in a] == [s for s, _ in b]
    sizes = [s.size for s, _ in a]
    assert sum(sizes) == len(data)
    assert all(16 * KIB <= s <= 256 * KIB for s in sizes[:-1])
    assert b"".join(d for _, d in a) == data
    avg = sum(sizes) / len(sizes)
    assert 32 * KIB < avg < 128 * KIB  # normalised around the 64 KiB target


def test_cdc_insertion_changes_only_nearby_chunks() -> None:
    rng = random.Random(2)
    data = rng.randbytes(2 * 1024 * KIB)
    edited = data[: 1024 * KIB] + b"inserted bytes" + data[1024 * KIB :]
    before = {d for _, d in cdc_spans(io.BytesIO(data))}
    after = [d for _, d in cdc_spans(io.BytesIO(edited))]
    changed = [d for d in after if d not in before]
    assert 1 <= len(changed) <= 2
    assert sum(len(d) for d in changed) < 600 * KIB


SHAPE = Shape().scaled(0.05, layers=4, vocab=4096)


def _chunks(root: Path) -> dict[str, dict[str, int]]:
    return {
        p.name: {c.digest: c.size for c in chunk_file(p, max_piece=256 * KIB).chunks} for p in sorted(root.iterdir())
    }


def test_same_bytes_give_same_chunks(tmp_path: Path) -> None:
    Checkpoint(SHAPE).write(tmp_path / "a")
    Checkpoint(SHAPE).write(tmp_path / "b")
    assert _chunks(tmp_path / "a") == _chunks(tmp_path / "b")


def test_fine_tuning_last_layer_changes_only_its_chunks(tmp_path: Path) -> None:
    base = Checkpoint(SHAPE)
    base.write(tmp_path / "a")
    base.last_layers(1).write(tmp_path / "b")
    a, b = _chunks(tmp_path / "a"), _chunks(tmp_path / "b")
    changed = {f: {d: s for d, s in b[f].items() if d not in a[f]} for f in b}
    # only the shard holding layer 3 changes, and not all of it
    assert {f for f, c in changed.items() if c} == {"model-00004-of-00004.safetensors"}
    shard = changed["model-00004-of-00004.safetensors"]
    layer_bytes = sum(2 * _prod(shape) for name, shape in base.tensors() if name.startswith("model.layers.3."))
    # the changed chunks are the layer's tensors (+ possibly a grouped small-tensor chunk)
    assert layer_bytes <= sum(shard.values()) <= layer_bytes + 1024 * KIB
    assert sum(shard.values()) < sum(b["model-00004-of-00004.safetensors"].values()) * 0.8


def test_new_token_rows_keep_other_tensors(tmp_path: Path) -> None:
    base = Checkpoint(SHAPE)
    base.write(tmp_path / "a")
    base.new_tokens(64).write(tmp_path / "b")
    a, b = _chunks(tmp_path / "a"), _chunks(tmp_path / "b")
    first = "model-00001-of-00004.safetensors"
    old_digests = set(a[first])
    kept = [d for d in b[first] if d in old_digests]
    assert kept, "tensors that only moved must keep their digests"
    # the embedding's leading pieces are unchanged; the growth changes its tail
    assert sum(s for d, s in b[first].items() if d not in old_digests) < sum(b[first].values()) / 2


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n

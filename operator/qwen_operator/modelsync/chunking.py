"""Cut model files into content-addressed chunks (pure: no boto3, no network).

Layer-diff sync moves chunks, not files, so *where* a file is cut decides how many
bytes an update moves. Two strategies:

* **safetensors** files are cut at tensor boundaries read from their header (an
  8-byte little-endian length followed by a JSON header whose ``data_offsets`` locate
  each tensor). The header is its own chunk; each tensor is a chunk, large tensors are
  split into fixed ``max_piece`` pieces counted from the tensor's start, and runs of
  tiny tensors (norm weights, biases) are grouped so a checkpoint does not become
  thousands of 256-byte objects. A fine-tune that touches some tensors changes only
  their chunks and the header; tensors that merely *move* (e.g. the embedding grew)
  keep their digests because digests depend on bytes, not offsets.
* **everything else** (config, tokenizer, ...) uses content-defined chunking with a
  gear rolling hash and FastCDC-style normalised masks (min/avg/max sizes), so an
  insertion shifts only the chunks around it.

Both are deterministic: the same bytes always give the same chunks. Digests are
``sha256:<hex>``.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

MIB = 1024 * 1024

#: Large tensors are split into pieces of at most this size.
MAX_TENSOR_PIECE = 64 * MIB
#: Tensors smaller than this are grouped with their neighbours...
SMALL_TENSOR = 256 * 1024
#: ...into groups of up to this size.
SMALL_GROUP = 1 * MIB
#: Content-defined chunk sizes for non-safetensors files.
CDC_MIN, CDC_AVG, CDC_MAX = 16 * 1024, 64 * 1024, 256 * 1024
#: Refuse absurd headers (the safetensors reference implementation caps at 100 MB).
MAX_HEADER = 100 * MIB
_READ = 8 * MIB


class ChunkingError(ValueError):
    """The file claims to be safetensors but its header is malformed."""


@dataclass(frozen=True)
class Span:
    """A byte range of a file: ``[offset, offset + size)``."""

    offset: int
    size: int


@dataclass(frozen=True)
class Chunk:
    """One chunk of a file: where it lies and the sha256 of its bytes."""

    offset: int
    size: int
    digest: str


@dataclass(frozen=True)
class FileChunks:
    """A file cut into chunks, with the sha256 of the whole file."""

    path: str
    size: int
    sha256: str
    chunks: tuple[Chunk, ...]


def digest_bytes(data: bytes | memoryview) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- safetensors --------------------------------------------------------------------


def safetensors_header_size(prefix: bytes) -> int:
    """Total bytes of the header chunk (8-byte length + JSON) given the first 8 bytes."""
    if len(prefix) < 8:
        raise ChunkingError("file shorter than the 8-byte safetensors header length")
    (n,) = struct.unpack("<Q", prefix[:8])
    if n == 0 or n > MAX_HEADER:
        raise ChunkingError(f"safetensors header length {n} is out of range (1..{MAX_HEADER})")
    return 8 + int(n)


def tensor_ranges(header: bytes) -> list[tuple[str, int, int]]:
    """``(name, begin, end)`` of every tensor relative to the data section, by offset."""
    try:
        meta = json.loads(header[8:].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ChunkingError(f"safetensors header is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise ChunkingError("safetensors header is not a JSON object")
    out: list[tuple[str, int, int]] = []
    for name, info in meta.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(v, int) for v in offsets)):
            raise ChunkingError(f"tensor {name!r} has no valid data_offsets")
        begin, end = offsets
        if not 0 <= begin <= end:
            raise ChunkingError(f"tensor {name!r} has data_offsets {offsets} out of order")
        out.append((name, begin, end))
    out.sort(key=lambda t: (t[1], t[2]))
    return out


def safetensors_spans(
    header: bytes,
    file_size: int,
    max_piece: int = MAX_TENSOR_PIECE,
    small: int = SMALL_TENSOR,
    group: int = SMALL_GROUP,
) -> list[Span]:
    """Chunk spans of a safetensors file from its header bytes and size (pure)."""
    base = len(header)
    spans = [Span(0, base)]
    pos = base  # next uncovered byte
    pending: Span | None = None  # a group of small tensors being built

    def flush() -> None:
        nonlocal pending
        if pending is not None:
            spans.append(pending)
            pending = None

    for name, begin, end in tensor_ranges(header):
        start, stop = base + begin, base + end
        if stop > file_size:
            raise ChunkingError(f"tensor {name!r} ends at byte {stop}, past the end of the file ({file_size})")
        if start < pos:
            raise ChunkingError(f"tensor {name!r} overlaps the previous tensor")
        if start > pos:  # a hole (padding): its own span, never merged
            flush()
            spans.append(Span(pos, start - pos))
        size = stop - start
        if size == 0:
            pos = stop
            continue
        if size < small:
            if pending is not None and pending.size + size > group:
                flush()
            pending = Span(start, size) if pending is None else Span(pending.offset, pending.size + size)
        else:
            flush()
            for off in range(start, stop, max_piece):
                spans.append(Span(off, min(max_piece, stop - off)))
        pos = stop
    flush()
    if pos < file_size:
        spans.append(Span(pos, file_size - pos))
    return spans


# --- content-defined chunking ---------------------------------------------------------


def _gear_table() -> tuple[int, ...]:
    # 256 pseudo-random 64-bit values, fixed forever (changing them changes every digest).
    return tuple(
        int.from_bytes(hashlib.sha256(b"qwen-operator-gear-" + bytes([i])).digest()[:8], "little") for i in range(256)
    )


GEAR = _gear_table()
_M64 = (1 << 64) - 1


def _mask(bits: int) -> int:
    # Spread the bits over the high half, as FastCDC does, so they see a longer window.
    return ((1 << bits) - 1) << (64 - bits)


def cdc_cut(data: bytes | memoryview, min_size: int = CDC_MIN, avg: int = CDC_AVG, max_size: int = CDC_MAX) -> int:
    """Length of the first content-defined chunk of ``data`` (FastCDC, normalised)."""
    n = len(data)
    if n <= min_size:
        return n
    bits = max(avg.bit_length() - 1, 1)
    mask_s, mask_l = _mask(bits + 2), _mask(bits - 2)
    end = min(n, max_size)
    normal = min(end, avg)
    h = 0
    gear = GEAR
    i = min_size
    mv = memoryview(data)
    for b in mv[min_size:normal]:
        h = ((h << 1) + gear[b]) & _M64
        i += 1
        if not h & mask_s:
            return i
    for b in mv[normal:end]:
        h = ((h << 1) + gear[b]) & _M64
        i += 1
        if not h & mask_l:
            return i
    return end


def cdc_spans(
    stream: BinaryIO, min_size: int = CDC_MIN, avg: int = CDC_AVG, max_size: int = CDC_MAX
) -> Iterator[tuple[Span, bytes]]:
    """Content-defined spans of a stream with their bytes, reading ``_READ`` at a time."""
    buf = b""
    pos = 0  # start of the unconsumed part of buf
    offset = 0  # file offset of buf[pos]
    eof = False
    while True:
        if not eof and len(buf) - pos < max_size:
            more = stream.read(_READ)
            if more:
                buf = buf[pos:] + more
                pos = 0
            else:
                eof = True
            continue
        if pos >= len(buf):
            return
        window = memoryview(buf)[pos : pos + max_size]
        cut = cdc_cut(window, min_size, avg, max_size)
        yield Span(offset, cut), bytes(window[:cut])
        offset += cut
        pos += cut


# --- whole files ----------------------------------------------------------------------


def is_safetensors(path: str | Path) -> bool:
    return str(path).endswith(".safetensors")


def chunk_file(path: Path, rel: str | None = None, max_piece: int = MAX_TENSOR_PIECE) -> FileChunks:
    """Cut one file and digest every chunk and the whole file (one sequential read)."""
    whole = hashlib.sha256()
    chunks: list[Chunk] = []
    with path.open("rb") as f:
        size = path.stat().st_size
        if is_safetensors(path):
            header_len = safetensors_header_size(f.read(8))
            f.seek(0)
            header = f.read(header_len)
            if len(header) != header_len:
                raise ChunkingError(f"{path}: truncated safetensors header")
            f.seek(0)
            for span in safetensors_spans(header, size, max_piece=max_piece):
                h = hashlib.sha256()
                left = span.size
                while left:
                    block = f.read(min(left, _READ))
                    if not block:
                        raise ChunkingError(f"{path}: file shrank while being read")
                    h.update(block)
                    whole.update(block)
                    left -= len(block)
                chunks.append(Chunk(span.offset, span.size, "sha256:" + h.hexdigest()))
        else:
            for span, data in cdc_spans(f):
                whole.update(data)
                chunks.append(Chunk(span.offset, span.size, digest_bytes(data)))
    return FileChunks(rel if rel is not None else path.name, size, "sha256:" + whole.hexdigest(), tuple(chunks))


def model_files(root: Path) -> list[tuple[str, Path]]:
    """Every regular file under ``root`` as ``(posix relative path, path)``, sorted."""
    out: list[tuple[str, Path]] = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            rel = p.relative_to(root).as_posix()
            if rel.split("/")[0] in {".git", ".cache"}:
                continue
            out.append((rel, p))
    return out

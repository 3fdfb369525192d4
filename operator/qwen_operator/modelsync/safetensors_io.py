"""Write and read the safetensors container format (standard library only, no torch).

Tests and the model-sync bench build Qwen-shaped checkpoints, and tests check that a
pulled file still parses; the format is simple enough to own: an 8-byte little-endian
header length, a JSON header mapping each tensor name to its dtype, shape and
``data_offsets`` (relative to the data section), then the raw tensor bytes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from pathlib import Path

DTYPE_SIZES = {"BF16": 2, "F16": 2, "F32": 4, "I64": 8, "I32": 4, "U8": 1}


def header_bytes(tensors: Iterable[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str] | None = None) -> bytes:
    """The header for tensors laid out back to back in the given order (8-byte aligned)."""
    meta: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, dtype, shape in tensors:
        size = DTYPE_SIZES[dtype]
        for dim in shape:
            size *= dim
        meta[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(meta, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header with spaces to 8 bytes
    return struct.pack("<Q", len(raw)) + raw


def write(
    path: Path, tensors: list[tuple[str, str, tuple[int, ...], bytes]], metadata: dict[str, str] | None = None
) -> None:
    """Write ``(name, dtype, shape, data)`` tensors in order."""
    header = header_bytes([(n, d, s) for n, d, s, _ in tensors], metadata)
    with path.open("wb") as f:
        f.write(header)
        for name, dtype, shape, data in tensors:
            expected = DTYPE_SIZES[dtype]
            for dim in shape:
                expected *= dim
            if len(data) != expected:
                raise ValueError(f"{name}: {len(data)} bytes for shape {shape} {dtype} (expected {expected})")
            f.write(data)


def read_header(path: Path) -> dict[str, dict[str, object]]:
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        meta: dict[str, dict[str, object]] = json.loads(f.read(n))
    return meta

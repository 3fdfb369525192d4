"""Layer-diff model sync benchmark: bytes moved per update type, and pull throughput.

Builds a Qwen3-shaped safetensors checkpoint (Qwen3-14B tensor names and proportions,
40 layers, widths scaled by ``--scale``; the default 0.18 gives ~0.9 GB in 4 shards),
pushes it and five updates to each backend -- a real S3 server (versitygw) and a real OCI
registry (CNCF distribution), both on 127.0.0.1; ``--backend s3|oci`` runs one, the
default both side by side in the same run -- and for each update pulls it onto a node
that holds the base version, printing:

* ours: bytes our pull fetched (chunks + manifest + version pointer; on OCI the manifest
  and the chunk index),
* minimum: bytes of chunks the node lacks (the physical limit),
* file-level: bytes a file-level diff would move (skip files whose sha256 is unchanged),
* full: a full download.

Then cold pulls (``--repeat`` of them, each onto an empty node) against raw GETs of the
same blobs from the same server measured around each pull, and the floors any verified,
durable pull stands on (GET + sha256; GET + sha256 + a durable write), and sha256
verification throughput. Figures are printed, never asserted.

Raw GET is the fastest of: a plain client's GETs with bytes discarded (S3: boto3
``iter_chunks``; OCI: urllib3 ``GET /v2/<repo>/blobs/<digest>`` streamed), before and after
each pull, and the pull's own read path (``get_blob`` of the backend) with bytes
discarded -- so a faster reader in the pull cannot flatter the ratio. Each backend's
ratio is against raw GETs from its own server. The server binaries come from
``QWEN_OPERATOR_CACHE`` (default ``~/.cache/qwen-operator``; ``make s3server
ociregistry``); ``--workdir`` puts the checkpoint, the stores and the node caches on the
disk to measure.

    .venv/bin/python bench/modelsync_bench.py [--backend s3|oci] [--scale 0.18] [--repeat 3] [--workdir /tmp/msb]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import urllib3

from qwen_operator.modelsync.backend import ModelRegistry, open_registry
from qwen_operator.modelsync.manifest import Manifest, diff
from qwen_operator.modelsync.ociserver import OCIServer
from qwen_operator.modelsync.pull import pull
from qwen_operator.modelsync.push import push
from qwen_operator.modelsync.registry import Registry, make_client
from qwen_operator.modelsync.s3server import S3Server
from qwen_operator.modelsync.store import start_writeback
from qwen_operator.modelsync.synthetic import Checkpoint, Shape

MB = 1e6
WORKERS = 8


def mb(n: float) -> str:
    return f"{n / MB:,.1f} MB" if n >= 100_000 else f"{n / 1e3:,.1f} kB"


@dataclass
class Backend:
    """One registry server under test and a plain client reading its blobs."""

    name: str
    url: str
    stop: Callable[[], None]
    raw_fetch: Callable[[str], Iterator[bytes]]  # a plain client's GET of one blob, 1 MiB blocks
    cold_runs: list[tuple[float, float, float, float, float]] = field(default_factory=list)
    rows: list[tuple[str, int, int, int, int, int, int, float]] = field(default_factory=list)
    floors: tuple[float, float, float] = (0.0, 0.0, 0.0)
    push_s: float = 0.0
    node: Path = Path()

    def registry(self) -> ModelRegistry:
        return open_registry(self.url, workers=WORKERS)  # as the CLI sizes it


def start_s3(work: Path) -> Backend:
    server = S3Server(data_dir=work / "s3").start()
    os.environ.update(server.env())
    client = make_client(max_connections=WORKERS * 2)
    client.create_bucket(Bucket="bench")
    url = "s3://bench/qwen3-bench"
    reg = Registry(url, client)

    def fetch(d: str) -> Iterator[bytes]:
        yield from client.get_object(Bucket="bench", Key=reg.blob_key(d))["Body"].iter_chunks(1 << 20)

    return Backend("s3", url, server.stop, fetch)


def start_oci(work: Path) -> Backend:
    server = OCIServer(data_dir=work / "oci" / "data").start()
    pool = urllib3.PoolManager(maxsize=WORKERS * 2)
    repo = "models/qwen3-bench"

    def fetch(d: str) -> Iterator[bytes]:
        resp = pool.request("GET", f"{server.base_url}/v2/{repo}/blobs/{d}", preload_content=False)
        if resp.status != 200:
            raise RuntimeError(f"GET blob {d}: HTTP {resp.status}")
        yield from resp.stream(1 << 20, decode_content=False)
        resp.release_conn()

    return Backend("oci", server.url(repo), server.stop, fetch)


def raw_get_throughput(be: Backend, digests: list[str], mode: str = "discard", out: Path | None = None) -> float:
    """Parallel GETs of the given blobs: bytes discarded, or sha256'd, or sha256'd and
    written durably (fdatasync) to ``out`` -- the floors any verified pull stands on."""

    def get(d: str) -> int:
        n = 0
        h = hashlib.sha256()
        fd = os.open(out / d[7:], os.O_WRONLY | os.O_CREAT, 0o644) if out is not None else -1
        for block in be.raw_fetch(d):
            n += len(block)
            if mode != "discard":
                h.update(block)
            if fd >= 0:
                os.write(fd, block)
        if fd >= 0:
            os.fdatasync(fd)
            os.close(fd)
        return n

    start = time.perf_counter()
    with ThreadPoolExecutor(WORKERS) as pool:
        total = sum(pool.map(get, digests))
    return total / (time.perf_counter() - start)


def raw_get_pull_path(be: Backend, digests: list[str]) -> float:
    """Parallel GETs through the pull's read path (the backend's ``get_blob``), bytes discarded."""
    reg = be.registry()

    def get(d: str) -> int:
        return sum(len(block) for block in reg.get_blob(d))

    start = time.perf_counter()
    with ThreadPoolExecutor(WORKERS) as pool:
        total = sum(pool.map(get, digests))
    return total / (time.perf_counter() - start)


def write_floor(be: Backend, manifest: Manifest, out: Path) -> float:
    """The pull's I/O in a bare loop: each chunk GET, sha256'd in the download thread and
    written once at its offset of a full-size file, writeback started per chunk, one
    fdatasync per file at the end. A reference for what the disk and CPUs allow, not a hard
    bound (the pull hashes in other threads than it downloads in, so it can beat it)."""
    reg = be.registry()
    out.mkdir()
    fds: list[int] = []
    jobs: list[tuple[int, int, str, int]] = []
    for i, f in enumerate(manifest.files):
        fd = os.open(out / str(i), os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(fd, f.size)
        fds.append(fd)
        offset = 0
        for c in f.chunks:
            jobs.append((fd, offset, c.digest, c.size))
            offset += c.size

    def get(job: tuple[int, int, str, int]) -> int:
        fd, offset, d, size = job
        h = hashlib.sha256()
        n = 0
        for block in reg.get_blob(d):
            h.update(block)
            os.pwrite(fd, block, offset + n)
            n += len(block)
        start_writeback(fd, offset, size)
        return n

    start = time.perf_counter()
    with ThreadPoolExecutor(WORKERS) as pool:
        total = sum(pool.map(get, jobs))
        list(pool.map(os.fdatasync, fds))
    elapsed = time.perf_counter() - start
    for fd in fds:
        os.close(fd)
    shutil.rmtree(out)
    return total / elapsed


def cold_pulls(be: Backend, manifest: Manifest, work: Path, repeat: int) -> None:
    """Cold pulls (full download), each between raw GETs of the same blobs, same server."""
    blobs = list(manifest.unique_chunks())
    be.node = work / f"node-base-{be.name}"
    for i in range(max(1, repeat)):
        # The bench just wrote the checkpoint and the store (GBs of dirty pages): flush them
        # first, or the pull's fdatasyncs would wait for that unrelated writeback.
        os.sync()
        before = raw_get_throughput(be, blobs)
        dest = be.node if i == 0 else work / f"node-cold{i}-{be.name}"
        reg = be.registry()
        t = time.perf_counter()
        cold = pull(reg, dest, "qwen", version="base", keep=10, workers=WORKERS, out=io.StringIO())
        pull_s = time.perf_counter() - t
        after = raw_get_throughput(be, blobs)
        path_bps = raw_get_pull_path(be, blobs)
        be.cold_runs.append((cold.bytes_fetched / pull_s, before, after, path_bps, pull_s))
        if i:
            shutil.rmtree(dest)
    hashed_bps = raw_get_throughput(be, blobs, mode="sha256")
    (work / "raw-write").mkdir()
    written_bps = raw_get_throughput(be, blobs, mode="write", out=work / "raw-write")
    shutil.rmtree(work / "raw-write")
    be.floors = (hashed_bps, written_bps, write_floor(be, manifest, work / "floor-write"))


def report(be: Backend, raw_bytes: int, chunks: int) -> tuple[float, float, float, float]:
    """Print one backend's figures; returns (worst bytes ratio, pull MB/s, raw MB/s, pull/raw)."""
    print()
    print(f"== {be.name}: {be.url} ==")
    print(
        f"{'update':<26} {'ours':>11} {'minimum':>11} {'manifest':>9} {'ours/(min+man)':>15} "
        f"{'file-level':>11} {'full':>11} {'pushed':>11} {'pull s':>7}"
    )
    worst = 0.0
    for label, ours, minimum, meta, file_level, full, pushed_b, dt in be.rows:
        ratio = ours / (minimum + meta) if minimum + meta else float("nan")
        worst = max(worst, ratio)
        print(
            f"{label:<26} {mb(ours):>11} {mb(minimum):>11} {meta / 1e3:>7.1f}kB {ratio:>15.3f} "
            f"{mb(file_level):>11} {mb(full):>11} {mb(pushed_b):>11} {dt:>7.2f}"
        )
    print(f"cold pulls of {mb(raw_bytes)} in {chunks} chunks, {WORKERS} workers, on {os.cpu_count()} cores:")
    ratios = []
    plain = "boto3" if be.name == "s3" else "urllib3"
    for n, (pull_bps, before, after, path_bps, pull_s) in enumerate(be.cold_runs, 1):
        raw = max(before, after, path_bps)
        ratios.append((pull_bps / raw, pull_bps, raw))
        print(
            f"  run {n}: pull {pull_s:.2f}s = {pull_bps / MB:,.0f} MB/s; raw GET {raw / MB:,.0f} MB/s "
            f"({plain} before {before / MB:,.0f}, after {after / MB:,.0f}; pull's reader {path_bps / MB:,.0f}) "
            f"-> pull at {100 * pull_bps / raw:.0f}% of raw GET"
        )
    ratio, pull_bps, raw = sorted(ratios)[len(ratios) // 2]
    print(
        f"cold pull (median run): {pull_bps / MB:,.0f} MB/s = {100 * ratio:.0f}% of raw {be.name} blob GET "
        f"{raw / MB:,.0f} MB/s (fetch + verify every file + durable + assemble)"
    )
    hashed_bps, written_bps, floor_bps = be.floors
    print(
        f"floors: GET + sha256 {hashed_bps / MB:,.0f} MB/s ({100 * hashed_bps / raw:.0f}% of raw); "
        f"GET + sha256 + durable write, fdatasync per blob {written_bps / MB:,.0f} MB/s "
        f"({100 * written_bps / raw:.0f}% of raw); GET + sha256 + one write at its offset + one fdatasync "
        f"per file (bare loop) {floor_bps / MB:,.0f} MB/s ({100 * floor_bps / raw:.0f}% of raw)"
    )
    print(
        f"pull at {100 * pull_bps / hashed_bps:.0f}% of GET + sha256, {100 * pull_bps / floor_bps:.0f}% of the "
        f"bare durable-write loop, {100 * pull_bps / written_bps:.0f}% of GET + sha256 + fdatasync per blob"
    )
    return worst, pull_bps, raw, ratio


def main() -> None:
    global WORKERS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=("s3", "oci", "both"), default="both", help="registry backend(s) to run")
    ap.add_argument("--scale", type=float, default=0.18, help="width factor vs Qwen3-14B (0.18 ~ 0.9 GB)")
    ap.add_argument("--layers", type=int, default=40)
    ap.add_argument("--workdir", type=Path, default=None, help="where the stores and node caches live")
    ap.add_argument("--repeat", type=int, default=3, help="cold pulls, each with its own raw GET figures")
    ap.add_argument("--workers", type=int, default=WORKERS, help="parallel GETs, for the pull and for raw GET alike")
    args = ap.parse_args()
    WORKERS = args.workers
    work = args.workdir or Path(tempfile.mkdtemp(prefix="modelsync-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    shape = Shape().scaled(args.scale, layers=args.layers)
    backends: list[Backend] = []
    try:
        for name in ("s3", "oci") if args.backend == "both" else (args.backend,):
            backends.append(start_s3(work) if name == "s3" else start_oci(work))
        base = Checkpoint(shape)
        t = time.perf_counter()
        base.write(work / "base")
        size = sum(p.stat().st_size for p in (work / "base").iterdir())
        print(
            f"checkpoint: {shape} -> {mb(size)} in {len(list((work / 'base').iterdir()))} files "
            f"(written in {time.perf_counter() - t:.1f}s)"
        )
        manifest: Manifest | None = None
        for be in backends:
            t = time.perf_counter()
            pushed = push(be.registry(), work / "base", "base", out=io.StringIO())
            be.push_s = time.perf_counter() - t
            manifest = pushed.manifest
            print(f"push base to {be.name}: {mb(pushed.bytes_uploaded)} in {be.push_s:.1f}s")
            cold_pulls(be, pushed.manifest, work, args.repeat)
        assert manifest is not None

        updates = {
            "config/tokenizer only": base.config_only(),
            "last 4 layers fine-tuned": base.last_layers(4),
            "LoRA merged into q/v": base.lora_qv(),
            "new tokens (+256 rows)": base.new_tokens(256),
            "full fine-tune": base.full(),
        }
        for i, (label, ck) in enumerate(updates.items()):
            src = work / f"u{i}"
            ck.write(src)
            for be in backends:
                up = push(be.registry(), src, f"u{i}", out=io.StringIO())
                # Each update starts from a node holding exactly the base version (hard-link copy).
                dest = work / f"node-u{i}-{be.name}"
                subprocess.run(["cp", "-al", str(be.node), str(dest)], check=True)
                reg = be.registry()
                os.sync()  # as above: don't time the writeback of the update just generated
                t = time.perf_counter()
                r = pull(reg, dest, "qwen", version=f"u{i}", keep=10, workers=WORKERS, out=io.StringIO())
                dt = time.perf_counter() - t
                d = diff(manifest, up.manifest)
                meta = reg.stats.bytes_downloaded - r.bytes_fetched
                row = (label, reg.stats.bytes_downloaded, d.bytes_to_move, meta, d.file_level_bytes)
                be.rows.append((*row, d.total_bytes, up.bytes_uploaded, dt))
                shutil.rmtree(dest)
            shutil.rmtree(src)

        raw_bytes = sum(manifest.unique_chunks().values())
        summary = [(be.name, *report(be, raw_bytes, len(manifest.unique_chunks()))) for be in backends]
        print()
        print("side by side (same checkpoint, same run; ratios against each server's own raw blob GETs):")
        print(f"{'backend':<8} {'worst ours/(min+manifest)':>26} {'cold pull':>12} {'raw GET':>12} {'pull/raw':>9}")
        for name, worst, pull_bps, raw, ratio in summary:
            print(f"{name:<8} {worst:>26.3f} {pull_bps / MB:>8,.0f} MB/s {raw / MB:>8,.0f} MB/s {100 * ratio:>8.0f}%")
        buf = os.urandom(64 << 20)
        t = time.perf_counter()
        for _ in range(8):
            hashlib.sha256(buf).digest()
        mem = 8 * len(buf) / (time.perf_counter() - t)
        t = time.perf_counter()
        n = 0
        for p in (backends[0].node / "models/qwen/current").iterdir():
            with p.open("rb") as f:
                h = hashlib.sha256()
                while block := f.read(8 << 20):
                    h.update(block)
                    n += len(block)
        print(
            f"sha256 verification: {mem / MB:,.0f} MB/s in memory, {n / (time.perf_counter() - t) / MB:,.0f} MB/s "
            "reading the version files (page cache)"
        )
    finally:
        for be in backends:
            be.stop()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Layer-diff model sync benchmark: bytes moved per update type, and pull throughput.

Builds a Qwen3-shaped safetensors checkpoint (Qwen3-14B tensor names and proportions,
40 layers, widths scaled by ``--scale``; the default 0.18 gives ~0.9 GB in 4 shards),
pushes it and five updates to a real S3 server (versitygw on 127.0.0.1), and for each
update pulls it onto a node that holds the base version, printing:

* ours: bytes our pull fetched (chunks + manifest + version pointer),
* minimum: bytes of chunks the node lacks (the physical limit),
* file-level: bytes a file-level diff would move (skip files whose sha256 is unchanged),
* full: a full download.

Then cold pulls (``--repeat`` of them, each onto an empty node) against raw GETs of the
same blobs from the same server measured around each pull, and the floors any verified,
durable pull stands on (GET + sha256; GET + sha256 + a durable write), and sha256
verification throughput. Figures are printed, never asserted.

Raw GET is the fastest of: boto3 ``iter_chunks`` with bytes discarded (before and after
each pull), and the pull's own read path (``Registry.get_blob``) with bytes discarded --
so a faster reader in the pull cannot flatter the ratio. The S3 server binary comes from
``QWEN_OPERATOR_CACHE`` (default ``~/.cache/qwen-operator``); ``--workdir`` puts the
checkpoint, the bucket and the node caches on the disk to measure.

    .venv/bin/python bench/modelsync_bench.py [--scale 0.18] [--repeat 3] [--workdir /tmp/msb]
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from qwen_operator.modelsync.manifest import Manifest, diff
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


def raw_get_throughput(reg: Registry, digests: list[str], mode: str = "discard", out: Path | None = None) -> float:
    """Parallel GETs of the given blobs: bytes discarded, or sha256'd, or sha256'd and
    written durably (fdatasync) to ``out`` -- the floors any verified pull stands on."""
    client = make_client(max_connections=WORKERS * 2)

    def get(d: str) -> int:
        body = client.get_object(Bucket=reg.url.bucket, Key=reg.blob_key(d))["Body"]
        n = 0
        h = hashlib.sha256()
        fd = os.open(out / d[7:], os.O_WRONLY | os.O_CREAT, 0o644) if out is not None else -1
        for block in body.iter_chunks(1 << 20):
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


def raw_get_pull_path(url: str, digests: list[str]) -> float:
    """Parallel GETs through the pull's read path (``Registry.get_blob``), bytes discarded."""
    reg = Registry(url, make_client(max_connections=WORKERS * 2))

    def get(d: str) -> int:
        return sum(len(block) for block in reg.get_blob(d))

    start = time.perf_counter()
    with ThreadPoolExecutor(WORKERS) as pool:
        total = sum(pool.map(get, digests))
    return total / (time.perf_counter() - start)


def write_floor(url: str, manifest: Manifest, out: Path) -> float:
    """The pull's I/O in a bare loop: each chunk GET, sha256'd in the download thread and
    written once at its offset of a full-size file, writeback started per chunk, one
    fdatasync per file at the end. A reference for what the disk and CPUs allow, not a hard
    bound (the pull hashes in other threads than it downloads in, so it can beat it)."""
    reg = Registry(url, make_client(max_connections=WORKERS * 2))
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


def main() -> None:
    global WORKERS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=0.18, help="width factor vs Qwen3-14B (0.18 ~ 0.9 GB)")
    ap.add_argument("--layers", type=int, default=40)
    ap.add_argument("--workdir", type=Path, default=None, help="where the bucket and node caches live")
    ap.add_argument("--repeat", type=int, default=3, help="cold pulls, each with its own raw GET figures")
    ap.add_argument("--workers", type=int, default=WORKERS, help="parallel GETs, for the pull and for raw GET alike")
    args = ap.parse_args()
    WORKERS = args.workers
    work = args.workdir or Path(tempfile.mkdtemp(prefix="modelsync-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    shape = Shape().scaled(args.scale, layers=args.layers)
    server = S3Server(data_dir=work / "s3").start()
    os.environ.update(server.env())
    try:
        make_client().create_bucket(Bucket="bench")
        url = "s3://bench/qwen3-bench"
        base = Checkpoint(shape)
        t = time.perf_counter()
        base.write(work / "base")
        size = sum(p.stat().st_size for p in (work / "base").iterdir())
        print(
            f"checkpoint: {shape} -> {mb(size)} in {len(list((work / 'base').iterdir()))} files "
            f"(written in {time.perf_counter() - t:.1f}s)"
        )
        t = time.perf_counter()
        pushed = push(Registry(url), work / "base", "base", out=io.StringIO())
        print(f"push base: {mb(pushed.bytes_uploaded)} in {time.perf_counter() - t:.1f}s")

        # Cold pulls (full download), each between raw GETs of the same blobs, same server.
        blobs = list(pushed.manifest.unique_chunks())
        raw_bytes = sum(pushed.manifest.unique_chunks().values())
        cold_runs: list[tuple[float, float, float, float, float]] = []  # pull, raw before, after, pull path, s
        node = work / "node-base"
        for i in range(max(1, args.repeat)):
            # The bench just wrote the checkpoint and the bucket (GBs of dirty pages): flush them
            # first, or the pull's fdatasyncs would wait for that unrelated writeback.
            os.sync()
            before = raw_get_throughput(Registry(url), blobs)
            dest = node if i == 0 else work / f"node-cold{i}"
            reg = Registry(url, make_client(max_connections=WORKERS * 2))  # as the CLI sizes it
            t = time.perf_counter()
            cold = pull(reg, dest, "qwen", version="base", keep=10, workers=WORKERS, out=io.StringIO())
            pull_s = time.perf_counter() - t
            after = raw_get_throughput(Registry(url), blobs)
            path_bps = raw_get_pull_path(url, blobs)
            cold_runs.append((cold.bytes_fetched / pull_s, before, after, path_bps, pull_s))
            if i:
                shutil.rmtree(dest)
        hashed_bps = raw_get_throughput(Registry(url), blobs, mode="sha256")
        (work / "raw-write").mkdir()
        written_bps = raw_get_throughput(Registry(url), blobs, mode="write", out=work / "raw-write")
        shutil.rmtree(work / "raw-write")
        floor_bps = write_floor(url, pushed.manifest, work / "floor-write")

        updates = {
            "config/tokenizer only": base.config_only(),
            "last 4 layers fine-tuned": base.last_layers(4),
            "LoRA merged into q/v": base.lora_qv(),
            "new tokens (+256 rows)": base.new_tokens(256),
            "full fine-tune": base.full(),
        }
        rows = []
        for i, (label, ck) in enumerate(updates.items()):
            src = work / f"u{i}"
            ck.write(src)
            up = push(Registry(url), src, f"u{i}", out=io.StringIO())
            shutil.rmtree(src)
            # Each update starts from a node holding exactly the base version (hard-link copy).
            dest = work / f"node-u{i}"
            subprocess.run(["cp", "-al", str(node), str(dest)], check=True)
            reg = Registry(url, make_client(max_connections=WORKERS * 2))
            os.sync()  # as above: don't time the writeback of the update just generated
            t = time.perf_counter()
            r = pull(reg, dest, "qwen", version=f"u{i}", keep=10, workers=WORKERS, out=io.StringIO())
            dt = time.perf_counter() - t
            d = diff(pushed.manifest, up.manifest)
            meta = reg.stats.bytes_downloaded - r.bytes_fetched
            rows.append(
                (
                    label,
                    reg.stats.bytes_downloaded,
                    d.bytes_to_move,
                    meta,
                    d.file_level_bytes,
                    d.total_bytes,
                    up.bytes_uploaded,
                    dt,
                )
            )
            shutil.rmtree(dest)

        print()
        print(
            f"{'update':<26} {'ours':>11} {'minimum':>11} {'manifest':>9} {'ours/(min+man)':>15} "
            f"{'file-level':>11} {'full':>11} {'pushed':>11} {'pull s':>7}"
        )
        for label, ours, minimum, meta, file_level, full, pushed_b, dt in rows:
            ratio = ours / (minimum + meta) if minimum + meta else float("nan")
            print(
                f"{label:<26} {mb(ours):>11} {mb(minimum):>11} {meta / 1e3:>7.1f}kB {ratio:>15.3f} "
                f"{mb(file_level):>11} {mb(full):>11} {mb(pushed_b):>11} {dt:>7.2f}"
            )
        print()
        print(f"cold pulls of {mb(raw_bytes)} in {len(blobs)} chunks, {WORKERS} workers, on {os.cpu_count()} cores:")
        ratios = []
        for n, (pull_bps, before, after, path_bps, pull_s) in enumerate(cold_runs, 1):
            raw = max(before, after, path_bps)
            ratios.append((pull_bps / raw, pull_bps, raw))
            print(
                f"  run {n}: pull {pull_s:.2f}s = {pull_bps / MB:,.0f} MB/s; raw GET {raw / MB:,.0f} MB/s "
                f"(boto3 before {before / MB:,.0f}, after {after / MB:,.0f}; pull's reader {path_bps / MB:,.0f}) "
                f"-> pull at {100 * pull_bps / raw:.0f}% of raw GET"
            )
        ratio, pull_bps, raw = sorted(ratios)[len(ratios) // 2]
        print(
            f"cold pull (median run): {pull_bps / MB:,.0f} MB/s = {100 * ratio:.0f}% of raw S3 GET "
            f"{raw / MB:,.0f} MB/s (fetch + verify every file + durable + assemble)"
        )
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
        buf = os.urandom(64 << 20)
        t = time.perf_counter()
        for _ in range(8):
            hashlib.sha256(buf).digest()
        mem = 8 * len(buf) / (time.perf_counter() - t)
        t = time.perf_counter()
        n = 0
        for p in (node / "models/qwen/current").iterdir():
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
        server.stop()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

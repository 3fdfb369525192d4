"""Pull failures against the real S3 server: corruption, interruption, concurrency."""

from __future__ import annotations

import errno
import filecmp
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qwen_operator.modelsync import pull as pull_module
from qwen_operator.modelsync.manifest import ChunkRef, FileEntry, Manifest
from qwen_operator.modelsync.pull import PullError, pull
from qwen_operator.modelsync.push import push
from qwen_operator.modelsync.registry import READ_BLOCK, Registry, TransientError
from qwen_operator.modelsync.store import covered, read_journal
from qwen_operator.modelsync.synthetic import Checkpoint, Shape
from qwen_operator.testing.s3 import S3Bucket

pytestmark = pytest.mark.s3

SHAPE = Shape().scaled(0.05, layers=4, vocab=4096)
QWENCTL = [sys.executable, "-c", "from qwen_operator.cli import main; raise SystemExit(main())"]


def same_tree(a: Path, b: Path) -> bool:
    fa = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    fb = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return fa == fb and all(filecmp.cmp(a / p, b / p, shallow=False) for p in fa)


def kept_locally(cache: Path, manifest: Manifest) -> tuple[int, int, int]:
    """What an interrupted pull left that a resume must not fetch again: ``(bytes, chunks
    fully kept, chunks partly kept)`` -- committed blobs plus journalled ranges of partials."""
    kept = full = part = 0
    for f in manifest.files:
        blob = cache / "blobs/sha256" / f.sha256[7:]
        partial = cache / "tmp" / f"{f.sha256[7:]}.partial"
        if blob.is_file():
            kept, full = kept + f.size, full + len(f.chunks)
            continue
        ranges = read_journal(partial.with_suffix(".journal")) if partial.is_file() else []
        offset = 0
        for c in f.chunks:
            have = covered(ranges, offset, c.size)
            kept += have
            full += have == c.size
            part += 0 < have < c.size
            offset += c.size
    return kept, full, part


class FailingRegistry(Registry):
    """A real registry client whose connection "drops" after ``budget`` downloaded bytes."""

    def __init__(self, url: str, budget: int) -> None:
        super().__init__(url)
        self.budget = budget
        self.passed = 0

    def get_blob(self, digest: str, start: int = 0, block_size: int = READ_BLOCK) -> Iterator[memoryview]:
        for block in super().get_blob(digest, start, block_size):
            if self.passed + len(block) > self.budget:
                raise ConnectionResetError("injected: connection reset mid-pull")
            self.passed += len(block)
            yield block


@pytest.fixture
def pushed(s3_bucket: S3Bucket, tmp_path: Path) -> dict[str, tuple[Path, str, Manifest]]:
    base = Checkpoint(SHAPE)
    out = {}
    for name, ck in (("v1", base), ("v2", base.lora_qv().config_only())):
        src = tmp_path / f"src-{name}"
        ck.write(src)
        r = push(Registry(s3_bucket.registry_url()), src, name)
        out[name] = (src, r.digest, r.manifest)
    return out


def test_corrupt_blob_fails_clearly_and_keeps_current(
    s3_bucket: S3Bucket, pushed: dict[str, tuple[Path, str, Manifest]], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    reg = s3_bucket.registry_url()
    pull(Registry(reg), cache, "qwen", version="v1")
    old = {f.path: f for f in pushed["v1"][2].files}
    new_chunk = next(c for f in pushed["v2"][2].files for c in f.chunks if c not in old.get(f.path, f).chunks)
    blob = s3_bucket.server.data_dir / s3_bucket.name / "models/qwen3-test/blobs/sha256" / new_chunk.digest[7:]
    blob.write_bytes(b"\xff" * blob.stat().st_size)  # bit rot in the bucket, same size
    r = subprocess.run(
        [*QWENCTL, "model", "pull", "--registry", reg, "--version", "v2", "--cache", str(cache), "--name", "qwen"],
        env=s3_bucket.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert f"chunk {new_chunk.digest}" in r.stderr and "corrupt" in r.stderr and "current version left" in r.stderr
    assert same_tree(pushed["v1"][0], (cache / "models/qwen/current").resolve())


def test_interrupted_pull_resumes_without_refetching(
    s3_bucket: S3Bucket, pushed: dict[str, tuple[Path, str, Manifest]], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    need = pushed["v1"][2].unique_chunks()
    total = sum(need.values())
    broken = FailingRegistry(s3_bucket.registry_url(), budget=total // 2)
    with pytest.raises(PullError, match="connection reset"):
        pull(broken, cache, "qwen", version="v1", workers=1)
    assert not (cache / "models/qwen/current").exists()
    kept, _, _ = kept_locally(cache, pushed["v1"][2])
    assert kept == broken.passed  # every byte received was written and journalled
    assert 0 < kept < total
    resumed = Registry(s3_bucket.registry_url())
    result = pull(resumed, cache, "qwen", version="v1")
    # every byte crossed the network once: what the first attempt kept is never fetched again
    assert broken.passed + result.bytes_fetched == total
    assert same_tree(pushed["v1"][0], (cache / "models/qwen/current").resolve())


def test_killed_pull_process_resumes(
    s3_bucket: S3Bucket, pushed: dict[str, tuple[Path, str, Manifest]], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    total = sum(pushed["v1"][2].unique_chunks().values())
    args = ["model", "pull", "--registry", s3_bucket.registry_url(), "--version", "v1", "--cache", str(cache)]
    proc = subprocess.Popen(
        [*QWENCTL, *args, "--name", "qwen", "--limit-rate", "2M", "--workers", "2"],
        env=s3_bucket.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and kept_locally(cache, pushed["v1"][2])[0] < total // 4:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert not (cache / "models/qwen/current").exists()
    have, full, partly = kept_locally(cache, pushed["v1"][2])
    assert 0 < have < total
    gets_before = len(s3_bucket.requests("GET"))
    result = pull(Registry(s3_bucket.registry_url()), cache, "qwen", version="v1")
    assert result.bytes_fetched == total - have  # nothing the killed pull wrote is fetched again
    blob_gets = sum("/blobs/" in r[1] for r in s3_bucket.requests("GET")[gets_before:])
    # one GET per chunk not fully kept (a ranged one for a chunk the killed pull had begun)
    assert blob_gets == result.chunks_fetched == len(pushed["v1"][2].unique_chunks()) - full
    assert partly <= result.chunks_fetched
    assert same_tree(pushed["v1"][0], (cache / "models/qwen/current").resolve())


def test_concurrent_pulls_into_one_cache(
    s3_bucket: S3Bucket, pushed: dict[str, tuple[Path, str, Manifest]], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    reg = s3_bucket.registry_url()
    gets_before = len(s3_bucket.requests("GET"))
    procs = [
        subprocess.Popen(
            [*QWENCTL, "model", "pull", "--registry", reg, "--version", "v2", "--cache", str(cache), "--name", name],
            env=s3_bucket.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("qwen", "qwen", "qwen-b")
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    for name in ("qwen", "qwen-b"):
        assert same_tree(pushed["v2"][0], (cache / "models" / name / "current").resolve())
    # every chunk downloaded exactly once (server retries after a 5xx would show as non-2xx lines)
    blob_gets = [r[1] for r in s3_bucket.requests("GET")[gets_before:] if "/blobs/" in r[1] and r[2] in (200, 206)]
    assert len(blob_gets) == len(set(blob_gets)) == len(pushed["v2"][2].unique_chunks())
    assert not list((cache / "models/qwen").glob(".current.*"))  # no temp links left behind


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs: a real filesystem that runs out of space (v1 takes ~11 MB of it)."""
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"mounting a small tmpfs needs root: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_disk_full_fails_clearly_and_keeps_current(
    s3_bucket: S3Bucket, pushed: dict[str, tuple[Path, str, Manifest]], small_disk: Path, tmp_path: Path
) -> None:
    cache = small_disk / "cache"
    reg = s3_bucket.registry_url()
    pull(Registry(reg), cache, "qwen", version="v1")
    full = tmp_path / "src-v3"
    Checkpoint(SHAPE).full().write(full)
    push(Registry(reg), full, "v3")
    r = subprocess.run(
        [*QWENCTL, "model", "pull", "--registry", reg, "--version", "v3", "--cache", str(cache), "--name", "qwen"],
        env=s3_bucket.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "disk full" in r.stderr and "Traceback" not in r.stderr
    assert same_tree(pushed["v1"][0], (cache / "models/qwen/current").resolve())


class FlakyRegistry(Registry):
    """A real registry client whose every first GET of a blob breaks off half-way."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.broken: set[str] = set()
        self.passed = 0

    def get_blob(self, digest: str, start: int = 0, block_size: int = READ_BLOCK) -> Iterator[memoryview]:
        for i, block in enumerate(super().get_blob(digest, start, block_size)):
            if digest not in self.broken and i == 1:
                self.broken.add(digest)
                raise TransientError("injected: stream broke off")
            self.passed += len(block)
            yield block


def test_broken_streams_are_resumed_with_ranged_gets(
    s3_bucket: S3Bucket, pushed: dict[str, tuple[Path, str, Manifest]], tmp_path: Path
) -> None:
    flaky = FlakyRegistry(s3_bucket.registry_url())
    gets_before = len(s3_bucket.requests("GET"))
    result = pull(flaky, tmp_path / "cache", "qwen", version="v1")
    need = pushed["v1"][2].unique_chunks()
    assert flaky.broken  # chunks of more than one read block broke off once each...
    assert flaky.passed == result.bytes_fetched == sum(need.values())  # ...and resumed where it broke off
    ranged = [r for r in s3_bucket.requests("GET")[gets_before:] if "/blobs/" in r[1]]
    assert len(ranged) == len(need) + len(flaky.broken)
    assert same_tree(pushed["v1"][0], (tmp_path / "cache/models/qwen/current").resolve())


def test_disk_filling_up_mid_pull_fails_clearly_and_resumes(
    s3_bucket: S3Bucket,
    pushed: dict[str, tuple[Path, str, Manifest]],
    small_disk: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = small_disk / "cache"
    reg = s3_bucket.registry_url()
    pull(Registry(reg), cache, "qwen", version="v1")
    full = tmp_path / "src-v3"
    Checkpoint(SHAPE).full().write(full)
    push(Registry(reg), full, "v3")
    monkeypatch.setattr(pull_module, "_check_space", lambda root, need: None)  # reach the real ENOSPC
    with pytest.raises(PullError, match="disk full"):
        pull(Registry(reg), cache, "qwen", version="v3")
    assert same_tree(pushed["v1"][0], (cache / "models/qwen/current").resolve())
    subprocess.run(["mount", "-o", "remount,size=40m", str(small_disk)], check=True)
    pull(Registry(reg), cache, "qwen", version="v3")
    assert same_tree(full, (cache / "models/qwen/current").resolve())


def interrupt_half_way(s3_bucket: S3Bucket, cache: Path) -> int:
    """Pull v1 with the connection dropping half-way (one worker); returns bytes received."""
    total = sum(Registry(s3_bucket.registry_url()).get_manifest(s3_bucket_digest(s3_bucket)).unique_chunks().values())
    broken = FailingRegistry(s3_bucket.registry_url(), budget=total // 2)
    with pytest.raises(PullError):
        pull(broken, cache, "qwen", version="v1", workers=1)
    return broken.passed


def s3_bucket_digest(s3_bucket: S3Bucket, version: str = "v1") -> str:
    return Registry(s3_bucket.registry_url()).resolve(version=version)


def test_rotten_local_copies_are_fetched_again(
    s3_bucket: S3Bucket, pushed: dict[str, tuple[Path, str, Manifest]], tmp_path: Path
) -> None:
    """Bit rot on the node (same size, wrong bytes) in a committed blob and in a journalled
    chunk of a partial: the next pull finds both by digest and fetches just those again."""
    cache = tmp_path / "cache"
    manifest = pushed["v1"][2]
    total = sum(manifest.unique_chunks().values())
    interrupt_half_way(s3_bucket, cache)
    kept, _, _ = kept_locally(cache, manifest)
    victim = max((cache / "blobs/sha256").iterdir(), key=lambda p: p.stat().st_size)
    victim_size = victim.stat().st_size
    victim.chmod(0o644)
    victim.write_bytes(b"\0" * victim_size)
    f, offset, chunk = journalled_chunk(cache, manifest)
    with (cache / "tmp" / f"{f.sha256[7:]}.partial").open("r+b") as out:
        out.seek(offset)
        out.write(b"\xff" * chunk.size)
    err = io.StringIO()
    result = pull(Registry(s3_bucket.registry_url()), cache, "qwen", version="v1", out=err)
    assert result.bytes_fetched == total - kept + victim_size + chunk.size
    assert "damaged" in err.getvalue()
    assert same_tree(pushed["v1"][0], (cache / "models/qwen/current").resolve())


def journalled_chunk(cache: Path, manifest: Manifest) -> tuple[FileEntry, int, ChunkRef]:
    """A chunk that a partial's journal says is written."""
    for f in manifest.files:
        journal = cache / "tmp" / f"{f.sha256[7:]}.journal"
        ranges = read_journal(journal)
        offset = 0
        for c in f.chunks:
            if covered(ranges, offset, c.size) == c.size:
                return f, offset, c
            offset += c.size
    raise AssertionError("no journalled chunk")


def test_crash_before_the_durability_point_heals(
    s3_bucket: S3Bucket, pushed: dict[str, tuple[Path, str, Manifest]], tmp_path: Path
) -> None:
    """A power cut after chunks were written and blobs renamed but before anything was
    synced: committed names may point at empty files and journalled ranges at zeros. The
    next pull notices (size, digest), fetches exactly what was lost and succeeds."""
    cache = tmp_path / "cache"
    manifest = pushed["v1"][2]
    total = sum(manifest.unique_chunks().values())
    interrupt_half_way(s3_bucket, cache)
    kept, _, _ = kept_locally(cache, manifest)
    lost = 0
    for blob in (cache / "blobs/sha256").iterdir():  # what delayed allocation leaves after a crash
        lost += blob.stat().st_size
        blob.chmod(0o644)
        os.truncate(blob, 0)
    f, offset, chunk = journalled_chunk(cache, manifest)
    with (cache / "tmp" / f"{f.sha256[7:]}.partial").open("r+b") as out:
        out.seek(offset)
        out.write(b"\0" * chunk.size)  # the journal reached the disk, this chunk's data did not
    lost += chunk.size
    result = pull(Registry(s3_bucket.registry_url()), cache, "qwen", version="v1")
    assert result.bytes_fetched == total - kept + lost
    assert same_tree(pushed["v1"][0], (cache / "models/qwen/current").resolve())


def test_current_moves_only_after_everything_is_durable(
    s3_bucket: S3Bucket, pushed: dict[str, tuple[Path, str, Manifest]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    reg = s3_bucket.registry_url()
    pull(Registry(reg), cache, "qwen", version="v1")
    synced: list[str] = []
    real = os.fdatasync

    def failing_fdatasync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        if "/staging/" in synced[-1]:
            raise OSError(errno.EIO, "injected: I/O error at the durability point")
        real(fd)

    monkeypatch.setattr(os, "fdatasync", failing_fdatasync)
    with pytest.raises(PullError, match="I/O error"):
        pull(Registry(reg), cache, "qwen", version="v2")
    assert same_tree(pushed["v1"][0], (cache / "models/qwen/current").resolve())
    assert any("/blobs/" in p or "/tmp/" in p for p in synced)  # each built file was synced before its rename
    monkeypatch.setattr(os, "fdatasync", real)
    pull(Registry(reg), cache, "qwen", version="v2")
    assert same_tree(pushed["v2"][0], (cache / "models/qwen/current").resolve())


def test_a_kept_file_with_the_right_size_but_wrong_bytes_is_not_shared_into_the_next_version(
    s3_bucket: S3Bucket, pushed: dict[str, tuple[Path, str, Manifest]], tmp_path: Path
) -> None:
    """#11 item 3: files of a kept version are re-verified by digest, never by size, before the next
    version shares them (a tenant or bit rot could have changed one in place)."""
    cache = tmp_path / "cache"
    reg = Registry(s3_bucket.registry_url())
    pull(reg, cache, "qwen", version="v1")
    v1 = {f.path: f for f in pushed["v1"][2].files}
    shared = [f for f in pushed["v2"][2].files if f.path in v1 and v1[f.path].sha256 == f.sha256]
    victim = max(shared, key=lambda f: f.size)  # unchanged by the fine-tune: v2 would hard-link it
    kept_file = (cache / "models/qwen/current").resolve() / victim.path
    kept_file.chmod(0o644)
    with kept_file.open("r+b") as out:  # same size, wrong bytes
        out.seek(victim.size // 2)
        out.write(b"\xa5" * min(64, victim.size - victim.size // 2))
    assert kept_file.stat().st_size == victim.size
    pull(reg, cache, "qwen", version="v2")
    new_file = (cache / "models/qwen/current").resolve() / victim.path
    assert new_file.stat().st_ino != kept_file.stat().st_ino  # rebuilt, not hard-linked from v1
    assert same_tree(pushed["v2"][0], (cache / "models/qwen/current").resolve())

"""Pull failures against the real S3 server: corruption, interruption, concurrency."""

from __future__ import annotations

import filecmp
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qwen_operator.modelsync.manifest import Manifest
from qwen_operator.modelsync.pull import PullError, pull
from qwen_operator.modelsync.push import push
from qwen_operator.modelsync.registry import Registry, TransientError
from qwen_operator.modelsync.synthetic import Checkpoint, Shape
from qwen_operator.testing.s3 import S3Bucket

pytestmark = pytest.mark.s3

SHAPE = Shape().scaled(0.05, layers=4, vocab=4096)
QWENCTL = [sys.executable, "-c", "from qwen_operator.cli import main; raise SystemExit(main())"]


def same_tree(a: Path, b: Path) -> bool:
    fa = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    fb = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return fa == fb and all(filecmp.cmp(a / p, b / p, shallow=False) for p in fa)


class FailingRegistry(Registry):
    """A real registry client whose connection "drops" after ``budget`` downloaded bytes."""

    def __init__(self, url: str, budget: int) -> None:
        super().__init__(url)
        self.budget = budget
        self.passed = 0

    def get_blob(self, digest: str, start: int = 0) -> Iterator[bytes]:
        for block in super().get_blob(digest, start):
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
    committed = [p for p in (cache / "blobs/sha256").iterdir()]
    assert 0 < len(committed) < len(need)
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
    blobs = cache / "blobs" / "sha256"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (blobs.is_dir() and len(list(blobs.iterdir())) >= 3):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert not (cache / "models/qwen/current").exists()
    have = sum(p.stat().st_size for p in blobs.iterdir())
    partial = sum(p.stat().st_size for p in (cache / "tmp").glob("*.partial"))
    assert 0 < have + partial < total
    gets_before = len(s3_bucket.requests("GET"))
    partials = len(list((cache / "tmp").glob("*.partial")))
    result = pull(Registry(s3_bucket.registry_url()), cache, "qwen", version="v1")
    assert result.bytes_fetched == total - have - partial
    ranged = s3_bucket.requests("GET")[gets_before:]
    blob_gets = sum("/blobs/" in r[1] for r in ranged)  # one GET per missing chunk (ranged for partials)
    assert result.chunks_fetched - partials <= blob_gets <= result.chunks_fetched
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
    """A 30 MiB tmpfs: a real filesystem that runs out of space."""
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=30m", "tmpfs", str(mnt)], capture_output=True, text=True)
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

    def get_blob(self, digest: str, start: int = 0) -> Iterator[bytes]:
        for i, block in enumerate(super().get_blob(digest, start)):
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
    assert flaky.broken  # chunks over 1 MiB broke off once each...
    assert flaky.passed == result.bytes_fetched == sum(need.values())  # ...and resumed where it broke off
    ranged = [r for r in s3_bucket.requests("GET")[gets_before:] if "/blobs/" in r[1]]
    assert len(ranged) == len(need) + len(flaky.broken)
    assert same_tree(pushed["v1"][0], (tmp_path / "cache/models/qwen/current").resolve())


def test_corrupt_local_chunk_is_dropped_and_refetched(
    s3_bucket: S3Bucket, pushed: dict[str, tuple[Path, str, Manifest]], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    total = sum(pushed["v1"][2].unique_chunks().values())
    with pytest.raises(PullError):
        pull(FailingRegistry(s3_bucket.registry_url(), budget=total // 2), cache, "qwen", version="v1", workers=1)
    victim = max((cache / "blobs/sha256").iterdir(), key=lambda p: p.stat().st_size)
    victim.chmod(0o644)
    victim.write_bytes(b"\0" * victim.stat().st_size)  # bit rot on the node
    with pytest.raises(PullError, match="corrupt.*re-run the pull"):
        pull(Registry(s3_bucket.registry_url()), cache, "qwen", version="v1")
    assert not victim.exists() and not (cache / "models/qwen/current").exists()
    again = Registry(s3_bucket.registry_url())
    pull(again, cache, "qwen", version="v1")
    assert same_tree(pushed["v1"][0], (cache / "models/qwen/current").resolve())

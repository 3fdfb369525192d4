"""Push and pull against the real S3 server: round trip, dedup, layer-diff, GC, CLI."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qwen_operator.modelsync import safetensors_io
from qwen_operator.modelsync.manifest import diff
from qwen_operator.modelsync.pull import pull
from qwen_operator.modelsync.push import push
from qwen_operator.modelsync.registry import Registry
from qwen_operator.modelsync.synthetic import Checkpoint, Shape
from qwen_operator.testing.s3 import S3Bucket

pytestmark = pytest.mark.s3

SHAPE = Shape().scaled(0.05, layers=4, vocab=4096)  # ~11 MB, 4 shards


# Not `python -m qwen_operator.cli`: that runs cli.py twice (as __main__ and as a module),
# so UserError raised by a subcommand would not be the class main() catches.
QWENCTL = [sys.executable, "-c", "from qwen_operator.cli import main; raise SystemExit(main())"]


def qwenctl(bucket: S3Bucket, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*QWENCTL, *map(str, args)],
        env=bucket.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def same_tree(a: Path, b: Path) -> bool:
    fa = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    fb = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return fa == fb and all(filecmp.cmp(a / p, b / p, shallow=False) for p in fa)


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Path]:
    base = Checkpoint(SHAPE)
    out = {"v1": tmp_path / "src-v1", "v2": tmp_path / "src-v2"}
    base.write(out["v1"])
    base.last_layers(1).write(out["v2"])
    return out


def test_cli_round_trip_is_byte_identical(s3_bucket: S3Bucket, models: dict[str, Path], tmp_path: Path) -> None:
    reg = s3_bucket.registry_url()
    r = qwenctl(s3_bucket, "model", "push", models["v1"], "--registry", reg, "--version", "v1", "--tag", "stable")
    assert r.returncode == 0, r.stderr
    assert "uploaded" in r.stdout and "pushed v1 as sha256:" in r.stdout
    cache = tmp_path / "cache"
    r = qwenctl(s3_bucket, "model", "pull", "--registry", reg, "--tag", "stable", "--cache", cache, "--name", "qwen")
    assert r.returncode == 0, r.stderr
    current = cache / "models" / "qwen" / "current"
    assert current.is_symlink() and same_tree(models["v1"], current.resolve())
    for shard in current.glob("*.safetensors"):
        assert "model.norm.weight" in safetensors_io.read_header(shard) or safetensors_io.read_header(shard)
    # default name: the sanitised prefix
    r = qwenctl(s3_bucket, "model", "pull", "--registry", reg, "--version", "v1", "--cache", cache)
    assert r.returncode == 0, r.stderr
    assert same_tree(models["v1"], (cache / "models" / "models-qwen3-test" / "current").resolve())


def test_push_uploads_only_missing_chunks(s3_bucket: S3Bucket, models: dict[str, Path]) -> None:
    reg = Registry(s3_bucket.registry_url())
    first = push(reg, models["v1"], "v1")
    assert first.chunks_uploaded == first.chunks_total and first.bytes_uploaded > 0
    again = push(Registry(s3_bucket.registry_url()), models["v1"], "v1")
    assert (again.digest, again.bytes_uploaded, again.chunks_uploaded) == (first.digest, 0, 0)
    puts_before = len(s3_bucket.requests("PUT"))
    second = push(Registry(s3_bucket.registry_url()), models["v2"], "v2", tag="canary")
    expected = diff(first.manifest, second.manifest)
    assert second.bytes_uploaded == expected.bytes_to_move
    assert 0 < second.bytes_uploaded < second.total_bytes / 4
    # one PUT per new chunk (all below the multipart threshold) + manifest + version + tag
    assert len(s3_bucket.requests("PUT")) - puts_before == second.chunks_uploaded + 3


def test_version_names_are_immutable(s3_bucket: S3Bucket, models: dict[str, Path]) -> None:
    reg = s3_bucket.registry_url()
    assert qwenctl(s3_bucket, "model", "push", models["v1"], "--registry", reg, "--version", "v1").returncode == 0
    r = qwenctl(s3_bucket, "model", "push", models["v2"], "--registry", reg, "--version", "v1")
    assert r.returncode == 2 and "already exists" in r.stderr and "Traceback" not in r.stderr


def test_update_moves_only_changed_chunks_and_collects_old(
    s3_bucket: S3Bucket, models: dict[str, Path], tmp_path: Path
) -> None:
    reg = Registry(s3_bucket.registry_url())
    v1, v2 = push(reg, models["v1"], "v1"), push(reg, models["v2"], "v2")
    cache = tmp_path / "cache"
    pull(Registry(s3_bucket.registry_url()), cache, "qwen", version="v1", keep=1)
    gets_before = len(s3_bucket.requests("GET"))
    fresh = Registry(s3_bucket.registry_url())
    result = pull(fresh, cache, "qwen", version=v2.digest, keep=1)  # pinned by digest
    expected = diff(v1.manifest, v2.manifest)
    assert result.bytes_fetched == expected.bytes_to_move
    assert fresh.stats.bytes_downloaded - result.bytes_fetched < 64 * 1024  # + version pointer and manifest
    blob_gets = [r for r in s3_bucket.requests("GET")[gets_before:] if "/blobs/" in r[1]]
    assert len(blob_gets) == expected.chunks_to_move
    mdir = cache / "models" / "qwen"
    assert same_tree(models["v2"], (mdir / "current").resolve())
    assert [p.name for p in (mdir / "versions").iterdir()] == [result.path.name]  # keep=1 pruned v1
    # blobs whose bytes live inside a kept multi-chunk file were collected: no double disk use
    on_disk = sum(p.stat().st_size for p in (cache / "blobs" / "sha256").iterdir() if p.stat().st_nlink == 1)
    assert on_disk == 0
    assert not list((cache / "tmp").iterdir())  # no partial or journal left behind


def test_tag_ls_and_diff_commands(s3_bucket: S3Bucket, models: dict[str, Path], tmp_path: Path) -> None:
    reg = s3_bucket.registry_url()
    for v in ("v1", "v2"):
        assert qwenctl(s3_bucket, "model", "push", models[v], "--registry", reg, "--version", v).returncode == 0
    assert qwenctl(s3_bucket, "model", "tag", "--registry", reg, "--version", "v1", "--tag", "stable").returncode == 0
    cache = tmp_path / "cache"
    r = qwenctl(s3_bucket, "model", "pull", "--registry", reg, "--tag", "stable", "--cache", cache, "--name", "q")
    assert r.returncode == 0 and same_tree(models["v1"], (cache / "models/q/current").resolve())
    assert qwenctl(s3_bucket, "model", "tag", "--registry", reg, "--version", "v2", "--tag", "stable").returncode == 0
    ls = qwenctl(s3_bucket, "model", "ls", "--registry", reg)
    lines = {line.split()[0]: line for line in ls.stdout.splitlines()[1:]}
    assert "stable" in lines["v2"] and "stable" not in lines["v1"]
    d = qwenctl(s3_bucket, "model", "diff", "--registry", reg, "v1", "stable")
    assert d.returncode == 0, d.stderr
    changed = [line for line in d.stdout.splitlines() if " changed " in line]
    assert [line.split()[0] for line in changed] == ["model-00004-of-00004.safetensors"]
    assert "file-level diff would move" in d.stdout


def test_clear_errors(s3_bucket: S3Bucket, models: dict[str, Path], tmp_path: Path) -> None:
    reg = s3_bucket.registry_url()
    assert qwenctl(s3_bucket, "model", "push", models["v1"], "--registry", reg, "--version", "v1").returncode == 0
    cache = tmp_path / "cache"
    missing = qwenctl(s3_bucket, "model", "pull", "--registry", reg, "--version", "v9", "--cache", cache)
    assert missing.returncode == 2
    assert "version 'v9' not found" in missing.stderr and "known: v1" in missing.stderr
    bad_env = dict(s3_bucket.env, AWS_SECRET_ACCESS_KEY="wrong-secret")
    bad = subprocess.run(
        [*QWENCTL, "model", "pull", "--registry", reg, "--version", "v1"] + ["--cache", str(cache)],
        env=bad_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "access denied" in bad.stderr and "Traceback" not in bad.stderr
    no_bucket = qwenctl(s3_bucket, "model", "ls", "--registry", "s3://no-such-bucket-qw/x")
    assert no_bucket.returncode == 2 and "bucket does not exist" in no_bucket.stderr
    assert not (cache / "models").exists() or not any((cache / "models").iterdir())
    env_no_creds = {k: v for k, v in s3_bucket.env.items() if not k.startswith("AWS_ACCESS") and "SECRET" not in k}
    env_no_creds["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    env_no_creds["AWS_CONFIG_FILE"] = os.devnull
    nocreds = subprocess.run(
        [*QWENCTL, "model", "ls", "--registry", reg],
        env=env_no_creds,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert nocreds.returncode == 2 and "no AWS credentials" in nocreds.stderr

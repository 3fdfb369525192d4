"""Model sync against a real OCI registry (CNCF distribution on loopback): push, pull,
layer-diff counted in the registry's own access log, resume after a kill, corruption,
basic and bearer-token auth, TLS with a CA bundle, blob GETs redirected to S3 storage,
interop with the ORAS CLI."""

from __future__ import annotations

import filecmp
import hashlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qwen_operator.modelsync.backend import RegistryError
from qwen_operator.modelsync.manifest import Manifest, diff
from qwen_operator.modelsync.oci import ARTIFACT_TYPE, MODELPACK_CONFIG, OCI_MANIFEST, Credentials, OCIRegistry
from qwen_operator.modelsync.ociserver import OCIServer, locate_oras
from qwen_operator.modelsync.pull import pull
from qwen_operator.modelsync.push import push
from qwen_operator.modelsync.s3server import MissingServerError
from qwen_operator.modelsync.store import covered, read_journal
from qwen_operator.modelsync.synthetic import Checkpoint, Shape
from qwen_operator.testing.oci import PASSWORD, READER, READER_PASSWORD, USER, OCIRepo, Secured, write_htpasswd
from qwen_operator.testing.s3 import S3Bucket

SHAPE = Shape().scaled(0.05, layers=4, vocab=4096)  # ~11 MB, 4 shards
# Not `python -m qwen_operator.cli`: that runs cli.py twice (as __main__ and as a module).
QWENCTL = [sys.executable, "-c", "from qwen_operator.cli import main; raise SystemExit(main())"]


def qwenctl(env: dict[str, str], *args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*QWENCTL, *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout)


def same_tree(a: Path, b: Path) -> bool:
    fa = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    fb = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return fa == fb and all(filecmp.cmp(a / p, b / p, shallow=False) for p in fa)


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    """The CLI failed with exactly one ``error:`` line and no traceback."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr
    return errors[0]


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Path]:
    base = Checkpoint(SHAPE)
    out = {"v1": tmp_path / "src-v1", "v2": tmp_path / "src-v2"}
    base.write(out["v1"])
    base.last_layers(1).write(out["v2"])  # a small fine-tune: the last layer's tensors change
    return out


# --- push, pull, layer-diff ------------------------------------------------------------------


def test_cli_push_then_pull_onto_an_empty_cache(oci_repo: OCIRepo, models: dict[str, Path], tmp_path: Path) -> None:
    env, url = oci_repo.env, oci_repo.url
    r = qwenctl(env, "model", "push", models["v1"], "--registry", url, "--version", "v1", "--tag", "stable")
    assert r.returncode == 0, r.stderr
    assert "pushed v1 as sha256:" in r.stdout
    digest = r.stdout.split("pushed v1 as ")[1].split()[0]
    manifest = OCIRegistry(url).get_manifest(digest)
    chunks = set(manifest.unique_chunks())
    # every chunk went up once, plus the chunk index and the ModelPack config blob
    assert oci_repo.blob_puts() == len(chunks) + 2

    before = len(oci_repo.requests())
    cache = tmp_path / "cache"
    r = qwenctl(env, "model", "pull", "--registry", url, "--tag", "stable", "--cache", cache, "--name", "qwen")
    assert r.returncode == 0, r.stderr
    current = cache / "models" / "qwen" / "current"
    assert current.is_symlink() and same_tree(models["v1"], current.resolve())
    pulled = [x[1].rsplit("/", 1)[1] for x in oci_repo.requests()[before:] if x[0] == "GET" and "/blobs/" in x[1]]
    # an empty node fetches each chunk exactly once, plus the chunk index
    assert sorted(pulled) == sorted(chunks | {manifest.digest()})

    # the default model name is the sanitised repository path; ls, diff and tag work as on S3
    r = qwenctl(env, "model", "pull", "--registry", url, "--version", "v1", "--cache", cache)
    assert r.returncode == 0, r.stderr
    assert same_tree(models["v1"], (cache / "models" / oci_repo.repository.replace("/", "-") / "current").resolve())
    r = qwenctl(env, "model", "ls", "--registry", url)
    assert r.returncode == 0 and any(line.split()[0] == "v1" and "stable" in line for line in r.stdout.splitlines())
    r = qwenctl(env, "model", "tag", "--registry", url, "--version", "v1", "--tag", "prod")
    assert r.returncode == 0 and f"tag prod -> v1 ({digest})" in r.stdout, r.stderr
    r = qwenctl(env, "model", "diff", "--registry", url, "v1", "prod")  # a version name, then a tag
    assert r.returncode == 0 and "update moves 0 B in 0 chunks" in r.stdout, r.stderr


def test_the_version_is_an_oci_artifact(oci_repo: OCIRepo, models: dict[str, Path]) -> None:
    """What the registry stores: an OCI image manifest with our artifactType, a ModelPack
    config, the chunk index as the first layer, every chunk as a layer; tags are OCI tags."""
    result = push(OCIRegistry(oci_repo.url), models["v1"], "v1", tag="stable")
    repo_dir = oci_repo.server.storage_root / "repositories" / oci_repo.repository / "_manifests" / "tags"
    assert sorted(p.name for p in repo_dir.iterdir()) == ["stable", "v1"]
    raw = oci_repo.server.blob_file(result.digest).read_bytes()  # manifests are blobs in distribution's storage
    doc = json.loads(raw)
    assert doc["mediaType"] == OCI_MANIFEST and doc["artifactType"] == ARTIFACT_TYPE
    assert doc["config"]["mediaType"] == MODELPACK_CONFIG
    config = json.loads(oci_repo.server.blob_file(doc["config"]["digest"]).read_bytes())
    assert config["descriptor"]["version"] == "v1" and config["config"]["format"] == "safetensors"
    assert config["modelfs"]["diffIds"] == [layer["digest"] for layer in doc["layers"]]
    assert doc["layers"][0]["digest"] == result.manifest.digest()  # the index: the same document S3 stores
    assert {layer["digest"] for layer in doc["layers"][1:]} == set(result.manifest.unique_chunks())
    assert doc["annotations"]["org.opencontainers.image.version"] == "v1"


def test_oras_reads_and_copies_what_we_push(oci_repo: OCIRepo, models: dict[str, Path], tmp_path: Path) -> None:
    """Interop: the ORAS CLI (built from the Go module proxy) fetches our manifest byte for
    byte and copies the whole version graph to another repository, from which we pull the
    same version: what we push is a well-formed OCI artifact, not a private format."""
    try:
        oras = str(locate_oras())
    except MissingServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    v1 = push(OCIRegistry(oci_repo.url), models["v1"], "v1", tag="stable")
    host = oci_repo.server.host
    src, dst = f"{host}/{oci_repo.repository}", f"{host}/{oci_repo.repository}-copy"

    def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        r = subprocess.run([oras, *args], capture_output=True, timeout=120, cwd=tmp_path)
        assert r.returncode == 0, r.stderr.decode(errors="replace")
        return r

    raw = run("manifest", "fetch", "--plain-http", f"{src}:stable").stdout
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == v1.digest
    assert json.loads(raw)["artifactType"] == ARTIFACT_TYPE
    run("cp", "--from-plain-http", "--to-plain-http", f"{src}:v1", f"{dst}:v1")
    assert run("repo", "tags", "--plain-http", dst).stdout.split() == [b"v1"]
    result = pull(OCIRegistry(f"oci://{dst}"), tmp_path / "cache", "qwen", version="v1")
    assert result.digest == v1.digest
    assert same_tree(models["v1"], (tmp_path / "cache/models/qwen/current").resolve())


def test_fine_tune_moves_only_changed_chunks(oci_repo: OCIRepo, models: dict[str, Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    v1 = push(OCIRegistry(oci_repo.url), models["v1"], "v1")
    pull(OCIRegistry(oci_repo.url), cache, "qwen", version="v1")
    puts_before = oci_repo.blob_puts()
    v2 = push(OCIRegistry(oci_repo.url), models["v2"], "v2", tag="stable")
    d = diff(v1.manifest, v2.manifest)
    assert 0 < d.bytes_to_move < v2.total_bytes // 2
    # the push uploaded exactly the new chunks (+ the new index and config), counted at the registry
    assert v2.chunks_uploaded == d.chunks_to_move and v2.bytes_uploaded == d.bytes_to_move
    assert oci_repo.blob_puts() - puts_before == d.chunks_to_move + 2

    before = len(oci_repo.requests())
    result = pull(OCIRegistry(oci_repo.url), cache, "qwen", tag="stable")
    assert result.bytes_fetched == d.bytes_to_move and result.chunks_fetched == d.chunks_to_move
    gets = [x[1].rsplit("/", 1)[1] for x in oci_repo.requests()[before:] if x[0] == "GET" and "/blobs/" in x[1]]
    new = set(v2.manifest.unique_chunks()) - set(v1.manifest.unique_chunks())
    assert sorted(gets) == sorted(new | {v2.manifest.digest()})  # the changed chunks and the index, once each
    assert same_tree(models["v2"], (cache / "models/qwen/current").resolve())

    # an identical re-push moves nothing and keeps the digest
    again = push(OCIRegistry(oci_repo.url), models["v2"], "v2")
    assert (again.digest, again.chunks_uploaded) == (v2.digest, 0)


def test_versions_are_immutable_and_tags_move(oci_repo: OCIRepo, models: dict[str, Path]) -> None:
    reg = OCIRegistry(oci_repo.url)
    v1 = push(reg, models["v1"], "v1", tag="stable")
    with pytest.raises(RegistryError, match="already exists .* different content"):
        push(OCIRegistry(oci_repo.url), models["v2"], "v1")
    v2 = push(OCIRegistry(oci_repo.url), models["v2"], "v2")
    reg = OCIRegistry(oci_repo.url)
    assert reg.resolve(tag="stable") == v1.digest
    reg.set_tag("stable", v2.digest)
    assert OCIRegistry(oci_repo.url).resolve(tag="stable") == v2.digest
    with pytest.raises(RegistryError, match="is a version .* immutable"):
        reg.set_tag("v1", v2.digest)
    with pytest.raises(RegistryError, match="is a tag"):
        reg.resolve(version="stable")
    assert reg.resolve(version=v1.digest) == v1.digest
    assert reg.list_pointers("versions") == [("v1", v1.digest), ("v2", v2.digest)]
    assert reg.list_pointers("tags") == [("stable", v2.digest)]


# --- failures ------------------------------------------------------------------------------


def kept_locally(cache: Path, manifest: Manifest) -> tuple[int, int]:
    """``(bytes, chunks fully kept)`` an interrupted pull left: committed blobs plus
    journalled ranges of partials."""
    kept = full = 0
    for f in manifest.files:
        if (cache / "blobs/sha256" / f.sha256[7:]).is_file():
            kept, full = kept + f.size, full + len(f.chunks)
            continue
        partial = cache / "tmp" / f"{f.sha256[7:]}.partial"
        ranges = read_journal(partial.with_suffix(".journal")) if partial.is_file() else []
        offset = 0
        for c in f.chunks:
            have = covered(ranges, offset, c.size)
            kept, full, offset = kept + have, full + (have == c.size), offset + c.size
    return kept, full


def test_killed_pull_resumes(oci_repo: OCIRepo, models: dict[str, Path], tmp_path: Path) -> None:
    manifest = push(OCIRegistry(oci_repo.url), models["v1"], "v1").manifest
    total = sum(manifest.unique_chunks().values())
    cache = tmp_path / "cache"
    args = ["model", "pull", "--registry", oci_repo.url, "--version", "v1", "--cache", str(cache), "--name", "qwen"]
    proc = subprocess.Popen(
        [*QWENCTL, *args, "--limit-rate", "2M", "--workers", "2"],
        env=oci_repo.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and kept_locally(cache, manifest)[0] < total // 4:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert not (cache / "models/qwen/current").exists()
    have, full = kept_locally(cache, manifest)
    assert 0 < have < total
    before = len(oci_repo.requests())
    result = pull(OCIRegistry(oci_repo.url), cache, "qwen", version="v1")
    assert result.bytes_fetched == total - have  # nothing the killed pull wrote is fetched again
    chunk_gets = [x for x in oci_repo.requests()[before:] if x[0] == "GET" and "/blobs/" in x[1]]
    # one GET per chunk not fully kept (ranged for a chunk the killed pull had begun), plus the index
    assert len(chunk_gets) - 1 == result.chunks_fetched == len(manifest.unique_chunks()) - full
    assert same_tree(models["v1"], (cache / "models/qwen/current").resolve())


def test_corrupted_blob_is_refused_and_current_kept(oci_repo: OCIRepo, models: dict[str, Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    v1 = push(OCIRegistry(oci_repo.url), models["v1"], "v1")
    v2 = push(OCIRegistry(oci_repo.url), models["v2"], "v2")
    pull(OCIRegistry(oci_repo.url), cache, "qwen", version="v1")
    new_chunk = next(iter(set(v2.manifest.unique_chunks()) - set(v1.manifest.unique_chunks())))
    blob = oci_repo.server.blob_file(new_chunk)
    blob.write_bytes(b"\xff" * blob.stat().st_size)  # bit rot in the registry's storage, same size
    r = qwenctl(
        oci_repo.env, "model", "pull", "--registry", oci_repo.url, "--version", "v2", "--cache", cache, "--name", "qwen"
    )
    line = one_error_line(r)
    assert f"chunk {new_chunk}" in line and "corrupt" in line and "current version left unchanged" in line
    assert same_tree(models["v1"], (cache / "models/qwen/current").resolve())

    # a corrupted chunk index is refused by its digest before anything is fetched
    index = oci_repo.server.blob_file(v2.manifest.digest())
    raw = index.read_bytes()
    index.write_bytes(raw.replace(b'"v2"', b'"v9"'))
    with pytest.raises(RegistryError, match="content digest is sha256:.* expected"):
        pull(OCIRegistry(oci_repo.url), cache, "qwen", version="v2")
    assert same_tree(models["v1"], (cache / "models/qwen/current").resolve())


def test_pull_of_a_missing_version_names_what_exists(
    oci_repo: OCIRepo, models: dict[str, Path], tmp_path: Path
) -> None:
    push(OCIRegistry(oci_repo.url), models["v1"], "v1", tag="stable")
    r = qwenctl(oci_repo.env, "model", "pull", "--registry", oci_repo.url, "--version", "v7", "--cache", tmp_path)
    line = one_error_line(r)
    assert "version 'v7' not found" in line and "stable" in line and "v1" in line


# --- auth and TLS ----------------------------------------------------------------------------


def test_basic_auth(oci_secured: Secured, models: dict[str, Path], tmp_path: Path) -> None:
    anonymous = oci_secured.repo("basic")
    line = one_error_line(
        qwenctl(anonymous.env, "model", "push", models["v1"], "--registry", anonymous.url, "--version", "v1")
    )
    assert "access denied" in line and "set OCI_USERNAME/OCI_PASSWORD" in line

    wrong = oci_secured.repo("basic", OCI_USERNAME=USER, OCI_PASSWORD="wrong")
    line = one_error_line(qwenctl(wrong.env, "model", "push", models["v1"], "--registry", wrong.url, "--version", "v1"))
    assert "access denied" in line and f"check OCI_USERNAME ('{USER}')" in line and "wrong" not in line

    good = oci_secured.repo("basic", OCI_USERNAME=USER, OCI_PASSWORD=PASSWORD)
    r = qwenctl(good.env, "model", "push", models["v1"], "--registry", good.url, "--version", "v1", "--tag", "stable")
    assert r.returncode == 0, r.stderr
    cache = tmp_path / "cache"
    r = qwenctl(good.env, "model", "pull", "--registry", good.url, "--tag", "stable", "--cache", cache, "--name", "q")
    assert r.returncode == 0, r.stderr
    assert same_tree(models["v1"], (cache / "models/q/current").resolve())
    # after the first challenge the credentials go with every request: few 401s, not one per request
    log = good.requests()
    assert sum(1 for x in log if x[2] == 401) <= 4 < len(log)


def test_bearer_token_auth(oci_secured: Secured, models: dict[str, Path], tmp_path: Path) -> None:
    from qwen_operator.controller.versions import classify

    issuer = oci_secured.issuer
    assert issuer is not None
    pusher = oci_secured.repo("token", OCI_USERNAME=USER, OCI_PASSWORD=PASSWORD)
    issued_before = len(issuer.issued)
    result = push(OCIRegistry.from_env(pusher.url, env=pusher.env), models["v1"], "v1", tag="stable")
    # one token per scope, cached: not one per request
    scopes = issuer.issued[issued_before:]
    assert {s for _, s in scopes} <= {
        f"repository:{pusher.repository}:pull",
        f"repository:{pusher.repository}:pull,push",
    }
    assert len(scopes) <= 3 and len(pusher.requests()) > 20

    # a pull-only account pulls, and its push is refused with a clear message
    reader_env = dict(pusher.env, OCI_USERNAME=READER, OCI_PASSWORD=READER_PASSWORD)
    cache = tmp_path / "cache"
    args = ("--registry", pusher.url)
    r = qwenctl(reader_env, "model", "pull", *args, "--tag", "stable", "--cache", cache, "--name", "q")
    assert r.returncode == 0, r.stderr
    assert same_tree(models["v1"], (cache / "models/q/current").resolve())
    line = one_error_line(qwenctl(reader_env, "model", "push", models["v2"], *args, "--version", "v2"))
    # the scope the registry asked for (distribution lists its actions in either order)
    assert "access denied" in line and re.search(r"token for repository:\S+:(pull,push|push,pull);", line)

    # wrong password: the token service refuses; the watcher would report RegistryAccessDenied
    bad_env = dict(pusher.env, OCI_USERNAME=USER, OCI_PASSWORD="nope")
    line = one_error_line(qwenctl(bad_env, "model", "pull", *args, "--tag", "stable", "--cache", cache))
    assert "access denied by the token service" in line and "HTTP 401" in line
    with pytest.raises(RegistryError) as caught:
        OCIRegistry.from_env(pusher.url, env=bad_env).resolve(tag="stable")
    assert classify(caught.value).reason == "RegistryAccessDenied"
    assert OCIRegistry.from_env(pusher.url, env=pusher.env).resolve(tag="stable") == result.digest


def test_tls_with_a_ca_bundle(oci_secured: Secured, models: dict[str, Path], tmp_path: Path) -> None:
    assert oci_secured.ca_bundle is not None
    untrusted = oci_secured.repo("tls")
    line = one_error_line(
        qwenctl(untrusted.env, "model", "push", models["v1"], "--registry", untrusted.url, "--version", "v1")
    )
    assert "TLS certificate of 127.0.0.1" in line and "not trusted" in line and "OCI_CA_BUNDLE" in line

    trusted = oci_secured.repo("tls", OCI_CA_BUNDLE=str(oci_secured.ca_bundle))
    r = qwenctl(trusted.env, "model", "push", models["v1"], "--registry", trusted.url, "--version", "v1")
    assert r.returncode == 0, r.stderr
    # the bundle's PEM text works as well (a Secret key through envFrom)
    pem_env = dict(trusted.env, OCI_CA_BUNDLE=oci_secured.ca_bundle.read_text())
    cache = tmp_path / "cache"
    r = qwenctl(pem_env, "model", "pull", "--registry", trusted.url, "--version", "v1", "--cache", cache, "--name", "q")
    assert r.returncode == 0, r.stderr
    assert same_tree(models["v1"], (cache / "models/q/current").resolve())
    # served over HTTPS: a plain-HTTP request never reaches the TLS server's handler and its log
    assert any("/blobs/sha256:" in x[1] and x[2] == 200 for x in trusted.requests("GET"))


def test_blob_gets_redirected_to_s3_storage(s3_bucket: S3Bucket, models: dict[str, Path], tmp_path: Path) -> None:
    """A registry on S3 storage (Harbor's usual setup) answers blob GETs with a 307 to a
    presigned URL of its bucket: the pull follows it and gets every chunk from the bucket.
    (urllib3 drops the Authorization header on a redirect to another host or port; this
    S3 server would accept the request either way, so that part is not what is tested.)"""
    server = s3_bucket.server
    storage = {
        "accesskey": server.access_key,
        "secretkey": server.secret_key,
        "region": server.region,
        "regionendpoint": server.endpoint_url,
        "bucket": s3_bucket.name,
        "forcepathstyle": True,
        "secure": False,
    }
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {USER: PASSWORD})
    with OCIServer(data_dir=tmp_path / "oci" / "data", htpasswd=htpasswd, s3_storage=storage) as registry:
        url = registry.url("models/qwen3-on-s3")
        creds = Credentials(USER, PASSWORD)
        v1 = push(OCIRegistry(url, creds), models["v1"], "v1")
        result = pull(OCIRegistry(url, creds), tmp_path / "cache", "qwen", version="v1")
        assert result.digest == v1.digest
        assert same_tree(models["v1"], (tmp_path / "cache/models/qwen/current").resolve())
        redirected = [x for x in registry.request_log() if x[0] == "GET" and "/blobs/sha256:" in x[1]]
        assert redirected and all(x[2] == 307 for x in redirected)
    presigned = [r for r in s3_bucket.requests("GET") if "X-Amz-Signature=" in r[1] and "/blobs/sha256/" in r[1]]
    assert len(presigned) == len(redirected) and all(r[2] == 200 for r in presigned)


def test_pull_failure_keeps_current_when_the_registry_is_down(
    oci_repo: OCIRepo, models: dict[str, Path], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    push(OCIRegistry(oci_repo.url), models["v1"], "v1")
    pull(OCIRegistry(oci_repo.url), cache, "qwen", version="v1")
    dead = "oci://127.0.0.1:9/" + oci_repo.repository  # discard port: nothing listens
    r = qwenctl(
        oci_repo.env, "model", "pull", "--registry", dead, "--version", "v1", "--cache", cache, "--name", "qwen"
    )
    assert "cannot reach the OCI registry 127.0.0.1:9" in one_error_line(r)
    assert same_tree(models["v1"], (cache / "models/qwen/current").resolve())

"""``hf://`` model pulls against a real Hub-compatible server (Olah serving local git repositories
offline on loopback, weights as git-LFS objects as on the Hub): the init container's command
pulls a revision into the node cache, verified file by file; a later commit moves only the
files it changed (counted in the server's own access log); a branch, tag and commit resolve
to the same version; an unknown revision or repository is one clear error line; the token
goes to the server as a Bearer header; pushing to hf:// is refused.

What this server does not show: Olah answers ranged GETs of local mirrors with the whole
file (the pull skips forward, so a resumed download re-reads what it skipped), and it has
no access control offline (the token is checked by a loopback recorder, not by a Hub)."""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from qwen_operator.modelsync.backend import NotFoundError, RegistryError, open_registry
from qwen_operator.modelsync.hub import HubRegistry
from qwen_operator.modelsync.hubmirror import HubMirror, make_repo
from qwen_operator.modelsync.manifest import short_id
from qwen_operator.modelsync.pull import pull
from qwen_operator.modelsync.synthetic import Checkpoint, Shape

SHAPE = Shape().scaled(0.05, layers=4, vocab=4096)  # ~11 MB, 4 shards
QWENCTL = [sys.executable, "-c", "from qwen_operator.cli import main; raise SystemExit(main())"]
_repos = iter(range(1_000_000))


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def resolve_gets(mirror: HubMirror, repo_id: str) -> list[str]:
    """Paths of the files the server sent for ``repo_id`` (``/ORG/REPO/resolve/COMMIT/PATH``)."""
    prefix = f"/{repo_id}/resolve/"
    return [p[len(prefix) :] for m, p, s in mirror.requests() if m == "GET" and p.startswith(prefix) and s == 200]


@pytest.fixture
def repo(hub_mirror: HubMirror, tmp_path: Path) -> Iterator[tuple[str, dict[str, dict[str, bytes]]]]:
    """A Hub repository with two commits: a checkpoint, then a small fine-tune of its last layer."""
    base = Checkpoint(SHAPE)
    base.write(tmp_path / "v1")
    base.last_layers(1).write(tmp_path / "v2")
    versions = {"v1": files_of(tmp_path / "v1"), "v2": files_of(tmp_path / "v2")}
    repo_id = f"qwen-tests/tiny-{os.getpid()}-{next(_repos)}"
    yield repo_id, versions


def env_for(mirror: HubMirror) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=mirror.endpoint, HF_HUB_DISABLE_TELEMETRY="1", HF_HOME="/nonexistent-hf-home")
    return env


def test_the_init_container_command_pulls_a_revision_and_a_new_commit_moves_only_changed_files(
    hub_mirror: HubMirror, repo: tuple[str, dict[str, dict[str, bytes]]], tmp_path: Path
) -> None:
    repo_id, versions = repo
    c1 = make_repo(hub_mirror.mirrors, repo_id, versions["v1"], "v1")
    cache = tmp_path / "cache"
    # exactly what the rendered model-pull init container runs (HF_ENDPOINT from the credentials Secret)
    r = subprocess.run(
        [*QWENCTL, "model", "pull", "--registry", f"hf://{repo_id}", "--version", "main", "--cache", str(cache)]
        + ["--name", "ns.chat"],
        env=env_for(hub_mirror),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr
    assert f"{repo_id}@{c1}" in r.stdout
    current = cache / "models" / "ns.chat" / "current"
    assert files_of(current) == versions["v1"]  # every file, byte for byte (LFS weights and small git files)
    first = resolve_gets(hub_mirror, repo_id)
    assert sorted(set(first)) == sorted(f"{c1}/{p}" for p in versions["v1"])

    # a fine-tune commit: only the shards whose bytes changed cross the wire (small git files are read
    # once to hash them: the Hub lists only LFS files with a sha256)
    c2 = make_repo(hub_mirror.mirrors, repo_id, versions["v2"], "fine-tune")
    changed = {p for p, data in versions["v2"].items() if versions["v1"].get(p) != data}
    assert changed and changed != set(versions["v2"])  # the test needs both kinds
    before = len(hub_mirror.requests())
    reg = HubRegistry.from_env(f"hf://{repo_id}", endpoint=hub_mirror.endpoint)
    result = pull(reg, cache, "ns.chat", version=c2)
    assert files_of(current) == versions["v2"]
    sent = [p for m, p, s in hub_mirror.requests()[before:] if m == "GET" and f"/resolve/{c2}/" in p and s == 200]
    sent_files = {p.split(f"/resolve/{c2}/", 1)[1] for p in sent}
    big = {p for p, data in versions["v2"].items() if len(data) >= 1 << 20}
    assert sent_files & big == changed & big  # unchanged LFS weight files were not downloaded
    moved = sum(len(versions["v2"][p]) for p in changed)
    small = sum(len(versions["v2"][p]) for p in set(versions["v2"]) - big)
    assert result.bytes_fetched <= moved + small
    assert result.bytes_fetched < sum(map(len, versions["v2"].values())) / 2
    # both versions are complete trees in the cache; current names the new one
    assert current.resolve().name == short_id(result.digest)
    assert c1 != c2


def test_branch_tag_and_commit_resolve_to_the_same_version(
    hub_mirror: HubMirror, repo: tuple[str, dict[str, dict[str, bytes]]]
) -> None:
    repo_id, versions = repo
    commit = make_repo(hub_mirror.mirrors, repo_id, versions["v1"], "v1")
    subprocess.run(["git", "-C", str(hub_mirror.mirrors / "models" / repo_id), "tag", "v1.0"], check=True)
    reg = open_registry(f"hf://{repo_id}", endpoint_url=hub_mirror.endpoint)
    digests = {reg.resolve(version=rev) for rev in ("main", "v1.0", commit)}
    assert len(digests) == 1
    manifest = reg.get_manifest(digests.pop())
    assert manifest.version == f"{repo_id}@{commit}"
    by_path = {f.path: f for f in manifest.files}
    for path, data in versions["v1"].items():
        assert by_path[path].sha256 == "sha256:" + hashlib.sha256(data).hexdigest()
        assert by_path[path].size == len(data)


def test_unknown_revision_or_repository_is_one_clear_error_line(
    hub_mirror: HubMirror, repo: tuple[str, dict[str, dict[str, bytes]]], tmp_path: Path
) -> None:
    repo_id, versions = repo
    make_repo(hub_mirror.mirrors, repo_id, versions["v1"], "v1")
    for registry, version, words in (
        (f"hf://{repo_id}", "no-such-branch", "no-such-branch"),
        ("hf://qwen-tests/absent", "main", "not found"),
    ):
        r = subprocess.run(
            [*QWENCTL, "model", "pull", "--registry", registry, "--version", version, "--cache", str(tmp_path / "c")],
            env=env_for(hub_mirror),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert "Traceback" not in r.stderr
        errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and words in errors[0], r.stderr
    assert not (tmp_path / "c" / "models").exists() or not any((tmp_path / "c" / "models").rglob("current"))
    with pytest.raises(NotFoundError):
        HubRegistry.from_env(f"hf://{repo_id}", endpoint=hub_mirror.endpoint).resolve(version="nope")


def test_pushing_to_hf_is_refused_with_a_pointer_to_the_hub_tools(hub_mirror: HubMirror) -> None:
    reg = open_registry("hf://qwen-tests/anything", endpoint_url=hub_mirror.endpoint)
    with pytest.raises(RegistryError, match="read-only"):
        reg.missing_blobs(["sha256:" + "0" * 64])


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        type(self).seen.append(self.headers.get("Authorization"))
        self.send_response(401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_the_token_from_the_credentials_secret_is_sent_as_a_bearer_header(monkeypatch: pytest.MonkeyPatch) -> None:
    # Olah offline has no access control, so a loopback recorder stands in for the Hub's auth check here
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HF_TOKEN", "hf_test_token_123")
        reg = HubRegistry.from_env("hf://org/private", endpoint=f"http://127.0.0.1:{server.server_port}")
        with pytest.raises(RegistryError) as info:
            reg.resolve(version="main")
        assert "hf_test_token_123" not in str(info.value)  # never echoed
        assert _Recorder.seen and all(a == "Bearer hf_test_token_123" for a in _Recorder.seen)
    finally:
        server.shutdown()

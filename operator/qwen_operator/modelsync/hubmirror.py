"""A real Hugging Face Hub-compatible server on loopback for ``hf://`` tests: Olah.

Why it exists: ``hf://`` pulls (:mod:`qwen_operator.modelsync.hub`) must be tested against a
server that speaks the Hub's HTTP API the way huggingface_hub expects, and huggingface.co
is not reachable here. Olah (https://github.com/vtuber-plan/olah, MIT; on PyPI) is a
self-hosted Hub mirror that teams run for exactly the ``HF_ENDPOINT`` use case; with
``offline = true`` and ``mirrors-path`` it serves local git repositories as Hub
repositories (``/api/models/ORG/REPO/revision/REV``, ``/tree/``, ``/resolve/``), including
git-LFS files (pointer in git, object under ``.git/lfs/objects``), which is how the Hub
stores weights. Olah ignores ``Range`` on local mirrors (it answers 200 with the whole
file); the pull copes with that by skipping forward.

``build()`` installs Olah into its own virtualenv under the tool cache
(``~/.cache/qwen-operator/olah-<version>/``, ``QWEN_OPERATOR_CACHE`` overrides), so its
dependencies never touch the project's environment. :class:`HubMirror` starts it on a free
loopback port; :func:`make_repo` writes a Hub-style repository (small files in git, weight
files as LFS objects) and commits it, without the git-lfs binary (the pointer format is
https://github.com/git-lfs/git-lfs/blob/main/docs/spec.md).

    python -m qwen_operator.modelsync.hubmirror build
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from qwen_operator.modelsync.s3server import cache_root, free_port

NAME = "olah"
VERSION = "0.5.4"
BUILD_COMMAND = "python -m qwen_operator.modelsync.hubmirror build"
#: uvicorn's access log line: ``127.0.0.1:PORT - "GET /path HTTP/1.1" 200 OK``
_ACCESS = re.compile(r'"(GET|HEAD) (\S+) HTTP/[0-9.]+" (\d{3})')
LFS_MIN_BYTES = 1 << 20  # files this size or larger are stored as LFS objects, as the Hub does for weights


class MissingMirrorError(RuntimeError):
    """Olah is not installed; the message says how to install it."""


def venv_dir() -> Path:
    return cache_root() / f"{NAME}-{VERSION}"


def python_path() -> Path:
    return venv_dir() / "bin" / "python"


def locate() -> Path:
    path = python_path()
    if not (path.is_file() and (venv_dir() / ".installed").is_file()):
        raise MissingMirrorError(
            f"the Hub mirror test server ({NAME} {VERSION}) is not installed (looked for {venv_dir()}). "
            f"Run `make setup` or `{BUILD_COMMAND}` to install it from PyPI."
        )
    return path


def build(force: bool = False) -> Path:
    """Install Olah into its own virtualenv in the tool cache (no-op when present)."""
    target = venv_dir()
    if (target / ".installed").is_file() and not force:
        print(f"{NAME} {VERSION} present: {target}")
        return python_path()
    shutil.rmtree(target, ignore_errors=True)  # a half-installed one (no .installed marker) is redone
    print(f"installing {NAME} {VERSION} from PyPI into {target}")
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(target)], check=True)
    pip = [str(target / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    proc = subprocess.run([*pip, f"{NAME}=={VERSION}"], check=False)
    if proc.returncode != 0:
        raise MissingMirrorError(f"`pip install {NAME}=={VERSION}` failed with exit code {proc.returncode}")
    (target / ".installed").write_text(f"{NAME}=={VERSION}\n")
    print(f"installed {NAME} {VERSION} in {time.monotonic() - start:.0f}s")
    return python_path()


def _git(repo: Path, *args: str) -> str:
    env = dict(
        os.environ,
        GIT_AUTHOR_NAME="qwen-operator tests",
        GIT_AUTHOR_EMAIL="tests@qwenops.invalid",
        GIT_COMMITTER_NAME="qwen-operator tests",
        GIT_COMMITTER_EMAIL="tests@qwenops.invalid",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_CONFIG_NOSYSTEM="1",
    )
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def make_repo(mirrors: Path, repo_id: str, files: Mapping[str, bytes], message: str = "update") -> str:
    """Write ``files`` into the mirror repository ``repo_id`` (created on first use) and commit them
    on ``main``; returns the commit sha. Files of :data:`LFS_MIN_BYTES` or more become LFS objects."""
    repo = mirrors / "models" / repo_id
    if not (repo / ".git").is_dir():
        repo.mkdir(parents=True, exist_ok=True)
        _git(repo, "init", "--quiet", "--initial-branch=main")
    for rel, data in files.items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if len(data) >= LFS_MIN_BYTES:
            oid = hashlib.sha256(data).hexdigest()
            obj = repo / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
            obj.parent.mkdir(parents=True, exist_ok=True)
            obj.write_bytes(data)
            path.write_text(f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n")
        else:
            path.write_bytes(data)
        _git(repo, "add", "--", rel)
    _git(repo, "commit", "--quiet", "--allow-empty", "-m", message)
    return _git(repo, "rev-parse", "HEAD")


class HubMirror:
    """Olah serving ``mirrors`` offline on 127.0.0.1 (use as a context manager or call ``stop``)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.mirrors = workdir / "mirrors"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "olah.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> HubMirror:
        python = locate()
        self.mirrors.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = self.workdir / "olah.toml"
        config.write_text(
            "[basic]\n"
            'host = "127.0.0.1"\n'
            f"port = {self.port}\n"
            f'mirrors-path = ["{self.mirrors}"]\n'
            f'repos-path = "{self.workdir / "repos"}"\n'
            "[accessibility]\n"
            "offline = true\n"
        )
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                [str(python), "-m", "olah.server", "-c", str(config)],
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"olah exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/api/whoami-v2", timeout=2):
                    break
            except urllib.error.HTTPError:
                break  # it answers (401 without a token): serving
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"olah did not listen on {self.endpoint} in {timeout:.0f}s: {self.log_tail()}"
                    ) from None
                time.sleep(0.2)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> HubMirror:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def requests(self) -> list[tuple[str, str, int]]:
        """``(method, path, status)`` of every request the server logged so far."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return [(m.group(1), m.group(2), int(m.group(3))) for m in _ACCESS.finditer(text)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="The Hub-compatible test server (Olah) for hf:// model-sync tests")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help=f"install {NAME} {VERSION} into the tool cache")
    b.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    try:
        build(force=args.force)
    except (MissingMirrorError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

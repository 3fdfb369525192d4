"""Build and run the real S3-compatible object store used by model-sync tests and benches.

The registry is "any S3-compatible bucket", so tests must talk to a real S3 server, not
to boto3 stubs. There is no Docker or download site here, only the Go module proxy, so
we build **versitygw** (Versity S3 Gateway, Apache-2.0) with ``go install``: one static
binary whose ``posix`` backend stores each object as a file (a bucket is a directory).
It implements what the registry needs -- multipart upload, ranged GET, HEAD,
ListObjectsV2, conditional PUT (``If-None-Match: *``) and SigV4 auth -- and writes an
S3-format server access log (``--access-log``), one line per request, which tests use to
count GETs. (Its stdout request log is switched off with ``--quiet``: concurrent requests
interleave pieces of its lines, so it cannot be counted reliably.)

``python -m qwen_operator.modelsync.s3server build`` (run by ``make setup``) compiles it
into ``~/.cache/qwen-operator/versitygw-<version>/bin`` (``QWEN_OPERATOR_CACHE``
overrides the root) when missing. The build path uses the standard library only.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

NAME = "versitygw"
VERSION = "v1.8.0"
PACKAGE = f"github.com/versity/versitygw/cmd/versitygw@{VERSION}"
BUILD_COMMAND = "python -m qwen_operator.modelsync.s3server build"


# One access-log line: owner bucket [time] ip requester request-id operation key request-uri status ...
# (the key is logged unescaped and may hold spaces, so anchor on the URI and status after it)
_ACCESS_LINE = re.compile(r"^\S+ \S+ \[[^\]]*\] \S+ \S+ \S+ s3_(\w+) .*? (/\S*) (\d{3}) ")
_POST_OPERATIONS = {"CreateMultipartUpload", "CompleteMultipartUpload", "DeleteObjects", "RestoreObject"}


def http_method(operation: str) -> str:
    """The HTTP method of an S3 operation as the access log names it (``GetObject`` -> ``GET``)."""
    if operation in _POST_OPERATIONS:
        return "POST"
    prefixes = (("Head", "HEAD"), ("Get", "GET"), ("List", "GET"), ("Delete", "DELETE"), ("Abort", "DELETE"))
    for prefix, method in prefixes:
        if operation.startswith(prefix):
            return method
    return "PUT"  # PutObject, UploadPart, CopyObject, CreateBucket, Put*Configuration...


class MissingServerError(RuntimeError):
    """The S3 server binary is not built; the message says how to build it."""


def cache_root() -> Path:
    env = os.environ.get("QWEN_OPERATOR_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "qwen-operator"


def bin_dir() -> Path:
    return cache_root() / f"{NAME}-{VERSION}" / "bin"


def binary_path() -> Path:
    return bin_dir() / NAME


def locate() -> Path:
    path = binary_path()
    if not path.is_file():
        raise MissingServerError(
            f"the S3 test server ({NAME} {VERSION}) is not built (looked for {path}). "
            f"Run `make setup` or `{BUILD_COMMAND}` to build it from the Go module proxy (needs Go >= 1.25)."
        )
    return path


def build(force: bool = False) -> Path:
    """Compile versitygw with ``go install`` into the cache (no-op when present)."""
    target = binary_path()
    if target.is_file() and not force:
        print(f"{NAME} {VERSION} present: {target}")
        return target
    go = shutil.which("go")
    if go is None:
        raise MissingServerError("`go` not found on PATH: install Go >= 1.25 (https://go.dev/doc/install).")
    staging = target.parent.with_name("bin.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    env = dict(os.environ, GOBIN=str(staging), CGO_ENABLED="0")
    print(f"building {NAME} {VERSION} from the Go module proxy (go install {PACKAGE}); this takes a few minutes")
    start = time.monotonic()
    proc = subprocess.run([go, "install", "-trimpath", PACKAGE], env=env, check=False)
    if proc.returncode != 0:
        raise MissingServerError(f"`go install {PACKAGE}` failed with exit code {proc.returncode} (output above).")
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging / NAME, target)
    shutil.rmtree(staging, ignore_errors=True)
    print(f"built {target} in {time.monotonic() - start:.0f}s")
    return target


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class S3Server:
    """A running versitygw process on 127.0.0.1 serving ``data_dir`` (one dir per bucket)."""

    data_dir: Path
    access_key: str = "qwenops-test"
    secret_key: str = "qwenops-test-secret-key"
    region: str = "us-east-1"
    port: int = 0
    log_path: Path | None = None
    access_log_path: Path | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The standard AWS variables a client (boto3, ``qwenctl``) needs to reach it."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def start(self, timeout: float = 30.0) -> S3Server:
        binary = locate()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        if self.log_path is None:
            self.log_path = self.data_dir.parent / f"{NAME}-{self.port}.log"
        if self.access_log_path is None:
            self.access_log_path = self.data_dir.parent / f"{NAME}-{self.port}.access.log"
        self._log = self.log_path.open("ab")
        cmd = [
            str(binary),
            "--access",
            self.access_key,
            "--secret",
            self.secret_key,
            "--region",
            self.region,
            "--port",
            f"127.0.0.1:{self.port}",
            "--keep-alive",
            "--quiet",
            "--access-log",
            str(self.access_log_path),
            "posix",
            str(self.data_dir),
        ]
        self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"{NAME} exited with code {self._proc.returncode}; see {self.log_path}")
            try:
                # Any HTTP answer (403 for an unsigned request) means the listener is up.
                urllib.request.urlopen(self.endpoint_url + "/", timeout=1).close()
                return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{NAME} did not answer on {self.endpoint_url} within {timeout:.0f}s; see {self.log_path}")

    def request_log(self) -> list[tuple[str, str, int]]:
        """``(method, path, status)`` of every request served so far, from the access log.

        ``path`` is the request URI (``/bucket/key?query``); the log is written after each
        request completes, so callers that need "everything up to now" send a barrier request.
        """
        if self.access_log_path is None or not self.access_log_path.exists():
            return []
        out: list[tuple[str, str, int]] = []
        for line in self.access_log_path.read_text(errors="replace").splitlines():
            m = _ACCESS_LINE.match(line)
            if m:
                out.append((http_method(m.group(1)), m.group(2), int(m.group(3))))
        return out

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qwen_operator.modelsync.s3server", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the S3 server into the cache if missing")
    b.add_argument("--force", action="store_true", help="rebuild even when present")
    sub.add_parser("path", help="print the binary path (fails if not built)")
    r = sub.add_parser("run", help="run a server in the foreground (Ctrl-C stops it)")
    r.add_argument("--data-dir", type=Path, required=True)
    r.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "build":
            build(force=args.force)
        elif args.cmd == "path":
            print(locate())
        else:
            server = S3Server(data_dir=args.data_dir, port=args.port).start()
            for k, v in server.env().items():
                print(f"export {k}={v}")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                server.stop()
    except MissingServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

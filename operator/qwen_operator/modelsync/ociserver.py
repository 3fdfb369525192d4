"""Build and run the real OCI registry used by the ``oci://`` model-sync tests and benches.

The ``oci://`` backend must be tested against a real registry, not a fake, so this builds
**CNCF distribution** (``registry``, the reference OCI distribution server that Harbor and
GitLab embed, Apache-2.0) with ``go install`` from the Go module proxy -- there is no
Docker or download site here. Its ``filesystem`` storage driver keeps each blob as a file
(``docker/registry/v2/blobs/sha256/<2 hex>/<hex>/data``), which tests corrupt on purpose.

Each server gets its own YAML configuration (see :meth:`OCIServer.config`): a loopback
address, optional TLS (certificate and key), optional ``htpasswd`` (bcrypt) or ``token``
authentication, optionally the ``s3`` storage driver (blob GETs then redirect to
presigned URLs of the bucket, as behind Harbor on S3), and the access log switched on.
The access log is Apache's combined format on the registry's stdout, one ``write`` per
request after the response is sent, so :meth:`OCIServer.request_log` can count blob GETs
and PUTs the way the S3 tests count them in versitygw's access log.

``python -m qwen_operator.modelsync.ociserver build`` (``make ociregistry``, part of
``make setup``) compiles it into ``~/.cache/qwen-operator/distribution-<version>/bin``
(``QWEN_OPERATOR_CACHE`` overrides the root) when missing, together with the **ORAS**
CLI (``oras.land/oras``, Apache-2.0), which the interop test uses to show that what we
push is an OCI artifact standard tooling reads and copies. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from qwen_operator.modelsync.s3server import MissingServerError, cache_root, free_port

NAME = "registry"
VERSION = "v3.1.2"
PACKAGE = f"github.com/distribution/distribution/v3/cmd/registry@{VERSION}"
BUILD_COMMAND = "python -m qwen_operator.modelsync.ociserver build"
ORAS_VERSION = "v1.3.6"
ORAS_PACKAGE = f"oras.land/oras/cmd/oras@{ORAS_VERSION}"

# gorilla/handlers combined log: host ident user [time] "METHOD URI PROTO" status size "referer" "agent"
_ACCESS_LINE = re.compile(r'^\S+ \S+ \S+ \[[^\]]*\] "([A-Z]+) (\S+) HTTP/[0-9.]+" (\d{3}) ')


def bin_dir() -> Path:
    return cache_root() / f"distribution-{VERSION}" / "bin"


def binary_path() -> Path:
    return bin_dir() / NAME


def oras_path() -> Path:
    return cache_root() / f"oras-{ORAS_VERSION}" / "bin" / "oras"


def _locate(path: Path, what: str) -> Path:
    if not path.is_file():
        raise MissingServerError(
            f"{what} is not built (looked for {path}). "
            f"Run `make ociregistry` or `{BUILD_COMMAND}` to build it from the Go module proxy (needs Go >= 1.25)."
        )
    return path


def locate() -> Path:
    return _locate(binary_path(), f"the OCI test registry (CNCF distribution {VERSION})")


def locate_oras() -> Path:
    return _locate(oras_path(), f"the ORAS CLI {ORAS_VERSION}")


def build(force: bool = False) -> Path:
    """Compile distribution's ``registry`` and the ORAS CLI with ``go install`` into the cache
    (each a no-op when present); returns the registry's path."""
    _go_install(PACKAGE, binary_path(), f"distribution {VERSION}", force)
    _go_install(ORAS_PACKAGE, oras_path(), f"oras {ORAS_VERSION}", force)
    return binary_path()


def _go_install(package: str, target: Path, what: str, force: bool) -> None:
    if target.is_file() and not force:
        print(f"{what} present: {target}")
        return
    go = shutil.which("go")
    if go is None:
        raise MissingServerError("`go` not found on PATH: install Go >= 1.25 (https://go.dev/doc/install).")
    staging = target.parent.with_name("bin.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    env = dict(os.environ, GOBIN=str(staging), CGO_ENABLED="0")
    print(f"building {what} from the Go module proxy (go install {package}); this takes a few minutes")
    start = time.monotonic()
    proc = subprocess.run([go, "install", "-trimpath", package], env=env, check=False)
    if proc.returncode != 0:
        raise MissingServerError(f"`go install {package}` failed with exit code {proc.returncode} (output above).")
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging / target.name, target)
    shutil.rmtree(staging, ignore_errors=True)
    print(f"built {target} in {time.monotonic() - start:.0f}s")


@dataclass(frozen=True)
class TokenAuth:
    """distribution's ``auth: token`` settings: it trusts JWTs from ``issuer`` for ``service``,
    signed by a key whose certificate chains to ``root_cert_bundle``, and sends clients to
    ``realm`` to get them."""

    realm: str
    service: str
    issuer: str
    root_cert_bundle: Path


@dataclass
class OCIServer:
    """A running distribution ``registry`` on 127.0.0.1 storing blobs under ``data_dir``."""

    data_dir: Path
    port: int = 0
    tls_cert: Path | None = None  # serve HTTPS with this certificate chain (PEM)...
    tls_key: Path | None = None  # ...and key
    htpasswd: Path | None = None  # basic auth (bcrypt htpasswd file)
    token: TokenAuth | None = None  # bearer-token auth
    s3_storage: dict[str, Any] | None = None  # the ``s3`` storage driver's settings instead of ``data_dir``
    log_path: Path | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls_cert else 'http'}://{self.host}"

    def url(self, repository: str = "models/qwen3-test") -> str:
        """The ``oci://`` registry URL of a repository on this server."""
        return f"oci://{self.host}/{repository}"

    @property
    def storage_root(self) -> Path:
        """Where the filesystem driver keeps repositories and blobs."""
        return self.data_dir / "docker" / "registry" / "v2"

    def blob_file(self, digest: str) -> Path:
        hexd = digest.split(":", 1)[1]
        return self.storage_root / "blobs" / "sha256" / hexd[:2] / hexd / "data"

    def config(self) -> dict[str, Any]:
        http: dict[str, Any] = {
            "addr": self.host,
            "secret": "qwenops-test-upload-state-secret",  # HMAC of upload state; fixed so restarts resume uploads
            "draintimeout": "1s",
        }
        if self.tls_cert is not None and self.tls_key is not None:
            http["tls"] = {"certificate": str(self.tls_cert), "key": str(self.tls_key)}
        cfg: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "warn", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {
                # on S3 the registry answers blob GETs with a redirect to a presigned URL (as Harbor does)
                **(
                    {"s3": self.s3_storage}
                    if self.s3_storage
                    else {"filesystem": {"rootdirectory": str(self.data_dir)}}
                ),
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": http,
        }
        if self.htpasswd is not None:
            cfg["auth"] = {"htpasswd": {"realm": "qwenops-test", "path": str(self.htpasswd)}}
        elif self.token is not None:
            cfg["auth"] = {
                "token": {
                    "realm": self.token.realm,
                    "service": self.token.service,
                    "issuer": self.token.issuer,
                    "rootcertbundle": str(self.token.root_cert_bundle),
                }
            }
        return cfg

    def start(self, timeout: float = 30.0) -> OCIServer:
        binary = locate()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        if self.log_path is None:
            self.log_path = self.data_dir.parent / f"registry-{self.port}.log"
        config_path = self.data_dir.parent / f"registry-{self.port}.yaml"
        config_path.write_text(json.dumps(self.config(), indent=2))  # JSON is YAML
        self._log = self.log_path.open("ab")
        # Tracing is on by default in v3 (OTLP to localhost); nothing here collects it.
        env = dict(os.environ, OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none")
        self._proc = subprocess.Popen(
            [str(binary), "serve", str(config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # readiness only: any answer means the listener is up
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"registry exited with code {self._proc.returncode}; see {self.log_path}")
            try:
                urllib.request.urlopen(self.base_url + "/v2/", timeout=1, context=context).close()
                return
            except urllib.error.HTTPError:
                return  # 401 with auth on: up
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"registry did not answer on {self.base_url} within {timeout:.0f}s; see {self.log_path}")

    def request_log(self) -> list[tuple[str, str, int]]:
        """``(method, uri, status)`` of every request served so far, from the access log.

        A line is written after its response was sent, so callers that need "everything
        up to now" send a barrier request and wait for its line (see ``testing.oci``).
        """
        if self.log_path is None or not self.log_path.exists():
            return []
        out: list[tuple[str, str, int]] = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            m = _ACCESS_LINE.match(line)
            if m:
                out.append((m.group(1), m.group(2), int(m.group(3))))
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

    def __enter__(self) -> OCIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qwen_operator.modelsync.ociserver", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the OCI registry into the cache if missing")
    b.add_argument("--force", action="store_true", help="rebuild even when present")
    sub.add_parser("path", help="print the binary path (fails if not built)")
    r = sub.add_parser("run", help="run an anonymous registry in the foreground (Ctrl-C stops it)")
    r.add_argument("--data-dir", type=Path, required=True)
    r.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "build":
            build(force=args.force)
        elif args.cmd == "path":
            print(locate())
        else:
            server = OCIServer(data_dir=args.data_dir, port=args.port).start()
            print(f"registry on {server.base_url}: qwenctl model push DIR --registry {server.url()} --version v1")
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

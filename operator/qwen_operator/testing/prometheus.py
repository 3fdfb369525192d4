"""Pytest fixture for the real Prometheus server (loopback, file-based service discovery), and
Prometheus as users secure it: TLS and basic auth (:class:`SecuredPrometheus`, Prometheus's own
``--web.config.file``) and a bearer-token proxy in front of it (:class:`BearerProxy`).

Prometheus has no bearer-token check of its own; in clusters one sits in front of it
(kube-rbac-proxy, oauth2-proxy, OpenShift's Thanos querier). :class:`BearerProxy` is that role
reduced to what the operator's client must get right: HTTPS with a certificate from a test CA,
``Authorization: Bearer <token>`` compared to the expected token (401 otherwise), every request's
headers recorded, and the request forwarded to the real Prometheus with the proxy's own
credentials. It is not kube-rbac-proxy (no TokenReview / SubjectAccessReview).
"""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import http.server
import ipaddress
import json
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..sandbox.prometheus import PrometheusServer

__all__ = ["prometheus"]


@pytest.fixture()
def prometheus(tmp_path: Path) -> Iterator[PrometheusServer]:
    server = PrometheusServer(tmp_path / "prometheus", scrape_interval="1s")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass(frozen=True)
class TLSFiles:
    """A test CA and a server certificate for 127.0.0.1 signed by it (PEM files)."""

    ca: Path
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context


def make_tls(directory: Path) -> TLSFiles:
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "qwen-operator test CA")])

    def base(subject: x509.Name, public: Any) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
        )

    ca = (
        base(ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    cert = (
        base(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]), key.public_key())
        .add_extension(san, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = TLSFiles(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    files.key.write_bytes(pem)
    files.key.chmod(0o600)
    return files


def basic_auth(user: str, password: str) -> str:
    """An ``Authorization`` header value for HTTP basic auth."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def https_get(url: str, tls: TLSFiles, authorization: str = "") -> tuple[int, bytes]:
    """``GET url`` verified against the test CA, with ``authorization`` when given: (status, body)."""
    request = urllib.request.Request(url)
    if authorization:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=5, context=tls.client_context()) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class SecuredPrometheus(PrometheusServer):
    """The real Prometheus serving HTTPS only, with HTTP basic auth (``--web.config.file``:
    ``tls_server_config`` and bcrypt ``basic_auth_users``). Every endpoint needs the credentials."""

    def __init__(self, directory: Path, tls: TLSFiles, users: dict[str, str], scrape_interval: str = "1s") -> None:
        super().__init__(directory, scrape_interval=scrape_interval)
        import bcrypt  # test dependency: Prometheus stores bcrypt hashes only

        self.tls = tls
        self.user, self.password = next(iter(users.items()))
        web = {
            "tls_server_config": {"cert_file": str(tls.cert), "key_file": str(tls.key)},
            "basic_auth_users": {
                u: bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode() for u, p in users.items()
            },
        }
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "web.yml").write_text(yaml.safe_dump(web))
        self.extra_args = [f"--web.config.file={directory / 'web.yml'}"]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def get(self, path: str, authorization: str | None = None) -> tuple[int, bytes]:
        """``GET path`` verified against the test CA; ``authorization`` None: this server's own user."""
        auth = basic_auth(self.user, self.password) if authorization is None else authorization
        return https_get(f"{self.url}{path}", self.tls, auth)

    def ready(self) -> bool:
        try:
            return self.get("/-/ready")[0] == 200
        except (urllib.error.URLError, OSError):
            return False

    def query(self, promql: str) -> list[dict[str, Any]]:
        status, body = self.get("/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        if status != 200:
            raise RuntimeError(f"query failed: HTTP {status}")
        result: list[dict[str, Any]] = json.loads(body)["data"]["result"]
        return result


class BearerProxy:
    """HTTPS on loopback, ``Authorization: Bearer <token>`` required, forwarded to ``upstream`` with the
    proxy's own ``upstream_auth`` (see the module docstring). ``seen`` holds the headers of every request
    that arrived, accepted or not."""

    def __init__(self, upstream: SecuredPrometheus, upstream_auth: str, token: str, tls: TLSFiles) -> None:
        self.upstream, self.upstream_auth, self.token, self.tls = upstream, upstream_auth, token, tls
        self.seen: list[dict[str, str]] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                headers = dict(self.headers.items())
                proxy.seen.append(headers)
                given = headers.get("Authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {proxy.token}".encode()):
                    self._reply(401, b"Unauthorized\n")
                    return
                status, body = proxy.upstream.get(self.path, proxy.upstream_auth)
                self._reply(status, body)

            def _reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json" if status == 200 else "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.socket = tls.server_context().wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, name="bearer-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> BearerProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

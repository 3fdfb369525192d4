"""Pytest fixtures for the real OCI registry (CNCF distribution on 127.0.0.1).

``oci_server`` starts one anonymous plain-HTTP registry per session; ``oci_repo`` gives
each test a fresh repository on it, the environment a ``qwenctl`` subprocess needs, and
the registry's own access log filtered to that repository (to count blob GETs and PUTs).

``oci_secured`` starts registries the way users run them, each its own process:

* ``basic`` -- ``auth: htpasswd`` with a bcrypt htpasswd file written here;
* ``token`` -- ``auth: token``: the registry trusts JWTs signed by a test key, and
  :class:`TokenIssuer` is the token service (a **test component** standing in for
  Harbor's or Docker's: it checks basic credentials against a user table and issues a
  signed JWT, ES256 with the certificate in ``x5c``, granting the actions that user may
  do on the requested repository) -- the registry side is distribution's real verifier;
* ``tls`` -- HTTPS with a certificate for 127.0.0.1 signed by a test CA (the sandbox's
  PKI helper), so clients must be given the CA bundle.

A missing binary fails the test with the command that builds it -- never a silent skip.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import http.server
import itertools
import json
import os
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from qwen_operator.modelsync.ociserver import OCIServer, TokenAuth
from qwen_operator.modelsync.s3server import MissingServerError, free_port

__all__ = ["oci_server", "oci_repo", "oci_secured"]

_counter = itertools.count()
USER, PASSWORD = "qwen-pusher", "pusher-secret"
READER, READER_PASSWORD = "qwen-reader", "reader-secret"
SERVICE = "qwenops-test-registry"


def clean_env(**extra: str) -> dict[str, str]:
    """``os.environ`` without any ``OCI_*`` variable of the developer's, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCI_")}
    env.update(extra)
    return env


def _start(server: OCIServer) -> OCIServer:
    try:
        return server.start()
    except MissingServerError as exc:
        message = str(exc)
    pytest.fail(message, pytrace=False)


@dataclass
class OCIRepo:
    server: OCIServer
    repository: str
    env: dict[str, str]  # os.environ (no OCI_* of the developer's) plus what this registry needs

    @property
    def url(self) -> str:
        return self.server.url(self.repository)

    def requests(self, method: str | None = None) -> list[tuple[str, str, int]]:
        """Requests the registry logged for this repository (optionally one method).

        A line is written after its response went out, so first send a barrier request
        and wait for its line, then for the log to be quiet (as ``testing.s3`` does).
        """
        return [
            r
            for r in settled_log(self.server)
            if r[1].startswith(f"/v2/{self.repository}/") and (method is None or r[0] == method)
        ]

    def blob_gets(self) -> list[str]:
        """Digests of the blob GETs that were answered with content (200/206)."""
        return [r[1].rsplit("/", 1)[1] for r in self.requests("GET") if "/blobs/sha256:" in r[1] and r[2] in (200, 206)]

    def blob_puts(self) -> int:
        """Completed blob uploads (the final ``PUT .../blobs/uploads/...?digest=``, 201)."""
        return sum(1 for r in self.requests("PUT") if "/blobs/uploads/" in r[1] and r[2] == 201)


def settled_log(server: OCIServer) -> list[tuple[str, str, int]]:
    barrier = f"/v2/log-barrier/n{next(_counter)}/tags/list"
    conn = (
        http.client.HTTPSConnection("127.0.0.1", server.port, timeout=5, context=ssl._create_unverified_context())
        if server.tls_cert
        else http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    )
    try:
        conn.request("GET", barrier)
        conn.getresponse().read()
    finally:
        conn.close()
    deadline = time.monotonic() + 10
    log = server.request_log()
    while not any(r[1] == barrier for r in log) and time.monotonic() < deadline:
        time.sleep(0.02)
        log = server.request_log()
    quiet_since, size = time.monotonic(), len(log)
    while time.monotonic() - quiet_since < 0.3 and time.monotonic() < deadline:
        time.sleep(0.05)
        log = server.request_log()
        if len(log) != size:
            quiet_since, size = time.monotonic(), len(log)
    return log


@pytest.fixture(scope="session")
def oci_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OCIServer]:
    server = _start(OCIServer(data_dir=tmp_path_factory.mktemp("oci") / "data"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def oci_repo(oci_server: OCIServer) -> OCIRepo:
    return OCIRepo(oci_server, f"models/qwt-{os.getpid()}-{next(_counter)}", clean_env())


# --- secured registries --------------------------------------------------------------------


def write_htpasswd(path: Path, users: dict[str, str]) -> Path:
    """An htpasswd file with bcrypt hashes (the only kind distribution accepts)."""
    import bcrypt

    lines = [
        f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4, prefix=b'2a')).decode()}" for u, p in users.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenIssuer:
    """A test token service (see the module docstring): ``GET /token?service=&scope=``."""

    def __init__(self, directory: Path, users: dict[str, tuple[str, tuple[str, ...]]]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.users = users  # name -> (password, actions granted on any repository)
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "qwenops-test-token-issuer")])
        now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(self.key, hashes.SHA256())
        )
        self.bundle = directory / "token-issuer.crt"
        self.bundle.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.issued: list[tuple[str, str]] = []  # (user or "", scope) of every token handed out
        self.port = free_port()
        self.issuer = "qwenops-test-issuer"
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                issuer._handle(self)

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def auth(self) -> TokenAuth:
        return TokenAuth(realm=self.realm, service=SERVICE, issuer=self.issuer, root_cert_bundle=self.bundle)

    def _handle(self, req: http.server.BaseHTTPRequestHandler) -> None:
        url = urllib.parse.urlsplit(req.path)
        query = urllib.parse.parse_qs(url.query)
        user = ""
        granted: tuple[str, ...] = ()  # anonymous: a token granting nothing
        header = req.headers.get("Authorization", "")
        if header.startswith("Basic "):
            name, _, password = base64.b64decode(header[6:]).decode().partition(":")
            entry = self.users.get(name)
            if entry is None or entry[0] != password:
                body = json.dumps({"errors": [{"code": "UNAUTHORIZED", "message": "bad username or password"}]})
                self._reply(req, 401, body.encode())
                return
            user, granted = name, entry[1]
        access = []
        for scope in query.get("scope", []):
            kind, _, rest = scope.partition(":")
            repo, _, actions = rest.rpartition(":")
            allowed = [a for a in actions.split(",") if a in granted]
            access.append({"type": kind, "name": repo, "actions": allowed})
            self.issued.append((user, scope))
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": user,
            "aud": query.get("service", [""])[0],
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": f"t{next(_counter)}",
            "access": access,
        }
        der = base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()
        head = _b64url(json.dumps({"alg": "ES256", "typ": "JWT", "x5c": [der]}).encode())
        payload = _b64url(json.dumps(claims).encode())
        r, s = decode_dss_signature(self.key.sign(f"{head}.{payload}".encode(), ec.ECDSA(hashes.SHA256())))
        token = f"{head}.{payload}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
        self._reply(req, 200, json.dumps({"token": token, "expires_in": 300}).encode())

    @staticmethod
    def _reply(req: http.server.BaseHTTPRequestHandler, status: int, body: bytes) -> None:
        req.send_response(status)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class Secured:
    """Registries with basic auth, token auth and TLS (each its own process)."""

    root: Path
    servers: dict[str, OCIServer] = field(default_factory=dict)
    issuer: TokenIssuer | None = None
    ca_bundle: Path | None = None

    def repo(self, kind: str, **env: str) -> OCIRepo:
        return OCIRepo(self.servers[kind], f"models/qwt-{os.getpid()}-{next(_counter)}", clean_env(**env))

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()
        if self.issuer is not None:
            self.issuer.stop()


@pytest.fixture(scope="module")
def oci_secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    from qwen_operator.sandbox.pki import PKI

    root = tmp_path_factory.mktemp("oci-secured")
    secured = Secured(root)
    try:
        htpasswd = write_htpasswd(root / "htpasswd", {USER: PASSWORD})
        secured.servers["basic"] = _start(OCIServer(data_dir=root / "basic" / "data", htpasswd=htpasswd))
        secured.issuer = TokenIssuer(
            root / "issuer", {USER: (PASSWORD, ("pull", "push")), READER: (READER_PASSWORD, ("pull",))}
        )
        secured.servers["token"] = _start(OCIServer(data_dir=root / "token" / "data", token=secured.issuer.auth()))
        # The sandbox PKI's serving certificate has 127.0.0.1 and localhost as SANs.
        pki = PKI(root / "pki")
        pki.ensure()
        secured.ca_bundle = pki.ca_cert
        secured.servers["tls"] = _start(
            OCIServer(data_dir=root / "tls" / "data", tls_cert=pki.serving_cert, tls_key=pki.serving_key)
        )
        yield secured
    finally:
        secured.stop()

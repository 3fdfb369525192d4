"""The model registry on an OCI registry (Harbor, Zot, CNCF distribution, cloud registries).

``oci://HOST[:PORT]/REPOSITORY`` holds one model; the content-addressed format is the
one the S3 backend stores, mapped onto the OCI distribution API (urllib3, no SDK):

* **chunks are blobs** of the repository (``/v2/<repo>/blobs/sha256:<hex>``): our chunk
  digests are already OCI digests, so a chunk pushed once is shared by every version;
* **a version is an OCI image manifest** (``application/vnd.oci.image.manifest.v1+json``)
  whose layers are the chunk index and every chunk the version needs (so the registry's
  garbage collector keeps them, and ``oras copy`` or Harbor replication moves a whole
  version). Its digest -- the OCI manifest digest, the one ``oras``, Harbor and Zot show --
  is the version's identity on this backend (``spec.model.version: sha256:...``);
* **the chunk index** is the first layer, ``application/vnd.qwenops.model.manifest.v1+json``:
  exactly the document the S3 backend stores under ``manifests/`` (files, their sha256,
  their ordered chunks), with the same digest on both backends;
* **version names and tags are OCI tags** (``qwen3-14b:v1``, ``qwen3-14b:stable``).
  OCI has one tag namespace, so a tag whose name is the version recorded in its manifest
  (annotation ``org.opencontainers.image.version``) is the immutable version pointer and
  any other tag is a movable tag. ``set_version`` refuses to move a version tag and
  ``set_tag`` refuses to take a version's name. (The registry cannot do "create only"
  on a tag, so two pushes racing for the same new version name are checked, not locked;
  Harbor's immutable-tag rules can enforce it server-side.)

Where it follows CNCF ModelPack (``github.com/modelpack/model-spec``) and where not:
the config blob is a ModelPack model config (``application/vnd.cncf.model.config.v1+json``:
``descriptor`` name/version/createdAt, ``config.format``, ``modelfs.diffIds`` = the
layer digests, which for raw layers are their DiffIDs). The layers are *not* ModelPack
layers: a ModelPack layer is a whole file (``application/vnd.cncf.model.weight.v1.raw``
plus ``org.cncf.model.filepath``), ours are tensor-boundary chunks -- slices of files
that only the index can put back together -- typed
``application/vnd.qwenops.model.chunk.v1.raw``. So the manifest's ``artifactType`` is
our own (``application/vnd.qwenops.model.chunked.v1+json``) and a ModelPack puller
refuses it instead of writing chunks out as files. The chunking is what makes a
fine-tune move only its changed tensors; per-file layers would move whole shards.

Transfers: ``missing_blobs`` HEADs each chunk (OCI has no blob listing), uploads are
``POST /blobs/uploads/`` then one ``PUT ...?digest=`` streaming the chunk from the
file (the registry verifies the digest), downloads are GETs -- ranged when resuming --
read with ``readinto`` into one buffer; blob GETs that the registry redirects to its
storage (S3 behind Harbor) are followed without the Authorization header. Manifests
and the index are verified against their digests on read; chunks are verified by the
pull (file digest, then chunk by chunk).

Auth (one scheme per registry, learned from its ``401`` challenge):

* anonymous -- nothing set;
* basic -- ``OCI_USERNAME`` / ``OCI_PASSWORD``, sent once the registry answers
  ``WWW-Authenticate: Basic``;
* bearer-token flow -- on ``WWW-Authenticate: Bearer realm=...,service=...,scope=...``
  the client GETs ``realm?service=...&scope=...`` (with ``OCI_USERNAME`` /
  ``OCI_PASSWORD`` as basic auth when set, anonymously otherwise), caches the token per
  scope until it expires and retries; ``repository:<repo>:pull`` for reads,
  ``pull,push`` for pushes (Harbor, Docker Hub, GitLab, distribution ``auth: token``);
* ``OCI_TOKEN`` -- a bearer token used as is on every request (no token service).

These come from the same environment as the S3 keys: the model-pull init container gets
them from ``spec.model.credentialsSecret`` through ``envFrom``.

TLS: certificates are verified against ``OCI_CA_BUNDLE`` (a PEM file path, or the PEM
text itself -- convenient from a Secret key) when set, else the system trust store
(``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` apply). Plain HTTP is used only for a loopback
host that does not speak TLS (the first request tries HTTPS, as Docker does for
``localhost``) or when ``OCI_PLAIN_HTTP=true`` says so explicitly; credentials are
never sent to a token realm over plain HTTP off loopback.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import ipaddress
import json
import os
import re
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import urllib3
import urllib3.exceptions

from qwen_operator.modelsync.backend import (
    READ_BLOCK,
    DigestMismatchError,
    NotFoundError,
    RegistryError,
    TransferStats,
    TransientError,
    check_name,
)
from qwen_operator.modelsync.manifest import DIGEST_RE, Manifest, ManifestError
from qwen_operator.modelsync.manifest import MEDIA_TYPE as INDEX_MEDIA_TYPE

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ARTIFACT_TYPE = "application/vnd.qwenops.model.chunked.v1+json"
MODELPACK_CONFIG = "application/vnd.cncf.model.config.v1+json"
CHUNK_MEDIA_TYPE = "application/vnd.qwenops.model.chunk.v1.raw"
ANNOTATION_VERSION = "org.opencontainers.image.version"
ANNOTATION_CREATED = "org.opencontainers.image.created"
MAX_MANIFEST_BYTES = 4 << 20  # distribution's limit on a manifest PUT (Harbor and Zot accept at least this)
MAX_INDEX_BYTES = 256 << 20
UPLOAD_ATTEMPTS = 3
ENV_KEYS = ("OCI_USERNAME", "OCI_PASSWORD", "OCI_TOKEN", "OCI_CA_BUNDLE", "OCI_PLAIN_HTTP")

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_RE = re.compile(rf"^(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::(\d{{1,5}}))?$")
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_REPO_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TOKEN_CHARS = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_LINK_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


# --- configuration (pure) ---------------------------------------------------------------


@dataclass(frozen=True)
class OCIURL:
    host: str  # HOST[:PORT] as written
    repository: str

    @classmethod
    def parse(cls, url: str) -> OCIURL:
        m = re.match(r"^oci://([^/]+)/(.+)$", url)
        if not m:
            raise RegistryError(
                f"registry {url!r} is not of the form oci://HOST[:PORT]/REPOSITORY "
                "(e.g. oci://registry.example.com/models/qwen3-14b)"
            )
        host, repo = m.group(1), m.group(2).strip("/")
        hm = _HOST_RE.match(host)
        if not hm or (hm.group(1) is not None and not 0 < int(hm.group(1)) < 65536):
            raise RegistryError(f"registry {url!r}: {host!r} is not a valid HOST[:PORT]")
        if "@" in repo or ":" in repo:
            raise RegistryError(
                f"registry {url!r} names a tag or digest: give the repository only, and the version "
                "with --version/--tag (spec.model.version)"
            )
        if len(repo) > 255 or not _REPO_RE.match(repo):
            raise RegistryError(
                f"registry {url!r}: repository {repo!r} is invalid: lowercase [a-z0-9] path components "
                "separated by '.', '_', '__' or '-', joined by '/'"
            )
        return cls(host, repo)

    @property
    def hostname(self) -> str:
        host = self.host.rsplit(":", 1)[0] if not self.host.endswith("]") and ":" in self.host else self.host
        return host.strip("[]")

    def __str__(self) -> str:
        return f"oci://{self.host}/{self.repository}"


def is_loopback(hostname: str) -> bool:
    if hostname.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Credentials:
    """``OCI_USERNAME`` / ``OCI_PASSWORD`` (basic, and for the token service) or ``OCI_TOKEN``."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Credentials:
        user = env.get("OCI_USERNAME") or None
        password = env.get("OCI_PASSWORD") or None
        token = env.get("OCI_TOKEN") or None
        if (user is None) != (password is None):
            raise RegistryError("set both OCI_USERNAME and OCI_PASSWORD, or neither")
        if token and user:
            raise RegistryError("set either OCI_TOKEN or OCI_USERNAME/OCI_PASSWORD, not both")
        return cls(user, password, token)

    def basic(self) -> str | None:
        if self.username is None or self.password is None:
            return None
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()

    def hint(self) -> str:
        if self.token:
            return "OCI_TOKEN was refused; check it"
        if self.username:
            return f"check OCI_USERNAME ({self.username!r}) / OCI_PASSWORD and the account's rights on the repository"
        return "the registry wants credentials: set OCI_USERNAME/OCI_PASSWORD (or OCI_TOKEN)"


@dataclass(frozen=True)
class TLSSettings:
    """``OCI_CA_BUNDLE`` (PEM path or text) and ``OCI_PLAIN_HTTP``."""

    ca_file: str | None = None
    ca_data: str | None = field(default=None, repr=False)
    plain_http: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TLSSettings:
        bundle = env.get("OCI_CA_BUNDLE", "").strip()
        plain = env.get("OCI_PLAIN_HTTP", "").strip().lower()
        if plain not in _TRUE | _FALSE:
            raise RegistryError(f"OCI_PLAIN_HTTP={plain!r}: use true or false")
        if bundle.startswith("-----BEGIN"):
            return cls(ca_data=bundle, plain_http=plain in _TRUE)
        if bundle and not os.path.isfile(bundle):
            raise RegistryError(f"OCI_CA_BUNDLE={bundle!r}: no such file (give a PEM file path or the PEM text)")
        return cls(ca_file=bundle or None, plain_http=plain in _TRUE)


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "basic", "bearer", ...
    params: Mapping[str, str]


def parse_challenges(header: str) -> list[Challenge]:
    """The challenges of a ``WWW-Authenticate`` header (RFC 7235: a scheme, then
    comma-separated ``key=value`` or ``key="quoted value"`` parameters; commas inside
    quotes belong to the value, as in ``scope="repository:a/b:pull,push"``)."""
    out: list[tuple[str, dict[str, str]]] = []
    pos, n = 0, len(header)
    while pos < n:
        while pos < n and header[pos] in " \t,":
            pos += 1
        m = _TOKEN_CHARS.match(header, pos)
        if not m:
            break  # malformed from here on: keep what was parsed
        word, pos = m.group(), m.end()
        after = pos
        while after < n and header[after] in " \t":
            after += 1
        if out and after < n and header[after] == "=":
            pos = after + 1
            while pos < n and header[pos] in " \t":
                pos += 1
            if pos < n and header[pos] == '"':
                value, pos = _quoted(header, pos)
            else:
                end = pos
                while end < n and header[end] not in ", \t":
                    end += 1
                value, pos = header[pos:end], end
            out[-1][1][word.lower()] = value
        else:
            out.append((word.lower(), {}))
    return [Challenge(scheme, params) for scheme, params in out]


def _quoted(text: str, pos: int) -> tuple[str, int]:
    value: list[str] = []
    pos += 1
    while pos < len(text):
        ch = text[pos]
        if ch == "\\" and pos + 1 < len(text):
            value.append(text[pos + 1])
            pos += 2
            continue
        if ch == '"':
            return "".join(value), pos + 1
        value.append(ch)
        pos += 1
    return "".join(value), pos  # unterminated: take the rest


def token_from_response(body: bytes) -> tuple[str, float]:
    """``(token, lifetime in s)`` from a token service answer (``token`` or ``access_token``,
    ``expires_in`` defaulting to and at least 60 s, as the Docker token spec says)."""
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise RegistryError(f"the token service answered something that is not JSON: {body[:120]!r}") from exc
    token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
    if not isinstance(token, str) or not token:
        raise RegistryError("the token service answered without a token")
    try:
        lifetime = float(doc.get("expires_in") or 60)
    except (TypeError, ValueError):
        lifetime = 60.0
    return token, max(60.0, lifetime)


def manifest_document(manifest: Manifest, repository: str) -> tuple[bytes, bytes, bytes]:
    """``(oci manifest, modelpack config, chunk index)`` of a version, canonical JSON (so the
    same version always has the same digest)."""
    index = manifest.to_json()
    index_digest = _sha(index)
    chunks: dict[str, int] = {}
    for f in sorted(manifest.files, key=lambda f: f.path):
        for c in f.chunks:
            chunks.setdefault(c.digest, c.size)
    chunks.pop(index_digest, None)
    layers = [{"mediaType": INDEX_MEDIA_TYPE, "digest": index_digest, "size": len(index)}]
    layers += [{"mediaType": CHUNK_MEDIA_TYPE, "digest": d, "size": s} for d, s in chunks.items()]
    model_config: dict[str, Any] = {
        "descriptor": {
            "name": repository.rsplit("/", 1)[-1],
            "version": manifest.version,
            "createdAt": manifest.created,
        },
        "config": {"format": "safetensors"} if any(f.path.endswith(".safetensors") for f in manifest.files) else {},
        "modelfs": {"type": "layers", "diffIds": [layer["digest"] for layer in layers]},
    }
    config = _canonical(model_config)
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": MODELPACK_CONFIG, "digest": _sha(config), "size": len(config)},
        "layers": layers,
        "annotations": {ANNOTATION_VERSION: manifest.version, ANNOTATION_CREATED: manifest.created},
    }
    return _canonical(doc), config, index


@dataclass(frozen=True)
class VersionManifest:
    """The parts of a version's OCI manifest this backend reads."""

    digest: str
    version: str  # the org.opencontainers.image.version annotation
    index: tuple[str, int]  # the chunk index layer: digest, size
    layers: frozenset[str]

    @classmethod
    def parse(cls, digest: str, raw: bytes, where: str) -> VersionManifest:
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict):
                raise ValueError("not an object")
            media = doc.get("mediaType")
            if media != OCI_MANIFEST or doc.get("artifactType") != ARTIFACT_TYPE:
                raise RegistryError(
                    f"{where} is not a model version pushed by qwenctl (mediaType {media!r}, artifactType "
                    f"{doc.get('artifactType')!r}; expected {OCI_MANIFEST} with artifactType {ARTIFACT_TYPE})"
                )
            layers = doc["layers"]
            first = layers[0]
            if first["mediaType"] != INDEX_MEDIA_TYPE or not DIGEST_RE.match(first["digest"]):
                raise ValueError(f"its first layer is {first.get('mediaType')!r}, not the chunk index")
            version = str((doc.get("annotations") or {}).get(ANNOTATION_VERSION, ""))
            return cls(
                digest, version, (first["digest"], int(first["size"])), frozenset(str(x["digest"]) for x in layers)
            )
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise RegistryError(f"{where}: malformed OCI manifest ({exc})") from exc


# --- HTTP with the registry's auth ------------------------------------------------------


class _Client:
    """urllib3 requests to one registry, answering its 401 challenges (thread-safe)."""

    def __init__(
        self,
        url: OCIURL,
        creds: Credentials,
        tls: TLSSettings,
        max_connections: int,
        timeout: tuple[float, float] = (10.0, 120.0),
    ) -> None:
        self.url, self.creds, self.tls = url, creds, tls
        self.loopback = is_loopback(url.hostname)
        self.pool = urllib3.PoolManager(
            num_pools=4,
            maxsize=max(1, max_connections),
            cert_reqs="CERT_REQUIRED",
            ca_certs=tls.ca_file,
            ca_cert_data=tls.ca_data,
            retries=urllib3.Retry(
                total=None, connect=2, read=0, redirect=5, status=0, other=0, raise_on_status=False, backoff_factor=0.2
            ),
            timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]),
            blocksize=1 << 20,  # upload bodies are read from the file in 1 MiB blocks
        )
        self._lock = threading.Lock()
        self._scheme: str | None = "http" if tls.plain_http else (None if self.loopback else "https")
        self._mode = "bearer-static" if creds.token else ""  # "", "basic", "bearer"
        self._bearer: Challenge | None = None
        self._tokens: dict[str, tuple[str, float]] = {}  # scope -> (token, monotonic expiry)

    # -- where ----------------------------------------------------------------------------
    def base(self) -> str:
        if self._scheme is None:
            with self._lock:
                if self._scheme is None:
                    self._scheme = self._probe()
        return f"{self._scheme}://{self.url.host}"

    def _probe(self) -> str:
        """A loopback registry: HTTPS if it speaks TLS, else plain HTTP (Docker does the same
        for ``localhost``). A certificate that fails verification is not a reason to fall back."""
        try:
            self.pool.request("GET", f"https://{self.url.host}/v2/", retries=False, timeout=5.0).drain_conn()
        except urllib3.exceptions.SSLError as exc:
            if _verify_failure(exc):
                return "https"
            return "http"
        except urllib3.exceptions.ProtocolError:
            return "http"  # the server dropped the TLS hello
        except urllib3.exceptions.HTTPError:
            return "https"  # unreachable: the real request reports it
        return "https"

    def scope(self, write: bool) -> str:
        return f"repository:{self.url.repository}:{'pull,push' if write else 'pull'}"

    # -- requests ---------------------------------------------------------------------------
    def request(
        self,
        method: str,
        target: str,
        *,
        what: str,
        write: bool = False,
        headers: Mapping[str, str] | None = None,
        body: Callable[[], Any] | None = None,
        stream: bool = False,
    ) -> urllib3.BaseHTTPResponse:
        """One request, answering at most two 401 challenges; transport failures become
        :class:`RegistryError` naming ``what``."""
        url = target if "://" in target else self.base() + target
        for attempt in range(3):
            sent = self._authorization(write, what)
            hdrs = dict(headers or {})
            if sent:
                hdrs["Authorization"] = sent
            try:
                resp = self.pool.request(
                    method,
                    url,
                    headers=hdrs,
                    body=body() if body is not None else None,
                    preload_content=not stream,
                    decode_content=False,
                )
            except urllib3.exceptions.HTTPError as exc:
                raise self._transport_error(what, exc) from exc
            if resp.status != 401:
                return resp
            challenges = parse_challenges(resp.headers.get("WWW-Authenticate", ""))
            detail = error_detail(resp)
            self._answer(challenges, write, sent, what, detail, retried=attempt > 0)
        raise RegistryError(f"{what}: access denied (HTTP 401 after authenticating); {self.creds.hint()}")

    def _authorization(self, write: bool, what: str) -> str | None:
        if self._mode == "bearer-static":
            return f"Bearer {self.creds.token}"
        if self._mode == "basic":
            return self.creds.basic()
        if self._mode == "bearer" and self._bearer is not None:
            token = self._cached_token(write)
            if token is None:
                token = self._fetch_token(self._bearer, self.scope(write), write, what)
            return f"Bearer {token}"
        return None

    def _cached_token(self, write: bool) -> str | None:
        now = time.monotonic()
        with self._lock:
            for scope in [self.scope(True)] if write else [self.scope(False), self.scope(True)]:
                hit = self._tokens.get(scope)
                if hit is not None and hit[1] > now:
                    return hit[0]
        return None

    def _answer(
        self, challenges: list[Challenge], write: bool, sent: str | None, what: str, detail: str, retried: bool
    ) -> None:
        """Learn how to authenticate from a 401, or raise why we cannot. ``retried``: this
        request was already sent again after a challenge (with a fresh token or credentials)."""
        by_scheme = {c.scheme: c for c in challenges}
        bearer, basic = by_scheme.get("bearer"), by_scheme.get("basic")
        denied = f"{what}: access denied (HTTP 401{': ' + detail if detail else ''})"
        if self._mode == "bearer-static" or (sent and sent.startswith("Basic ")):
            raise RegistryError(f"{denied}; {self.creds.hint()}")
        if bearer is not None and "realm" in bearer.params:
            scope = bearer.params.get("scope") or self.scope(write)
            if sent and sent.startswith("Bearer "):
                with self._lock:  # our token was refused: drop it (it may have expired early)
                    for key in [k for k, (t, _) in self._tokens.items() if f"Bearer {t}" == sent]:
                        del self._tokens[key]
                if retried or "insufficient_scope" in bearer.params.get("error", ""):
                    raise RegistryError(
                        f"{denied}: the registry refused the token service's token for {scope}; {self.creds.hint()}"
                    )
            self._bearer = bearer
            self._mode = "bearer"
            self._fetch_token(bearer, scope, write, what, key=self.scope(write))
            return
        if basic is not None:
            if self.creds.basic() is None:
                raise RegistryError(f"{denied}; {self.creds.hint()}")
            self._mode = "basic"
            return
        raise RegistryError(f"{denied}: no usable WWW-Authenticate challenge; {self.creds.hint()}")

    def _fetch_token(self, challenge: Challenge, scope: str, write: bool, what: str, key: str | None = None) -> str:
        """GET the realm for a token covering ``scope`` (basic auth with our credentials)."""
        key = key or self.scope(write)
        realm = challenge.params["realm"]
        parsed = urllib.parse.urlsplit(realm)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise RegistryError(f"{what}: the registry's token realm {realm!r} is not an http(s) URL")
        if parsed.scheme == "http" and not (is_loopback(parsed.hostname) or self.tls.plain_http):
            raise RegistryError(
                f"{what}: the token realm {realm} is plain HTTP; refusing to send credentials there "
                "(set OCI_PLAIN_HTTP=true only for a registry you trust on an insecure network)"
            )
        query = {"scope": scope}
        if challenge.params.get("service"):
            query["service"] = challenge.params["service"]
        sep = "&" if parsed.query else "?"
        headers = {}
        basic = self.creds.basic()
        if basic:
            headers["Authorization"] = basic
        with self._lock:
            hit = self._tokens.get(key)
            if hit is not None and hit[1] > time.monotonic():
                return hit[0]
            try:
                resp = self.pool.request("GET", realm + sep + urllib.parse.urlencode(query), headers=headers)
            except urllib3.exceptions.HTTPError as exc:
                raise self._transport_error(f"{what}: token service {realm}", exc) from exc
            if resp.status in (401, 403):
                raise RegistryError(
                    f"{what}: access denied by the token service {realm} (HTTP {resp.status}"
                    f"{': ' + error_detail(resp) if error_detail(resp) else ''}); {self.creds.hint()}"
                )
            if resp.status != 200:
                raise RegistryError(f"{what}: token service {realm} answered HTTP {resp.status} {error_detail(resp)}")
            token, lifetime = token_from_response(resp.data)
            self._tokens[key] = (token, time.monotonic() + lifetime - 10)
            return token

    def _transport_error(self, what: str, exc: Exception) -> RegistryError:
        reason = getattr(exc, "reason", None) or exc
        if isinstance(reason, urllib3.exceptions.SSLError) or isinstance(reason, ssl.SSLError):
            if _verify_failure(reason):
                return RegistryError(
                    f"{what}: the TLS certificate of {self.url.host} is not trusted ({_one_line(reason)}); "
                    "set OCI_CA_BUNDLE to the CA certificate (PEM) that signed it"
                )
            return RegistryError(f"{what}: TLS with {self.url.host} failed ({_one_line(reason)})")
        return RegistryError(f"{what}: cannot reach the OCI registry {self.url.host} ({_one_line(reason)})")


def _verify_failure(exc: BaseException) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(cur):
            return True
        nxt = getattr(cur, "reason", None)
        cur = nxt if isinstance(nxt, BaseException) else (cur.__cause__ or cur.__context__)
    return False


def _one_line(value: object) -> str:
    return " ".join(str(value).split())[:300]


def error_detail(resp: urllib3.BaseHTTPResponse) -> str:
    """The registry's error codes and messages (``{"errors": [{"code", "message"}]}``), one line."""
    try:
        data = resp.data
    except (urllib3.exceptions.HTTPError, OSError):
        return ""
    try:
        doc = json.loads(data) if data else {}
        errors = doc.get("errors") if isinstance(doc, dict) else None
        if isinstance(errors, list) and errors:
            parts = [f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors if isinstance(e, dict)]
            return _one_line("; ".join(parts))
    except ValueError:
        pass
    return _one_line(data[:200].decode(errors="replace")) if data else ""


# --- the backend --------------------------------------------------------------------------


class OCIRegistry:
    """Read and write one model repository of an OCI registry (see the module docstring)."""

    def __init__(
        self,
        url: OCIURL | str,
        credentials: Credentials | None = None,
        tls: TLSSettings | None = None,
        max_connections: int = 16,
        timeout: tuple[float, float] = (10.0, 120.0),
    ) -> None:
        """``timeout``: (connect, read) seconds per request; a watcher that must not stall passes short ones."""
        self._url = OCIURL.parse(url) if isinstance(url, str) else url
        self._stats = TransferStats()
        creds, tls = credentials or Credentials(), tls or TLSSettings()
        self._client = _Client(self._url, creds, tls, max_connections, timeout)
        self._raw: dict[str, bytes] = {}  # OCI manifests by digest (immutable, so cacheable)
        self._parsed: dict[str, Manifest] = {}  # chunk indexes by version digest

    @classmethod
    def from_env(
        cls,
        url: str,
        env: Mapping[str, str] | None = None,
        max_connections: int = 16,
        timeout: tuple[float, float] = (10.0, 120.0),
    ) -> OCIRegistry:
        """Credentials and TLS settings from ``env`` (default ``os.environ``): the ``OCI_*`` keys."""
        environ = os.environ if env is None else env
        return cls(url, Credentials.from_env(environ), TLSSettings.from_env(environ), max_connections, timeout)

    @property
    def url(self) -> OCIURL:
        return self._url

    @property
    def stats(self) -> TransferStats:
        return self._stats

    def name_hint(self) -> str:
        return self._url.repository

    def _path(self, *parts: str) -> str:
        return "/".join(("/v2", self._url.repository, *parts))

    def _fail(self, resp: urllib3.BaseHTTPResponse, what: str) -> RegistryError:
        detail = error_detail(resp)
        suffix = f" (HTTP {resp.status}{': ' + detail if detail else ''})"
        if resp.status == 404:
            return NotFoundError(f"{what}: not found{suffix}")
        if resp.status in (401, 403):
            return RegistryError(f"{what}: access denied{suffix}; {self._client.creds.hint()}")
        return RegistryError(f"{what}: registry error{suffix}")

    # --- blobs ------------------------------------------------------------------------

    def has_blob(self, digest: str) -> bool:
        _check_digest(digest)
        what = f"checking blob {digest} in {self._url}"
        resp = self._client.request("HEAD", self._path("blobs", digest), what=what)
        if resp.status == 200:
            return True
        if resp.status == 404:
            return False
        raise self._fail(resp, what)

    def missing_blobs(self, digests: Iterable[str]) -> list[str]:
        """HEAD each blob (OCI registries have no listing of a repository's blobs)."""
        wanted = list(dict.fromkeys(digests))
        if not wanted:
            return []
        with ThreadPoolExecutor(max_workers=min(16, len(wanted))) as pool:
            present = dict(zip(wanted, pool.map(self.has_blob, wanted), strict=True))
        return [d for d in wanted if not present[d]]

    def put_blob(self, digest: str, stream: BinaryIO, offset: int, size: int) -> None:
        """Upload a chunk from a file: start an upload session, then one PUT of the bytes
        (streamed from the file, never held in memory) that the registry checks against
        ``digest``."""
        _check_digest(digest)
        fd = stream.fileno()
        self._upload(digest, size, lambda: _Region(fd, offset, size))

    def _put_bytes(self, digest: str, data: bytes) -> None:
        self._upload(digest, len(data), lambda: data)

    def _upload(self, digest: str, size: int, body: Callable[[], Any]) -> None:
        what = f"uploading blob {digest} to {self._url}"
        for attempt in range(1, UPLOAD_ATTEMPTS + 1):
            try:
                resp = self._client.request("POST", self._path("blobs", "uploads") + "/", what=what, write=True)
                if resp.status != 202 or not resp.headers.get("Location"):
                    raise self._fail(resp, what)
                location = urllib.parse.urljoin(self._client.base() + "/", resp.headers["Location"])
                sep = "&" if urllib.parse.urlsplit(location).query else "?"
                resp = self._client.request(
                    "PUT",
                    f"{location}{sep}digest={urllib.parse.quote(digest)}",
                    what=what,
                    write=True,
                    headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                    body=body,
                )
            except RegistryError as exc:
                if attempt == UPLOAD_ATTEMPTS or "cannot reach" not in str(exc):
                    raise
                time.sleep(0.2 * attempt)
                continue
            if resp.status == 201:
                self._stats.add(puts=2, up=size)
                return
            detail = error_detail(resp)
            if resp.status == 400 and "DIGEST_INVALID" in detail:
                raise DigestMismatchError(
                    f"blob {digest}: the registry computed another digest for the uploaded bytes; "
                    "the local file changed while it was being pushed"
                )
            if resp.status >= 500 and attempt < UPLOAD_ATTEMPTS:
                time.sleep(0.2 * attempt)
                continue
            raise self._fail(resp, what)

    def get_blob(self, digest: str, start: int = 0, block_size: int = READ_BLOCK) -> Iterator[memoryview]:
        """Stream blob bytes from ``start`` (a ranged GET when resuming); the same
        one-buffer ``readinto`` loop as the S3 backend."""
        _check_digest(digest)
        what = f"downloading blob {digest} from {self._url}"
        headers = {"Range": f"bytes={start}-"} if start else {}
        resp = self._client.request("GET", self._path("blobs", digest), what=what, headers=headers, stream=True)
        try:
            if resp.status not in (200, 206):
                raise self._fail(resp, what)
            self._stats.add(gets=1)
            skip = start if start and resp.status == 200 else 0  # the server ignored the range
            length = int(resp.headers.get("Content-Length", "-1"))
            fp = getattr(resp, "_fp", None)  # the http.client response under urllib3's
            direct = (
                length >= 0
                and callable(getattr(fp, "readinto", None))
                and not getattr(fp, "chunked", True)
                and not resp.headers.get("Content-Encoding")
            )
            buf = memoryview(bytearray(max(1, min(block_size, length if length >= 0 else block_size))))
            if direct and fp is not None:
                left = length
                while left:
                    n = fp.readinto(buf[: min(len(buf), left)])
                    if not n:
                        raise TransientError(f"download of blob {digest} broke off: {left} bytes short")
                    left -= n
                    view = buf[:n]
                    if skip:
                        dropped = min(skip, n)
                        skip -= dropped
                        view = view[dropped:]
                        if not len(view):
                            continue
                    self._stats.add(down=len(view))
                    yield view
                resp.release_conn()  # fully read: the connection goes back to the pool
            else:
                for block in resp.stream(block_size, decode_content=False):
                    if skip:
                        dropped = min(skip, len(block))
                        skip -= dropped
                        block = block[dropped:]
                        if not block:
                            continue
                    self._stats.add(down=len(block))
                    yield memoryview(block)
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
            raise TransientError(f"download of blob {digest} broke off: {_one_line(exc)}") from exc
        finally:
            resp.close()  # a no-op once released; drops a connection that still holds unread bytes

    def _get_small_blob(self, digest: str, limit: int, what: str) -> bytes:
        resp = self._client.request("GET", self._path("blobs", digest), what=what)
        if resp.status != 200:
            raise self._fail(resp, what)
        data = resp.data
        if len(data) > limit:
            raise RegistryError(f"{what}: {len(data)} bytes, more than the {limit} expected")
        self._stats.add(gets=1, down=len(data))
        _verify(digest, data, what)
        return data

    # --- manifests ----------------------------------------------------------------------

    def put_manifest(self, manifest: Manifest) -> str:
        raw, config, index = manifest_document(manifest, self._url.repository)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise RegistryError(
                f"version {manifest.version}: its OCI manifest would be {len(raw)} bytes "
                f"({len(manifest.unique_chunks())} chunks), over the {MAX_MANIFEST_BYTES} bytes registries accept"
            )
        for data in (config, index):
            digest = _sha(data)
            if not self.has_blob(digest):
                self._put_bytes(digest, data)
        digest = _sha(raw)
        what = f"uploading manifest {digest} of {manifest.version} to {self._url}"
        resp = self._client.request(
            "PUT",
            self._path("manifests", digest),
            what=what,
            write=True,
            headers={"Content-Type": OCI_MANIFEST},
            body=lambda: raw,
        )
        if resp.status != 201:
            raise self._fail(resp, what)
        self._stats.add(puts=1, up=len(raw))
        self._raw[digest] = raw
        return digest

    def _fetch_manifest(self, reference: str, what: str) -> tuple[str, bytes]:
        """GET a manifest by tag or digest; its digest is computed from the bytes (and must
        equal a digest reference and the registry's Docker-Content-Digest)."""
        if reference in self._raw:
            return reference, self._raw[reference]
        resp = self._client.request(
            "GET", self._path("manifests", reference), what=what, headers={"Accept": OCI_MANIFEST}
        )
        if resp.status != 200:
            raise self._fail(resp, what)
        raw = resp.data
        self._stats.add(gets=1, down=len(raw))
        digest = _sha(raw)
        claimed = resp.headers.get("Docker-Content-Digest")
        if reference.startswith("sha256:") and digest != reference:
            raise DigestMismatchError(f"{what}: content digest is {digest}, expected {reference}")
        if claimed and claimed.startswith("sha256:") and claimed != digest:
            raise DigestMismatchError(f"{what}: content digest is {digest}, the registry says {claimed}")
        self._raw[digest] = raw
        return digest, raw

    def _version_manifest(self, reference: str, what: str) -> VersionManifest:
        digest, raw = self._fetch_manifest(reference, what)
        return VersionManifest.parse(digest, raw, what)

    def get_manifest(self, digest: str) -> Manifest:
        _check_digest(digest)
        hit = self._parsed.get(digest)
        if hit is not None:
            return hit
        what = f"manifest {digest} in {self._url}"
        vm = self._version_manifest(digest, what)
        data = self._get_small_blob(vm.index[0], MAX_INDEX_BYTES, f"chunk index {vm.index[0]} of {what}")
        try:
            manifest = Manifest.from_json(data)
        except ManifestError as exc:
            raise RegistryError(f"{what}: {exc}") from exc
        unlisted = set(manifest.unique_chunks()) - vm.layers
        if unlisted:
            raise RegistryError(
                f"{what}: {len(unlisted)} chunks of its index are not layers of the manifest "
                "(the registry may garbage-collect them); push the version again"
            )
        self._parsed[digest] = manifest
        return manifest

    # --- versions and tags -----------------------------------------------------------------

    def _lookup(self, name: str, what: str) -> VersionManifest | None:
        try:
            return self._version_manifest(name, what)
        except NotFoundError:
            return None

    def set_version(self, name: str, digest: str) -> None:
        check_name("version", name)
        what = f"recording version {name!r} in {self._url}"
        target = self._version_manifest(_check_digest(digest), what)
        if target.version != name:
            raise RegistryError(f"{what}: manifest {digest} is of version {target.version!r}, not {name!r}")
        existing = self._lookup(name, what)
        if existing is not None and existing.digest == digest:
            return
        if existing is not None:
            if existing.version == name:
                raise RegistryError(
                    f"version {name!r} already exists in {self._url} as {existing.digest}; versions are immutable, "
                    "push under a new version name (and move a tag to it)"
                )
            raise RegistryError(
                f"{name!r} is already a tag in {self._url} (pointing at version {existing.version!r}); version "
                "names and tags share the registry's tag names, push under another version name"
            )
        self._put_tag(name, digest, what)

    def set_tag(self, tag: str, digest: str) -> None:
        check_name("tag", tag)
        what = f"moving tag {tag!r} in {self._url}"
        self._version_manifest(_check_digest(digest), what)  # never point a tag at nothing
        existing = self._lookup(tag, what)
        if existing is not None and existing.digest == digest:
            return
        if existing is not None and existing.version == tag:
            raise RegistryError(
                f"{tag!r} is a version in {self._url} ({existing.digest}) and versions are immutable; "
                "choose another tag name"
            )
        self._put_tag(tag, digest, what)

    def _put_tag(self, name: str, digest: str, what: str) -> None:
        raw = self._fetch_manifest(digest, what)[1]
        resp = self._client.request(
            "PUT",
            self._path("manifests", name),
            what=what,
            write=True,
            headers={"Content-Type": OCI_MANIFEST},
            body=lambda: raw,
        )
        if resp.status != 201:
            raise self._fail(resp, what)
        self._stats.add(puts=1, up=len(raw))

    def resolve(self, version: str | None = None, tag: str | None = None) -> str:
        """Manifest digest of a version name, a ``sha256:`` digest, or a tag (any OCI tag:
        a version's own tag resolves as a tag too)."""
        if tag is not None:
            check_name("tag", tag)
            found = self._lookup(tag, f"tag {tag!r} in {self._url}")
            if found is None:
                raise NotFoundError(f"tag {tag!r} not found in {self._url} (known: {self._known()})")
            return found.digest
        if version is None:
            raise RegistryError("give a version (name or sha256: digest) or a tag")
        if version.startswith("sha256:"):
            if not DIGEST_RE.match(version):
                raise RegistryError(f"{version!r} is not a valid digest (sha256: followed by 64 hex digits)")
            return self._version_manifest(version, f"version {version} in {self._url}").digest
        check_name("version", version)
        found = self._lookup(version, f"version {version!r} in {self._url}")
        if found is None:
            raise NotFoundError(f"version {version!r} not found in {self._url} (known: {self._known()})")
        if found.version != version:
            raise NotFoundError(
                f"version {version!r} not found in {self._url}: {version!r} is a tag (of version {found.version!r})"
            )
        return found.digest

    def _known(self) -> str:
        try:
            return ", ".join(self.pointer_names("tags", limit=10)) or "none"
        except RegistryError:
            return "unknown"

    def _tags(self, limit: int | None = None) -> list[str]:
        what = f"listing tags of {self._url}"
        target = self._path("tags", "list") + (f"?n={limit}" if limit else "")
        names: list[str] = []
        while target:
            resp = self._client.request("GET", target, what=what)
            if resp.status == 404:
                return names  # no such repository yet: nothing pushed
            if resp.status != 200:
                raise self._fail(resp, what)
            self._stats.add(gets=1, down=len(resp.data))
            try:
                names += [str(t) for t in (json.loads(resp.data).get("tags") or [])]
            except (ValueError, AttributeError) as exc:
                raise RegistryError(f"{what}: malformed answer ({exc})") from exc
            if limit is not None and len(names) >= limit:
                return names[:limit]
            m = _LINK_NEXT.search(resp.headers.get("Link", ""))
            target = urllib.parse.urljoin(self._client.base() + "/", m.group(1)) if m else ""
        return names

    def pointer_names(self, kind: str, limit: int = 10) -> list[str]:
        """Up to ``limit`` tag names (one tag listing, no manifest reads). OCI keeps version
        names and tags in one list, so these are names of either kind."""
        return sorted(self._tags(limit))

    def list_pointers(self, kind: str) -> list[tuple[str, str]]:
        """``(name, digest)`` of every version (``kind="versions"``: tags naming their own
        manifest's version) or movable tag (``"tags"``: the others)."""
        out = []
        for name in sorted(self._tags()):
            vm = self._lookup(name, f"tag {name!r} in {self._url}")
            if vm is None:
                continue  # deleted since the listing
            if (vm.version == name) == (kind == "versions"):
                out.append((name, vm.digest))
        return out


class _Region:
    """``size`` bytes of a file from ``offset``, read with ``pread`` as the upload sends them."""

    def __init__(self, fd: int, offset: int, size: int) -> None:
        self.fd, self.pos, self.end = fd, offset, offset + size

    def read(self, n: int = -1) -> bytes:
        want = self.end - self.pos if n is None or n < 0 else min(n, self.end - self.pos)
        if want <= 0:
            return b""
        data = os.pread(self.fd, want, self.pos)
        if not data:
            raise RegistryError("short read: the local file changed during the push")
        self.pos += len(data)
        return data


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _canonical(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _check_digest(digest: str) -> str:
    if not DIGEST_RE.match(digest):
        raise RegistryError(f"not a sha256 digest: {digest!r}")
    return digest


def _verify(digest: str, data: bytes, what: str) -> None:
    got = _sha(data)
    if got != digest:
        raise DigestMismatchError(f"{what}: content digest is {got}, expected {digest}")

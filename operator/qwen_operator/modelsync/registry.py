"""The model registry on an S3-compatible bucket (boto3).

Layout under ``s3://BUCKET/PREFIX``::

    blobs/sha256/<hex>       immutable content-addressed chunks
    manifests/sha256/<hex>   one manifest per version (its digest is the version's identity)
    versions/<name>          -> "sha256:<hex>" (written once, never moved)
    tags/<tag>               -> "sha256:<hex>" (movable: stable, canary, ...)

Everything a reader fetches is verified against its digest, so a bucket that serves
wrong bytes produces a clear error, never a wrong model. Credentials and endpoint come
from boto3's standard chain (``AWS_*`` variables, profiles, ``AWS_ENDPOINT_URL``).
It implements :class:`qwen_operator.modelsync.backend.ModelRegistry`; ``oci`` is the other one.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

import boto3
import botocore.exceptions
import urllib3.exceptions
from botocore.config import Config

from qwen_operator.modelsync.backend import (
    NAME_RE,
    READ_BLOCK,
    DigestMismatchError,
    NotFoundError,
    RegistryError,
    TransferStats,
    TransientError,
    check_name,
)
from qwen_operator.modelsync.manifest import DIGEST_RE, Manifest, ManifestError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

MIB = 1024 * 1024
MULTIPART_THRESHOLD = 16 * MIB
PART_SIZE = 8 * MIB
_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "InvalidToken", "ExpiredToken"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}

# the shared errors and helpers live in ``backend`` (no boto3); re-exported for existing callers
__all__ = [
    "NAME_RE",
    "READ_BLOCK",
    "DigestMismatchError",
    "NotFoundError",
    "Registry",
    "RegistryError",
    "RegistryURL",
    "TransferStats",
    "TransientError",
    "check_name",
    "make_client",
    "translate_errors",
]


@dataclass(frozen=True)
class RegistryURL:
    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> RegistryURL:
        m = re.match(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(.*))?$", url)
        if not m:
            raise RegistryError(f"registry {url!r} is not of the form s3://BUCKET/PREFIX (bucket: 3-63 chars a-z0-9.-)")
        return cls(m.group(1), (m.group(2) or "").strip("/"))

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def make_client(endpoint_url: str | None = None, max_connections: int = 16) -> S3Client:
    """A boto3 S3 client from the standard AWS chain; path-style for custom endpoints."""
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    config = Config(
        max_pool_connections=max_connections,
        retries={"max_attempts": 5, "mode": "standard"},
        # We verify sha256 of everything ourselves; don't require CRC support from the store.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"} if endpoint else {},
    )
    client: S3Client = boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)
    return client


@contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Turn botocore exceptions into :class:`RegistryError` messages a user can act on."""
    try:
        yield
    except botocore.exceptions.NoCredentialsError as exc:
        raise RegistryError(
            f"{what}: no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)"
        ) from exc
    except botocore.exceptions.EndpointConnectionError as exc:
        raise RegistryError(f"{what}: cannot reach the S3 endpoint ({exc})") from exc
    except botocore.exceptions.ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _AUTH_CODES:
            raise RegistryError(
                f"{what}: access denied ({code}); check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and the bucket policy"
            ) from exc
        if code == "NoSuchBucket":
            raise NotFoundError(f"{what}: the bucket does not exist") from exc
        if code in _MISSING_CODES:
            raise NotFoundError(f"{what}: not found") from exc
        raise RegistryError(f"{what}: S3 error {code}: {exc}") from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise RegistryError(f"{what}: {exc}") from exc


class Registry:
    """Read and write one registry (a bucket prefix)."""

    def __init__(self, url: RegistryURL | str, client: S3Client | None = None) -> None:
        self.url = RegistryURL.parse(url) if isinstance(url, str) else url
        self.client = client or make_client()
        self.stats = TransferStats()

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.url.prefix, *parts) if p)

    def blob_key(self, digest: str) -> str:
        return self.key("blobs", "sha256", _hex(digest))

    def name_hint(self) -> str:
        return self.url.prefix or self.url.bucket

    def missing_blobs(self, digests: Iterable[str]) -> list[str]:
        """One paginated LIST of the prefix's blobs, not a request per digest."""
        present = self.list_blobs()
        return [d for d in digests if d not in present]

    # --- blobs ---------------------------------------------------------------------

    def list_blobs(self) -> set[str]:
        """Digests of every blob in the registry (one paginated listing)."""
        out: set[str] = set()
        prefix = self.key("blobs", "sha256") + "/"
        with translate_errors(f"listing blobs in {self.url}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.url.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    out.add("sha256:" + obj["Key"][len(prefix) :])
        return out

    def put_blob(self, digest: str, stream: BinaryIO, offset: int, size: int) -> None:
        """Upload ``size`` bytes of ``stream`` at ``offset`` as blob ``digest`` (multipart when large)."""
        key = self.blob_key(digest)
        bucket = self.url.bucket
        with translate_errors(f"uploading blob {digest}"):
            if size <= MULTIPART_THRESHOLD:
                data = _pread(stream, offset, size)
                _check(digest, data)
                self.client.put_object(Bucket=bucket, Key=key, Body=data)
                self.stats.add(puts=1, up=size)
                return
            upload_id = self.client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
            try:
                parts: list[CompletedPartTypeDef] = []
                h = hashlib.sha256()
                for number, start in enumerate(range(0, size, PART_SIZE), start=1):
                    data = _pread(stream, offset + start, min(PART_SIZE, size - start))
                    h.update(data)
                    etag = self.client.upload_part(
                        Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
                    )["ETag"]
                    parts.append({"PartNumber": number, "ETag": etag})
                    self.stats.add(puts=1, up=len(data))
                if "sha256:" + h.hexdigest() != digest:
                    raise DigestMismatchError(f"blob {digest}: the local file changed while it was being uploaded")
                self.client.complete_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
            except BaseException:
                self.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
                raise

    def get_blob(self, digest: str, start: int = 0, block_size: int = READ_BLOCK) -> Iterator[memoryview]:
        """Stream blob bytes from ``start`` (a ranged GET when resuming).

        Each block is a view of one reused buffer, valid until the next block is asked
        for: the caller writes or hashes it and moves on. The body is read with
        ``readinto`` straight from the HTTP response into that buffer (one copy from the
        socket), not through urllib3's per-read ``bytes`` objects.
        """
        with translate_errors(f"downloading blob {digest} from {self.url}"):
            key = self.blob_key(digest)
            if start:
                resp = self.client.get_object(Bucket=self.url.bucket, Key=key, Range=f"bytes={start}-")
            else:
                resp = self.client.get_object(Bucket=self.url.bucket, Key=key)
            body = resp["Body"]
            self.stats.add(gets=1)
            length = int(resp.get("ContentLength", -1))
            raw = getattr(body, "_raw_stream", None)
            fp = getattr(raw, "_fp", None)  # the http.client response under urllib3's
            direct = (
                raw is not None
                and length >= 0
                and callable(getattr(fp, "readinto", None))
                and not getattr(fp, "chunked", True)
                and not raw.headers.get("content-encoding")
            )
            try:
                if direct and fp is not None and raw is not None:
                    buf = memoryview(bytearray(max(1, min(block_size, length))))
                    left = length
                    while left:
                        n = fp.readinto(buf[: min(len(buf), left)])
                        if not n:
                            raise TransientError(f"download of blob {digest} broke off: {left} bytes short")
                        left -= n
                        self.stats.add(down=n)
                        yield buf[:n]
                    raw.release_conn()  # fully read: the connection goes back to the pool
                else:
                    for block in body.iter_chunks(block_size):
                        self.stats.add(down=len(block))
                        yield memoryview(block)
            except (
                botocore.exceptions.HTTPClientError,
                urllib3.exceptions.HTTPError,
                http.client.HTTPException,
                OSError,
            ) as exc:
                raise TransientError(f"download of blob {digest} broke off: {exc}") from exc
            finally:
                body.close()  # a no-op once released; drops a connection that still holds unread bytes

    # --- manifests, versions, tags ----------------------------------------------------

    def put_manifest(self, manifest: Manifest) -> str:
        raw = manifest.to_json()
        digest = manifest.digest()
        with translate_errors(f"uploading manifest {digest}"):
            self.client.put_object(
                Bucket=self.url.bucket,
                Key=self.key("manifests", "sha256", _hex(digest)),
                Body=raw,
                ContentType="application/json",
            )
        self.stats.add(puts=1, up=len(raw))
        return digest

    def get_manifest(self, digest: str) -> Manifest:
        what = f"manifest {digest} in {self.url}"
        with translate_errors(what):
            raw = self.client.get_object(Bucket=self.url.bucket, Key=self.key("manifests", "sha256", _hex(digest)))[
                "Body"
            ].read()
        self.stats.add(gets=1, down=len(raw))
        _check(digest, raw, what=what)
        try:
            return Manifest.from_json(raw)
        except ManifestError as exc:
            raise RegistryError(f"{what}: {exc}") from exc

    def _read_pointer(self, kind: str, name: str) -> str:
        what = f"{kind[:-1]} {name!r} in {self.url}"
        with translate_errors(what):
            raw = self.client.get_object(Bucket=self.url.bucket, Key=self.key(kind, name))["Body"].read()
        self.stats.add(gets=1, down=len(raw))
        value = raw.decode(errors="replace").strip()
        if not DIGEST_RE.match(value):
            raise RegistryError(f"{what} holds {value[:80]!r}, not a manifest digest")
        return value

    def set_version(self, name: str, digest: str) -> None:
        """Record version ``name`` (immutable: re-pushing identical content is a no-op)."""
        check_name("version", name)
        try:
            with translate_errors(f"recording version {name!r}"):
                self.client.put_object(
                    Bucket=self.url.bucket, Key=self.key("versions", name), Body=digest.encode(), IfNoneMatch="*"
                )
        except RegistryError as exc:
            if "PreconditionFailed" not in str(exc) and "412" not in str(exc):
                raise
            existing = self._read_pointer("versions", name)
            if existing != digest:
                raise RegistryError(
                    f"version {name!r} already exists in {self.url} as {existing}; versions are immutable, "
                    "push under a new version name (and move a tag to it)"
                ) from exc

    def set_tag(self, tag: str, digest: str) -> None:
        check_name("tag", tag)
        self.get_manifest(digest)  # never point a tag at nothing
        with translate_errors(f"moving tag {tag!r}"):
            self.client.put_object(Bucket=self.url.bucket, Key=self.key("tags", tag), Body=digest.encode())

    def resolve(self, version: str | None = None, tag: str | None = None) -> str:
        """Manifest digest of a version name, a ``sha256:`` digest, or a tag."""
        if tag is not None:
            return self._resolve_pointer("tags", check_name("tag", tag))
        if version is None:
            raise RegistryError("give a version (name or sha256: digest) or a tag")
        if version.startswith("sha256:"):
            if not DIGEST_RE.match(version):
                raise RegistryError(f"{version!r} is not a valid digest (sha256: followed by 64 hex digits)")
            self.get_manifest(version)
            return version
        return self._resolve_pointer("versions", check_name("version", version))

    def _resolve_pointer(self, kind: str, name: str) -> str:
        try:
            return self._read_pointer(kind, name)
        except NotFoundError as exc:
            known = ", ".join(self.pointer_names(kind, limit=10)) or "none"
            raise NotFoundError(f"{kind[:-1]} {name!r} not found in {self.url} (known: {known})") from exc

    def pointer_names(self, kind: str, limit: int = 10) -> list[str]:
        """Up to ``limit`` version or tag names (one LIST call, no reads): cheap enough for an error
        message that a watcher may build every interval."""
        prefix = self.key(kind) + "/"
        with translate_errors(f"listing {kind} in {self.url}"):
            page = self.client.list_objects_v2(Bucket=self.url.bucket, Prefix=prefix, MaxKeys=limit)
        return sorted(obj["Key"][len(prefix) :] for obj in page.get("Contents", []))

    def list_pointers(self, kind: str) -> list[tuple[str, str]]:
        """``(name, digest)`` of every version or tag, sorted by name."""
        prefix = self.key(kind) + "/"
        names: list[str] = []
        with translate_errors(f"listing {kind} in {self.url}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.url.bucket, Prefix=prefix):
                names += [obj["Key"][len(prefix) :] for obj in page.get("Contents", [])]
        return [(n, self._read_pointer(kind, n)) for n in sorted(names)]


def _hex(digest: str) -> str:
    if not DIGEST_RE.match(digest):
        raise RegistryError(f"not a sha256 digest: {digest!r}")
    return digest[len("sha256:") :]


def _check(digest: str, data: bytes, what: str | None = None) -> None:
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    if got != digest:
        raise DigestMismatchError(f"{what or 'blob ' + digest}: content digest is {got}, expected {digest}")


def _pread(stream: BinaryIO, offset: int, size: int) -> bytes:
    data = os.pread(stream.fileno(), size, offset)
    if len(data) != size:
        raise RegistryError(f"short read at offset {offset}: the local file changed during the push")
    return data

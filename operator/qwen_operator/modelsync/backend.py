"""What push, pull, diff and the version watcher need from a model registry, and which one.

Two backends store the same content-addressed format (chunks by sha256, a manifest per
version, immutable version names, movable tags):

* ``s3://BUCKET/PREFIX`` -- :class:`qwen_operator.modelsync.registry.Registry` (boto3);
* ``oci://HOST[:PORT]/REPOSITORY`` -- :class:`qwen_operator.modelsync.oci.OCIRegistry`
  (the OCI distribution API: Harbor, Zot, CNCF distribution, cloud registries).

A third, read-only one presents a Hugging Face Hub revision in that format (one chunk per
file, digests from the Hub's LFS metadata) so the same pull serves it:

* ``hf://ORG/REPO`` -- :class:`qwen_operator.modelsync.hub.HubRegistry` (the Hub, or a
  Hub-compatible mirror named by ``HF_ENDPOINT``).

:func:`open_registry` picks one by the URL's scheme; :class:`ModelRegistry` is the
interface both offer. The errors are shared so callers (the CLI, the watcher's condition
reasons) handle both the same way. No boto3 or HTTP client is imported here.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Protocol

if TYPE_CHECKING:
    from qwen_operator.modelsync.manifest import Manifest

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
READ_BLOCK = 1 << 20  # download block (readinto a reused buffer; 256 KiB measured slower on 16 cores)
SCHEMES = ("s3://", "oci://", "hf://")


class RegistryError(Exception):
    """An expected registry failure, worded for the user."""


class NotFoundError(RegistryError):
    pass


class DigestMismatchError(RegistryError):
    pass


class TransientError(RegistryError):
    """A download broke off mid-stream; retrying from the last byte received may succeed."""


def check_name(kind: str, name: str) -> str:
    if not NAME_RE.match(name):
        raise RegistryError(f"{kind} {name!r} is invalid: use 1-128 of [A-Za-z0-9._-], starting with a letter or digit")
    return name


@dataclass
class TransferStats:
    """Bytes and requests this process exchanged with the registry (thread-safe)."""

    get_requests: int = 0
    bytes_downloaded: int = 0
    put_requests: int = 0
    bytes_uploaded: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, *, gets: int = 0, down: int = 0, puts: int = 0, up: int = 0) -> None:
        with self._lock:
            self.get_requests += gets
            self.bytes_downloaded += down
            self.put_requests += puts
            self.bytes_uploaded += up


class ModelRegistry(Protocol):
    """One model's registry: blobs by digest, manifests, version names and tags."""

    @property
    def url(self) -> object:
        """The registry's URL (``str()`` gives it back as the user wrote it)."""

    @property
    def stats(self) -> TransferStats: ...

    def name_hint(self) -> str:
        """The path part of the URL (S3 prefix or OCI repository): the default node-cache model name."""

    def missing_blobs(self, digests: Iterable[str]) -> list[str]:
        """Those of ``digests`` the registry does not hold, in the order given."""

    def put_blob(self, digest: str, stream: BinaryIO, offset: int, size: int) -> None:
        """Upload ``size`` bytes of ``stream`` at ``offset`` as blob ``digest``."""

    def get_blob(self, digest: str, start: int = 0, block_size: int = READ_BLOCK) -> Iterator[memoryview]:
        """Stream blob bytes from ``start``; each view is valid until the next one is asked for.
        A stream that breaks off raises :class:`TransientError` (continue with ``start``)."""

    def put_manifest(self, manifest: Manifest) -> str:
        """Store a version's manifest (its blobs are already there); returns the version digest."""

    def get_manifest(self, digest: str) -> Manifest:
        """The manifest of a version digest, verified against it."""

    def set_version(self, name: str, digest: str) -> None:
        """Record version ``name`` (immutable: re-recording the same digest is a no-op)."""

    def set_tag(self, tag: str, digest: str) -> None:
        """Point a movable tag at a version digest."""

    def resolve(self, version: str | None = None, tag: str | None = None) -> str:
        """The version digest of a version name, a ``sha256:`` digest, or a tag."""

    def pointer_names(self, kind: str, limit: int = 10) -> list[str]:
        """Up to ``limit`` names (cheap: for error messages); ``kind`` is ``versions`` or ``tags``."""

    def list_pointers(self, kind: str) -> list[tuple[str, str]]:
        """``(name, digest)`` of every version or tag, sorted by name."""


def open_registry(url: str, *, endpoint_url: str | None = None, workers: int = 8) -> ModelRegistry:
    """The registry client for ``url`` by its scheme (``s3://``, ``oci://`` or ``hf://``).

    ``endpoint_url`` is the S3 endpoint (``--endpoint-url``), or the Hub mirror for ``hf://``;
    an OCI URL names its host.
    ``workers`` sizes the connection pool for that many parallel transfers.
    """
    if url.startswith("s3://"):
        from qwen_operator.modelsync.registry import Registry, RegistryURL, make_client

        return Registry(RegistryURL.parse(url), make_client(endpoint_url, max_connections=max(10, workers * 2)))
    if url.startswith("oci://"):
        if endpoint_url:
            raise RegistryError("--endpoint-url applies to s3:// registries; an oci:// URL names its registry host")
        from qwen_operator.modelsync.oci import OCIRegistry

        return OCIRegistry.from_env(url, max_connections=max(10, workers * 2))
    if url.startswith("hf://"):
        from qwen_operator.modelsync.hub import HubRegistry

        # --endpoint-url names a Hub mirror here (else HF_ENDPOINT, else huggingface.co)
        return HubRegistry.from_env(url, endpoint=endpoint_url, max_connections=max(10, workers * 2))
    raise RegistryError(
        f"registry {url!r}: use s3://BUCKET/PREFIX, oci://HOST[:PORT]/REPOSITORY "
        "(e.g. oci://registry.example.com/models/qwen3-14b) or hf://ORG/REPO"
    )

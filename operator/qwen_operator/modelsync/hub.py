"""``hf://ORG/REPO``: a Hugging Face Hub repository (or a Hub-compatible mirror) as a read-only registry.

Why it exists: ``spec.model.registry: hf://Qwen/Qwen3-14B`` must be pulled by the same init
container and the same :func:`~qwen_operator.modelsync.pull.pull` as ``s3://`` and ``oci://``
(resume after a kill, every byte verified, atomic ``current``, blobs shared between
versions), so this class presents a Hub revision as one of our manifests:

* ``resolve(version=REVISION)``: a branch, tag or commit; the Hub answers the commit it is
  now (``model_info``), and the file tree of that commit (``list_repo_tree``, recursive)
  gives each file's size and, for LFS files (every weight file on the Hub), its sha256.
  Each file becomes one chunk whose digest is the file's sha256. A small non-LFS file (config,
  tokenizer) has only a git blob id, so it is read once here to hash it (it is small; a
  weight file without LFS metadata is hashed the same way and so crosses the wire twice --
  the Hub stores weights in LFS/Xet, which carries sha256, so that is a mirror corner case).
  The manifest's ``version`` is ``ORG/REPO@COMMIT`` and its ``created`` the commit time, so
  the same commit always gives the same manifest digest (the node-cache version id).
* ``get_blob(sha256)``: a GET of ``/ORG/REPO/resolve/COMMIT/PATH`` with a ``Range`` when
  resuming (a server that ignores the range is skipped forward, as on the OCI backend).

Credentials and endpoint are huggingface_hub's own environment: ``HF_TOKEN`` (put it in the
resource's ``credentialsSecret``, whose keys become the model-pull environment) and
``HF_ENDPOINT`` (a private Hub mirror, same Secret). Pushing, tags and the version watcher
are not offered here: the Hub has its own upload tools, and ``hf://`` versions are pinned
revisions (a commit sha is the reproducible choice; a branch is resolved when each pod pulls).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, BinaryIO

import urllib3
import urllib3.exceptions

from qwen_operator.modelsync.backend import (
    READ_BLOCK,
    NotFoundError,
    RegistryError,
    TransferStats,
    TransientError,
)
from qwen_operator.modelsync.manifest import ChunkRef, FileEntry, Manifest

if TYPE_CHECKING:
    from huggingface_hub import HfApi

REPO_RE = re.compile(r"^hf://([A-Za-z0-9][A-Za-z0-9._-]{0,95})/([A-Za-z0-9][A-Za-z0-9._-]{0,95})/?$")
REVISION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
#: ModelSpec.version's default (api/spec.py): an s3:// / oci:// tag, rarely a Hub branch
DEFAULT_SPEC_VERSION = "stable"
EPOCH = "1970-01-01T00:00:00Z"
USER_AGENT = "qwen-operator-model-pull"


class HubRegistry:
    """A Hub model repository, read through huggingface_hub (see the module docstring)."""

    def __init__(self, url: str, api: HfApi, endpoint: str, token: str | None, max_connections: int = 10) -> None:
        m = REPO_RE.match(url)
        if not m:
            raise RegistryError(f"registry {url!r}: use hf://ORG/REPO (e.g. hf://Qwen/Qwen3-14B)")
        self.repo_id = f"{m.group(1)}/{m.group(2)}"
        self._url = f"hf://{self.repo_id}"
        self._api = api
        self._endpoint = endpoint.rstrip("/")
        self._token = token
        self._stats = TransferStats()
        self._manifests: dict[str, Manifest] = {}
        self._files: dict[str, tuple[str, str]] = {}  # chunk (= file) sha256 -> (commit, path)
        self._pool = urllib3.PoolManager(
            maxsize=max_connections,
            retries=urllib3.Retry(total=3, connect=3, read=0, redirect=5, backoff_factor=0.2),
            timeout=urllib3.Timeout(connect=30.0, read=120.0),
        )

    @classmethod
    def from_env(cls, url: str, endpoint: str | None = None, max_connections: int = 10) -> HubRegistry:
        """huggingface_hub reads ``HF_ENDPOINT`` and ``HF_TOKEN``; ``endpoint`` overrides the former."""
        from huggingface_hub import HfApi, constants, get_token

        base = endpoint or constants.ENDPOINT
        token = get_token()
        return cls(url, HfApi(endpoint=base, token=token), base, token, max_connections)

    # --- what pull and the CLI read ---------------------------------------------------

    @property
    def url(self) -> str:
        return self._url

    @property
    def stats(self) -> TransferStats:
        return self._stats

    def name_hint(self) -> str:
        return self.repo_id.replace("/", "-").lower()

    def resolve(self, version: str | None = None, tag: str | None = None) -> str:
        revision = version if version is not None else tag
        if revision is None:
            raise RegistryError(f"give a revision of {self._url} (a branch, tag or commit, e.g. main)")
        if not REVISION_RE.match(revision) or ".." in revision:
            raise RegistryError(f"revision {revision!r} of {self._url} is not a valid branch, tag or commit name")
        commit, created = self._commit(revision)
        files = self._tree(commit)
        manifest = Manifest(version=f"{self.repo_id}@{commit}", created=created, files=tuple(files))
        digest = manifest.digest()
        self._manifests[digest] = manifest
        return digest

    def get_manifest(self, digest: str) -> Manifest:
        try:
            return self._manifests[digest]
        except KeyError:
            raise NotFoundError(
                f"{digest} is not a revision of {self._url} resolved by this process: hf:// versions are "
                "revisions (a branch, tag or commit), not manifest digests"
            ) from None

    def get_blob(self, digest: str, start: int = 0, block_size: int = READ_BLOCK) -> Iterator[memoryview]:
        try:
            commit, path = self._files[digest]
        except KeyError:
            raise NotFoundError(f"no file with sha256 {digest} in the resolved revisions of {self._url}") from None
        headers = {"Range": f"bytes={start}-"} if start else {}
        yield from self._stream(commit, path, start, headers, block_size)

    def pointer_names(self, kind: str, limit: int = 10) -> list[str]:
        refs = self._call(lambda: self._api.list_repo_refs(self.repo_id), f"listing the refs of {self._url}")
        names = [r.name for r in (refs.branches if kind == "versions" else refs.tags)]
        return sorted(names)[:limit]

    def list_pointers(self, kind: str) -> list[tuple[str, str]]:
        raise RegistryError(f"{self._url}: hf:// revisions are pinned in spec.model.version, not tracked")

    # --- write side: not offered ------------------------------------------------------

    def _read_only(self) -> RegistryError:
        return RegistryError(
            f"{self._url} is read-only here: upload with the Hub's own tools (hf upload), or push the model to an "
            "s3:// or oci:// registry for layer-diff updates"
        )

    def missing_blobs(self, digests: Iterable[str]) -> list[str]:
        raise self._read_only()

    def put_blob(self, digest: str, stream: BinaryIO, offset: int, size: int) -> None:
        raise self._read_only()

    def put_manifest(self, manifest: Manifest) -> str:
        raise self._read_only()

    def set_version(self, name: str, digest: str) -> None:
        raise self._read_only()

    def set_tag(self, tag: str, digest: str) -> None:
        raise self._read_only()

    # --- internals ----------------------------------------------------------------------

    def _call(self, fn: Any, what: str) -> Any:
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        try:
            return fn()
        except RevisionNotFoundError as exc:
            raise NotFoundError(f"{what}: revision not found ({_first_line(exc)})") from exc
        except GatedRepoError as exc:
            raise RegistryError(
                f"{what}: access denied (gated repository; set HF_TOKEN in the credentials Secret)"
            ) from exc
        except RepositoryNotFoundError as exc:
            raise NotFoundError(
                f"{what}: repository not found, or private and HF_TOKEN missing or not allowed ({_first_line(exc)})"
            ) from exc
        except HfHubHTTPError as exc:
            raise RegistryError(f"{what}: {_first_line(exc)}") from exc
        except OSError as exc:  # connection refused, DNS, TLS
            raise RegistryError(f"{what}: cannot reach {self._endpoint}: {exc}") from exc

    def _commit(self, revision: str) -> tuple[str, str]:
        try:
            info = self._call(
                lambda: self._api.model_info(self.repo_id, revision=revision),
                f"resolving revision {revision!r} of {self._url}",
            )
        except NotFoundError as exc:
            if revision != DEFAULT_SPEC_VERSION:
                raise
            # spec.model.version's default names an s3:// / oci:// tag; a Hub repo rarely has it
            raise NotFoundError(
                f"{exc} (spec.model.version defaults to {DEFAULT_SPEC_VERSION!r}; for hf:// set it to a "
                "branch, tag or commit of the repository, e.g. main)"
            ) from exc
        self._stats.add(gets=1)
        if not info.sha:
            raise RegistryError(f"{self._endpoint} did not say which commit {revision!r} of {self._url} is")
        when = info.last_modified
        created = when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if isinstance(when, datetime) else EPOCH
        return str(info.sha), created

    def _tree(self, commit: str) -> list[FileEntry]:
        from huggingface_hub.hf_api import RepoFile

        what = f"listing the files of {self._url} at {commit}"
        entries = self._call(
            lambda: list(self._api.list_repo_tree(self.repo_id, revision=commit, recursive=True)), what
        )
        self._stats.add(gets=1)
        files = []
        for e in entries:
            if not isinstance(e, RepoFile) or _skipped(e.path):
                continue
            size = int(e.lfs.size if e.lfs is not None else e.size)
            sha = f"sha256:{e.lfs.sha256}" if e.lfs is not None and e.lfs.sha256 else self._hash(commit, e.path)
            self._files.setdefault(sha, (commit, e.path))
            chunks = (ChunkRef(sha, size),) if size else ()
            files.append(FileEntry(e.path, size, sha, chunks))
        if not files:
            raise NotFoundError(f"{self._url} at {commit} holds no files")
        return files

    def _hash(self, commit: str, path: str) -> str:
        h = hashlib.sha256()
        for block in self._stream(commit, path, 0, {}, READ_BLOCK):
            h.update(block)
        return "sha256:" + h.hexdigest()

    def _stream(
        self, commit: str, path: str, start: int, headers: dict[str, str], block_size: int
    ) -> Iterator[memoryview]:
        from huggingface_hub import hf_hub_url

        url = hf_hub_url(self.repo_id, path, revision=commit, endpoint=self._endpoint)
        what = f"downloading {path} of {self._url} at {commit[:12]}"
        auth = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        try:
            # the Hub answers /resolve/ with a redirect to its CDN: followed, without our token
            resp = self._pool.request(
                "GET",
                url,
                headers={**auth, **headers, "Accept-Encoding": "identity", "User-Agent": USER_AGENT},
                preload_content=False,
                redirect=True,
            )
        except urllib3.exceptions.HTTPError as exc:
            raise TransientError(f"{what}: {exc}") from exc
        try:
            if resp.status == 404:
                raise NotFoundError(f"{what}: not found (HTTP 404)")
            if resp.status in (401, 403):
                raise RegistryError(f"{what}: access denied (HTTP {resp.status}; check HF_TOKEN)")
            if resp.status not in (200, 206):
                raise RegistryError(f"{what}: HTTP {resp.status}")
            self._stats.add(gets=1)
            skip = start if start and resp.status == 200 else 0  # the server ignored the range
            for raw in resp.stream(block_size, decode_content=False):
                view = memoryview(raw)
                if skip:
                    dropped = min(skip, len(view))
                    skip -= dropped
                    view = view[dropped:]
                    if not len(view):
                        continue
                self._stats.add(down=len(view))
                yield view
        except urllib3.exceptions.HTTPError as exc:  # ProtocolError, ReadTimeoutError: continue with a range
            raise TransientError(f"{what}: the download broke off ({exc})") from exc
        finally:
            resp.release_conn()


def _skipped(path: str) -> bool:
    """Repository bookkeeping the server never reads (``.gitattributes``)."""
    return path.rsplit("/", 1)[-1] in (".gitattributes",)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]

"""Node cache eviction: which old model versions leave a node (issue #12 item 3).

The node agent calls :func:`evict` on each namespace cache directory (``<nodeCache.path>/
<namespace>``, one :class:`~qwen_operator.modelsync.store.Store` each) with the versions to
protect: those the node's pods serve (their ``serving.qwenops.io/model-version``) and the
current and target versions of every QwenDeployment. ``qwenctl model gc`` runs the same by
hand. Pure filesystem: no Kubernetes here.

Policy, per call:

1. Never removed: a protected version (an id, a ``sha256:`` manifest digest, or a version
   name found in a kept manifest) and the version ``current`` points at. A pod whose version
   is not a digest reads ``current`` (``render.workload.model_path``), so a reference that
   matches nothing (a tag) needs no more than that; it is listed in ``unresolved``.
2. Per model the ``keep_others`` most recent other versions stay (``history`` order, most
   recently pulled first; versions missing from history count as oldest).
3. With ``max_bytes``, while the store is over the bound the oldest remaining other version
   goes, across all models (each model oldest-first in history order; between models the
   one whose manifest was touched by a pull longest ago). The bound wins over ``keep_others``,
   never over protection: when only protected and current versions are left the report says
   ``over_budget``.
4. Blobs no kept version references are collected (``Store.collect_blobs``): a chunk shared
   by versions stays while one of them is kept. ``history`` is rewritten to what is left and
   the protected ids are recorded in ``models/NAME/protected`` so that a pull's own trim
   (``Store.prune_versions``) also spares them between agent runs.

Locking: eviction takes the store's exclusive ``.lock`` -- pulls hold it shared from start to
finish -- without blocking (or retrying for ``lock_timeout_s``). If a pull holds it the call
changes nothing and returns a report with ``busy=True``; the agent simply tries again later.
Removal is crash-safe (``Store.remove_version``: tree renamed into ``trash/`` first, then the
manifest, then the trash deleted; leftovers are swept on the next call).

Bytes are the store's files on disk counted once per inode (``st_dev``, ``st_ino``; a version
file hard-linked to a blob counts once): ``blobs/``, ``tmp/`` and each model's ``versions/``,
``staging/`` and ``trash/``, by their apparent size (``st_size``).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from qwen_operator.modelsync.manifest import DIGEST_RE, Manifest, ManifestError, short_id
from qwen_operator.modelsync.store import MODEL_NAME_RE, TRASH, Store

_ID_RE = re.compile(r"^[0-9a-f]{16}$")
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
LOCK_RETRY_S = 0.2


@dataclass(frozen=True)
class CachePolicy:
    keep_others: int = 1  # unprotected versions kept per model, most recent first (history order)
    max_bytes: int | None = None  # bound on the store's bytes on disk (blobs + version files; hard links once)

    def __post_init__(self) -> None:
        if self.keep_others < 0:
            raise ValueError(f"keep_others {self.keep_others}: must be 0 or more")
        if self.max_bytes is not None and self.max_bytes < 0:
            raise ValueError(f"max_bytes {self.max_bytes}: must be 0 or more")


@dataclass(frozen=True)
class EvictionReport:
    removed: tuple[tuple[str, str], ...]  # (model name, version id) removed
    kept: tuple[tuple[str, str], ...]  # (model name, version id) still complete on disk
    bytes_before: int
    bytes_after: int
    over_budget: bool  # max_bytes still exceeded: everything left is protected or current
    busy: bool = False  # a pull held the store lock: nothing was done, try again later
    unresolved: tuple[tuple[str, str], ...] = ()  # (model, reference) matching no version on disk (e.g. a tag)


def held_versions(root: Path) -> dict[str, list[str]]:
    """model name -> ids of complete versions on disk (manifest + version tree), most recent first."""
    models = root / "models"
    out: dict[str, list[str]] = {}
    for mdir in sorted(models.iterdir()) if models.is_dir() else []:
        if not mdir.is_dir() or not MODEL_NAME_RE.match(mdir.name):
            continue
        out[mdir.name] = _complete(mdir)
    return out


def store_bytes(root: Path) -> int:
    """Bytes of the store's files, each inode once (see the module docstring)."""
    tops = [root / "blobs", root / "tmp"]
    models = root / "models"
    for mdir in sorted(models.iterdir()) if models.is_dir() else []:
        tops += [mdir / "versions", mdir / "staging", mdir / TRASH]
    seen: set[tuple[int, int]] = set()
    total = 0
    for top in tops:
        for dirpath, _, files in os.walk(top):
            for name in files:
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue
                key = (st.st_dev, st.st_ino)
                if key in seen or not _is_regular(st.st_mode):
                    continue
                seen.add(key)
                total += st.st_size
    return total


def evict(
    root: Path,
    protect: Mapping[str, Collection[str]],
    policy: CachePolicy,
    *,
    lock_timeout_s: float = 0.0,
) -> EvictionReport:
    """protect: model name -> version ids OR full 'sha256:...' digests (accept both; normalise with short_id).

    Also accepted: a version name (the ``version`` of a kept manifest). See the module docstring."""
    if not (root / "models").is_dir():  # nothing pulled here yet: nothing to evict (and nothing created)
        size = store_bytes(root)
        return EvictionReport((), (), size, size, policy.max_bytes is not None and size > policy.max_bytes)
    store = Store(root)
    deadline = time.monotonic() + max(0.0, lock_timeout_s)
    while True:
        with store.lock(root / ".lock", exclusive=True, blocking=False) as got:
            if got:
                return _evict_locked(store, protect, policy)
        if time.monotonic() >= deadline:
            size = store_bytes(root)
            kept = tuple((m, v) for m, ids in held_versions(root).items() for v in ids)
            over = policy.max_bytes is not None and size > policy.max_bytes
            return EvictionReport((), kept, size, size, over, busy=True)
        time.sleep(LOCK_RETRY_S)


def _evict_locked(store: Store, protect: Mapping[str, Collection[str]], policy: CachePolicy) -> EvictionReport:
    root = store.root
    before = store_bytes(root)
    held = held_versions(root)
    removed: list[tuple[str, str]] = []
    unresolved: list[tuple[str, str]] = []
    spared: dict[str, set[str]] = {}  # model -> protected ids and current: never removed
    others: dict[str, list[str]] = {}  # model -> removable versions, most recent first
    for model, ids in held.items():
        mdir = store.models / model
        store.sweep(mdir)  # a removal a crash interrupted
        _drop_staging(mdir)  # no pull is running: a staging tree is a dead pull's
        wanted, missing = _resolve(mdir, ids, protect.get(model, ()))
        unresolved += [(model, ref) for ref in missing]
        store.write_protected(mdir, wanted)
        spared[model] = wanted | {v for v in (store.current_id(mdir),) if v}
        others[model] = [v for v in ids if v not in spared[model]]
        for vid in others[model][policy.keep_others :]:
            store.remove_version(mdir, vid)
            removed.append((model, vid))
        others[model] = others[model][: policy.keep_others]
        for vdir in _incomplete(mdir):  # a tree without its manifest (a pull killed between the two)
            if vdir.name not in spared[model]:
                store.remove_version(mdir, vdir.name)
    store.collect_blobs()
    size = store_bytes(root)
    if policy.max_bytes is not None:
        while size > policy.max_bytes:
            victim = _oldest(store, others)
            if victim is None:
                break
            model, vid = victim
            others[model].remove(vid)
            store.remove_version(store.models / model, vid)
            removed.append(victim)
            store.collect_blobs()
            size = store_bytes(root)
    left = held_versions(root)
    for model, ids in left.items():
        store.write_history(store.models / model, ids)
    over = policy.max_bytes is not None and size > policy.max_bytes
    kept = tuple((m, v) for m, ids in left.items() for v in ids)
    return EvictionReport(tuple(removed), kept, before, size, over, unresolved=tuple(unresolved))


def normalise(ref: str) -> str | None:
    """A version id from an id or a manifest digest (``sha256:`` optional); None for anything else."""
    ref = ref.strip()
    if ref.startswith("sha256:"):
        return short_id(ref) if DIGEST_RE.match(ref) else None
    if _HEX64_RE.match(ref):
        return ref[:16]
    return ref if _ID_RE.match(ref) else None


def _resolve(mdir: Path, held: list[str], refs: Collection[str]) -> tuple[set[str], list[str]]:
    """Protected ids of one model, and the references that match no version on disk and are not
    ids or digests (tags: their pods read ``current``)."""
    ids: set[str] = set()
    names: list[str] = []
    for ref in refs:
        vid = normalise(ref)
        if vid is not None:
            ids.add(vid)
        else:
            names.append(ref.strip())
    missing: list[str] = []
    if names:
        by_name: dict[str, set[str]] = {}
        for vid in held:
            try:
                manifest = Manifest.from_json((mdir / "manifests" / f"{vid}.json").read_bytes())
            except (OSError, ManifestError):
                continue
            by_name.setdefault(manifest.version, set()).add(vid)
        for name in names:
            if name in by_name:
                ids |= by_name[name]
            else:
                missing.append(name)
    return ids, missing


def _complete(mdir: Path) -> list[str]:
    """Complete version ids of one model, most recent first (history, then the rest newest first)."""
    versions, manifests = mdir / "versions", mdir / "manifests"
    present = {
        vdir.name
        for vdir in (versions.iterdir() if versions.is_dir() else [])
        if vdir.is_dir() and (manifests / f"{vdir.name}.json").is_file()
    }
    history = Store.read_history(mdir)
    ordered = [v for v in dict.fromkeys(history) if v in present]
    rest = sorted(present - set(ordered), key=lambda v: (-_mtime(manifests / f"{v}.json"), v))
    return ordered + rest


def _incomplete(mdir: Path) -> list[Path]:
    versions = mdir / "versions"
    return [
        vdir
        for vdir in (sorted(versions.iterdir()) if versions.is_dir() else [])
        if vdir.is_dir() and not (mdir / "manifests" / f"{vdir.name}.json").is_file()
    ]


def _drop_staging(mdir: Path) -> None:
    if (mdir / "staging").is_dir():
        shutil.rmtree(mdir / "staging", ignore_errors=True)


def _oldest(store: Store, others: Mapping[str, list[str]]) -> tuple[str, str] | None:
    """The next version the size bound removes: each model's oldest removable one, and of those
    the one a pull touched longest ago."""
    heads = [(m, ids[-1]) for m, ids in sorted(others.items()) if ids]
    if not heads:
        return None
    return min(heads, key=lambda mv: (_mtime(store.models / mv[0] / "manifests" / f"{mv[1]}.json"), mv))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _is_regular(mode: int) -> bool:
    return stat.S_ISREG(mode)

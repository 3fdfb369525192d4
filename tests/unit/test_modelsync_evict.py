"""Node cache eviction (``modelsync.evict``) and ``qwenctl model gc``, on caches built by real pulls
from an in-memory registry (the S3 round trip is tests/integration/test_modelsync_evict.py)."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from qwen_operator.cli import main
from qwen_operator.modelsync.cli import parse_size
from qwen_operator.modelsync.evict import CachePolicy, EvictionReport, evict, held_versions, store_bytes
from qwen_operator.modelsync.manifest import ChunkRef, FileEntry, Manifest, short_id
from qwen_operator.modelsync.pull import pull
from qwen_operator.modelsync.registry import READ_BLOCK, NotFoundError, Registry
from qwen_operator.modelsync.store import Store

KB = 1024


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob(seed: str, size: int = 4 * KB) -> bytes:
    out = b""
    block = seed.encode()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return out[:size]


class Versions(Registry):
    """Serves any number of versions from memory; counts bytes served."""

    def __init__(self) -> None:
        super().__init__("s3://memory/models", client=cast(Any, object()))
        self.manifests: dict[str, Manifest] = {}
        self.names: dict[str, str] = {}
        self.chunks: dict[str, bytes] = {}
        self.served = 0

    def add(self, name: str, files: dict[str, list[bytes]]) -> str:
        entries = []
        for path, parts in files.items():
            for p in parts:
                self.chunks[digest(p)] = p
            whole = b"".join(parts)
            entries.append(
                FileEntry(path, len(whole), digest(whole), tuple(ChunkRef(digest(p), len(p)) for p in parts))
            )
        m = Manifest(name, "2026-01-01T00:00:00Z", tuple(entries))
        self.manifests[m.digest()] = m
        self.names[name] = m.digest()
        return m.digest()

    def resolve(self, version: str | None = None, tag: str | None = None) -> str:
        assert version is not None
        if version in self.manifests:
            return version
        if version not in self.names:
            raise NotFoundError(f"version {version!r} not found")
        return self.names[version]

    def get_manifest(self, digest: str) -> Manifest:
        return self.manifests[digest]

    def get_blob(self, digest: str, start: int = 0, block_size: int = READ_BLOCK) -> Iterator[memoryview]:
        data = memoryview(self.chunks[digest])[start:]
        self.served += len(data)
        yield data


def shards(n: int, changed: int) -> dict[str, list[bytes]]:
    """Version ``n`` of a 3-file model: ``a`` never changes, ``b`` shares 3 of 4 chunks with every
    other version (its last chunk differs), ``c`` is new in every version."""
    return {
        "a.bin": [blob("a0"), blob("a1")],
        "b.bin": [blob("b0"), blob("b1"), blob("b2"), blob(f"b3-{changed}")],
        "c.bin": [blob(f"c-{n}")],
    }


@pytest.fixture
def reg() -> Versions:
    r = Versions()
    for n in range(1, 5):
        r.add(f"v{n}", shards(n, n))
    return r


def pull_all(
    reg: Versions, cache: Path, name: str = "ns.chat", versions: tuple[str, ...] = ("v1", "v2", "v3", "v4")
) -> dict[str, str]:
    """Pull versions in order (keep high: only evict prunes here); version name -> id."""
    ids = {}
    for v in versions:
        r = pull(reg, cache, name, version=v, keep=99, workers=2, out=open(os.devnull, "w"))
        ids[v] = r.path.name
        time.sleep(0.01)  # distinct manifest mtimes (the size bound's age across models)
    return ids


def assert_verifies(cache: Path, name: str, vid: str) -> None:
    """Every file of the version tree has its manifest's sha256."""
    mdir = cache / "models" / name
    m = Manifest.from_json((mdir / "manifests" / f"{vid}.json").read_bytes())
    for f in m.files:
        assert digest((mdir / "versions" / vid / f.path).read_bytes()) == f.sha256, f.path


def ids_of(report: EvictionReport) -> set[str]:
    return {v for _, v in report.removed}


# --- held_versions ---------------------------------------------------------------------------


def test_held_versions_lists_complete_versions_most_recent_first(reg: Versions, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    ids = pull_all(reg, cache)
    assert held_versions(cache) == {"ns.chat": [ids["v4"], ids["v3"], ids["v2"], ids["v1"]]}
    mdir = cache / "models" / "ns.chat"
    # re-pulling v2 moves it to the front
    pull(reg, cache, "ns.chat", version="v2", keep=99, out=open(os.devnull, "w"))
    assert held_versions(cache)["ns.chat"] == [ids["v2"], ids["v4"], ids["v3"], ids["v1"]]
    # a version missing from history counts as oldest; an incomplete one is not listed
    Store(cache).write_history(mdir, [ids["v2"], ids["v3"]])
    assert held_versions(cache)["ns.chat"][:2] == [ids["v2"], ids["v3"]]
    assert set(held_versions(cache)["ns.chat"][2:]) == {ids["v4"], ids["v1"]}
    (mdir / "manifests" / f"{ids['v1']}.json").unlink()  # tree without manifest
    os.rename(mdir / "versions" / ids["v3"], tmp_path / "elsewhere")  # manifest without tree
    assert held_versions(cache)["ns.chat"] == [ids["v2"], ids["v4"]]
    assert held_versions(tmp_path / "nothing") == {}


# --- the policy ------------------------------------------------------------------------------


def test_protected_and_current_stay_then_keep_others_most_recent(reg: Versions, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    ids = pull_all(reg, cache)  # current: v4
    r = evict(cache, {"ns.chat": [reg.names["v1"]]}, CachePolicy(keep_others=1))  # v1 by full digest
    assert not r.busy and not r.over_budget
    assert ids_of(r) == {ids["v2"]}  # v4 current, v1 protected, v3 the one most recent other
    assert held_versions(cache)["ns.chat"] == [ids["v4"], ids["v3"], ids["v1"]]
    assert set(r.kept) == {("ns.chat", ids[v]) for v in ("v1", "v3", "v4")}
    assert not (cache / "models/ns.chat/versions" / ids["v2"]).exists()
    assert not (cache / "models/ns.chat/manifests" / f"{ids['v2']}.json").exists()
    assert r.bytes_after < r.bytes_before and r.bytes_after == store_bytes(cache)
    for v in ("v1", "v3", "v4"):
        assert_verifies(cache, "ns.chat", ids[v])
    assert (cache / "models/ns.chat/current").resolve().name == ids["v4"]
    # history is what is left; the protected ids are recorded for the pulls' own trim
    assert Store.read_history(cache / "models/ns.chat") == [ids["v4"], ids["v3"], ids["v1"]]
    assert Store(cache).read_protected(cache / "models/ns.chat") == {ids["v1"]}

    r = evict(cache, {"ns.chat": [ids["v1"]]}, CachePolicy(keep_others=0))  # by id now
    assert ids_of(r) == {ids["v3"]}
    assert held_versions(cache)["ns.chat"] == [ids["v4"], ids["v1"]]
    r = evict(cache, {}, CachePolicy(keep_others=0))  # nothing protected: the current version alone
    assert ids_of(r) == {ids["v1"]} and held_versions(cache)["ns.chat"] == [ids["v4"]]
    assert_verifies(cache, "ns.chat", ids["v4"])


def test_protection_by_version_name_and_unresolved_references(reg: Versions, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    ids = pull_all(reg, cache)
    r = evict(cache, {"ns.chat": ["v2", "stable", "sha256:nope"], "ns.gone": ["v1"]}, CachePolicy(keep_others=0))
    assert ids_of(r) == {ids["v1"], ids["v3"]}  # v2 by its version name, v4 current
    assert r.unresolved == (("ns.chat", "stable"), ("ns.chat", "sha256:nope"))  # ns.gone: no such model here


def test_current_is_never_removed_even_when_not_most_recent(reg: Versions, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    ids = pull_all(reg, cache)
    mdir = cache / "models/ns.chat"
    os.replace(mdir / "current", mdir / "old")
    os.symlink(f"versions/{ids['v1']}", mdir / "current")  # e.g. a rollback pulled v1 last by hand
    r = evict(cache, {}, CachePolicy(keep_others=0, max_bytes=0))
    assert held_versions(cache)["ns.chat"] == [ids["v1"]] and r.over_budget
    assert_verifies(cache, "ns.chat", ids["v1"])


def test_size_bound_removes_oldest_first_across_models_never_protected(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    reg = Versions()
    for n in range(1, 4):
        reg.add(f"a{n}", {"w.bin": [blob(f"a{n}-{i}") for i in range(4)]})  # 16 KiB, nothing shared
        reg.add(f"b{n}", {"w.bin": [blob(f"b{n}-{i}") for i in range(4)]})
    ids: dict[str, str] = {}
    for v in ("a1", "b1", "a2", "b2", "a3", "b3"):  # pulled in this order: a1 oldest
        ids |= pull_all(reg, cache, "ns." + v[0], (v,))
    total = store_bytes(cache)
    assert total == 6 * 16 * KB  # hard links counted once: a version's file and its blob are one inode
    # keep_others=2 keeps everything; the bound (4 versions' worth) then drops the two oldest, a1 then b1
    r = evict(cache, {}, CachePolicy(keep_others=2, max_bytes=4 * 16 * KB))
    assert list(r.removed) == [("ns.a", ids["a1"]), ("ns.b", ids["b1"])]
    assert (r.bytes_before, r.bytes_after, r.over_budget) == (total, 4 * 16 * KB, False)
    # a bound below what the protected and current versions need: they stay, the report says so
    r = evict(cache, {"ns.a": [ids["a2"]]}, CachePolicy(keep_others=2, max_bytes=16 * KB))
    assert list(r.removed) == [("ns.b", ids["b2"])]  # a2 protected, a3 and b3 current
    assert r.over_budget and r.bytes_after == 3 * 16 * KB
    assert held_versions(cache) == {"ns.a": [ids["a3"], ids["a2"]], "ns.b": [ids["b3"]]}


def test_shared_chunks_stay_while_a_kept_version_references_them(reg: Versions, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    ids = pull_all(reg, cache, versions=("v1", "v2"))
    store = Store(cache)
    mdir = cache / "models/ns.chat"
    a_v2 = mdir / "versions" / ids["v2"] / "a.bin"
    inode = a_v2.stat().st_ino
    assert (mdir / "versions" / ids["v1"] / "a.bin").stat().st_ino == inode  # one file on disk for both
    evict(cache, {}, CachePolicy(keep_others=0))  # v1 goes, v2 is current
    chunks, _ = store.local_index()
    for shared in (blob("a0"), blob("b0"), blob("b2")):
        assert digest(shared) in chunks  # still readable from v2's files
    assert digest(blob("c-1")) not in chunks and digest(blob("b3-1")) not in chunks
    assert a_v2.stat().st_ino == inode and a_v2.stat().st_nlink >= 1
    assert_verifies(cache, "ns.chat", ids["v2"])
    # a version that shares nothing with v2's a.bin and b.bin: once v2 goes, their chunks leave the disk
    reg.add("v9", {"z.bin": [blob("z")]})
    pull(reg, cache, "ns.chat", version="v9", keep=99, out=open(os.devnull, "w"))
    before = store_bytes(cache)
    r = evict(cache, {}, CachePolicy(keep_others=0))
    chunks, files = store.local_index()
    assert not {digest(blob(s)) for s in ("a0", "b0", "b3-2", "c-2")} & set(chunks)
    assert sorted(p.name for p in store.blobs.iterdir()) == [digest(blob("z"))[7:]]
    assert r.bytes_after == len(blob("z")) < before


def test_re_pull_after_eviction_moves_only_the_missing_chunks(reg: Versions, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    ids = pull_all(reg, cache, versions=("v1", "v2"))
    evict(cache, {}, CachePolicy(keep_others=0))
    reg.served = 0
    r = pull(reg, cache, "ns.chat", version="v1", keep=99, out=open(os.devnull, "w"))
    assert r.path.name == ids["v1"]
    assert reg.served == r.bytes_fetched == len(blob("b3-1")) + len(blob("c-1"))  # a.bin and 3 chunks of b.bin local
    assert_verifies(cache, "ns.chat", ids["v1"])


# --- crash safety and the lock -----------------------------------------------------------------


def test_a_half_removed_version_never_looks_complete_and_is_swept(reg: Versions, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    ids = pull_all(reg, cache, versions=("v1", "v2", "v3"))
    mdir = cache / "models/ns.chat"
    # an eviction killed after the rename into trash/ (manifest still there, rmtree half done)
    (mdir / "trash").mkdir()
    dead = mdir / "trash" / f"{ids['v1']}.4242.1"
    os.rename(mdir / "versions" / ids["v1"], dead)
    (dead / "c.bin").unlink()
    # and one killed after the manifest went (trash not yet deleted)
    os.rename(mdir / "versions" / ids["v2"], mdir / "trash" / f"{ids['v2']}.4242.2")
    (mdir / "manifests" / f"{ids['v2']}.json").unlink()
    assert held_versions(cache) == {"ns.chat": [ids["v3"]]}
    chunks, files = Store(cache).local_index()  # no pull reads chunks from the trash
    assert all("trash" not in str(loc.path) for loc in chunks.values())
    r = evict(cache, {}, CachePolicy(keep_others=5))
    assert r.removed == () and not any((mdir / "trash").iterdir())
    assert not (mdir / "manifests" / f"{ids['v1']}.json").exists()  # the orphan manifest is swept
    assert r.bytes_after < r.bytes_before
    # a later pull of v1 rebuilds it whole
    pull(reg, cache, "ns.chat", version="v1", keep=99, out=open(os.devnull, "w"))
    assert_verifies(cache, "ns.chat", ids["v1"])


def test_remove_version_renames_before_deleting(reg: Versions, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kill the removal between its steps: the version is gone from the complete set at once."""
    cache = tmp_path / "cache"
    ids = pull_all(reg, cache, versions=("v1", "v2"))
    mdir = cache / "models/ns.chat"

    def killed(*_: Any, **__: Any) -> None:
        raise KeyboardInterrupt  # the process dies before the trash is deleted

    monkeypatch.setattr("qwen_operator.modelsync.store.shutil.rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        Store(cache).remove_version(mdir, ids["v1"])
    monkeypatch.undo()
    assert held_versions(cache) == {"ns.chat": [ids["v2"]]}
    assert [p.name.split(".")[0] for p in (mdir / "trash").iterdir()] == [ids["v1"]]
    evict(cache, {}, CachePolicy())
    assert not any((mdir / "trash").iterdir())


def test_a_running_pull_makes_eviction_report_busy(reg: Versions, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    ids = pull_all(reg, cache)
    store = Store(cache)
    with store.lock(cache / ".lock", exclusive=False):  # what a pull holds from start to finish
        r = evict(cache, {}, CachePolicy(keep_others=0))
        assert r.busy and r.removed == () and len(r.kept) == 4 and r.bytes_before == r.bytes_after
    assert len(held_versions(cache)["ns.chat"]) == 4

    release = threading.Event()

    def hold() -> None:
        with store.lock(cache / ".lock", exclusive=False):
            release.wait(5)
            time.sleep(0.3)

    t = threading.Thread(target=hold)
    t.start()
    release.set()
    r = evict(cache, {}, CachePolicy(keep_others=0), lock_timeout_s=10)  # waits for the pull to finish
    t.join()
    assert not r.busy and ids_of(r) == {ids["v1"], ids["v2"], ids["v3"]}


# --- the pull's own trim -------------------------------------------------------------------------


def test_pull_trim_spares_the_agents_protected_versions_and_current(reg: Versions, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    ids = pull_all(reg, cache, versions=("v1", "v2"))
    evict(cache, {"ns.chat": [ids["v1"]]}, CachePolicy(keep_others=5))  # the agent: v1 is served here
    r = pull(reg, cache, "ns.chat", version="v3", keep=2, out=open(os.devnull, "w"))
    r = pull(reg, cache, "ns.chat", version="v4", keep=2, out=open(os.devnull, "w"))
    assert set(r.removed_versions) == {ids["v2"]}  # beyond keep=2, but v1 is spared
    assert held_versions(cache)["ns.chat"] == [r.path.name, short_id(reg.names["v3"]), ids["v1"]]
    assert_verifies(cache, "ns.chat", ids["v1"])
    # keep=1 keeps the version just pulled and current (here the same) and the protected one
    r = pull(reg, cache, "ns.chat", version="v2", keep=1, out=open(os.devnull, "w"))
    assert held_versions(cache)["ns.chat"] == [ids["v2"], ids["v1"]]


# --- qwenctl model gc ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,value",
    [
        ("123", 123),
        ("2k", 2000),
        ("2K", 2000),
        ("800Mi", 800 << 20),
        ("2Gi", 2 << 30),
        ("1.5T", 1_500_000_000_000),
        ("3Ti", 3 << 40),
        ("5M", 5_000_000),
        ("1G", 10**9),
    ],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "-1", "2X", "2ki", "Gi", "1e9", "2 GiB"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


def test_gc_command(reg: Versions, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    ids = pull_all(reg, cache)
    code = main(["model", "gc", "--cache", str(cache), "--protect", f"ns.chat={reg.names['v1']}", "--keep-others", "0"])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    (line,) = out.splitlines()
    assert line.startswith("removed 2 versions (") and f"ns.chat/{ids['v2']}" in line and "kept 2;" in line
    assert held_versions(cache)["ns.chat"] == [ids["v4"], ids["v1"]]
    code = main(["model", "gc", "--cache", str(cache), "--protect", "ns.chat=v1", "--max-bytes", "1Ki"])
    (line,) = capsys.readouterr().out.splitlines()
    assert code == 0 and line.startswith("removed 0 versions, kept 2;") and "still over --max-bytes 1Ki" in line


@pytest.mark.parametrize(
    "args,message",
    [
        (["--cache", "{tmp}/missing"], "no such directory"),
        (["--cache", "{tmp}", "--protect", "ns.chat"], "--protect 'ns.chat': use NAME=VERSION"),
        (["--cache", "{tmp}", "--protect", "=abc"], "use NAME=VERSION"),
        (["--cache", "{tmp}", "--max-bytes", "lots"], "--max-bytes 'lots' is not a size"),
        (["--cache", "{tmp}", "--keep-others", "-1"], "--keep-others -1: must be 0 or more"),
    ],
)
def test_gc_errors_are_one_line(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["model", "gc", *(a.format(tmp=tmp_path) for a in args)])
    _, err = capsys.readouterr()
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith("error: ") and message in line


def test_gc_reports_a_busy_cache(reg: Versions, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    pull_all(reg, cache, versions=("v1", "v2"))
    with Store(cache).lock(cache / ".lock", exclusive=False):
        code = main(["model", "gc", "--cache", str(cache), "--keep-others", "0"])
    (line,) = capsys.readouterr().err.splitlines()
    assert code == 2 and "in use by a running pull; nothing removed" in line
    assert len(held_versions(cache)["ns.chat"]) == 2


def test_policy_rejects_negative_values() -> None:
    with pytest.raises(ValueError, match="keep_others"):
        CachePolicy(keep_others=-1)
    with pytest.raises(ValueError, match="max_bytes"):
        CachePolicy(max_bytes=-5)

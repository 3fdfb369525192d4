"""``qwenctl model ...``: push, pull, diff, tag and list model versions in a registry; gc a node cache.

``model pull`` is the contract the operator's init container runs on every TGI pod:
``qwenctl model pull --registry R --version <digest> --cache /var/cache/qwen --name N``
leaves ``/var/cache/qwen/models/N/current`` pointing at a complete, verified version.
``R`` is ``s3://BUCKET/PREFIX`` (AWS_* credentials) or ``oci://HOST[:PORT]/REPOSITORY``
(OCI_USERNAME/OCI_PASSWORD or OCI_TOKEN, OCI_CA_BUNDLE; see ``modelsync.oci``).
``model gc --cache DIR --protect NAME=DIGEST ... [--keep-others N] [--max-bytes 200Gi]`` evicts
old versions by the node cache policy (``modelsync.evict``), as the node agent does.
Expected failures become ``UserError`` (``error: ...``, exit 2), never tracebacks.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from qwen_operator.cli import UserError
from qwen_operator.modelsync.backend import ModelRegistry, RegistryError, open_registry
from qwen_operator.modelsync.manifest import diff
from qwen_operator.modelsync.push import fmt_bytes, push
from qwen_operator.modelsync.store import sanitise_name


def register(subparsers: Any) -> None:
    model = subparsers.add_parser("model", help="model registry: push/pull/diff/tag/ls (layer-diff sync)")
    sub = model.add_subparsers(dest="model_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--registry",
            required=True,
            help="s3://BUCKET/PREFIX (credentials: standard AWS_* variables) or oci://HOST[:PORT]/REPOSITORY "
            "(OCI_USERNAME/OCI_PASSWORD or OCI_TOKEN, OCI_CA_BUNDLE, OCI_PLAIN_HTTP)",
        )
        p.add_argument("--endpoint-url", help="S3 endpoint (default: AWS_ENDPOINT_URL or AWS); s3:// only")

    p = sub.add_parser("push", help="publish DIR as a version, uploading only chunks the registry lacks")
    p.add_argument("dir", type=Path)
    common(p)
    p.add_argument("--version", required=True)
    p.add_argument("--tag")
    p.add_argument("--workers", type=int, default=8)
    p.set_defaults(handler=_push)

    p = sub.add_parser("pull", help="sync a version into a node cache and flip its `current` link")
    common(p)
    ref = p.add_mutually_exclusive_group(required=True)
    ref.add_argument("--version", help="version name or manifest digest sha256:<hex>")
    ref.add_argument("--tag")
    p.add_argument("--cache", type=Path, required=True, help="node cache directory (shared by all models)")
    p.add_argument("--name", help="model directory name (default: the sanitised registry prefix)")
    p.add_argument("--keep", type=int, default=2, help="versions to keep, current included (default 2)")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--limit-rate", type=_rate, help="download bandwidth cap, e.g. 200M (bytes/s)")
    p.set_defaults(handler=_pull)

    p = sub.add_parser(
        "gc",
        help="evict old versions from a node cache (what the node agent runs; see modelsync.evict)",
        description="Remove old model versions from a node cache: never a protected version nor the one "
        "`current` points at; per model the --keep-others most recent other versions stay; then, with "
        "--max-bytes, the oldest others go until the cache fits. Blobs no kept version uses are collected.",
    )
    p.add_argument("--cache", type=Path, required=True, help="node cache directory (as given to `model pull`)")
    p.add_argument(
        "--protect",
        action="append",
        default=[],
        metavar="NAME=VERSION",
        help="never remove this version of model NAME: a version id, a sha256: manifest digest or a version "
        "name (repeatable)",
    )
    p.add_argument("--keep-others", type=int, default=1, help="unprotected versions kept per model (default 1)")
    p.add_argument("--max-bytes", help="bound on the cache's bytes: 500000000, 800Mi, 2Gi, 1.5T (Ki/Mi/Gi/Ti: 1024)")
    p.add_argument(
        "--wait", type=float, default=0.0, help="seconds to wait for a running pull to release the cache (default 0)"
    )
    p.set_defaults(handler=_gc)

    p = sub.add_parser("diff", help="what updating from version A to B would move")
    common(p)
    p.add_argument("a", help="version, tag or digest (the one a node has)")
    p.add_argument("b", help="version, tag or digest (the update)")
    p.set_defaults(handler=_diff)

    p = sub.add_parser("tag", help="point a tag at a version")
    common(p)
    p.add_argument("--version", required=True)
    p.add_argument("--tag", required=True)
    p.set_defaults(handler=_tag)

    p = sub.add_parser("ls", help="list versions and tags")
    common(p)
    p.set_defaults(handler=_ls)


def _rate(value: str) -> float:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    try:
        if value[-1:].upper() in units:
            return float(value[:-1]) * units[value[-1].upper()]
        return float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--limit-rate {value!r}: use bytes/s such as 500K, 200M or 1G") from exc


_SIZE_UNITS = {
    "": 1,
    "k": 10**3,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 1 << 10,
    "Mi": 1 << 20,
    "Gi": 1 << 30,
    "Ti": 1 << 40,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKMGT]i?)?\s*$")


def parse_size(value: str) -> int:
    """Bytes from ``123``, ``800Mi``, ``2Gi``, ``1.5T`` (k/M/G/T: powers of 1000; Ki/Mi/Gi/Ti: of 1024)."""
    m = _SIZE_RE.match(value)
    unit = (m.group(2) or "") if m else ""
    if m is None or unit == "ki" or unit not in _SIZE_UNITS:
        raise ValueError(f"{value!r} is not a size: use bytes, or a number with k/M/G/T or Ki/Mi/Gi/Ti (2Gi, 500M)")
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


def _registry(args: argparse.Namespace, workers: int = 8) -> ModelRegistry:
    try:
        return open_registry(args.registry, endpoint_url=args.endpoint_url, workers=workers)
    except RegistryError as exc:
        raise UserError(str(exc)) from exc


def _resolve_any(reg: ModelRegistry, ref: str) -> str:
    """A version name, digest, or (failing those) a tag."""
    try:
        return reg.resolve(version=ref)
    except RegistryError:
        if ref.startswith("sha256:"):
            raise
        return reg.resolve(tag=ref)


def _push(args: argparse.Namespace) -> int:
    if not args.dir.is_dir():
        raise UserError(f"{args.dir} is not a directory")
    reg = _registry(args, args.workers)
    try:
        r = push(reg, args.dir, args.version, tag=args.tag, workers=args.workers)
    except RegistryError as exc:
        raise UserError(str(exc)) from exc
    print(f"pushed {args.version} as {r.digest}" + (f" (tag {args.tag})" if args.tag else ""))
    print(
        f"uploaded {fmt_bytes(r.bytes_uploaded)} of {fmt_bytes(r.total_bytes)} "
        f"({r.chunks_uploaded} of {r.chunks_total} chunks new)"
    )
    return 0


def _pull(args: argparse.Namespace) -> int:
    from qwen_operator.modelsync.pull import pull

    if args.keep < 1:
        raise UserError(f"--keep {args.keep}: must be at least 1 (the current version)")
    reg = _registry(args, args.workers)
    name = args.name or sanitise_name(reg.name_hint())
    try:
        r = pull(
            reg,
            args.cache,
            name,
            version=args.version,
            tag=args.tag,
            keep=args.keep,
            workers=args.workers,
            limit_rate=args.limit_rate,
        )
    except (RegistryError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    print(f"{r.version} {r.digest} -> {args.cache / 'models' / name / 'current'}")
    print(f"fetched {fmt_bytes(r.bytes_fetched)} of {fmt_bytes(r.total_bytes)} ({r.chunks_fetched} chunks)")
    return 0


def _gc(args: argparse.Namespace) -> int:
    from qwen_operator.modelsync.evict import CachePolicy, evict

    if not args.cache.is_dir():
        raise UserError(f"--cache {args.cache}: no such directory")
    if args.keep_others < 0:
        raise UserError(f"--keep-others {args.keep_others}: must be 0 or more")
    try:
        max_bytes = None if args.max_bytes is None else parse_size(args.max_bytes)
    except ValueError as exc:
        raise UserError(f"--max-bytes {exc}") from exc
    protect: dict[str, list[str]] = {}
    for item in args.protect:
        name, sep, ref = item.partition("=")
        if not sep or not name or not ref:
            raise UserError(f"--protect {item!r}: use NAME=VERSION (a version id, sha256: digest or version name)")
        protect.setdefault(name, []).append(ref)
    try:
        r = evict(args.cache, protect, CachePolicy(args.keep_others, max_bytes), lock_timeout_s=args.wait)
    except OSError as exc:
        raise UserError(f"gc of {args.cache} failed: {exc}") from exc
    if r.busy:
        raise UserError(f"{args.cache} is in use by a running pull; nothing removed (retry, or give --wait SECONDS)")
    removed = ", ".join(f"{m}/{v}" for m, v in r.removed)
    line = (
        f"removed {len(r.removed)} versions" + (f" ({removed})" if removed else "") + f", kept {len(r.kept)}; "
        f"{fmt_bytes(r.bytes_before)} -> {fmt_bytes(r.bytes_after)} ({r.bytes_before} -> {r.bytes_after} bytes)"
    )
    if r.over_budget:
        line += f"; still over --max-bytes {args.max_bytes}: everything left is protected or current"
    if r.unresolved:
        refs = ", ".join(f"{m}={ref}" for m, ref in r.unresolved)
        line += f"; unresolved (no such id, digest or version here; tags read current): {refs}"
    print(line)
    return 0


def _diff(args: argparse.Namespace) -> int:
    reg = _registry(args)
    try:
        a, b = _resolve_any(reg, args.a), _resolve_any(reg, args.b)
        d = diff(reg.get_manifest(a), reg.get_manifest(b))
    except RegistryError as exc:
        raise UserError(str(exc)) from exc
    print(f"{'FILE':<48} {'STATUS':<9} {'CHUNKS NEW/ALL':>15} {'BYTES NEW':>12} {'SIZE':>12}")
    for f in d.files:
        chunks = f"{f.chunks_new}/{f.chunks_total}"
        print(f"{f.path:<48} {f.status:<9} {chunks:>15} {fmt_bytes(f.bytes_new):>12} {fmt_bytes(f.size):>12}")
    print(
        f"update moves {fmt_bytes(d.bytes_to_move)} in {d.chunks_to_move} chunks; file-level diff would move "
        f"{fmt_bytes(d.file_level_bytes)}; full download {fmt_bytes(d.total_bytes)}"
    )
    return 0


def _tag(args: argparse.Namespace) -> int:
    reg = _registry(args)
    try:
        digest = reg.resolve(version=args.version)
        reg.set_tag(args.tag, digest)
    except RegistryError as exc:
        raise UserError(str(exc)) from exc
    print(f"tag {args.tag} -> {args.version} ({digest})")
    return 0


def _ls(args: argparse.Namespace) -> int:
    reg = _registry(args)
    try:
        versions = reg.list_pointers("versions")
        tags = reg.list_pointers("tags")
    except RegistryError as exc:
        raise UserError(str(exc)) from exc
    by_digest: dict[str, list[str]] = {}
    for t, d in tags:
        by_digest.setdefault(d, []).append(t)
    print(f"{'VERSION':<32} {'DIGEST':<20} TAGS", file=sys.stdout)
    for v, d in versions:
        print(f"{v:<32} {d[:19]:<20} {','.join(by_digest.get(d, []))}")
    return 0

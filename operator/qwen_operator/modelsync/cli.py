"""``qwenctl model ...``: push, pull, diff, tag and list model versions in a registry.

``model pull`` is the contract the operator's init container runs on every TGI pod:
``qwenctl model pull --registry R --version <digest> --cache /var/cache/qwen --name N``
leaves ``/var/cache/qwen/models/N/current`` pointing at a complete, verified version.
``R`` is ``s3://BUCKET/PREFIX`` (AWS_* credentials) or ``oci://HOST[:PORT]/REPOSITORY``
(OCI_USERNAME/OCI_PASSWORD or OCI_TOKEN, OCI_CA_BUNDLE; see ``modelsync.oci``).
Expected failures become ``UserError`` (``error: ...``, exit 2), never tracebacks.
"""

from __future__ import annotations

import argparse
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

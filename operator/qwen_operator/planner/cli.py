"""``qwenctl plan`` and ``qwenctl render``: the planner and renderer, offline.

Both read a QwenDeployment from a YAML file, check it exactly as the API models do, and
print what the operator would decide (``plan``: the placement table and pools) or apply
(``render``: multi-document YAML). Free GPUs come from ``--gpus`` (default: unlimited);
reading them from a cluster belongs to the controller.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..api import API_VERSION, KIND
from ..api.spec import QwenDeploymentSpec
from ..api.validate import Problem, validate_spec
from ..catalog import Catalog, CatalogError, load_catalog, resolve_gpu_name
from ..cli import UserError
from ..render import RenderContext, render
from .plan import Plan, plan


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "plan",
        help="print where a QwenDeployment's replicas would go",
        description="Print the placement table (GPU type, shards, nodes, GPUs/replica, fits?, $/h, throughput, time "
        "to first token, requests/s within the SLO, why) "
        "and the pools for a QwenDeployment file. A model one node of a GPU type cannot hold is also planned "
        "across nodes (engine vllm: tensor parallel within a node, pipeline parallel across nodes, a "
        "LeaderWorkerSet group: the operator renders one where the LeaderWorkerSet CRD is installed).",
    )
    _common(p)
    p.add_argument(
        "--reasoning",
        choices=("spec", "enabled", "disabled"),
        help="count Qwen3 thinking tokens in the typical reply (enabled: typicalOutputTokens plus "
        "~1000 thinking tokens, models with a thinking mode only; spec: as spec.runtime.reasoning says); "
        "default: typicalOutputTokens is the whole reply",
    )
    p.set_defaults(handler=_plan_cmd)
    r = subparsers.add_parser(
        "render",
        help="print the manifests the operator would apply",
        description="Print, as multi-document YAML, the Services, PodDisruptionBudgets, the router (Deployment, "
        "ServiceAccount, Role, RoleBinding; spec.routing.enabled), the InferencePool and HTTPRoute "
        "(spec.routing.gateway.inferencePool) and per-pool Deployments the operator would apply for a "
        "QwenDeployment file.",
    )
    _common(r)
    r.add_argument("--namespace", help="namespace (default: metadata.namespace, else default)")
    r.add_argument("--model-version", help="resolved model version (default: spec.model.version)")
    r.add_argument("--operator-image", help="image of the model-pull init container")
    r.add_argument("--service-monitor", action="store_true", help="also render a ServiceMonitor")
    r.set_defaults(handler=_render_cmd)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--filename", required=True, type=Path, help="QwenDeployment YAML file")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--gpus", help="free GPUs per type, e.g. a10g=4,l40s=2 (default: unlimited)")
    src.add_argument(
        "--from-cluster", action="store_true", help="read free GPUs per node from the current kubeconfig's cluster"
    )
    p.add_argument("--kubeconfig", type=Path, help="with --from-cluster: kubeconfig (default: $KUBECONFIG)")
    p.add_argument("--replicas", type=int, help="replicas to place (default: what the spec asks for)")
    p.add_argument("--catalog", type=Path, help="operator config YAML whose catalog section overrides defaults")


def load_resource(path: Path) -> tuple[dict[str, Any], QwenDeploymentSpec]:
    """(metadata, typed spec) of the QwenDeployment in ``path``; UserError naming the field."""
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    except OSError as exc:
        raise UserError(f"{path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {exc}") from exc
    found = [d for d in docs if isinstance(d, dict) and d.get("kind") == KIND]
    if not found:
        raise UserError(f"{path}: no document with kind: {KIND}")
    doc = found[0]
    if doc.get("apiVersion") != API_VERSION:
        raise UserError(f"apiVersion: expected {API_VERSION}, got {doc.get('apiVersion')!r}")
    meta = doc.get("metadata") or {}
    if not isinstance(meta, dict) or not meta.get("name"):
        raise UserError("metadata.name: required")
    try:
        spec = QwenDeploymentSpec.model_validate(doc.get("spec") or {})
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in ("spec", *err["loc"]))
            lines.append(f"{loc}: {err['msg'].removeprefix('Value error, ')} (got {err.get('input')!r})")
        raise UserError("; ".join(lines)) from exc
    return meta, spec


def parse_gpus(text: str | None, catalog: Catalog) -> dict[str, int] | None:
    """``a10g=4,l40s=2`` -> ``{"A10G": 4, "L40S": 2}``; None when not given."""
    if text is None:
        return None
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, count = part.partition("=")
        try:
            key = resolve_gpu_name(name.strip(), catalog.gpus)
        except KeyError:
            raise UserError(f"--gpus: unknown GPU type {name!r}; known: {', '.join(sorted(catalog.gpus))}") from None
        if not sep or not count.strip().isdigit():
            raise UserError(f"--gpus: expected TYPE=COUNT with a non-negative integer, got {part!r}")
        out[key] = out.get(key, 0) + int(count)
    return out


def _catalog(path: Path | None) -> Catalog:
    if path is None:
        return Catalog()
    try:
        return load_catalog(yaml.safe_load(path.read_text()))
    except (OSError, yaml.YAMLError, CatalogError) as exc:
        raise UserError(f"--catalog {path}: {exc}") from exc


def _prepare(args: argparse.Namespace) -> tuple[dict[str, Any], QwenDeploymentSpec, Catalog, Plan, list[Problem]]:
    catalog = _catalog(args.catalog)
    meta, spec = load_resource(args.filename)
    if args.replicas is not None and args.replicas < 0:
        raise UserError(f"--replicas: must be >= 0, got {args.replicas}")
    free: Any = parse_gpus(args.gpus, catalog)
    if getattr(args, "from_cluster", False):
        free = _from_cluster(catalog, args.kubeconfig)
    problems = validate_spec(spec, catalog)
    for pr in problems:
        print(f"warning: {pr.field}: {pr.message}", file=sys.stderr)
    flag = getattr(args, "reasoning", None)
    reasoning = None if flag is None else (spec.runtime.reasoning if flag == "spec" else flag) == "enabled"
    # as the controller plans in a cluster with the LeaderWorkerSet CRD (without it: no replica spans nodes)
    result = plan(spec, catalog, replicas=args.replicas, free_gpus=free, reasoning=reasoning, multi_node=True)
    return meta, spec, catalog, result, problems


def _from_cluster(catalog: Catalog, kubeconfig: Path | None) -> dict[str, list[int]]:
    from ..controller.inventory_io import read_inventory

    try:
        inv = read_inventory(catalog, kubeconfig)
    except Exception as exc:  # noqa: BLE001 - any failure to read the cluster is a user-facing error
        raise UserError(f"--from-cluster: could not read nodes and pods: {exc}") from None
    for product in sorted(inv.unknown_products):
        print(f"warning: nodes with nvidia.com/gpu.product={product} are not in the catalog", file=sys.stderr)
    summary = ", ".join(f"{t} {inv.free(t)}/{inv.allocatable[t]}" for t in inv.present()) or "no GPU nodes"
    print(f"free GPUs in the cluster (free/allocatable): {summary}", file=sys.stderr)
    return {t: inv.free_per_node.get(t, []) for t in catalog.gpus}


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def format_plan(p: Plan) -> str:
    head = ["GPU", "SHARDS", "NODES", "GPUS/REPLICA", "FITS", "$/H/REPLICA", "TOK/S/SEQ*", "TTFT IDLE", "REQ/S@SLO**"]
    rows = [[*head, "$/H PER REQ/S", "WHY"]]
    for c in p.candidates:
        rows.append(
            [
                c.gpu_type,
                str(c.shards) if c.shards else "-",
                str(c.nodes) if c.shards else "-",
                str(c.gpus_per_replica) if c.shards else "-",
                "yes" if c.fits else "no",
                f"{c.price_per_hour:.3f}" if c.fits else "-",
                f"{c.throughput:.1f}" if c.fits else "-",
                f"{c.idle_ttft:.2f}s" if c.idle_ttft else "-",
                f"{c.slo_rate:.2f}" if c.slo_rate else "-",
                f"{c.cost_per_slo_rate:.3f}" if c.slo_rate and c.fits else "-",
                c.reason,
            ]
        )
    for name in p.unknown_gpu_types:
        rows.append([name, "-", "-", "-", "no", "-", "-", "-", "-", "-", "not in the catalog"])
    out = [f"model {p.model}: {p.desired_replicas} replica(s) wanted", ""]
    out.append(_table(rows) if len(rows) > 1 else "(no candidates)")
    out.append("* estimated decode tokens/s per sequence (bandwidth-bound)")
    out.append(
        "** requests/s per replica with P95 time to first token within spec.scaling.p95LatencySeconds for "
        "typical requests (simulated replica model); TTFT IDLE: one typical prompt on an idle replica"
    )
    out.append("")
    if p.pools:
        pool_rows = [["POOL", "REPLICAS", "SHARDS", "NODES", "GPUS", "$/H"]]
        for pool in p.pools:
            cand = p.candidate(pool.gpu_type)
            nodes = cand.nodes if cand is not None else 1
            pool_rows.append(
                [
                    pool.gpu_type,
                    str(pool.replicas),
                    str(pool.shards),
                    str(nodes),
                    str(pool.gpus),
                    f"{pool.cost_per_hour:.3f}",
                ]
            )
        out.append(_table(pool_rows))
        out.append(f"total: {p.placed} replica(s), {p.cost_per_hour:.3f} $/h")
        if any(c.multi_node for c in p.candidates if p.pool(c.gpu_type)):
            out.append(
                "note: a pool spanning nodes runs as a LeaderWorkerSet (a group of NODES pods per replica): the "
                "cluster needs the LeaderWorkerSet CRD and controller (leaderworkerset.x-k8s.io); without them the "
                "operator reports Degraded/LeaderWorkerSetNotInstalled"
            )
    else:
        out.append("no pools")
    if p.reason:
        out.append(f"{p.reason_code}: {p.reason}")
    return "\n".join(out)


def _plan_cmd(args: argparse.Namespace) -> int:
    _, _, _, result, problems = _prepare(args)
    print(format_plan(result))
    return 0 if result.ok and not problems else 1


def _render_cmd(args: argparse.Namespace) -> int:
    meta, spec, catalog, result, problems = _prepare(args)
    ctx = RenderContext(
        name=str(meta["name"]),
        namespace=args.namespace or str(meta.get("namespace") or "default"),
        model_version=args.model_version,
        operator_image=args.operator_image,
        service_monitor=args.service_monitor,
        gateway_api=True,  # the operator applies them only where both CRDs exist; show what it would apply
    )
    if result.reason:
        print(f"warning: {result.reason_code}: {result.reason}", file=sys.stderr)
    sys.stdout.write(yaml.safe_dump_all(render(spec, result, ctx, catalog), sort_keys=False))
    return 0 if result.ok and not problems else 1

"""``qwenctl node-agent``: pre-stage model versions on this GPU node (the chart's DaemonSet runs it)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
from pathlib import Path
from typing import Any

from qwen_operator.cli import UserError


def _bytes(value: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = value.strip().upper().removesuffix("IB").removesuffix("B")
    try:
        if text[-1:] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(float(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r}: use bytes such as 500M, 200G or 1T") from exc


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "node-agent",
        help="pre-stage model versions into this GPU node's cache (the chart's DaemonSet)",
        description="Pull the current and target versions of every QwenDeployment this node is eligible for "
        "into its hostPath model cache (one pull at a time, bandwidth-capped), evict what no resource needs, "
        "and publish what the node holds as the Node annotation serving.qwenops.io/model-cache.",
    )
    p.add_argument("--node", default=os.environ.get("NODE_NAME"), help="this node's name (default: $NODE_NAME)")
    p.add_argument(
        "--cache-root",
        action="append",
        default=[],
        metavar="DIR|NODE_PATH=DIR",
        help="where a node cache path is mounted; the first DIR serves nodeCache.path, further ones their own "
        "path (nodeCache.allowedPaths); NODE_PATH=DIR maps explicitly (repeatable)",
    )
    p.add_argument("--config", type=Path, help="the operator config file (nodeCache, registry, podDefaults)")
    p.add_argument("--max-bytes", type=_bytes, help="size bound per cache directory (<path>/<namespace>), e.g. 500G")
    p.add_argument("--keep-others", type=int, default=1, help="unprotected versions kept per model (default 1)")
    p.add_argument("--bandwidth", type=_bytes, help="download cap of this node's pulls in bytes/s, e.g. 200M")
    p.add_argument("--interval", type=float, default=30.0, help="seconds between full re-lists (default 30)")
    p.add_argument("--namespace", action="append", default=[], help="only these namespaces (default: all)")
    p.add_argument("--kubeconfig", type=Path, help="kubeconfig (default: in-cluster, else $KUBECONFIG)")
    p.add_argument("--once", action="store_true", help="stop when nothing is left to pull (debugging)")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from ..catalog import CatalogError, load_catalog
    from ..controller.cli import _load_config, controller_config, parse_config
    from .agent import AgentConfig, NodeAgent, parse_cache_roots

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    if not args.node:
        raise UserError("--node: required (or $NODE_NAME, from the downward API spec.nodeName)")
    if not args.cache_root:
        raise UserError("--cache-root: at least one (where the node's model cache is mounted)")
    if args.keep_others < 0:
        raise UserError(f"--keep-others {args.keep_others}: must be 0 or more")
    if args.interval <= 0:
        raise UserError(f"--interval {args.interval}: must be > 0")
    raw = _load_config(args.config)
    cfg = parse_config(raw, f"--config {args.config}" if args.config else "operator config")
    try:
        catalog = load_catalog({"catalog": raw.get("catalog") or {}, "gpuProductLabels": cfg.gpu_product_labels})
    except CatalogError as exc:
        raise UserError(f"operator config: {exc}") from None
    defaults = controller_config(cfg).defaults
    try:
        roots = parse_cache_roots(args.cache_root, defaults.node_cache_path)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    api = _api(args.kubeconfig)
    agent = NodeAgent(
        AgentConfig(
            node=args.node,
            cache_roots=roots,
            defaults=defaults,
            gpus=catalog.gpus,
            keep_others=args.keep_others,
            max_bytes=args.max_bytes,
            bandwidth=args.bandwidth,
            interval=args.interval,
            namespaces=tuple(args.namespace),
            once=args.once,
        ),
        api,
    )
    from kubernetes.client.exceptions import ApiException

    def _term(*_: Any) -> None:
        raise SystemExit(0)  # a running pull's child process is killed on the way out

    signal.signal(signal.SIGTERM, _term)
    try:
        agent.core.read_node(args.node)
    except ApiException as exc:
        raise UserError(f"--node {args.node}: {exc.status} {exc.reason}") from None
    return agent.run()


def _api(kubeconfig: Path | None) -> Any:
    from kubernetes import client, config

    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST") and not kubeconfig and not os.environ.get("KUBECONFIG"):
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        else:
            config.load_kube_config(config_file=str(kubeconfig) if kubeconfig else None)  # type: ignore[no-untyped-call]
    except config.ConfigException as exc:
        raise UserError(f"no Kubernetes credentials: {exc}") from None
    return client.ApiClient()

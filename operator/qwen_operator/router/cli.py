"""``qwenctl router``: the data-plane process the operator deploys per QwenDeployment.

Why it exists: the rendered router Deployment runs exactly this command (same image as
the operator), and so do the sandbox, the demo and the e2e tests, so what is tested is what
ships. Every flag is checked here and bad input raises :class:`qwen_operator.cli.UserError`
naming the flag and what it accepts (the operator renders the flags from ``spec.routing``,
which admission already validated, but a hand-written Deployment gets the same checks).

Credentials: the pod's service account in a cluster, else ``--kubeconfig`` /
``$KUBECONFIG`` / ``~/.kube/config``. ``QWEN_ROUTER_DIAL=annotation`` is the sandbox seam
(see :mod:`.discovery`).

``QWEN_ROUTER_LISTEN=HOST:PORT`` overrides ``--host``/``--port``: the sandbox runs every
router pod as a process on one loopback, where the rendered ``--port 8080`` of two pods
would collide, so the simulated fleet starts them with ``127.0.0.1:0`` (a free port) and
reads the bound address from the one ``listening on`` line on stdout. A pod has its own
network namespace and never needs it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import re
import signal
import sys
from dataclasses import dataclass
from typing import Any

from ..cli import UserError
from .discovery import DIAL_ENV, DIAL_MODES, PodWatcher, load_credentials
from .proxy import Router, RouterConfig, describe_targets

#: RFC 1123 label (namespace) and subdomain (object name).
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
#: Seconds in-flight requests get to finish after SIGTERM (the pod's grace period should exceed it).
DRAIN_SECONDS = 30.0
#: ``HOST:PORT`` to listen on instead of ``--host``/``--port`` (the sandbox's shared loopback).
LISTEN_ENV = "QWEN_ROUTER_LISTEN"


@dataclass(frozen=True)
class RouterOptions:
    namespace: str
    deployment: str
    host: str
    port: int
    kubeconfig: str | None
    dial: str
    config: RouterConfig


def _int(flag: str, text: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"{flag}: {text!r} is not a whole number ({low}..{high})") from None
    if not low <= value <= high:
        raise UserError(f"{flag}: {value} is out of range ({low}..{high})")
    return value


def _float(flag: str, text: str, low: float, high: float, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{flag}: {text!r} is not a number ({what})") from None
    if not (math.isfinite(value) and low <= value <= high):
        raise UserError(f"{flag}: {text} is out of range ({what})")
    return value


def options_from_args(args: argparse.Namespace, env: dict[str, str] | None = None) -> RouterOptions:
    """Validate every flag (and ``QWEN_ROUTER_DIAL``); each error names what to fix."""
    environ = dict(os.environ) if env is None else env
    if not args.namespace:
        raise UserError("--namespace: required (the QwenDeployment's namespace)")
    if not _DNS_LABEL.match(args.namespace):
        raise UserError(f"--namespace: {args.namespace!r} is not a valid namespace name (RFC 1123 label)")
    if not args.deployment:
        raise UserError("--deployment: required (the QwenDeployment's name)")
    if not _DNS_SUBDOMAIN.match(args.deployment):
        raise UserError(f"--deployment: {args.deployment!r} is not a valid object name (RFC 1123 subdomain)")
    if not args.host.strip():
        raise UserError("--host: give an address to listen on, e.g. 0.0.0.0")
    host = args.host
    port = _int("--port", args.port, 0, 65535)
    listen = environ.get(LISTEN_ENV, "")
    if listen:
        listen_host, sep, listen_port = listen.rpartition(":")
        if not sep or not listen_host.strip("[]").strip():
            raise UserError(f"{LISTEN_ENV}: {listen!r} is not HOST:PORT (e.g. 127.0.0.1:0)")
        host = listen_host.strip("[]")
        port = _int(LISTEN_ENV, listen_port, 0, 65535)
    if args.affinity not in ("on", "off"):
        raise UserError(f"--affinity: {args.affinity!r} is not valid; valid: on, off")
    load_bound = _float("--load-bound", args.load_bound, 1.0, 100.0, "1 to 100: the most an endpoint's load may be "
                        "over the fleet's mean before affinity moves on")  # fmt: skip
    hold_queue = _int("--hold-queue", args.hold_queue, 0, 1_000_000)
    hold_timeout = _float("--hold-timeout", args.hold_timeout, 0.0, 3600.0, "seconds, 0 to 3600")
    retries = _int("--retries", args.retries, 0, 10)
    canary = _float("--canary-percent", args.canary_percent, 0.0, 100.0, "0 to 100")
    if args.kubeconfig is not None and not os.path.isfile(args.kubeconfig):
        raise UserError(f"--kubeconfig: {args.kubeconfig} is not a readable file")
    dial = environ.get(DIAL_ENV, "") or "pod-ip"
    if dial not in DIAL_MODES:
        raise UserError(f"{DIAL_ENV}: {dial!r} is not valid; valid: {', '.join(DIAL_MODES)}")
    config = RouterConfig(
        affinity=args.affinity == "on",
        load_bound=load_bound,
        hold_queue=hold_queue,
        hold_timeout=hold_timeout,
        retries=retries,
        canary_percent=canary,
    )
    return RouterOptions(args.namespace, args.deployment, host, port, args.kubeconfig, dial, config)


async def serve(opts: RouterOptions) -> None:
    """Run the router until SIGTERM/SIGINT, then drain (health fails first, in-flight finish)."""
    try:
        creds = load_credentials(opts.kubeconfig)
    except RuntimeError as exc:
        raise UserError(f"--kubeconfig: {exc}") from None
    watcher = PodWatcher(creds, opts.namespace, opts.deployment, dial=opts.dial)
    router = Router(opts.config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await router.start(opts.host, opts.port, source=watcher, shutdown_timeout=DRAIN_SECONDS)
    except OSError as exc:
        raise UserError(f"--port: cannot listen on {opts.host}:{opts.port}: {exc.strerror or exc}") from None
    print(
        f"qwenctl router: listening on {router.url} for {opts.namespace}/{opts.deployment} (dial: {opts.dial})",
        flush=True,
    )
    last = ""
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 5.0)
            now = describe_targets(router.targets)
            if now != last:  # one line per change of the Ready set, not per event
                logging.getLogger("qwen_operator.router").info("endpoints: %s", now)
                last = now
    finally:
        await router.stop()


def run_router(args: argparse.Namespace) -> int:
    opts = options_from_args(args)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(opts))
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "router",
        help="run the inference router of one QwenDeployment (the data plane the operator deploys)",
        description="Routes requests to the Ready server pods of one QwenDeployment: capacity-weighted, "
        "prefix/session affinity, holds requests while no replica can take them, retries before the first byte, "
        "streams unbuffered; Prometheus metrics on /metrics.",
    )
    p.add_argument("--namespace", default="", help="the QwenDeployment's namespace")
    p.add_argument("--deployment", default="", help="the QwenDeployment's name")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", default="8080", help="port to listen on (default 8080; 0 picks a free one)")
    p.add_argument("--kubeconfig", default=None, help="kubeconfig (default: in-cluster, else $KUBECONFIG)")
    p.add_argument("--affinity", default="off", help="prefix/session affinity: on or off (default)")
    p.add_argument("--load-bound", default="1.25", help="affinity's bounded-load factor, >= 1 (default 1.25)")
    p.add_argument("--hold-queue", default="256", help="requests held at once while no endpoint can take them")
    p.add_argument("--hold-timeout", default="30", help="seconds a held request waits before a 503 (default 30)")
    p.add_argument("--retries", default="2", help="retries on another endpoint before the first byte (default 2)")
    p.add_argument("--canary-percent", default="0", help="share of requests for canary pods, 0-100 (default 0)")
    p.set_defaults(handler=run_router)

"""``qwenctl operator run``: run the operator against the current kubeconfig (or in-cluster)."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import time
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..cli import UserError
from ..router.discovery import DIAL_ENV, DIAL_MODES

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..autoscale.prometheus import Connection as PrometheusConnection
    from ..modelsync.registry import Registry
    from ..packaging.values import OperatorConfig
    from .handlers import Controller, ControllerConfig
    from .leader import LeaseSettings


def register(sub: Any) -> None:
    op = sub.add_parser("operator", help="run the qwen-operator controller")
    ops = op.add_subparsers(dest="operator_command", metavar="ACTION", required=True)
    run = ops.add_parser("run", help="run the operator (locally against the current kubeconfig, or in-cluster)")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        metavar="NS",
        help="watch QwenDeployments in NS only (repeatable)",
    )
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (default)")
    run.add_argument(
        "--config",
        type=Path,
        help="operator config YAML (catalog, registry and node cache defaults, ...; default: $QWEN_OPERATOR_CONFIG)",
    )
    run.add_argument("--kubeconfig", type=Path, help="kubeconfig (default: $KUBECONFIG, ~/.kube/config or in-cluster)")
    run.add_argument("--resync-seconds", type=float, default=None, help="periodic re-reconcile (default 60)")
    run.add_argument("--metrics-port", type=int, default=None, help="serve the operator's own /metrics on PORT")
    run.add_argument(
        "--prometheus-url", default=None, help="Prometheus for autoscaling (default: operator config prometheus.url)"
    )
    run.add_argument(
        "--liveness", default=None, metavar="URL", help="serve kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz"
    )
    le = run.add_argument_group(
        "leader election",
        "run several replicas: only the holder of a coordination.k8s.io Lease runs handlers and writes",
    )
    le.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="wait for the leader Lease before starting the controller (default off; the chart turns it on)",
    )
    le.add_argument(
        "--leader-elect-namespace",
        default=None,
        metavar="NS",
        help="namespace of the Lease (default: $POD_NAMESPACE, else the in-cluster service account's namespace)",
    )
    le.add_argument(
        "--leader-elect-lease-name", default=None, metavar="NAME", help="Lease name (default qwen-operator-leader)"
    )
    le.add_argument(
        "--leader-elect-identity",
        default=None,
        help="holder identity (default: $POD_NAME or host name + random suffix)",
    )
    le.add_argument(
        "--leader-elect-lease-duration",
        type=float,
        default=None,
        metavar="S",
        help="seconds a standby waits after the Lease last changed before taking it (default 10)",
    )
    le.add_argument(
        "--leader-elect-renew-deadline",
        type=float,
        default=None,
        metavar="S",
        help="seconds the leader keeps leading without a successful renewal, then exits (default 7)",
    )
    le.add_argument(
        "--leader-elect-retry-period",
        type=float,
        default=None,
        metavar="S",
        help="seconds between renewals and between a standby's looks (default 2)",
    )
    run.add_argument("--log-format", choices=["plain", "json"], default="plain")
    run.add_argument("--verbose", "-v", action="store_true")
    run.set_defaults(handler=_run)


def _load_config(path: Path | None) -> dict[str, Any]:
    """The config file as parsed YAML (``{}`` without one); keys without a value are dropped (unset)."""
    if path is None:
        env = os.environ.get("QWEN_OPERATOR_CONFIG")
        path = Path(env) if env else None
    if path is None:
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise UserError(f"--config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"--config {path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: expected a mapping at the top level")
    return _drop_nulls(data)


def _drop_nulls(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _drop_nulls(v) if isinstance(v, dict) else v for k, v in data.items() if v is not None}


def parse_config(raw: dict[str, Any], source: str = "operator config") -> OperatorConfig:
    """Validate the config against :class:`~qwen_operator.packaging.values.OperatorConfig`, the schema
    the chart's ``config`` values are checked with, so the operator accepts exactly what ``helm install``
    does. Errors name every offending key, e.g. ``registry.endpointURL``."""
    from pydantic import ValidationError

    from ..packaging.values import OperatorConfig

    try:
        return OperatorConfig.model_validate(raw)
    except ValidationError as exc:
        problems = [_problem(OperatorConfig, err) for err in exc.errors(include_url=False)]
        raise UserError(f"{source}: " + "; ".join(problems)) from None


def _problem(model: Any, err: Any) -> str:
    loc = tuple(err["loc"])
    where = ".".join(str(part) for part in loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        known = _known_keys(model, loc[:-1])
        return f"{where}: unknown key" + (f" (known: {', '.join(known)})" if known else "")
    got = repr(err.get("input"))
    return f"{where}: {err['msg']} (got {got[:80]})"


def _known_keys(model: Any, path: tuple[Any, ...]) -> list[str]:
    """Config keys (aliases) of the section at ``path`` inside ``model``; [] where that is a free mapping."""
    from typing import Union, get_args, get_origin

    from pydantic import BaseModel

    def is_model(t: Any) -> bool:
        return isinstance(t, type) and issubclass(t, BaseModel)

    current: Any = model
    for part in path:
        if get_origin(current) in (Union, types.UnionType):  # X | None: the X
            current = next((a for a in get_args(current) if a is not type(None)), None)
        if is_model(current):
            field = next((f for n, f in current.model_fields.items() if part in (n, f.alias)), None)
            current = field.annotation if field is not None else None
        elif get_origin(current) is dict:  # part is a free key, e.g. a GPU type name
            current = get_args(current)[1]
        else:
            return []
    return sorted(f.alias or n for n, f in current.model_fields.items()) if is_model(current) else []


def controller_config(cfg: OperatorConfig, resync_seconds: float | None = None) -> ControllerConfig:
    """What the reconciler takes from the config: ``resyncSeconds`` (the flag wins), ``operatorImage``,
    ``podAnnotations``, and ``registry.*`` / ``nodeCache.path`` as defaults for unset spec fields,
    ``nodeCache.allowedPaths``: the cache directories a resource may name besides ``nodeCache.path``, and
    ``podDefaults``: what every server and router pod gets."""
    from ..render.workload import OperatorDefaults, PodDefaults
    from .handlers import ControllerConfig

    return ControllerConfig(
        resync_seconds=resync_seconds or cfg.resync_seconds,
        operator_image=cfg.operator_image or None,
        pod_annotations=tuple(sorted(cfg.pod_annotations.items())),
        defaults=OperatorDefaults(
            registry_endpoint_url=cfg.registry.endpoint_url or None,
            registry_region=cfg.registry.region or None,
            credentials_secret=cfg.registry.credentials_secret or None,
            node_cache_path=cfg.node_cache.path,
            allowed_cache_paths=tuple(cfg.node_cache.allowed_paths),
            pods=PodDefaults(
                image_pull_secrets=tuple(s.name for s in cfg.pod_defaults.image_pull_secrets),
                tolerations=tuple(cfg.pod_defaults.tolerations),
                node_selector=tuple(sorted(cfg.pod_defaults.node_selector.items())),
                priority_class_name=cfg.pod_defaults.priority_class_name or None,
                labels=tuple(sorted(cfg.pod_defaults.labels.items())),
                annotations=tuple(sorted(cfg.pod_defaults.annotations.items())),
            ),
        ),
    )


def _run(args: argparse.Namespace) -> int:
    import kopf
    from kubernetes import client, config

    from ..catalog import CatalogError, load_catalog

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format='{"time":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","message":"%(message)s"}'
        if args.log_format == "json"
        else "%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    for noisy in ("kopf.objects", "kopf.activities.startup", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.resync_seconds is not None and args.resync_seconds <= 0:
        raise UserError(f"--resync-seconds: must be > 0, got {args.resync_seconds}")
    lease = leader_settings(args) if args.leader_elect else None
    raw = _load_config(args.config)
    cfg = parse_config(raw, f"operator config {args.config or os.environ.get('QWEN_OPERATOR_CONFIG') or ''}".strip())
    try:
        catalog = load_catalog({"catalog": raw.get("catalog") or {}, "gpuProductLabels": cfg.gpu_product_labels})
    except CatalogError as exc:
        raise UserError(f"operator config: {exc}") from None
    if args.prometheus_url or cfg.prometheus.url:
        prometheus_connection(cfg, args.prometheus_url)  # inconsistent auth / TLS settings stop here
    dial_mode()  # a bad $QWEN_ROUTER_DIAL stops here
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = str(args.kubeconfig)
    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST") and not args.kubeconfig and not os.environ.get("KUBECONFIG"):
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        else:
            config.load_kube_config(config_file=str(args.kubeconfig) if args.kubeconfig else None)  # type: ignore[no-untyped-call]
    except config.ConfigException as exc:
        raise UserError(f"no Kubernetes credentials: {exc}") from None
    api = client.ApiClient()
    namespaces = args.namespace
    logging.getLogger("qwen_operator").info(
        "qwen-operator starting: %s; catalog has %d GPU types, %d models%s",
        f"namespaces {', '.join(namespaces)}" if namespaces else "all namespaces",
        len(catalog.gpus),
        len(catalog.models),
        f"; leader election on Lease {lease.namespace}/{lease.name} as {lease.identity}" if lease else "",
    )
    if args.metrics_port:
        from .metrics import serve

        serve(args.metrics_port)

    def wire() -> tuple[Any, Controller]:
        """The kopf registry with the controller wired in (inert until kopf runs it)."""
        return _wire(args, cfg, catalog, api)

    def operator(registry: Any, liveness: str | None) -> Any:
        return kopf.operator(
            registry=registry,
            clusterwide=not namespaces,
            namespaces=namespaces,
            standalone=True,
            liveness_endpoint=liveness,
        )

    try:
        if lease is None:
            asyncio.run(operator(wire()[0], args.liveness))
            return 0
        return asyncio.run(_lead(args, api, lease, wire, operator))
    except KeyboardInterrupt:
        return 130


def leader_settings(args: argparse.Namespace) -> LeaseSettings:
    """The ``--leader-elect-*`` flags, checked; errors name the flag."""
    from .leader import (
        DEFAULT_LEASE_NAME,
        LEASE_DURATION,
        RENEW_DEADLINE,
        RETRY_PERIOD,
        LeaseSettings,
        default_identity,
    )

    namespace = args.leader_elect_namespace or os.environ.get("POD_NAMESPACE") or _in_cluster_namespace()
    if not namespace:
        raise UserError(
            "--leader-elect-namespace: needed outside a pod (no $POD_NAMESPACE and no in-cluster service account)"
        )
    settings = LeaseSettings(
        namespace=namespace,
        identity=args.leader_elect_identity or default_identity(),
        name=args.leader_elect_lease_name or DEFAULT_LEASE_NAME,
        lease_duration=_or(args.leader_elect_lease_duration, LEASE_DURATION),
        renew_deadline=_or(args.leader_elect_renew_deadline, RENEW_DEADLINE),
        retry_period=_or(args.leader_elect_retry_period, RETRY_PERIOD),
    )
    problems = settings.problems()
    if problems:
        raise UserError("; ".join(problems))
    return settings


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _in_cluster_namespace() -> str | None:
    path = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


async def _lead(
    args: argparse.Namespace,
    api: Any,
    lease: LeaseSettings,
    wire: Callable[[], tuple[Any, Controller]],
    operator: Callable[[Any, str | None], Any],
) -> int:
    """Standby until this process holds the Lease, then kopf while renewing it.

    The standby builds the controller but does not run it (no watch, no cache, no loop), so it
    cannot write; building it ahead (imports, optional-CRD reads, in a thread) lets a new leader
    start kopf the moment it holds the Lease, with its event loop free to renew.
    Losing the Lease exits the process (see :mod:`.leader`); a stop signal stops kopf first and
    releases the Lease after, so the next leader starts at once."""
    import signal

    from .leader import EXIT_LEASE_LOST, KubeLeases, LeaderElector, serve_health

    elector = LeaderElector(KubeLeases(api, lease.namespace, lease.name, timeout=lease.retry_period), lease)
    health = await serve_health(args.liveness, elector) if args.liveness else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log = logging.getLogger("qwen_operator")
    registry, controller = await asyncio.to_thread(wire)
    try:
        if not await elector.acquire(stop):
            log.info("stopped while standby")
            return 0
        elector.start_watchdog()
        # created before kopf starts: kopf leaves tasks that predate it alone when it stops
        holding = asyncio.create_task(elector.hold(), name="leader lease")
        # the first reconcile waits for the initial listings from now, not from when it was built
        controller.started_at = time.monotonic()
        if stop.is_set():  # a signal between winning the Lease and kopf taking over the handlers
            holding.cancel()
            await elector.release()
            return 0
        kopf_run = asyncio.create_task(operator(registry, None), name="kopf")
        done, _ = await asyncio.wait({holding, kopf_run}, return_when=asyncio.FIRST_COMPLETED)
        if holding in done:  # lost (on_lost exits the process; this is the fallback)
            kopf_run.cancel()
            return EXIT_LEASE_LOST
        holding.cancel()
        await elector.release()  # kopf and every handler task have stopped: no writer is left
        kopf_run.result()
        return 0
    finally:
        if health is not None:
            await health.cleanup()


def _wire(args: argparse.Namespace, cfg: OperatorConfig, catalog: Any, api: Any) -> tuple[Any, Controller]:
    """A kopf registry with the controller, its autoscaler and version watcher attached."""
    import kopf
    from kubernetes import client, config

    from ..render.lws import LWS_CRD
    from .autoscaler import Autoscaler
    from .handlers import Controller, register
    from .kube import Kube
    from .versions import VersionWatcher

    ctl_config = controller_config(cfg, args.resync_seconds)
    ctl_config.service_monitor_crd = _crd_exists(api, "servicemonitors.monitoring.coreos.com")
    # the Gateway API path (spec.routing.gateway.inferencePool) needs both CRDs in the cluster
    ctl_config.gateway_api_crds = all(_crd_exists(api, crd) for crd in GATEWAY_API_CRDS)
    # replicas spanning nodes run as LeaderWorkerSet groups: planned only when the CRD is installed
    ctl_config.lws_crd = _crd_exists(api, LWS_CRD)
    controller = Controller(Kube(api), catalog, ctl_config)
    prom_url = args.prometheus_url or cfg.prometheus.url or None
    fetch = None
    if prom_url:
        from ..autoscale.prometheus import PrometheusSource

        connection = prometheus_connection(cfg, prom_url)
        fetch = PrometheusSource(connection).fetch
        logging.getLogger("qwen_operator").info("autoscaling reads Prometheus at %s", connection.describe())
        prom_url = connection.display_url  # the autoscaler keeps it for messages: no credentials
    controller.autoscaler = Autoscaler(controller.kube, catalog, fetch, controller.observed_or_none, prom_url)
    controller.versions = VersionWatcher(
        controller.kube,
        controller.observed_or_none,
        interval=float(cfg.model_sync.interval_seconds),
        registry_factory=registry_factory(cfg),
        gpus=catalog.gpus,
        dial=dial_mode(),
    )
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = False  # Events are posted deliberately, never as log spam
        settings.peering.standalone = True  # one writer is ensured by the Lease (--leader-elect), not peering
        # a fixed set of resources and namespaces: no list/watch of CRDs and Namespaces needed
        # (least privilege; the CRD must exist when the operator starts, as the chart ensures)
        settings.scanning.disabled = True
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330

    in_cluster = (
        bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and not args.kubeconfig and not os.environ.get("KUBECONFIG")
    )

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> Any:
        # the same credentials the client library loaded, re-read on every (re-)login so that
        # rotated in-cluster tokens and kubeconfig exec plugins keep working
        cfg = client.Configuration()
        if in_cluster:
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        else:
            kc = str(args.kubeconfig) if args.kubeconfig else None
            config.load_kube_config(config_file=kc, client_configuration=cfg)  # type: ignore[no-untyped-call]
        return _connection_info(kopf, cfg)

    @kopf.on.cleanup(registry=registry)
    async def stop_loops(**_: Any) -> None:
        # kopf waits 5 s for tasks it did not start before cancelling them; the per-resource
        # loops never end by themselves, so stopping them here lets a stopping leader release
        # its Lease (and its successor start) at once on SIGTERM
        for owner in (controller, controller.autoscaler, controller.versions):
            for task in list(getattr(owner, "tasks", {}).values()):
                task.cancel()

    register(registry, controller)
    return registry, controller


def dial_mode() -> str:
    """How the canary smoke test reaches a pod: ``$QWEN_ROUTER_DIAL``, the router's switch (``pod-ip``,
    the default, or the sandbox's ``annotation``), so both dial a pod the same way."""
    dial = os.environ.get(DIAL_ENV, "") or "pod-ip"
    if dial not in DIAL_MODES:
        raise UserError(f"{DIAL_ENV}: {dial!r} is not valid; valid: {', '.join(DIAL_MODES)}")
    return dial


def prometheus_connection(cfg: OperatorConfig, url: str | None = None) -> PrometheusConnection:
    """The autoscaler's Prometheus connection from ``prometheus.*`` (``url``: the --prometheus-url flag, which
    wins over ``prometheus.url``); inconsistent settings are a one-line error naming the keys, never a value."""
    from ..autoscale.prometheus import Connection, SettingsError

    p = cfg.prometheus
    connection = Connection(
        url=url or p.url,
        ca_file=p.tls.ca_file or None,
        cert_file=p.tls.cert_file or None,
        key_file=p.tls.key_file or None,
        insecure_skip_verify=p.tls.insecure_skip_verify,
        bearer_token_file=p.bearer_token_file or None,
        username=p.basic_auth.username or None,
        password_file=p.basic_auth.password_file or None,
        headers=tuple(sorted(p.headers.items())),
    )
    try:
        connection.auth_kind()
    except SettingsError as exc:
        raise UserError(str(exc)) from None
    return connection


def registry_factory(cfg: OperatorConfig) -> Callable[[str], Registry]:
    """The version watcher's S3 clients: ``registry.endpointURL`` / ``registry.region`` over the operator's
    ambient AWS environment (credentials are always the operator's own AWS chain)."""
    from .versions import make_registry

    return functools.partial(
        make_registry, endpoint_url=cfg.registry.endpoint_url or None, region=cfg.registry.region or None
    )


def _connection_info(kopf: Any, cfg: Any) -> Any:
    # kubernetes>=31 keeps the token under "BearerToken" (older: "authorization"), "Bearer " included
    keys = cfg.api_key or {}
    auth = keys.get("BearerToken") or keys.get("authorization") or ""
    scheme, _, token = auth.partition(" ") if " " in auth else ("Bearer" if auth else "", "", auth)
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
        scheme=scheme or None,
        token=token or None,
    )


#: CRDs of the Gateway API path; the operator may read these two CRDs by name (see the chart's RBAC).
GATEWAY_API_CRDS = ("inferencepools.inference.networking.k8s.io", "httproutes.gateway.networking.k8s.io")


def _crd_exists(api: Any, name: str) -> bool:
    from kubernetes import client

    try:
        client.ApiextensionsV1Api(api).read_custom_resource_definition(name)
        return True
    except client.ApiException:
        return False

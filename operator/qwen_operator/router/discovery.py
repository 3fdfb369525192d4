"""Endpoint discovery for the router: watch one QwenDeployment's server pods and its status.

Why it exists: the router must know, at every request, which server pods are Ready, which
pool (GPU type), model version and canary flag each has, and how much one replica of each
pool sustains (the planner's requests/s within the SLO, published in ``status.pools``).
Asking the API server per request would cost a round trip on the hot path and hammer the
API server at LLM request rates, so this module keeps a local copy the Kubernetes way:
list, then watch from the list's ``resourceVersion``; re-list on ``410 Gone``; back off on
errors; never poll.

The client is a small one on aiohttp (the router is an asyncio process; the
``kubernetes`` package is synchronous and would need a thread per watch). Credentials:
the in-cluster service account (token re-read at every (re)connect, as bound tokens
rotate), else a kubeconfig loaded with ``kubernetes.config`` (host, CA, client
certificates or token), so every kubeconfig ``kubectl`` accepts works here too.

Canary pods are routed only once their version passed the operator's smoke test: a pod
labelled ``serving.qwenops.io/canary: "true"`` becomes a target only while the
QwenDeployment's ``status.model.canary`` has ``phase: Passed`` for the version in the pod's
``serving.qwenops.io/model-version`` annotation. Until then (``Testing``, ``Failed``, no
status yet, or a router that has not listed the QwenDeployment since it started) the pod is
not routable at all, neither by the canary rule nor by the normal pick. The operator's
smoke test calls canary pods directly (``controller/versions.py``), never through the
router, so it needs no route. The gate is level-based on state the operator already
publishes: nothing is written to pods, and a restarted router or operator reads the same
truth.

The one sandbox seam: with ``QWEN_ROUTER_DIAL=annotation`` the router dials the URL in the
pod annotation ``sandbox.qwenops.io/dial`` instead of ``http://<podIP>:<port named http>``
(the sandbox has no pod network; the simulated fleet writes that annotation once a pod's
simulated server listens). Everything else is identical.

:class:`EndpointSource` is the seam the proxy is fed through: :class:`PodWatcher` in a
cluster, :class:`StaticEndpoints` in tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import ssl
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp

from ..api import GROUP, PLURAL, VERSION
from ..catalog.gpus import resolve_gpu_name
from ..render.names import (
    ANNOTATION_MODEL_VERSION,
    LABEL_MODEL_VERSION,
    LABEL_POOL,
    pool_slug,
    serving_selector_string,
)
from .picking import PoolCapacity

log = logging.getLogger("qwen_operator.router.discovery")

#: Environment variable choosing how a pod is dialled: ``pod-ip`` (default) or ``annotation``.
DIAL_ENV = "QWEN_ROUTER_DIAL"
DIAL_MODES = ("pod-ip", "annotation")
#: The sandbox seam: the URL a simulated pod's server listens on (no pod network there).
DIAL_ANNOTATION = "sandbox.qwenops.io/dial"
#: Canary pods carry this label (``controller.rollout`` imports it from here; the router must not
#: import the controller, which pulls kopf into the data plane).
LABEL_CANARY = f"{GROUP}/canary"
#: ``status.model.canary.phase`` once the operator's smoke test passed the canary's version
#: (``controller.rollout.PASSED``; the same reason for not importing it).
CANARY_PASSED = "Passed"
#: The server container's port name (render/workload.py names TGI's port ``http``).
PORT_NAME = "http"

_SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_BACKOFF_MIN_S = 0.5
_BACKOFF_MAX_S = 30.0


@dataclass(frozen=True)
class Target:
    """A Ready server pod as the router dials it."""

    name: str  # pod name
    url: str  # base URL, e.g. http://10.0.3.7:80
    pool: str  # GPU type (catalog name when known, e.g. "L40S")
    version: str = ""  # model version label
    canary: bool = False


class EndpointSink(Protocol):
    """What a source feeds: the router's endpoint table."""

    def update_targets(self, targets: Mapping[str, Target]) -> None:
        """The complete set of Ready targets now (the sink diffs it against what it has)."""

    def update_pools(self, pools: Mapping[str, PoolCapacity], ttft_slo_seconds: float | None) -> None:
        """Per-pool capacity and the TTFT SLO, from the QwenDeployment (empty when unknown)."""


class EndpointSource(Protocol):
    """Something that keeps a sink up to date until cancelled."""

    async def run(self, sink: EndpointSink) -> None: ...


@dataclass
class StaticEndpoints:
    """A fixed set of targets (tests, benchmarks): fed once, then idle."""

    targets: list[Target]
    pools: dict[str, PoolCapacity] = field(default_factory=dict)
    ttft_slo_seconds: float | None = None

    async def run(self, sink: EndpointSink) -> None:
        sink.update_pools(self.pools, self.ttft_slo_seconds)
        sink.update_targets({t.name: t for t in self.targets})


# --- pure: pods and the QwenDeployment -> targets and capacities ------------------------------


def pod_ready(pod: Mapping[str, Any]) -> bool:
    """Condition Ready is True and the pod is not being deleted (a terminating pod drains)."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _http_port(pod: Mapping[str, Any]) -> int | None:
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == PORT_NAME and port.get("containerPort"):
                return int(port["containerPort"])
    return None


def pod_url(pod: Mapping[str, Any], dial: str) -> str | None:
    """The base URL to dial ``pod`` at, None when it has none yet (no IP, no annotation)."""
    if dial == "annotation":
        url = ((pod.get("metadata") or {}).get("annotations") or {}).get(DIAL_ANNOTATION)
        return str(url).rstrip("/") if url else None
    ip = (pod.get("status") or {}).get("podIP")
    port = _http_port(pod)
    if not ip or port is None:
        return None
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}"


def resolve_pool(label: str, known: Mapping[str, str]) -> str:
    """The pod's pool label (a slug, ``a100-80gb``) -> the GPU type (``A100-80GB``).

    ``known`` maps slugs to the GPU types of ``status.pools``; a catalog name is the next
    guess (a custom GPU type may not be in the catalog); else the label itself.
    """
    if label in known:
        return known[label]
    try:
        return resolve_gpu_name(label)
    except KeyError:
        return label


def is_canary_pod(pod: Mapping[str, Any]) -> bool:
    return ((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_CANARY) == "true"


def passed_canary_versions(obj: Mapping[str, Any] | None) -> frozenset[str]:
    """Model versions whose canary passed the smoke test: ``status.model.canary.version`` when
    its ``phase`` is ``Passed``; empty otherwise (no QwenDeployment seen, no status, Testing, Failed)."""
    canary = ((((obj or {}).get("status") or {}).get("model") or {}).get("canary")) or {}
    version = canary.get("version")
    return frozenset({str(version)}) if canary.get("phase") == CANARY_PASSED and version else frozenset()


def canary_routable(pod: Mapping[str, Any], passed: Collection[str]) -> bool:
    """A canary pod may take traffic only when its version (the pod's model-version annotation,
    the full digest) passed the smoke test; a pod that is no canary always may."""
    if not is_canary_pod(pod):
        return True
    version = ((pod.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_MODEL_VERSION)
    return bool(version) and version in passed


def pod_target(
    pod: Mapping[str, Any], dial: str, known_pools: Mapping[str, str], passed_canaries: Collection[str] = ()
) -> Target | None:
    """The target for a Ready, dialable pod, None otherwise; a canary pod only when its version
    is in ``passed_canaries`` (:func:`passed_canary_versions`: none by default)."""
    if not pod_ready(pod) or not canary_routable(pod, passed_canaries):
        return None
    url = pod_url(pod, dial)
    if url is None:
        return None
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    return Target(
        name=str(meta.get("name", "")),
        url=url,
        pool=resolve_pool(str(labels.get(LABEL_POOL, "")), known_pools),
        version=str(labels.get(LABEL_MODEL_VERSION, "")),
        canary=is_canary_pod(pod),
    )


def _positive(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if number > 0 and number != float("inf") else 0.0


def deployment_pools(obj: Mapping[str, Any] | None) -> tuple[dict[str, PoolCapacity], float | None]:
    """``status.pools[]`` capacity fields and the TTFT SLO of a QwenDeployment.

    A pool whose capacity the operator has not published (an older operator, or planning
    not done yet) is left out: the picker then treats it as unknown rather than as zero.
    """
    if not obj:
        return {}, None
    pools: dict[str, PoolCapacity] = {}
    for pool in (obj.get("status") or {}).get("pools") or []:
        gpu = pool.get("gpuType")
        weight = _positive(pool.get("capacityRequestsPerSecond"))
        if not gpu or weight <= 0:
            continue
        pools[str(gpu)] = PoolCapacity(
            weight=weight,
            prefill_tokens_per_second=_positive(pool.get("prefillTokensPerSecond")),
            max_concurrency=int(_positive(pool.get("maxConcurrentRequests"))),
        )
    slo = _positive(((obj.get("spec") or {}).get("scaling") or {}).get("p95LatencySeconds")) or None
    return pools, slo


def known_pool_slugs(obj: Mapping[str, Any] | None) -> dict[str, str]:
    """Pool label slug -> GPU type for every pool in ``status.pools``."""
    pools = ((obj or {}).get("status") or {}).get("pools") or []
    return {pool_slug(str(p["gpuType"])): str(p["gpuType"]) for p in pools if p.get("gpuType")}


# --- the API server client ---------------------------------------------------------------------


class ApiError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class _GoneError(Exception):
    """The watch's resourceVersion is too old: list again."""


@dataclass
class KubeCredentials:
    """How to reach the API server: base URL, TLS context and a bearer token source."""

    server: str
    ssl_context: ssl.SSLContext | bool
    token: Callable[[], str | None] = lambda: None

    def headers(self) -> dict[str, str]:
        token = self.token()
        out = {"Accept": "application/json"}
        if token:
            out["Authorization"] = token if token.lower().startswith("bearer ") else f"Bearer {token}"
        return out


def in_cluster_available() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and (_SA_DIR / "token").exists()


def load_credentials(kubeconfig: str | None = None) -> KubeCredentials:
    """In-cluster service account unless a kubeconfig is given; else ``$KUBECONFIG`` / ``~/.kube/config``.

    Raises ``RuntimeError`` with what was tried when neither is usable.
    """
    if kubeconfig is None and in_cluster_available():
        host = os.environ["KUBERNETES_SERVICE_HOST"]
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        host = f"[{host}]" if ":" in host else host
        sa_ctx = ssl.create_default_context(cafile=str(_SA_DIR / "ca.crt"))
        token_path = _SA_DIR / "token"
        return KubeCredentials(f"https://{host}:{port}", sa_ctx, lambda: token_path.read_text().strip())

    from kubernetes import client, config  # the loader only: it understands every kubeconfig form

    cfg = client.Configuration()
    try:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=cfg, persist_config=False
        )
    except Exception as exc:  # the loader raises ConfigException, OSError, yaml errors...
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise RuntimeError(f"no in-cluster service account and no usable kubeconfig at {where}: {exc}") from None
    ctx: ssl.SSLContext | bool
    if cfg.verify_ssl:
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert) if cfg.ssl_ca_cert else ssl.create_default_context()
    else:
        ctx = False
    if cfg.cert_file and cfg.key_file and isinstance(ctx, ssl.SSLContext):
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    elif cfg.cert_file and cfg.key_file:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file)

    def token() -> str | None:
        if cfg.refresh_api_key_hook is not None:  # exec plugins / expiring tokens
            cfg.refresh_api_key_hook(cfg)
        # the kubernetes client (v37 here) keeps a kubeconfig token as "BearerToken"; older ones as "authorization"
        value: str | None = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
        return value

    return KubeCredentials(str(cfg.host).rstrip("/"), ctx, token)


class KubeWatchClient:
    """List and watch one collection of the API server, on aiohttp."""

    def __init__(self, creds: KubeCredentials, session: aiohttp.ClientSession) -> None:
        self.creds = creds
        self.session = session

    async def list(self, path: str, params: Mapping[str, str]) -> tuple[list[dict[str, Any]], str]:
        async with self.session.get(
            self.creds.server + path,
            params=dict(params),
            headers=self.creds.headers(),
            ssl=self.creds.ssl_context,
            timeout=aiohttp.ClientTimeout(total=60),
        ) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise ApiError(resp.status, _message(text))
            doc = json.loads(text)
        return list(doc.get("items") or []), str((doc.get("metadata") or {}).get("resourceVersion", ""))

    async def watch(self, path: str, params: Mapping[str, str], resource_version: str) -> AsyncIterator[dict[str, Any]]:
        """Watch events after ``resource_version`` until the server ends the watch (then return)."""
        timeout_s = random.randint(240, 300)  # spread re-watches of many routers, like client-go
        query = {
            **params,
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_s),
        }
        async with self.session.get(
            self.creds.server + path,
            params=query,
            headers=self.creds.headers(),
            ssl=self.creds.ssl_context,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout_s + 30),
        ) as resp:
            if resp.status == 410:
                raise _GoneError()
            if resp.status != 200:
                raise ApiError(resp.status, _message(await resp.text()))
            buffer = b""
            async for chunk in resp.content.iter_any():  # one JSON event per line, lines may be long
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)


def _message(text: str) -> str:
    try:
        return str(json.loads(text).get("message", text))[:500]
    except (ValueError, AttributeError):
        return text[:500]


Handler = Callable[[str, dict[str, Any]], None]


async def reflect(
    client: KubeWatchClient,
    path: str,
    params: Mapping[str, str],
    on_list: Callable[[list[dict[str, Any]]], None],
    on_event: Handler,
    what: str,
) -> None:
    """List + watch ``path`` forever: ``on_list`` after every (re)list, ``on_event`` per change."""
    backoff = _BACKOFF_MIN_S
    while True:
        try:
            items, rv = await client.list(path, params)
            on_list(items)
            backoff = _BACKOFF_MIN_S
            while True:  # re-watch from the last seen version when the server ends a watch
                async for event in client.watch(path, params, rv):
                    kind, obj = str(event.get("type", "")), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            raise _GoneError()
                        raise ApiError(int(obj.get("code") or 500), str(obj.get("message", "watch error")))
                    rv = str((obj.get("metadata") or {}).get("resourceVersion", rv))
                    if kind != "BOOKMARK":
                        on_event(kind, obj)
        except _GoneError:
            log.info("%s: watch expired (410 Gone), listing again", what)
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, ApiError, TimeoutError, OSError, ValueError) as exc:
            log.warning("%s: %s: %s; retrying in %.1f s", what, type(exc).__name__, exc, backoff)
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, _BACKOFF_MAX_S)


class PodWatcher:
    """Watches a QwenDeployment's server pods and the QwenDeployment itself; feeds a sink."""

    def __init__(self, creds: KubeCredentials, namespace: str, deployment: str, dial: str = "pod-ip") -> None:
        if dial not in DIAL_MODES:
            raise ValueError(f"{DIAL_ENV}: {dial!r} is not valid; valid: {', '.join(DIAL_MODES)}")
        self.creds = creds
        self.namespace = namespace
        self.deployment = deployment
        self.dial = dial
        self._pods: dict[str, dict[str, Any]] = {}
        self._qwd: dict[str, Any] | None = None
        self._sink: EndpointSink | None = None
        self._held_back: frozenset[str] = frozenset()  # Ready canary pods not routed (logged on change)

    # state -> sink
    def _emit_targets(self) -> None:
        assert self._sink is not None
        known = known_pool_slugs(self._qwd)
        passed = passed_canary_versions(self._qwd)
        targets = {}
        held_back = set()
        for pod in self._pods.values():
            t = pod_target(pod, self.dial, known, passed)
            if t is not None:
                targets[t.name] = t
            elif is_canary_pod(pod) and pod_ready(pod):
                held_back.add(str(pod["metadata"]["name"]))
        if held_back != self._held_back:
            if held_back:
                log.info(
                    "canary pod(s) %s Ready but not routed: their version has not passed the smoke test "
                    "(status.model.canary.phase is not Passed for it)",
                    ", ".join(sorted(held_back)),
                )
            routed = sorted(n for n in self._held_back - held_back if n in targets)
            if routed:
                log.info("canary pod(s) %s passed the smoke test: routed by the canary rule", ", ".join(routed))
            self._held_back = frozenset(held_back)
        self._sink.update_targets(targets)

    def _emit_pools(self) -> None:
        assert self._sink is not None
        pools, slo = deployment_pools(self._qwd)
        self._sink.update_pools(pools, slo)

    # pods
    def _pods_listed(self, items: list[dict[str, Any]]) -> None:
        self._pods = {p["metadata"]["name"]: p for p in items}
        self._emit_targets()

    def _pod_event(self, kind: str, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        if kind == "DELETED":
            self._pods.pop(name, None)
        else:
            self._pods[name] = pod
        self._emit_targets()

    # the QwenDeployment
    def _qwd_listed(self, items: list[dict[str, Any]]) -> None:
        self._qwd = items[0] if items else None
        self._emit_pools()
        self._emit_targets()  # pool names may resolve differently now

    def _qwd_event(self, kind: str, obj: dict[str, Any]) -> None:
        self._qwd = None if kind == "DELETED" else obj
        self._emit_pools()
        self._emit_targets()

    async def run(self, sink: EndpointSink) -> None:
        self._sink = sink
        ns = quote(self.namespace, safe="")
        selector = serving_selector_string(self.deployment)  # pool pods and canary pods
        async with aiohttp.ClientSession() as session:
            client = KubeWatchClient(self.creds, session)
            pods = reflect(
                client,
                f"/api/v1/namespaces/{ns}/pods",
                {"labelSelector": selector},
                self._pods_listed,
                self._pod_event,
                "pods",
            )
            qwd = reflect(
                client,
                f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}",
                {"fieldSelector": f"metadata.name={self.deployment}"},
                self._qwd_listed,
                self._qwd_event,
                "qwendeployment",
            )
            tasks = [asyncio.create_task(pods), asyncio.create_task(qwd)]
            try:
                await asyncio.gather(*tasks)
            finally:
                for t in tasks:
                    t.cancel()
                for t in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await t

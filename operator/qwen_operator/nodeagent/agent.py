"""The node agent's I/O loop: observe, plan (:mod:`.plan`), pull one version, evict, publish.

One process per GPU node (the chart's DaemonSet; it requests no GPU). Level-based:

1. Observe: this Node (its labels), every QwenDeployment (spec + ``status.model``), the pods
   bound to this node (field selector ``spec.nodeName``), and the versions each cache
   directory holds (``modelsync.evict.held_versions`` of ``<cache root>/<namespace>``).
   Watches on QwenDeployments and this node's pods only wake the loop early; a full
   re-list every ``--interval`` seconds is the truth.
2. Plan (pure): what to pull, what to protect, what to report.
3. Pull at most one version, then observe again (a roll's target comes before the rest,
   and status may have moved meanwhile). The pull is the init container's own command,
   ``qwenctl model pull --registry R --version <digest> --cache <dir> --name <ns>.<name>``
   with ``--limit-rate`` (``--bandwidth``), run as a child process whose environment is the
   one ``render.workload`` gives the model-pull init container: the keys of the resource's
   credentials Secret (``spec.model.credentialsSecret``, else the operator config's
   ``registry.credentialsSecret``; read through the API) plus ``registry.endpointURL`` /
   ``registry.region`` when the resource names no Secret of its own. So one pull at a time
   per node, never more than the bandwidth cap, and every byte digest-verified by the pull.
   The pull keeps every version (``--keep``); eviction below decides what goes.
4. Evict (``modelsync.evict.evict``) in each cache directory with the plan's protected
   versions, the ``--keep-others`` and ``--max-bytes`` policy (the bound is per directory).
   Skipped while a listing failed: nothing is removed on partial knowledge.
5. Publish what the node holds as the Node annotation ``serving.qwenops.io/model-cache``,
   patched only when it changed.

Cache roots: ``--cache-root DIR`` is where a node cache path is mounted. The first one
without ``=`` serves the operator config's ``nodeCache.path`` (``--config``, default
/var/lib/qwen-operator/models), further ones their own path (mounted at the same path, as
the chart does for ``nodeCache.allowedPaths``); ``--cache-root NODE_PATH=DIR`` maps a node
path to a directory explicitly.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from ..api import GROUP, PLURAL, VERSION
from ..catalog import GPUType
from ..render.workload import OperatorDefaults, registry_env
from .plan import CACHE_ANNOTATION, NodePlan, Pull, Resource, parse_resource, plan, report_json

log = logging.getLogger("qwen_operator.nodeagent")
#: Environment variable names Kubernetes accepts from a Secret's keys in ``envFrom``.
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
#: Versions a pull keeps itself (``--keep``): eviction is the agent's job, with its protection.
PULL_KEEP = 1000
BACKOFF_MIN, BACKOFF_MAX = 15.0, 600.0
#: Seconds to the next pass when eviction found a pod's pull holding the store lock (not --interval).
BUSY_RETRY = 5.0


def _normal(path: str) -> str:
    return path.rstrip("/") or "/"


def parse_cache_roots(values: Sequence[str], node_cache_path: str) -> dict[str, Path]:
    """``--cache-root`` values -> node cache path -> local directory (see the module docstring)."""
    out: dict[str, Path] = {}
    default_taken = False
    for value in values:
        node_path, sep, local = value.partition("=")
        if sep:
            if not node_path.startswith("/") or not local:
                raise ValueError(f"--cache-root {value!r}: use DIR or NODE_PATH=DIR (NODE_PATH absolute)")
            out[_normal(node_path)] = Path(local)
        elif not default_taken:
            out[_normal(node_cache_path)] = Path(value)
            default_taken = True
        else:
            out[_normal(value)] = Path(value)
    return out


@dataclass
class AgentConfig:
    node: str
    cache_roots: dict[str, Path]  # node cache path -> local directory
    defaults: OperatorDefaults
    gpus: Mapping[str, GPUType]
    keep_others: int = 1
    max_bytes: int | None = None
    bandwidth: float | None = None  # bytes/s
    interval: float = 30.0
    workers: int = 8
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    once: bool = False  # one pass until nothing is left to pull (tests, debugging)


@dataclass
class Observation:
    labels: dict[str, str]
    annotation: str | None
    resources: list[Resource]
    pods: list[dict[str, Any]]
    complete: bool  # every listing succeeded (eviction needs the whole picture)


@dataclass
class NodeAgent:
    config: AgentConfig
    api: Any  # kubernetes.client.ApiClient
    pull_command: Sequence[str] = (sys.executable, "-m", "qwen_operator")
    wake: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    failures: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)  # -> (retry at, backoff)
    published: str | None = None
    pulls_done: int = 0
    evict_busy: bool = False  # the last eviction met a store lock held by a pull (retry in BUSY_RETRY)

    def __post_init__(self) -> None:
        from kubernetes import client

        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    # -- observe --------------------------------------------------------------------------
    def _list_qwds(self) -> list[dict[str, Any]]:
        if not self.config.namespaces:
            out = cast(dict[str, Any], self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL))
            return list(out.get("items") or [])
        items: list[dict[str, Any]] = []
        for ns in self.config.namespaces:
            page = cast(dict[str, Any], self.custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL))
            items += page.get("items") or []
        return items

    def observe(self) -> Observation:
        from kubernetes.client.exceptions import ApiException

        node = self.api.sanitize_for_serialization(self.core.read_node(self.config.node))
        meta = node.get("metadata") or {}
        complete = True
        try:
            resources = [r for r in (parse_resource(o) for o in self._list_qwds()) if r is not None]
        except ApiException as exc:
            log.warning("cannot list QwenDeployments: %s %s", exc.status, exc.reason)
            resources, complete = [], False
        try:
            raw = self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={self.config.node}")
            pods = [self.api.sanitize_for_serialization(p) for p in raw.items]
        except ApiException as exc:
            log.warning("cannot list the pods on %s: %s %s", self.config.node, exc.status, exc.reason)
            pods, complete = [], False
        return Observation(
            labels=dict(meta.get("labels") or {}),
            annotation=(meta.get("annotations") or {}).get(CACHE_ANNOTATION),
            resources=resources,
            pods=pods,
            complete=complete,
        )

    def held(self) -> dict[str, dict[str, list[str]]]:
        """Node cache directory (``<path>/<namespace>``) -> model -> complete version ids."""
        from ..modelsync.evict import held_versions

        out: dict[str, dict[str, list[str]]] = {}
        for node_path, local in self.config.cache_roots.items():
            if not local.is_dir():
                continue
            for sub in sorted(p for p in local.iterdir() if p.is_dir() and not p.name.startswith(".")):
                versions = held_versions(sub)
                if versions:
                    out[f"{node_path.rstrip('/')}/{sub.name}"] = versions
        return out

    def local_dir(self, node_dir: str) -> Path | None:
        root, _, namespace = node_dir.rpartition("/")
        local = self.config.cache_roots.get(_normal(root))
        return None if local is None else local / namespace

    # -- act ------------------------------------------------------------------------------
    def plan(self, obs: Observation) -> NodePlan:
        return plan(
            obs.labels,
            obs.resources,
            obs.pods,
            self.held(),
            self.config.gpus,
            self.config.defaults,
            cache_roots=self.config.cache_roots,
        )

    def pull_env(self, pull: Pull, res: Resource) -> dict[str, str]:
        """The init container's environment for this pull: the Secret's keys, then the registry defaults."""
        from kubernetes.client.exceptions import ApiException

        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OCI_"))}
        if pull.credentials_secret:
            import base64

            try:
                secret = self.core.read_namespaced_secret(pull.credentials_secret, pull.namespace)
            except ApiException as exc:
                raise RuntimeError(
                    f"credentials Secret {pull.namespace}/{pull.credentials_secret}: {exc.status} {exc.reason}"
                ) from None
            for key, value in (secret.data or {}).items():
                if _ENV_NAME.match(key):
                    env[key] = base64.b64decode(value).decode(errors="replace")
        else:  # no Secret: the agent's own registry environment (e.g. a workload identity)
            env.update({k: v for k, v in os.environ.items() if k.startswith(("AWS_", "OCI_"))})
        for item in registry_env(res.spec, res.context(self.config.defaults)):
            env[item["name"]] = item["value"]
        return env

    def run_pull(self, pull: Pull, res: Resource) -> bool:
        local = self.local_dir(pull.cache_dir)
        if local is None:
            return False
        key = (pull.model, pull.digest)
        cmd = [
            *self.pull_command,
            "model",
            "pull",
            "--registry",
            pull.registry,
            "--version",
            pull.digest,
            "--cache",
            str(local),
            "--name",
            pull.model,
            "--keep",
            str(PULL_KEEP),
            "--workers",
            str(self.config.workers),
        ]
        if self.config.bandwidth:
            cmd += ["--limit-rate", str(int(self.config.bandwidth))]
        log.info("pre-staging %s %s (%s) into %s", pull.model, pull.digest[:19], pull.why, local)
        started = time.monotonic()
        try:
            env = self.pull_env(pull, res)
            local.mkdir(parents=True, exist_ok=True)
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=6 * 3600)
            ok, detail = proc.returncode == 0, (proc.stderr or proc.stdout).strip().splitlines()
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
            ok, detail = False, [str(exc)]
        if ok:
            self.failures.pop(key, None)
            self.pulls_done += 1
            log.info("staged %s %s in %.1fs: %s", pull.model, pull.digest[:19], time.monotonic() - started, detail[-1:])
            return True
        _, backoff = self.failures.get(key, (0.0, BACKOFF_MIN / 2))
        backoff = min(BACKOFF_MAX, backoff * 2)
        self.failures[key] = (time.monotonic() + backoff, backoff)
        log.warning("pre-staging %s %s failed (retry in %.0fs): %s", pull.model, pull.digest[:19], backoff, detail[-1:])
        return False

    def evict(self, p: NodePlan) -> None:
        from ..modelsync.evict import CachePolicy, evict

        policy = CachePolicy(keep_others=self.config.keep_others, max_bytes=self.config.max_bytes)
        busy: list[str] = []
        for node_dir in sorted(self.held()):
            local = self.local_dir(node_dir)
            if local is None:
                continue
            protect = {m: set(ids) for m, ids in p.protect.get(node_dir, {}).items()}
            report = evict(local, protect, policy)
            if report.busy:
                busy.append(node_dir)
            for model, vid in report.removed:
                log.info("evicted %s %s from %s", model, vid, node_dir)
            if report.over_budget:
                log.warning(
                    "%s holds %d bytes, over --max-bytes %s: everything left is protected or current",
                    node_dir,
                    report.bytes_after,
                    self.config.max_bytes,
                )
        if busy:
            log.info("a pull holds the store lock of %s: eviction retried in %.0fs", ", ".join(busy), BUSY_RETRY)
        self.evict_busy = bool(busy)

    def publish(self, obs: Observation) -> None:
        report = report_json(self.plan_report())
        if report == obs.annotation:  # level-based and quiet: a patch only when what the node holds changed
            self.published = report
            return
        self.core.patch_node(self.config.node, {"metadata": {"annotations": {CACHE_ANNOTATION: report}}})
        self.published = report
        log.info("node %s holds %s", self.config.node, report)

    def plan_report(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for models in self.held().values():
            for model, ids in models.items():
                bucket = out.setdefault(model, [])
                bucket.extend(i for i in ids if i not in bucket)
        return out

    def step(self) -> bool:
        """One pass; True when a pull ran (observe again at once)."""
        obs = self.observe()
        p = self.plan(obs)
        by_model = {r.model: r for r in obs.resources}
        now = time.monotonic()
        todo = [x for x in p.pulls if self.failures.get((x.model, x.digest), (0.0, 0.0))[0] <= now]
        pulled = False
        if todo:
            pulled = self.run_pull(todo[0], by_model[todo[0].model])
        if obs.complete:
            self.evict(self.plan(obs) if pulled else p)
        self.publish(obs)
        return pulled

    def pending(self) -> bool:
        """Whether a pull is due now (``--once`` ends when none is)."""
        obs = self.observe()
        now = time.monotonic()
        return any(self.failures.get((x.model, x.digest), (0.0, 0.0))[0] <= now for x in self.plan(obs).pulls)

    # -- loop -----------------------------------------------------------------------------
    def watch(self) -> list[threading.Thread]:
        """Threads waking the loop on QwenDeployment and this node's pod events (the re-list is the truth)."""
        from kubernetes import watch

        def stream(lister: Callable[..., Any], **kwargs: Any) -> None:
            while not self.stop.is_set():
                w = watch.Watch()  # type: ignore[no-untyped-call]
                try:
                    for _ in w.stream(lister, timeout_seconds=300, **kwargs):  # type: ignore[no-untyped-call]
                        self.wake.set()
                        if self.stop.is_set():
                            break
                except Exception as exc:  # noqa: BLE001 - a broken watch is re-opened; the re-list covers the gap
                    log.debug("watch ended: %s", exc)
                    self.stop.wait(2.0)
                finally:
                    w.stop()  # type: ignore[no-untyped-call]

        targets: list[tuple[Callable[..., Any], dict[str, Any]]] = [
            (self.core.list_pod_for_all_namespaces, {"field_selector": f"spec.nodeName={self.config.node}"})
        ]
        if self.config.namespaces:
            for ns in self.config.namespaces:
                targets.append(
                    (
                        self.custom.list_namespaced_custom_object,
                        {"group": GROUP, "version": VERSION, "namespace": ns, "plural": PLURAL},
                    )
                )
        else:
            targets.append(
                (self.custom.list_cluster_custom_object, {"group": GROUP, "version": VERSION, "plural": PLURAL})
            )
        threads = [threading.Thread(target=stream, args=(f,), kwargs=kw, daemon=True) for f, kw in targets]
        for t in threads:
            t.start()
        return threads

    def run(self) -> int:
        log.info(
            "node agent on %s: cache roots %s, keep-others %d, max-bytes %s, bandwidth %s",
            self.config.node,
            ", ".join(f"{k} -> {v}" for k, v in self.config.cache_roots.items()),
            self.config.keep_others,
            self.config.max_bytes,
            f"{int(self.config.bandwidth)} B/s" if self.config.bandwidth else "unlimited",
        )
        if not self.config.once:
            self.watch()
        while not self.stop.is_set():
            self.wake.clear()
            try:
                pulled = self.step()
            except Exception as exc:  # noqa: BLE001 - one failed pass is retried, never fatal
                log.warning("node agent pass failed: %s: %s", type(exc).__name__, exc)
                pulled = False
            if self.config.once and not pulled and not self.pending():
                return 0
            if pulled:
                continue
            # a pod's pull held a store lock: evict again soon, not after a whole --interval
            self.wake.wait(min(BUSY_RETRY, self.config.interval) if self.evict_busy else self.config.interval)
            self.stop.wait(0.2)  # coalesce a burst of watch events into one pass
        return 0

"""The sandbox's router pods as processes: ``qwenctl router`` exactly as the Deployment starts it.

Why it exists: the demo and the e2e must send their traffic the way a user's does, through
the router pods the operator renders (``<name>-router``), not through a stand-in balancer.
kwok runs no containers, so this bridge plays the kubelet for router pods: for each Running
router pod of one QwenDeployment (label ``app.kubernetes.io/component=router``) it starts the
pod's container ``command`` + ``args`` unchanged, as a local process, and stops it (SIGTERM,
as the kubelet does) when the pod goes away.

What the process gets, and the two seams:

* **Credentials of the router's own ServiceAccount.** A token for ``<name>-router`` is asked
  for with the TokenRequest API (what the kubelet mounts as the projected service-account
  token) and written, with the sandbox CA, to a kubeconfig passed as ``$KUBECONFIG`` (the
  router reads ``$KUBECONFIG`` when no in-cluster account exists). So the rendered Role is
  what the router really runs with: a missing verb fails here as it would in a cluster.
* ``QWEN_ROUTER_DIAL=annotation`` (**the one data-path stand-in**): the sandbox has no pod
  network, so the router dials the URL the simulated fleet writes into each server pod's
  ``sandbox.qwenops.io/dial`` annotation (``http://127.0.0.1:PORT``) instead of
  ``http://<podIP>:<port named http>``.
* ``QWEN_ROUTER_LISTEN=127.0.0.1:0``: every router pod runs on one loopback here, where two
  rendered ``--port 8080`` would collide; the process binds a free port and prints it on its
  ``listening on`` line, which this bridge reads. (A pod has its own network namespace.)

Which router takes a request: a Service spreads connections over the Ready endpoints; here
:meth:`RouterBridge.pick` round-robins over the router processes whose pod is Ready (kwok's
view) and whose ``/health`` answered 200 at the last probe (the rendered readiness probe,
every 2 s). Each process's ``/metrics`` is read before it stops, so the router's own
request counts survive it (:meth:`RouterBridge.requests_by_code`).

Prometheus scrapes each running router process as Kubernetes pod discovery would find the
pod: :meth:`RouterBridge.targets` gives one target per process with the labels of the
scrape-target contract (:data:`qwen_operator.router.metric_names.TARGET_LABELS`:
``namespace`` and ``pod`` = the router pod's real name), whether or not the pod is Ready (a
router at zero replicas that holds nothing is not Ready, and its ``qwen_router_held`` is the
autoscaler's only wake-up signal). ``on_change`` is called whenever that set changes (a
process started or stopped), so the owner can publish it merged with its own targets.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from ..render.names import router_name, router_selector
from ..router.discovery import DIAL_ENV
from ..router.metric_names import TARGET_LABELS
from ..sandbox.prometheus import Target

#: The rendered container's argv[0] (render/router.py ROUTER_COMMAND): the operator image's CLI.
CLI = "qwenctl"
LISTEN_ENV = "QWEN_ROUTER_LISTEN"
#: Seconds a token lasts; the kubelet's projected tokens default to an hour as well.
TOKEN_SECONDS = 3600
#: The rendered readiness probe's period.
PROBE_SECONDS = 2.0
_LISTENING = re.compile(r"listening on (http://\S+)")
_SAMPLE = re.compile(r"^qwen_router_requests_total\{([^}]*)\}\s+([0-9.eE+-]+)$", re.M)


def local_argv(container: Mapping[str, Any], python: str = sys.executable) -> list[str]:
    """The container's ``command`` + ``args``, with ``qwenctl`` resolved to this installation.

    Only argv[0] changes (the image's ``qwenctl`` is this package's console script, or
    ``python -m qwen_operator.cli`` when the script is not next to the interpreter); every
    argument is passed exactly as rendered.
    """
    argv = [str(a) for a in (container.get("command") or [])] + [str(a) for a in (container.get("args") or [])]
    if not argv:
        raise ValueError("the router container has no command")
    if argv[0] != CLI:
        raise ValueError(f"the router container runs {argv[0]!r}, not {CLI!r}: not a rendered router pod")
    script = Path(python).parent / CLI
    head = [str(script)] if script.exists() else [python, "-m", "qwen_operator.cli"]
    return head + argv[1:]


def service_account_kubeconfig(server: str, ca_file: str, namespace: str, account: str, token: str) -> dict[str, Any]:
    """A kubeconfig that authenticates as ``namespace/account`` with a bearer token."""
    user = f"system:serviceaccount:{namespace}:{account}"
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "sandbox", "cluster": {"server": server, "certificate-authority": ca_file}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "sandbox", "user": user, "namespace": namespace}}],
        "current-context": user,
    }


def requests_by_code(metrics_text: str) -> dict[str, int]:
    """``qwen_router_requests_total`` summed per ``code`` from a ``/metrics`` page."""
    out: dict[str, int] = {}
    for labels, value in _SAMPLE.findall(metrics_text):
        code = dict(re.findall(r'(\w+)="([^"]*)"', labels)).get("code", "")
        out[code] = out.get(code, 0) + int(float(value))
    return out


def pod_running(pod: Mapping[str, Any]) -> bool:
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    return status.get("phase") == "Running" and not meta.get("deletionTimestamp")


def pod_ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return pod_running(pod) and any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


@dataclass
class RouterProc:
    """One router pod's process."""

    pod: str
    uid: str
    proc: asyncio.subprocess.Process
    url: str
    log: Path
    pod_ready: bool = False
    healthy: bool = False  # /health answered 200 at the last probe
    by_code: dict[str, int] = field(default_factory=dict)  # the last /metrics read

    @property
    def ready(self) -> bool:
        return self.pod_ready and self.healthy and self.proc.returncode is None


class RouterBridge:
    """Runs ``qwenctl router`` for every Running router pod of QwenDeployment ``name``."""

    def __init__(
        self,
        api_client: Any,
        namespace: str,
        name: str,
        workdir: Path,
        poll_seconds: float = 0.5,
        stop_seconds: float = 10.0,
        log: Callable[[str], None] = print,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.api_client = api_client
        self.namespace = namespace
        self.name = name
        self.workdir = workdir
        self.poll_seconds = poll_seconds
        self.stop_seconds = stop_seconds
        self.log = log
        self.on_change = on_change  # called when the set of running router processes changed
        self.routers: dict[str, RouterProc] = {}  # pod uid -> process
        self.started = 0
        self.stopped = 0
        self.failed: dict[str, str] = {}  # pod uid -> why its router could not start
        self._stopped_by_code: dict[str, int] = {}
        self._rr = itertools.count()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self.poll_errors = 0

    # --- life cycle ------------------------------------------------------------------------
    async def start(self) -> RouterBridge:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._poll_loop(), name="router bridge: pods"),
            loop.create_task(self._probe_loop(), name="router bridge: probes"),
        ]
        return self

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.gather(*(self._stop(uid) for uid in list(self.routers)), return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    # --- which router takes the next request -------------------------------------------------
    def ready_urls(self) -> list[str]:
        return [r.url for r in sorted(self.routers.values(), key=lambda r: r.pod) if r.ready]

    def pick(self) -> str:
        """A Ready router's URL, round-robin (what the client Service does per connection)."""
        urls = self.ready_urls()
        if not urls:
            raise LookupError(f"no Ready router pod of {self.namespace}/{self.name} (the Service has no endpoints)")
        return urls[next(self._rr) % len(urls)]

    def targets(self) -> list[Target]:
        """One Prometheus scrape target per running router process, labelled as pod discovery
        labels the pod (``namespace``, ``pod``: the router pod's name), Ready or not."""
        out = []
        for r in sorted(self.routers.values(), key=lambda r: r.pod):
            if r.proc.returncode is not None:
                continue
            labels = dict(zip(TARGET_LABELS, (self.namespace, r.pod), strict=True))
            out.append(Target(r.url.removeprefix("http://"), labels))
        return out

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def requests_by_code(self) -> dict[str, int]:
        """The routers' own ``qwen_router_requests_total`` per code (running and stopped ones)."""
        out = dict(self._stopped_by_code)
        for r in self.routers.values():
            for code, n in r.by_code.items():
                out[code] = out.get(code, 0) + n
        return out

    async def scrape(self) -> dict[str, int]:
        """Read every running router's ``/metrics`` now; :meth:`requests_by_code` after."""
        await asyncio.gather(*(self._scrape(r) for r in list(self.routers.values())), return_exceptions=True)
        return self.requests_by_code()

    async def gauge(self, name: str) -> float:
        """A gauge summed over every running router's ``/metrics`` now (e.g. ``qwen_router_held``)."""
        assert self._session is not None
        total = 0.0
        pattern = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})?\s+([0-9.eE+-]+)$", re.M)
        for r in list(self.routers.values()):
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with self._session.get(r.url + "/metrics") as resp:
                    total += sum(float(v) for v in pattern.findall(await resp.text()))
        return total

    # --- following the cluster ---------------------------------------------------------------
    def _list_pods(self) -> list[dict[str, Any]]:
        from kubernetes import client

        selector = ",".join(f"{k}={v}" for k, v in sorted(router_selector(self.name).items()))
        resp: Any = client.CoreV1Api(self.api_client).list_namespaced_pod(
            self.namespace, label_selector=selector, _preload_content=False, _request_timeout=10
        )
        items: list[dict[str, Any]] = json.loads(resp.data)["items"]
        return items

    async def _poll_loop(self) -> None:
        while True:
            try:
                pods = await asyncio.to_thread(self._list_pods)
            except Exception as exc:  # noqa: BLE001 - the API server may blip; keep following
                self.poll_errors += 1
                if self.poll_errors <= 3:
                    self.log(f"router pods: listing failed ({type(exc).__name__}: {exc}); retrying")
            else:
                await self.sync(pods)
            await asyncio.sleep(self.poll_seconds)

    async def sync(self, pods: Sequence[Mapping[str, Any]]) -> None:
        seen: dict[str, Mapping[str, Any]] = {}
        for pod in pods:
            meta = pod.get("metadata") or {}
            uid = str(meta.get("uid", ""))
            if not pod_running(pod):
                continue
            seen[uid] = pod
            if uid not in self.routers and uid not in self.failed:
                try:
                    await self._start(pod)
                except (ValueError, RuntimeError, OSError) as exc:
                    self.failed[uid] = str(exc)
                    self.log(f"router pod {meta.get('name')}: cannot run it: {exc}")
            if uid in self.routers:
                self.routers[uid].pod_ready = pod_ready(pod)
        for uid in [u for u in self.routers if u not in seen]:
            await self._stop(uid)  # deleted or terminating: SIGTERM, as the kubelet sends it
        for uid, r in list(self.routers.items()):
            if r.proc.returncode is not None:
                self.log(f"router pod {r.pod}: process exited ({r.proc.returncode}); see {r.log}")
                await self._stop(uid)
                self.failed[uid] = f"exited with {r.proc.returncode}"

    def _token(self, account: str) -> str:
        from kubernetes import client

        spec = client.V1TokenRequestSpec(audiences=[], expiration_seconds=TOKEN_SECONDS)
        req = client.AuthenticationV1TokenRequest(spec=spec)
        resp = client.CoreV1Api(self.api_client).create_namespaced_service_account_token(account, self.namespace, req)
        if resp.status is None or not resp.status.token:
            raise RuntimeError(f"TokenRequest for ServiceAccount {account} returned no token")
        return str(resp.status.token)

    async def _start(self, pod: Mapping[str, Any]) -> None:
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        name, uid = str(meta.get("name")), str(meta.get("uid"))
        containers = spec.get("containers") or []
        if len(containers) != 1:
            raise ValueError(f"expected one container, found {len(containers)}")
        argv = local_argv(containers[0])
        account = str(spec.get("serviceAccountName") or router_name(self.name))
        token = await asyncio.to_thread(self._token, account)
        cfg = self.api_client.configuration
        kubeconfig = self.workdir / f"{name}.kubeconfig"
        doc = service_account_kubeconfig(str(cfg.host), str(cfg.ssl_ca_cert), self.namespace, account, token)
        kubeconfig.write_text(yaml.safe_dump(doc))
        kubeconfig.chmod(0o600)
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE_")}
        for var in containers[0].get("env") or []:
            if "value" in var:
                env[str(var["name"])] = str(var["value"])
        env.update({"KUBECONFIG": str(kubeconfig), DIAL_ENV: "annotation", LISTEN_ENV: "127.0.0.1:0"})
        log = self.workdir / f"{name}.log"
        with log.open("ab") as err:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=err, env=env, start_new_session=True
            )
        assert proc.stdout is not None
        try:
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode(errors="replace")
        except TimeoutError:
            line = ""
        match = _LISTENING.search(line)
        if match is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise RuntimeError(f"the router did not start ({line.strip()!r}); log: {log}")
        self.routers[uid] = RouterProc(name, uid, proc, match.group(1), log, pod_ready=pod_ready(pod))
        self.started += 1
        self.log(f"router pod {name}: `qwenctl router` as rendered, as ServiceAccount {account}, on {match.group(1)}")
        self._changed()

    async def _stop(self, uid: str) -> None:
        r = self.routers.pop(uid, None)
        if r is None:
            return
        self._changed()  # no longer a scrape target: a pod that is gone leaves pod discovery at once
        await self._scrape(r)  # its last counts, before the process goes
        for code, n in r.by_code.items():
            self._stopped_by_code[code] = self._stopped_by_code.get(code, 0) + n
        if r.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                r.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(r.proc.wait(), self.stop_seconds)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    r.proc.kill()
                await r.proc.wait()
        self.stopped += 1
        self.log(f"router pod {r.pod}: process stopped")

    # --- readiness probe and metrics ----------------------------------------------------------
    async def _probe(self, r: RouterProc) -> None:
        assert self._session is not None
        try:
            async with self._session.get(r.url + "/health") as resp:
                r.healthy = resp.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            r.healthy = False

    async def _scrape(self, r: RouterProc) -> None:
        if self._session is None or r.proc.returncode is not None:
            return
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with self._session.get(r.url + "/metrics") as resp:
                if resp.status == 200:
                    r.by_code = requests_by_code(await resp.text())

    async def _probe_loop(self) -> None:
        while True:
            started = time.monotonic()
            await asyncio.gather(*(self._probe(r) for r in list(self.routers.values())), return_exceptions=True)
            await asyncio.sleep(max(0.1, PROBE_SECONDS - (time.monotonic() - started)))

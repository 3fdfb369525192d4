"""Build and run the real LeaderWorkerSet (LWS) controller against a sandbox control plane.

LeaderWorkerSet (Kubernetes SIG Apps, Apache-2.0, Go module ``sigs.k8s.io/lws``) runs one
*group* of pods per replica: a leader pod from a leader StatefulSet plus a worker
StatefulSet per leader -- the shape multi-node tensor-parallel serving needs. The
sandbox must run the real controller, not a stand-in, so it is compiled from the Go
module proxy like every other tool here.

Facts this module relies on, all from the ``sigs.k8s.io/lws@v0.9.0`` module source:

* Version: **v0.9.0** (tagged 2026-06-17) is the newest release the module proxy serves
  here; its ``go.mod`` asks for ``go 1.26.0``.
* The controller's main package is ``sigs.k8s.io/lws/cmd`` (``cmd/main.go``). ``go install
  sigs.k8s.io/lws/cmd@v0.9.0`` does not work through this proxy (it consults the module's
  version list for deprecations and the proxy answers that list with 403), so we run
  ``go mod download -json`` and ``go build ./cmd`` *inside the downloaded module*: its own
  ``go.mod``/``go.sum`` pin every dependency exactly as upstream released it.
  ``-X sigs.k8s.io/lws/pkg/version.GitVersion=`` (and ``GitCommit=``, the tag's commit from
  the proxy's ``Origin``) stamp ``lws --version`` as upstream's Makefile does.
* CRDs: ``config/crd/bases/leaderworkerset.x-k8s.io_leaderworkersets.yaml`` and
  ``config/crd/bases/disaggregatedset.x-k8s.io_disaggregatedsets.yaml`` (1.3 and 1.5 MB, so
  they are copied from the module cache at build time, never vendored, and applied
  server-side: client-side apply's last-applied annotation cannot hold them). The binary
  always starts a DisaggregatedSet controller too, so both CRDs must be installed.
* Webhooks: ``config/webhook/manifests.yaml`` lists them (LWS defaulting/validation, pod
  mutation/validation, DisaggregatedSet validation) with service references; upstream's
  kustomize patches (``config/webhook/{mutating,validating}-patch.yaml``) narrow the pod
  webhooks to pods labelled ``leaderworkerset.sigs.k8s.io/name``. The pod webhook is not
  optional: it labels pods with their worker index and group key, and the pod controller
  (``pkg/controllers/pod_controller.go``) errors out on pods without a worker-index label, so it
  would never create a leader's worker StatefulSet. ``ENABLE_WEBHOOKS=false`` switches the
  webhooks off and leaves every leader without workers, so we *run* them.
* Configuration: ``--config`` takes a ``config.lws.x-k8s.io/v1alpha1`` ``Configuration``
  (``api/config/v1alpha1``); the ``--metrics-bind-address``/``--health-probe-bind-address``
  flags are deprecated in favour of it. ``internalCertManagement.enable`` defaults to true:
  it rotates a certificate into a Secret of a Service named ``lws-webhook-service`` in
  ``lws-system`` and blocks every controller until that is done -- meaningless outside a
  pod, so it is turned off and a certificate for 127.0.0.1 is issued here instead
  (controller-runtime reads ``tls.crt``/``tls.key`` from ``webhook.certDir``).

How it runs here (:class:`LWSController`): the CRDs are applied and Established first;
the controller starts with ``--kubeconfig`` and a generated ``--config`` -- leader election
off (one process), webhook server on ``127.0.0.1:<free port>`` with our certificate,
metrics (controller-runtime's authenticated HTTPS endpoint) and health probes on
``127.0.0.1:<free ports>`` -- and, once ``/readyz`` answers and every webhook path is
registered, the webhook configurations are applied with ``clientConfig.url:
https://127.0.0.1:<port>/<path>`` and our CA bundle (the sandbox's kube-apiserver runs on
this machine). ``stop()`` deletes those configurations before stopping the process, so a
failing-closed webhook never outlives it.

``python -m qwen_operator.sandbox.lws build`` (``make lws``) compiles the binary into
``~/.cache/qwen-operator/lws-<version>/bin`` and copies the CRDs and webhook manifest next
to it (``QWEN_OPERATOR_CACHE`` overrides the root). The build path uses the standard
library only.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .procs import free_port

NAME = "lws"
VERSION = "v0.9.0"
MODULE = "sigs.k8s.io/lws"
MAIN_PACKAGE = "./cmd"
CRD_FILES = (
    "leaderworkerset.x-k8s.io_leaderworkersets.yaml",
    "disaggregatedset.x-k8s.io_disaggregatedsets.yaml",
)
CRD_NAMES = ("leaderworkersets.leaderworkerset.x-k8s.io", "disaggregatedsets.disaggregatedset.x-k8s.io")
WEBHOOK_MANIFEST = "config/webhook/manifests.yaml"
BUILD_COMMAND = "python -m qwen_operator.sandbox.lws build"
#: Upstream's kustomize patches restrict the pod webhooks to LWS pods with this selector.
POD_SELECTOR = {"matchExpressions": [{"key": "leaderworkerset.sigs.k8s.io/name", "operator": "Exists"}]}
#: Names of the webhook configurations applied for a running controller.
WEBHOOK_CONFIG_PREFIX = "qwen-sandbox-lws"


class LWSError(RuntimeError):
    """LWS is not built or could not start; the message says what to do."""


def cache_root() -> Path:
    env = os.environ.get("QWEN_OPERATOR_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "qwen-operator"


def home() -> Path:
    """``lws-<version>``: ``bin/lws``, ``crds/*.yaml`` and ``webhook/manifests.yaml``."""
    return cache_root() / f"{NAME}-{VERSION}"


def binary_path() -> Path:
    return home() / "bin" / NAME


def crd_paths() -> list[Path]:
    return [home() / "crds" / f for f in CRD_FILES]


def webhook_manifest_path() -> Path:
    return home() / "webhook" / "manifests.yaml"


def _complete(root: Path) -> bool:
    return all(
        p.is_file()
        for p in (
            root / "bin" / NAME,
            root / "webhook" / "manifests.yaml",
            *(root / "crds" / f for f in CRD_FILES),
        )
    )


def locate() -> Path:
    """The controller binary, or an error naming the command that builds it."""
    if not _complete(home()):
        raise LWSError(
            f"the LeaderWorkerSet controller ({NAME} {VERSION}) is not built (looked in {home()}). "
            f"Run `make lws` or `{BUILD_COMMAND}` to build it from the Go module proxy (needs Go >= 1.26)."
        )
    return binary_path()


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise LWSError("`go` not found on PATH: install Go >= 1.26 (https://go.dev/doc/install), then `make lws`.")
    out = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=False)
    version = out.stdout.strip().removeprefix("go").split(".")
    if len(version) >= 2 and version[0].isdigit() and version[1].isdigit():
        if (int(version[0]), int(version[1])) < (1, 26):
            raise LWSError(f"found go{'.'.join(version)}; {NAME} {VERSION} needs Go >= 1.26.")
    return go


def build(force: bool = False) -> Path:
    """Compile the controller and copy its CRDs and webhook manifest into the cache (no-op when present)."""
    target = home()
    if _complete(target) and not force:
        print(f"{NAME} {VERSION} present: {binary_path()}")
        return binary_path()
    go = _go()
    env = dict(
        os.environ,
        CGO_ENABLED="0",
        GOWORK="off",
        GOFLAGS="-buildvcs=false -mod=readonly",
        # the control plane's private build cache: a `go clean -cache` elsewhere must not break a cold build
        GOCACHE=str(cache_root() / "go-build"),
    )
    print(f"building {NAME} {VERSION} from the Go module proxy ({MODULE}, package {MAIN_PACKAGE}); this takes minutes")
    start = time.monotonic()
    dl = subprocess.run(
        [go, "mod", "download", "-json", f"{MODULE}@{VERSION}"], capture_output=True, text=True, env=env, check=False
    )
    try:
        info = json.loads(dl.stdout)
    except json.JSONDecodeError:
        info = {"Error": (dl.stderr or dl.stdout).strip()}
    if dl.returncode != 0 or "Dir" not in info:
        raise LWSError(f"`go mod download {MODULE}@{VERSION}` failed: {info.get('Error', dl.stderr.strip())}")
    source = Path(info["Dir"])
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "bin").mkdir(parents=True)
    ldflags = f"-s -w -X {MODULE}/pkg/version.GitVersion={VERSION}"
    commit = (info.get("Origin") or {}).get("Hash")  # the tag's commit, as the proxy recorded it
    if commit:
        ldflags += f" -X {MODULE}/pkg/version.GitCommit={commit}"
    cmd = [go, "build", "-trimpath", "-ldflags", ldflags, "-o", str(staging / "bin" / NAME), MAIN_PACKAGE]
    print(f"  $ (cd {source} && go {' '.join(cmd[1:])})", flush=True)
    proc = subprocess.run(cmd, cwd=source, env=env, check=False)
    if proc.returncode != 0:
        raise LWSError(f"`go build {MAIN_PACKAGE}` in {source} failed with exit code {proc.returncode} (output above).")
    (staging / "crds").mkdir()
    for name in CRD_FILES:
        shutil.copyfile(source / "config" / "crd" / "bases" / name, staging / "crds" / name)
    (staging / "webhook").mkdir()
    shutil.copyfile(source / WEBHOOK_MANIFEST, staging / "webhook" / "manifests.yaml")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    print(f"built {binary_path()} in {time.monotonic() - start:.0f}s (CRDs and webhook manifest in {target})")
    return binary_path()


# --- running it ------------------------------------------------------------------------------


def webhook_configurations(manifest: list[dict[str, Any]], base_url: str, ca_bundle: bytes) -> list[dict[str, Any]]:
    """Upstream's webhook configurations pointed at ``base_url`` instead of an in-cluster Service.

    Each ``clientConfig.service.path`` becomes ``clientConfig.url`` (``base_url`` + path) with
    ``ca_bundle`` (PEM) as the trust root; pod webhooks get upstream's LWS-pods-only
    ``objectSelector``; configurations are renamed ``qwen-sandbox-lws-<kind>`` (pure).
    """
    out: list[dict[str, Any]] = []
    bundle = base64.b64encode(ca_bundle).decode()
    for doc in manifest:
        if not doc:
            continue
        kind = str(doc["kind"])
        suffix = "mutating" if kind.startswith("Mutating") else "validating"
        hooks = []
        for hook in doc.get("webhooks", []):
            hook = json.loads(json.dumps(hook))  # a deep copy
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": base_url.rstrip("/") + path, "caBundle": bundle}
            if any("pods" in rule.get("resources", []) for rule in hook.get("rules", [])):
                hook["objectSelector"] = POD_SELECTOR
            hook.setdefault("timeoutSeconds", 10)
            hooks.append(hook)
        out.append(
            {
                "apiVersion": doc["apiVersion"],
                "kind": kind,
                "metadata": {"name": f"{WEBHOOK_CONFIG_PREFIX}-{suffix}"},
                "webhooks": hooks,
            }
        )
    return out


@dataclass
class LWSController:
    """The real LWS controller as a local process against ``kubeconfig`` (see the module docstring)."""

    kubeconfig: Path
    workdir: Path
    webhook_port: int = 0
    health_port: int = 0
    metrics_port: int = 0
    log_path: Path | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log: IO[bytes] | None = field(default=None, repr=False)
    _webhooks: list[dict[str, Any]] = field(default_factory=list, repr=False)

    # -- kubectl (the control plane's own, same release as the API server) --

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        from .binaries import MissingToolError
        from .binaries import locate as locate_control_plane

        try:
            kubectl = locate_control_plane().kubectl
        except MissingToolError as exc:
            raise LWSError(str(exc)) from None
        proc = subprocess.run(
            [str(kubectl), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            input=stdin,
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise LWSError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def install_crds(self, timeout: float = 60.0) -> None:
        """Apply both CRDs server-side and wait until the API server serves them (Established)."""
        locate()
        for path in crd_paths():
            self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
        deadline = time.monotonic() + timeout
        jsonpath = 'jsonpath={.status.conditions[?(@.type=="Established")].status}'
        for crd in CRD_NAMES:
            while True:
                got = self.kubectl("get", f"crd/{crd}", "-o", jsonpath, check=False)
                if got.returncode == 0 and got.stdout.strip() == "True":
                    break
                if time.monotonic() > deadline:
                    raise LWSError(f"CRD {crd} not Established after {timeout:.0f}s: {got.stdout} {got.stderr}")
                time.sleep(0.2)

    # -- the process --

    def _write_config(self) -> tuple[Path, Path]:
        """Serving certificate for 127.0.0.1 (``tls.crt``/``tls.key``) and the ``Configuration`` file."""
        from .pki import PKI

        pki = PKI(self.workdir / "pki")
        pki.ensure()  # a private CA; its serving certificate has 127.0.0.1 and localhost as SANs
        cert_dir = self.workdir / "webhook-certs"
        cert_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pki.serving_cert, cert_dir / "tls.crt")
        shutil.copyfile(pki.serving_key, cert_dir / "tls.key")
        config = {
            "apiVersion": "config.lws.x-k8s.io/v1alpha1",
            "kind": "Configuration",
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "webhook": {"host": "127.0.0.1", "port": self.webhook_port, "certDir": str(cert_dir)},
            "metrics": {"bindAddress": f"127.0.0.1:{self.metrics_port}"},
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.health_port}"},
        }
        path = self.workdir / "lws-config.yaml"
        path.write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML
        return path, pki.ca_cert

    def command(self, config: Path) -> list[str]:
        return [str(locate()), f"--kubeconfig={self.kubeconfig}", f"--config={config}", "--zap-log-level=info"]

    def start(self, timeout: float = 60.0) -> LWSController:
        """Install the CRDs, start the controller, wait until it serves, then register its webhooks."""
        import yaml

        locate()
        self.workdir.mkdir(parents=True, exist_ok=True)
        for attr in ("webhook_port", "health_port", "metrics_port"):
            if not getattr(self, attr):
                setattr(self, attr, free_port())
        if self.log_path is None:
            self.log_path = self.workdir / "lws-controller.log"
        self.install_crds()
        config, ca_cert = self._write_config()
        manifest = list(yaml.safe_load_all(webhook_manifest_path().read_text()))
        self._webhooks = webhook_configurations(manifest, self.webhook_url, ca_cert.read_bytes())
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            self.command(config), stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        try:
            self._wait_ready(timeout, ca_cert)
            self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=json.dumps(self._list()))
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def webhook_url(self) -> str:
        return f"https://127.0.0.1:{self.webhook_port}"

    def webhook_paths(self) -> list[str]:
        return [
            str(h["clientConfig"]["url"]).removeprefix(self.webhook_url) for c in self._webhooks for h in c["webhooks"]
        ]

    def _list(self) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "List", "items": self._webhooks}

    def _wait_ready(self, timeout: float, ca_cert: Path) -> None:
        """``/readyz`` answers 200 and every webhook path is registered (anything but 404)."""
        deadline = time.monotonic() + timeout
        context = ssl.create_default_context(cafile=str(ca_cert))
        pending = ["/readyz", *self.webhook_paths()]
        last = ""
        while pending:
            if self._proc is not None and self._proc.poll() is not None:
                raise LWSError(f"{NAME} exited with code {self._proc.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise LWSError(
                    f"{NAME} not ready after {timeout:.0f}s (waiting for {pending[0]}: {last}):\n{self.tail()}"
                )
            path = pending[0]
            try:
                if path == "/readyz":
                    urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=2).close()
                else:
                    req = urllib.request.Request(
                        self.webhook_url + path, data=b"{}", headers={"Content-Type": "application/json"}
                    )
                    urllib.request.urlopen(req, timeout=2, context=context).close()
                pending.pop(0)
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
                if path != "/readyz" and exc.code != 404:
                    pending.pop(0)  # registered: it rejects an empty review, which is fine
                else:
                    time.sleep(0.1)
            except OSError as exc:
                last = str(exc)
                time.sleep(0.1)

    def tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """Unregister the webhooks (they fail closed), then stop the process."""
        if self._webhooks:
            names = [f"{c['kind'].lower()}/{c['metadata']['name']}" for c in self._webhooks]
            try:
                self.kubectl("delete", "--ignore-not-found", "--wait=false", *names, check=False)
            except (LWSError, subprocess.TimeoutExpired):
                pass  # the control plane may already be gone
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qwen_operator.sandbox.lws", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the controller (and copy its CRDs) into the cache if missing")
    b.add_argument("--force", action="store_true", help="rebuild even when present")
    sub.add_parser("path", help="print the binary path (fails if not built)")
    r = sub.add_parser("run", help="install the CRDs and run the controller in the foreground (Ctrl-C stops it)")
    r.add_argument("--kubeconfig", type=Path, required=True, help="e.g. a sandbox's kubeconfig")
    r.add_argument("--workdir", type=Path, required=True, help="certificates, config and log go here")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "build":
            build(force=args.force)
        elif args.cmd == "path":
            print(locate())
        else:
            ctl = LWSController(kubeconfig=args.kubeconfig, workdir=args.workdir).start()
            print(f"{NAME} {VERSION} running (webhooks on {ctl.webhook_url}, log {ctl.log_path})", flush=True)
            try:
                while ctl.alive():
                    time.sleep(1)
                print(f"error: {NAME} exited:\n{ctl.tail()}", file=sys.stderr)
                return 1
            except KeyboardInterrupt:
                pass
            finally:
                ctl.stop()
    except LWSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        print(f"error: build step failed ({exc.cmd[0]} exited {exc.returncode}); see output above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Build and locate the real control-plane binaries the sandbox runs.

There is no Docker engine, image registry or download site here, only the Go module
proxy. So kube-apiserver, kube-controller-manager and kube-scheduler are compiled from
``k8s.io/kubernetes`` through a small wrapper module (``e2e/controlplane/kubernetes``),
etcd from ``go.etcd.io/etcd/server/v3`` (``e2e/controlplane/etcd``) and kwok with
``go install``. The wrapper's ``go.mod`` is *derived* from Kubernetes' own ``go.mod``:
every ``k8s.io/<staging> => ./staging/src/k8s.io/<staging>`` replace becomes
``k8s.io/<staging> => k8s.io/<staging> v0.<minor>.<patch>``, so a version bump is one
constant and a regeneration, never a hand-edited list.

Binaries land in ``~/.cache/qwen-operator/k8s-<version>/bin`` (``QWEN_OPERATOR_CACHE``
overrides the root) and are rebuilt only when missing. This module uses the standard
library only: ``make setup`` runs it before anything else is importable.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.37.2"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.8.0"

REPO_ROOT = Path(__file__).resolve().parents[3]
WRAPPERS = REPO_ROOT / "e2e" / "controlplane"

K8S_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")

GO_INSTALL_HINT = (
    "Go >= 1.26 is needed to build the control plane: install it from your distribution "
    "(e.g. `apt-get install golang-go` where new enough) or https://go.dev/doc/install, "
    "then run `make setup`."
)


class MissingToolError(RuntimeError):
    """A tool the sandbox needs is not installed; the message says how to get it."""


def cache_root() -> Path:
    """Root of every cached artefact (binaries, sandboxes' state lives elsewhere)."""
    env = os.environ.get("QWEN_OPERATOR_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "qwen-operator"


def bin_dir() -> Path:
    """Directory holding this release's control-plane binaries."""
    return cache_root() / f"k8s-{KUBERNETES_VERSION}-etcd-{ETCD_VERSION}-kwok-{KWOK_VERSION}" / "bin"


@dataclass(frozen=True)
class Binaries:
    """Absolute paths of every binary a sandbox starts."""

    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    etcd: Path
    kwok: Path

    def all(self) -> dict[str, Path]:
        return {
            "kube-apiserver": self.kube_apiserver,
            "kube-controller-manager": self.kube_controller_manager,
            "kube-scheduler": self.kube_scheduler,
            "kubectl": self.kubectl,
            "etcd": self.etcd,
            "kwok": self.kwok,
        }


def expected() -> Binaries:
    d = bin_dir()
    return Binaries(
        kube_apiserver=d / "kube-apiserver",
        kube_controller_manager=d / "kube-controller-manager",
        kube_scheduler=d / "kube-scheduler",
        kubectl=d / "kubectl",
        etcd=d / "etcd",
        kwok=d / "kwok",
    )


def missing() -> list[str]:
    return [name for name, path in expected().all().items() if not path.is_file()]


def locate() -> Binaries:
    """Return the binaries, or explain exactly how to build the missing ones."""
    gone = missing()
    if gone:
        raise MissingToolError(
            f"control-plane binaries not built: {', '.join(gone)} (looked in {bin_dir()}). "
            "Run `make setup` (or `python -m qwen_operator.sandbox.binaries build`) to "
            "build them from the Go module proxy."
        )
    return expected()


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise MissingToolError(f"`go` not found on PATH. {GO_INSTALL_HINT}")
    out = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=True)
    m = re.match(r"go(\d+)\.(\d+)", out.stdout.strip())
    if m and (int(m.group(1)), int(m.group(2))) < (1, 26):
        raise MissingToolError(f"found {out.stdout.strip()}, too old. {GO_INSTALL_HINT}")
    return go


def _staging_twin(k8s_version: str) -> str:
    major, minor, patch = k8s_version.lstrip("v").split(".")
    assert major == "1", k8s_version
    return f"v0.{minor}.{patch}"


def derive_kubernetes_gomod(upstream_gomod: str, k8s_version: str) -> str:
    """Turn Kubernetes' go.mod into our wrapper's go.mod (pure; unit-tested).

    Each ``./staging/src/...`` replace becomes a replace onto the published ``v0.x``
    twin of that staging module. Kubernetes' own requires are repeated so minimal
    version selection picks exactly what upstream pinned.
    """
    go_line = re.search(r"^go (\S+)$", upstream_gomod, re.M)
    staging = sorted(set(re.findall(r"^\s*(k8s\.io/[\w.-]+)\s*=>\s*\./staging/", upstream_gomod, re.M)))
    if not staging:
        raise ValueError("no staging replaces found in the upstream go.mod")
    twin = _staging_twin(k8s_version)
    lines = [
        "// Code generated by qwen_operator.sandbox.binaries from the go.mod of",
        f"// k8s.io/kubernetes@{k8s_version}. DO NOT EDIT: change KUBERNETES_VERSION and run",
        "// `python -m qwen_operator.sandbox.binaries gomod`.",
        "",
        "module qwenops.io/e2e/controlplane/kubernetes",
        "",
        f"go {go_line.group(1) if go_line else '1.26.0'}",
        "",
        f"require k8s.io/kubernetes {k8s_version}",
        "",
        "replace (",
    ]
    lines += [f"\t{mod} => {mod} {twin}" for mod in staging]
    lines += [")", ""]
    return "\n".join(lines)


def _run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    print(f"  $ {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, cwd=cwd, env=env, check=True)


def write_kubernetes_gomod(go: str) -> Path:
    """(Re)derive e2e/controlplane/kubernetes/go.mod from upstream's go.mod."""
    out = subprocess.run(
        [go, "mod", "download", "-json", f"k8s.io/kubernetes@{KUBERNETES_VERSION}"],
        capture_output=True,
        text=True,
        check=True,
    )
    upstream = Path(json.loads(out.stdout)["GoMod"]).read_text()
    target = WRAPPERS / "kubernetes" / "go.mod"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(derive_kubernetes_gomod(upstream, KUBERNETES_VERSION))
    # tidy adds upstream's pinned requires and go.sum for the commands in tools.go
    _run([go, "mod", "tidy"], cwd=target.parent)
    return target


def _ldflags(version: str) -> str:
    major, minor, _ = version.lstrip("v").split(".")
    pkgs = ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
    flags = ["-s", "-w"]
    for pkg in pkgs:
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
        ]
    return " ".join(flags)


def build(force: bool = False) -> Binaries:
    """Build whatever is missing, printing progress; returns the binaries."""
    gone = set(expected().all()) if force else set(missing())
    if not gone:
        print(f"control-plane binaries present in {bin_dir()}")
        return expected()
    go = _go()
    target = bin_dir()
    target.mkdir(parents=True, exist_ok=True)
    # A private build cache: a `go clean -cache` elsewhere must not break a long cold build.
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-buildvcs=false", GOCACHE=str(cache_root() / "go-build"))
    started = time.monotonic()
    todo_k8s = [c for c in K8S_COMMANDS if c in gone]
    step, steps = 0, len(todo_k8s) + ("etcd" in gone) + ("kwok" in gone)
    for cmd in todo_k8s:
        step += 1
        print(f"[{step}/{steps}] building {cmd} {KUBERNETES_VERSION} (cold builds take minutes) ...", flush=True)
        t = time.monotonic()
        _run(
            [
                go,
                "build",
                "-trimpath",
                "-ldflags",
                _ldflags(KUBERNETES_VERSION),
                "-o",
                str(target / cmd),
                f"k8s.io/kubernetes/cmd/{cmd}",
            ],
            cwd=WRAPPERS / "kubernetes",
            env=env,
        )
        print(f"      {cmd} built in {time.monotonic() - t:.0f}s", flush=True)
    if "etcd" in gone:
        step += 1
        print(f"[{step}/{steps}] building etcd {ETCD_VERSION} ...", flush=True)
        t = time.monotonic()
        _run(
            [go, "build", "-trimpath", "-ldflags", "-s -w", "-o", str(target / "etcd"), "go.etcd.io/etcd/server/v3"],
            cwd=WRAPPERS / "etcd",
            env=env,
        )
        print(f"      etcd built in {time.monotonic() - t:.0f}s", flush=True)
    if "kwok" in gone:
        step += 1
        print(f"[{step}/{steps}] installing kwok {KWOK_VERSION} ...", flush=True)
        t = time.monotonic()
        _run(
            [go, "install", "-trimpath", "-ldflags", "-s -w", f"sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}"],
            env=dict(env, GOBIN=str(target)),
        )
        print(f"      kwok installed in {time.monotonic() - t:.0f}s", flush=True)
    total = time.monotonic() - started
    print(f"control-plane binaries ready in {bin_dir()} ({total:.0f}s)", flush=True)
    record = bin_dir().parent / "build-times.json"
    history = json.loads(record.read_text()) if record.exists() else []
    history.append({"built": sorted(gone), "seconds": round(total, 1), "at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    record.write_text(json.dumps(history, indent=2))
    return expected()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qwen_operator.sandbox.binaries", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build missing binaries into the cache")
    b.add_argument("--force", action="store_true", help="rebuild even if present")
    sub.add_parser("gomod", help="re-derive the Kubernetes wrapper go.mod from upstream")
    sub.add_parser("path", help="print the binary directory")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "build":
            build(force=args.force)
        elif args.cmd == "gomod":
            print(write_kubernetes_gomod(_go()))
        else:
            print(bin_dir())
    except MissingToolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        print(f"error: build step failed ({exc.cmd[0]} exited {exc.returncode}); see output above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Build and locate the Helm CLI the chart tests and ``make generate`` use.

Users install the operator with ``helm install``, so the chart is linted, rendered and
installed by the real Helm in tests. There is no download site here, only the Go module
proxy: ``python -m qwen_operator.packaging.helm build`` (run by ``make setup``) compiles
``helm.sh/helm/v3/cmd/helm`` with ``go install`` into
``~/.cache/qwen-operator/helm-<version>/bin`` (``QWEN_OPERATOR_CACHE`` overrides the
root), only when missing. Helm's module has no ``replace`` directives, so no wrapper
module is needed. The ldflags are those of Helm's Makefile (version, and the Kubernetes
minor its ``Capabilities`` default to), so ``helm version`` and ``--kube-version``
defaults read like a release build. The build uses a private ``GOCACHE`` under the
cache directory, removed after a successful build (the shared Go caches are never
touched). Standard library only: it runs before the package's dependencies.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

VERSION = "v3.22.0"
MODULE = "helm.sh/helm/v3"
PACKAGE = f"{MODULE}/cmd/helm@{VERSION}"
# Kubernetes client libraries Helm v3.22 is built against (its go.mod: k8s.io/* v0.37.0).
K8S_MAJOR, K8S_MINOR = "1", "37"
BUILD_COMMAND = "python -m qwen_operator.packaging.helm build"


class MissingHelmError(RuntimeError):
    """Helm is not built; the message says how to build it."""


def cache_root() -> Path:
    env = os.environ.get("QWEN_OPERATOR_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "qwen-operator"


def home() -> Path:
    return cache_root() / f"helm-{VERSION}"


def binary_path() -> Path:
    return home() / "bin" / "helm"


def locate() -> Path:
    """The Helm binary, or :class:`MissingHelmError` saying how to build it."""
    path = binary_path()
    if not path.is_file():
        raise MissingHelmError(
            f"helm {VERSION} is not built (looked for {path}). Run `make setup` or `{BUILD_COMMAND}` "
            "to build it from the Go module proxy (needs Go >= 1.26)."
        )
    return path


def ldflags() -> str:
    flags = [
        "-w",
        "-s",
        f"-X {MODULE}/internal/version.version={VERSION}",
        f"-X {MODULE}/internal/version.gitTreeState=clean",
        f"-X {MODULE}/pkg/lint/rules.k8sVersionMajor={K8S_MAJOR}",
        f"-X {MODULE}/pkg/lint/rules.k8sVersionMinor={K8S_MINOR}",
        f"-X {MODULE}/pkg/chartutil.k8sVersionMajor={K8S_MAJOR}",
        f"-X {MODULE}/pkg/chartutil.k8sVersionMinor={K8S_MINOR}",
    ]
    return " ".join(flags)


def build(force: bool = False) -> Path:
    """``go install`` Helm into the cache (no-op when present); returns the binary path."""
    target = binary_path()
    if target.is_file() and not force:
        print(f"helm {VERSION} present: {target}")
        return target
    go = shutil.which("go")
    if go is None:
        raise MissingHelmError("`go` not found on PATH: install Go >= 1.26 (https://go.dev/doc/install).")
    staging = home() / "bin.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    env = dict(
        os.environ,
        GOBIN=str(staging),
        CGO_ENABLED="0",
        GOFLAGS="-buildvcs=false",
        GOCACHE=str(home() / "go-build"),
    )
    print(f"building helm {VERSION} from the Go module proxy (go install {PACKAGE}); this takes a few minutes")
    start = time.monotonic()
    cmd = [go, "install", "-trimpath", "-ldflags", ldflags(), PACKAGE]
    proc = subprocess.run(cmd, env=env, check=False)
    if proc.returncode != 0:
        raise MissingHelmError(f"`go install {PACKAGE}` failed with exit code {proc.returncode} (output above).")
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging / "helm", target)
    shutil.rmtree(staging, ignore_errors=True)
    # The private build cache only serves a rebuild, which happens only when the binary is gone.
    shutil.rmtree(env["GOCACHE"], ignore_errors=True)
    print(f"built {target} in {time.monotonic() - start:.0f}s")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qwen_operator.packaging.helm", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build Helm into the cache if missing")
    b.add_argument("--force", action="store_true", help="rebuild even when present")
    sub.add_parser("path", help="print the binary path (fails if not built)")
    args = parser.parse_args(argv)
    try:
        print(build(force=args.force) if args.cmd == "build" else locate())
    except MissingHelmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

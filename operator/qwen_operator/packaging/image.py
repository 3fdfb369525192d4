"""Build and run the operator image without a Docker engine: buildah on a Debian base.

The ``Dockerfile`` is standard (``docker build .`` on ``python:3.11-slim``). Where there is no
Docker engine and no image registry to pull ``python:3.11-slim`` from, but Debian packages
are reachable, ``make image`` (``python -m qwen_operator.packaging.image build``):

1. builds the base from Debian packages: ``mmdebstrap --variant=minbase`` of bookworm with
   ``python3.11``, ``python3-venv`` and ``ca-certificates`` (documentation and locales left
   out, copyright files kept), imported with ``buildah from scratch`` + ``buildah add`` +
   ``buildah commit`` as :data:`BASE_TAG`, labelled with a digest of its recipe so a
   changed recipe rebuilds it and an unchanged one is reused;
2. builds the project's ``Dockerfile`` on it with ``buildah bud --build-arg
   PYTHON_IMAGE=<base>`` (pip in the build stage reaches PyPI over the host network; the
   host's CA bundle is passed as the optional ``ca-bundle`` build secret, so a
   TLS-intercepting proxy or private index CA works without entering the image), tagged
   ``ghcr.io/qwenops/qwen-operator:<version>`` (the chart's default) and labelled with
   :data:`CONTEXT_LABEL`, a digest of the build context, so a test can tell a stale image.

Containers run with the first OCI runtime that works here (:func:`runtime_args` probes
buildah's default, then ``runc``, then ``--isolation chroot``): crun refuses a hybrid
cgroup v1/v2 host ("cgroups in hybrid mode not supported, drop all controllers from
cgroupv2") where runc runs. :class:`Container` runs the image's own entry point as the
image's own user (``buildah run`` uses the config's ``USER``), which is what the
integration test uses; ``podman`` is not needed.

Standard library only (plus ``render`` for the default tag); runs as root or with sudo-less
rootless buildah where the host allows it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..render.workload import default_operator_image

REPO = Path(__file__).resolve().parents[3]
DEBIAN_SUITE = "bookworm"  # python3.11, the version the project targets
DEBIAN_MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3.11", "python3-venv", "ca-certificates")
BASE_TAG = f"localhost/qwen-operator-base:{DEBIAN_SUITE}-py3.11"
BASE_RECIPE_LABEL = "io.qwenops.base-recipe"
CONTEXT_LABEL = "io.qwenops.build-context"
TOOLS = ("buildah", "mmdebstrap")
BUILD_COMMAND = "make image"
# What the Dockerfile copies (the .dockerignore allow-list): the context digest covers these.
CONTEXT_FILES = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md")
CONTEXT_DIRS = ("operator",)
# mmdebstrap: no docs, man pages or translations in the base (copyright files kept).
_DPKG_OPTS = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
)
_BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _log(msg: str) -> None:
    print(msg, flush=True)


class ImageError(RuntimeError):
    """A build or run step failed; the message names the step and the tool's own error."""


class ContainersRefusedError(ImageError):
    """No container runtime works on this host (every runtime's refusal, verbatim)."""


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


def _run(cmd: Sequence[str], step: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        last = tail.splitlines()[-1] if tail else ""
        raise ImageError(f"{step} failed (exit {proc.returncode}): {last}\n{tail}")
    return proc


def base_recipe(mirror: str = DEBIAN_MIRROR) -> str:
    """The digest of everything the base is built from (suite, mirror, packages, dpkg options)."""
    text = json.dumps([DEBIAN_SUITE, mirror, BASE_PACKAGES, _DPKG_OPTS, _BASE_PATH])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def context_digest(repo: Path = REPO) -> str:
    """A digest of the build context the Dockerfile uses (bytecode caches excluded)."""
    h = hashlib.sha256()
    paths = [repo / f for f in CONTEXT_FILES]
    for d in CONTEXT_DIRS:
        paths += sorted(p for p in (repo / d).rglob("*") if p.is_file())
    for p in paths:
        rel = p.relative_to(repo).as_posix()
        if "__pycache__" in p.parts or p.suffix == ".pyc":
            continue
        h.update(rel.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def inspect_image(ref: str) -> dict[str, Any] | None:
    """``buildah inspect`` of a local image, or None when there is no such image."""
    proc = subprocess.run(["buildah", "inspect", "--type", "image", ref], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def image_labels(ref: str) -> dict[str, str]:
    info = inspect_image(ref) or {}
    labels: dict[str, str] = ((info.get("OCIv1") or {}).get("config") or {}).get("Labels") or {}
    return labels


_RUNTIME: list[str] | None = None


def runtime_args(image: str) -> list[str]:
    """The ``buildah run``/``bud`` options of the first container runtime that works here.

    Tries buildah's default runtime, then ``--runtime runc``, then ``--isolation chroot``
    (no OCI runtime, still a mount namespace and chroot). Raises with every refusal verbatim.
    """
    global _RUNTIME
    if _RUNTIME is not None:
        return _RUNTIME
    refusals = []
    candidates: list[list[str]] = [[]]
    if shutil.which("runc"):
        candidates.append(["--runtime", shutil.which("runc") or "runc"])
    candidates.append(["--isolation", "chroot"])
    for args in candidates:
        name = f"qwen-probe-{uuid.uuid4().hex[:8]}"
        _run(["buildah", "from", "--name", name, image], "buildah from (runtime probe)")
        try:
            proc = subprocess.run(
                ["buildah", "run", *args, "--network", "host", name, "--", "true"], capture_output=True, text=True
            )
        finally:
            subprocess.run(["buildah", "rm", name], capture_output=True)
        if proc.returncode == 0:
            _RUNTIME = args
            return args
        refusals.append(f"{' '.join(args) or 'default runtime'}: {proc.stderr.strip().splitlines()[:3]}")
    raise ContainersRefusedError("no container runtime works on this host:\n" + "\n".join(refusals))


def build_base(
    tag: str = BASE_TAG, mirror: str = DEBIAN_MIRROR, rebuild: bool = False, log: Callable[[str], None] = _log
) -> str:
    """The Debian base image (reused when its recipe label matches); returns its tag."""
    recipe = base_recipe(mirror)
    if not rebuild and image_labels(tag).get(BASE_RECIPE_LABEL) == recipe:
        log(f"base {tag} present (recipe {recipe})")
        return tag
    with tempfile.TemporaryDirectory(prefix="qwen-base-") as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        log(f"mmdebstrap {DEBIAN_SUITE} + {' '.join(BASE_PACKAGES)} from {mirror}")
        t0 = time.monotonic()
        _run(
            [
                "mmdebstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                # snapshot mirrors serve expired Release files
                "--aptopt=Acquire::Check-Valid-Until false",
                *(f"--dpkgopt={o}" for o in _DPKG_OPTS),
                DEBIAN_SUITE,
                str(rootfs),
                mirror,
            ],
            "mmdebstrap",
        )
        log(f"rootfs {rootfs.stat().st_size / 2**20:.0f} MiB in {time.monotonic() - t0:.0f} s; importing")
        ctr = _run(["buildah", "from", "scratch"], "buildah from scratch").stdout.strip()
        try:
            _run(["buildah", "add", ctr, str(rootfs), "/"], "buildah add rootfs")
            _run(
                [
                    "buildah",
                    "config",
                    "--env",
                    f"PATH={_BASE_PATH}",
                    "--env",
                    "LANG=C.UTF-8",
                    "--label",
                    f"{BASE_RECIPE_LABEL}={recipe}",
                    "--cmd",
                    "python3",
                    ctr,
                ],
                "buildah config",
            )
            _run(["buildah", "commit", "--rm", ctr, tag], "buildah commit")
        except BaseException:
            subprocess.run(["buildah", "rm", ctr], capture_output=True)
            raise
    return tag


def default_ca_bundle() -> Path | None:
    """The CA bundle pip in the build stage uses: ``PIP_CERT``/``SSL_CERT_FILE`` or the system one."""
    for cand in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt"):
        if cand and Path(cand).is_file():
            return Path(cand)
    return None


def build_image(
    tag: str | None = None,
    base: str = BASE_TAG,
    ca_bundle: Path | None = None,
    context: Path = REPO,
    log: Callable[[str], None] = _log,
) -> str:
    """``buildah bud`` of the Dockerfile on ``base``; returns the image id."""
    tag = tag or default_operator_image()
    digest = context_digest(context)
    cmd = [
        "buildah",
        "bud",
        *runtime_args(base),
        "--network",
        "host",
        "--layers=false",  # no intermediate images left behind (pip reruns on any code change anyway)
        "--build-arg",
        f"PYTHON_IMAGE={base}",
        "--label",
        f"{CONTEXT_LABEL}={digest}",
        "--tag",
        tag,
    ]
    if ca_bundle is not None:
        cmd += ["--secret", f"id=ca-bundle,src={ca_bundle}"]
    cmd.append(str(context))
    previous = (inspect_image(tag) or {}).get("FromImageID")
    log(f"buildah bud {tag} on {base} (context {digest})")
    t0 = time.monotonic()
    _run(cmd, "buildah bud")
    image_id = str((inspect_image(tag) or {}).get("FromImageID", ""))
    log(f"built {tag} in {time.monotonic() - t0:.0f} s: {image_id}")
    if previous and previous != image_id:  # the image this tag named before, now untagged
        subprocess.run(["buildah", "rmi", previous], capture_output=True)
    return image_id


def ensure_image(tag: str | None = None, log: Callable[[str], None] = _log) -> str:
    """``tag`` built from this tree: (re)built, base included when its recipe changed, unless its
    :data:`CONTEXT_LABEL` already matches :func:`context_digest`. Returns the tag."""
    tag = tag or default_operator_image()
    if image_labels(tag).get(CONTEXT_LABEL) == context_digest():
        return tag
    missing = missing_tools()
    if missing:
        raise ImageError(f"missing {' '.join(missing)}: `{BUILD_COMMAND}` installs them (Debian packages)")
    build_image(tag, build_base(log=log), default_ca_bundle(), log=log)
    return tag


@dataclass
class Container:
    """A working container of an image; :meth:`command` runs its entry point as its user."""

    image: str
    volumes: list[str] = field(default_factory=list)  # "host:container[:ro]"
    env: dict[str, str] = field(default_factory=dict)
    name: str = field(default_factory=lambda: f"qwen-image-{uuid.uuid4().hex[:8]}")

    def config(self) -> dict[str, Any]:
        info = inspect_image(self.image)
        if info is None:
            raise ImageError(f"no image {self.image}: run `{BUILD_COMMAND}`")
        cfg: dict[str, Any] = info["OCIv1"]["config"]
        return cfg

    def command(self, args: Sequence[str], entrypoint: bool = True) -> list[str]:
        """``buildah run`` of ``entrypoint + args`` (or ``args`` alone) with the config's user."""
        cmd = ["buildah", "run", *runtime_args(self.image), "--network", "host"]
        for v in self.volumes:
            cmd += ["--volume", v]
        for k, v in self.env.items():
            cmd += ["--env", f"{k}={v}"]
        head = list(self.config().get("Entrypoint") or []) if entrypoint else []
        return [*cmd, self.name, "--", *head, *args]

    def run(
        self, args: Sequence[str], entrypoint: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(args, entrypoint), capture_output=True, text=True, timeout=timeout)


@contextmanager
def container(image: str, volumes: Sequence[str] = (), env: dict[str, str] | None = None) -> Iterator[Container]:
    """A working container of ``image`` (``buildah from``), removed afterwards."""
    ctr = Container(image, list(volumes), dict(env or {}))
    _run(["buildah", "from", "--name", ctr.name, image], "buildah from")
    try:
        yield ctr
    finally:
        subprocess.run(["buildah", "rm", ctr.name], capture_output=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qwen_operator.packaging.image",
        description="Build the operator image with buildah on a Debian base (no Docker engine).",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the Debian base (if needed) and the Dockerfile on it")
    b.add_argument("--tag", default=None, help=f"image reference (default {default_operator_image()})")
    b.add_argument("--mirror", default=os.environ.get("DEBIAN_MIRROR", DEBIAN_MIRROR), help="Debian mirror URL")
    b.add_argument("--rebuild-base", action="store_true", help="rebuild the base even when its recipe is unchanged")
    b.add_argument("--ca-bundle", type=Path, default=None, help="CA bundle for pip (default: PIP_CERT or the system)")
    r = sub.add_parser("run", help="run the image's entry point with ARGS as the image's user (host network)")
    r.add_argument("--tag", default=None)
    r.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "build":
            missing = missing_tools()
            if missing:
                raise ImageError(f"missing {' '.join(missing)}: `{BUILD_COMMAND}` installs them (Debian packages)")
            base = build_base(mirror=args.mirror, rebuild=args.rebuild_base)
            ca = args.ca_bundle or default_ca_bundle()
            build_image(args.tag, base, ca)
            return 0
        with container(args.tag or default_operator_image()) as ctr:
            rest = args.args[1:] if args.args[:1] == ["--"] else args.args
            return subprocess.run(ctr.command(rest)).returncode
    except (ImageError, OSError) as exc:
        first, _, detail = str(exc).partition("\n")
        if detail:
            print(detail, file=sys.stderr)  # the tool's own last lines, then one error line
        print(f"error: {first}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

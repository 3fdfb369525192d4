"""The operator image, built by ``make image`` (buildah on a Debian base, no Docker engine), run.

Each test runs the image's own entry point as the image's own user (``buildah run`` with the
config's ``USER``; :mod:`qwen_operator.packaging.image` picks the first container runtime the
host accepts) on the host network, as the chart runs it: ``qwenctl --help``; ``qwenctl model
pull`` from the real S3 server into a cache directory owned by 65532; ``qwenctl operator run``
against the sandbox API server, which must reconcile a QwenDeployment into a pool Deployment.

A last test pushes the image to a real registry (CNCF distribution on loopback) with
``buildah push --digestfile``, pulls it back by digest, runs it, and renders the chart pinned
to that digest: the README's "Install on a real cluster" steps.

The image is the one ``make image`` builds from this tree: the fixture rebuilds it when its
build-context label differs from this tree's (2-3 minutes warm, 5 cold on a 2-core VM:
Debian and PyPI downloads), or runs ``QWEN_IMAGE=ref`` as it is. Skipped, with the reason, when
buildah/mmdebstrap are not installed (``make setup`` installs them) or the host refuses every
container runtime (the refusals quoted).
"""

from __future__ import annotations

import base64
import filecmp
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_controller import Qwd, resource  # the harness of the controller tests

from qwen_operator.modelsync.synthetic import Checkpoint, Shape
from qwen_operator.packaging import image as img
from qwen_operator.render import default_operator_image
from qwen_operator.sandbox.cluster import Sandbox
from qwen_operator.testing.s3 import S3Bucket
from qwen_operator.testing.wait import wait_for

IMAGE = os.environ.get("QWEN_IMAGE", default_operator_image())
UID = GID = 65532  # the Dockerfile's USER and the chart's podSecurityContext
IMPORT_ALL = """
import importlib, pkgutil, qwen_operator
for m in pkgutil.walk_packages(qwen_operator.__path__, "qwen_operator."):
    if not m.name.endswith("__main__"):
        try:
            importlib.import_module(m.name)
        except Exception as exc:
            print(f"{m.name}: {exc!r}")
"""
QWENCTL = "from qwen_operator.cli import main; raise SystemExit(main())"  # the host's qwenctl (push)


@pytest.fixture(scope="module")
def image() -> str:
    """The image built from this tree (``make image``'s recipe, rebuilt here when stale), or ``QWEN_IMAGE``."""
    if "QWEN_IMAGE" in os.environ:
        if img.inspect_image(IMAGE) is None:
            pytest.fail(f"QWEN_IMAGE={IMAGE}: no such local image", pytrace=False)
        return IMAGE
    missing = img.missing_tools()
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: `make imagetools` (part of `make setup`) installs them")
    try:
        return img.ensure_image(IMAGE)
    except img.ContainersRefusedError as exc:
        pytest.skip(f"this host refuses containers: {exc}")


def owned_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, UID, GID)
    return path


def test_help_runs_as_the_non_root_image_user(image: str) -> None:
    with img.container(image) as ctr:
        assert ctr.config()["User"] == f"{UID}:{GID}"
        help_ = ctr.run(["--help"])
        assert help_.returncode == 0, help_.stderr
        assert help_.stdout.startswith("usage: qwenctl") and "operator" in help_.stdout
        ids = ctr.run(
            ["sh", "-c", "id -u; id -g; touch /usr/x 2>&1; command -v pip || echo no-pip; echo $HOME"], entrypoint=False
        )
        # kopf names its peering identity after the login name: the uid needs a passwd entry
        user = ctr.run(["python3", "-c", "import getpass; print(getpass.getuser())"], entrypoint=False)
        assert user.returncode == 0 and user.stdout.strip() == "nonroot", user.stderr
        imports = ctr.run(["python3", "-c", IMPORT_ALL], entrypoint=False)
    assert imports.returncode == 0, imports.stderr
    # every module imports on the base's python (Debian's stdlib split included), except the
    # pytest fixtures, whose pytest is a test dependency only
    failed = [line for line in imports.stdout.splitlines() if line]
    assert all(f.startswith("qwen_operator.testing.") and "'pytest'" in f for f in failed), failed
    uid, gid, touch, pip, home = ids.stdout.strip().splitlines()
    assert home == "/home/nonroot"
    assert (uid, gid) == (str(UID), str(GID))
    assert "Permission denied" in touch  # the image's files are root's, not the runtime user's
    assert pip == "no-pip"  # no installer left in the final stage


@pytest.mark.s3
def test_model_pull_from_s3_into_a_cache_owned_by_the_image_user(
    image: str, s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    Checkpoint(Shape().scaled(0.05, layers=2, vocab=2048)).write(src)
    reg = s3_bucket.registry_url()
    host = subprocess.run(
        [
            sys.executable,
            "-c",
            QWENCTL,
            "model",
            "push",
            str(src),
            "--registry",
            reg,
            "--version",
            "v1",
            "--tag",
            "stable",
        ],
        env=s3_bucket.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert host.returncode == 0, host.stderr
    cache = owned_dir(tmp_path / "cache")
    aws = {k: v for k, v in s3_bucket.env.items() if k.startswith("AWS_")}
    with img.container(image, volumes=[f"{cache}:/var/cache/qwen"], env=aws) as ctr:
        pull = ctr.run(["model", "pull", "--registry", reg, "--tag", "stable", "--cache", "/var/cache/qwen"])
        assert pull.returncode == 0, pull.stderr + pull.stdout
        current = cache / "models" / "models-qwen3-test" / "current"
        assert current.is_symlink()
        files = sorted(p.relative_to(src) for p in src.rglob("*") if p.is_file())
        target = current.resolve()
        assert files and files == sorted(p.relative_to(target) for p in target.rglob("*") if p.is_file())
        assert all(filecmp.cmp(src / f, target / f, shallow=False) for f in files)
        assert {(p.stat().st_uid, p.stat().st_gid) for p in target.rglob("*")} == {(UID, GID)}
        # a missing version is one error line, no traceback, and leaves `current` alone
        bad = ctr.run(["model", "pull", "--registry", reg, "--version", "v9", "--cache", "/var/cache/qwen"])
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and bad.stderr.startswith("error:"), bad.stderr
    assert current.resolve().is_dir()


def portable_kubeconfig(sandbox: Sandbox, dest: Path) -> Path:
    """The sandbox admin kubeconfig with its files inlined, readable only by the image user."""
    doc = yaml.safe_load(sandbox.kubeconfig.read_text())
    for entry in doc["clusters"]:
        ca = entry["cluster"].pop("certificate-authority")
        entry["cluster"]["certificate-authority-data"] = base64.b64encode(Path(ca).read_bytes()).decode()
    for entry in doc["users"]:
        for key in ("client-certificate", "client-key"):
            entry["user"][f"{key}-data"] = base64.b64encode(Path(entry["user"].pop(key)).read_bytes()).decode()
    owned_dir(dest.parent)
    dest.write_text(yaml.safe_dump(doc))
    dest.chmod(0o600)
    os.chown(dest, UID, GID)
    return dest


@pytest.fixture
def operator_in_image(image: str, sandbox: Sandbox, qwen_crd: Path, namespace: str, tmp_path: Path) -> Iterator[Path]:
    kubeconfig = portable_kubeconfig(sandbox, tmp_path / "kube" / "config")
    log = tmp_path / "operator.log"
    args = ["operator", "run", "--kubeconfig", "/etc/kube/config", "--namespace", namespace, "--resync-seconds", "5"]
    with img.container(image, volumes=[f"{kubeconfig.parent}:/etc/kube:ro"]) as ctr, open(log, "wb") as out:
        proc = subprocess.Popen(ctr.command(args), stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while "qwen-operator starting" not in log.read_text(errors="replace"):
                assert proc.poll() is None, f"operator exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"operator did not start:\n{log.read_text()[-3000:]}"
                time.sleep(0.2)
            yield log
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            print(f"--- operator (image) log tail ---\n{log.read_text(errors='replace')[-3000:]}")


@pytest.mark.cluster
def test_operator_run_in_the_image_reconciles_on_the_sandbox(
    kube_api: Any, namespace: str, operator_in_image: Path
) -> None:
    qwds = Qwd(kube_api, namespace)
    qwds.create(resource("imaged", replicas=1, gpu_types=["L40S"]))
    wait_for("a pool Deployment from the operator in the image", lambda: bool(qwds.deployments("imaged")), timeout=90)
    assert list(qwds.deployments("imaged")) == ["imaged-l40s"]
    wait_for("status pools written", lambda: bool((qwds.get("imaged").get("status") or {}).get("pools")), timeout=60)
    assert "Traceback" not in operator_in_image.read_text(errors="replace")


def test_push_to_a_registry_pull_by_digest_and_pin_the_chart(image: str, tmp_path: Path) -> None:
    """README "Install on a real cluster": `buildah push --digestfile`, then the chart pinned by that digest."""
    from qwen_operator.modelsync import ociserver  # the real CNCF distribution registry (make setup builds it)
    from qwen_operator.packaging.chart import find, template

    try:
        ociserver.locate()
    except Exception as exc:  # noqa: BLE001 - the message says how to build it
        pytest.fail(str(exc), pytrace=False)
    with ociserver.OCIServer(data_dir=tmp_path / "registry") as registry:
        repo = f"{registry.host}/platform/qwen-operator"
        digest_file = tmp_path / "digest"
        push = subprocess.run(
            [
                "buildah",
                "push",
                "--tls-verify=false",
                "--digestfile",
                str(digest_file),
                image,
                f"docker://{repo}:0.1.0",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert push.returncode == 0, push.stderr
        digest = digest_file.read_text().strip()
        assert re.fullmatch(r"sha256:[a-f0-9]{64}", digest), digest  # what the chart's image.digest accepts
        pinned = f"{repo}@{digest}"
        pull = subprocess.run(
            ["buildah", "pull", "--tls-verify=false", pinned], capture_output=True, text=True, timeout=300
        )
        assert pull.returncode == 0, pull.stderr
    try:
        with img.container(pinned) as ctr:
            help_ = ctr.run(["--help"])
        assert help_.returncode == 0 and help_.stdout.startswith("usage: qwenctl"), help_.stderr
    finally:
        subprocess.run(["buildah", "rmi", pinned], capture_output=True)
    objects = template(f"image.repository={repo}", f"image.digest={digest}")
    deployment = find(objects, "Deployment")[0]
    assert [c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]] == [pinned]
    config_map = next(c for c in find(objects, "ConfigMap") if c["metadata"]["name"].endswith("-config"))
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    assert config["operatorImage"] == pinned  # the model-pull init container of every server pod

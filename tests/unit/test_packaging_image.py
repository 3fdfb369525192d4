"""The operator image recipe and the chart agree: same user, same entry point, same version."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import yaml

from qwen_operator.packaging.generate import VALUES_YAML
from qwen_operator.render import default_operator_image

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()


def _instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_multi_stage_slim_python_non_root_qwenctl() -> None:
    ins = _instructions()
    froms = [rest for word, rest in ins if word == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS build")
    assert ("ARG", "PYTHON_IMAGE=python:3.11-slim") in ins
    assert ("ENTRYPOINT", '["qwenctl"]') in ins
    users = [rest for word, rest in ins if word == "USER"]
    assert users == ["65532:65532"]
    # USER comes after every RUN: nothing in the final image runs as root at start.
    last_user = max(i for i, (w, _) in enumerate(ins) if w == "USER")
    assert all(i < last_user for i, (w, _) in enumerate(ins) if w == "RUN")


def test_chart_runs_as_the_image_user() -> None:
    values = yaml.safe_load(VALUES_YAML.read_text())
    assert values["podSecurityContext"]["runAsUser"] == 65532
    assert values["podSecurityContext"]["runAsGroup"] == 65532


def test_build_context_has_what_pip_install_needs() -> None:
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") :][:4] == ["*", "!pyproject.toml", "!README.md", "!operator/"]
    for copied in re.findall(r"^COPY (?!--)(.+?) \S+$", DOCKERFILE, flags=re.M):
        for path in copied.split():
            assert (REPO / path).exists(), path


def test_chart_app_version_is_the_package_version_and_the_default_image() -> None:
    chart = yaml.safe_load((REPO / "charts" / "qwen-operator" / "Chart.yaml").read_text())
    assert chart["appVersion"] == version("qwen-operator")
    values = yaml.safe_load(VALUES_YAML.read_text())
    assert f"{values['image']['repository']}:{chart['appVersion']}" == default_operator_image()

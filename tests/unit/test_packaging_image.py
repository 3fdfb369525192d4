"""The operator image recipe and the chart agree (user, entry point, version); the buildah build helpers."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from qwen_operator.packaging import image
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


def test_both_stages_use_the_base_arg_and_a_virtual_environment() -> None:
    ins = _instructions()
    assert [rest.split()[0] for word, rest in ins if word == "FROM"] == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]
    # no dependency on where the base keeps python or on a pip-managed system site (Debian's is not)
    runs = [rest for word, rest in ins if word == "RUN"]
    assert any("python3 -m venv /opt/build" in r for r in runs)
    final = next(r for r in runs if "from=build" in r)
    assert "python3 -m venv /opt/qwen-operator" in final and "--no-index" in final
    env = next(rest for word, rest in ins if word == "ENV" and "PATH=" in rest)
    assert "PATH=/opt/qwen-operator/bin:" in env
    # the USER has a passwd entry (getpass.getuser(), which kopf calls, raises for an unknown uid)
    assert "groupadd --gid 65532 nonroot" in final and "useradd --uid 65532 --gid 65532" in final


def test_context_digest_covers_exactly_the_dockerignore_allow_list(tmp_path: Path) -> None:
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert allowed | {"Dockerfile", ".dockerignore"} == set(image.CONTEXT_FILES) | set(image.CONTEXT_DIRS)

    for name in image.CONTEXT_FILES:
        (tmp_path / name).write_text(name)
    pkg = tmp_path / "operator" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "a.py").write_text("A = 1\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "t.py").write_text("x")
    before = image.context_digest(tmp_path)
    (tmp_path / "tests" / "t.py").write_text("y")  # not in the build context
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    assert image.context_digest(tmp_path) == before
    (pkg / "a.py").write_text("A = 2\n")
    assert image.context_digest(tmp_path) != before
    (pkg / "a.py").write_text("A = 1\n")
    (tmp_path / "Dockerfile").write_text("FROM other\n")
    assert image.context_digest(tmp_path) != before


def test_base_recipe_names_its_inputs() -> None:
    assert image.base_recipe() == image.base_recipe()
    assert image.base_recipe("http://mirror.example/debian") != image.base_recipe()
    assert image.BASE_TAG.startswith("localhost/")  # never pushed by accident under a real registry name


def test_build_without_the_tools_is_one_error_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert image.main(["build"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == ["error: missing buildah mmdebstrap: `make image` installs them (Debian packages)"]


def test_container_runs_the_image_entry_point_as_the_image_user(monkeypatch: pytest.MonkeyPatch) -> None:
    config = {"Entrypoint": ["qwenctl"], "User": "65532:65532"}
    monkeypatch.setattr(image, "inspect_image", lambda ref: {"OCIv1": {"config": config}} if ref == "img" else None)
    monkeypatch.setattr(image, "runtime_args", lambda ref: ["--runtime", "/usr/sbin/runc"])
    ctr = image.Container("img", ["/c:/cache"], {"AWS_REGION": "x"}, name="ctr")
    cmd = ctr.command(["model", "pull"])
    assert cmd[:4] == ["buildah", "run", "--runtime", "/usr/sbin/runc"]
    assert cmd[cmd.index("ctr") :] == ["ctr", "--", "qwenctl", "model", "pull"]
    assert "--user" not in cmd  # the config's USER applies
    assert ["--volume", "/c:/cache"] == cmd[cmd.index("--volume") : cmd.index("--volume") + 2]
    assert ctr.command(["id"], entrypoint=False)[-2:] == ["--", "id"]
    with pytest.raises(image.ImageError, match="make image"):
        image.Container("missing").command(["--help"])


def test_ensure_image_rebuilds_only_a_stale_image(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    built: list[str] = []
    monkeypatch.setattr(image, "context_digest", lambda repo=image.REPO: "tree")
    monkeypatch.setattr(image, "build_base", lambda **kw: "base")
    monkeypatch.setattr(image, "build_image", lambda tag, base, ca, log: built.append(f"{tag} on {base}"))
    monkeypatch.setattr(image, "missing_tools", lambda: [])
    monkeypatch.setattr(image, "image_labels", lambda ref: {image.CONTEXT_LABEL: "tree"})
    assert image.ensure_image("img") == "img" and built == []
    monkeypatch.setattr(image, "image_labels", lambda ref: {image.CONTEXT_LABEL: "older"})
    assert image.ensure_image("img") == "img" and built == ["img on base"]
    monkeypatch.setattr(image, "missing_tools", lambda: ["mmdebstrap"])
    with pytest.raises(image.ImageError, match="missing mmdebstrap: `make image` installs them"):
        image.ensure_image("img")

"""Generated packaging files are fresh, and the generator keeps its promises."""

from __future__ import annotations

import io

import pytest
import yaml
from pydantic import BaseModel

from qwen_operator.packaging import generate, helm
from qwen_operator.packaging.values import Values


@pytest.fixture(scope="module")
def rendered() -> dict[object, str]:
    try:
        helm.locate()
    except helm.MissingHelmError as exc:
        pytest.fail(str(exc))
    return dict(generate.render_all())


def test_generated_files_are_fresh(rendered: dict[object, str]) -> None:
    out = io.StringIO()
    stale = generate.check(rendered, out.write)  # type: ignore[arg-type]
    assert not stale, f"stale: {stale}; run `make generate`\n{out.getvalue()}"


def test_check_reports_a_stale_file_with_a_diff(rendered: dict[object, str]) -> None:
    changed = dict(rendered)
    changed[generate.VALUES_YAML] = rendered[generate.VALUES_YAML].replace("logFormat: json", "logFormat: plain")
    out = io.StringIO()
    assert generate.check(changed, out.write) == [generate.VALUES_YAML]  # type: ignore[arg-type]
    assert "-  logFormat: json" in out.getvalue() and "+  logFormat: plain" in out.getvalue()


def test_cli_check_exits_zero_when_fresh() -> None:
    assert generate.main(["--check"]) == 0


def _fields(model: type[BaseModel], indent: str = "") -> list[str]:
    """``<indent><key>:`` of every value the models declare, nested models included."""
    out = []
    for name, field in model.model_fields.items():
        out.append(f"{indent}{field.alias or name}:")
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _fields(ann, indent + "  ")
    return out


def test_values_yaml_documents_every_value() -> None:
    text = generate.values_yaml()
    lines = text.splitlines()
    fields = _fields(Values)
    assert len(fields) > 60
    index = 0
    for key in fields:  # in file order: each search starts after the previous key
        index = next(i for i in range(index + 1, len(lines)) if lines[i] == key or lines[i].startswith(key + " "))
        assert lines[index - 1].lstrip().startswith("# "), f"{key.strip()} has no documentation in values.yaml"
    assert yaml.safe_load(text) == Values().model_dump(by_alias=True)


def test_install_bundle_is_the_chart_with_a_namespace(rendered: dict[object, str]) -> None:
    docs = [d for d in yaml.safe_load_all(rendered[generate.INSTALL_YAML]) if d]
    assert docs[0] == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "qwen-operator", "labels": {"pod-security.kubernetes.io/enforce": "restricted"}},
    }
    kinds = {d["kind"] for d in docs}
    assert {"CustomResourceDefinition", "Deployment", "ServiceAccount", "ClusterRole", "ConfigMap"} <= kinds
    assert all(d["metadata"].get("namespace", "qwen-operator") == "qwen-operator" for d in docs)


def test_crd_template_refuses_template_delimiters(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    from pathlib import Path

    crd = Path(str(tmp_path)) / "crd.yaml"
    crd.write_text(generate.CRD_FILE.read_text().replace("QwenDeployment serves", "QwenDeployment {{ serves"))
    monkeypatch.setattr(generate, "CRD_FILE", crd)
    with pytest.raises(ValueError, match="template action"):
        generate.crd_template()

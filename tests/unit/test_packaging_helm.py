"""The Helm CLI build: cache location, release-like ldflags, actionable errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwen_operator.packaging import helm


def test_cache_root_honours_qwen_operator_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QWEN_OPERATOR_CACHE", str(tmp_path))
    assert helm.binary_path() == tmp_path / f"helm-{helm.VERSION}" / "bin" / "helm"


def test_default_cache_is_under_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QWEN_OPERATOR_CACHE", raising=False)
    assert helm.home() == Path.home() / ".cache" / "qwen-operator" / f"helm-{helm.VERSION}"


def test_ldflags_set_version_and_kubernetes_minor() -> None:
    flags = helm.ldflags()
    assert f"-X helm.sh/helm/v3/internal/version.version={helm.VERSION}" in flags
    assert "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=37" in flags
    assert "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=37" in flags


def test_missing_helm_says_how_to_build_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QWEN_OPERATOR_CACHE", str(tmp_path))
    with pytest.raises(helm.MissingHelmError, match=r"make setup.*packaging\.helm build"):
        helm.locate()
    assert helm.main(["path"]) == 2


def test_build_is_a_no_op_when_present(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QWEN_OPERATOR_CACHE", str(tmp_path))
    helm.binary_path().parent.mkdir(parents=True)
    helm.binary_path().write_text("#!/bin/sh\n")
    monkeypatch.setenv("PATH", "")  # would fail if it tried to run `go`
    assert helm.build() == helm.binary_path()


def test_built_helm_reports_its_version() -> None:
    import subprocess

    try:
        binary = helm.locate()
    except helm.MissingHelmError as exc:
        pytest.fail(str(exc))
    out = subprocess.run([str(binary), "version", "--short"], capture_output=True, text=True, check=True).stdout
    assert out.startswith(helm.VERSION)

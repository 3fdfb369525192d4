"""``helm lint --strict`` passes on the chart with default and with non-default values."""

from __future__ import annotations

import pytest

from qwen_operator.packaging import helm
from qwen_operator.packaging.chart import CHART, run


@pytest.mark.parametrize(
    "sets",
    [
        [],
        ["watchNamespaces={llm,batch}", "rbac.serviceMonitors=false", "crds.keep=false"],
        ["serviceMonitor.enabled=true", "grafanaDashboard.enabled=true", "operator.verbose=true"],
        ["rbac.create=false", "serviceAccount.create=false", "serviceAccount.name=ops", "crds.enabled=false"],
    ],
    ids=["defaults", "namespaced", "monitoring", "bring-your-own-identity"],
)
def test_helm_lint_strict(sets: list[str]) -> None:
    try:
        helm.locate()
    except helm.MissingHelmError as exc:
        pytest.fail(str(exc))
    args = ["lint", "--strict", str(CHART)]
    for expr in sets:
        args += ["--set", expr]
    out = run(*args)
    assert "1 chart(s) linted, 0 chart(s) failed" in out

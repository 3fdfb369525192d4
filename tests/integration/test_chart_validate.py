"""Every object the chart renders passes the real API server's validation (``kubectl apply
--dry-run=server``: OpenAPI schema, strict field validation, admission), and the operator
pod passes the ``restricted`` Pod Security Standard enforced by the real admission plugin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from qwen_operator.packaging import chart
from qwen_operator.testing.cluster import Kubectl

pytestmark = pytest.mark.cluster

VALUE_SETS = {
    "defaults": [],
    "namespaced": ["rbac.serviceMonitors=false", "crds.keep=false"],
    "monitoring": ["grafanaDashboard.enabled=true", "serviceMonitor.enabled=true", "operator.verbose=true"],
}


@pytest.mark.parametrize("sets", list(VALUE_SETS.values()), ids=list(VALUE_SETS))
def test_rendered_objects_pass_server_side_validation(
    kubectl: Kubectl, qwen_crd: Path, namespace: str, tmp_path: Path, sets: list[str]
) -> None:
    if sets == VALUE_SETS["namespaced"]:
        sets = [*sets, f"watchNamespaces={{{namespace}}}"]
    objects = chart.template(*sets, release=f"v-{namespace[-5:]}", namespace=namespace)
    # The sandbox has no Prometheus Operator: its ServiceMonitor CRD is not there to validate against.
    skipped = [o for o in objects if o["kind"] == "ServiceMonitor"]
    checked = [o for o in objects if o["kind"] != "ServiceMonitor"]
    assert len(skipped) == (1 if "serviceMonitor.enabled=true" in sets else 0)
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(checked))
    out = kubectl("apply", "--dry-run=server", "--validate=strict", "-f", str(path)).stdout
    assert out.count("(server dry run)") == len(checked), out


def test_operator_pod_meets_the_restricted_pod_security_standard(
    kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    (dep,) = chart.find(chart.template(namespace=namespace), "Deployment")
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "operator-pss", "namespace": namespace},
        "spec": {**dep["spec"]["template"]["spec"], "serviceAccountName": "default"},
    }
    path = tmp_path / "pod.yaml"
    path.write_text(yaml.safe_dump(pod))
    assert "created (server dry run)" in kubectl("create", "--dry-run=server", "-f", str(path)).stdout
    # The same admission rejects a pod that is not restricted: the check has teeth.
    pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    path.write_text(yaml.safe_dump(pod))
    proc = kubectl("create", "--dry-run=server", "-f", str(path), check=False)
    assert proc.returncode != 0 and "allowPrivilegeEscalation" in proc.stderr, proc.stderr

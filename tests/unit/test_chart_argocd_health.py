"""The Argo CD health check for QwenDeployment, run by a real Lua interpreter (lupa), and the
GitOps manifests around it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from qwen_operator.testing.argocd import HEALTH_LUA, health

REPO = Path(__file__).resolve().parents[2]
GITOPS = REPO / "manifests" / "gitops"
HEALTH_KEY = "resource.customizations.health.serving.qwenops.io_QwenDeployment"


def qwd(generation: int = 2, observed: int | None = 2, **conditions: tuple[str, str, str]) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "serving.qwenops.io/v1alpha1", "kind": "QwenDeployment"}
    obj["metadata"] = {"name": "chat", "namespace": "llm", "generation": generation}
    if observed is None:
        return obj
    obj["status"] = {
        "observedGeneration": observed,
        "conditions": [
            {"type": t, "status": s, "reason": r, "message": m, "observedGeneration": observed}
            for t, (s, r, m) in conditions.items()
        ],
    }
    return obj


READY = ("True", "AllReplicasReady", "3/3 replicas ready.")
NOT_READY = ("False", "ReplicasNotReady", "1/3 replicas ready.")
STABLE = ("False", "Stable", "All pools match the plan.")
ROLLING = ("True", "RollingOut", "1/3 replicas ready; pools A10G 1/3.")
FINE = ("False", "AsExpected", "Placement: A10G x3.")
NO_GPU = ("True", "GPUTypeNotInCluster", "No schedulable node has A100-80GB GPUs.")


@pytest.mark.parametrize(
    ("obj", "status", "message"),
    [
        (qwd(Ready=READY, Progressing=STABLE, Degraded=FINE), "Healthy", "AllReplicasReady: 3/3 replicas ready."),
        (qwd(Ready=NOT_READY, Progressing=ROLLING, Degraded=FINE), "Progressing", "RollingOut: 1/3"),
        (qwd(Ready=READY, Progressing=ROLLING, Degraded=FINE), "Progressing", "RollingOut"),
        (qwd(Ready=NOT_READY, Progressing=STABLE, Degraded=FINE), "Progressing", "ReplicasNotReady: 1/3"),
        (qwd(Ready=NOT_READY, Progressing=STABLE, Degraded=NO_GPU), "Degraded", "GPUTypeNotInCluster: No schedulable"),
        (qwd(Ready=READY, Progressing=STABLE, Degraded=NO_GPU), "Degraded", "GPUTypeNotInCluster"),
        (qwd(observed=None), "Progressing", "Waiting for the operator to report status."),
        (qwd(generation=3, observed=2, Ready=READY, Degraded=FINE), "Progressing", "observe generation 3"),
        (qwd(Degraded=FINE), "Progressing", "Waiting for the Ready condition."),
    ],
    ids=[
        "ready",
        "rolling-out",
        "ready-but-rolling",
        "replicas-not-ready",
        "no-gpu-type",
        "ready-but-degraded",
        "no-status-yet",
        "stale-generation",
        "no-ready-condition",
    ],
)
def test_health(obj: dict[str, Any], status: str, message: str) -> None:
    got_status, got_message = health(obj)
    assert got_status == status
    assert message in got_message


def test_stale_condition_is_ignored() -> None:
    """A Ready=True computed for generation 1 says nothing about generation 2."""
    obj = qwd(Ready=READY, Progressing=STABLE, Degraded=FINE)
    obj["status"]["conditions"][0]["observedGeneration"] = 1
    assert health(obj) == ("Progressing", "Waiting for the Ready condition.")


def test_argocd_cm_carries_the_same_script() -> None:
    cm = yaml.safe_load((GITOPS / "argocd" / "argocd-cm.yaml").read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "argocd-cm"
    assert cm["data"][HEALTH_KEY] == HEALTH_LUA.read_text()
    assert health(qwd(Ready=READY, Progressing=STABLE, Degraded=FINE), cm["data"][HEALTH_KEY])[0] == "Healthy"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_argocd_applications_point_at_real_paths_without_ignore_differences() -> None:
    apps = [d for p in sorted((GITOPS / "argocd").glob("application*.yaml")) for d in _docs(p)]
    assert {a["metadata"]["name"] for a in apps} == {"qwen-operator", "qwen-workloads"}
    for app in apps:
        assert app["kind"] == "Application"
        assert (REPO / app["spec"]["source"]["path"]).is_dir()
        assert "ignoreDifferences" not in app["spec"]  # the autoscaler never writes spec
        assert "ServerSideApply=true" in app["spec"]["syncPolicy"]["syncOptions"]
    operator = next(a for a in apps if a["metadata"]["name"] == "qwen-operator")
    assert operator["spec"]["source"]["helm"]["valuesObject"]["crds"]["keep"] is True


def test_flux_release_and_kustomizations_are_wired() -> None:
    flux = GITOPS / "flux"
    sources = {d["kind"]: d for d in _docs(flux / "sources.yaml")}
    assert set(sources) == {"GitRepository", "HelmRepository"}
    (release,) = _docs(flux / "release" / "helmrelease.yaml")
    assert release["kind"] == "HelmRelease"
    chart = release["spec"]["chart"]["spec"]
    assert chart["sourceRef"] == {"kind": "GitRepository", "name": sources["GitRepository"]["metadata"]["name"]}
    assert (REPO / chart["chart"]).is_dir()
    kustomizations = {d["metadata"]["name"]: d for d in _docs(flux / "kustomizations.yaml")}
    assert (REPO / kustomizations["qwen-operator"]["spec"]["path"] / "helmrelease.yaml").is_file()
    assert kustomizations["qwen-workloads"]["spec"]["dependsOn"] == [{"name": "qwen-operator"}]
    assert (REPO / kustomizations["qwen-workloads"]["spec"]["path"]).is_dir()

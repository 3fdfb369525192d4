"""The multi-tenant security model on the real control plane (issue #11, item 3).

- Pod Security admission (the kube-apiserver's built-in plugin) admits the rendered server and
  router pods with a PVC model cache in namespaces enforcing ``baseline`` and ``restricted``;
- the hostPath cache mode is refused by ``baseline`` (hostPath volumes) and admitted only at
  ``privileged``, as the README says;
- a resource naming a cache directory outside the operator config's allowlist gets
  ``Degraded=True CachePathNotAllowed`` naming the allowlist, and no Deployment at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_controller import Qwd, resource  # the harness of the controller tests

from qwen_operator.sandbox.cluster import Sandbox
from qwen_operator.testing.operator import OperatorProcess
from qwen_operator.testing.wait import wait_for

pytestmark = pytest.mark.cluster
ENFORCE = "pod-security.kubernetes.io/enforce"


@pytest.fixture
def operator(sandbox: Sandbox, qwen_crd: Path, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump({"nodeCache": {"path": "/var/lib/qwen-operator/models", "allowedPaths": ["/mnt/models"]}})
    )
    op = OperatorProcess(
        sandbox.kubeconfig, tmp_path / "operator.log", extra=["--namespace", namespace, "--config", str(config)]
    ).start()
    try:
        yield op
    finally:
        op.stop()
        print(f"--- operator log tail ---\n{op.tail(40)}")


def pvc_cache(qwds: Qwd, name: str) -> dict[str, Any]:
    """A bound ReadWriteMany claim (a statically provisioned volume; the pods only reference the claim)."""
    qwds.core.create_persistent_volume(
        {
            "metadata": {"name": f"{qwds.ns}-{name}"},
            "spec": {
                "capacity": {"storage": "100Gi"},
                "accessModes": ["ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "nfs": {"server": "nfs.invalid", "path": f"/models/{qwds.ns}"},
                "claimRef": {"namespace": qwds.ns, "name": name},
            },
        }
    )
    qwds.core.create_namespaced_persistent_volume_claim(
        qwds.ns,
        {
            "metadata": {"name": name},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "volumeName": f"{qwds.ns}-{name}",
                "resources": {"requests": {"storage": "100Gi"}},
            },
        },
    )
    return {"type": "pvc", "claimName": name}


def with_cache(name: str, cache: dict[str, Any]) -> dict[str, Any]:
    body = resource(name, replicas=1, gpu_types=["L40S"])
    body["spec"]["model"]["cache"] = cache
    return body


def pods_of(qwds: Qwd, name: str) -> list[Any]:
    return list(qwds.core.list_namespaced_pod(qwds.ns, label_selector=f"serving.qwenops.io/deployment={name}").items)


@pytest.mark.parametrize("level", ["baseline", "restricted"])
def test_a_pvc_cache_is_admitted_at_baseline_and_restricted(
    level: str, kube_api: Any, namespace: str, operator: OperatorProcess, kubectl: Any
) -> None:
    kubectl("label", "namespace", namespace, f"{ENFORCE}={level}", f"{ENFORCE}-version=latest")
    qwds = Qwd(kube_api, namespace)
    try:
        qwds.create(with_cache("psa", pvc_cache(qwds, "models")))
        wait_for(f"Ready under {level}", lambda: qwds.ready("psa"), timeout=180)
        admitted(qwds)
    finally:
        qwds.core.delete_persistent_volume(f"{namespace}-models")  # cluster-scoped: not in the namespace
    assert operator.alive(), operator.tail()


def admitted(qwds: Qwd) -> None:
    pods = pods_of(qwds, "psa")
    names = {p.metadata.labels.get("app.kubernetes.io/component") for p in pods}
    assert {"server", "router"} <= names, names  # the router's pods were admitted too
    server = next(p for p in pods if p.metadata.labels.get("app.kubernetes.io/component") == "server")
    assert server.spec.automount_service_account_token is False
    for c in [*server.spec.init_containers, *server.spec.containers]:
        assert c.security_context.read_only_root_filesystem is True, c.name
        assert c.security_context.run_as_user in (None, 1000), c.name  # non-root, the pod's user
    deg = qwds.condition("psa", "Degraded")
    assert deg is not None and deg["status"] == "False", deg


def test_the_hostpath_cache_needs_privileged(
    kube_api: Any, namespace: str, operator: OperatorProcess, kubectl: Any
) -> None:
    kubectl("label", "namespace", namespace, f"{ENFORCE}=baseline")
    qwds = Qwd(kube_api, namespace)
    qwds.create(with_cache("host", {}))
    cond = wait_for(
        "Degraded=ReplicaFailure (baseline refuses hostPath volumes)",
        lambda: (c := qwds.condition("host", "Degraded")) and c["reason"] == "ReplicaFailure" and c,
        timeout=90,
    )
    assert "violates PodSecurity" in cond["message"] and "hostPath" in cond["message"], cond
    assert not [p for p in pods_of(qwds, "host") if p.metadata.labels.get("app.kubernetes.io/component") == "server"]
    kubectl("label", "--overwrite", "namespace", namespace, f"{ENFORCE}=privileged")
    wait_for("Ready once the namespace is privileged", lambda: qwds.ready("host"), timeout=180)
    (server,) = [p for p in pods_of(qwds, "host") if p.metadata.labels.get("app.kubernetes.io/component") == "server"]
    (cache,) = [v for v in server.spec.volumes if v.name == "model-cache"]
    assert cache.host_path.path == f"/var/lib/qwen-operator/models/{namespace}"  # its own directory


def test_a_cache_path_outside_the_allowlist_gets_a_condition_and_no_pods(
    kube_api: Any, namespace: str, operator: OperatorProcess
) -> None:
    qwds = Qwd(kube_api, namespace)
    qwds.create(with_cache("escape", {"path": "/var/lib/kubelet"}))
    cond = wait_for(
        "Degraded=CachePathNotAllowed",
        lambda: (c := qwds.condition("escape", "Degraded")) and c["reason"] == "CachePathNotAllowed" and c,
        timeout=60,
    )
    assert cond["status"] == "True"
    assert "/var/lib/kubelet is not an allowed node cache directory" in cond["message"], cond
    assert "/var/lib/qwen-operator/models, /mnt/models" in cond["message"], cond
    ready = qwds.condition("escape", "Ready")
    assert ready is not None and ready["status"] == "False" and ready["reason"] == "CachePathNotAllowed"
    assert qwds.deployments("escape") == {} and pods_of(qwds, "escape") == []
    # an allowed directory: the same resource renders its pool, mounted per namespace
    qwds.patch("escape", {"spec": {"model": {"cache": {"path": "/mnt/models"}}}})
    deps = wait_for("a pool Deployment", lambda: qwds.deployments("escape"), timeout=60)
    (dep,) = deps.values()
    (cache,) = [v for v in dep.spec.template.spec.volumes if v.name == "model-cache"]
    assert cache.host_path.path == f"/mnt/models/{namespace}"

"""The multi-tenant security model of the rendered server pods (issue #11, item 3).

- the node cache directory comes from the cluster admin's allowlist (``nodeCache.path`` and
  ``nodeCache.allowedPaths``); anything else is a ``CachePathNotAllowed`` condition naming the
  allowlist, and no pods are rendered;
- each namespace mounts its own ``<path>/<namespace>``;
- no ServiceAccount token; every container without privilege escalation, capabilities or a
  writable root filesystem; the server always non-root, model-pull non-root with a PVC cache.
"""

from __future__ import annotations

from typing import Any

import pytest

from qwen_operator.api import QwenDeploymentSpec
from qwen_operator.catalog import Catalog, load_catalog
from qwen_operator.controller import conditions as cond
from qwen_operator.controller.cli import controller_config, parse_config
from qwen_operator.controller.reconcile import Observed, compute
from qwen_operator.planner import plan
from qwen_operator.render import RenderContext, render
from qwen_operator.render.workload import OperatorDefaults, cache_path_problem

ADMIN = OperatorDefaults(node_cache_path="/mnt/nvme/models", allowed_cache_paths=("/data/models/",))


def make_spec(engine: str = "tgi", **cache: Any) -> QwenDeploymentSpec:
    return QwenDeploymentSpec.model_validate(
        {
            "model": {
                "name": "Qwen/Qwen3-14B",
                "registry": "s3://models/qwen3-14b",
                "quantization": "fp8",
                "cache": cache,
            },
            "placement": {"gpuTypes": ["L40S"]},
            "runtime": {"engine": engine},
        }
    )


def pod_spec(spec: QwenDeploymentSpec, namespace: str = "team-a", defaults: OperatorDefaults = ADMIN) -> dict[str, Any]:
    ctx = RenderContext(name="chat", namespace=namespace, defaults=defaults)
    objs = render(spec, plan(spec, Catalog(), free_gpus={"L40S": 4}), ctx, Catalog())
    (dep,) = [o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "chat-l40s"]
    pod: dict[str, Any] = dep["spec"]["template"]["spec"]
    return pod


def host_path(pod: dict[str, Any]) -> str:
    (cache,) = [v for v in pod["volumes"] if v["name"] == "model-cache"]
    return str(cache["hostPath"]["path"])


# -- the allowlist -------------------------------------------------------------------------
def test_the_admins_directories_are_allowed_and_nothing_else() -> None:
    assert cache_path_problem(make_spec(), ADMIN) is None  # unset: nodeCache.path
    assert cache_path_problem(make_spec(path="/mnt/nvme/models"), ADMIN) is None
    assert cache_path_problem(make_spec(path="/data/models"), ADMIN) is None  # trailing "/" in the config
    assert cache_path_problem(make_spec(path="/data/models/"), ADMIN) is None
    for path in ("/", "/etc", "/var/lib/kubelet", "/data", "/data/models/x", "/data/models/../../etc", "/mnt/nvme"):
        problem = cache_path_problem(make_spec(path=path), ADMIN)
        assert problem is not None, path
        assert problem.startswith(f"spec.model.cache.path: {path} is not an allowed node cache directory")
        assert "allows /mnt/nvme/models, /data/models (nodeCache.path, nodeCache.allowedPaths)" in problem


def test_the_built_in_default_is_the_only_directory_without_a_config() -> None:
    assert cache_path_problem(make_spec(path="/var/lib/qwen-operator/models"), OperatorDefaults()) is None
    assert cache_path_problem(make_spec(path="/mnt/nvme/models"), OperatorDefaults()) is not None


def test_a_pvc_cache_is_not_a_node_directory() -> None:
    assert cache_path_problem(make_spec(type="pvc", claimName="models"), ADMIN) is None


def test_allowed_paths_come_from_the_operator_config() -> None:
    cfg = parse_config({"nodeCache": {"path": "/mnt/nvme/models", "allowedPaths": ["/data/models", "/scratch/m"]}})
    defaults = controller_config(cfg).defaults
    assert defaults.allowed_paths() == ("/mnt/nvme/models", "/data/models", "/scratch/m")
    assert cache_path_problem(make_spec(path="/scratch/m"), defaults) is None
    assert cache_path_problem(make_spec(path="/scratch"), defaults) is not None


def _qwd(cache: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "serving.qwenops.io/v1alpha1",
        "kind": "QwenDeployment",
        "metadata": {"name": "chat", "namespace": "team-a", "uid": "u-1", "generation": 3},
        "spec": {
            "model": {
                "name": "Qwen/Qwen3-14B",
                "registry": "s3://models/qwen3-14b",
                "quantization": "fp8",
                "cache": cache,
            },
            "placement": {"gpuTypes": ["L40S"]},
        },
        "status": {"model": {"targetVersion": "sha256:" + "0" * 64}},
    }


NODE = {
    "metadata": {"name": "l0", "labels": {"nvidia.com/gpu.product": "NVIDIA-L40S"}},
    "spec": {},
    "status": {"allocatable": {"nvidia.com/gpu": "4"}, "conditions": [{"type": "Ready", "status": "True"}]},
}


def test_the_reconciler_refuses_a_path_outside_the_allowlist_with_a_condition_and_no_pods() -> None:
    out = compute(Observed(qwd=_qwd({"path": "/etc"}), nodes=[NODE], defaults=ADMIN), load_catalog(None))
    assert not [m for m in out.apply if m["kind"] == "Deployment"] and not out.delete
    assert out.status is not None
    by_type = {c["type"]: c for c in out.status["conditions"]}
    degraded = by_type[cond.DEGRADED]
    assert (degraded["status"], degraded["reason"]) == ("True", "CachePathNotAllowed")
    assert "/etc is not an allowed node cache directory" in degraded["message"]
    assert "/mnt/nvme/models, /data/models" in degraded["message"]
    assert (by_type[cond.READY]["status"], by_type[cond.READY]["reason"]) == ("False", "CachePathNotAllowed")
    assert degraded["observedGeneration"] == 3
    # the same resource on an allowed path renders its pool, mounted per namespace
    ok = compute(Observed(qwd=_qwd({"path": "/data/models"}), nodes=[NODE], defaults=ADMIN), load_catalog(None))
    (dep,) = [m for m in ok.apply if m["kind"] == "Deployment" and m["metadata"]["name"] == "chat-l40s"]
    assert host_path(dep["spec"]["template"]["spec"]) == "/data/models/team-a"


# -- per-namespace directories -------------------------------------------------------------
def test_each_namespace_mounts_its_own_directory() -> None:
    a, b = host_path(pod_spec(make_spec(), "team-a")), host_path(pod_spec(make_spec(), "team-b"))
    assert (a, b) == ("/mnt/nvme/models/team-a", "/mnt/nvme/models/team-b")
    assert host_path(pod_spec(make_spec(path="/data/models/"), "team-a")) == "/data/models/team-a"
    assert host_path(pod_spec(make_spec(), "team-a", OperatorDefaults(node_cache_path="/"))) == "/team-a"


# -- pod and container security ------------------------------------------------------------
def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod["initContainers"], *pod["containers"]]


@pytest.mark.parametrize("engine", ["tgi", "vllm"])
@pytest.mark.parametrize("cache", [{}, {"type": "pvc", "claimName": "models"}])
def test_every_container_is_locked_down(engine: str, cache: dict[str, Any]) -> None:
    pod = pod_spec(make_spec(engine, **cache))
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in containers(pod):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, c["name"]
        assert "privileged" not in sc
        # a read-only root filesystem: every place written to is a volume
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert "/tmp" in mounts, c["name"]
    server = pod["containers"][0]
    assert "runAsUser" not in server["securityContext"]  # the pod's non-root user
    env = {e["name"]: e.get("value") for e in server["env"]}
    assert env["HOME"].startswith("/tmp") and env["HF_HOME"].startswith("/tmp")  # writable caches
    (pull,) = pod["initContainers"]
    if cache:  # a PVC is writable through fsGroup: model-pull needs no root
        assert (
            pull["securityContext"].get("runAsUser") != 0 and pull["securityContext"].get("runAsNonRoot") is not False
        )
    else:  # the kubelet creates a hostPath directory root-owned
        assert pull["securityContext"]["runAsUser"] == 0


def test_the_server_mounts_the_cache_read_only() -> None:
    pod = pod_spec(make_spec())
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "model-cache"]
    assert mount["readOnly"] is True

"""The sandbox is a real control plane: scheduling on GPU resources, workload controllers,
garbage collection, RBAC, loopback-only listeners, idempotent up and a clean down."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from kubernetes import client

from qwen_operator.sandbox import procs
from qwen_operator.sandbox.cluster import Sandbox
from qwen_operator.testing.cluster import NotTheSandboxError, assert_sandbox_kubeconfig
from qwen_operator.testing.wait import wait_for

pytestmark = pytest.mark.cluster

TOLERATE_GPU = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def gpu_pod(name: str, gpus: int, product: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"nvidia.com/gpu.product": product},
            "tolerations": TOLERATE_GPU,
            "containers": [
                {"name": "tgi", "image": "example/tgi:1", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}
            ],
        },
    }


def pod_ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


def test_gpu_pod_lands_on_matching_node_and_becomes_ready(kube_api: Any, namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_pod(namespace, gpu_pod("l40s-2", 2, "NVIDIA-L40S"))
    pod = wait_for("pod Ready", lambda: (p := core.read_namespaced_pod("l40s-2", namespace)) and pod_ready(p) and p)
    node = core.read_node(pod.spec.node_name)
    assert node.metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-L40S"
    assert pod.status.phase == "Running"


def test_pod_asking_more_gpus_than_any_node_stays_pending_with_scheduler_reason(kube_api: Any, namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_pod(namespace, gpu_pod("too-big", 16, "NVIDIA-A100-SXM4-80GB"))

    def unschedulable() -> str | None:
        p = core.read_namespaced_pod("too-big", namespace)
        for c in p.status.conditions or []:
            if c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable":
                return str(c.message)
        return None

    message = wait_for("Unschedulable condition", unschedulable)
    assert "Insufficient nvidia.com/gpu" in message
    assert core.read_namespaced_pod("too-big", namespace).status.phase == "Pending"


def test_deployment_scales_and_owner_deletion_garbage_collects(kube_api: Any, namespace: str) -> None:
    apps, core = client.AppsV1Api(kube_api), client.CoreV1Api(kube_api)
    labels = {"app": "web"}
    dep = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "c", "image": "x"}]}},
        },
    }
    apps.create_namespaced_deployment(namespace, dep)

    def ready_pods() -> int:
        pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
        return sum(1 for p in pods if pod_ready(p) and p.metadata.deletion_timestamp is None)

    for n in (3, 1):
        apps.patch_namespaced_deployment_scale("web", namespace, {"spec": {"replicas": n}})
        wait_for(
            f"{n} ready pods",
            lambda n=n: (
                ready_pods() == n and len(core.list_namespaced_pod(namespace, label_selector="app=web").items) == n
            ),
        )
        status = wait_for(
            "deployment status",
            lambda n=n: (d := apps.read_namespaced_deployment("web", namespace)).status.ready_replicas == n and d,
        )
        assert status.status.ready_replicas == n
    rs = apps.list_namespaced_replica_set(namespace).items
    assert rs and rs[0].metadata.owner_references[0].kind == "Deployment"
    apps.delete_namespaced_deployment("web", namespace, propagation_policy="Background")
    wait_for("replicasets garbage-collected", lambda: not apps.list_namespaced_replica_set(namespace).items)
    wait_for("pods garbage-collected", lambda: not core.list_namespaced_pod(namespace).items)


def test_rbac_is_enforced_for_service_accounts(kube_api: Any, namespace: str, sandbox: Sandbox) -> None:
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})
    token = core.create_namespaced_service_account_token(
        "nobody", namespace, {"spec": {"audiences": [], "expirationSeconds": 600}}
    ).status.token
    cfg = client.Configuration()
    cfg.host = kube_api.configuration.host
    cfg.ssl_ca_cert = str(sandbox.pki.ca_cert)
    cfg.api_key = {"authorization": f"Bearer {token}"}
    as_sa = client.CoreV1Api(client.ApiClient(cfg))
    with pytest.raises(client.ApiException) as err:
        as_sa.list_namespaced_pod(namespace)
    assert err.value.status == 403
    assert f"system:serviceaccount:{namespace}:nobody" in err.value.body
    # ...and a RoleBinding grants exactly what it says.
    rbac = client.RbacAuthorizationV1Api(kube_api)
    rbac.create_namespaced_role(
        namespace,
        {"metadata": {"name": "pod-reader"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]},
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "nobody-reads"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "nobody", "namespace": namespace}],
        },
    )
    wait_for("RBAC to allow list", lambda: _can_list(as_sa, namespace))
    with pytest.raises(client.ApiException) as err:
        as_sa.list_namespaced_secret(namespace)
    assert err.value.status == 403


def _can_list(api: Any, namespace: str) -> bool:
    try:
        api.list_namespaced_pod(namespace)
        return True
    except client.ApiException:
        return False


def test_every_component_listens_on_loopback_only(sandbox: Sandbox) -> None:
    st = sandbox.state()
    assert st is not None
    found = procs.listeners(st.pids.values())
    owners = {x.pid for x in found}
    assert {
        st.pids["etcd"],
        st.pids["kube-apiserver"],
        st.pids["kube-controller-manager"],
        st.pids["kube-scheduler"],
    } <= owners
    assert found and all(x.loopback for x in found), [f"{x.address}:{x.port}" for x in found if not x.loopback]


def test_guard_refuses_a_kubeconfig_that_is_not_the_sandbox(sandbox: Sandbox, tmp_path: Any) -> None:
    other = tmp_path / "kubeconfig"
    other.write_text(sandbox.kubeconfig.read_text().replace(sandbox.state().server, "https://10.1.2.3:6443"))  # type: ignore[union-attr]
    with pytest.raises(NotTheSandboxError, match="refusing"):
        assert_sandbox_kubeconfig(other, sandbox)
    assert_sandbox_kubeconfig(sandbox.kubeconfig, sandbox)  # its own passes


def test_kubectl_from_the_same_release_talks_to_the_sandbox(kubectl: Any) -> None:
    out = kubectl("get", "nodes", "-l", "nvidia.com/gpu.product=NVIDIA-A10G", "-o", "name").stdout.split()
    assert len(out) == 4 and all(n.startswith("node/gpu-a10g-") for n in out)
    version = kubectl("version", "-o", "json").stdout
    assert '"gitVersion": "v1.37.2"' in version


def test_up_is_idempotent_and_down_leaves_nothing_behind() -> None:
    name = f"pytest-lifecycle-{os.getpid()}"
    qwenctl = [sys.executable, "-m", "qwen_operator.cli", "sandbox"]
    first = subprocess.run(
        [*qwenctl, "up", "--name", name, "--gpus", "a10g=1"], capture_output=True, text=True, timeout=180
    )
    sb = Sandbox(name)
    try:
        assert first.returncode == 0, first.stderr
        assert f"export KUBECONFIG={sb.kubeconfig}" in first.stdout
        st = sb.state()
        assert st is not None
        second = subprocess.run(
            [*qwenctl, "up", "--name", name, "--gpus", "a10g=1"], capture_output=True, text=True, timeout=60
        )
        assert second.returncode == 0, second.stderr
        assert "already running" in second.stdout
        assert sb.state().pids == st.pids  # type: ignore[union-attr]  # nothing restarted
        status = subprocess.run([*qwenctl, "status", "--name", name], capture_output=True, text=True, timeout=30)
        assert status.returncode == 0 and "gpu-a10g-0" in status.stdout and "healthy" in status.stdout
        ports = [x.port for x in procs.listeners(st.pids.values())]
        assert ports
    finally:
        down = subprocess.run([*qwenctl, "down", "--name", name], capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    assert not any(procs.is_running(pid) for pid in st.pids.values())
    assert not any(procs.port_listening(p) for p in ports)
    assert not sb.dir.exists()


def test_bad_gpu_type_fails_at_once_listing_known_types() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "qwen_operator.cli", "sandbox", "up", "--name", "never", "--gpus", "h900=1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "unknown GPU type 'h900'" in proc.stderr
    assert "a10g" in proc.stderr and "l40s" in proc.stderr and "a100-80gb" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not Sandbox("never").dir.exists()

"""The chart and the kubectl bundle on the real control plane, with the operator running under
the chart's own ServiceAccount.

Sandbox pods never run containers, so the operator Deployment the chart creates does not
really start. Each test therefore runs ``qwenctl operator run`` locally with exactly what
the installed objects say: the args of the installed Deployment, the config from the
installed ConfigMap, and a token of the installed ServiceAccount (TokenRequest API) — so
the chart's RBAC is what is exercised, and a missing permission fails the reconcile while
an excessive one fails the permission table.
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from qwen_operator.packaging import helm
from qwen_operator.packaging.chart import CHART
from qwen_operator.packaging.generate import INSTALL_NAMESPACE, INSTALL_YAML
from qwen_operator.sandbox.cluster import Sandbox
from qwen_operator.testing.cluster import Kubectl
from qwen_operator.testing.operator import OperatorProcess
from qwen_operator.testing.wait import wait_for

pytestmark = pytest.mark.cluster

GROUP, VERSION, PLURAL = "serving.qwenops.io", "v1alpha1", "qwendeployments"
CRD_NAME = f"{PLURAL}.{GROUP}"
SAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "qwen3-14b-chat.yaml"


def sample(name: str = "chat", replicas: int = 1) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load(SAMPLE.read_text())
    body["metadata"] = {"name": name}
    body["spec"]["model"].pop("credentialsSecret", None)
    # no registry runs here: hf:// versions are not tracked, so pools start at once (an s3://
    # registry waits for its digest before creating any pool, see test_drift.py)
    body["spec"]["model"]["registry"] = "hf://Qwen/Qwen3-14B"
    body["spec"]["scaling"] = {"enabled": False}
    body["spec"]["replicas"] = replicas
    return body


def ready(api: Any, namespace: str, name: str, replicas: int) -> bool:
    obj = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    status = obj.get("status") or {}
    cond = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), None)
    return bool(
        cond
        and cond["status"] == "True"
        and status.get("observedGeneration") == obj["metadata"]["generation"]
        and status.get("readyReplicas") == replicas
    )


def helm_cli(sandbox: Sandbox, *args: str) -> str:
    """The real Helm, pointed explicitly at the sandbox (never at a kubeconfig from the environment)."""
    cmd = [str(helm.locate()), "--kubeconfig", str(sandbox.kubeconfig), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"helm {' '.join(args)} failed:\n{proc.stderr}"
    return proc.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def sa_kubeconfig(sandbox: Sandbox, api: Any, namespace: str, sa: str, path: Path) -> Path:
    """A kubeconfig holding a TokenRequest token of ``namespace/sa`` for the sandbox."""
    token = client.CoreV1Api(api).create_namespaced_service_account_token(
        sa, namespace, client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[]))
    )
    state = sandbox.state()
    assert state is not None
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "sandbox", "cluster": {"server": state.server, "certificate-authority": str(sandbox.pki.ca_cert)}}
        ],
        "users": [{"name": sa, "user": {"token": token.status.token}}],
        "contexts": [{"name": sa, "context": {"cluster": "sandbox", "user": sa}}],
        "current-context": sa,
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


@contextlib.contextmanager
def operator_as_installed(
    sandbox: Sandbox, api: Any, namespace: str, deployment: str, workdir: Path, tag: str = "install"
) -> Iterator[OperatorProcess]:
    """Run the operator locally with the installed Deployment's args, ConfigMap and ServiceAccount."""
    dep = client.AppsV1Api(api).read_namespaced_deployment(deployment, namespace)
    pod = dep.spec.template.spec
    (container,) = pod.containers
    config_map = next(v.config_map.name for v in pod.volumes if v.config_map)
    data = client.CoreV1Api(api).read_namespaced_config_map(config_map, namespace).data
    workdir = workdir / tag
    workdir.mkdir()
    config = workdir / "config.yaml"
    config.write_text(data["config.yaml"])
    args = list(container.args)
    assert args[:2] == ["operator", "run"], args
    local = []
    for arg in args[2:]:
        if arg.startswith("--config="):
            arg = f"--config={config}"
        elif arg.startswith("--liveness="):
            arg = f"--liveness=http://127.0.0.1:{free_port()}/healthz"
        local.append(arg)
    kubeconfig = sa_kubeconfig(sandbox, api, namespace, pod.service_account_name, workdir / "sa.kubeconfig")
    op = OperatorProcess(kubeconfig, workdir / "operator.log", extra=local).start()
    try:
        yield op
    finally:
        op.stop()
        print(f"--- operator log tail ---\n{op.tail(30)}")


class Identity:
    """Asks the API server what a kubeconfig's user may do (SelfSubjectAccessReview), the way
    ``kubectl auth can-i`` does, but also for resources whose CRD is absent (ServiceMonitor)."""

    def __init__(self, kubeconfig: Path) -> None:
        from kubernetes import config

        cfg = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)  # type: ignore[no-untyped-call]
        self.api = client.AuthorizationV1Api(client.ApiClient(cfg))

    def can(self, verb: str, resource: str, namespace: str | None = None, name: str | None = None) -> bool:
        """``resource`` is ``[group/]plural[/subresource]``, e.g. ``apps/deployments``, ``pods``."""
        parts = resource.split("/")
        group = parts.pop(0) if "." in parts[0] or parts[0] in ("apps", "policy") else ""
        attrs = client.V1ResourceAttributes(
            verb=verb,
            group=group,
            resource=parts[0],
            subresource=parts[1] if len(parts) > 1 else None,
            namespace=namespace,
            name=name,
        )
        review = client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=attrs))
        return bool(self.api.create_self_subject_access_review(review).status.allowed)


QWD = "serving.qwenops.io/qwendeployments"
NEEDED = [
    ("list", QWD),
    ("watch", QWD),
    ("patch", f"{QWD}/status"),
    ("update", f"{QWD}/finalizers"),
    ("create", "apps/deployments"),
    ("patch", "apps/deployments"),
    ("delete", "apps/deployments"),
    ("watch", "services"),
    ("patch", "services"),
    ("patch", "policy/poddisruptionbudgets"),
    # the router per QwenDeployment, pruned when spec.routing.enabled turns false
    ("delete", "services"),
    ("delete", "policy/poddisruptionbudgets"),
    ("patch", "serviceaccounts"),
    ("create", "rbac.authorization.k8s.io/roles"),
    ("create", "rbac.authorization.k8s.io/rolebindings"),
    ("delete", "rbac.authorization.k8s.io/rolebindings"),
    ("patch", "inference.networking.k8s.io/inferencepools"),
    ("patch", "gateway.networking.k8s.io/httproutes"),
    ("create", "monitoring.coreos.com/servicemonitors"),
    ("patch", "monitoring.coreos.com/servicemonitors"),
    ("watch", "monitoring.coreos.com/servicemonitors"),  # owned ServiceMonitors are cached to be pruned
    ("delete", "monitoring.coreos.com/servicemonitors"),
    ("list", "pods"),
    ("create", "events"),
]
DENIED = [
    ("get", "secrets"),
    ("list", "secrets"),
    ("get", "configmaps"),
    ("create", "pods"),
    ("delete", "pods"),
    ("patch", QWD),  # spec belongs to the user and their GitOps tool
    ("update", QWD),
    ("delete", QWD),
    ("update", f"{QWD}/status"),
    ("update", "apps/deployments"),
    ("create", "serviceaccounts/token"),
    ("escalate", "rbac.authorization.k8s.io/roles"),
    ("bind", "rbac.authorization.k8s.io/roles"),
    ("create", "rbac.authorization.k8s.io/clusterrolebindings"),
    ("update", "monitoring.coreos.com/servicemonitors"),
]


def assert_permissions(kubeconfig: Path, ns: str, *, cluster_wide: bool) -> None:
    """What the operator needs is allowed (only in watched namespaces); nothing else is."""
    sa = Identity(kubeconfig)
    for verb, resource in NEEDED:
        assert sa.can(verb, resource, ns), f"the operator's ServiceAccount cannot {verb} {resource} in {ns}"
        assert sa.can(verb, resource, "kube-system") == cluster_wide, f"{verb} {resource} outside watched namespaces"
    for verb, resource in DENIED:
        assert not sa.can(verb, resource, ns), f"the operator's ServiceAccount can {verb} {resource} in {ns}"
    assert not sa.can("get", "secrets") and not sa.can("list", "secrets")  # all namespaces
    assert sa.can("list", "nodes") and sa.can("watch", "nodes")
    assert not sa.can("patch", "nodes") and not sa.can("delete", "nodes")
    crds = "apiextensions.k8s.io/customresourcedefinitions"
    assert sa.can("get", crds, name="servicemonitors.monitoring.coreos.com")
    assert sa.can("get", crds, name="inferencepools.inference.networking.k8s.io")
    assert not sa.can("get", crds, name=CRD_NAME)
    assert not sa.can("list", crds)


#: An RBAC denial as the API server words it (quotes may be JSON-escaped in JSON logs).
DENIAL = re.compile(r'User \\?"system:serviceaccount:[^"\\]+\\?" cannot \w+ resource \\?"[^"\\]+')


def assert_no_forbidden(op: OperatorProcess) -> None:
    """No RBAC denial in the operator log, except kopf's CRD watch (it then scans once, by design)."""
    denials = DENIAL.findall(op.log.read_text(errors="replace"))
    assert not [d for d in denials if "customresourcedefinitions" not in d], "\n".join(denials)


def _crd_helm_metadata(kubectl: Kubectl, release: str | None, namespace: str | None) -> None:
    """Mark the session's CRD as owned by ``release`` (Helm adopts it) or clear that mark."""
    if release is None:
        kubectl("annotate", "crd", CRD_NAME, "meta.helm.sh/release-name-", "meta.helm.sh/release-namespace-")
        kubectl("annotate", "crd", CRD_NAME, "helm.sh/resource-policy-", check=False)
        kubectl("label", "crd", CRD_NAME, "app.kubernetes.io/managed-by-", check=False)
        return
    kubectl("label", "--overwrite", "crd", CRD_NAME, "app.kubernetes.io/managed-by=Helm")
    kubectl(
        "annotate",
        "--overwrite",
        "crd",
        CRD_NAME,
        f"meta.helm.sh/release-name={release}",
        f"meta.helm.sh/release-namespace={namespace}",
    )


def test_helm_install_upgrade_uninstall(
    sandbox: Sandbox, kube_api: Any, kubectl: Kubectl, qwen_crd: Path, namespace: str, tmp_path: Path
) -> None:
    release = f"qo-{uuid.uuid4().hex[:5]}"
    release_ns = f"{release}-system"
    fullname = f"{release}-qwen-operator"
    custom = client.CustomObjectsApi(kube_api)
    # The session installed the CRD directly; let this release adopt it so crds.keep is exercised.
    _crd_helm_metadata(kubectl, release, release_ns)
    try:
        started = time.monotonic()
        notes = helm_cli(sandbox, "install", release, str(CHART), "-n", release_ns, "--create-namespace")
        assert "It serves QwenDeployments in every namespace." in notes, notes
        assert "kept on `helm uninstall` (crds.keep=true)" in notes, notes
        crd = client.ApiextensionsV1Api(kube_api).read_custom_resource_definition(CRD_NAME)
        assert crd.metadata.annotations["helm.sh/resource-policy"] == "keep"

        with operator_as_installed(sandbox, kube_api, release_ns, fullname, tmp_path) as op:
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, sample())
            wait_for("the sample Ready", lambda: ready(kube_api, namespace, "chat", 1))
            elapsed = time.monotonic() - started
            print(f"helm install -> sample Ready: {elapsed:.1f}s")
            assert_permissions(op.kubeconfig, namespace, cluster_wide=True)
            assert_no_forbidden(op)

        # Upgrade: watch only the sample's namespace, plain logs, another resync period.
        helm_cli(
            sandbox,
            "upgrade",
            release,
            str(CHART),
            "-n",
            release_ns,
            "--reuse-values",
            "--set",
            f"watchNamespaces={{{namespace}}}",
            "--set",
            "operator.logFormat=plain",
            "--set",
            "config.resyncSeconds=30",
            "--set-json",
            'config.podAnnotations={"sidecar.istio.io/inject":"false"}',
        )
        rbac = client.RbacAuthorizationV1Api(kube_api)
        assert rbac.read_namespaced_role(fullname, namespace).rules
        with pytest.raises(client.ApiException) as gone:
            rbac.read_cluster_role(fullname)
        assert gone.value.status == 404
        dep = client.AppsV1Api(kube_api).read_namespaced_deployment(fullname, release_ns)
        assert f"--namespace={namespace}" in dep.spec.template.spec.containers[0].args
        cm = client.CoreV1Api(kube_api).read_namespaced_config_map(f"{fullname}-config", release_ns)
        assert yaml.safe_load(cm.data["config.yaml"])["resyncSeconds"] == 30

        with operator_as_installed(sandbox, kube_api, release_ns, fullname, tmp_path, "upgrade") as op:
            assert "namespaces " + namespace in op.log.read_text()
            custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "chat", {"spec": {"replicas": 2}})
            wait_for("2 replicas Ready after the upgrade", lambda: ready(kube_api, namespace, "chat", 2))
            # The new operator config reached the server pods it renders.
            pools = client.AppsV1Api(kube_api).list_namespaced_deployment(namespace).items
            assert pools and all(
                d.spec.template.metadata.annotations.get("sidecar.istio.io/inject") == "false" for d in pools
            )
            assert_permissions(op.kubeconfig, namespace, cluster_wide=False)
            assert_no_forbidden(op)

        helm_cli(sandbox, "uninstall", release, "-n", release_ns, "--wait")
        # crds.keep: the CRD and the user's QwenDeployment (and what it owns) survive.
        assert client.ApiextensionsV1Api(kube_api).read_custom_resource_definition(CRD_NAME)
        assert custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "chat")
        assert client.AppsV1Api(kube_api).list_namespaced_deployment(namespace).items
        leftovers = [r.metadata.name for r in rbac.list_cluster_role().items if r.metadata.name.startswith(fullname)]
        assert leftovers == []
    finally:
        _crd_helm_metadata(kubectl, None, None)
        with contextlib.suppress(client.ApiException):
            client.CoreV1Api(kube_api).delete_namespace(release_ns)


def test_kubectl_apply_install_bundle(
    sandbox: Sandbox, kube_api: Any, kubectl: Kubectl, qwen_crd: Path, namespace: str, tmp_path: Path
) -> None:
    docs = [d for d in yaml.safe_load_all(INSTALL_YAML.read_text()) if d]
    # Everything but the shared CRD is removed afterwards (other tests' resources live on it).
    removable = tmp_path / "removable.yaml"
    removable.write_text(yaml.safe_dump_all([d for d in docs if d["kind"] != "CustomResourceDefinition"]))
    try:
        kubectl("apply", "-f", str(INSTALL_YAML))
        with operator_as_installed(sandbox, kube_api, INSTALL_NAMESPACE, "qwen-operator", tmp_path) as op:
            client.CustomObjectsApi(kube_api).create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, sample("bundle")
            )
            wait_for("the sample Ready", lambda: ready(kube_api, namespace, "bundle", 1))
            assert_permissions(op.kubeconfig, namespace, cluster_wide=True)
            assert_no_forbidden(op)
    finally:
        kubectl("delete", "--ignore-not-found", "--wait=false", "-f", str(removable))

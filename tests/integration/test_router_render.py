"""The router the operator deploys per QwenDeployment, on the real control plane.

The operator (a real ``qwenctl operator run`` process) creates the router Deployment, the
client and servers Services, the router's ServiceAccount/Role/RoleBinding and PDB; kwok
runs the router pods on the sandbox's untainted CPU node; switching ``spec.routing.enabled``
off removes them; ``status.pools`` carries the router's capacity weights. With the upstream
Gateway API CRDs installed from their Go modules (InferencePool from
sigs.k8s.io/gateway-api-inference-extension, HTTPRoute from sigs.k8s.io/gateway-api; nothing
upstream is committed here), the rendered InferencePool and HTTPRoute are applied by the
operator and so validated by the API server against the real schemas. Only the objects run
here: no gateway or endpoint picker exists in the sandbox, so no request crosses that path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from qwen_operator.sandbox.cluster import Sandbox
from qwen_operator.testing.operator import OperatorProcess
from qwen_operator.testing.wait import wait_for

pytestmark = pytest.mark.cluster

GROUP, VERSION, PLURAL = "serving.qwenops.io", "v1alpha1", "qwendeployments"
REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "manifests" / "samples" / "qwen3-14b-chat.yaml"
CACHE = Path(os.environ.get("QWEN_OPERATOR_CACHE", Path.home() / ".cache" / "qwen-operator"))
#: Upstream modules shipping the CRD YAML (pinned: the schemas the renderer was checked against).
INFERENCE_EXTENSION = ("sigs.k8s.io/gateway-api-inference-extension", "v1.0.1")
GATEWAY_API = ("sigs.k8s.io/gateway-api", "v1.4.0")
UPSTREAM_CRDS = (
    (INFERENCE_EXTENSION, "config/crd/bases/inference.networking.k8s.io_inferencepools.yaml"),
    (GATEWAY_API, "config/crd/standard/gateway.networking.k8s.io_httproutes.yaml"),
)
ROUTER_OBJECTS = {
    ("Deployment", "chat-router"),
    ("PodDisruptionBudget", "chat-router"),
    ("ServiceAccount", "chat-router"),
    ("Role", "chat-router"),
    ("RoleBinding", "chat-router"),
    ("Service", "chat-servers"),
}


def go_module_dir(module: str, version: str) -> tuple[Path | None, str]:
    """``go mod download`` ``module@version`` into the tool cache; (directory, why not)."""
    go = shutil.which("go")
    if go is None:
        return None, "no Go toolchain on PATH"
    gopath = CACHE / "gopath-upstream-crds"
    env = {**os.environ, "GOPATH": str(gopath), "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local", "GO111MODULE": "on"}
    proc = subprocess.run(
        [go, "mod", "download", "-json", f"{module}@{version}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=CACHE,
        timeout=600,
        check=False,
    )
    try:
        info = json.loads(proc.stdout or "{}")
    except json.JSONDecodeError:
        info = {}
    if info.get("Dir") and Path(info["Dir"]).is_dir():
        return Path(info["Dir"]), ""
    return None, info.get("Error") or proc.stderr.strip() or f"go mod download {module}@{version} failed"


def resource(name: str, **spec: Any) -> dict[str, Any]:
    body = yaml.safe_load(SAMPLE.read_text())
    body["metadata"] = {"name": name}
    body["spec"]["scaling"] = {"enabled": False}
    body["spec"]["replicas"] = 1
    body["spec"]["model"].pop("credentialsSecret", None)
    # no registry runs here: hf:// versions are not tracked, so pools start at once
    body["spec"]["model"]["registry"] = "hf://Qwen/Qwen3-14B"
    body["spec"].update(spec)
    return dict(body)


@pytest.fixture(scope="module")
def gateway_crds(sandbox: Sandbox, kubectl: Any) -> str:
    """The upstream InferencePool and HTTPRoute CRDs installed; '' when ready, else why not."""
    CACHE.mkdir(parents=True, exist_ok=True)
    for (module, version), rel in UPSTREAM_CRDS:
        where, why = go_module_dir(module, version)
        if where is None:
            return f"{module}@{version}: {why}"
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(where / rel))
    for crd in ("inferencepools.inference.networking.k8s.io", "httproutes.gateway.networking.k8s.io"):
        kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd}")
    return ""


@pytest.fixture(scope="module")
def operator(
    sandbox: Sandbox, qwen_crd: Path, gateway_crds: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The operator, started after the Gateway API CRDs (it looks for them once, at start)."""
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    op = OperatorProcess(sandbox.kubeconfig, log).start()
    try:
        yield op
    finally:
        op.stop()
        print(f"--- operator log tail ({log}) ---\n{op.tail(60)}")


class World:
    def __init__(self, api: Any, namespace: str) -> None:
        self.api, self.ns = api, namespace
        self.custom = client.CustomObjectsApi(api)
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.policy = client.PolicyV1Api(api)
        self.rbac = client.RbacAuthorizationV1Api(api)

    def create(self, body: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, body)

    def get(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)
        return obj

    def patch(self, name: str, patch: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURAL, name, patch, _content_type="application/merge-patch+json"
        )

    def owned(self, name: str) -> set[tuple[str, str]]:
        """(kind, name) of the router-related objects that exist now."""
        sel = f"serving.qwenops.io/deployment={name}"
        found = [
            ("Deployment", d.metadata.name)
            for d in self.apps.list_namespaced_deployment(self.ns, label_selector=sel).items
        ]
        found += [
            ("Service", s.metadata.name) for s in self.core.list_namespaced_service(self.ns, label_selector=sel).items
        ]
        found += [
            ("PodDisruptionBudget", p.metadata.name)
            for p in self.policy.list_namespaced_pod_disruption_budget(self.ns, label_selector=sel).items
        ]
        found += [
            ("ServiceAccount", s.metadata.name)
            for s in self.core.list_namespaced_service_account(self.ns, label_selector=sel).items
        ]
        found += [("Role", r.metadata.name) for r in self.rbac.list_namespaced_role(self.ns, label_selector=sel).items]
        found += [
            ("RoleBinding", b.metadata.name)
            for b in self.rbac.list_namespaced_role_binding(self.ns, label_selector=sel).items
        ]
        return set(found)

    def gateway_objects(self, name: str) -> set[str]:
        found = set()
        for group, plural, kind in (
            ("inference.networking.k8s.io", "inferencepools", "InferencePool"),
            ("gateway.networking.k8s.io", "httproutes", "HTTPRoute"),
        ):
            items = self.custom.list_namespaced_custom_object(group, "v1", self.ns, plural)["items"]
            found |= {kind for o in items if o["metadata"]["name"] == name}
        return found

    def ready_router_pods(self, name: str) -> list[Any]:
        pods = self.core.list_namespaced_pod(
            self.ns, label_selector=f"serving.qwenops.io/deployment={name},app.kubernetes.io/component=router"
        ).items
        return [
            p
            for p in pods
            if p.metadata.deletion_timestamp is None
            and any(c.type == "Ready" and c.status == "True" for c in (p.status.conditions or []))
        ]


@pytest.fixture()
def world(kube_api: Any, namespace: str, operator: OperatorProcess) -> World:
    assert operator.alive(), operator.tail()
    return World(kube_api, namespace)


def test_router_is_deployed_runs_and_is_removed_when_routing_is_switched_off(world: World) -> None:
    world.create(resource("chat"))
    wait_for("router objects", lambda: ROUTER_OBJECTS | {("Service", "chat")} <= world.owned("chat"), timeout=60)
    # the router pods run on the sandbox (kwok, the untainted CPU node), not on a GPU node
    pods = wait_for(
        "2 Ready router pods", lambda: len(world.ready_router_pods("chat")) == 2 and world.ready_router_pods("chat")
    )
    for pod in pods:
        node = world.core.read_node(pod.spec.node_name)
        assert "nvidia.com/gpu" not in (node.status.allocatable or {}), pod.spec.node_name
        (c,) = pod.spec.containers
        assert c.command == ["qwenctl", "router"] and c.args[:4] == ["--namespace", world.ns, "--deployment", "chat"]
        assert pod.spec.service_account_name == "chat-router"
    # the client Service selects the router pods, <name>-servers the server pods
    client_svc = world.core.read_namespaced_service("chat", world.ns)
    assert client_svc.spec.selector["app.kubernetes.io/component"] == "router"
    servers = world.core.read_namespaced_service("chat-servers", world.ns)
    assert servers.spec.selector["app.kubernetes.io/component"] == "server"
    role = world.rbac.read_namespaced_role("chat-router", world.ns)
    assert {(tuple(r.api_groups), tuple(r.resources)) for r in role.rules} == {
        (("",), ("pods",)),
        (("serving.qwenops.io",), ("qwendeployments",)),
    }
    # status.pools: the router's capacity weights, from the planner
    pools = wait_for(
        "status.pools with capacity",
        lambda: [
            p for p in (world.get("chat").get("status") or {}).get("pools") or [] if "capacityRequestsPerSecond" in p
        ],
    )
    for pool in pools:
        assert pool["capacityRequestsPerSecond"] > 0 and pool["prefillTokensPerSecond"] > 0
        assert pool["maxConcurrentRequests"] == 128
    assert {p["gpuType"] for p in world.get("chat")["status"]["pools"]} <= {"L40S", "A10G"}  # no router "pool"

    # routing off: the router and its objects go, the client Service selects the servers
    world.patch("chat", {"spec": {"routing": {"enabled": False}}})
    wait_for("router objects removed", lambda: not (ROUTER_OBJECTS & world.owned("chat")), timeout=60)
    wait_for(
        "client Service over the servers",
        lambda: (
            world.core.read_namespaced_service("chat", world.ns).spec.selector["app.kubernetes.io/component"]
            == "server"
        ),
    )
    assert ("Service", "chat") in world.owned("chat") and ("PodDisruptionBudget", "chat") in world.owned("chat")


@pytest.mark.parametrize(
    ("spec", "needles"),
    [
        ({"routing": {"enabled": False}, "scaling": {"minReplicas": 0}}, ("scaling.minReplicas", "routing.enabled")),
        ({"routing": {"loadBound": 0.5}}, ("spec.routing.loadBound",)),
        ({"routing": {"canaryTrafficPercent": 150}}, ("spec.routing.canaryTrafficPercent",)),
        ({"routing": {"gateway": {"inferencePool": True}}}, ("parentRef.name",)),
    ],
)
def test_admission_rejects_bad_routing_naming_the_field(
    world: World, spec: dict[str, Any], needles: tuple[str, ...]
) -> None:
    body = resource("bad")
    for key, value in spec.items():
        body["spec"][key] = {**(body["spec"].get(key) or {}), **value}
    with pytest.raises(client.ApiException) as err:
        world.create(body)
    assert err.value.status == 422
    for needle in needles:
        assert needle in err.value.body, err.value.body


def test_inference_pool_and_http_route_against_the_upstream_crds(
    world: World, gateway_crds: str, kubectl: Any, tmp_path: Path
) -> None:
    if gateway_crds:
        pytest.skip(f"upstream Gateway API CRDs not available: {gateway_crds}")
    gateway = {"inferencePool": True, "parentRef": {"name": "inference-gw", "sectionName": "http"}}
    world.create(resource("chat", routing={"gateway": gateway}))
    # applied by the operator: the API server validated them against the upstream schemas
    wait_for("InferencePool and HTTPRoute", lambda: world.gateway_objects("chat") == {"InferencePool", "HTTPRoute"})
    pool = world.custom.get_namespaced_custom_object(
        "inference.networking.k8s.io", "v1", world.ns, "inferencepools", "chat"
    )
    assert pool["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "server"
    assert pool["spec"]["endpointPickerRef"]["port"] == {"number": 9002}
    route = world.custom.get_namespaced_custom_object("gateway.networking.k8s.io", "v1", world.ns, "httproutes", "chat")
    assert route["spec"]["rules"][0]["backendRefs"][0]["kind"] == "InferencePool"
    # everything `qwenctl render` prints passes server-side validation too
    sample = tmp_path / "qwd.yaml"
    body = resource("chat", routing={"gateway": gateway})
    body["metadata"]["namespace"] = world.ns
    sample.write_text(yaml.safe_dump(body))
    rendered = subprocess.run(
        [sys.executable, "-m", "qwen_operator.cli", "render", "-f", str(sample)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "InferencePool" in rendered.stdout, rendered.stderr
    kubectl("apply", "--server-side", "--force-conflicts", "--dry-run=server", "-f", "-", stdin=rendered.stdout)
    # switching the gateway path off removes both
    world.patch("chat", {"spec": {"routing": {"gateway": {"inferencePool": False}}}})
    wait_for("gateway objects removed", lambda: not world.gateway_objects("chat"), timeout=60)

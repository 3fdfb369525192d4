"""The data plane the renderer produces: router Deployment, Services, RBAC, PDB, Gateway API objects,
and the admission rules of spec.routing."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from qwen_operator.api import QwenDeploymentSpec
from qwen_operator.api.crdgen import crd
from qwen_operator.catalog import Catalog
from qwen_operator.planner import plan
from qwen_operator.render import RenderContext, render
from qwen_operator.router.cli import DRAIN_SECONDS

TWO_POOLS = {"A10G": 4, "L40S": 1}


def make_spec(**extra: Any) -> QwenDeploymentSpec:
    raw: dict[str, Any] = {
        "model": {"name": "Qwen/Qwen3-14B", "registry": "s3://models/qwen3-14b", "quantization": "fp8"},
        "placement": {"gpuTypes": ["A10G", "L40S"]},
        "replicas": 3,
    }
    raw.update(extra)
    return QwenDeploymentSpec.model_validate(raw)


def manifests(spec: QwenDeploymentSpec, **ctx: Any) -> list[dict[str, Any]]:
    p = plan(spec, Catalog(), free_gpus=TWO_POOLS)
    return render(spec, p, RenderContext(name="chat", namespace="llm", **ctx), Catalog())


def get(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return set(selector.items()) <= set(labels.items())


def pod_labels(dep: dict[str, Any]) -> dict[str, str]:
    return dict(dep["spec"]["template"]["metadata"]["labels"])


def test_routing_is_on_by_default_with_every_object_the_router_needs() -> None:
    objs = manifests(make_spec())
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    assert {
        ("Service", "chat"),
        ("Service", "chat-servers"),
        ("ServiceAccount", "chat-router"),
        ("Role", "chat-router"),
        ("RoleBinding", "chat-router"),
        ("PodDisruptionBudget", "chat-router"),
        ("Deployment", "chat-router"),
    } <= names
    # the gateway objects only on request
    assert not {k for k, _ in names} & {"InferencePool", "HTTPRoute"}


def test_client_service_selects_router_pods_and_servers_service_selects_servers_only() -> None:
    objs = manifests(make_spec(), service_monitor=True)
    router = pod_labels(get(objs, "Deployment", "chat-router"))
    servers = [pod_labels(get(objs, "Deployment", n)) for n in ("chat-l40s", "chat-a10g")]
    client = get(objs, "Service", "chat")
    backend = get(objs, "Service", "chat-servers")
    assert client["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert selects(client["spec"]["selector"], router)
    assert not any(selects(client["spec"]["selector"], s) for s in servers)  # never straight to a server
    assert all(selects(backend["spec"]["selector"], s) for s in servers)
    assert not selects(backend["spec"]["selector"], router)
    # the server PDB and the scale selector never count router pods
    assert not selects(get(objs, "PodDisruptionBudget", "chat")["spec"]["selector"]["matchLabels"], router)
    # the router's own selectors match only router pods
    router_dep = get(objs, "Deployment", "chat-router")
    assert not any(selects(router_dep["spec"]["selector"]["matchLabels"], s) for s in servers)
    pdb = get(objs, "PodDisruptionBudget", "chat-router")
    assert pdb["spec"]["minAvailable"] == 1 and selects(pdb["spec"]["selector"]["matchLabels"], router)
    # the servers' ServiceMonitor scrapes the servers' Service, not the router's client Service
    sm = get(objs, "ServiceMonitor", "chat")["spec"]["selector"]["matchLabels"]
    assert selects(sm, backend["metadata"]["labels"]) and not selects(sm, client["metadata"]["labels"])


def test_router_metrics_are_scraped_through_the_client_service_when_the_crd_exists() -> None:
    assert not [o for o in manifests(make_spec()) if o["kind"] == "ServiceMonitor"]
    objs = manifests(make_spec(scaling={"enabled": True, "intervalSeconds": 20}), service_monitor=True)
    monitors = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ServiceMonitor"}
    assert set(monitors) == {"chat", "chat-router"}
    router_sm = monitors["chat-router"]["spec"]
    client, backend = get(objs, "Service", "chat"), get(objs, "Service", "chat-servers")
    # the router's monitor selects the client Service (over the router pods) and nothing else of ours
    assert selects(router_sm["selector"]["matchLabels"], client["metadata"]["labels"])
    assert not selects(router_sm["selector"]["matchLabels"], backend["metadata"]["labels"])
    assert router_sm["namespaceSelector"] == {"matchNames": ["llm"]}
    (endpoint,) = router_sm["endpoints"]
    assert endpoint == {"port": "http", "path": "/metrics", "interval": "20s"}
    # that port name is the client Service's, which targets the router container's port
    (port,) = client["spec"]["ports"]
    assert port["name"] == endpoint["port"]
    router_ports = get(objs, "Deployment", "chat-router")["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert [p["name"] for p in router_ports] == [port["targetPort"]]
    # no router, no router monitor
    off = manifests(make_spec(routing={"enabled": False}), service_monitor=True)
    assert [o["metadata"]["name"] for o in off if o["kind"] == "ServiceMonitor"] == ["chat"]


def test_router_probes_never_restart_a_router_holding_at_zero_and_shutdown_drains() -> None:
    pod = get(manifests(make_spec()), "Deployment", "chat-router")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    # readiness is /health (fails while draining or before discovery answers); liveness only the
    # TCP port, so a router holding requests with no server replica, or failing readiness, is not killed
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["livenessProbe"]["tcpSocket"] == {"port": "http"} and "httpGet" not in c["livenessProbe"]
    # the built-in sleep action (no sleep binary in the image): endpoint removal propagates
    # while the router still serves, then SIGTERM starts the drain, all within the grace period
    sleep = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert set(c["lifecycle"]["preStop"]) == {"sleep"}
    assert 1 <= sleep <= 15
    assert pod["terminationGracePeriodSeconds"] > sleep + DRAIN_SECONDS


def test_router_deployment_runs_qwenctl_router_with_the_spec_routing_flags() -> None:
    spec = make_spec(
        routing={
            "affinity": False,
            "loadBound": 1.5,
            "holdQueue": 64,
            "holdTimeoutSeconds": 12.5,
            "retries": 1,
            "canaryTrafficPercent": 10,
            "replicas": 3,
        }
    )
    dep = get(manifests(spec, operator_image="registry.local/qwen-operator:dev"), "Deployment", "chat-router")
    assert dep["spec"]["replicas"] == 3
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "registry.local/qwen-operator:dev"
    assert c["command"] == ["qwenctl", "router"]
    flags = dict(zip(c["args"][::2], c["args"][1::2], strict=True))
    assert flags == {
        "--namespace": "llm",
        "--deployment": "chat",
        "--port": "8080",
        "--affinity": "off",
        "--load-bound": "1.5",
        "--hold-queue": "64",
        "--hold-timeout": "12.5",
        "--retries": "1",
        "--canary-percent": "10",
    }
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is True and pod["serviceAccountName"] == "chat-router"
    assert "nvidia.com/gpu" not in str(c["resources"])  # a CPU pod
    # spread across nodes
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert pod_labels(dep)["app.kubernetes.io/component"] == "router"


def test_default_flags_match_the_contract_defaults() -> None:
    dep = get(manifests(make_spec()), "Deployment", "chat-router")
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    flags = dict(zip(args[::2], args[1::2], strict=True))
    assert dep["spec"]["replicas"] == 2
    assert flags["--affinity"] == "off" and flags["--load-bound"] == "1.25" and flags["--hold-queue"] == "256"
    assert flags["--hold-timeout"] == "30" and flags["--retries"] == "2" and flags["--canary-percent"] == "0"


def test_router_role_reads_pods_and_qwendeployments_only() -> None:
    objs = manifests(make_spec())
    role = get(objs, "Role", "chat-router")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["serving.qwenops.io"], "resources": ["qwendeployments"], "verbs": ["get", "list", "watch"]},
    ]
    binding = get(objs, "RoleBinding", "chat-router")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "chat-router"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "chat-router", "namespace": "llm"}]


def test_owner_reference_on_every_router_object() -> None:
    objs = manifests(make_spec(), owner_uid="u-1")
    for o in objs:
        assert o["metadata"]["ownerReferences"][0]["uid"] == "u-1", (o["kind"], o["metadata"]["name"])


def test_routing_disabled_is_todays_service_over_the_servers() -> None:
    objs = manifests(make_spec(routing={"enabled": False}))
    kinds = [(o["kind"], o["metadata"]["name"]) for o in objs]
    assert not [k for k in kinds if k[1] in ("chat-router", "chat-servers")]
    client = get(objs, "Service", "chat")
    assert all(selects(client["spec"]["selector"], pod_labels(get(objs, "Deployment", n))) for n in ("chat-l40s",))


def gateway_spec(**gw: Any) -> QwenDeploymentSpec:
    return make_spec(routing={"gateway": {"inferencePool": True, "parentRef": {"name": "inference-gw"}, **gw}})


def test_gateway_objects_only_when_asked_and_the_crds_exist() -> None:
    assert not [o for o in manifests(gateway_spec()) if o["kind"] in ("InferencePool", "HTTPRoute")]
    assert not [o for o in manifests(make_spec(), gateway_api=True) if o["kind"] in ("InferencePool", "HTTPRoute")]
    kinds = [o["kind"] for o in manifests(gateway_spec(), gateway_api=True)]
    assert "InferencePool" in kinds and "HTTPRoute" in kinds
    # beside the built-in router, or instead of it
    gateway = {"inferencePool": True, "parentRef": {"name": "g"}}
    only = manifests(make_spec(routing={"enabled": False, "gateway": gateway}), gateway_api=True)
    assert not [o for o in only if o["metadata"]["name"] == "chat-router"]
    assert [o for o in only if o["kind"] == "InferencePool"]


def test_inference_pool_selects_the_server_pods_on_the_engine_port() -> None:
    objs = manifests(gateway_spec(endpointPicker={"port": 9100}), gateway_api=True)
    pool = get(objs, "InferencePool", "chat")
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    spec = pool["spec"]
    assert all(selects(spec["selector"]["matchLabels"], pod_labels(get(objs, "Deployment", n))) for n in ("chat-l40s",))
    assert not selects(spec["selector"]["matchLabels"], pod_labels(get(objs, "Deployment", "chat-router")))
    server_port = get(objs, "Deployment", "chat-l40s")["spec"]["template"]["spec"]["containers"][0]["ports"][0]
    assert spec["targetPorts"] == [{"number": server_port["containerPort"]}]
    assert spec["endpointPickerRef"] == {
        "kind": "Service",
        "name": "chat-epp",
        "port": {"number": 9100},
        "failureMode": "FailClose",
    }


def test_http_route_attaches_to_the_named_gateway_and_routes_to_the_pool() -> None:
    spec = gateway_spec(parentRef={"name": "inference-gw", "namespace": "gateways", "sectionName": "http"})
    route = get(manifests(spec, gateway_api=True), "HTTPRoute", "chat")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [
        {
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "name": "inference-gw",
            "namespace": "gateways",
            "sectionName": "http",
        }
    ]
    (rule,) = route["spec"]["rules"]
    assert rule["backendRefs"] == [{"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "chat"}]


@pytest.mark.parametrize(
    ("routing", "scaling", "needle"),
    [
        ({"enabled": False}, {"minReplicas": 0}, "routing.enabled"),
        ({"loadBound": 0.9}, {}, "loadBound"),
        ({"holdQueue": -1}, {}, "holdQueue"),
        ({"canaryTrafficPercent": 101}, {}, "canaryTrafficPercent"),
        ({"replicas": 0}, {}, "replicas"),
        ({"gateway": {"inferencePool": True}}, {}, "parentRef.name"),
    ],
)
def test_bad_routing_is_rejected_naming_the_field(
    routing: dict[str, Any], scaling: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ValidationError) as err:
        make_spec(routing=routing, scaling=scaling)
    text = str(err.value)
    assert needle in text or needle in text.replace("_", "")  # pydantic names fields by alias or attribute
    if needle == "routing.enabled":
        assert "scaling.minReplicas" in text


def test_scale_to_zero_is_allowed_with_the_router() -> None:
    assert make_spec(scaling={"enabled": True, "minReplicas": 0}).scaling.min_replicas == 0


def test_crd_carries_the_routing_bounds_and_the_scale_to_zero_rule() -> None:
    spec = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    routing = spec["properties"]["routing"]["properties"]
    assert routing["loadBound"]["minimum"] == 1
    assert routing["holdQueue"]["minimum"] == 0
    assert routing["canaryTrafficPercent"]["minimum"] == 0 and routing["canaryTrafficPercent"]["maximum"] == 100
    assert routing["replicas"]["minimum"] == 1
    rules = spec["x-kubernetes-validations"]
    rule = next(r for r in rules if r.get("fieldPath") == ".scaling.minReplicas")
    assert "routing.enabled" in rule["message"] and "scaling.minReplicas" in rule["message"]
    pools = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["pools"]
    fields = pools["items"]["properties"]
    assert {"capacityRequestsPerSecond", "prefillTokensPerSecond", "maxConcurrentRequests"} <= set(fields)

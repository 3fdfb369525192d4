"""What the chart renders (real ``helm template``): restricted pods, least-privilege RBAC,
the generated CRD behind crds.enabled/keep, the operator config the operator itself accepts,
and the optional ServiceMonitor and Grafana dashboard."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from qwen_operator.catalog import load_catalog
from qwen_operator.packaging import helm
from qwen_operator.packaging.chart import CHART, HelmError, find, template
from qwen_operator.packaging.generate import CRD_FILE


@pytest.fixture(scope="module", autouse=True)
def _helm() -> None:
    try:
        helm.locate()
    except helm.MissingHelmError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def default() -> list[dict[str, Any]]:
    return template()


def deployment(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (dep,) = find(objects, "Deployment")
    return dep


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = deployment(objects)["spec"]["template"]["spec"]["containers"]
    return dict(c)


def test_default_objects(default: list[dict[str, Any]]) -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in default)
    assert kinds == [
        ("ClusterRole", "qwen-operator"),
        ("ClusterRole", "qwen-operator-cluster"),
        ("ClusterRole", "qwen-operator-node-agent"),
        ("ClusterRoleBinding", "qwen-operator"),
        ("ClusterRoleBinding", "qwen-operator-cluster"),
        ("ClusterRoleBinding", "qwen-operator-node-agent"),
        ("ConfigMap", "qwen-operator-config"),
        ("CustomResourceDefinition", "qwendeployments.serving.qwenops.io"),
        ("DaemonSet", "qwen-operator-node-agent"),
        ("Deployment", "qwen-operator"),
        ("PodDisruptionBudget", "qwen-operator"),
        ("Role", "qwen-operator-leader-election"),
        ("RoleBinding", "qwen-operator-leader-election"),
        ("ServiceAccount", "qwen-operator"),
        ("ServiceAccount", "qwen-operator-node-agent"),
    ]
    for obj in default:
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"):
            assert obj["metadata"]["namespace"] == "qwen-operator", obj["kind"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_pod_is_restricted(default: list[dict[str, Any]]) -> None:
    pod = deployment(default)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container(default)["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "privileged" not in sc and "hostNetwork" not in pod and "hostPID" not in pod
    assert all("hostPath" not in v for v in pod["volumes"])


def test_operator_args_probes_and_image(default: list[dict[str, Any]]) -> None:
    c = container(default)
    assert c["image"] == "ghcr.io/qwenops/qwen-operator:0.1.0"
    assert c["args"] == [
        "operator",
        "run",
        "--config=/etc/qwen-operator/config.yaml",
        "--liveness=http://0.0.0.0:8080/healthz",
        "--log-format=json",
        "--leader-elect",
        "--leader-elect-namespace=qwen-operator",
        "--leader-elect-lease-name=qwen-operator-leader",
        "--leader-elect-lease-duration=10",
        "--leader-elect-renew-deadline=7",
        "--leader-elect-retry-period=2",
        "--all-namespaces",
    ]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "liveness"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "liveness"}  # leader or ready standby
    assert {"name": "liveness", "containerPort": 8080, "protocol": "TCP"} in c["ports"]
    assert c["resources"]["limits"]["memory"] == "512Mi"


def test_two_replicas_roll_without_a_gap_and_spread_over_nodes(default: list[dict[str, Any]]) -> None:
    spec = deployment(default)["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    selector = spec["selector"]["matchLabels"]
    (term,) = spec["template"]["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    hostname = {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": selector}}
    assert term["podAffinityTerm"] == hostname
    (pdb,) = find(default, "PodDisruptionBudget")
    assert pdb["spec"] == {"minAvailable": 1, "selector": {"matchLabels": selector}}
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in container(default)["env"]}
    assert env["POD_NAME"] == "metadata.name" and env["POD_NAMESPACE"] == "metadata.namespace"


def test_rendered_leader_flags_are_what_the_operator_accepts(default: list[dict[str, Any]]) -> None:
    """The chart's args go through the real `qwenctl operator run` parser and its Lease checks."""
    from qwen_operator.cli import build_parser
    from qwen_operator.controller.cli import leader_settings

    args = build_parser().parse_args(container(default)["args"])
    assert args.leader_elect is True
    lease = leader_settings(args)
    assert (lease.namespace, lease.name) == ("qwen-operator", "qwen-operator-leader")
    assert (lease.lease_duration, lease.renew_deadline, lease.retry_period) == (10.0, 7.0, 2.0)


def test_one_replica_without_leader_election_recreates() -> None:
    objects = template("leaderElection.enabled=false", "replicaCount=1")
    spec = deployment(objects)["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    c = container(objects)
    assert not [a for a in c["args"] if a.startswith("--leader-elect")]
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"  # kopf's own endpoint
    assert not find(objects, "PodDisruptionBudget") and "affinity" not in spec["template"]["spec"]
    assert not [o for o in objects if o["metadata"]["name"].endswith("-leader-election")]


@pytest.mark.parametrize(
    ("sets", "words"),
    [
        (("leaderElection.enabled=false",), "replicaCount > 1 needs leaderElection.enabled"),
        (("leaderElection.renewDeadlineSeconds=10",), "leaseDurationSeconds must be greater"),
        (("leaderElection.retryPeriodSeconds=6",), "renewDeadlineSeconds must be greater"),
    ],
)
def test_unsafe_high_availability_values_fail_naming_the_value(sets: tuple[str, ...], words: str) -> None:
    with pytest.raises(HelmError) as info:
        template(*sets)
    assert words in info.value.stderr


def test_affinity_and_anti_affinity_choices() -> None:
    required = deployment(template("podAntiAffinity=required"))["spec"]["template"]["spec"]["affinity"]
    (term,) = required["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert "affinity" not in deployment(template("podAntiAffinity=none"))["spec"]["template"]["spec"]
    own = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}
    assert deployment(template(values={"affinity": own}))["spec"]["template"]["spec"]["affinity"] == own
    assert not find(template("replicaCount=1"), "PodDisruptionBudget")  # would block every drain


def test_image_digest_wins_over_tag() -> None:
    digest = "sha256:" + "ab" * 32
    c = container(template(f"image.digest={digest}", "image.tag=9.9.9"))
    assert c["image"] == f"ghcr.io/qwenops/qwen-operator@{digest}"


def _rules(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The operator's rules (the node agent's own ServiceAccount and roles: test_chart_node_agent.py)."""
    return [
        r
        for o in objects
        if o["kind"] in ("ClusterRole", "Role") and not o["metadata"]["name"].endswith("-node-agent")
        for r in o["rules"]
    ]


def _grants(objects: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for r in _rules(objects)
        for group in r["apiGroups"]
        for resource in r["resources"]
        for verb in r["verbs"]
    }


def test_rbac_has_no_wildcards_and_no_secrets(default: list[dict[str, Any]]) -> None:
    for rule in _rules(default):
        for key in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert "*" not in rule.get(key, []), rule
        assert "nonResourceURLs" not in rule
    grants = _grants(default)
    assert not {g for g in grants if g[1] in ("secrets", "configmaps", "serviceaccounts/token")}
    assert not {g for g in grants if g[2] in ("escalate", "bind", "impersonate")}


def test_rbac_is_exactly_what_the_operator_needs(default: list[dict[str, Any]]) -> None:
    read = {"get", "list", "watch"}
    expected = {
        *(("serving.qwenops.io", "qwendeployments", v) for v in read),
        ("serving.qwenops.io", "qwendeployments/status", "patch"),
        ("serving.qwenops.io", "qwendeployments/finalizers", "update"),
        *(("apps", "deployments", v) for v in (*read, "create", "patch", "delete")),
        *(("", "services", v) for v in (*read, "create", "patch", "delete")),
        *(("policy", "poddisruptionbudgets", v) for v in (*read, "create", "patch", "delete")),
        *(("", "pods", v) for v in read),
        # the router per QwenDeployment: its ServiceAccount, Role and RoleBinding (pruned when routing is off)
        *(("", "serviceaccounts", v) for v in (*read, "create", "patch", "delete")),
        *(("rbac.authorization.k8s.io", "roles", v) for v in (*read, "create", "patch", "delete")),
        *(("rbac.authorization.k8s.io", "rolebindings", v) for v in (*read, "create", "patch", "delete")),
        # the Gateway API path (spec.routing.gateway.inferencePool)
        *(("inference.networking.k8s.io", "inferencepools", v) for v in (*read, "create", "patch", "delete")),
        *(("gateway.networking.k8s.io", "httproutes", v) for v in (*read, "create", "patch", "delete")),
        # pools whose replica spans nodes (a LeaderWorkerSet each)
        *(("leaderworkerset.x-k8s.io", "leaderworkersets", v) for v in (*read, "create", "patch", "delete")),
        *(("", "nodes", v) for v in read),
        ("", "events", "create"),
        *(
            ("monitoring.coreos.com", "servicemonitors", v)
            for v in ("get", "list", "watch", "create", "patch", "delete")
        ),
        ("apiextensions.k8s.io", "customresourcedefinitions", "get"),
        # leader election, in the operator's own namespace, on its one Lease (create cannot name it)
        ("coordination.k8s.io", "leases", "create"),
        ("coordination.k8s.io", "leases", "get"),
        ("coordination.k8s.io", "leases", "update"),
    }
    assert _grants(default) == expected
    (leader_role,) = find(default, "Role", "qwen-operator-leader-election")
    assert leader_role["metadata"]["namespace"] == "qwen-operator"
    assert {(tuple(r["verbs"]), tuple(r.get("resourceNames", ()))) for r in leader_role["rules"]} == {
        (("create",), ()),
        (("get", "update"), ("qwen-operator-leader",)),
    }
    (crd_rule,) = [r for r in _rules(default) if "customresourcedefinitions" in r["resources"]]
    assert crd_rule["resourceNames"] == [
        "servicemonitors.monitoring.coreos.com",
        "inferencepools.inference.networking.k8s.io",
        "httproutes.gateway.networking.k8s.io",
        "leaderworkersets.leaderworkerset.x-k8s.io",
    ]


def test_every_rbac_rule_is_commented() -> None:
    """STYLE 10: each rule says why it is needed (a comment right above every rule)."""
    sources = (CHART / "templates" / "rbac.yaml").read_text() + (CHART / "templates" / "_helpers.tpl").read_text()
    lines = sources.splitlines()
    rules = [i for i, line in enumerate(lines) if line.lstrip().startswith("- apiGroups:")]
    assert len(rules) >= 10
    for i in rules:
        above = lines[i - 1].strip()
        assert above.startswith("#"), f"RBAC rule without a comment: {lines[i].strip()}"


def test_service_monitor_rbac_is_optional() -> None:
    objects = template("rbac.serviceMonitors=false")
    assert not {g for g in _grants(objects) if g[0] == "monitoring.coreos.com"}
    (crd_rule,) = [r for r in _rules(objects) if "customresourcedefinitions" in r["resources"]]
    assert "servicemonitors.monitoring.coreos.com" not in crd_rule["resourceNames"]
    neither = _grants(template("rbac.serviceMonitors=false", "rbac.gatewayAPI=false", "rbac.leaderWorkerSet=false"))
    assert not {g for g in neither if g[0] == "apiextensions.k8s.io"}


def test_leader_worker_set_rbac_is_optional(default: list[dict[str, Any]]) -> None:
    grants = _grants(template("rbac.leaderWorkerSet=false"))
    assert not {g for g in grants if g[0] == "leaderworkerset.x-k8s.io"}
    (crd_rule,) = [r for r in _rules(default) if "customresourcedefinitions" in r["resources"]]
    assert "leaderworkersets.leaderworkerset.x-k8s.io" in crd_rule["resourceNames"]


def test_gateway_api_rbac_is_optional() -> None:
    grants = _grants(template("rbac.gatewayAPI=false"))
    assert not {g for g in grants if g[0] in ("inference.networking.k8s.io", "gateway.networking.k8s.io")}


def test_watch_namespaces_uses_roles_and_a_cluster_role_only_for_nodes() -> None:
    objects = template("watchNamespaces={llm,batch}")
    roles = find(objects, "Role", "qwen-operator")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["batch", "llm"]
    assert sorted(b["metadata"]["namespace"] for b in find(objects, "RoleBinding", "qwen-operator")) == ["batch", "llm"]
    (leader,) = find(objects, "Role", "qwen-operator-leader-election")  # the Lease stays in the release namespace
    assert leader["metadata"]["namespace"] == "qwen-operator"
    (cluster_role,) = find(objects, "ClusterRole", "qwen-operator-cluster")
    assert {r for rule in cluster_role["rules"] for r in rule["resources"]} == {"nodes", "customresourcedefinitions"}
    args = container(objects)["args"]
    assert "--namespace=llm" in args and "--namespace=batch" in args and "--all-namespaces" not in args


def test_rbac_and_service_account_can_be_left_out() -> None:
    objects = template("rbac.create=false", "serviceAccount.create=false", "serviceAccount.name=existing")
    assert not [o for o in objects if o["kind"].endswith(("Role", "RoleBinding")) or o["kind"] == "ServiceAccount"]
    assert deployment(objects)["spec"]["template"]["spec"]["serviceAccountName"] == "existing"


def test_crd_is_the_generated_file_with_keep_policy(default: list[dict[str, Any]]) -> None:
    (crd,) = find(default, "CustomResourceDefinition")
    generated = yaml.safe_load(CRD_FILE.read_text())
    assert crd["spec"] == generated["spec"]
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert crd["metadata"]["labels"]["app.kubernetes.io/component"] == "crd"
    (unkept,) = find(template("crds.keep=false"), "CustomResourceDefinition")
    assert "annotations" not in unkept["metadata"]
    assert not find(template("crds.enabled=false"), "CustomResourceDefinition")


def _config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (cm,) = find(objects, "ConfigMap", "qwen-operator-config")
    data: dict[str, Any] = yaml.safe_load(cm["data"]["config.yaml"])
    return data


def test_config_is_accepted_by_the_operator(default: list[dict[str, Any]]) -> None:
    cfg = _config(default)
    assert cfg["operatorImage"] == "ghcr.io/qwenops/qwen-operator:0.1.0"  # same image for model pulls
    assert cfg["resyncSeconds"] == 60.0
    assert set(cfg) == {
        "catalog",
        "resyncSeconds",
        "operatorImage",
        "podAnnotations",
        "podDefaults",
        "gpuProductLabels",
        "prometheus",
        "registry",
        "nodeCache",
        "modelSync",
    }
    assert load_catalog(cfg).gpus["A10G"].price_per_gpu_hour == pytest.approx(1.006)


def test_catalog_overrides_reach_the_operator_and_roll_the_pod(default: list[dict[str, Any]]) -> None:
    values = {
        "config": {
            "catalog": {
                "prices": {"A10G": 0.55},
                "gpuTypes": {"L40S": {"maxGPUsPerNode": 4}},
            },
            "prometheus": {"url": "http://prometheus.monitoring:9090"},
        }
    }
    objects = template(values=values)
    cfg = _config(objects)
    catalog = load_catalog(cfg)
    assert catalog.gpus["A10G"].price_per_gpu_hour == pytest.approx(0.55)
    assert catalog.gpus["L40S"].max_gpus_per_node == 4
    assert cfg["prometheus"]["url"] == "http://prometheus.monitoring:9090"

    def checksum(objs: list[dict[str, Any]]) -> str:
        return str(deployment(objs)["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum(objects) != checksum(default)


def test_service_monitor_and_dashboard_are_off_by_default(default: list[dict[str, Any]]) -> None:
    assert not find(default, "ServiceMonitor") and not find(default, "Service")
    assert not [o for o in default if o["metadata"]["name"].endswith("-dashboard")]


def test_service_monitor_scrapes_the_operator() -> None:
    objects = template("serviceMonitor.enabled=true", "serviceMonitor.labels.release=kube-prometheus-stack")
    (sm,) = find(objects, "ServiceMonitor")
    (svc,) = find(objects, "Service")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
    pod_labels = deployment(objects)["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in container(objects)["ports"]


def test_grafana_dashboard_panels_and_price_overrides() -> None:
    objects = template(
        "grafanaDashboard.enabled=true",
        set_json=["config.catalog.prices.A10G=0.5", "config.catalog.prices.A100-80GB=3.25"],
    )
    (cm,) = find(objects, "ConfigMap", "qwen-operator-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dash = json.loads(cm["data"]["qwen-operator.json"])
    titles = [p["title"] for p in dash["panels"]]
    assert titles == [
        "Replicas per pool",
        "Queue (waiting requests) per pool",
        "P95 queue wait (the autoscaler's TTFT SLO signal)",
        "Cost ($/h, GPUs requested x catalog price)",
    ]
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    assert "tgi_queue_size" in exprs and "tgi_request_queue_duration_bucket" in exprs
    assert "histogram_quantile(0.95" in exprs
    prices = {v["name"]: v["query"] for v in dash["templating"]["list"] if v["type"] == "constant"}
    assert prices == {"price_a10g": "0.5", "price_l40s": "1.861", "price_a100_40gb": "4.096", "price_a100_80gb": "3.25"}
    cost = dash["panels"][3]["targets"][0]["expr"]
    assert set(re.findall(r"\$(price_\w+)", cost)) == set(prices)

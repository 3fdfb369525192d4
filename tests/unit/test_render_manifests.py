"""Rendered manifests: the fields the cluster and the model-sync contract depend on."""

from __future__ import annotations

from typing import Any

import pytest

from qwen_operator.api import QwenDeploymentSpec
from qwen_operator.catalog import Catalog
from qwen_operator.planner import plan
from qwen_operator.render import RenderContext, render, selector_string
from qwen_operator.render.names import dns_label, label_value, pool_deployment_name


def make_spec(**extra: Any) -> QwenDeploymentSpec:
    raw: dict[str, Any] = {
        "model": {"name": "Qwen/Qwen3-14B", "registry": "s3://models/qwen3-14b", "credentialsSecret": "creds"},
        "placement": {"gpuTypes": ["A10G", "L40S"]},
        "replicas": 3,
        "rollout": {"maxSurge": 2},
    }
    raw.update(extra)
    return QwenDeploymentSpec.model_validate(raw)


def manifests(spec: QwenDeploymentSpec, free: dict[str, int] | None = None, **ctx: Any) -> list[dict[str, Any]]:
    p = plan(spec, Catalog(), free_gpus=free)
    return render(spec, p, RenderContext(name="chat", namespace="llm", **ctx), Catalog())


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def deployment(objs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(o for o in by_kind(objs, "Deployment") if o["metadata"]["name"] == name)


#: One free L40S (filled first: cheapest per request/s within the SLO), the rest spills to A10G.
TWO_POOLS = {"A10G": 4, "L40S": 1}


def test_one_deployment_per_pool_with_deterministic_names() -> None:
    objs = manifests(make_spec(routing={"enabled": False}), TWO_POOLS)
    assert [o["kind"] for o in objs] == ["Service", "PodDisruptionBudget", "Deployment", "Deployment"]
    assert [o["metadata"]["name"] for o in by_kind(objs, "Deployment")] == ["chat-l40s", "chat-a10g"]  # rank order
    routed = manifests(make_spec(), TWO_POOLS)  # the router's objects come before the pools (test_render_router.py)
    assert [o["metadata"]["name"] for o in by_kind(routed, "Deployment")] == ["chat-router", "chat-l40s", "chat-a10g"]
    a10g, l40s = deployment(objs, "chat-a10g"), deployment(objs, "chat-l40s")
    assert a10g["spec"]["replicas"] == 2 and l40s["spec"]["replicas"] == 1  # 4 A10G / 2 shards
    assert objs == manifests(make_spec(routing={"enabled": False}), TWO_POOLS)  # pure and deterministic
    assert routed == manifests(make_spec(), TWO_POOLS)


def test_tgi_container() -> None:
    d = deployment(manifests(make_spec(), {"A10G": 2}), "chat-a10g")
    pod = d["spec"]["template"]["spec"]
    (tgi,) = pod["containers"]
    args = tgi["args"]

    def flag(name: str) -> str:
        return str(args[args.index(name) + 1])

    assert flag("--model-id") == "/models/models/llm.chat/current"
    assert flag("--num-shard") == "2"
    assert flag("--max-concurrent-requests") == "128"
    assert (flag("--max-input-tokens"), flag("--max-total-tokens")) == ("8192", "16384")
    assert flag("--port") == "8080" and flag("--usage-stats") == "off"
    assert "--quantize" not in args
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in tgi["env"]
    assert tgi["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert tgi["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A10G"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["terminationGracePeriodSeconds"] >= 90


def test_probes_volumes_and_security() -> None:
    pod = deployment(manifests(make_spec(), {"L40S": 1}), "chat-l40s")["spec"]["template"]["spec"]
    tgi = pod["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert tgi[probe]["httpGet"]["path"] == "/health"
    startup = tgi["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # model load + warm-up budget
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["shm"]["emptyDir"]["medium"] == "Memory"
    # one directory per namespace: a tenant never reads another namespace's models
    assert volumes["model-cache"]["hostPath"] == {
        "path": "/var/lib/qwen-operator/models/llm",
        "type": "DirectoryOrCreate",
    }
    mounts = {m["name"]: m for m in tgi["volumeMounts"]}
    assert mounts["model-cache"] == {"name": "model-cache", "mountPath": "/models", "readOnly": True}
    assert mounts["shm"]["mountPath"] == "/dev/shm"
    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = tgi["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}


def test_model_pull_init_container_contract() -> None:
    pod = deployment(manifests(make_spec(), {"L40S": 1}), "chat-l40s")["spec"]["template"]["spec"]
    (pull,) = pod["initContainers"]
    assert pull["name"] == "model-pull"
    assert pull["image"].startswith("ghcr.io/qwenops/qwen-operator:")
    assert pull["command"] + pull["args"] == [
        "qwenctl",
        "model",
        "pull",
        "--registry",
        "s3://models/qwen3-14b",
        "--version",
        "stable",
        "--cache",
        "/models",
        "--name",
        "llm.chat",
    ]
    assert pull["envFrom"] == [{"secretRef": {"name": "creds"}}]
    assert pull["volumeMounts"] == [  # the cache read-write; /tmp for a read-only root filesystem
        {"name": "model-cache", "mountPath": "/models"},
        {"name": "tmp", "mountPath": "/tmp"},
    ]


def test_resolved_version_and_custom_image_win() -> None:
    objs = manifests(make_spec(), {"L40S": 1}, model_version="v7", operator_image="registry.local/qo:dev")
    tpl = deployment(objs, "chat-l40s")["spec"]["template"]
    pull = tpl["spec"]["initContainers"][0]
    assert pull["args"][pull["args"].index("--version") + 1] == "v7"
    assert pull["image"] == "registry.local/qo:dev"
    assert tpl["metadata"]["labels"]["serving.qwenops.io/model-version"] == "v7"
    assert tpl["metadata"]["annotations"]["serving.qwenops.io/model-version"] == "v7"


@pytest.mark.parametrize("engine,flag", [("tgi", "--model-id"), ("vllm", "--model")])
def test_a_digest_version_pins_the_server_to_its_own_version_tree(engine: str, flag: str) -> None:
    """Several versions share a node during a roll and ``current`` follows the latest pull: a pod
    serving a manifest digest reads ``versions/<digest hex[:16]>``, the tree its own pull built."""
    digest = "sha256:" + "0123456789abcdef" + "9" * 48
    spec = make_spec(runtime={"engine": engine})
    tpl = deployment(manifests(spec, {"L40S": 1}, model_version=digest), "chat-l40s")["spec"]["template"]
    server = tpl["spec"]["containers"][0]
    assert server["args"][server["args"].index(flag) + 1] == "/models/models/llm.chat/versions/0123456789abcdef"
    pull = tpl["spec"]["initContainers"][0]
    assert pull["args"][pull["args"].index("--version") + 1] == digest  # the pull builds that very tree
    assert tpl["metadata"]["annotations"]["serving.qwenops.io/model-version"] == digest
    other = deployment(manifests(spec, {"L40S": 1}, model_version="sha256:" + "ab" * 32), "chat-l40s")
    assert other["spec"]["template"]["spec"]["containers"][0]["args"][server["args"].index(flag) + 1] == (
        "/models/models/llm.chat/versions/abababababababab"
    )
    for not_a_digest in ("v7", "stable", "sha256:short"):  # tags and names read `current`
        tpl = deployment(manifests(spec, {"L40S": 1}, model_version=not_a_digest), "chat-l40s")["spec"]["template"]
        args = tpl["spec"]["containers"][0]["args"]
        assert args[args.index(flag) + 1] == "/models/models/llm.chat/current"


def test_version_change_changes_pod_template_but_not_selector() -> None:
    one = deployment(manifests(make_spec(), {"L40S": 1}, model_version="v1"), "chat-l40s")
    two = deployment(manifests(make_spec(), {"L40S": 1}, model_version="v2"), "chat-l40s")
    assert one["spec"]["template"] != two["spec"]["template"]
    assert one["spec"]["selector"] == two["spec"]["selector"]
    assert "serving.qwenops.io/model-version" not in one["spec"]["selector"]["matchLabels"]


def test_no_credentials_and_pvc_cache() -> None:
    spec = make_spec(
        model={"name": "Qwen/Qwen3-14B", "registry": "s3://m", "cache": {"type": "pvc", "claimName": "models"}}
    )
    pod = deployment(manifests(spec, {"L40S": 1}), "chat-l40s")["spec"]["template"]["spec"]
    pull = pod["initContainers"][0]
    assert "envFrom" not in pull
    assert pull["securityContext"].get("runAsUser") != 0  # a PVC is writable through fsGroup
    cache = next(v for v in pod["volumes"] if v["name"] == "model-cache")
    assert cache == {"name": "model-cache", "persistentVolumeClaim": {"claimName": "models"}}


def test_labels_strategy_and_selectors() -> None:
    objs = manifests(make_spec(routing={"enabled": False}), TWO_POOLS)
    d = deployment(objs, "chat-a10g")
    labels = d["spec"]["template"]["metadata"]["labels"]
    for key in (
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/component",
        "app.kubernetes.io/managed-by",
        "serving.qwenops.io/deployment",
        "serving.qwenops.io/pool",
        "serving.qwenops.io/model-version",
    ):
        assert key in labels, key
    assert labels["serving.qwenops.io/pool"] == "a10g"
    assert d["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 2, "maxUnavailable": 0}}
    assert set(d["spec"]["selector"]["matchLabels"].items()) <= set(labels.items())
    svc = by_kind(objs, "Service")[0]
    assert svc["metadata"]["name"] == "chat"
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    # the Service and the scale selector cover every pool's pods
    for dep in by_kind(objs, "Deployment"):
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        assert set(svc["spec"]["selector"].items()) <= set(pod_labels.items())
    selector = dict(kv.split("=") for kv in selector_string("chat").split(","))
    assert selector == svc["spec"]["selector"]
    pdb = by_kind(objs, "PodDisruptionBudget")[0]
    assert pdb["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]


def test_service_monitor_only_when_asked() -> None:
    assert not by_kind(manifests(make_spec(), {"L40S": 1}), "ServiceMonitor")
    sms = by_kind(manifests(make_spec(), {"L40S": 1}, service_monitor=True), "ServiceMonitor")
    sm = next(o for o in sms if o["metadata"]["name"] == "chat")  # the servers' (the router has its own)
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    assert sm["spec"]["endpoints"][0]["interval"] == "15s"


def test_owner_reference_when_uid_known() -> None:
    objs = manifests(make_spec(), {"L40S": 1}, owner_uid="1234")
    for o in objs:
        (ref,) = o["metadata"]["ownerReferences"]
        assert ref["kind"] == "QwenDeployment" and ref["uid"] == "1234" and ref["controller"] is True
        assert o["metadata"]["namespace"] == "llm"


def test_plan_without_pools_renders_only_shared_objects() -> None:
    objs = manifests(make_spec(routing={"enabled": False}), {})
    assert [o["kind"] for o in objs] == ["Service", "PodDisruptionBudget"]
    # the router stays up with no pool (it holds requests through a scale from zero)
    routed = [(o["kind"], o["metadata"]["name"]) for o in manifests(make_spec(), {})]
    assert [n for k, n in routed if k == "Deployment"] == ["chat-router"]


@pytest.mark.parametrize(
    ("qwd", "gpu", "want"),
    [("chat", "A100-80GB", "chat-a100-80gb"), ("Chat", "L40S", "chat-l40s"), ("a" * 70, "A10G", None)],
)
def test_pool_names_are_dns_labels(qwd: str, gpu: str, want: str | None) -> None:
    name = pool_deployment_name(qwd, gpu)
    assert len(name) <= 63 and name == dns_label(name)
    if want:
        assert name == want


def test_label_values_are_valid_for_digests() -> None:
    value = label_value("sha256:" + "ab" * 32)
    assert len(value) <= 63 and value[0].isalnum() and value[-1].isalnum()
    assert label_value("sha256:" + "ab" * 32) != label_value("sha256:" + "cd" * 32)

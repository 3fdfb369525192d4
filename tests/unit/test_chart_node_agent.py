"""The chart's node agent (real ``helm template``): a DaemonSet on GPU nodes running ``qwenctl
node-agent`` with no GPU, the node cache mounted at its own paths, and RBAC limited to what it reads
and the one Node annotation it writes."""

from __future__ import annotations

from typing import Any

import pytest

from qwen_operator.nodeagent.cli import register
from qwen_operator.packaging import helm
from qwen_operator.packaging.chart import find, template


@pytest.fixture(scope="module", autouse=True)
def _helm() -> None:
    try:
        helm.locate()
    except helm.MissingHelmError as exc:
        pytest.fail(str(exc))


def daemonset(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (ds,) = find(objects, "DaemonSet", "qwen-operator-node-agent")
    return ds


def test_the_agent_runs_on_gpu_nodes_without_a_gpu_with_the_cache_at_its_node_path() -> None:
    objects = template("config.nodeCache.allowedPaths={/data/models}", "nodeAgent.maxBytes=500G")
    pod = daemonset(objects)["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["args"][:2] == ["node-agent", "--config=/etc/qwen-operator/config.yaml"]
    assert "--cache-root=/var/lib/qwen-operator/models" in c["args"] and "--cache-root=/data/models" in c["args"]
    assert {"--bandwidth=200M", "--keep-others=1", "--max-bytes=500G"} <= set(c["args"])
    assert "nvidia.com/gpu" not in str(c["resources"])
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in ("/var/lib/qwen-operator/models", "/data/models"):
        assert volumes[mounts[path]]["hostPath"] == {"path": path, "type": "DirectoryOrCreate"}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    sc = c["securityContext"]  # root for the root-owned hostPath (as model-pull), nothing more
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True and pod["securityContext"]["runAsUser"] == 0
    # every argument the chart passes is one the command accepts
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args([*c["args"], "--node", "n"])
    assert args.max_bytes == 500 << 30 and args.bandwidth == 200 << 20


def test_the_agent_rbac_reads_what_it_stages_and_patches_nodes_only() -> None:
    objects = template()
    (role,) = find(objects, "ClusterRole", "qwen-operator-node-agent")
    grants = {
        (g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
    }
    assert grants == {
        ("", "nodes", "get"),
        ("", "nodes", "patch"),
        ("", "pods", "list"),
        ("", "pods", "watch"),
        ("serving.qwenops.io", "qwendeployments", "list"),
        ("serving.qwenops.io", "qwendeployments", "watch"),
        ("", "secrets", "get"),
    }
    (binding,) = find(objects, "ClusterRoleBinding", "qwen-operator-node-agent")
    assert binding["subjects"][0]["name"] == "qwen-operator-node-agent"
    assert daemonset(objects)["spec"]["template"]["spec"]["serviceAccountName"] == "qwen-operator-node-agent"


def test_watch_namespaces_limits_the_agent_to_them() -> None:
    objects = template("watchNamespaces={llm}")
    (role,) = find(objects, "Role", "qwen-operator-node-agent")
    assert role["metadata"]["namespace"] == "llm"
    assert {r for rule in role["rules"] for r in rule["resources"]} == {"qwendeployments", "secrets"}
    (cluster,) = find(objects, "ClusterRole", "qwen-operator-node-agent")
    assert {r for rule in cluster["rules"] for r in rule["resources"]} == {"nodes", "pods"}
    assert "--namespace=llm" in daemonset(objects)["spec"]["template"]["spec"]["containers"][0]["args"]


def test_the_agent_can_be_turned_off() -> None:
    objects = template("nodeAgent.enabled=false")
    assert not [o for o in objects if o["metadata"]["name"].endswith("-node-agent")]

"""The real LeaderWorkerSet controller (LWS v0.9.0, ``make lws``) on the sandbox's kwok GPU nodes.

One group of two GPU pods: the controller must create the leader StatefulSet and its
leader pod, its pod webhook must label the pods (worker index, group key) so that the
controller creates the leader's worker StatefulSet, the real scheduler must bind both
pods to GPU nodes, kwok must run them, and the controller must report the group Ready
and the LeaderWorkerSet Available in its status.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from qwen_operator.sandbox.lws import LWSController
from qwen_operator.testing.lws import wait_lws

pytestmark = pytest.mark.cluster

GROUP, VERSION, PLURAL = "leaderworkerset.x-k8s.io", "v1", "leaderworkersets"
LABEL = "leaderworkerset.sigs.k8s.io"
NAME = "qwen-lws"


def pod_template(role: str) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app.kubernetes.io/component": role}},
        "spec": {
            "containers": [
                {
                    "name": "engine",
                    "image": "registry.invalid/qwen/engine:sandbox",  # kwok runs no image
                    "resources": {"limits": {"nvidia.com/gpu": "1"}},
                }
            ],
            "nodeSelector": {"nvidia.com/gpu.present": "true"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
    }


def leader_worker_set() -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": NAME},
        "spec": {
            "replicas": 1,
            "leaderWorkerTemplate": {
                "size": 2,
                "leaderTemplate": pod_template("leader"),
                "workerTemplate": pod_template("worker"),
            },
        },
    }


def ready(pod: client.V1Pod) -> bool:
    conditions = pod.status.conditions or []
    return pod.status.phase == "Running" and any(c.type == "Ready" and c.status == "True" for c in conditions)


def test_leader_worker_set_runs_on_kwok_gpu_nodes(lws_controller: LWSController, kube_api: Any, namespace: str) -> None:
    custom, core, apps = client.CustomObjectsApi(kube_api), client.CoreV1Api(kube_api), client.AppsV1Api(kube_api)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, leader_worker_set())

    def pods() -> dict[str, client.V1Pod]:
        found = core.list_namespaced_pod(namespace, label_selector=f"{LABEL}/name={NAME}").items
        return {p.metadata.name: p for p in found}

    def group_ready() -> dict[str, client.V1Pod] | None:
        got = pods()
        return got if set(got) == {f"{NAME}-0", f"{NAME}-0-1"} and all(map(ready, got.values())) else None

    group = wait_lws(lws_controller, "the leader pod and its worker pod Running and Ready", group_ready, timeout=60)
    leader, worker = group[f"{NAME}-0"], group[f"{NAME}-0-1"]

    # The controller's objects: a leader StatefulSet, and a worker StatefulSet owned by the leader pod.
    leader_sts = apps.read_namespaced_stateful_set(NAME, namespace)
    assert leader_sts.spec.replicas == 1
    worker_sts = apps.read_namespaced_stateful_set(f"{NAME}-0", namespace)
    assert worker_sts.spec.replicas == 1  # size 2 = the leader + one worker
    assert [(o.kind, o.name) for o in worker_sts.metadata.owner_references] == [("Pod", leader.metadata.name)]
    assert worker_sts.status.ready_replicas == 1

    # The pod webhook's work: worker index, one group key for the group, the leader's name on workers.
    assert leader.metadata.labels[f"{LABEL}/worker-index"] == "0"
    assert worker.metadata.labels[f"{LABEL}/worker-index"] == "1"
    assert leader.metadata.labels[f"{LABEL}/group-index"] == worker.metadata.labels[f"{LABEL}/group-index"] == "0"
    assert leader.metadata.labels[f"{LABEL}/group-key"] == worker.metadata.labels[f"{LABEL}/group-key"]
    assert worker.metadata.annotations[f"{LABEL}/leader-name"] == leader.metadata.name
    env = {e.name: e.value for e in worker.spec.containers[0].env or []}
    assert env.get("LWS_WORKER_INDEX") == "1" and env.get("LWS_GROUP_SIZE") == "2"
    assert env.get("LWS_LEADER_ADDRESS") == f"{leader.metadata.name}.{NAME}.{namespace}"  # via the headless Service

    # The real scheduler bound each pod to a kwok GPU node with a GPU to spare.
    for pod in (leader, worker):
        assert pod.metadata.labels["app.kubernetes.io/component"] in ("leader", "worker")
        node = core.read_node(pod.spec.node_name)
        assert node.metadata.labels["nvidia.com/gpu.present"] == "true", pod.spec.node_name
        assert node.metadata.annotations["kwok.x-k8s.io/node"] == "fake"
        assert int(node.status.allocatable["nvidia.com/gpu"]) >= 1

    # The controller's status: one group, ready, and the set Available.
    def available() -> dict[str, Any] | None:
        obj: dict[str, Any] = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME)
        status = obj.get("status", {})
        conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
        done = status.get("readyReplicas") == 1 and conditions.get("Available") == "True"
        return obj if done else None

    lws = wait_lws(lws_controller, "LeaderWorkerSet status readyReplicas=1 and Available", available, timeout=30)
    status = lws["status"]
    assert status["replicas"] == 1 and status["updatedReplicas"] == 1
    assert status["observedGeneration"] == lws["metadata"]["generation"]
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions.get("Progressing") != "True", conditions
    assert f"{LABEL}/worker-index=0" in status["hpaPodSelector"]
    assert lws_controller.alive()

"""Drift of owned objects (pure comparison) and create-once for s3:// registries, in the pure reconcile."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest

from qwen_operator.catalog import load_catalog
from qwen_operator.controller import conditions as cond
from qwen_operator.controller import failures
from qwen_operator.controller.createonce import WAITING
from qwen_operator.controller.drift import describe, drift, quantity
from qwen_operator.controller.reconcile import HASH_ANNOTATION, Observed, compute
from qwen_operator.render.names import ANNOTATION_MODEL_VERSION

CATALOG = load_catalog(None)
DIGEST = "sha256:" + "ab" * 32


def deployment() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "chat-l40s", "labels": {"app": "qwen"}, "annotations": {HASH_ANNOTATION: "h"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "qwen"}},
            "template": {
                "metadata": {"labels": {"app": "qwen"}},
                "spec": {
                    "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L40S"},
                    "containers": [
                        {
                            "name": "tgi",
                            "image": "tgi:3.3.5",
                            "args": ["--port", "8080"],
                            "env": [{"name": "HOME", "value": "/tmp"}],
                            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                            "resources": {"limits": {"nvidia.com/gpu": "1", "memory": "1.5Gi"}},
                            "volumeMounts": [{"name": "cache", "mountPath": "/models", "readOnly": False}],
                        }
                    ],
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                },
            },
        },
    }


def as_served(desired: dict[str, Any]) -> dict[str, Any]:
    """What the API server returns: defaults added, empty fields dropped, quantities canonical."""
    live = copy.deepcopy(desired)
    live["metadata"].update(resourceVersion="7", generation=1, uid="u")
    live["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = "1"
    live["spec"].update(progressDeadlineSeconds=600, revisionHistoryLimit=10)
    pod = live["spec"]["template"]["spec"]
    pod.update(restartPolicy="Always", dnsPolicy="ClusterFirst", schedulerName="default-scheduler")
    c = pod["containers"][0]
    c.update(imagePullPolicy="IfNotPresent", terminationMessagePath="/dev/termination-log")
    c["resources"]["limits"]["memory"] = "1536Mi"
    del c["volumeMounts"][0]["readOnly"]  # omitempty
    c["env"].append({"name": "INJECTED", "value": "by a webhook"})
    pod["tolerations"][0]["effect"] = ""  # a defaulted field inside a list element
    live["status"] = {"replicas": 2}
    return live


def test_defaults_and_canonical_forms_are_not_drift() -> None:
    desired = deployment()
    assert drift(desired, as_served(desired)) == []


@pytest.mark.parametrize(
    ("edit", "path"),
    [
        (lambda d: d["spec"].update(replicas=0), "spec.replicas"),
        (lambda d: d["spec"]["template"]["spec"]["containers"][0].update(image="evil:1"), "image"),
        (lambda d: d["spec"]["template"]["spec"]["containers"][0]["args"].append("--x"), "args"),
        (lambda d: d["spec"]["template"]["spec"]["containers"][0]["args"].reverse(), "args"),
        (lambda d: d["metadata"]["labels"].update(app="other"), "metadata.labels.app"),
        (lambda d: d["metadata"]["labels"].pop("app"), "metadata.labels.app"),
        (lambda d: d["spec"]["template"]["spec"]["containers"][0]["env"].pop(0), "env[HOME]"),
        (lambda d: d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"].update(memory="1G"), "memory"),
        (lambda d: d["spec"]["template"]["spec"]["nodeSelector"].update(extra="x"), "nodeSelector.extra"),
        (lambda d: d["spec"]["template"]["spec"]["tolerations"].clear(), "tolerations"),
        (lambda d: d["spec"]["template"]["spec"]["containers"].clear(), "containers[tgi]"),
    ],
)
def test_a_changed_rendered_field_is_drift_naming_its_path(edit: Any, path: str) -> None:
    desired = deployment()
    live = as_served(desired)
    edit(live)
    found = drift(desired, live)
    assert found and path in found[0], found


def test_a_service_selector_is_compared_whole() -> None:
    svc = {"kind": "Service", "metadata": {"name": "chat"}, "spec": {"selector": {"app": "qwen"}, "ports": []}}
    live = copy.deepcopy(svc)
    live["spec"].update(clusterIP="10.0.0.1", sessionAffinity="None")
    assert drift(svc, live) == []
    live["spec"]["selector"]["team"] = "x"  # an added key: our apply replaces the whole (atomic) map
    assert drift(svc, live) == ["spec.selector.team"]
    live["spec"]["selector"] = {"app": "other"}
    assert drift(svc, live) == ["spec.selector.app"]


def test_quantities_compare_by_value() -> None:
    assert quantity("1536Mi") == quantity("1.5Gi") and quantity(1) == quantity("1")
    assert quantity("500m") == quantity("0.5") and quantity("http") is None and quantity(True) is None
    assert describe(["a", "b", "c", "d", "e"]) == "a, b, c and 2 more"


# -- in the reconcile --------------------------------------------------------------------------
def qwd(registry: str = "s3://models/qwen3-14b", status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "serving.qwenops.io/v1alpha1",
        "kind": "QwenDeployment",
        "metadata": {"name": "chat", "namespace": "llm", "uid": "u-1", "generation": 1},
        "spec": {
            "model": {"name": "Qwen/Qwen3-14B", "registry": registry, "quantization": "fp8", "version": "stable"},
            "placement": {"gpuTypes": ["L40S"]},
            "replicas": 1,
        },
        "status": status if status is not None else {"model": {"targetVersion": DIGEST, "resolvedFrom": "stable"}},
    }


NODES = [
    {
        "metadata": {"name": "l0", "labels": {"nvidia.com/gpu.product": "NVIDIA-L40S"}},
        "spec": {},
        "status": {"allocatable": {"nvidia.com/gpu": "4"}, "conditions": [{"type": "Ready", "status": "True"}]},
    }
]


def settle(manifest: dict[str, Any], rv: str = "1") -> dict[str, Any]:
    live = copy.deepcopy(manifest)
    live["metadata"].update(generation=1, resourceVersion=rv)
    if live["kind"] == "Deployment":
        n = live["spec"]["replicas"]
        live["status"] = {"observedGeneration": 1, "replicas": n, "updatedReplicas": n, "readyReplicas": n}
    return live


def converged(q: dict[str, Any]) -> Observed:
    out = compute(Observed(qwd=q, nodes=NODES), CATALOG, now="T")
    live = [settle(m) for m in out.apply]
    q = copy.deepcopy(q)
    q["status"] = {**q["status"], **(out.status or {})}
    obs = Observed(
        qwd=q,
        deployments=[o for o in live if o["kind"] == "Deployment"],
        others=[o for o in live if o["kind"] != "Deployment"],
        nodes=NODES,
    )
    again = compute(obs, CATALOG, now="T")
    if again.status is not None:
        q["status"] = {**q["status"], **again.status}
        obs = Observed(qwd=q, deployments=obs.deployments, others=obs.others, nodes=NODES)
    assert compute(obs, CATALOG, now="T").writes == 0
    return obs


def pool(obs: Observed) -> dict[str, Any]:
    return next(d for d in obs.deployments if d["metadata"]["name"] == "chat-l40s")


def test_a_scaled_pool_is_reverted_with_one_apply_and_a_warning() -> None:
    obs = converged(qwd())
    live = copy.deepcopy(pool(obs))
    live["spec"]["replicas"] = 0
    live["metadata"]["resourceVersion"] = "9"
    others = [d for d in obs.deployments if d is not pool(obs)]
    out = compute(Observed(qwd=obs.qwd, deployments=[*others, live], others=obs.others, nodes=NODES), CATALOG)
    assert [m["metadata"]["name"] for m in out.apply] == ["chat-l40s"]
    assert out.apply[0]["spec"]["replicas"] == 1
    assert out.drifted == {("Deployment", "chat-l40s"): "9"}
    assert [(e.type, e.reason) for e in out.events] == [("Warning", "DriftReverted")]
    assert "spec.replicas" in out.events[0].message


def test_an_edited_service_selector_is_reverted() -> None:
    obs = converged(qwd())
    svc = next(o for o in obs.others if o["kind"] == "Service" and o["metadata"]["name"] == "chat")
    edited = copy.deepcopy(svc)
    edited["spec"]["selector"] = {"app": "elsewhere"}
    others = [edited if o is svc else o for o in obs.others]
    out = compute(Observed(qwd=obs.qwd, deployments=obs.deployments, others=others, nodes=NODES), CATALOG)
    assert [(m["kind"], m["metadata"]["name"]) for m in out.apply] == [("Service", "chat")]
    assert out.apply[0]["spec"]["selector"] == svc["spec"]["selector"]


def test_a_new_s3_resource_creates_no_pool_until_its_version_resolves() -> None:
    out = compute(Observed(qwd=qwd(status={}), nodes=NODES), CATALOG, now="T")
    assert not [m for m in out.apply if m["kind"] == "Deployment" and m["metadata"]["name"] == "chat-l40s"]
    assert out.status is not None
    conds = {c["type"]: c for c in out.status["conditions"]}
    assert conds[cond.PROGRESSING]["reason"] == WAITING and conds[cond.PROGRESSING]["status"] == "True"
    assert conds[cond.READY]["reason"] == WAITING and conds[cond.READY]["status"] == "False"
    assert conds[cond.DEGRADED]["status"] == "False"


def test_an_unresolvable_version_is_degraded_with_the_watchers_reason() -> None:
    synced = {
        "type": cond.MODEL_SYNCED,
        "status": "False",
        "reason": "VersionNotFound",
        "message": "spec.model.version 'stable' is neither a tag nor a version.",
    }
    out = compute(Observed(qwd=qwd(status={"conditions": [synced]}), nodes=NODES), CATALOG, now="T")
    assert not [m for m in out.apply if m["metadata"]["name"] == "chat-l40s"]
    assert out.status is not None
    degraded = next(c for c in out.status["conditions"] if c["type"] == cond.DEGRADED)
    assert degraded["status"] == "True" and degraded["reason"] == "VersionNotFound"
    assert "neither a tag nor a version" in degraded["message"]


def test_once_resolved_the_pool_is_created_on_the_digest() -> None:
    out = compute(Observed(qwd=qwd(), nodes=NODES), CATALOG, now="T")
    dep = next(m for m in out.apply if m["metadata"]["name"] == "chat-l40s")
    assert dep["spec"]["template"]["metadata"]["annotations"][ANNOTATION_MODEL_VERSION] == DIGEST


def test_an_unresolved_version_never_deletes_running_pools() -> None:
    obs = converged(qwd())
    q = copy.deepcopy(dict(obs.qwd))
    q["status"].pop("model")  # e.g. status lost; the pools keep serving what they run
    out = compute(Observed(qwd=q, deployments=obs.deployments, others=obs.others, nodes=NODES), CATALOG)
    assert out.delete == []
    assert not [m for m in out.apply if m["metadata"]["name"] == "chat-l40s"]


def test_registries_the_operator_does_not_track_render_at_once() -> None:
    out = compute(Observed(qwd=qwd(registry="hf://Qwen/Qwen3-14B", status={}), nodes=NODES), CATALOG, now="T")
    dep = next(m for m in out.apply if m["metadata"]["name"] == "chat-l40s")
    assert dep["spec"]["template"]["metadata"]["annotations"][ANNOTATION_MODEL_VERSION] == "stable"


# -- stuck workloads become Degraded -------------------------------------------------------
NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)


def gpu_pod(name: str, status: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "llm", "labels": {"serving.qwenops.io/deployment": "chat"}},
        "spec": {"containers": [{"name": "tgi", "image": "tgi:9.9", "resources": {"limits": {"nvidia.com/gpu": 1}}}]},
        "status": status,
    }


def waiting(reason: str, message: str = "back-off 40s restarting failed container") -> dict[str, Any]:
    state = {"waiting": {"reason": reason, "message": message}}
    return {"phase": "Pending", "containerStatuses": [{"name": "tgi", "state": state}]}


@pytest.mark.parametrize(
    "reason", ["ImagePullBackOff", "ErrImagePull", "CrashLoopBackOff", "CreateContainerConfigError", "InvalidImageName"]
)
def test_a_container_that_cannot_start_names_the_pod_and_cause(reason: str) -> None:
    stuck = failures.pod_cause(gpu_pod("chat-l40s-x", waiting(reason)), NOW)
    assert stuck is not None and stuck.cause == reason and stuck.name == "chat-l40s-x"
    if reason == "CreateContainerConfigError":  # the kubelet names what is missing: kept
        missing = failures.pod_cause(gpu_pod("p", waiting(reason, 'secret "creds" not found')), NOW)
        assert missing is not None and 'secret "creds" not found' in missing.sentence()
    else:  # no kubelet back-off timers: the message stays the same while the problem does
        assert "back-off 40s" not in stuck.sentence() and "tgi:9.9" in stuck.sentence()


def test_unschedulable_counts_only_after_its_grace() -> None:
    def pending(seconds: float) -> dict[str, Any]:
        since = (NOW - dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")
        cond_ = {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "lastTransitionTime": since,
            "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
        }
        return gpu_pod("p", {"phase": "Pending", "conditions": [cond_]})

    assert failures.pod_cause(pending(10), NOW) is None
    stuck = failures.pod_cause(pending(failures.UNSCHEDULABLE_GRACE_SECONDS + 1), NOW)
    assert stuck is not None and stuck.cause == "Unschedulable" and "Insufficient nvidia.com/gpu" in stuck.detail
    assert failures.pod_cause(gpu_pod("ok", {"phase": "Running"}), NOW) is None


def test_deployment_failures_are_read_from_its_conditions() -> None:
    quota = 'pods "chat-l40s-7d9-" is forbidden: exceeded quota: gpu, requested: requests.nvidia.com/gpu=1'
    dep = {
        "metadata": {"name": "chat-l40s"},
        "status": {
            "conditions": [{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": quota}]
        },
    }
    stuck = failures.deployment_cause(dep)
    assert stuck is not None and stuck.cause == "ReplicaFailure" and "exceeded quota" in stuck.detail
    late = {
        "metadata": {"name": "chat-a10g"},
        "status": {
            "conditions": [
                {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "too slow"}
            ]
        },
    }
    assert (failures.deployment_cause(late) or failures.Stuck("", "", "", "")).cause == "ProgressDeadlineExceeded"


def test_a_stuck_pod_makes_the_resource_degraded_with_one_event() -> None:
    obs = converged(qwd())
    bad = gpu_pod("chat-l40s-abc", waiting("ImagePullBackOff"))
    with_pod = Observed(qwd=obs.qwd, deployments=obs.deployments, others=obs.others, nodes=NODES, pods=[bad])
    out = compute(with_pod, CATALOG, now="T")
    assert out.status is not None
    degraded = next(c for c in out.status["conditions"] if c["type"] == cond.DEGRADED)
    assert degraded["status"] == "True" and degraded["reason"] == "ImagePullBackOff"
    assert "Pod chat-l40s-abc" in degraded["message"] and "tgi:9.9" in degraded["message"]
    assert [(e.type, e.reason) for e in out.events] == [("Warning", "ImagePullBackOff")]
    # once status says so, the next reconcile neither writes nor posts the Event again
    q = copy.deepcopy(dict(obs.qwd))
    q["status"] = {**q["status"], **out.status}
    again = compute(Observed(qwd=q, deployments=obs.deployments, others=obs.others, nodes=NODES, pods=[bad]), CATALOG)
    assert again.writes == 0 and again.events == []

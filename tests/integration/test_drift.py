"""Level-based reconcile, create-once and stuck workloads on the real control plane.

Drift: a manual change to an owned object (``kubectl scale`` to 0, an edited image or
label on a pool Deployment, a Service selector, a PDB) is reverted by the next reconcile,
and a world at rest changes no ``resourceVersion``. Create once: a new ``s3://`` resource
creates no pool before its version resolves, then creates each pool on the digest, whose
pod template never changes afterwards (no second roll). Stuck workloads: pods a
ResourceQuota or Pod Security admission refuses (the ReplicaSet controller's
``ReplicaFailure``) make the resource ``Degraded`` naming the Deployment and the cause.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch
from test_controller import Qwd, resource  # the harness of the controller tests
from test_rollout import (  # the rollout tests' S3 harness (sandbox fixtures come from the plugin)
    VERSION_ANNOTATION,
    Fleet,
    create,
    models,
    push,
    start_operator,
)

from qwen_operator.sandbox.cluster import Sandbox
from qwen_operator.testing.operator import OperatorProcess
from qwen_operator.testing.s3 import S3Bucket
from qwen_operator.testing.wait import wait_for

pytestmark = pytest.mark.cluster
__all__ = ["models", "start_operator"]  # fixtures used here by name
RESYNC = 5.0  # OperatorProcess runs --resync-seconds 5
REVERT_WITHIN = RESYNC + 10.0  # one resync plus the watch and API round trips on a loaded 2-core VM


@pytest.fixture
def operator(sandbox: Sandbox, qwen_crd: Path, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    op = OperatorProcess(sandbox.kubeconfig, tmp_path / "operator.log", extra=["--namespace", namespace]).start()
    try:
        yield op
    finally:
        op.stop()
        print(f"--- operator log tail ---\n{op.tail(40)}")


@pytest.fixture
def ready(kube_api: Any, namespace: str, operator: OperatorProcess) -> Qwd:
    """``drift``: 2 replicas on L40S, Ready."""
    qwds = Qwd(kube_api, namespace)
    qwds.create(resource("drift", replicas=2, gpu_types=["L40S"]))
    wait_for("Ready", lambda: qwds.ready("drift"), timeout=120)
    return qwds


def drift_events(qwds: Qwd) -> list[str]:
    evs = qwds.core.list_namespaced_event(qwds.ns, field_selector="involvedObject.name=drift").items
    return [e.message for e in evs if e.reason == "DriftReverted"]


def server(dep: Any) -> Any:
    return next(c for c in dep.spec.template.spec.containers if c.name != "model-pull")


def test_kubectl_scale_an_image_and_a_label_edit_on_a_pool_are_reverted(
    ready: Qwd, kubectl: Any, operator: OperatorProcess
) -> None:
    qwds, ns = ready, ready.ns
    image = server(qwds.apps.read_namespaced_deployment("drift-l40s", ns)).image

    kubectl("scale", "deploy/drift-l40s", "--replicas=0", "-n", ns)
    wait_for(
        "replicas restored to 2",
        lambda: qwds.apps.read_namespaced_deployment("drift-l40s", ns).spec.replicas == 2,
        timeout=REVERT_WITHIN,
    )
    wait_for("Ready again", lambda: qwds.ready("drift") and len(qwds.ready_pods("drift")) >= 2, timeout=120)

    container = server(qwds.apps.read_namespaced_deployment("drift-l40s", ns)).name
    kubectl("set", "image", "deploy/drift-l40s", f"{container}=registry.invalid/evil:1", "-n", ns)
    wait_for(
        "image restored",
        lambda: server(qwds.apps.read_namespaced_deployment("drift-l40s", ns)).image == image,
        timeout=REVERT_WITHIN,
    )

    kubectl("label", "deploy/drift-l40s", "app.kubernetes.io/component=hijacked", "--overwrite", "-n", ns)
    wait_for(
        "label restored",
        lambda: (
            qwds.apps.read_namespaced_deployment("drift-l40s", ns).metadata.labels["app.kubernetes.io/component"]
            != "hijacked"
        ),
        timeout=REVERT_WITHIN,
    )
    # each revert posted its Warning (after its apply: wait for the last one)
    messages = wait_for(
        "a DriftReverted Event per change",
        lambda: (
            (m := drift_events(qwds))
            and all(any(part in x for x in m) for part in ("spec.replicas", "image", "metadata.labels"))
            and m
        ),
        timeout=30,
    )
    assert len(messages) >= 3, messages
    assert operator.alive(), operator.tail()


def test_a_service_selector_and_a_pdb_edit_are_reverted(ready: Qwd, kubectl: Any) -> None:
    qwds, ns = ready, ready.ns
    selector = qwds.core.read_namespaced_service("drift", ns).spec.selector
    patch = {"spec": {"selector": {"app.kubernetes.io/component": "nothing", "team": "x"}}}
    kubectl("patch", "service/drift", "--type=merge", "-p", json.dumps(patch), "-n", ns)
    wait_for(
        "Service selector restored",
        lambda: qwds.core.read_namespaced_service("drift", ns).spec.selector == selector,
        timeout=REVERT_WITHIN,
    )
    policy = client.PolicyV1Api(qwds.apps.api_client)
    want = policy.read_namespaced_pod_disruption_budget("drift", ns).spec.max_unavailable
    kubectl("patch", "pdb/drift", "--type=merge", "-p", json.dumps({"spec": {"maxUnavailable": 0}}), "-n", ns)
    wait_for(
        "PDB restored",
        lambda: policy.read_namespaced_pod_disruption_budget("drift", ns).spec.max_unavailable == want,
        timeout=REVERT_WITHIN,
    )
    wait_for(
        "a DriftReverted Event for the Service and the PDB",
        lambda: (
            (m := drift_events(qwds))
            and any(x.startswith("Service drift") and "spec.selector" in x for x in m)
            and any(x.startswith("PodDisruptionBudget drift") and "maxUnavailable" in x for x in m)
        ),
        timeout=30,
    )


def test_a_world_at_rest_changes_no_resource_version(ready: Qwd, operator: OperatorProcess) -> None:
    qwds, ns = ready, ready.ns
    wait_for("pools settled", lambda: (qwds.condition("drift", "Progressing") or {}).get("reason") == "Stable")

    def versions() -> dict[str, str]:
        objs = [
            *qwds.apps.list_namespaced_deployment(ns).items,
            *qwds.core.list_namespaced_service(ns).items,
            *client.PolicyV1Api(qwds.apps.api_client).list_namespaced_pod_disruption_budget(ns).items,
        ]
        out = {f"{o.kind or type(o).__name__}/{o.metadata.name}": o.metadata.resource_version for o in objs}
        out["qwd/drift"] = qwds.get("drift")["metadata"]["resourceVersion"]
        return out

    before = versions()
    # > two resyncs: every no-op reconcile compares the live objects and must find nothing to write
    threading.Event().wait(2.5 * RESYNC)
    after = versions()
    assert after == before, {k: (before.get(k), v) for k, v in after.items() if before.get(k) != v}
    assert not drift_events(qwds)
    assert operator.alive(), operator.tail()


@pytest.mark.s3
def test_a_new_s3_resource_waits_for_its_digest_then_creates_each_pool_once(
    kube_api: Any, namespace: str, s3_bucket: S3Bucket, models: dict[str, Path], start_operator: Any
) -> None:
    op = start_operator()
    fleet = Fleet(kube_api, namespace)
    seen: dict[str, set[str]] = {}
    stop = threading.Event()

    def record() -> None:  # every version any pool Deployment's pod template ever had
        w, listing = watch.Watch(), fleet.apps.list_namespaced_deployment
        while not stop.is_set():
            pools = "serving.qwenops.io/pool"  # any pool Deployment
            for ev in w.stream(listing, namespace, label_selector=pools, timeout_seconds=2):
                dep = ev["object"]
                version = (dep.spec.template.metadata.annotations or {}).get(VERSION_ANNOTATION)
                seen.setdefault(dep.metadata.name, set()).add(str(version))

    recorder = threading.Thread(target=record, daemon=True)
    recorder.start()
    try:
        create(fleet, s3_bucket, canary_replicas=0, replicas=2, gpu_types=("A10G",))  # nothing pushed yet
        degraded = wait_for(
            "Degraded: the version does not resolve",
            lambda: (c := fleet.condition("Degraded")).get("reason") == "VersionNotFound" and c,
            timeout=30,
        )
        assert degraded["status"] == "True"
        assert fleet.condition("Progressing").get("reason") == "WaitingForModelVersion"
        assert not [d for d in fleet.deployments() if not d.endswith("-router")], "a pool before the version resolved"

        v1 = push(s3_bucket, models["v1"], "v1")
        wait_for("ModelSynced on v1", lambda: fleet.synced_on(v1), timeout=120)
        wait_for("Ready", lambda: fleet.condition("Ready").get("status") == "True", timeout=60)
    finally:
        stop.set()
        recorder.join(5)
    pools = {n: d for n, d in fleet.deployments().items() if "serving.qwenops.io/pool" in (d.metadata.labels or {})}
    assert list(pools) == ["chat-a10g"]
    assert seen == {"chat-a10g": {v1}}, seen  # created on the digest: never the floating tag
    assert pools["chat-a10g"].metadata.generation == 1  # the spec was never changed after creation
    assert fleet.condition("Degraded").get("status") == "False"
    reasons = [r for _, r, _ in fleet.events()]
    assert "PoolUpdated" not in reasons and reasons.count("PoolCreated") == 1, reasons
    assert op.alive(), op.tail()


def degraded_as(qwds: Qwd, name: str, reason: str) -> dict[str, Any]:
    cond = wait_for(
        f"Degraded={reason}",
        lambda: (c := qwds.condition(name, "Degraded")) and c["status"] == "True" and c["reason"] == reason and c,
        timeout=60,
    )
    return dict(cond)


def test_a_resource_quota_rejecting_the_pods_makes_the_resource_degraded(
    kube_api: Any, namespace: str, operator: OperatorProcess
) -> None:
    qwds = Qwd(kube_api, namespace)
    quota = {"metadata": {"name": "no-gpus"}, "spec": {"hard": {"requests.nvidia.com/gpu": "0"}}}
    qwds.core.create_namespaced_resource_quota(namespace, quota)
    qwds.create(resource("quota", replicas=1, gpu_types=["L40S"]))
    cond = degraded_as(qwds, "quota", "ReplicaFailure")  # the ReplicaSet controller's FailedCreate
    assert "Deployment quota-l40s" in cond["message"] and "exceeded quota" in cond["message"], cond
    evs = qwds.core.list_namespaced_event(namespace, field_selector="involvedObject.name=quota").items
    assert [e for e in evs if e.reason == "ReplicaFailure" and e.type == "Warning" and "quota-l40s" in e.message]
    qwds.core.delete_namespaced_resource_quota("no-gpus", namespace)
    wait_for("Degraded cleared once pods can be created", lambda: qwds.ready("quota"), timeout=120)
    assert (qwds.condition("quota", "Degraded") or {}).get("status") == "False"


def test_pods_rejected_by_pod_security_make_the_resource_degraded(
    kube_api: Any, namespace: str, operator: OperatorProcess, kubectl: Any
) -> None:
    # the model-pull init container runs as root and the cache is a hostPath: "restricted" refuses both
    kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    qwds = Qwd(kube_api, namespace)
    qwds.create(resource("psa", replicas=1, gpu_types=["L40S"]))
    cond = degraded_as(qwds, "psa", "ReplicaFailure")
    assert "violates PodSecurity" in cond["message"] and "Deployment psa-" in cond["message"], cond

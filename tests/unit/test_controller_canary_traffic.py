"""A canary that passed its smoke test keeps serving its router share while the pools roll.

The router sends ``spec.routing.canaryTrafficPercent`` to a canary pod only after its
version ``Passed`` (``router/discovery.py``); before, the canary Deployment was deleted the
moment it passed, so that share never reached it. :func:`rollout.canary_kept` decides, from
cluster state only (``status.model``, the live Deployments, free GPUs), whether the passed
canary stays: until every pool serves its version, never re-created, and given up at once
when a pool waits for a GPU (keeping it must never stall the roll).

Whole rollouts are played through the real reconciler (``compute``) and the watcher's
decision (``decide``) on a world whose Deployments settle instantly and whose pods hold
their GPUs, so free GPUs are counted as the controller counts them.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest

from qwen_operator.api.spec import QwenDeploymentSpec
from qwen_operator.catalog import load_catalog
from qwen_operator.controller.reconcile import Observed, compute
from qwen_operator.controller.rollout import (
    FAILED,
    GPU_TYPE_ANNOTATION,
    PASSED,
    TESTING,
    Canary,
    ModelState,
    Resolution,
    SyncInput,
    canary_kept,
    canary_urls,
    canary_wanted,
    decide,
    is_canary,
    pool_pods_unschedulable,
    pools_on,
    template_version,
)

CATALOG = load_catalog(None)
V1, V2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
PRODUCT = {"L40S": "NVIDIA-L40S", "A10G": "NVIDIA-A10G"}


def spec(percent: float = 20, routing: bool = True, canary_replicas: int = 1) -> QwenDeploymentSpec:
    return QwenDeploymentSpec.model_validate(
        {
            "model": {"name": "Qwen/Qwen3-14B", "registry": "s3://models/q", "quantization": "fp8"},
            "placement": {"gpuTypes": ["A10G", "L40S"]},
            "replicas": 2,
            "rollout": {"maxSurge": 1, "canaryReplicas": canary_replicas},
            "routing": {"enabled": routing, "canaryTrafficPercent": percent},
        }
    )


def canary_dep(version: str, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "chat-l40s-canary", "labels": {"serving.qwenops.io/canary": "true"}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    tmpl = {"metadata": {"annotations": {"serving.qwenops.io/model-version": version}}}
    return {"kind": "Deployment", "metadata": meta, "spec": {"template": tmpl}}


PASSED_V2 = ModelState(current=V1, target=V2, resolved_from="stable", canary=Canary(V2, PASSED, "ok"))


@pytest.mark.parametrize(
    ("model", "the_spec", "live", "gpus_wanted", "kept"),
    [
        (PASSED_V2, spec(), [canary_dep(V2)], False, V2),  # passed, pools rolling: keep serving
        (PASSED_V2, spec(), [], False, None),  # never created after Passed
        (PASSED_V2, spec(), [canary_dep(V2, deleting=True)], False, None),
        (PASSED_V2, spec(), [canary_dep(V1)], False, None),  # a canary of another version
        (PASSED_V2, spec(), [canary_dep(V2)], True, None),  # a pool waits for a GPU: give it up
        (PASSED_V2, spec(percent=0), [canary_dep(V2)], False, None),  # no share: nothing to serve
        (PASSED_V2, spec(routing=False), [canary_dep(V2)], False, None),  # no router, no canary rule
        (PASSED_V2, spec(canary_replicas=0), [canary_dep(V2)], False, None),
        (replace(PASSED_V2, current=V2), spec(), [canary_dep(V2)], False, None),  # every pool serves it
        (replace(PASSED_V2, canary=Canary(V2, TESTING)), spec(), [canary_dep(V2)], False, None),  # canary_wanted's
        (replace(PASSED_V2, canary=Canary(V2, FAILED), failed=V2), spec(), [canary_dep(V2)], False, None),
        (replace(PASSED_V2, canary=None), spec(), [canary_dep(V2)], False, None),
    ],
)
def test_canary_kept(
    model: ModelState, the_spec: QwenDeploymentSpec, live: list[dict[str, Any]], gpus_wanted: bool, kept: str | None
) -> None:
    assert canary_kept(model, the_spec, live, gpus_wanted) == kept


# -- whole rollouts ------------------------------------------------------------------------------
def node(name: str, gpu: str, gpus: int) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": PRODUCT[gpu]}},
        "spec": {},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}, "conditions": [{"type": "Ready", "status": "True"}]},
    }


class World:
    """API server, Deployment controller and scheduler, settling instantly; pods hold GPUs."""

    def __init__(self, nodes: list[dict[str, Any]], percent: float) -> None:
        spec = {
            "model": {"name": "Qwen/Qwen3-14B", "registry": "s3://models/q", "quantization": "fp8"},
            "placement": {"gpuTypes": ["A10G", "L40S"]},
            "replicas": 2,
            "rollout": {"maxSurge": 1, "canaryReplicas": 1},
            "routing": {"canaryTrafficPercent": percent},
        }
        meta = {"name": "chat", "namespace": "llm", "uid": "u", "generation": 1}
        self.qwd: dict[str, Any] = {"metadata": meta, "spec": spec, "status": {}}
        self.nodes = nodes
        self.live: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: list[str] = []
        self.canary_applies = 0
        self.surge: dict[str, Any] | None = None  # a roll's surge pod, as the scheduler left it
        self.old_pod = False  # mid-roll: the pool's first pod still runs the version it started on

    def pods(self) -> list[dict[str, Any]]:
        """One pod per replica of each GPU Deployment, on a node of its GPU type."""
        on = {n["metadata"]["labels"]["nvidia.com/gpu.product"]: n["metadata"]["name"] for n in self.nodes}
        out = []
        for dep in self.deployments().values():
            gpu = (dep["metadata"].get("annotations") or {}).get(GPU_TYPE_ANNOTATION)
            if gpu is None:
                continue  # the router
            tmpl = dep["spec"]["template"]
            for i in range(int(dep["spec"]["replicas"])):
                meta = {**tmpl["metadata"], "name": f"{dep['metadata']['name']}-{i}", "namespace": "llm"}
                if self.old_pod and i == 0 and not is_canary(dep):
                    meta["annotations"] = {**meta["annotations"], "serving.qwenops.io/model-version": V1}
                pod_spec = {**tmpl["spec"], "nodeName": on[PRODUCT[gpu]]}
                ready = {"podIP": "10.0.0.7", "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
                out.append({"metadata": meta, "spec": pod_spec, "status": ready})
        return out + ([self.surge] if self.surge is not None else [])

    def surge_pod(self, scheduled: bool) -> None:
        """The pool's surge pod: on the L40S node (taking a GPU), or Unschedulable (no GPU free)."""
        tmpl = self.deployments()["chat-l40s"]["spec"]["template"]
        meta = {**tmpl["metadata"], "name": "chat-l40s-surge", "namespace": "llm"}
        if scheduled:
            spec, status = {**tmpl["spec"], "nodeName": "l0"}, {"phase": "Running", "conditions": []}
        else:
            unschedulable = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}
            spec, status = dict(tmpl["spec"]), {"phase": "Pending", "conditions": [unschedulable]}
        self.surge = {"metadata": meta, "spec": spec, "status": status}

    def reconcile(self) -> None:
        for _ in range(8):
            objs = list(self.live.values())
            obs = Observed(
                qwd=copy.deepcopy(self.qwd),
                deployments=[o for o in objs if o["kind"] == "Deployment"],
                others=[o for o in objs if o["kind"] != "Deployment"],
                nodes=self.nodes,
                pods=self.pods(),
            )
            out = compute(obs, CATALOG, now="T")
            if not out.writes:
                return
            for m in out.apply:
                live = copy.deepcopy(m)
                n = (m.get("spec") or {}).get("replicas", 0)
                live["metadata"]["generation"] = 1
                live["status"] = {"observedGeneration": 1, "replicas": n, "updatedReplicas": n, "readyReplicas": n}
                self.live[(m["kind"], m["metadata"]["name"])] = live
                self.canary_applies += m["kind"] == "Deployment" and is_canary(m)
            for d in out.delete:
                self.live.pop((d["kind"], d["metadata"]["name"]))
            if out.status is not None:
                self.qwd["status"] = {**self.qwd["status"], **out.status}
            self.events += [e.reason for e in out.events]
        raise AssertionError("reconcile did not converge")

    def deployments(self) -> dict[str, dict[str, Any]]:
        return {n: d for (k, n), d in self.live.items() if k == "Deployment"}

    def watch(self, digest: str, smoke: tuple[bool, str] | None = None) -> None:
        """One step of the version watcher (its smoke test answered by ``smoke``)."""
        model = ModelState.from_status(self.qwd["status"])
        deps = [
            d for d in self.deployments().values() if GPU_TYPE_ANNOTATION in (d["metadata"].get("annotations") or {})
        ]
        urls = canary_urls("chat", "llm", digest, 1, [p for p in self.pods() if "canary" in p["metadata"]["name"]])
        base = SyncInput("stable", 1, model, Resolution(digest), 77, pools_on(deps, digest), urls)
        step = decide(base)
        if step.smoke_urls:
            assert smoke is not None, "a smoke test was due"
            step = decide(replace(base, smoke=smoke))
        self.qwd["status"]["model"] = step.model.to_status()
        self.events += [e[1] for e in step.events]

    def canary(self) -> dict[str, Any] | None:
        return self.deployments().get("chat-l40s-canary")

    def to_testing_canary(self) -> None:
        self.reconcile()
        self.watch(V1)
        self.reconcile()
        self.watch(V1)  # pools settled on V1: currentVersion
        self.reconcile()
        assert self.qwd["status"]["model"]["currentVersion"] == V1
        self.watch(V2)  # the tag moved: a canary under test
        self.reconcile()
        canary = self.canary()
        assert canary is not None and template_version(canary) == V2
        assert template_version(self.deployments()["chat-l40s"]) == V1


@pytest.mark.parametrize("percent", [20.0, 0.0])
def test_a_passed_canary_serves_while_the_pools_roll_then_goes(percent: float) -> None:
    w = World([node("l0", "L40S", 8)], percent)
    w.to_testing_canary()
    applies = w.canary_applies
    w.watch(V2, smoke=(True, "1 canary replica(s) answered"))
    assert w.qwd["status"]["model"]["canary"]["phase"] == PASSED
    w.reconcile()
    assert template_version(w.deployments()["chat-l40s"]) == V2  # the pools roll at once
    if percent:
        # the canary stays (untouched: not re-applied, same object) for its router share
        canary = w.canary()
        assert canary is not None and template_version(canary) == V2
        assert w.canary_applies == applies and "CanaryRemoved" not in w.events
        assert ModelState.from_status(w.qwd["status"]).current == V1
    else:
        assert w.canary() is None and "CanaryRemoved" in w.events  # no share: nothing to keep it for
    w.watch(V2)  # every pool serves V2: currentVersion := V2
    w.reconcile()
    assert ModelState.from_status(w.qwd["status"]).current == V2
    assert w.canary() is None and w.events.count("CanaryRemoved") == 1
    w.watch(V2)
    w.reconcile()
    assert w.canary() is None and w.events.count("CanaryCreated") == 1  # never re-created


def test_a_surge_pod_on_the_last_free_gpu_does_not_make_the_canary_go() -> None:
    # four L40S GPUs: two pool replicas, the canary and the roll's surge pod: none free, and the
    # roll goes on (what a free-GPU count would mistake for a pool waiting for a GPU)
    w = World([node("l0", "L40S", 4)], 20.0)
    w.to_testing_canary()
    w.watch(V2, smoke=(True, "ok"))
    w.reconcile()
    w.surge_pod(scheduled=True)
    w.old_pod = True  # mid-roll: one pod still on V1, the surge pod on V2 holds the last GPU
    w.reconcile()
    assert w.canary() is not None and "CanaryRemoved" not in w.events
    w.surge, w.old_pod = None, False
    w.watch(V2)
    w.reconcile()
    assert ModelState.from_status(w.qwd["status"]).current == V2 and w.canary() is None


def test_a_passed_canary_gives_its_gpu_to_a_roll_waiting_for_one_and_is_not_re_created() -> None:
    # three L40S GPUs: two pool replicas and the canary; the roll's surge pod finds none
    w = World([node("l0", "L40S", 3)], 20.0)
    w.to_testing_canary()
    w.watch(V2, smoke=(True, "ok"))
    model = ModelState.from_status(w.qwd["status"])
    assert canary_wanted(model, 1) is None and model.current == V1
    w.reconcile()
    assert w.canary() is not None  # kept until a pool actually waits
    w.surge_pod(scheduled=False)
    w.reconcile()
    # the pool's surge pod needs the canary's GPU: the canary goes before the roll finished
    assert w.canary() is None and "CanaryRemoved" in w.events
    assert ModelState.from_status(w.qwd["status"]).current == V1
    w.surge_pod(scheduled=True)  # it gets the freed GPU
    w.reconcile()
    assert w.canary() is None  # not re-created: it passed, and its GPU is the pool's now
    w.surge = None
    for _ in range(2):
        w.watch(V2)
        w.reconcile()
    assert ModelState.from_status(w.qwd["status"]).current == V2
    assert template_version(w.deployments()["chat-l40s"]) == V2
    assert w.canary() is None and w.events.count("CanaryCreated") == 1


@pytest.mark.parametrize(
    ("labels", "node", "conditions", "waits"),
    [
        ({}, None, [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}], True),
        ({}, None, [], False),  # just created: the scheduler has not tried yet
        ({}, "l0", [{"type": "PodScheduled", "status": "True"}], False),
        (
            {"serving.qwenops.io/canary": "true"},
            None,
            [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}],
            False,
        ),
        (
            {"app.kubernetes.io/component": "router"},
            None,
            [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}],
            False,
        ),
        (
            {"serving.qwenops.io/deployment": "other"},
            None,
            [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}],
            False,
        ),
    ],
)
def test_pool_pods_unschedulable(labels: dict[str, str], node: str | None, conditions: list[Any], waits: bool) -> None:
    base = {"serving.qwenops.io/deployment": "chat", "app.kubernetes.io/component": "server"}
    pod = {
        "metadata": {"name": "p", "namespace": "llm", "labels": {**base, **labels}},
        "spec": {"nodeName": node} if node else {},
        "status": {"phase": "Pending", "conditions": conditions},
    }
    assert pool_pods_unschedulable("chat", "llm", [pod]) is waits


def test_a_pool_pod_turning_unschedulable_wakes_its_owner_at_once() -> None:
    """Not only at the next resync: the passed canary's GPUs go to the waiting pool now."""
    import asyncio

    from qwen_operator.controller.handlers import Controller

    ctl = Controller(kube=None, catalog=CATALOG)  # type: ignore[arg-type]  # this path makes no API call
    key = ("llm", "chat")
    ctl.triggers[key] = asyncio.Event()
    labels = {"serving.qwenops.io/deployment": "chat", "app.kubernetes.io/component": "server"}
    pending = {
        "metadata": {"namespace": "llm", "name": "chat-l40s-surge", "labels": labels},
        "spec": {},
        "status": {"phase": "Pending", "conditions": []},
    }
    ctl.on_pod("ADDED", pending)
    ctl.triggers[key].clear()
    unschedulable = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/1 nodes"}
    ctl.on_pod("MODIFIED", {**pending, "status": {"phase": "Pending", "conditions": [unschedulable]}})
    assert ctl.triggers[key].is_set()
    ctl.triggers[key].clear()
    ctl.on_pod(
        "MODIFIED", {**pending, "status": {"phase": "Pending", "conditions": [{**unschedulable, "message": "x"}]}}
    )
    assert not ctl.triggers[key].is_set()  # quiet: no change in whether it waits

"""status.model.staging and the roll's wait for pre-staging (controller/prestage.py), and how the
reconciler's pool version follows the wait (rollout.pool_version)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from qwen_operator.catalog import DEFAULT_GPUS
from qwen_operator.controller import conditions as cond
from qwen_operator.controller.prestage import PRESTAGING, STAGED, TIMED_OUT, eligible_nodes, gate, staging
from qwen_operator.controller.rollout import ModelState, Prestage, pool_version
from qwen_operator.nodeagent.plan import CACHE_ANNOTATION, parse_resource, report_json
from qwen_operator.render.workload import OperatorDefaults

V1, V2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
ID1, ID2 = "1" * 16, "2" * 16
NOW = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)
ROLLING = cond.Condition(cond.MODEL_SYNCED, False, "RollingOut", "Rolling pools")


def node(name: str, gpu: str, held: list[str] | None, **labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "labels": {"nvidia.com/gpu.product": DEFAULT_GPUS[gpu].product_labels[0], **labels},
    }
    if held is not None:
        meta["annotations"] = {CACHE_ANNOTATION: report_json({"llm.chat": held} if held else {})}
    return {"metadata": meta, "spec": {}}


def server_pod(node_name: str) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "llm", "name": "chat-a10g-x", "labels": {"serving.qwenops.io/deployment": "chat"}},
        "spec": {"nodeName": node_name},
        "status": {"phase": "Running"},
    }


def resource(current: str | None = V1, target: str | None = V2, **spec: Any) -> Any:
    body = {
        "metadata": {"namespace": "llm", "name": "chat"},
        "spec": {
            "model": {"name": "Qwen/Qwen3-8B", "registry": "s3://b/p"},
            "placement": {"gpuTypes": ["A10G"]},
            **spec,
        },
        "status": {"model": {"currentVersion": current, "targetVersion": target}},
    }
    r = parse_resource(body)
    assert r is not None
    return r


def test_staging_counts_eligible_nodes_and_those_holding_each_version() -> None:
    r = resource()
    nodes = [
        node("a", "A10G", [ID1, ID2]),
        node("b", "A10G", [ID1]),
        node("c", "A10G", None),  # no agent yet: eligible, holds nothing
        node("l", "L40S", [ID1, ID2]),  # not an allowed type
        {**node("d", "A10G", [ID2]), "spec": {"unschedulable": True}},  # cordoned
    ]
    eligible = eligible_nodes(r, nodes, DEFAULT_GPUS, OperatorDefaults())
    assert [n["metadata"]["name"] for n in eligible] == ["a", "b", "c"]
    got = {(s.version, s.eligible, s.holding) for s in staging(r, eligible)}
    assert got == {(V1, 3, 2), (V2, 3, 1)}
    m = ModelState(current=V1, target=V2, staging=staging(r, eligible))
    status = m.to_status()
    assert {"version": V2, "eligibleNodes": 3, "nodesWithVersion": 1} in status["staging"]
    assert ModelState.from_status({"model": status}) == m  # round trip: the reconciler's write keeps it
    no_agents = [node("a", "A10G", None), node("b", "A10G", None)]
    assert staging(r, no_agents) == ()  # no node agent deployed: nothing to count


def test_a_roll_waits_for_the_nodes_running_its_replicas_then_rolls() -> None:
    r = resource()
    m = ModelState(current=V1, target=V2)
    nodes = [node("a", "A10G", [ID1]), node("b", "A10G", [ID1, ID2])]
    spec = r.spec
    step = gate(m, ROLLING, spec, r, nodes, [server_pod("a")], NOW)
    assert step.model.prestage is not None and step.model.prestage.phase == "Waiting"
    assert step.condition is not None and step.condition.reason == PRESTAGING
    assert "0 of 1 node(s) running its replicas" in step.condition.message and "missing: a" in step.condition.message
    assert pool_version(step.model) == V1  # the pools stay on the current version
    assert [e[1] for e in step.events] == [PRESTAGING]

    later = NOW + dt.timedelta(seconds=30)
    again = gate(step.model, ROLLING, spec, r, nodes, [server_pod("a")], later)
    assert again.model.prestage == step.model.prestage and again.events == ()  # nothing new: no write

    nodes[0] = node("a", "A10G", [ID2, ID1])
    done = gate(again.model, ROLLING, spec, r, nodes, [server_pod("a")], later)
    assert done.model.prestage is not None and done.model.prestage.phase == STAGED and done.condition is None
    assert done.model.prestage.since == step.model.prestage.since
    assert pool_version(done.model) == V2
    # once staged, a node losing the version does not hold the roll again
    nodes[0] = node("a", "A10G", [ID1])
    assert gate(done.model, ROLLING, spec, r, nodes, [server_pod("a")], later).model == done.model


def test_without_replicas_every_eligible_node_with_an_agent_is_waited_for() -> None:
    r = resource()
    nodes = [node("a", "A10G", [ID2]), node("b", "A10G", [ID1]), node("c", "A10G", None)]
    step = gate(ModelState(current=V1, target=V2), ROLLING, r.spec, r, nodes, [], NOW)
    assert step.condition is not None and "1 of 2 node(s) eligible" in step.condition.message
    assert "missing: b" in step.condition.message


def test_the_wait_ends_after_the_timeout_counted_from_since() -> None:
    r = resource(rollout={"prestageTimeoutSeconds": 60})
    since = (NOW - dt.timedelta(seconds=61)).strftime("%Y-%m-%dT%H:%M:%SZ")
    m = ModelState(current=V1, target=V2, prestage=Prestage(V2, "Waiting", since, ""))
    nodes = [node("a", "A10G", [ID1])]
    step = gate(m, ROLLING, r.spec, r, nodes, [], NOW)
    assert step.model.prestage is not None and step.model.prestage.phase == TIMED_OUT
    assert step.condition is None and pool_version(step.model) == V2
    assert step.events[0][:2] == ("Warning", "PrestageTimeout")
    still = gate(m, ROLLING, r.spec, r, nodes, [], NOW - dt.timedelta(seconds=2))
    assert still.model.prestage is not None and still.model.prestage.phase == "Waiting"


def test_no_wait_without_agents_when_off_on_a_new_resource_or_during_a_canary() -> None:
    r = resource()
    m = ModelState(current=V1, target=V2)
    no_agents = [node("a", "A10G", None)]
    assert gate(m, ROLLING, r.spec, r, no_agents, [], NOW).model == m
    with_agent = [node("a", "A10G", [ID1])]
    off = resource(model={"name": "Qwen/Qwen3-8B", "registry": "s3://b/p", "prestage": False})
    assert gate(m, ROLLING, off.spec, off, with_agent, [], NOW).model == m
    zero = resource(rollout={"prestageTimeoutSeconds": 0})
    assert gate(m, ROLLING, zero.spec, zero, with_agent, [], NOW).model == m
    fresh = ModelState(current=None, target=V2)  # nothing serves yet: the pods pull it themselves
    assert gate(fresh, ROLLING, r.spec, r, with_agent, [], NOW).model == fresh
    canary = cond.Condition(cond.MODEL_SYNCED, False, "CanaryStarting", "")
    assert gate(m, canary, r.spec, r, with_agent, [], NOW).model == m


def test_a_node_annotation_change_pokes_only_the_resources_whose_entries_changed() -> None:
    from qwen_operator.catalog import Catalog
    from qwen_operator.controller.handlers import Controller

    poked: list[tuple[str, str]] = []
    ctl = Controller(kube=None, catalog=Catalog())  # type: ignore[arg-type]
    ctl.versions = type("V", (), {"poke": lambda self, key: poked.append(key)})()
    ctl.qwds = {("llm", "chat"): {}, ("llm", "batch"): {}, ("other", "chat"): {}}
    ctl.on_node("ADDED", node("a", "A10G", None))
    assert poked == []  # no agent yet
    ctl.on_node("MODIFIED", node("a", "A10G", [ID1]))  # llm.chat staged
    assert poked == [("llm", "chat")]
    poked.clear()
    ctl.on_node("MODIFIED", node("a", "A10G", [ID1]))  # a resync: nothing changed
    assert poked == []
    ctl.on_node("MODIFIED", node("a", "A10G", [ID2, ID1]))
    assert poked == [("llm", "chat")]

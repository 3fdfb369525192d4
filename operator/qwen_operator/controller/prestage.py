"""Pre-staging as the operator sees it: ``status.model.staging`` and the roll's wait (pure).

The node agents (:mod:`qwen_operator.nodeagent`) publish what each GPU node's cache holds
as the Node annotation ``serving.qwenops.io/model-cache``. From the operator's node cache
this module computes, per resource:

* :func:`staging`: for the current and target versions, how many **eligible** nodes (an
  allowed GPU type, matching the pods' node selectors, schedulable: the agent's own rule,
  :func:`qwen_operator.nodeagent.plan.ineligible_reason`) there are and how many hold the
  version.
* :func:`gate`: one step of the roll's wait. When the pools would move to a new target
  (the version watcher's decision says ``RollingOut``), ``status.model.prestage`` records a
  ``Waiting`` phase and :func:`~.rollout.pool_version` keeps the pools on the current
  version until every *required* node holds the target -- the eligible nodes running the
  resource's replicas, or every eligible node when none does -- or
  ``spec.rollout.prestageTimeoutSeconds`` passed since the wait began (``since``, in status:
  an operator restart keeps the clock). Then the phase becomes ``Staged`` or ``TimedOut``
  and the roll goes on; a phase other than ``Waiting`` is never re-entered for that version.
  Only nodes that run an agent (they carry the annotation at all) are waited for, so a
  cluster without the node agent never waits.

One writer: ``staging`` and ``prestage`` are part of ``status.model``, which the version
watcher alone writes (under its field manager, with the rest of ``status.model``); the
reconciler only reads ``prestage`` through :func:`~.rollout.pool_version`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..api.spec import QwenDeploymentSpec
from ..catalog import GPUType
from ..nodeagent.plan import CACHE_ANNOTATION, Resource, holds, ineligible_reason
from ..render.names import LABEL_DEPLOYMENT, label_value
from ..render.workload import OperatorDefaults
from . import conditions as cond
from .rollout import PRESTAGE_WAITING, ModelState, Prestage, Staging, parse_time, short

PRESTAGING = "Prestaging"
STAGED, TIMED_OUT = "Staged", "TimedOut"


def _annotation(node: Mapping[str, Any]) -> str | None:
    value = ((node.get("metadata") or {}).get("annotations") or {}).get(CACHE_ANNOTATION)
    return None if value is None else str(value)


def _labels(node: Mapping[str, Any]) -> dict[str, str]:
    return dict((node.get("metadata") or {}).get("labels") or {})


def eligible_nodes(
    res: Resource, nodes: Iterable[Mapping[str, Any]], gpus: Mapping[str, GPUType], defaults: OperatorDefaults
) -> list[Mapping[str, Any]]:
    """Schedulable nodes the resource's replicas could run on and the node agent stages it on."""
    return [
        n
        for n in nodes
        if not (n.get("spec") or {}).get("unschedulable") and ineligible_reason(res, _labels(n), gpus, defaults) is None
    ]


def staging(res: Resource, eligible: Iterable[Mapping[str, Any]]) -> tuple[Staging, ...]:
    """``status.model.staging``: current and target versions, eligible nodes and nodes holding each.
    Empty while no eligible node runs a node agent (none carries the annotation): nothing is staged then."""
    nodes = list(eligible)
    if not any(_annotation(n) is not None for n in nodes):
        return ()
    out = []
    for version in dict.fromkeys(v for v in (res.current, res.target) if v):
        holding = sum(1 for n in nodes if holds(_annotation(n), res.model, version))
        out.append(Staging(version, len(nodes), holding))
    return tuple(out)


def hosting_nodes(namespace: str, name: str, pods: Iterable[Mapping[str, Any]]) -> set[str]:
    """Nodes running the resource's live server pods (canary pods included)."""
    out = set()
    for pod in pods:
        meta = pod.get("metadata") or {}
        if meta.get("namespace") != namespace or meta.get("deletionTimestamp"):
            continue
        if (meta.get("labels") or {}).get(LABEL_DEPLOYMENT) != label_value(name):
            continue
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        node = (pod.get("spec") or {}).get("nodeName")
        if node:
            out.add(str(node))
    return out


@dataclass(frozen=True)
class GateStep:
    model: ModelState
    condition: cond.Condition | None  # replaces the watcher's condition when set
    events: tuple[tuple[str, str, str], ...] = ()


def _iso(now: dt.datetime) -> str:
    return now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def gate(
    m: ModelState,
    condition: cond.Condition,
    spec: QwenDeploymentSpec,
    res: Resource,
    eligible: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    now: dt.datetime,
) -> GateStep:
    """One step of the roll's wait for pre-staging (see the module docstring). ``condition`` is the version
    watcher's ModelSynced decision for ``m``; only ``RollingOut`` (the pools are about to move) can wait."""
    target = m.target
    if target is None or m.current is None or target == m.current or condition.reason != "RollingOut":
        return GateStep(m, None)
    p = m.prestage
    if p is not None and p.version == target and p.phase != PRESTAGE_WAITING:
        return GateStep(m, None)  # decided for this version: never waits again
    timeout = spec.rollout.prestage_timeout_seconds
    with_agent = [n for n in eligible if _annotation(n) is not None]
    if not spec.model.prestage_enabled() or timeout <= 0 or not with_agent:
        return GateStep(m, None)
    by_name = {str(n["metadata"]["name"]): n for n in with_agent}
    hosting = hosting_nodes(res.namespace, res.name, pods) & set(by_name)
    required = sorted(hosting or by_name)
    missing = [n for n in required if not holds(_annotation(by_name[n]), res.model, target)]
    since = p.since if p is not None and p.version == target else _iso(now)
    started = parse_time(since) or now
    held = len(required) - len(missing)
    what = f"{held} of {len(required)} node(s) {'running its replicas' if hosting else 'eligible'} hold {short(target)}"
    if not missing:
        done = Prestage(target, STAGED, since, f"{what}: pre-staged; rolling the pools.")
        event = ("Normal", "Prestaged", f"{what}; rolling the pools to it.")
        return GateStep(replace(m, prestage=done), None, (event,))
    elapsed = (now - started).total_seconds()
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    if elapsed >= timeout:
        msg = (
            f"{what} after prestageTimeoutSeconds={timeout} (missing: {shown}); rolling anyway: "
            "the new pods pull what is missing."
        )
        event = ("Warning", "PrestageTimeout", msg)
        return GateStep(replace(m, prestage=Prestage(target, TIMED_OUT, since, msg)), None, (event,))
    waiting = Prestage(target, PRESTAGE_WAITING, since, f"{what} (missing: {shown}).")
    message = (
        f"Waiting for the node agents to pre-stage {short(target)}: {what} (missing: {shown}); pools serve "
        f"{short(m.current)}. The roll starts when they hold it, or after spec.rollout.prestageTimeoutSeconds "
        f"({timeout} s from {since})."
    )
    events: tuple[tuple[str, str, str], ...] = ()
    if p is None or p.version != target:
        events = (("Normal", PRESTAGING, f"Pre-staging {short(target)} before the roll: {what}."),)
    return GateStep(replace(m, prestage=waiting), cond.Condition(cond.MODEL_SYNCED, False, PRESTAGING, message), events)

"""spec.scaling.schedules / predictive on the real control plane: admission naming the field, and a
window open now raising status.autoscaler.desiredReplicas through the running operator."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from qwen_operator.testing.operator import OperatorProcess
from qwen_operator.testing.wait import wait_for

pytestmark = pytest.mark.cluster

GROUP, VERSION, PLURAL = "serving.qwenops.io", "v1alpha1", "qwendeployments"
SAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "qwen3-14b-chat.yaml"


def resource(name: str, scaling: dict[str, Any]) -> dict[str, Any]:
    body = yaml.safe_load(SAMPLE.read_text())
    body["metadata"] = {"name": name}
    body["spec"]["scaling"] = scaling
    body["spec"]["model"].pop("credentialsSecret", None)
    # no registry runs here: hf:// versions are not tracked, so pools start at once (an s3://
    # registry waits for its digest before creating any pool, see test_drift.py)
    body["spec"]["model"]["registry"] = "hf://Qwen/Qwen3-14B"
    body["spec"]["placement"]["gpuTypes"] = ["L40S"]
    return dict(body)


def window(**over: Any) -> dict[str, Any]:
    return {"name": "morning", "start": "08:50", "end": "11:00", "minReplicas": 2, **over}


def test_admission_rejects_bad_schedules_naming_the_field(kube_api: Any, namespace: str, qwen_crd: Path) -> None:
    custom = client.CustomObjectsApi(kube_api)
    base = {"enabled": True, "minReplicas": 1, "maxReplicas": 4}
    cases: list[tuple[str, Callable[[dict[str, Any]], None], list[str]]] = [
        ("bad time", lambda s: s.update(schedules=[window(start="8:50")]), ["spec.scaling.schedules[0].start"]),
        ("hour 24", lambda s: s.update(schedules=[window(end="24:00")]), ["spec.scaling.schedules[0].end"]),
        ("unknown day", lambda s: s.update(schedules=[window(days=["Mon", "Funday"])]), ["days[1]", "Funday"]),
        ("no days", lambda s: s.update(schedules=[window(days=[])]), ["spec.scaling.schedules[0].days"]),
        (
            "start == end",
            lambda s: s.update(schedules=[window(start="09:00", end="09:00")]),
            ["spec.scaling.schedules[0].end", "end must differ from start"],
        ),
        (
            "window minReplicas > maxReplicas",
            lambda s: s.update(schedules=[window(minReplicas=9)]),
            ["spec.scaling.schedules", "minReplicas must be less than or equal to maxReplicas"],
        ),
        ("missing start", lambda s: s.update(schedules=[{"end": "11:00", "minReplicas": 2}]), ["start"]),
        (
            "timezone shape",
            lambda s: s.update(schedules=[window(timezone="Europe/Berlin; rm -rf")]),
            ["spec.scaling.schedules[0].timezone"],
        ),
        (
            "lookback out of range",
            lambda s: s.update(predictive={"enabled": True, "lookbackDays": 0}),
            ["spec.scaling.predictive.lookbackDays"],
        ),
        ("unknown schedule field", lambda s: s.update(schedules=[window(cron="0 9 * * *")]), ["cron"]),
    ]
    for label, mutate, needles in cases:
        scaling = copy.deepcopy(base)
        mutate(scaling)
        body = resource("bad", scaling)
        with pytest.raises(client.ApiException) as err:
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body, field_validation="Strict")
        assert err.value.status in (400, 422), label
        for needle in needles:
            assert needle in err.value.body, f"{label}: {needle!r} not in {err.value.body}"
    # the accepted shapes: a window crossing midnight, days, a zone, predictive with defaults
    good = dict(base, schedules=[window(start="22:00", end="06:00", days=["Fri"], timezone="Europe/Berlin")])
    good["predictive"] = {"enabled": True}
    made = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, resource("good", good))
    assert made["spec"]["scaling"]["schedules"][0]["minReplicas"] == 2
    assert made["spec"]["scaling"]["predictive"]["lookbackDays"] == 7  # defaulted by the apiserver
    defaulted = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, resource("defaulted", dict(base, schedules=[window()]))
    )
    assert defaulted["spec"]["scaling"]["schedules"][0]["days"] == ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
    assert defaulted["spec"]["scaling"]["schedules"][0]["timezone"] == "UTC"


def _autoscaler(custom: Any, namespace: str, name: str) -> dict[str, Any]:
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return dict((obj.get("status") or {}).get("autoscaler") or {})


def _scaling_active(custom: Any, namespace: str, name: str) -> dict[str, Any]:
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == "ScalingActive"), {})


def test_an_open_window_raises_desired_replicas_on_the_sandbox(
    kube_api: Any, namespace: str, operator_process: OperatorProcess
) -> None:
    # the operator runs without Prometheus here: the floor must apply without metrics
    custom = client.CustomObjectsApi(kube_api)
    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(hours=1), now + dt.timedelta(hours=1)  # may cross midnight: allowed
    scaling = {
        "enabled": True,
        "minReplicas": 1,
        "maxReplicas": 3,
        "intervalSeconds": 5,
        "schedules": [window(name="now", start=start.strftime("%H:%M"), end=end.strftime("%H:%M"), minReplicas=2)],
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, resource("warm", scaling))
    wait_for(
        "status.autoscaler.desiredReplicas raised to the window's floor",
        lambda: _autoscaler(custom, namespace, "warm").get("desiredReplicas") == 2,
        timeout=120,
    )
    a = _autoscaler(custom, namespace, "warm")
    assert a["floor"] == 2 and a["floorReason"] == "schedule 'now' floor 2", a
    assert "schedule 'now' floor 2" in a["lastDecision"], a
    core = client.CoreV1Api(kube_api)
    wait_for(
        "a ScaledUp event naming the window",
        lambda: any(
            e.reason == "ScaledUp" and "schedule 'now' floor 2" in (e.message or "")
            for e in core.list_namespaced_event(namespace, field_selector="involvedObject.name=warm").items
        ),
        timeout=60,
    )

    # a time zone the tz database does not know: admitted (CEL cannot check), reported at runtime
    bad = dict(scaling, schedules=[window(name="mars", timezone="Mars/Olympus_Mons", minReplicas=2)])
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, resource("mars", bad))
    wait_for(
        "ScalingActive=False InvalidSchedule",
        lambda: _scaling_active(custom, namespace, "mars").get("reason") == "InvalidSchedule",
        timeout=120,
    )
    c = _scaling_active(custom, namespace, "mars")
    assert c["status"] == "False" and "spec.scaling.schedules[0].timezone" in c["message"], c
    assert _autoscaler(custom, namespace, "mars").get("desiredReplicas") == 1  # that window is ignored

"""The node agent's pure decision (nodeagent/plan.py): eligibility, pull order, protection, report."""

from __future__ import annotations

import json
from typing import Any

import pytest

from qwen_operator.catalog import DEFAULT_GPUS
from qwen_operator.nodeagent.plan import (
    holds,
    ineligible_reason,
    parse_report,
    parse_resource,
    plan,
    report_json,
    version_id,
)
from qwen_operator.render.workload import OperatorDefaults, PodDefaults

V1, V2, V3 = ("sha256:" + c * 64 for c in "abc")
ID1, ID2, ID3 = (c * 16 for c in "abc")
A10G = {"nvidia.com/gpu.product": DEFAULT_GPUS["A10G"].product_labels[0], "pool": "inference"}
L40S = {"nvidia.com/gpu.product": DEFAULT_GPUS["L40S"].product_labels[0], "pool": "inference"}
DEFAULTS = OperatorDefaults()
ROOT = "/var/lib/qwen-operator/models"


def qwd(
    name: str,
    ns: str = "llm",
    *,
    current: str | None = V1,
    target: str | None = V1,
    gpu_types: tuple[str, ...] = ("A10G",),
    registry: str = "s3://bucket/models/x",
    model: dict[str, Any] | None = None,
    pod: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"name": "Qwen/Qwen3-8B", "registry": registry, **(model or {})},
        "placement": {"gpuTypes": list(gpu_types)},
    }
    if pod:
        spec["pod"] = pod
    status = {"model": {k: v for k, v in (("currentVersion", current), ("targetVersion", target)) if v}}
    return {"metadata": {"name": name, "namespace": ns}, "spec": spec, "status": status}


def res(*args: Any, **kw: Any) -> Any:
    r = parse_resource(qwd(*args, **kw))
    assert r is not None
    return r


def pod(ns: str, deployment: str, version: str, phase: str = "Running") -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": ns,
            "name": f"{deployment}-x",
            "labels": {"serving.qwenops.io/deployment": deployment},
            "annotations": {"serving.qwenops.io/model-version": version},
        },
        "status": {"phase": phase},
    }


def test_version_id_is_the_cache_directory_name_of_a_digest_only() -> None:
    assert version_id(V1) == ID1
    assert version_id("stable") is None and version_id("sha256:xyz") is None


def test_only_a_node_of_an_allowed_gpu_type_matching_the_selectors_is_eligible() -> None:
    r = res("chat", gpu_types=("A10G",))
    assert ineligible_reason(r, A10G, DEFAULT_GPUS, DEFAULTS) is None
    assert "L40S is not in spec.placement.gpuTypes" in str(ineligible_reason(r, L40S, DEFAULT_GPUS, DEFAULTS))
    assert "no catalog GPU type" in str(ineligible_reason(r, {}, DEFAULT_GPUS, DEFAULTS))
    pinned = res("chat", pod={"nodeSelector": {"pool": "batch"}})
    assert "nodeSelector (pool)" in str(ineligible_reason(pinned, A10G, DEFAULT_GPUS, DEFAULTS))
    per_pool = res("chat", pod={"pools": [{"gpuType": "A10G", "nodeSelector": {"zone": "a"}}]})
    assert "zone" in str(ineligible_reason(per_pool, A10G, DEFAULT_GPUS, DEFAULTS))
    admin = OperatorDefaults(pods=PodDefaults(node_selector=(("pool", "inference"),)))
    assert ineligible_reason(r, A10G, DEFAULT_GPUS, admin) is None
    admin_other = OperatorDefaults(pods=PodDefaults(node_selector=(("pool", "gpu-dedicated"),)))
    assert ineligible_reason(r, A10G, DEFAULT_GPUS, admin_other) is not None


def test_prestage_off_hf_and_pvc_are_never_staged() -> None:
    assert "off" in str(ineligible_reason(res("a", model={"prestage": False}), A10G, DEFAULT_GPUS, DEFAULTS))
    assert "off" in str(ineligible_reason(res("b", registry="hf://Qwen/Qwen3-8B"), A10G, DEFAULT_GPUS, DEFAULTS))
    pvc = res("c", model={"cache": {"type": "pvc", "claimName": "weights"}})
    assert "off" in str(ineligible_reason(pvc, A10G, DEFAULT_GPUS, DEFAULTS))
    assert ineligible_reason(res("d", registry="oci://reg.example.com/m"), A10G, DEFAULT_GPUS, DEFAULTS) is None


def test_prestage_true_with_an_hf_registry_is_refused_naming_the_field() -> None:
    assert parse_resource(qwd("x", registry="hf://Qwen/Qwen3-8B", model={"prestage": True})) is None
    from pydantic import ValidationError

    from qwen_operator.api.spec import QwenDeploymentSpec

    with pytest.raises(ValidationError, match="prestage"):
        QwenDeploymentSpec.model_validate(
            {"model": {"name": "Qwen/Qwen3-8B", "registry": "hf://Qwen/Qwen3-8B", "prestage": True}}
        )


def test_targets_of_rolling_resources_come_first_then_current_versions() -> None:
    resources = [
        res("a-steady", current=V1, target=V1),
        res("b-rolling", current=V1, target=V2),
        res("c-new", current=None, target=V3),
    ]
    p = plan(A10G, resources, [], {}, DEFAULT_GPUS, DEFAULTS)
    order = [(x.name, x.digest, x.why) for x in p.pulls]
    assert order == [
        ("b-rolling", V2, "target"),
        ("c-new", V3, "target"),
        ("a-steady", V1, "current"),
        ("b-rolling", V1, "current"),
    ]
    first = p.pulls[0]
    assert first.model == "llm.b-rolling" and first.cache_dir == f"{ROOT}/llm" and first.cache_root == ROOT
    assert first.registry == "s3://bucket/models/x"


def test_held_versions_are_not_pulled_again_and_ineligible_nodes_pull_nothing() -> None:
    r = res("chat", current=V1, target=V2)
    held = {f"{ROOT}/llm": {"llm.chat": [ID2]}}
    p = plan(A10G, [r], [], held, DEFAULT_GPUS, DEFAULTS)
    assert [(x.digest, x.why) for x in p.pulls] == [(V1, "current")]
    on_l40s = plan(L40S, [r], [], {}, DEFAULT_GPUS, DEFAULTS)
    assert on_l40s.pulls == () and "L40S" in on_l40s.skipped["llm.chat"]


def test_a_resource_whose_cache_root_the_agent_lacks_is_skipped() -> None:
    r = res("chat", model={"cache": {"path": "/data/models"}})
    admin = OperatorDefaults(allowed_cache_paths=("/data/models",))
    p = plan(A10G, [r], [], {}, DEFAULT_GPUS, admin, cache_roots=[ROOT])
    assert p.pulls == () and "/data/models" in p.skipped["llm.chat"]
    p = plan(A10G, [r], [], {}, DEFAULT_GPUS, admin, cache_roots=[ROOT, "/data/models/"])
    assert [x.cache_dir for x in p.pulls] == ["/data/models/llm"]
    not_allowed = plan(A10G, [r], [], {}, DEFAULT_GPUS, DEFAULTS)
    assert not_allowed.pulls == () and "not an allowed" in not_allowed.skipped["llm.chat"]


def test_protect_covers_served_current_and_target_of_every_resource_even_ineligible() -> None:
    rolling = res("chat", current=V2, target=V3)
    elsewhere = res("batch", gpu_types=("L40S",), current=V1, target=V1)
    pods = [
        pod("llm", "chat", V1),  # an old pod on this node still serves V1
        pod("llm", "chat", "stable"),  # not resolved yet: nothing to protect by id
        pod("llm", "batch", V3, phase="Succeeded"),  # finished: protects nothing
        pod("other", "chat", V3),  # another namespace's chat
    ]
    p = plan(A10G, [rolling, elsewhere], pods, {}, DEFAULT_GPUS, DEFAULTS)
    assert p.protect[f"{ROOT}/llm"]["llm.chat"] == {ID1, ID2, ID3}
    assert p.protect[f"{ROOT}/llm"]["llm.batch"] == {ID1}
    assert "other.chat" not in p.protect.get(f"{ROOT}/other", {})


def test_the_report_is_compact_sorted_json_of_every_held_version() -> None:
    held = {
        f"{ROOT}/llm": {"llm.chat": [ID2, ID1], "llm.gone": [ID3]},
        "/data/models/team": {"team.x": [ID1]},
    }
    p = plan(A10G, [], [], held, DEFAULT_GPUS, DEFAULTS)
    text = p.annotation()
    assert text == report_json({"team.x": [ID1], "llm.gone": [ID3], "llm.chat": [ID2, ID1]})
    assert " " not in text and list(json.loads(text)) == ["llm.chat", "llm.gone", "team.x"]
    assert parse_report(text)["llm.chat"] == [ID2, ID1]
    assert holds(text, "llm.chat", V1) and not holds(text, "llm.chat", V3) and not holds(text, "llm.x", V1)
    assert parse_report("not json") == {} and parse_report(None) == {} and not holds("[1]", "llm.chat", V1)

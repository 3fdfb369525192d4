"""The committed CRD is the generated one, and it is structural and installable."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

from qwen_operator.api import crdgen


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")


def schema() -> dict[str, Any]:
    crd = crdgen.crd()
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def test_committed_crd_matches_generated() -> None:
    assert crdgen.DEFAULT_OUTPUT.read_text() == crdgen.render_yaml(), "crds/ is stale: run `make crds`"


def test_check_mode_detects_drift(tmp_path: Any) -> None:
    out = tmp_path / "crd.yaml"
    assert crdgen.main(["--check", "--output", str(out)]) == 1
    assert crdgen.main(["--write", "--output", str(out)]) == 0
    assert crdgen.main(["--check", "--output", str(out)]) == 0
    out.write_text(out.read_text().replace("maxItems: 8", "maxItems: 9"))
    assert crdgen.main(["--check", "--output", str(out)]) == 1


def test_names_and_subresources() -> None:
    crd = yaml.safe_load(crdgen.render_yaml())
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == "qwendeployments.serving.qwenops.io"
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"], names["categories"]) == (
        "QwenDeployment",
        "qwendeployments",
        ["qwd"],
        ["qwen"],
    )
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Model": ".spec.model.name",
        "Version": ".status.model.currentVersion",
        "Pools": ".status.poolSummary",
        "Ready": ".status.readySummary",
        "Desired": ".status.desiredReplicas",
        "Age": ".metadata.creationTimestamp",
    }


def test_every_field_is_described_and_typed() -> None:
    for path, node in walk(schema()):
        if path == ".metadata":
            continue  # the apiserver owns metadata's schema
        assert node.get("description"), f"{path} has no description"
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"


def test_schema_is_structural() -> None:
    forbidden = {
        "$ref",
        "anyOf",
        "allOf",
        "oneOf",
        "additionalProperties",
        "x-kubernetes-preserve-unknown-fields",
        "title",
        "const",
        "nullable",
    }
    # pod and anti-affinity terms are passed through as written (the API server checks them on the pods)
    free_form = {f".spec{p}.affinity.{a}" for p in (".pod", ".routing.pod") for a in ("podAffinity", "podAntiAffinity")}
    for path, node in walk(schema()):
        allowed = set()
        if isinstance(node.get("additionalProperties"), dict) and "properties" not in node:
            allowed.add("additionalProperties")  # a map: its values' schema (labels, nodeSelector)
        if path in free_form:
            allowed.add("x-kubernetes-preserve-unknown-fields")
        assert not (forbidden - allowed) & set(node), f"{path}: {(forbidden - allowed) & set(node)}"
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node, path


def test_cel_rules_and_bounds() -> None:
    rules = {path: [r["rule"] for r in node.get("x-kubernetes-validations", [])] for path, node in walk(schema())}
    assert any("minReplicas <= self.maxReplicas" in r for r in rules[".spec.scaling"])
    assert any("maxInputTokens < self.maxTotalTokens" in r for r in rules[".spec.runtime"])
    assert any("qwen3" in r and "awq" in r for r in rules[".spec"])
    assert any("'auto'" in r for r in rules[".spec.placement.tensorParallel"])
    assert any("claimName" in r for r in rules[".spec.model.cache"])
    assert any("toolCalling.parser" in r and "'vllm'" in r for r in rules[".spec.runtime"])
    assert any("metadata.name" in r for r in rules[""])
    # CEL cost estimates need bounded strings and lists everywhere under spec
    for path, node in walk(schema()["properties"]["spec"], ".spec"):
        if node.get("type") == "string" and "enum" not in node:
            assert "maxLength" in node, f"{path} string without maxLength"
        if node.get("type") == "array":
            assert "maxItems" in node, f"{path} list without maxItems"


def test_defaults_and_enums() -> None:
    spec = schema()["properties"]["spec"]["properties"]
    assert spec["runtime"]["default"] == {}
    assert spec["runtime"]["properties"]["engine"] == {
        **spec["runtime"]["properties"]["engine"],
        "enum": ["tgi", "vllm"],
        "default": "tgi",
    }
    assert spec["model"]["properties"]["quantization"]["enum"] == ["none", "fp8", "awq", "gptq"]
    assert spec["placement"]["properties"]["gpuTypes"]["default"] == ["A10G", "L40S", "A100-80GB"]
    assert spec["placement"]["properties"]["tensorParallel"]["default"] == "auto"
    assert spec["scaling"]["properties"]["intervalSeconds"]["default"] == 15
    assert spec["replicas"]["minimum"] == 0
    assert "pattern" in spec["runtime"]["properties"]["shmSize"]
    assert schema()["required"] == ["spec"]
    assert spec["model"]["required"] == ["name", "registry"]
    assert spec["runtime"]["properties"]["reasoning"]["enum"] == ["enabled", "disabled"]
    tools = spec["runtime"]["properties"]["toolCalling"]["properties"]
    assert tools["parser"]["enum"] == ["hermes", "qwen3_coder"] and tools["enabled"]["default"] is False
    assert spec["model"]["properties"]["registry"]["pattern"] == r"^(s3|oci|hf)://[^\s]+$"


def test_status_has_condition_shape_and_list_maps() -> None:
    status = schema()["properties"]["status"]["properties"]
    cond = status["conditions"]
    assert cond["x-kubernetes-list-type"] == "map" and cond["x-kubernetes-list-map-keys"] == ["type"]
    assert set(cond["items"]["required"]) == {"type", "status", "reason", "lastTransitionTime"}
    assert cond["items"]["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert status["pools"]["x-kubernetes-list-map-keys"] == ["gpuType"]
    for key in (
        "observedGeneration",
        "replicas",
        "readyReplicas",
        "selector",
        "poolSummary",
        "readySummary",
        "desiredReplicas",
        "model",
        "autoscaler",
    ):
        assert key in status
    assert "default" not in str(schema()["properties"]["status"])

"""The spec models accept what the CRD accepts and reject the same invalid input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from qwen_operator.api import QwenDeploymentSpec, QwenDeploymentStatus

SAMPLES = sorted((Path(__file__).resolve().parents[2] / "manifests" / "samples").glob("*.yaml"))


def spec(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": {"name": "Qwen/Qwen3-14B", "registry": "s3://models/qwen3-14b"}}
    for key, value in overrides.items():
        base[key] = value
    return base


def test_defaults_fill_every_section() -> None:
    s = QwenDeploymentSpec.model_validate(spec())
    assert s.model.version == "stable"
    assert s.model.quantization == "none"
    assert s.model.cache.type == "hostPath"
    assert s.model.cache.path is None  # the operator config's nodeCache.path at render time
    assert s.runtime.engine == "tgi"
    assert (s.runtime.max_input_tokens, s.runtime.max_total_tokens) == (8192, 16384)
    assert s.placement.gpu_types == ["A10G", "L40S", "A100-80GB"]
    assert s.placement.tensor_parallel == "auto"
    assert s.scaling.enabled is False
    assert s.scaling.interval_seconds == 15
    assert s.replicas == 1


def test_camel_case_round_trip() -> None:
    s = QwenDeploymentSpec.model_validate(spec(runtime={"maxTotalTokens": 4096, "maxInputTokens": 1024}))
    dumped = s.model_dump(by_alias=True, exclude_none=True)
    assert dumped["runtime"]["maxTotalTokens"] == 4096
    assert QwenDeploymentSpec.model_validate(dumped) == s


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_samples_parse(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == "serving.qwenops.io/v1alpha1"
    QwenDeploymentSpec.model_validate(doc["spec"])


def test_three_samples_exist() -> None:
    assert {p.name for p in SAMPLES} >= {"qwen3-14b-chat.yaml", "qwen2.5-72b-a100.yaml", "batch-profile.yaml"}


INVALID = [
    ("unknown top-level field", spec(bogus=1), "bogus"),
    ("unknown nested field", spec(runtime={"maxTokens": 5}), "maxTokens"),
    ("bad engine enum", spec(runtime={"engine": "triton"}), "engine"),
    (
        "bad quantization enum",
        {"model": {"name": "Qwen/Qwen3-14B", "registry": "s3://a/b", "quantization": "int3"}},
        "quantization",
    ),
    ("min > max", spec(scaling={"minReplicas": 5, "maxReplicas": 2}), "minReplicas"),
    ("input >= total", spec(runtime={"maxInputTokens": 4096, "maxTotalTokens": 4096}), "maxInputTokens"),
    ("negative replicas", spec(replicas=-1), "replicas"),
    ("string number", spec(replicas="3"), "replicas"),
    ("tp 3", spec(placement={"tensorParallel": 3}), "tensorParallel"),
    ("tp string 2", spec(placement={"tensorParallel": "2"}), "tensorParallel"),
    ("bad quantity", spec(runtime={"shmSize": "1 GB"}), "shmSize"),
    ("negative quantity", spec(runtime={"resources": {"memory": "-1Gi"}}), "memory"),
    ("bad registry scheme", {"model": {"name": "Qwen/Qwen3-14B", "registry": "ftp://x"}}, "registry"),
    (
        "pvc without claim",
        {"model": {"name": "Qwen/Qwen3-14B", "registry": "s3://a", "cache": {"type": "pvc"}}},
        "claimName",
    ),
    (
        "awq on qwen3 with tgi",
        {"model": {"name": "Qwen/Qwen3-14B", "registry": "s3://a", "quantization": "awq"}},
        "quantization",
    ),
    ("empty gpu types", spec(placement={"gpuTypes": []}), "gpuTypes"),
    ("zero queue target", spec(scaling={"targetQueueDepth": 0}), "targetQueueDepth"),
    ("missing registry", {"model": {"name": "Qwen/Qwen3-14B"}}, "registry"),
    ("unknown tool parser", spec(runtime={"engine": "vllm", "toolCalling": {"parser": "llama3_json"}}), "parser"),
    ("tool parser with tgi", spec(runtime={"toolCalling": {"parser": "hermes"}}), "toolCalling.parser"),
    ("bad reasoning enum", spec(runtime={"reasoning": "off"}), "reasoning"),
]


@pytest.mark.parametrize(("case", "raw", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_specs_name_the_field(case: str, raw: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        QwenDeploymentSpec.model_validate(raw)
    assert field in str(info.value), case


def test_awq_allowed_for_qwen3_on_vllm_and_for_qwen25_on_tgi() -> None:
    QwenDeploymentSpec.model_validate(
        {
            "model": {"name": "Qwen/Qwen3-14B", "registry": "s3://a", "quantization": "awq"},
            "runtime": {"engine": "vllm"},
        }
    )
    QwenDeploymentSpec.model_validate(
        {"model": {"name": "Qwen/Qwen2.5-72B-Instruct", "registry": "s3://a", "quantization": "gptq"}}
    )


@pytest.mark.parametrize("tp", ["auto", 1, 2, 4, 8])
def test_tensor_parallel_accepts_auto_and_powers_of_two(tp: str | int) -> None:
    assert QwenDeploymentSpec.model_validate(spec(placement={"tensorParallel": tp})).placement.tensor_parallel == tp


@pytest.mark.parametrize(
    ("enabled", "autoscaler", "want"),
    [(False, 9, 2), (True, None, 1), (True, 3, 3), (True, 50, 6), (True, 0, 1)],
)
def test_desired_replicas(enabled: bool, autoscaler: int | None, want: int) -> None:
    s = QwenDeploymentSpec.model_validate(
        spec(replicas=2, scaling={"enabled": enabled, "minReplicas": 1, "maxReplicas": 6})
    )
    assert s.desired_replicas(autoscaler) == want


def test_status_reads_camel_case_and_ignores_unknown_keys() -> None:
    st = QwenDeploymentStatus.model_validate(
        {
            "observedGeneration": 3,
            "pools": [{"gpuType": "A10G", "shards": 1, "replicas": 2, "readyReplicas": 1, "costPerHour": 2.012}],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "PoolsStarting",
                    "lastTransitionTime": "2025-01-01T00:00:00Z",
                }
            ],
            "futureField": True,
        }
    )
    assert st.pools[0].ready_replicas == 1
    assert st.conditions[0].reason == "PoolsStarting"


def test_registry_schemes_include_oci() -> None:
    for url in ("s3://models/qwen3-14b", "oci://registry.example.com/models/qwen3-14b", "hf://Qwen/Qwen3-14B"):
        spec = QwenDeploymentSpec.model_validate({"model": {"name": "Qwen/Qwen3-14B", "registry": url}})
        assert spec.model.registry == url


def test_tool_calling_defaults_and_vllm_parser() -> None:
    plain = QwenDeploymentSpec.model_validate({"model": {"name": "Qwen/Qwen3-14B", "registry": "s3://a"}})
    assert (plain.runtime.tool_calling.enabled, plain.runtime.tool_calling.parser) == (False, None)
    assert plain.runtime.reasoning == "enabled"
    got = QwenDeploymentSpec.model_validate(
        {
            "model": {"name": "Qwen/Qwen3-14B", "registry": "s3://a"},
            "runtime": {
                "engine": "vllm",
                "reasoning": "disabled",
                "toolCalling": {"enabled": True, "parser": "hermes"},
            },
        }
    )
    assert (got.runtime.tool_calling.enabled, got.runtime.tool_calling.parser) == (True, "hermes")
    assert got.model_dump(by_alias=True)["runtime"]["toolCalling"] == {"enabled": True, "parser": "hermes"}

"""Catalog-level problems become (field, message, reason) for a Degraded condition."""

from __future__ import annotations

from typing import Any

from qwen_operator.api import QwenDeploymentSpec, validate_spec
from qwen_operator.catalog import Catalog, load_catalog


def make(model: str = "Qwen/Qwen3-14B", quant: str = "none", **sections: Any) -> QwenDeploymentSpec:
    return QwenDeploymentSpec.model_validate(
        {"model": {"name": model, "registry": "s3://a", "quantization": quant}, **sections}
    )


def fields(spec: QwenDeploymentSpec, catalog: Catalog | None = None) -> dict[str, str]:
    return {p.field: p.reason for p in validate_spec(spec, catalog or Catalog())}


def test_valid_spec_has_no_problems() -> None:
    assert fields(make(quant="fp8")) == {}


def test_model_not_in_catalog() -> None:
    (p,) = validate_spec(make("Qwen/Qwen4-3B"), Catalog())
    assert (p.field, p.reason) == ("spec.model.name", "ModelNotInCatalog")
    assert "Qwen/Qwen3-14B" in p.message  # lists what is accepted


def test_unknown_gpu_type_names_the_index() -> None:
    assert fields(make(placement={"gpuTypes": ["A10G", "H100"]})) == {"spec.placement.gpuTypes[1]": "UnknownGPUType"}


def test_gpu_type_added_by_config_is_known() -> None:
    cat = load_catalog(
        {
            "gpuTypes": {
                "H100": {
                    "productLabel": "NVIDIA-H100",
                    "memoryGB": 80,
                    "bandwidthGBps": 3350,
                    "bf16TFLOPS": 989,
                    "pricePerGPUHour": 6.9,
                }
            }
        }
    )
    assert fields(make(placement={"gpuTypes": ["H100"]}), cat) == {}


def test_quantization_unsupported_by_engine_for_model() -> None:
    cat = load_catalog({"models": {"Qwen/Qwen2.5-7B-Instruct": {"quantizations": {"vllm": ["none", "fp8"]}}}})
    spec = make("Qwen/Qwen2.5-7B-Instruct", "gptq", runtime={"engine": "vllm"})
    assert fields(spec, cat) == {"spec.model.quantization": "UnsupportedQuantization"}
    assert fields(make("Qwen/Qwen2.5-7B-Instruct", "gptq")) == {}  # TGI has native kernels


def test_tensor_parallel_must_divide_kv_heads() -> None:
    got = validate_spec(make("Qwen/Qwen2.5-7B-Instruct", placement={"tensorParallel": 8}), Catalog())
    assert [(p.field, p.reason) for p in got] == [("spec.placement.tensorParallel", "InvalidTensorParallel")]
    assert "4 KV heads" in got[0].message
    assert fields(make(placement={"tensorParallel": 8})) == {}  # Qwen3-14B: 40 heads, 8 KV heads


def test_context_longer_than_model_window() -> None:
    spec = make(runtime={"maxInputTokens": 60000, "maxTotalTokens": 65536})
    assert fields(spec) == {"spec.runtime.maxTotalTokens": "ContextTooLong"}


def test_reasoning_disabled_is_servable_on_every_catalog_model() -> None:
    # no stub condition any more: the engines render a non-thinking chat template (engines.runtimes)
    for model in ("Qwen/Qwen3-14B", "Qwen/Qwen2.5-7B-Instruct"):
        assert fields(make(model, runtime={"reasoning": "disabled"})) == {}
        assert fields(make(model, runtime={"reasoning": "disabled", "engine": "vllm"})) == {}

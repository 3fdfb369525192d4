"""Runtime adapters: TGI and vLLM flags, images and metric names."""

from __future__ import annotations

from typing import Any

from qwen_operator.api import QwenDeploymentSpec
from qwen_operator.catalog import Catalog
from qwen_operator.planner import plan
from qwen_operator.render import RUNTIMES, RenderContext, render, runtime_for


def make_spec(engine: str, quant: str = "fp8", **runtime: Any) -> QwenDeploymentSpec:
    return QwenDeploymentSpec.model_validate(
        {
            "model": {"name": "Qwen/Qwen3-14B", "registry": "s3://m", "quantization": quant},
            "runtime": {"engine": engine, **runtime},
            "placement": {"gpuTypes": ["L40S"], "tensorParallel": 2},
        }
    )


def server(spec: QwenDeploymentSpec) -> dict[str, Any]:
    objs = render(spec, plan(spec, Catalog(), replicas=1), RenderContext("chat", "llm"), Catalog())
    dep = next(
        o
        for o in objs
        if o["kind"] == "Deployment" and o["metadata"]["labels"].get("app.kubernetes.io/component") == "server"
    )
    return dep["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def test_tgi_quantize_flag_and_default_image() -> None:
    c = server(make_spec("tgi"))
    assert c["name"] == "tgi"
    assert c["image"].startswith("ghcr.io/huggingface/text-generation-inference:")
    assert c["args"][c["args"].index("--quantize") + 1] == "fp8"
    assert c["args"][c["args"].index("--num-shard") + 1] == "2"


def test_vllm_args() -> None:
    c = server(make_spec("vllm", "awq", maxConcurrentRequests=64, maxTotalTokens=8192, maxInputTokens=4096))
    args = c["args"]

    def flag(name: str) -> str:
        return str(args[args.index(name) + 1])

    assert c["image"].startswith("vllm/vllm-openai:")
    assert flag("--model") == "/models/models/llm.chat/current"
    assert flag("--tensor-parallel-size") == "2"
    assert flag("--quantization") == "awq"
    assert flag("--max-model-len") == "8192"
    assert flag("--max-num-seqs") == "64"
    assert flag("--port") == "8080"
    assert flag("--served-model-name") == "Qwen/Qwen3-14B"
    assert "--num-shard" not in args
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in c["env"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"


def test_custom_image_overrides_engine_default() -> None:
    assert server(make_spec("tgi", image="registry.local/tgi:patched"))["image"] == "registry.local/tgi:patched"


def test_metric_names_for_the_autoscaler() -> None:
    tgi, vllm = RUNTIMES["tgi"].metrics, RUNTIMES["vllm"].metrics
    assert (tgi.queue_gauge, tgi.latency_histogram) == ("tgi_queue_size", "tgi_request_duration")
    assert tgi.failures_counter == "tgi_request_failure"
    assert (vllm.queue_gauge, vllm.latency_histogram) == (
        "vllm:num_requests_waiting",
        "vllm:e2e_request_latency_seconds",
    )
    assert runtime_for(make_spec("vllm")).metrics is vllm

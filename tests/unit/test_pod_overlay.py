"""spec.pod / spec.pod.pools / spec.routing.pod and the admin's podDefaults, rendered; the PDB by replica count."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from pydantic import ValidationError

from qwen_operator.api import QwenDeploymentSpec
from qwen_operator.api.spec import OWNED_ENV, OWNED_FLAGS, OWNED_LABELS, OWNED_PREFIX
from qwen_operator.catalog import Catalog
from qwen_operator.engines.runtimes import RUNTIMES
from qwen_operator.planner import plan
from qwen_operator.planner.pools import Pool
from qwen_operator.render import RenderContext, render
from qwen_operator.render.names import common_labels, server_selector
from qwen_operator.render.workload import (
    GPU_PRODUCT_LABEL,
    OperatorDefaults,
    PodDefaults,
    pod_gpu_products,
    pool_deployment,
)

CATALOG = Catalog()
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}

OVERLAY: dict[str, Any] = {
    "labels": {"team": "search", "example.com/cost-center": "c42"},
    "annotations": {"sidecar.istio.io/inject": "false"},
    "nodeSelector": {"node-pool": "gpu-serving"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"}],
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a"]}]},
                    {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["b"]}]},
                ]
            }
        },
        "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []},
    },
    "topologySpreadConstraints": [
        {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}
    ],
    "priorityClassName": "llm-serving",
    "imagePullSecrets": [{"name": "mirror"}],
    "serviceAccountName": "model-puller",
    "env": [
        {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://otel:4317"},
        {"name": "OTEL_TOKEN", "valueFrom": {"secretKeyRef": {"name": "otel", "key": "token"}}},
    ],
    "extraArgs": ["--max-batch-prefill-tokens=4096"],
    "preStopSleepSeconds": 15,
    "terminationGracePeriodSeconds": 200,
    "pools": [
        {
            "gpuType": "L40S",
            "nodeSelector": {"l40s-pool": "true"},
            "tolerations": [{"key": "l40s", "operator": "Exists"}],
            "env": [{"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://otel-l40s:4317"}],
            "extraArgs": ["--cuda-graphs", "1,2,4"],
        }
    ],
}


def make_spec(engine: str = "tgi", pod: dict[str, Any] | None = None, **extra: Any) -> QwenDeploymentSpec:
    raw: dict[str, Any] = {
        "model": {"name": "Qwen/Qwen3-14B", "registry": "s3://models/qwen3-14b", "quantization": "fp8"},
        "runtime": {"engine": engine},
        "placement": {"gpuTypes": ["A10G", "L40S", "A100-80GB"]},
        "replicas": 2,
    }
    if pod is not None:
        raw["pod"] = pod
    raw.update(extra)
    return QwenDeploymentSpec.model_validate(raw)


def pod_of(spec: QwenDeploymentSpec, gpu_type: str, ctx: RenderContext | None = None) -> dict[str, Any]:
    ctx = ctx or RenderContext(name="chat", namespace="llm")
    shards = 2 if gpu_type == "A10G" else 1
    dep = pool_deployment(spec, ctx, Pool(gpu_type, shards, 1, 1.0), CATALOG.gpus[gpu_type])
    template: dict[str, Any] = dep["spec"]["template"]
    return template


def test_without_an_overlay_the_pod_keeps_the_operators_shape_plus_a_prestop_drain() -> None:
    t = pod_of(make_spec(), "L40S")
    pod, (server,) = t["spec"], t["spec"]["containers"]
    assert pod["nodeSelector"] == {GPU_PRODUCT_LABEL: "NVIDIA-L40S"}
    assert pod["tolerations"] == [GPU_TOLERATION]
    assert pod["automountServiceAccountToken"] is False and "serviceAccountName" not in pod
    for absent in ("affinity", "topologySpreadConstraints", "priorityClassName", "imagePullSecrets"):
        assert absent not in pod
    assert server["lifecycle"] == {"preStop": {"sleep": {"seconds": 10}}}
    assert pod["terminationGracePeriodSeconds"] == 10 + 120  # the sleep, then TGI's drain budget
    assert set(t["metadata"]["labels"]) == {
        *common_labels("chat"),
        "serving.qwenops.io/pool",
        "serving.qwenops.io/model-version",
    }


def test_no_prestop_sleep_when_set_to_zero() -> None:
    t = pod_of(make_spec(pod={"preStopSleepSeconds": 0}), "L40S")
    assert "lifecycle" not in t["spec"]["containers"][0]
    assert t["spec"]["terminationGracePeriodSeconds"] == 120


@pytest.mark.parametrize("engine", ["tgi", "vllm"])
def test_the_overlay_lands_on_the_pool_pods(engine: str) -> None:
    spec = make_spec(engine, OVERLAY)
    t = pod_of(spec, "A10G")
    pod, (server,) = t["spec"], t["spec"]["containers"]
    labels = t["metadata"]["labels"]
    assert labels["team"] == "search" and labels["example.com/cost-center"] == "c42"
    assert labels["app.kubernetes.io/component"] == "server"  # the operator's keys stay
    assert t["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    assert t["metadata"]["annotations"]["serving.qwenops.io/model"] == "Qwen/Qwen3-14B"
    assert pod["nodeSelector"] == {"node-pool": "gpu-serving", GPU_PRODUCT_LABEL: "NVIDIA-A10G"}
    assert pod["tolerations"] == [
        GPU_TOLERATION,
        {"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"},
    ]
    assert pod["affinity"]["podAntiAffinity"] == {"preferredDuringSchedulingIgnoredDuringExecution": []}
    assert "matchExpressions" in str(pod["affinity"]["nodeAffinity"])  # the user's zones, as written
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["labelSelector"] == {"matchLabels": server_selector("chat")}  # unset: this deployment's servers
    assert spread["topologyKey"] == "topology.kubernetes.io/zone" and "matchLabelKeys" not in spread
    assert pod["priorityClassName"] == "llm-serving"
    assert pod["imagePullSecrets"] == [{"name": "mirror"}]
    assert pod["serviceAccountName"] == "model-puller"
    assert "automountServiceAccountToken" not in pod  # the ServiceAccount decides (workload identity)
    assert pod["terminationGracePeriodSeconds"] == 200
    assert server["lifecycle"]["preStop"]["sleep"]["seconds"] == 15
    env = {e["name"]: e for e in server["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "http://otel:4317"
    assert env["OTEL_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "otel", "key": "token"}}
    assert "HF_HUB_OFFLINE" in env  # the engine's own environment is still there
    assert server["args"][-1] == "--max-batch-prefill-tokens=4096"
    assert server["args"][:-1] == RUNTIMES[engine].args(spec, 2, "/models/models/llm.chat/current")


def test_a_pool_entry_applies_to_its_pool_only() -> None:
    spec = make_spec("tgi", OVERLAY)
    l40s = pod_of(spec, "L40S")
    pod, (server,) = l40s["spec"], l40s["spec"]["containers"]
    assert pod["nodeSelector"] == {"node-pool": "gpu-serving", "l40s-pool": "true", GPU_PRODUCT_LABEL: "NVIDIA-L40S"}
    assert pod["tolerations"][-1] == {"key": "l40s", "operator": "Exists"}
    assert server["args"][-3:] == ["--max-batch-prefill-tokens=4096", "--cuda-graphs", "1,2,4"]
    env = {e["name"]: e.get("value") for e in server["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-l40s:4317"  # the pool's wins
    a10g = pod_of(spec, "A10G")["spec"]
    assert "l40s-pool" not in a10g["nodeSelector"] and {"key": "l40s", "operator": "Exists"} not in a10g["tolerations"]


def test_pool_entries_match_any_catalog_spelling() -> None:
    spec = make_spec(placement={"gpuTypes": ["l40s"]}, pod={"pools": [{"gpuType": "l40s", "extraArgs": ["--x"]}]})
    assert pod_of(spec, "L40S")["spec"]["containers"][0]["args"][-1] == "--x"


def test_a_multi_label_gpu_type_is_selected_by_a_node_expression_added_to_every_term() -> None:
    # A100-80GB: SXM4 and PCIe cards carry different nvidia.com/gpu.product values
    plain = pod_of(make_spec(), "A100-80GB")["spec"]
    assert GPU_PRODUCT_LABEL not in plain["nodeSelector"]
    gpu_expr = {
        "key": GPU_PRODUCT_LABEL,
        "operator": "In",
        "values": ["NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-80GB-PCIe"],
    }
    required = plain["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert required == {"nodeSelectorTerms": [{"matchExpressions": [gpu_expr]}]}
    assert pod_gpu_products(plain) == ["NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-80GB-PCIe"]
    zoned = pod_of(make_spec(pod=OVERLAY), "A100-80GB")["spec"]
    terms = zoned["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert len(terms) == 2 and all(term["matchExpressions"][-1] == gpu_expr for term in terms)
    assert [t["matchExpressions"][0]["values"] for t in terms] == [["a"], ["b"]]
    assert pod_gpu_products(pod_of(make_spec(), "L40S")["spec"]) == ["NVIDIA-L40S"]


ADMIN = PodDefaults(
    image_pull_secrets=("mirror", "corp"),
    tolerations=({"key": "tenant", "operator": "Exists", "effect": "NoSchedule"},),
    node_selector=(("node-pool", "admin-pool"), ("zone-class", "gold")),
    priority_class_name="admin-default",
    labels=(("team", "platform"), ("billing", "shared")),
    annotations=(("mesh", "admin"),),
)


def test_admin_pod_defaults_apply_under_the_resource() -> None:
    ctx = RenderContext(
        name="chat",
        namespace="llm",
        defaults=OperatorDefaults(pods=ADMIN),
        pod_annotations=(("mesh", "old"), ("log", "on")),
    )
    bare = pod_of(make_spec(), "L40S", ctx)
    pod = bare["spec"]
    assert pod["imagePullSecrets"] == [{"name": "mirror"}, {"name": "corp"}]
    assert pod["priorityClassName"] == "admin-default"
    assert pod["nodeSelector"] == {"node-pool": "admin-pool", "zone-class": "gold", GPU_PRODUCT_LABEL: "NVIDIA-L40S"}
    assert pod["tolerations"] == [GPU_TOLERATION, {"key": "tenant", "operator": "Exists", "effect": "NoSchedule"}]
    assert bare["metadata"]["labels"]["billing"] == "shared"
    assert bare["metadata"]["annotations"]["mesh"] == "admin" and bare["metadata"]["annotations"]["log"] == "on"
    own = pod_of(make_spec(pod=OVERLAY), "A10G", ctx)
    pod = own["spec"]
    assert pod["imagePullSecrets"] == [{"name": "mirror"}, {"name": "corp"}]  # each name once
    assert pod["priorityClassName"] == "llm-serving"  # the resource's wins
    assert pod["nodeSelector"]["node-pool"] == "gpu-serving" and pod["nodeSelector"]["zone-class"] == "gold"
    assert len(pod["tolerations"]) == 3
    assert own["metadata"]["labels"]["team"] == "search" and own["metadata"]["labels"]["billing"] == "shared"


def router_pod(spec: QwenDeploymentSpec, ctx: RenderContext | None = None) -> dict[str, Any]:
    objs = render(
        spec, plan(spec, CATALOG, free_gpus={"L40S": 4}), ctx or RenderContext(name="chat", namespace="llm"), CATALOG
    )
    dep = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "chat-router")
    template: dict[str, Any] = dep["spec"]["template"]
    return template


def test_router_pods_take_routing_pod_and_admin_defaults() -> None:
    bare = router_pod(make_spec())
    assert "nodeSelector" not in bare["spec"] and "imagePullSecrets" not in bare["spec"]
    assert bare["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "250m", "memory": "256Mi"},
        "limits": {"memory": "1Gi"},
    }
    operator_spread = bare["spec"]["affinity"]["podAntiAffinity"]
    routing = {
        "pod": {
            "labels": {"team": "search"},
            "annotations": {"prometheus.io/scrape": "true"},
            "nodeSelector": {"node-pool": "general"},
            "tolerations": [{"key": "infra", "operator": "Exists"}],
            "affinity": {
                "nodeAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "weight": 10,
                            "preference": {"matchExpressions": [{"key": "spot", "operator": "DoesNotExist"}]},
                        }
                    ]
                }
            },
            "priorityClassName": "router-critical",
            "imagePullSecrets": [{"name": "mirror"}],
            "resources": {"cpu": "1", "memory": "512Mi"},
        }
    }
    ctx = RenderContext(name="chat", namespace="llm", defaults=OperatorDefaults(pods=ADMIN))
    t = router_pod(make_spec(routing=routing), ctx)
    pod = t["spec"]
    assert t["metadata"]["labels"]["team"] == "search" and t["metadata"]["labels"]["billing"] == "shared"
    assert t["metadata"]["labels"]["app.kubernetes.io/component"] == "router"
    assert t["metadata"]["annotations"] == {"mesh": "admin", "prometheus.io/scrape": "true"}
    assert pod["nodeSelector"] == {"node-pool": "general", "zone-class": "gold"}
    assert pod["tolerations"] == [
        {"key": "tenant", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "infra", "operator": "Exists"},
    ]
    assert pod["priorityClassName"] == "router-critical"
    assert pod["imagePullSecrets"] == [{"name": "mirror"}, {"name": "corp"}]
    assert pod["affinity"]["podAntiAffinity"] == operator_spread  # kept: the resource set no podAntiAffinity
    assert pod["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["weight"] == 10
    assert pod["containers"][0]["resources"] == {
        "requests": {"cpu": "1", "memory": "512Mi"},
        "limits": {"memory": "512Mi"},
    }
    assert pod["serviceAccountName"] == "chat-router"  # the router's own, whatever spec.pod says


def pdb(spec: QwenDeploymentSpec, free: dict[str, int]) -> dict[str, Any]:
    objs = render(spec, plan(spec, CATALOG, free_gpus=free), RenderContext(name="chat", namespace="llm"), CATALOG)
    (budget,) = [o for o in objs if o["kind"] == "PodDisruptionBudget" and o["metadata"]["name"] == "chat"]
    return budget


def test_a_one_replica_deployment_is_never_evicted_by_a_drain() -> None:
    one = pdb(make_spec(replicas=1), {"L40S": 4})["spec"]
    assert one["minAvailable"] == 1 and "maxUnavailable" not in one
    assert one["unhealthyPodEvictionPolicy"] == "AlwaysAllow"  # a loading or crashing replica never holds a drain
    two = pdb(make_spec(replicas=2), {"L40S": 4})["spec"]
    assert two["maxUnavailable"] == 1 and "minAvailable" not in two
    # what counts is the plan over every pool: one L40S and one A10G replica are two
    spread = pdb(make_spec(replicas=2), {"L40S": 1, "A10G": 2})
    assert spread["spec"]["maxUnavailable"] == 1


# --- admission: what the operator owns is refused by name, and the owned sets match what is rendered ----


def reject(**raw: Any) -> str:
    """The validation message alone (not the echoed input)."""
    with pytest.raises(ValidationError) as err:
        make_spec(**raw)
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.value.errors())


@pytest.mark.parametrize(
    ("engine", "arg"),
    [
        ("tgi", "--max-total-tokens=9000"),
        ("tgi", "--port"),
        ("tgi", "--num-shard"),
        ("tgi", "--model-id=/elsewhere"),
        ("vllm", "--max-model-len=9000"),
        ("vllm", "--max_model_len=9000"),  # vLLM's parser reads underscores as dashes
        ("vllm", "-tp"),
        ("vllm", "--served-model-name"),
        ("vllm", "--pipeline-parallel-size=2"),  # placement's, for replicas across nodes (LeaderWorkerSet)
        ("vllm", "-pp"),
        ("vllm", "--distributed-executor-backend=ray"),
    ],
)
def test_owned_engine_flags_are_refused_by_name(engine: str, arg: str) -> None:
    msg = reject(runtime={"engine": engine}, pod={"extraArgs": ["--fine", arg]})
    assert "pod.extraArgs" in msg and arg in msg and f"engine {engine}" in msg and "--fine" not in msg
    msg = reject(runtime={"engine": engine}, pod={"pools": [{"gpuType": "L40S", "extraArgs": [arg]}]})
    assert "pools[].extraArgs" in msg and arg in msg


def test_a_flag_is_owned_only_by_the_engine_that_renders_it() -> None:
    make_spec("tgi", {"extraArgs": ["--max-num-seqs=8"]})  # a vLLM flag: TGI would reject it, not the operator
    make_spec("vllm", {"extraArgs": ["--max-num-batched-tokens", "8192", "--enable-prefix-caching"]})


def every_variant() -> list[QwenDeploymentSpec]:
    out = []
    for engine, quant, reasoning, tools in itertools.product(
        ("tgi", "vllm"), ("none", "fp8"), ("enabled", "disabled"), (False, True)
    ):
        out.append(
            QwenDeploymentSpec.model_validate(
                {
                    "model": {"name": "Qwen/Qwen3-14B", "registry": "s3://m/q", "quantization": quant},
                    "runtime": {"engine": engine, "reasoning": reasoning, "toolCalling": {"enabled": tools}},
                }
            )
        )
    return out


def test_every_flag_and_variable_the_engines_render_is_owned() -> None:
    for spec in every_variant():
        rt = RUNTIMES[spec.runtime.engine]
        for thinking in (False, True):
            flags = {a.split("=")[0] for a in rt.args(spec, 2, "/m", thinking) if a.startswith("-")}
            assert flags <= set(OWNED_FLAGS[spec.runtime.engine]), flags - set(OWNED_FLAGS[spec.runtime.engine])
        assert {e["name"] for e in rt.env(spec, 2)} <= set(OWNED_ENV)


def test_the_owned_label_keys_are_the_ones_rendered() -> None:
    assert set(common_labels("x")) == {*OWNED_LABELS, "serving.qwenops.io/deployment"}
    assert all(k in OWNED_LABELS or k.startswith(OWNED_PREFIX) for k in common_labels("x"))


@pytest.mark.parametrize(
    ("pod", "field", "named"),
    [
        ({"labels": {"serving.qwenops.io/pool": "x", "team": "a"}}, "labels", "serving.qwenops.io/pool"),
        ({"labels": {"app.kubernetes.io/component": "x"}}, "labels", "app.kubernetes.io/component"),
        ({"labels": {"bad key": "x"}}, "labels", "bad key"),
        ({"annotations": {"serving.qwenops.io/model": "x"}}, "annotations", "serving.qwenops.io/model"),
        ({"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100"}}, "nodeSelector", "nvidia.com/gpu.product"),
        ({"env": [{"name": "HF_HOME", "value": "/x"}]}, "env", "HF_HOME"),
        ({"pools": [{"gpuType": "L40S", "env": [{"name": "HOME", "value": "/x"}]}]}, "env", "HOME"),
        (
            {"pools": [{"gpuType": "L40S", "nodeSelector": {"nvidia.com/gpu.product": "x"}}]},
            "nodeSelector",
            "nvidia.com/gpu.product",
        ),
        ({"pools": [{"gpuType": "H100"}]}, "pod.pools", "H100"),
        ({"pools": [{"gpuType": "L40S"}, {"gpuType": "L40S"}]}, "pools", "L40S"),
        ({"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}, "env", "A"),
        (
            {"env": [{"name": "A", "value": "1", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]},
            "valueFrom",
            "not both",
        ),
        ({"env": [{"name": "A", "valueFrom": {}}]}, "", "exactly one"),
        ({"preStopSleepSeconds": 30, "terminationGracePeriodSeconds": 30}, "preStopSleepSeconds", "less than"),
        ({"tolerations": [{"operator": "Exists", "value": "x"}]}, "value", "Exists"),
        (
            {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}}},
            "nodeSelectorTerms",
            "required",
        ),
        ({"affinity": {"nodeAffinity": {}, "bogus": {}}}, "bogus", "Extra inputs"),
    ],
)
def test_bad_overlays_are_refused_naming_the_field(pod: dict[str, Any], field: str, named: str) -> None:
    msg = reject(pod=pod)
    assert field in msg and named in msg, msg


def test_router_pod_refuses_the_operators_labels() -> None:
    msg = reject(routing={"pod": {"labels": {"app.kubernetes.io/component": "server"}}})
    assert "labels" in msg and "app.kubernetes.io/component" in msg
    with pytest.raises(ValueError, match="extra"):
        make_spec(routing={"pod": {"serviceAccountName": "x"}})  # the router runs on its own, RBAC-bound account


def test_the_simulator_reads_the_gpu_type_of_a_multi_label_pool() -> None:
    from qwen_operator.sim.pod_replica import pod_replica

    t = pod_of(make_spec(), "A100-80GB")
    replica = pod_replica({"metadata": {"name": "p", **t["metadata"]}, "spec": t["spec"], "status": {}})
    assert replica.gpu == "A100-80GB"

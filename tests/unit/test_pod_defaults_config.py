"""Operator config podDefaults and gpuProductLabels: parsed, refused by key, and used by render and inventory."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
import yaml

from qwen_operator.catalog import CatalogError, gpu_by_product_label, load_catalog
from qwen_operator.cli import UserError
from qwen_operator.controller.cli import controller_config, parse_config
from qwen_operator.controller.inventory import compute_inventory
from qwen_operator.packaging import helm
from qwen_operator.packaging.chart import HelmError, find, template
from qwen_operator.packaging.generate import VALUES_SCHEMA
from qwen_operator.packaging.values import Values


def node(name: str, product: str, gpus: int = 4) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": product}},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}, "conditions": [{"type": "Ready", "status": "True"}]},
        "spec": {},
    }


def test_the_built_in_catalog_counts_a100_pcie_cards_as_a100() -> None:
    cat = load_catalog(None)
    assert gpu_by_product_label("NVIDIA-A100-80GB-PCIe", cat.gpus) is cat.gpus["A100-80GB"]
    assert gpu_by_product_label("NVIDIA-A100-PCIE-40GB", cat.gpus) is cat.gpus["A100-40GB"]
    assert cat.gpus["A100-80GB"].product_labels[0] == "NVIDIA-A100-SXM4-80GB"  # the primary label first
    inv = compute_inventory(
        [node("sxm", "NVIDIA-A100-SXM4-80GB"), node("pcie", "NVIDIA-A100-80GB-PCIe", 2)], [], cat.gpus
    )
    assert inv.allocatable == {"A100-80GB": 6} and not inv.unknown_products


def test_gpu_product_labels_add_aliases_and_refuse_conflicts() -> None:
    cat = load_catalog({"catalog": {}, "gpuProductLabels": {"L40S": ["NVIDIA-L40S-PCIe-custom"]}})
    assert gpu_by_product_label("NVIDIA-L40S-PCIe-custom", cat.gpus) is cat.gpus["L40S"]
    assert cat.gpus["L40S"].product_labels == ("NVIDIA-L40S", "NVIDIA-L40S-PCIe-custom")
    inv = compute_inventory([node("n", "NVIDIA-L40S-PCIe-custom")], [], cat.gpus)
    assert inv.allocatable == {"L40S": 4}
    with pytest.raises(CatalogError, match="gpuProductLabels.H200: unknown GPU type"):
        load_catalog({"gpuProductLabels": {"H200": ["NVIDIA-H200"]}})
    with pytest.raises(CatalogError, match="NVIDIA-A10G would mean both A10G and L40S"):
        load_catalog({"gpuProductLabels": {"L40S": ["NVIDIA-A10G"]}})


FULL = {
    "podDefaults": {
        "imagePullSecrets": [{"name": "mirror"}],
        "tolerations": [{"key": "tenant", "operator": "Exists", "effect": "NoSchedule"}],
        "nodeSelector": {"node-pool": "llm"},
        "priorityClassName": "serving",
        "labels": {"team": "platform"},
        "annotations": {"example.com/owner": "platform"},
    },
    "gpuProductLabels": {"A100-80GB": ["NVIDIA-A100-80GB-PCIe"]},
}


def test_pod_defaults_reach_the_render_context() -> None:
    pods = controller_config(parse_config(FULL)).defaults.pods
    assert pods.image_pull_secrets == ("mirror",)
    assert pods.tolerations == ({"key": "tenant", "operator": "Exists", "effect": "NoSchedule"},)
    assert dict(pods.node_selector) == {"node-pool": "llm"} and pods.priority_class_name == "serving"
    assert dict(pods.labels) == {"team": "platform"} and dict(pods.annotations) == {"example.com/owner": "platform"}
    assert controller_config(parse_config({})).defaults.pods.priority_class_name is None


@pytest.mark.parametrize(
    ("section", "named"),
    [
        ({"labels": {"app.kubernetes.io/name": "x"}}, "app.kubernetes.io/name"),
        ({"labels": {"serving.qwenops.io/pool": "x"}}, "serving.qwenops.io/pool"),
        ({"annotations": {"serving.qwenops.io/model": "x"}}, "serving.qwenops.io/model"),
        ({"nodeSelector": {"nvidia.com/gpu.product": "x"}}, "nvidia.com/gpu.product"),
        ({"labels": {"team": "not a label value"}}, "podDefaults.labels.team"),
        ({"imagePullSecrets": ["mirror"]}, "podDefaults.imagePullSecrets.0"),
        ({"priorityClass": "x"}, "podDefaults.priorityClass: unknown key"),
    ],
)
def test_bad_pod_defaults_name_the_key(section: dict[str, Any], named: str) -> None:
    with pytest.raises(UserError) as err:
        parse_config({"podDefaults": section})
    assert named in str(err.value) and "Traceback" not in str(err.value)


def test_the_chart_values_accept_the_same_config() -> None:
    values = Values.model_validate({"config": FULL})
    assert values.config.pod_defaults.priority_class_name == "serving"
    assert values.config.gpu_product_labels == {"A100-80GB": ["NVIDIA-A100-80GB-PCIe"]}


def test_the_chart_carries_pod_defaults_into_the_operator_config_and_refuses_bad_keys() -> None:
    schema = json.loads(VALUES_SCHEMA.read_text())
    jsonschema.validate({"config": FULL}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"config": {"podDefaults": {"labels": {"not a key": "x"}}}}, schema)
    try:
        helm.locate()
    except helm.MissingHelmError as exc:
        pytest.fail(str(exc))
    (cm,) = find(template(values={"config": FULL}), "ConfigMap", "qwen-operator-config")
    cfg = parse_config(yaml.safe_load(cm["data"]["config.yaml"]))
    assert controller_config(cfg).defaults.pods == controller_config(parse_config(FULL)).defaults.pods
    assert cfg.gpu_product_labels == FULL["gpuProductLabels"]
    with pytest.raises(HelmError, match="podDefaults"):
        template(values={"config": {"podDefaults": {"priorityClass": "x"}}})

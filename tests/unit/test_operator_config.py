"""Every operator-config key takes effect: parsed and validated at start (errors name the key),
then read by the reconciler (rendered Deployments), the version watcher or the autoscaler.

Precedence for the model-pull init container: the QwenDeployment's spec, then the operator
config, then nothing; for the operator's own registry client: the config, then its AWS env."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from qwen_operator.api import QwenDeploymentSpec
from qwen_operator.api.spec import DEFAULT_CACHE_PATH
from qwen_operator.catalog import Catalog, load_catalog
from qwen_operator.cli import UserError
from qwen_operator.controller.cli import _load_config, controller_config, parse_config, registry_factory
from qwen_operator.controller.reconcile import Observed, compute
from qwen_operator.controller.versions import make_registry
from qwen_operator.packaging import helm
from qwen_operator.packaging.chart import HelmError, find, template
from qwen_operator.packaging.generate import VALUES_SCHEMA
from qwen_operator.packaging.values import OperatorConfig
from qwen_operator.planner import plan
from qwen_operator.render import RenderContext, render
from qwen_operator.render.workload import OperatorDefaults

FULL: dict[str, Any] = {
    "catalog": {"prices": {"A10G": 0.5}},
    "resyncSeconds": 12,
    "operatorImage": "registry.example/qwen-operator:9.9.9",
    "podAnnotations": {"sidecar.istio.io/inject": "false", "team": "ml"},
    "prometheus": {"url": "http://prometheus.monitoring:9090"},
    "registry": {"endpointURL": "http://minio.storage:9000", "region": "eu-west-1", "credentialsSecret": "reg-creds"},
    "nodeCache": {"path": "/mnt/nvme/models", "allowedPaths": ["/var/lib/qwen-operator/models"]},
    "modelSync": {"intervalSeconds": 7},
}
DEFAULTS = controller_config(parse_config(FULL)).defaults


def make_spec(**model: Any) -> QwenDeploymentSpec:
    return QwenDeploymentSpec.model_validate(
        {
            "model": {"name": "Qwen/Qwen3-14B", "registry": "s3://models/qwen3-14b", "quantization": "fp8", **model},
            "placement": {"gpuTypes": ["L40S"]},
        }
    )


def pod_spec(spec: QwenDeploymentSpec, defaults: OperatorDefaults | None = None) -> dict[str, Any]:
    ctx = RenderContext(name="chat", namespace="llm", defaults=defaults or OperatorDefaults())
    objs = render(spec, plan(spec, Catalog(), free_gpus={"L40S": 4}), ctx, Catalog())
    (dep,) = [o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] != "chat-router"]
    pod: dict[str, Any] = dep["spec"]["template"]["spec"]
    return pod


def pull(pod: dict[str, Any]) -> dict[str, Any]:
    (init,) = pod["initContainers"]
    assert init["name"] == "model-pull"
    return dict(init)


def host_path(pod: dict[str, Any]) -> str:
    (cache,) = [v for v in pod["volumes"] if v["name"] == "model-cache"]
    return str(cache["hostPath"]["path"])


def env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


# -- parsing -------------------------------------------------------------------------------
def test_every_key_is_parsed_into_what_reads_it() -> None:
    cfg = parse_config(FULL)
    ctl = controller_config(cfg)
    assert ctl.resync_seconds == 12.0
    assert ctl.operator_image == "registry.example/qwen-operator:9.9.9"
    assert ctl.pod_annotations == (("sidecar.istio.io/inject", "false"), ("team", "ml"))
    assert ctl.defaults == OperatorDefaults(
        registry_endpoint_url="http://minio.storage:9000",
        registry_region="eu-west-1",
        credentials_secret="reg-creds",
        node_cache_path="/mnt/nvme/models",
        allowed_cache_paths=("/var/lib/qwen-operator/models",),
    )
    assert cfg.prometheus.url == "http://prometheus.monitoring:9090"
    assert cfg.model_sync.interval_seconds == 7
    assert load_catalog(FULL).gpus["A10G"].price_per_gpu_hour == 0.5


def test_an_empty_config_means_the_documented_defaults() -> None:
    ctl = controller_config(parse_config({}))
    assert ctl.resync_seconds == 60.0 and ctl.operator_image is None and ctl.pod_annotations == ()
    assert ctl.defaults == OperatorDefaults()
    assert ctl.defaults.node_cache_path == DEFAULT_CACHE_PATH


def test_the_resync_flag_wins_over_the_config() -> None:
    assert controller_config(parse_config(FULL), resync_seconds=3.0).resync_seconds == 3.0


def test_keys_without_a_value_are_unset(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("registry:\n  # endpointURL: http://minio:9000\npodAnnotations:\nnodeCache:\n  path: /data\n")
    cfg = parse_config(_load_config(path))
    assert cfg.registry.endpoint_url == "" and cfg.pod_annotations == {} and cfg.node_cache.path == "/data"


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"catalog": {"prices": {"A10G": -1}}}, "catalog.prices.A10G"),
        ({"catalog": {"gpuTypes": {"L40S": {"memGB": 48}}}}, "catalog.gpuTypes.L40S.memGB"),
        ({"resyncSeconds": 0}, "resyncSeconds"),
        ({"resyncSeconds": "1m"}, "resyncSeconds"),
        ({"operatorImage": 5}, "operatorImage"),
        ({"podAnnotations": {"not a key": "x"}}, "podAnnotations.not a key"),
        ({"podAnnotations": {"sidecar.istio.io/inject": False}}, "podAnnotations.sidecar.istio.io/inject"),
        ({"prometheus": {"url": "prometheus:9090"}}, "prometheus.url"),
        ({"registry": {"endpointURL": "minio:9000"}}, "registry.endpointURL"),
        ({"registry": {"region": "EU West"}}, "registry.region"),
        ({"registry": {"credentialsSecret": "Reg_Creds"}}, "registry.credentialsSecret"),
        ({"registry": {"endpointUrl": "http://minio:9000"}}, "registry.endpointUrl: unknown key (known: "),
        ({"nodeCache": {"path": "models"}}, "nodeCache.path"),
        ({"modelSync": {"intervalSeconds": 0}}, "modelSync.intervalSeconds"),
        (
            {"nodecache": {"path": "/x"}},
            "nodecache: unknown key (known: catalog, gpuProductLabels, modelSync, nodeCache",
        ),
    ],
)
def test_invalid_values_name_the_key(raw: dict[str, Any], key: str) -> None:
    with pytest.raises(UserError) as err:
        parse_config(raw, "operator config c.yaml")
    assert str(err.value).startswith("operator config c.yaml: ") and key in str(err.value), str(err.value)


def test_operator_run_refuses_an_invalid_config_before_touching_the_cluster(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"registry": {"endpointURL": "s3.example.com"}}))
    proc = subprocess.run(
        [sys.executable, "-m", "qwen_operator.cli", "operator", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "KUBECONFIG": str(tmp_path / "absent")},
    )
    assert proc.returncode == 2, proc.stderr
    assert f"error: operator config {config}: registry.endpointURL:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_charts_rendered_config_is_accepted_with_every_key() -> None:
    try:
        helm.locate()
    except helm.MissingHelmError as exc:
        pytest.fail(str(exc))
    objects = template(values={"config": {k: v for k, v in FULL.items() if k != "operatorImage"}})
    (cm,) = find(objects, "ConfigMap", "qwen-operator-config")
    cfg = parse_config(yaml.safe_load(cm["data"]["config.yaml"]))
    assert controller_config(cfg).defaults == DEFAULTS
    assert cfg.operator_image.startswith("ghcr.io/qwenops/qwen-operator:")  # the chart's image
    assert cfg == OperatorConfig.model_validate({**FULL, "operatorImage": cfg.operator_image})


def test_the_chart_rejects_what_the_operator_rejects() -> None:
    """A pod annotation key off the Kubernetes pattern fails `helm install`, not the operator's start."""
    schema = json.loads(VALUES_SCHEMA.read_text())
    bad = {"config": {"podAnnotations": {"not a key": "x"}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    jsonschema.validate({"config": {"podAnnotations": {"sidecar.istio.io/inject": "false"}}}, schema)
    with pytest.raises(HelmError, match="podAnnotations"):
        template(values=bad)


# -- nodeCache.path ------------------------------------------------------------------------
def test_node_cache_path_is_the_hostpath_when_the_spec_sets_none() -> None:
    assert make_spec().model.cache.path is None
    assert host_path(pod_spec(make_spec())) == DEFAULT_CACHE_PATH + "/llm"  # per namespace
    assert host_path(pod_spec(make_spec(), DEFAULTS)) == "/mnt/nvme/models/llm"


def test_spec_cache_path_wins_over_node_cache_path() -> None:
    spec = make_spec(cache={"path": "/var/lib/qwen-operator/models"})  # explicit, even if equal to the default
    assert host_path(pod_spec(spec, DEFAULTS)) == "/var/lib/qwen-operator/models/llm"


def test_node_cache_path_does_not_touch_a_pvc_cache() -> None:
    pod = pod_spec(make_spec(cache={"type": "pvc", "claimName": "models"}), DEFAULTS)
    (cache,) = [v for v in pod["volumes"] if v["name"] == "model-cache"]
    assert cache == {"name": "model-cache", "persistentVolumeClaim": {"claimName": "models"}}


# -- registry.* ----------------------------------------------------------------------------
def test_registry_defaults_become_the_model_pull_environment() -> None:
    init = pull(pod_spec(make_spec(), DEFAULTS))
    assert init["envFrom"] == [{"secretRef": {"name": "reg-creds"}}]
    assert env(init) == {
        "AWS_ENDPOINT_URL": "http://minio.storage:9000",
        "AWS_REGION": "eu-west-1",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }


def test_without_registry_defaults_model_pull_gets_no_environment() -> None:
    init = pull(pod_spec(make_spec()))
    assert "envFrom" not in init and "env" not in init


def test_each_registry_default_is_rendered_on_its_own() -> None:
    only_region = pull(pod_spec(make_spec(), OperatorDefaults(registry_region="us-west-2")))
    assert env(only_region) == {"AWS_REGION": "us-west-2", "AWS_DEFAULT_REGION": "us-west-2"}
    assert "envFrom" not in only_region
    only_secret = pull(pod_spec(make_spec(), OperatorDefaults(credentials_secret="reg-creds")))
    assert only_secret["envFrom"] == [{"secretRef": {"name": "reg-creds"}}] and "env" not in only_secret


def test_the_specs_credentials_secret_is_the_whole_registry_environment() -> None:
    # Kubernetes lets env override envFrom: injecting the defaults would replace the Secret's own values
    init = pull(pod_spec(make_spec(credentialsSecret="team-creds"), DEFAULTS))
    assert init["envFrom"] == [{"secretRef": {"name": "team-creds"}}]
    assert "env" not in init


def test_endpoint_and_region_are_for_s3_registries_only() -> None:
    init = pull(pod_spec(make_spec(registry="hf://acme/qwen3-14b"), DEFAULTS))
    assert init["envFrom"] == [{"secretRef": {"name": "reg-creds"}}] and "env" not in init


def test_the_reconciler_renders_with_the_config_defaults() -> None:
    qwd = {
        "apiVersion": "serving.qwenops.io/v1alpha1",
        "kind": "QwenDeployment",
        "metadata": {"name": "chat", "namespace": "llm", "uid": "u-1", "generation": 1},
        "spec": {
            "model": {"name": "Qwen/Qwen3-14B", "registry": "s3://models/qwen3-14b", "quantization": "fp8"},
            "placement": {"gpuTypes": ["L40S"]},
        },
        # resolved by the version watcher: an s3:// resource creates no pool before that (create once)
        "status": {"model": {"targetVersion": "sha256:" + "0" * 64}},
    }
    node = {
        "metadata": {"name": "l0", "labels": {"nvidia.com/gpu.product": "NVIDIA-L40S"}},
        "spec": {},
        "status": {"allocatable": {"nvidia.com/gpu": "4"}, "conditions": [{"type": "Ready", "status": "True"}]},
    }
    ctl = controller_config(parse_config(FULL))
    obs = Observed(
        qwd=qwd,
        nodes=[node],
        operator_image=ctl.operator_image,
        pod_annotations=ctl.pod_annotations,
        defaults=ctl.defaults,
    )
    out = compute(obs, load_catalog(FULL))
    (dep,) = [m for m in out.apply if m["kind"] == "Deployment" and m["metadata"]["name"] != "chat-router"]
    template_ = dep["spec"]["template"]
    pod = template_["spec"]
    assert host_path(pod) == "/mnt/nvme/models/llm"
    assert pull(pod)["image"] == "registry.example/qwen-operator:9.9.9"
    assert pull(pod)["envFrom"] == [{"secretRef": {"name": "reg-creds"}}]
    assert env(pull(pod))["AWS_ENDPOINT_URL"] == "http://minio.storage:9000"
    assert template_["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    # the same resource without the config renders the built-in defaults: a config change rolls the pods
    plain = compute(Observed(qwd=qwd, nodes=[node]), load_catalog(None))
    (plain_dep,) = [m for m in plain.apply if m["kind"] == "Deployment" and m["metadata"]["name"] != "chat-router"]
    assert host_path(plain_dep["spec"]["template"]["spec"]) == DEFAULT_CACHE_PATH + "/llm"


# -- the version watcher's registry client -------------------------------------------------
def test_registry_client_prefers_the_config_over_the_ambient_aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://ambient:9000")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    ambient = make_registry("s3://models/qwen").client.meta
    assert (ambient.endpoint_url, ambient.region_name) == ("http://ambient:9000", "ap-south-1")
    configured = make_registry("s3://models/qwen", endpoint_url="http://minio.storage:9000", region="eu-west-1")
    assert (configured.client.meta.endpoint_url, configured.client.meta.region_name) == (
        "http://minio.storage:9000",
        "eu-west-1",
    )


def test_the_version_watcher_gets_the_registry_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://ambient:9000")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    meta = registry_factory(parse_config(FULL))("s3://models/qwen").client.meta
    assert (meta.endpoint_url, meta.region_name) == ("http://minio.storage:9000", "eu-west-1")
    meta = registry_factory(parse_config({}))("s3://models/qwen").client.meta
    assert meta.endpoint_url == "http://ambient:9000"  # no config: the operator's own AWS environment

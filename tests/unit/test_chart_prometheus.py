"""The chart's Prometheus admin settings (real ``helm template``): ``prometheusSecret`` mounted read-only
where ``config.prometheus.*File`` point, the connection settings reaching the operator config unchanged,
the schema refusing what the operator refuses, and the allowlist of node cache directories."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from qwen_operator.controller.cli import parse_config, prometheus_connection
from qwen_operator.packaging import helm
from qwen_operator.packaging.chart import HelmError, find, template

MOUNT = "/var/run/secrets/qwen-operator/prometheus"
PROMETHEUS = {
    "url": "https://thanos-querier.monitoring:9091",
    "tls": {"caFile": f"{MOUNT}/ca.crt"},
    "bearerTokenFile": f"{MOUNT}/token",
    "headers": {"X-Scope-OrgID": "ml"},
}


@pytest.fixture(scope="module", autouse=True)
def _helm() -> None:
    try:
        helm.locate()
    except helm.MissingHelmError as exc:
        pytest.fail(str(exc))


def pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (dep,) = find(objects, "Deployment")
    spec: dict[str, Any] = dep["spec"]["template"]["spec"]
    return spec


def test_the_secret_is_mounted_read_only_where_the_config_points() -> None:
    objects = template(
        values={
            "prometheusSecret": "prometheus-auth",
            "config": {"prometheus": PROMETHEUS, "nodeCache": {"allowedPaths": ["/mnt/nvme/models"]}},
        }
    )
    spec = pod(objects)
    (volume,) = [v for v in spec["volumes"] if v["name"] == "prometheus-secret"]
    assert volume["secret"] == {"secretName": "prometheus-auth"}
    (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "prometheus-secret"]
    assert mount == {"name": "prometheus-secret", "mountPath": MOUNT, "readOnly": True}
    (cm,) = find(objects, "ConfigMap", "qwen-operator-config")
    cfg = parse_config(yaml.safe_load(cm["data"]["config.yaml"]))
    connection = prometheus_connection(cfg)
    assert connection.bearer_token_file == f"{MOUNT}/token" and connection.ca_file == f"{MOUNT}/ca.crt"
    assert connection.headers == (("X-Scope-OrgID", "ml"),) and not connection.insecure_skip_verify
    assert cfg.node_cache.allowed_paths == ["/mnt/nvme/models"]


def test_no_secret_no_mount() -> None:
    spec = pod(template())
    assert not [v for v in spec["volumes"] if v["name"] == "prometheus-secret"]


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"config": {"prometheus": {"bearerTokenFile": "token"}}}, "bearerTokenFile"),
        ({"config": {"prometheus": {"basicAuth": {"password": "inline"}}}}, "password"),
        ({"config": {"prometheus": {"tls": {"insecureSkipVerify": "true"}}}}, "insecureSkipVerify"),
        ({"config": {"nodeCache": {"allowedPaths": ["relative/dir"]}}}, "allowedPaths"),
        ({"prometheusSecret": "Not_A_Name"}, "prometheusSecret"),
    ],
)
def test_the_schema_refuses_what_the_operator_refuses(values: dict[str, Any], key: str) -> None:
    with pytest.raises(HelmError, match=key):
        template(values=values)

"""values.schema.json (generated from the values models) rejects bad values with a message
naming the value, both in Helm (``helm template --set``) and in a JSON Schema validator."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
import yaml

from qwen_operator.packaging import helm
from qwen_operator.packaging.chart import HelmError, template
from qwen_operator.packaging.generate import VALUES_SCHEMA, VALUES_YAML
from qwen_operator.packaging.values import Values

# (--set expression, the same as a values patch, words the error must contain)
BAD: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    ("image.pullPolicy=Sometimes", {"image": {"pullPolicy": "Sometimes"}}, ("pullPolicy", "IfNotPresent")),
    ("operator.logFormat=xml", {"operator": {"logFormat": "xml"}}, ("logFormat", "json")),
    ("operator.livenessPort=70000", {"operator": {"livenessPort": 70000}}, ("livenessPort", "65535")),
    ("watchNamespaces={Bad_NS}", {"watchNamespaces": ["Bad_NS"]}, ("watchNamespaces",)),
    ("config.resyncSeconds=0", {"config": {"resyncSeconds": 0}}, ("resyncSeconds",)),
    ("config.catalog.prices.A10G=-1", {"config": {"catalog": {"prices": {"A10G": -1}}}}, ("A10G", "0")),
    (
        "config.prometheus.url=prometheus:9090",
        {"config": {"prometheus": {"url": "prometheus:9090"}}},
        ("url", "https?"),
    ),
    ("replicaCount=0", {"replicaCount": 0}, ("replicaCount", "1")),
    ("podAntiAffinity=sometimes", {"podAntiAffinity": "sometimes"}, ("podAntiAffinity", "preferred")),
    (
        "leaderElection.retryPeriodSeconds=0",
        {"leaderElection": {"retryPeriodSeconds": 0}},
        ("retryPeriodSeconds", "1"),
    ),
    ("crds.enabled=maybe", {"crds": {"enabled": "maybe"}}, ("enabled", "boolean")),
    ("imagee.tag=1", {"imagee": {"tag": "1"}}, ("imagee",)),
    (
        "config.catalog.gpuTypes.H100.interconnect=infiniband",
        {"config": {"catalog": {"gpuTypes": {"H100": {"interconnect": "infiniband"}}}}},
        ("interconnect", "nvlink"),
    ),
]


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(VALUES_SCHEMA.read_text())
    return data


def _defaults() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(VALUES_YAML.read_text())
    return data


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in patch.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def test_defaults_are_valid(schema: dict[str, Any]) -> None:
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(_defaults(), schema, cls=jsonschema.Draft7Validator)
    assert Values.model_validate(_defaults()) == Values()


@pytest.mark.parametrize(("expr", "patch", "words"), BAD, ids=[b[0] for b in BAD])
def test_jsonschema_rejects(schema: dict[str, Any], expr: str, patch: dict[str, Any], words: tuple[str, ...]) -> None:
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(_merge(_defaults(), patch)))
    assert errors, f"{expr} was accepted"
    text = " ".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
    for word in words:
        assert word in text, text


@pytest.mark.parametrize(("expr", "patch", "words"), BAD, ids=[b[0] for b in BAD])
def test_helm_rejects(expr: str, patch: dict[str, Any], words: tuple[str, ...]) -> None:
    try:
        helm.locate()
    except helm.MissingHelmError as exc:
        pytest.fail(str(exc))
    with pytest.raises(HelmError) as info:
        template(expr)
    message = info.value.stderr
    assert "values don't meet the specifications of the schema" in message, message
    for word in words[:1]:  # Helm names the value's path
        assert word in message, message


def test_good_overrides_are_accepted() -> None:
    objects = template(
        "watchNamespaces={llm}",
        "config.catalog.prices.L40S=2",
        "config.prometheus.url=http://prometheus:9090",
        "operator.logFormat=plain",
        "image.tag=0.2.0-rc.1",
        set_json=["config.catalog.prices.A10G=0.9"],
    )
    assert any(o["kind"] == "Role" for o in objects)


def test_decimal_from_set_is_a_string_and_says_so() -> None:
    """``--set x=0.9`` passes a string: rejected at install, never a crash-looping operator."""
    with pytest.raises(HelmError, match=r"prices/A10G': got string, want number"):
        template("config.catalog.prices.A10G=0.9")

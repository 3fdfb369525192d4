"""docs/api-reference.md is generated from the CRD schema and must be fresh."""

from __future__ import annotations

from qwen_operator.api import docgen


def test_reference_is_fresh() -> None:
    assert docgen.main(["--check"]) == 0, "docs/api-reference.md is stale: run `make generate`"


def test_reference_lists_every_spec_section_with_constraints() -> None:
    text = docgen.render()
    for field in (
        "spec.model.name",
        "spec.placement.tensorParallel",
        "spec.scaling.p95LatencySeconds",
        "status.conditions[].type",
        "status.autoscaler.desiredReplicas",
    ):
        assert f"`{field}`" in text, field
    assert "rule: minReplicas must be less than or equal to maxReplicas" in text

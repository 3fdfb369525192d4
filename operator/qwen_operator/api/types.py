"""Shared field types of the QwenDeployment API and the CEL rule helper.

Two API types cannot be spelled as plain pydantic types and still produce a structural
CRD schema: ``tensorParallel`` (the string ``auto`` or an integer) and Kubernetes
quantities (strings matching the apiserver's quantity grammar). They are defined here
with the validation pydantic runs *and* the OpenAPI fragment the CRD gets, so both come
from one place.

:class:`Rule` pairs a CEL expression (what the apiserver enforces at admission) with the
Python predicate that enforces the same rule when a resource is read from a file
(``qwenctl plan -f``), so offline tools and admission agree.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, WithJsonSchema

#: Tensor-parallel degrees a replica may use (each must also divide the model's heads).
TP_DEGREES = (1, 2, 4, 8)

# Non-negative Kubernetes quantity (resource.Quantity grammar without the sign).
QUANTITY_PATTERN = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)))?$"
_QUANTITY_RE = re.compile(QUANTITY_PATTERN)

#: DNS-1123 subdomain (Secret and PVC names).
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def _tensor_parallel(value: Any) -> str | int:
    if isinstance(value, bool):
        raise ValueError("must be 'auto' or one of 1, 2, 4, 8")
    if value == "auto" or (isinstance(value, int) and value in TP_DEGREES):
        return value  # type: ignore[no-any-return]
    raise ValueError(f"must be 'auto' or one of 1, 2, 4, 8, got {value!r}")


TensorParallel = Annotated[
    str | int,
    BeforeValidator(_tensor_parallel),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "x-kubernetes-validations": [
                {
                    "rule": "type(self) == string ? self == 'auto'"
                    " : (self == 1 || self == 2 || self == 4 || self == 8)",
                    "message": "must be 'auto' or one of 1, 2, 4, 8",
                }
            ],
        }
    ),
]


def _quantity(value: Any) -> str:
    if not isinstance(value, str) or not _QUANTITY_RE.match(value):
        raise ValueError(f"must be a Kubernetes quantity such as 500m, 4, 16Gi or 1.5G, got {value!r}")
    return value


Quantity = Annotated[
    str,
    BeforeValidator(_quantity),
    WithJsonSchema({"type": "string", "maxLength": 32, "pattern": QUANTITY_PATTERN}),
]

Engine = Literal["tgi", "vllm"]
Quantization = Literal["none", "fp8", "awq", "gptq"]


@dataclass(frozen=True)
class Rule:
    """A cross-field invariant: CEL for the apiserver, ``check`` for offline reads.

    ``check`` receives the model instance and returns True when the rule holds.
    ``field_path`` is relative to the object the rule sits on (CEL ``fieldPath``).
    ``message_expression`` (CEL ``messageExpression``) and ``explain`` (its Python twin) name the
    offending value, e.g. the refused key; ``message`` stays the fallback the apiserver shows when
    the expression cannot be evaluated.
    """

    cel: str
    message: str
    check: Callable[[Any], bool]
    field_path: str | None = None
    reason: str | None = None
    message_expression: str | None = None
    explain: Callable[[Any], str] | None = None

    def to_schema(self) -> dict[str, str]:
        out = {"rule": self.cel, "message": self.message}
        if self.message_expression:
            out["messageExpression"] = self.message_expression
        if self.field_path:
            out["fieldPath"] = self.field_path
        if self.reason:
            out["reason"] = self.reason
        return out


def check_rules(instance: Any, rules: tuple[Rule, ...]) -> None:
    """Raise ``ValueError`` naming the field of the first violated rule."""
    for rule in rules:
        if not rule.check(instance):
            where = f"{rule.field_path.lstrip('.')}: " if rule.field_path else ""
            raise ValueError(f"{where}{rule.explain(instance) if rule.explain else rule.message}")


def rules_schema(rules: tuple[Rule, ...]) -> dict[str, Any]:
    """The ``json_schema_extra`` carrying the rules into the CRD."""
    return {"x-kubernetes-validations": [r.to_schema() for r in rules]}

"""Status conditions in the Kubernetes shape, computed purely.

``metav1.Condition``: type, status ("True"/"False"/"Unknown"), reason (CamelCase),
message (a sentence a user can act on), observedGeneration, lastTransitionTime — which
changes only when ``status`` changes, so ``kubectl wait --for=condition=Ready`` and Argo
CD health see real transitions, not churn. ``merge`` returns the new list and whether
anything changed, so the controller patches status only when needed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
MODEL_SYNCED = "ModelSynced"
SCALING_ACTIVE = "ScalingActive"

#: Order in which conditions are listed in status (stable output, stable diffs).
ORDER = (READY, PROGRESSING, DEGRADED, MODEL_SYNCED, SCALING_ACTIVE)


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool | None  # None = Unknown
    reason: str
    message: str

    @property
    def status_str(self) -> str:
        return "Unknown" if self.status is None else ("True" if self.status else "False")


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge(
    existing: Iterable[Mapping[str, Any]] | None,
    desired: Iterable[Condition],
    generation: int,
    now: str | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """New conditions list (desired types updated, others kept) and whether it differs."""
    old = {c["type"]: dict(c) for c in (existing or [])}
    out = dict(old)
    stamp = now or now_rfc3339()
    for cond in desired:
        prev = old.get(cond.type)
        transitioned = prev is None or prev.get("status") != cond.status_str
        out[cond.type] = {
            "type": cond.type,
            "status": cond.status_str,
            "reason": cond.reason,
            "message": cond.message,
            "observedGeneration": generation,
            "lastTransitionTime": stamp if transitioned or prev is None else prev.get("lastTransitionTime", stamp),
        }
    ordered = sorted(
        out.values(), key=lambda c: (ORDER.index(c["type"]) if c["type"] in ORDER else len(ORDER), c["type"])
    )
    before = sorted(
        old.values(), key=lambda c: (ORDER.index(c["type"]) if c["type"] in ORDER else len(ORDER), c["type"])
    )
    return ordered, ordered != before


def get(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    return next((c for c in (conditions or []) if c.get("type") == type_), None)


def is_true(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> bool:
    c = get(conditions, type_)
    return c is not None and c.get("status") == "True"

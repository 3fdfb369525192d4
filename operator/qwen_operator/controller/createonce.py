"""Create once: the conditions of a resource whose model version is not resolved yet.

With an ``s3://`` registry the version watcher resolves ``spec.model.version`` (a tag such
as ``stable``) to a manifest digest and records it in ``status.model``. Pools rendered
before that would run the floating tag and roll every pod a second time once the digest
arrives (on a full GPU pool, a borrowed-surge roll at once). So the reconciler creates no
pool Deployment until the digest is known and says why instead of guessing: Progressing
and Ready carry ``WaitingForModelVersion``, and when the watcher reports that the version
cannot be resolved (``ModelSynced=False``: ``VersionNotFound``, ``RegistryUnreachable``,
``RegistryAccessDenied``, ``InvalidVersion``) Degraded carries that reason and message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import conditions as cond

WAITING = "WaitingForModelVersion"
#: ModelSynced reasons of a version that could not be resolved (the watcher's ``classify``).
UNRESOLVABLE = frozenset({"VersionNotFound", "RegistryUnreachable", "RegistryAccessDenied", "InvalidVersion"})


def waiting_conditions(
    registry: str, version: str, live_status: Mapping[str, Any], degraded: cond.Condition
) -> tuple[cond.Condition, cond.Condition, cond.Condition]:
    """(Degraded, Progressing, Ready) while no pool may be created; ``degraded`` is the placement's verdict."""
    synced = cond.get(live_status.get("conditions"), cond.MODEL_SYNCED)
    why = f"spec.model.version {version!r} is not resolved in {registry} yet"
    if synced is not None and synced.get("status") == "False" and synced.get("reason") in UNRESOLVABLE:
        reason, message = str(synced["reason"]), str(synced.get("message") or "")
        degraded = cond.Condition(cond.DEGRADED, True, reason, f"{why}: {message}")
        why += f" ({reason})"
    action = "no pool Deployment is created until it resolves (pools start on its digest, never on a guess)."
    return (
        degraded,
        cond.Condition(cond.PROGRESSING, True, WAITING, f"{why}: {action}"),
        cond.Condition(cond.READY, False, WAITING, f"{why}: {action}"),
    )

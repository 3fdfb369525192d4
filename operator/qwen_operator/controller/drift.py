"""Drift of an owned object, computed purely: which fields we render differ in the live object.

The reconciler's hash annotation says whether the *rendered* manifest changed; it says
nothing about the live object. ``kubectl scale deploy chat-l40s --replicas=0``, an edited
image or a patched Service selector leave the annotation untouched, so a hash-only check
keeps that drift forever. This module compares the fields of the rendered manifest with
the live object from the watch cache, which costs no API request, so a steady state stays
at zero requests and zero writes while any manual change is reverted on the next
reconcile (a watch event, or the periodic resync at the latest).

The comparison is "desired is a subset of live", because the API server adds defaults
(``imagePullPolicy``, ``terminationMessagePath``, ``clusterIP``, ``protocol``...) that we
never render, and others may own fields we never set (server-side apply leaves them):

* maps: every rendered key must be present and equal; extra live keys are ignored, except
  in the maps server-side apply treats as atomic (a Service's ``spec.selector``,
  ``nodeSelector``, a label selector's ``matchLabels``), which must be equal as a whole:
  our apply replaces them whole, so an added key there is drift we can revert;
* a rendered "zero value" (``None``, ``False``, ``0``, ``""``, ``{}``, ``[]``) matches an
  absent live key: the API server omits empty fields (``omitempty``);
* lists of objects with a ``name`` are matched by name (containers, env, volumes, ports);
  other lists of objects position by position; live elements beyond ours are ignored
  (another manager's entries in a map-list survive our apply, so flagging them would
  re-apply forever without effect);
* lists of scalars (``args``, ``command``) must be equal: they are atomic;
* quantities compare by value (``"1"`` and ``1``, ``"1536Mi"`` and ``"1.5Gi"``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

#: Top-level keys that are never compared (identity and what the API server reports).
SKIPPED = frozenset({"apiVersion", "kind", "status"})
#: Maps that server-side apply replaces whole (``+mapType=atomic`` / ``+structType=atomic``).
ATOMIC_MAPS = frozenset({"nodeSelector", "matchLabels"})
#: Quantity suffixes -> multiplier (Kubernetes ``resource.Quantity``).
_SUFFIX = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}
_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")
#: At most this many differing paths are reported (the first ones say enough).
MAX_PATHS = 8


def quantity(value: Any) -> Decimal | None:
    """A Kubernetes quantity's value, or None when ``value`` is not one."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    match = _QUANTITY.match(str(value).strip())
    if match is None:
        return None
    try:
        return Decimal(match.group(1)) * _SUFFIX[match.group(2) or ""]
    except InvalidOperation:
        return None


def _empty(value: Any) -> bool:
    return value is None or value is False or value == 0 or value in ("", {}, [])


def _scalar_equal(desired: Any, live: Any) -> bool:
    if desired == live and type(desired) is type(live):
        return True
    if isinstance(desired, str) and isinstance(live, str):
        # only numeric-looking strings can be two spellings of one quantity
        if not (desired[:1].isdigit() or desired[:1] in "+-.") or not (live[:1].isdigit() or live[:1] in "+-."):
            return False
    a, b = quantity(desired), quantity(live)
    return a is not None and a == b


def _walk(desired: Any, live: Any, path: str, key: str, out: list[str]) -> None:
    if len(out) >= MAX_PATHS:
        return
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            out.append(path)
            return
        if key in ATOMIC_MAPS or path == "spec.selector":
            extra = sorted(set(live) - set(desired))
            if extra:
                out.append(f"{path}.{extra[0]}")
                return
        for k, want in desired.items():
            sub = f"{path}.{k}" if path else str(k)
            if k not in live:
                if not _empty(want):
                    out.append(sub)
                continue
            _walk(want, live[k], sub, str(k), out)
        return
    if isinstance(desired, Sequence) and not isinstance(desired, str):
        _walk_list(desired, live, path, key, out)
        return
    if not _scalar_equal(desired, live) and not (_empty(desired) and live is None):
        out.append(path)


def _walk_list(desired: Sequence[Any], live: Any, path: str, key: str, out: list[str]) -> None:
    if not isinstance(live, Sequence) or isinstance(live, str):
        if not (len(desired) == 0 and live is None):
            out.append(path)
        return
    if desired and all(isinstance(d, Mapping) for d in desired):
        if all("name" in d for d in desired) and all(isinstance(x, Mapping) for x in live):
            by_name = {x.get("name"): x for x in live}
            for d in desired:
                sub = f"{path}[{d['name']}]"
                if d["name"] not in by_name:
                    out.append(sub)
                else:
                    _walk(d, by_name[d["name"]], sub, key, out)
            return
        if len(live) < len(desired):
            out.append(path)
            return
        for i, d in enumerate(desired):
            _walk(d, live[i], f"{path}[{i}]", key, out)
        return
    if len(desired) != len(live) or any(not _scalar_equal(d, x) for d, x in zip(desired, live, strict=True)):
        out.append(path)


def drift(desired: Mapping[str, Any], live: Mapping[str, Any]) -> list[str]:
    """Dotted paths of rendered fields whose live value differs (empty: no drift), at most ``MAX_PATHS``."""
    out: list[str] = []
    for k, want in desired.items():
        if k in SKIPPED:
            continue
        if k not in live:
            if not _empty(want):
                out.append(str(k))
            continue
        _walk(want, live[k], str(k), str(k), out)
    return out[:MAX_PATHS]


def describe(paths: Sequence[str], limit: int = 3) -> str:
    """``spec.replicas, spec.template...image`` for an Event message."""
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")

"""Run the real Helm CLI on the chart: render, lint, install (what tests and the demo call).

Thin wrappers over the ``helm`` binary built by :mod:`.helm`, so tests read as the
commands a user types (``helm template``, ``helm lint``, ``helm install``) and always go
through Helm's own value-schema validation, never a re-implementation of it.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from . import helm

CHART = Path(__file__).resolve().parents[3] / "charts" / "qwen-operator"


class HelmError(RuntimeError):
    """Helm exited non-zero; ``stderr`` holds its message."""

    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"helm {' '.join(args)} failed ({returncode}):\n{stderr}")
        self.stderr = stderr


def run(*args: str, values: Mapping[str, Any] | None = None, timeout: float = 120) -> str:
    """``helm ARGS [-f values.yaml]``; returns stdout, raises :class:`HelmError` on failure."""
    binary = helm.locate()
    with tempfile.TemporaryDirectory() as tmp:
        extra: list[str] = []
        if values is not None:
            path = Path(tmp) / "values.yaml"
            path.write_text(yaml.safe_dump(dict(values)))
            extra = ["-f", str(path)]
        cmd = [str(binary), *args, *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise HelmError(list(args), proc.returncode, proc.stderr)
    return proc.stdout


def template(
    *sets: str,
    values: Mapping[str, Any] | None = None,
    set_json: Sequence[str] = (),
    release: str = "qwen-operator",
    namespace: str = "qwen-operator",
    chart: Path = CHART,
) -> list[dict[str, Any]]:
    """Every object ``helm template`` renders (``sets`` are ``--set``, ``set_json`` ``--set-json`` expressions)."""
    args = ["template", release, str(chart), "--namespace", namespace]
    for expr in sets:
        args += ["--set", expr]
    for expr in set_json:
        args += ["--set-json", expr]
    out = run(*args, values=values)
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(objects: Sequence[Mapping[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    """Objects of ``kind`` (and ``name``) among rendered ones."""
    return [
        dict(o)
        for o in objects
        if o.get("kind") == kind and (name is None or o.get("metadata", {}).get("name") == name)
    ]

"""The pytest plugin loaded by ``pyproject.toml`` (``-p qwen_operator.testing.plugin``).

It only re-exports fixtures; each lives next to the component it starts:
``testing.cluster`` (sandbox control plane), ``testing.prometheus`` (real Prometheus),
``testing.s3`` (real S3-compatible server), ``testing.oci`` (real OCI registry),
``testing.hub`` (real Hub-compatible mirror), ``testing.lws`` (real LeaderWorkerSet
controller on the sandbox).
"""

from __future__ import annotations

import importlib

for _name in ("cluster", "prometheus", "s3", "oci", "hub", "operator", "lws"):
    try:
        _module = importlib.import_module(f"qwen_operator.testing.{_name}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"qwen_operator.testing.{_name}":
            raise
        continue
    for _attr in getattr(_module, "__all__", ()):
        globals()[_attr] = getattr(_module, _attr)

"""Run the Argo CD health check for QwenDeployment the way Argo CD does, in a real Lua VM (lupa)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
HEALTH_LUA = REPO / "manifests" / "gitops" / "argocd" / "health.lua"


def lua_table(lua: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return lua.table_from({k: lua_table(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([lua_table(lua, v) for v in value])
    return value


def health(obj: dict[str, Any], script: str | None = None) -> tuple[str, str]:
    """``(status, message)`` of ``obj``: a global ``obj``, the chunk returns ``hs`` (Argo CD's contract)."""
    from lupa import LuaRuntime  # type: ignore[import-untyped]

    lua = LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua_table(lua, obj)
    hs = lua.execute(script if script is not None else HEALTH_LUA.read_text())
    return str(hs["status"]), str(hs["message"])

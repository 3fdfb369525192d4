"""The sandbox registers each running router process as a Prometheus target next to the
simulated servers: one list (``set_targets`` replaces the whole file), labelled as pod
discovery labels a router pod (``namespace``, ``pod`` = the pod's real name, the shape the
autoscaler's adapter selects), and the router's target goes when its process stops, without
taking the servers' targets with it. (The router processes here are stand-ins for the
``qwenctl router`` processes the e2e runs; the servers are real simulated TGI servers.)"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from test_fleet_bridge import rendered_pod, running  # the pods the renderer produces

from qwen_operator.autoscale.prometheus import pod_regex
from qwen_operator.router.metric_names import TARGET_LABELS
from qwen_operator.sandbox.prometheus import Target
from qwen_operator.sim.fleet_bridge import FleetBridge
from qwen_operator.sim.router_bridge import RouterBridge, RouterProc


@dataclass
class _Process:
    """What :class:`RouterProc` reads from its process: ``returncode`` (None while it runs)."""

    returncode: int | None = None


def test_router_targets_merge_with_server_targets_and_leave_with_the_process(tmp_path: Path) -> None:
    published: list[list[Target]] = []

    async def run() -> None:
        bridge = FleetBridge(None, "llm", "chat", set_targets=published.append, log=lambda _m: None)
        await bridge.start()
        routers = RouterBridge(None, "llm", "chat", tmp_path, on_change=bridge._publish_targets)
        bridge.router_bridge = routers
        procs = {pod: _Process() for pod in ("chat-router-5d8f7c9b4-abcde", "chat-router-5d8f7c9b4-fghij")}
        for i, (pod, proc) in enumerate(procs.items()):
            routers.routers[f"uid-{pod}"] = RouterProc(
                pod, f"uid-{pod}", cast(Any, proc), f"http://127.0.0.1:{40000 + i}", tmp_path / "log"
            )
            routers._changed()  # what _start does once the process listens
        assert {t.labels["pod"] for t in published[-1]} == set(procs)
        assert all(t.labels == {"namespace": "llm", "pod": t.labels["pod"]} for t in published[-1])
        assert set(TARGET_LABELS) == {"namespace", "pod"}
        assert {t.address for t in published[-1]} == {"127.0.0.1:40000", "127.0.0.1:40001"}
        # the autoscaler's adapter selects router pods of `chat` by name shape: these are found
        # by the router's regex, never by a pool's
        assert all(re.fullmatch(pod_regex("chat-router"), t.labels["pod"]) for t in published[-1])
        assert not any(re.fullmatch(pod_regex("chat-a10g"), t.labels["pod"]) for t in published[-1])

        await bridge.sync([rendered_pod("chat-a10g-a", ["A10G"], **running(True))])  # a server appears
        assert {t.labels["pod"] for t in published[-1]} == {"chat-a10g-a", *procs}

        gone = "chat-router-5d8f7c9b4-abcde"
        procs[gone].returncode = 0  # its pod was deleted and the process stopped
        await routers._stop(f"uid-{gone}")
        assert {t.labels["pod"] for t in published[-1]} == {"chat-a10g-a", "chat-router-5d8f7c9b4-fghij"}

        await bridge.sync([])  # the server's pod goes: the remaining router stays a target
        await asyncio.sleep(2.5)  # the server retires after its idle settle
        assert {t.labels["pod"] for t in published[-1]} == {"chat-router-5d8f7c9b4-fghij"}
        bridge.router_bridge = None
        await bridge.stop()

    asyncio.run(run())

"""Test helpers: an asyncio loop on a thread, and simulated TGI servers as processes on loopback.

Why: several test modules run the router's proxy and simulated servers on a background loop while
synchronous clients (OpenAI, huggingface_hub, kubectl) call in, and several integration tests need a
few ``python -m qwen_operator.sim.server`` processes to dial. One copy of each lives here.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["BackgroundLoop", "simulated_servers"]


class BackgroundLoop:
    """An event loop on a daemon thread: servers and routers live there, tests call in."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], T]) -> T:
        async def go() -> T:
            return fn()

        return self.run(go())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@contextlib.contextmanager
def simulated_servers(count: int, max_new_tokens: int, time_scale: float = 50) -> Iterator[list[str]]:
    """``count`` simulated TGI replicas (``python -m qwen_operator.sim.server``, no cold start) on
    loopback; yields their base URLs and stops them afterwards."""
    procs: list[subprocess.Popen[str]] = []
    urls = []
    try:
        for _ in range(count):
            proc = subprocess.Popen(
                [sys.executable, "-m", "qwen_operator.sim.server", "--cold-start", "0", "--port", "0"]
                + ["--time-scale", f"{time_scale:g}", "--default-max-new-tokens", str(max_new_tokens)],
                stdout=subprocess.PIPE,
                text=True,
            )
            procs.append(proc)
            assert proc.stdout is not None
            line = proc.stdout.readline()
            urls.append("http://127.0.0.1:" + line.split("listening on 127.0.0.1:")[1].split()[0])
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)

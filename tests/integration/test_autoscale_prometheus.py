"""The autoscaler's PromQL against the real Prometheus scraping simulated TGI replicas."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from huggingface_hub import AsyncInferenceClient

from qwen_operator.autoscale.prometheus import PrometheusSource
from qwen_operator.engines.runtimes import TGI
from qwen_operator.sandbox.prometheus import PrometheusServer, Target

pytestmark = pytest.mark.prometheus


@pytest.fixture()
def replicas() -> Iterator[list[str]]:
    """Two simulated TGI replicas (A10G fp8 Qwen3-14B, no cold start) on loopback."""
    procs, urls = [], []
    for _ in range(2):
        p = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "qwen_operator.sim.server",
                "--cold-start",
                "0",
                "--port",
                "0",
                "--max-concurrent-requests",
                "8",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        line = p.stdout.readline() if p.stdout else ""
        assert "listening on 127.0.0.1:" in line, line
        urls.append("127.0.0.1:" + line.split("127.0.0.1:")[1].split()[0])
        procs.append(p)
    yield urls
    for p in procs:
        p.terminate()
        p.wait(10)


def wait_until(what: str, check: object, timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check() if callable(check) else None
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_signals_from_real_prometheus_and_hold_when_it_is_down(
    prometheus: PrometheusServer, replicas: list[str]
) -> None:
    prometheus.set_targets(
        [Target(addr, {"namespace": "llm", "pod": f"chat-a10g-7c9d8b6f5-pod{i}"}) for i, addr in enumerate(replicas)]
        + [Target(replicas[0], {"namespace": "other", "pod": "chat-a10g-7c9d8b6f5-podx"})]  # another namespace
        + [Target(replicas[1], {"namespace": "llm", "pod": "chat-a10g-l40s-5b6c7d8f9-podz"})]  # resource chat-a10g
    )  # neither may count
    source = PrometheusSource(prometheus.url, timeout=3)
    metrics = TGI().metrics
    wait_until("targets up", lambda: len([t for t in prometheus.active_targets() if t["health"] == "up"]) == 4)

    idle = source.fetch("llm", ["chat-a10g"], metrics)
    assert idle.ok and idle.queue == 0 and idle.in_flight == 0
    assert idle.p95_seconds is None  # no requests: NaN -> "no signal", not 0

    async def load() -> int:
        clients = [AsyncInferenceClient(base_url=f"http://{a}") for a in replicas]
        # ~4,500-token prompts: an A10G fp8 replica's KV cache (~30k tokens) admits ~6 at once,
        # so of 8 per replica some must wait in TGI's queue
        jobs = [clients[i % 2].text_generation("hello " * 3000, max_new_tokens=60) for i in range(16)]
        done = await asyncio.gather(*jobs, return_exceptions=True)
        return sum(1 for d in done if isinstance(d, str))

    loop = asyncio.new_event_loop()
    task = loop.create_task(load())
    busy = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not task.done():
        loop.run_until_complete(asyncio.sleep(0.5))
        sig = source.fetch("llm", ["chat-a10g"], metrics)
        if sig.ok and sig.queue and sig.queue > 0:
            busy = sig
            break
    completed = loop.run_until_complete(task)
    loop.close()
    assert busy is not None, "never saw a queue while 16 long prompts hit 2 replicas"
    assert set(busy.queue_per_pod) <= {"chat-a10g-7c9d8b6f5-pod0", "chat-a10g-7c9d8b6f5-pod1"}
    assert completed > 0
    after = wait_until("P95 signal", lambda: (s := source.fetch("llm", ["chat-a10g"], metrics)).p95_seconds and s)
    # the SLO histogram is the queue wait (TTFT minus own prefill): requests did wait
    assert after.p95_seconds is not None and 0.1 < after.p95_seconds < 120  # type: ignore[union-attr]
    assert after.request_rate is not None and after.request_rate > 0  # type: ignore[union-attr]

    prometheus.stop()
    down = source.fetch("llm", ["chat-a10g"], metrics)
    assert not down.ok and "could not be queried" in (down.error or "")
    assert down.queue is None and down.p95_seconds is None  # no numbers at all: the policy holds

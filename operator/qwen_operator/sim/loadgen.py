"""A bounded, self-stopping load generator: a compressed peak-and-trough through TGI's client.

Why it exists: the closed-loop e2e and ``qwenctl sandbox demo`` must drive the simulated
fleet the way users do: ``huggingface_hub.AsyncInferenceClient`` pointed at one URL (the
balancer standing in for the Service), open-loop Poisson arrivals whose rate follows a
few phases (e.g. low -> 4x spike -> trough) and request sizes drawn from the real Azure
LLM trace (:mod:`.trace`), capped so a run of minutes stays cheap on a laptop.

Every request is accounted for exactly once: ``ok``, ``rejected`` (HTTP 429, TGI's
``OverloadedError``) or ``errors`` (anything else, with samples of the messages), so a
caller can assert that nothing was lost. It stops by itself after the last phase or
``max_requests``; :meth:`LoadGenerator.wait` then lets the requests in flight finish.
Everything it prints says SIMULATED (the replicas answering are simulated).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .trace import TraceRow

_FILLER = "the quick brown fox jumps over a lazy dog "  # ~4 characters per token, as the server estimates


@dataclass(frozen=True)
class Phase:
    """``seconds`` of Poisson arrivals at ``rate`` requests per second."""

    name: str
    seconds: float
    rate: float


def peak_and_trough(
    base_rate: float,
    spike: float = 4.0,
    base_seconds: float = 30.0,
    spike_seconds: float = 60.0,
    trough_seconds: float = 90.0,
    trough_factor: float = 0.25,
) -> list[Phase]:
    """The compressed day: ``base`` load, a ``spike`` x base peak, then a ``trough``."""
    return [
        Phase("base", base_seconds, base_rate),
        Phase("spike", spike_seconds, base_rate * spike),
        Phase("trough", trough_seconds, base_rate * trough_factor),
    ]


@dataclass(frozen=True)
class RequestSize:
    prompt_tokens: int
    output_tokens: int


def sample_sizes(
    rows: Sequence[TraceRow], count: int, seed: int = 0, max_prompt_tokens: int = 1024, max_output_tokens: int = 32
) -> list[RequestSize]:
    """``count`` (prompt, output) pairs drawn together from the trace, each capped (pure, seeded)."""
    if not rows:
        raise ValueError("no trace rows to sample request sizes from")
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        row = rows[rng.randrange(len(rows))]
        out.append(RequestSize(min(row.prompt_tokens, max_prompt_tokens), min(row.output_tokens, max_output_tokens)))
    return out


def prompt_of(tokens: int) -> str:
    """A prompt the simulated server counts as ``tokens`` tokens (4 characters each)."""
    chars = 4 * tokens
    return (_FILLER * (chars // len(_FILLER) + 1))[:chars]


@dataclass
class LoadStats:
    """Client-side accounting. ``sent == ok + rejected + errors + in_flight`` at all times."""

    sent: int = 0
    ok: int = 0
    rejected: int = 0  # HTTP 429 (TGI over --max-concurrent-requests)
    errors: int = 0
    in_flight: int = 0
    error_samples: list[str] = field(default_factory=list)
    sent_by_phase: dict[str, int] = field(default_factory=dict)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (end time, wall seconds) of ok requests

    @property
    def lost(self) -> int:
        """Requests that ended neither answered nor rejected with a 429 (= ``errors``): must be 0."""
        return self.sent - self.ok - self.rejected - self.in_flight

    def summary(self) -> str:
        return (
            f"SIMULATED load: sent {self.sent}, ok {self.ok}, 429 {self.rejected}, errors {self.errors}, "
            f"in flight {self.in_flight}"
        )


def _is_429(exc: BaseException) -> bool:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None) == 429


class LoadGenerator:
    """Replays ``phases`` against ``base_url`` with ``AsyncInferenceClient.text_generation``."""

    def __init__(
        self,
        base_url: str,
        phases: Sequence[Phase],
        rows: Sequence[TraceRow],
        seed: int = 0,
        max_prompt_tokens: int = 1024,
        max_output_tokens: int = 32,
        max_requests: int = 5000,
        request_timeout: float = 300.0,
        log: Callable[[str], None] = print,
    ) -> None:
        self.base_url = base_url
        self.phases = list(phases)
        self.sizes = sample_sizes(rows, max_requests, seed, max_prompt_tokens, max_output_tokens)
        self.seed = seed
        self.max_requests = max_requests
        self.request_timeout = request_timeout
        self.log = log
        self.stats = LoadStats()
        self.phase_started: dict[str, float] = {}  # phase name -> time.monotonic() it began
        self.started_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._requests: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._client: Any = None

    @property
    def current_phase(self) -> str | None:
        return next(reversed(self.phase_started), None) if self.phase_started else None

    async def start(self) -> LoadGenerator:
        from huggingface_hub import AsyncInferenceClient

        self._client = AsyncInferenceClient(base_url=self.base_url, timeout=self.request_timeout)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="SIMULATED load generator")
        return self

    async def _run(self) -> None:
        rng = random.Random(self.seed + 1)
        self.started_at = time.monotonic()
        phase_end = self.started_at
        for phase in self.phases:
            start, phase_end = phase_end, phase_end + phase.seconds
            self.phase_started[phase.name] = time.monotonic()
            self.log(f"SIMULATED load: phase {phase.name!r} at {phase.rate:.2f} req/s for {phase.seconds:.0f}s")
            if phase.rate <= 0:
                if await self._sleep_until(phase_end):
                    return
                continue
            t = start
            while True:
                t += rng.expovariate(phase.rate)
                if t >= phase_end:
                    break
                if await self._sleep_until(t) or self.stats.sent >= self.max_requests:
                    return
                self._send(phase.name)
            if await self._sleep_until(phase_end):
                return
        self.log(self.stats.summary() + " (schedule finished)")

    async def _sleep_until(self, t: float) -> bool:
        """Sleep until monotonic time ``t``; True when asked to stop meanwhile."""
        delay = t - time.monotonic()
        if delay > 0:
            try:
                async with asyncio.timeout(delay):
                    await self._stop.wait()
            except TimeoutError:
                pass
        return self._stop.is_set()

    def _send(self, phase: str) -> None:
        size = self.sizes[self.stats.sent]
        self.stats.sent += 1
        self.stats.in_flight += 1
        self.stats.sent_by_phase[phase] = self.stats.sent_by_phase.get(phase, 0) + 1
        task = asyncio.get_running_loop().create_task(self._one(size))
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)

    async def _one(self, size: RequestSize) -> None:
        from huggingface_hub.errors import OverloadedError

        began = time.monotonic()
        try:
            await self._client.text_generation(prompt_of(size.prompt_tokens), max_new_tokens=size.output_tokens)
        except OverloadedError:
            self.stats.rejected += 1
        except asyncio.CancelledError:
            self.stats.errors += 1  # unanswered when the drain ran out
            self.stats.error_samples.append("cancelled: no answer within the drain time")
            raise
        except Exception as exc:  # noqa: BLE001 - every outcome is counted, none may escape uncounted
            if _is_429(exc):
                self.stats.rejected += 1
            else:
                self.stats.errors += 1
                if len(self.stats.error_samples) < 20:
                    self.stats.error_samples.append(f"{type(exc).__name__}: {str(exc)[:300]}")
        else:
            self.stats.ok += 1
            end = time.monotonic()
            self.stats.latencies.append((end, end - began))
        finally:
            self.stats.in_flight -= 1

    @property
    def done_sending(self) -> bool:
        return self._task is not None and self._task.done()

    def stop_sending(self) -> None:
        """End the schedule early (requests in flight carry on)."""
        self._stop.set()

    async def wait(self, drain_seconds: float = 120.0) -> LoadStats:
        """Wait for the schedule to end and the requests in flight to finish (bounded)."""
        if self._task is not None:
            await self._task
        if self._requests:
            _done, pending = await asyncio.wait(set(self._requests), timeout=drain_seconds)
            for task in pending:  # still unanswered after the drain: counted as errors, never silently
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        await self._client.close()
        self.log(self.stats.summary())
        return self.stats

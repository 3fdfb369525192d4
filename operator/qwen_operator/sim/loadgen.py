"""A bounded, self-stopping load generator: a compressed peak-and-trough over TGI's HTTP API.

Why it exists: the closed-loop e2e and ``qwenctl sandbox demo`` must drive the simulated
fleet the way users do: HTTP to the client-facing address (in the sandbox, a Ready router
process, as the ``<name>`` Service would pick one), open-loop Poisson arrivals whose rate
follows a few phases (e.g. low -> 4x spike -> trough) and request sizes drawn from the real
Azure LLM trace (:mod:`.trace`), capped so a run of minutes stays cheap on a laptop.

It speaks TGI's ``POST /generate`` (``dialect="tgi"``), or, for vLLM (``dialect="openai"``),
OpenAI's ``POST /v1/completions`` streamed, naming the served model, with aiohttp rather than through
``huggingface_hub.AsyncInferenceClient`` because a run is judged per request on what the
client saw, and the HF client drops response headers: each request's :class:`Outcome`
keeps its status, client-side time to first byte and wall time, TGI's ``x-queue-time`` and
``x-total-time`` (passed through the router unchanged) and the pod that answered (the
router's ``x-qwen-endpoint``). vLLM sends no timing headers: there the client times the first
streamed token itself (``Outcome.ttft_seconds``, prefill included, as vLLM's own
``vllm:time_to_first_token_seconds``).

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import aiohttp

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


@dataclass(frozen=True)
class Outcome:
    """One request as the client saw it."""

    at: float  # time.monotonic() when the response ended (or the request failed)
    status: int  # HTTP status; 0 when no HTTP answer came (connection refused, cut, timeout)
    seconds: float  # wall time, client side
    first_byte_seconds: float | None  # until the response started (headers), client side
    queue_seconds: float | None  # TGI's x-queue-time: waiting for the first batch, None when absent
    server_seconds: float | None  # TGI's x-total-time: the request inside the server
    endpoint: str = ""  # the pod that answered (the router's x-qwen-endpoint)
    ttft_seconds: float | None = None  # streamed answers: until the first token's event, client side

    @property
    def wait_seconds(self) -> float | None:
        """The SLO wait as the client saw it. TGI: time to first token minus prefill, its queue wait
        (``x-queue-time``) plus the time spent outside the server (held in the router, hops). vLLM
        (no such header): the streamed time to first token, prefill included. None: neither."""
        if self.queue_seconds is None:
            return self.ttft_seconds
        outside = 0.0 if self.server_seconds is None else max(0.0, self.seconds - self.server_seconds)
        return self.queue_seconds + outside


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


def _header_seconds(headers: Mapping[str, str], name: str) -> float | None:
    """A TGI timing header (milliseconds) in seconds; None when absent or malformed."""
    value = headers.get(name)
    try:
        return float(value) / 1000.0 if value is not None else None
    except ValueError:
        return None


#: Where to send the next request: a fixed base URL, or a function choosing one (it raises
#: ``LookupError`` when nothing can take requests, which is counted as that request's error).
Target = str | Callable[[], str]
#: ``tgi``: ``POST /generate``; ``openai``: ``POST /v1/completions`` streamed (vLLM, which has no /generate).
Dialect = Literal["tgi", "openai"]


class LoadGenerator:
    """Replays ``phases`` against ``target`` with TGI's ``POST /generate`` (or vLLM's streamed completions)."""

    def __init__(
        self,
        target: Target,
        phases: Sequence[Phase],
        rows: Sequence[TraceRow],
        seed: int = 0,
        max_prompt_tokens: int = 1024,
        max_output_tokens: int = 32,
        max_requests: int = 5000,
        request_timeout: float = 300.0,
        log: Callable[[str], None] = print,
        on_outcome: Callable[[Outcome], None] | None = None,
        dialect: Dialect = "tgi",
        model: str = "",
    ) -> None:
        self.target = target
        self.dialect = dialect
        self.model = model  # the OpenAI dialect's ``model``: the server's served model name
        self.phases = list(phases)
        self.sizes = sample_sizes(rows, max_requests, seed, max_prompt_tokens, max_output_tokens)
        self.seed = seed
        self.max_requests = max_requests
        self.request_timeout = request_timeout
        self.log = log
        self.on_outcome = on_outcome
        self.stats = LoadStats()
        self.outcomes: list[Outcome] = []  # every request that ended, in the order they ended
        self.phase_started: dict[str, float] = {}  # phase name -> time.monotonic() it began
        self.started_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._requests: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None

    @property
    def current_phase(self) -> str | None:
        return next(reversed(self.phase_started), None) if self.phase_started else None

    async def start(self) -> LoadGenerator:
        # no pool limit: open-loop arrivals must not queue in the client
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.request_timeout), connector=aiohttp.TCPConnector(limit=0)
        )
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

    def send_now(self, size: RequestSize, phase: str = "manual") -> asyncio.Task[None]:
        """Send one request outside the schedule (counted like the others); its task."""
        self.stats.sent += 1
        self.stats.in_flight += 1
        self.stats.sent_by_phase[phase] = self.stats.sent_by_phase.get(phase, 0) + 1
        task = asyncio.get_running_loop().create_task(self._one(size))
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)
        return task

    def _error(self, message: str) -> None:
        self.stats.errors += 1
        if len(self.stats.error_samples) < 20:
            self.stats.error_samples.append(message)

    async def _one(self, size: RequestSize) -> None:
        assert self._session is not None
        began = time.monotonic()
        status, first_byte, queue_s, server_s, endpoint, ttft = 0, None, None, None, "", None
        try:
            base = self.target() if callable(self.target) else self.target
            prompt = prompt_of(size.prompt_tokens)
            if self.dialect == "openai":
                path = "/v1/completions"
                payload: dict[str, object] = {"model": self.model, "prompt": prompt, "stream": True}
                payload["max_tokens"] = size.output_tokens
            else:
                path = "/generate"
                payload = {"inputs": prompt, "parameters": {"max_new_tokens": size.output_tokens}}
            async with self._session.post(base.rstrip("/") + path, json=payload) as resp:
                first_byte = time.monotonic() - began
                status = resp.status
                queue_s = _header_seconds(resp.headers, "x-queue-time")
                server_s = _header_seconds(resp.headers, "x-total-time")
                endpoint = resp.headers.get("x-qwen-endpoint", "")
                if status == 200 and "text/event-stream" in resp.headers.get("Content-Type", ""):
                    events = []
                    async for line in resp.content:  # SSE lines: the first data event is the first token
                        if ttft is None and line.startswith(b"data: {"):
                            ttft = time.monotonic() - began
                        events.append(line)
                    text = b"".join(events).decode(errors="replace")
                else:
                    text = await resp.text()
            if status == 200:
                self.stats.ok += 1
            elif status == 429:
                self.stats.rejected += 1
            else:
                self._error(f"HTTP {status}: {text[:300]}")
        except asyncio.CancelledError:
            self._error("cancelled: no answer within the drain time")  # unanswered when the drain ran out
            raise
        except LookupError as exc:  # the target had nowhere to send it
            self._error(f"{type(exc).__name__}: {exc}")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            status = 0
            self._error(f"{type(exc).__name__}: {str(exc)[:300]}")
        finally:
            self.stats.in_flight -= 1
            end = time.monotonic()
            outcome = Outcome(end, status, end - began, first_byte, queue_s, server_s, endpoint, ttft)
            self.outcomes.append(outcome)
            if status == 200:
                self.stats.latencies.append((end, end - began))
            if self.on_outcome is not None:
                self.on_outcome(outcome)

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
        if self._session is not None:
            await self._session.close()
        self.log(self.stats.summary())
        return self.stats

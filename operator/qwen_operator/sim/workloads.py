"""Multi-turn chat sessions: a SYNTHETIC workload whose prompts grow turn by turn.

Why it exists: prefix / session affinity in the router pays off only when requests share
a prefix that a replica still caches, and the bundled Azure trace has no notion of
sessions (each row is one request with its context length). A chat client resends the
whole conversation every turn, so turn ``k``'s prompt is the system prompt, every earlier
turn's user message and reply, and the new user message; all but the new message is what
the previous turn's request already had (prompt + reply), i.e. what a replica that served
it may still hold in its prefix cache (:mod:`.engine`).

The workload is labelled synthetic; what comes from the real trace and what is assumed:

* per-turn sizes are real: each turn draws one Azure row (``load_azure_csv``): its
  context length is the new user message, its generated length the reply (the trace's
  context lengths already include some history, so prompts grow faster than in most
  chats: a conservative choice for the cache, whose KV capacity it strains);
* sessions start open-loop, Poisson at ``sessions_per_second`` (modulated by a trace
  envelope for ``qwenctl simulate``); the number of turns is geometric with mean
  ``mean_turns``, and a session ends early when its next prompt would exceed the runtime's
  ``max_input_tokens`` (or prompt + reply ``max_total_tokens``);
* the next turn arrives ``reply tokens / READ_TOKENS_PER_SECOND + think`` after the
  previous one: the user reads the streamed reply at reading speed, then thinks and types
  (``THINK_MIN_SECONDS`` + an exponential). Reading is slower than any replica streams
  (a loaded replica decodes ~15+ tokens/s per stream), so in a fleet within its SLO a turn
  arrives after its previous reply ended, as in a closed loop, while the arrivals stay
  fixed in advance and every routing and autoscaling policy sees the same requests. A
  turn that arrives while its previous reply is still being generated (an overloaded
  fleet) finds no cached prefix: the engine caches a request's KV when it ends;
* each session's system prompt is its own (``system_prompt_tokens``), so only a session's
  own turns share a prefix (an application-wide system prompt would be cached across
  sessions too, with or without affinity; not modelled).

A request's affinity key is its session id as the router derives it from the
``x-session-id`` header (:func:`qwen_operator.router.picking.affinity_key`), and the
replica files its cached prefix under the same key. Pure and deterministic per seed.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from ..router.picking import SESSION_HEADER, affinity_key
from .trace import ENVELOPES, Envelope, Trace, TraceError, TraceRow, envelope_multiplier

#: Workloads ``qwenctl simulate --workload`` accepts: the trace as recorded/enveloped, or chat sessions.
WORKLOADS = ("trace", "sessions")
#: Speed at which the user reads a reply before answering: ~225 words/min (adult silent reading is
#: ~200-300) at ~0.75 English words per token.
READ_TOKENS_PER_SECOND = 5.0
#: Think and type time after reading, before the next message: this floor plus an exponential.
THINK_MIN_SECONDS = 2.0
THINK_MEAN_SECONDS = 10.0  # floor included
MEAN_TURNS = 4.0
MAX_TURNS = 32
SYSTEM_PROMPT_TOKENS = 256


@dataclass
class SessionTrace(Trace):
    """A :class:`Trace` of chat turns; per request also its affinity key, the prompt tokens it
    shares with its session's previous turn (0 on a first turn), its session and turn index."""

    keys: list[str | None] = field(default_factory=list)
    prefix_tokens: list[int] = field(default_factory=list)
    session: list[int] = field(default_factory=list)
    turn: list[int] = field(default_factory=list)
    sessions: int = 0


def session_key(session_id: str) -> str:
    """The affinity key the router derives for a request carrying ``x-session-id: session_id``."""
    key = affinity_key(None, {SESSION_HEADER: session_id})
    assert key is not None
    return key


def distinct_prompt_keys(n: int, seed: int = 0) -> list[str | None]:
    """Keys the router derives for ``n`` chat requests with distinct first messages (no shared
    prefixes): what affinity is keyed on for a trace of unrelated requests."""
    keys: list[str | None] = []
    for i in range(n):
        body = {"messages": [{"role": "user", "content": f"request {seed}-{i}"}]}
        keys.append(affinity_key(body, {}))
    return keys


def _fits(rows: list[TraceRow], system_tokens: int, max_input: int, max_total: int) -> list[TraceRow]:
    out = [
        r
        for r in rows
        if system_tokens + r.prompt_tokens <= max_input
        and system_tokens + r.prompt_tokens + r.output_tokens <= max_total
    ]
    if not out:
        raise TraceError(f"no trace row fits a first turn within max_input_tokens={max_input}")
    return out


def build_sessions(
    rows: list[TraceRow],
    sessions_per_second: float,
    seconds: float,
    seed: int = 0,
    *,
    mean_turns: float = MEAN_TURNS,
    think_mean_seconds: float = THINK_MEAN_SECONDS,
    read_tokens_per_second: float = READ_TOKENS_PER_SECOND,
    system_prompt_tokens: int = SYSTEM_PROMPT_TOKENS,
    max_input_tokens: int = 8192,
    max_total_tokens: int = 16384,
    envelope: Envelope | None = None,
    name: str = "sessions",
) -> SessionTrace:
    """Chat sessions starting at ``sessions_per_second`` (times ``envelope``'s multiplier when
    given) over ``seconds``; turns arriving after ``seconds`` are dropped. See the module doc."""
    if not (sessions_per_second > 0 and math.isfinite(sessions_per_second)):
        raise TraceError(f"session rate must be a positive number, got {sessions_per_second}")
    if not (seconds > 0 and math.isfinite(seconds)):
        raise TraceError(f"duration must be a positive number of seconds, got {seconds}")
    if mean_turns < 1:
        raise TraceError(f"mean turns per session must be >= 1, got {mean_turns}")
    if think_mean_seconds < THINK_MIN_SECONDS:
        raise TraceError(f"mean think time must be >= {THINK_MIN_SECONDS:g}s, got {think_mean_seconds}")
    if not read_tokens_per_second > 0:
        raise TraceError(f"reading speed must be > 0 tokens/s (inf: no reading time), got {read_tokens_per_second}")
    if not rows:
        raise TraceError("no requests to draw turn sizes from")
    usable = _fits(rows, system_prompt_tokens, max_input_tokens, max_total_tokens)
    rng = random.Random(seed)
    starts = _session_starts(rng, sessions_per_second, seconds, envelope)
    events: list[tuple[float, int, int, int, int, int]] = []  # (arrival, session, turn, prompt, output, prefix)
    extra_mean = think_mean_seconds - THINK_MIN_SECONDS
    for sid, t in enumerate(starts):
        turns = 1
        while turns < MAX_TURNS and rng.random() >= 1.0 / mean_turns:
            turns += 1
        history = system_prompt_tokens  # tokens every later turn resends
        shared = 0  # of this turn's prompt: what the previous turn's request already had
        for k in range(turns):
            row = usable[rng.randrange(len(usable))] if k == 0 else rows[rng.randrange(len(rows))]
            prompt = history + row.prompt_tokens
            if k and (prompt > max_input_tokens or prompt + row.output_tokens > max_total_tokens):
                break  # the conversation no longer fits the runtime's context: the user starts over
            if t >= seconds:
                break
            events.append((t, sid, k, prompt, row.output_tokens, shared))
            history = prompt + row.output_tokens
            shared = history
            think = THINK_MIN_SECONDS + (rng.expovariate(1.0 / extra_mean) if extra_mean > 0 else 0.0)
            t += row.output_tokens / read_tokens_per_second + think
    events.sort()
    desc = (
        f"SYNTHETIC multi-turn chat: {len(starts)} sessions, turn sizes from the Azure trace, "
        f"mean {mean_turns:g} turns, {think_mean_seconds:g}s mean think time"
    )
    out = SessionTrace(name, desc, sessions=len(starts), duration=seconds)
    for t, sid, k, prompt, output, shared in events:
        out.arrivals.append(t)
        out.prompt_tokens.append(prompt)
        out.output_tokens.append(output)
        out.prefix_tokens.append(shared)
        out.keys.append(session_key(f"chat-{seed}-{sid}"))
        out.session.append(sid)
        out.turn.append(k)
    return out


def _session_starts(rng: random.Random, rate: float, seconds: float, envelope: Envelope | None) -> list[float]:
    """Poisson session starts, the rate modulated per minute by ``envelope`` (replayed: flat)."""
    out: list[float] = []
    modulated = envelope is not None and not envelope.replay and envelope.points
    for minute in range(math.ceil(seconds / 60.0)):
        t0 = minute * 60.0
        r = rate * (envelope_multiplier(envelope, t0 + 30.0) if modulated and envelope is not None else 1.0)
        if r <= 0:
            continue
        t = t0 + rng.expovariate(r)
        while t < min(t0 + 60.0, seconds):
            out.append(t)
            t += rng.expovariate(r)
    return out


def build_session_trace(
    rows: list[TraceRow],
    envelope: str,
    seed: int = 0,
    rate_scale: float | None = None,
    max_input_tokens: int = 8192,
    max_total_tokens: int = 16384,
) -> SessionTrace:
    """``qwenctl simulate --workload sessions``: sessions over ``envelope``'s span whose turns
    arrive at about the trace's request rate (the recorded hour's mean rate x ``rate_scale``,
    default the envelope's, over the mean turns per session), shaped by the envelope's daily
    curve. The envelope's batch jobs are not sessions and are left out."""
    if envelope not in ENVELOPES:
        raise TraceError(f"unknown envelope {envelope!r}; valid: {', '.join(ENVELOPES)}")
    if not rows:
        raise TraceError("no requests to build a trace from")
    env = ENVELOPES[envelope]
    scale = env.rate_scale if rate_scale is None else rate_scale
    if not (scale > 0 and math.isfinite(scale)):
        raise TraceError(f"rate scale must be > 0, got {scale}")
    span = max(rows[-1].offset, 1.0)
    request_rate = len(rows) / span * scale
    seconds = max(60.0, math.ceil(span / scale / 60.0) * 60.0) if env.replay else env.days * 86400.0
    return build_sessions(
        rows,
        request_rate / MEAN_TURNS,
        seconds,
        seed,
        max_input_tokens=max_input_tokens,
        max_total_tokens=max_total_tokens,
        envelope=env,
        name=f"sessions/{envelope}",
    )

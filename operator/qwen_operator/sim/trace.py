"""Request traces for the fleet simulator: the real Azure hour and synthetic day/week envelopes.

Why it exists: the autoscaler is judged on traffic with real burst structure and real
request sizes, stretched over the peak-and-trough shape the operator exists for. This
module is pure (stdlib only, seeded): it turns the Azure LLM conversation trace
(``TIMESTAMP, ContextTokens, GeneratedTokens``; Azure Public Dataset, CC-BY 4.0, shipped
with the package as ``sim/data/azure-llm-conv-2023.csv.gz``, attribution in
``sim/data/README.md``) into a list of timed requests.

Envelopes are explicit data (:data:`ENVELOPES`):

* ``flat`` replays the hour as recorded (arrival times and sizes untouched).
* ``diurnal`` is one synthetic day. The arrival rate is ``base x envelope(hour) x
  burst(minute)`` where ``base`` is the real hour's mean rate times ``rate_scale`` (0.5
  by default, so that the 4x peak with its real bursts fits the default simulated fleet),
  ``envelope`` is the piecewise-linear multiplier below (0.08 at night: ~70% of the day
  is trough; 1.0 daytime base; 4.0 = +300% from 09:00 to 11:00) and ``burst`` is the real
  hour's per-minute arrival count over its mean, cycled every hour, so the real trace's
  bursts survive the stretch. Arrivals are Poisson within each minute; sizes are drawn
  (prompt and output together) from the real trace.
* ``week`` is seven such days (Monday first; weekends lower) plus a Friday 14:00 batch of
  150 long documents submitted within two minutes.

Never special-cased on the file: any CSV with the three columns works.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
import random
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

TRACE_FILE = "azure-llm-conv-2023.csv"
TRACE_ENV = "QWEN_TRACES_DIR"
#: The copy shipped as package data (gzip; CC-BY 4.0, see ``data/README.md``).
BUNDLED_TRACE = Path(__file__).resolve().parent / "data" / (TRACE_FILE + ".gz")


class TraceError(ValueError):
    """The trace file or envelope is unusable; the message says what and where."""


@dataclass(frozen=True)
class Batch:
    """A burst of long requests (a batch job), e.g. documents to summarise."""

    day: int  # 0 = Monday
    hour: float
    count: int
    spread_seconds: float
    prompt_tokens: tuple[int, int]  # uniform range, inclusive
    output_tokens: tuple[int, int]


@dataclass(frozen=True)
class Envelope:
    name: str
    description: str
    replay: bool = False  # True: the CSV as recorded
    days: int = 1
    points: tuple[tuple[float, float], ...] = ()  # (hour of day, rate multiplier), linear between
    day_factors: tuple[float, ...] = (1.0,) * 7  # per weekday, Monday first
    batches: tuple[Batch, ...] = ()
    rate_scale: float = 1.0  # base rate = the CSV's mean rate x this (default fleet fits the peak)


_DAY = (
    (0.0, 0.08),
    (7.0, 0.08),
    (8.0, 1.0),
    (9.0, 1.0),
    (9.15, 4.0),  # the morning spike: +300% within ~10 minutes
    (11.0, 4.0),
    (11.25, 1.0),
    (15.0, 1.0),
    (16.0, 0.08),
    (24.0, 0.08),
)

ENVELOPES: dict[str, Envelope] = {
    "flat": Envelope("flat", "the recorded hour, replayed as is", replay=True),
    "diurnal": Envelope(
        "diurnal",
        "one day: night trough x0.08 (~70% of the day), daytime base x1, 09:00-11:00 x4 (+300%)",
        points=_DAY,
        rate_scale=0.5,
    ),
    "week": Envelope(
        "week",
        "seven diurnal days (Sat x0.4, Sun x0.3) + Friday 14:00 batch of 150 long documents",
        days=7,
        points=_DAY,
        day_factors=(1.0, 1.0, 1.0, 1.0, 1.0, 0.4, 0.3),
        rate_scale=0.5,
        batches=(
            Batch(
                day=4, hour=14.0, count=150, spread_seconds=120.0, prompt_tokens=(3000, 7000), output_tokens=(300, 900)
            ),
        ),
    ),
}


@dataclass(frozen=True)
class TraceRow:
    offset: float  # seconds after the first request
    prompt_tokens: int
    output_tokens: int


@dataclass
class Trace:
    """Requests sorted by arrival (parallel lists: fast to build and to iterate)."""

    name: str
    description: str
    arrivals: list[float] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)
    output_tokens: list[int] = field(default_factory=list)
    duration: float = 0.0

    def __len__(self) -> int:
        return len(self.arrivals)


def default_trace_path() -> Path:
    """``$QWEN_TRACES_DIR/azure-llm-conv-2023.csv``, else the copy shipped with the package."""
    env = os.environ.get(TRACE_ENV)
    if env:
        return Path(env) / TRACE_FILE
    return BUNDLED_TRACE


def _parse_time(text: str) -> float:
    head, _, frac = text.strip().partition(".")
    base = datetime.strptime(head, "%Y-%m-%d %H:%M:%S").timestamp()
    return base + (float("0." + frac) if frac else 0.0)


def load_azure_csv(path: str | Path) -> list[TraceRow]:
    """Read ``TIMESTAMP, ContextTokens, GeneratedTokens`` rows, offsets from the first (``.gz`` too)."""
    path = Path(path)
    if not path.is_file():
        hint = f" (unset ${TRACE_ENV} to use the bundled trace)" if os.environ.get(TRACE_ENV) else ""
        raise TraceError(f"trace file {path} does not exist{hint}")
    try:
        raw_bytes = path.read_bytes()
        if path.suffix == ".gz":
            raw_bytes = gzip.decompress(raw_bytes)
        text = raw_bytes.decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as exc:
        raise TraceError(f"trace file {path} is unreadable: {exc}") from None
    with io.StringIO(text, newline="") as fh:
        reader = csv.DictReader(fh)
        need = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise TraceError(f"{path}: expected columns {sorted(need)}, got {reader.fieldnames}")
        raw: list[tuple[float, int, int]] = []
        for lineno, row in enumerate(reader, start=2):
            try:
                raw.append((_parse_time(row["TIMESTAMP"]), int(row["ContextTokens"]), int(row["GeneratedTokens"])))
            except ValueError as exc:
                raise TraceError(f"{path}:{lineno}: {exc}") from None
    if not raw:
        raise TraceError(f"{path}: no requests")
    raw.sort()
    t0 = raw[0][0]
    return [TraceRow(t - t0, max(1, p), max(1, g)) for t, p, g in raw]


def envelope_multiplier(env: Envelope, t: float) -> float:
    """Rate multiplier at ``t`` seconds after the envelope's Monday 00:00."""
    day, sec = divmod(t, 86400.0)
    hour = sec / 3600.0
    pts = env.points
    value = pts[-1][1]
    for (h0, v0), (h1, v1) in zip(pts, pts[1:], strict=False):
        if h0 <= hour < h1:
            value = v0 + (v1 - v0) * (hour - h0) / (h1 - h0)
            break
    return value * env.day_factors[int(day) % len(env.day_factors)]


def _burst_profile(rows: list[TraceRow]) -> list[float]:
    minutes = max(1, math.ceil((rows[-1].offset + 1e-9) / 60.0))
    counts = [0] * minutes
    for r in rows:
        counts[min(minutes - 1, int(r.offset // 60))] += 1
    mean = sum(counts) / minutes
    return [c / mean for c in counts]


def build_trace(
    rows: list[TraceRow],
    envelope: str | Envelope,
    seed: int = 0,
    rate_scale: float | None = None,
    days: int | None = None,
) -> Trace:
    """Requests for ``envelope`` (a name in :data:`ENVELOPES` or an :class:`Envelope`).

    ``rate_scale`` (default: the envelope's) multiplies the arrival rate; for ``flat`` it
    compresses time instead (2.0 = the hour replayed in 30 minutes).
    """
    if isinstance(envelope, str):
        if envelope not in ENVELOPES:
            raise TraceError(f"unknown envelope {envelope!r}; valid: {', '.join(ENVELOPES)}")
        envelope = ENVELOPES[envelope]
    if not rows:
        raise TraceError("no requests to build a trace from")
    if rate_scale is None:
        rate_scale = envelope.rate_scale
    if rate_scale <= 0:
        raise TraceError(f"rate scale must be > 0, got {rate_scale}")
    rng = random.Random(seed)
    trace = Trace(envelope.name, envelope.description)
    if envelope.replay:
        step = 1.0 / rate_scale  # rate_scale > 1 compresses time (more load)
        for r in rows:
            trace.arrivals.append(r.offset * step)
            trace.prompt_tokens.append(r.prompt_tokens)
            trace.output_tokens.append(r.output_tokens)
        trace.duration = max(60.0, math.ceil(trace.arrivals[-1] / 60.0) * 60.0)
        return trace

    span = max(rows[-1].offset, 1.0)
    base_rate = len(rows) / span * rate_scale  # requests per second at multiplier 1
    burst = _burst_profile(rows)
    n_days = days if days is not None else envelope.days
    events: list[tuple[float, int, int]] = []
    for minute in range(n_days * 1440):
        t0 = minute * 60.0
        rate = base_rate * envelope_multiplier(envelope, t0 + 30.0) * burst[minute % len(burst)]
        if rate <= 0:
            continue
        t = t0 + rng.expovariate(rate)
        while t < t0 + 60.0:
            r = rows[rng.randrange(len(rows))]
            events.append((t, r.prompt_tokens, r.output_tokens))
            t += rng.expovariate(rate)
    for b in envelope.batches:
        if b.day >= n_days:
            continue
        start = b.day * 86400.0 + b.hour * 3600.0
        for _ in range(b.count):
            events.append(
                (
                    start + rng.uniform(0.0, b.spread_seconds),
                    rng.randint(*b.prompt_tokens),
                    rng.randint(*b.output_tokens),
                )
            )
    events.sort()
    for t, p, g in events:
        trace.arrivals.append(t)
        trace.prompt_tokens.append(p)
        trace.output_tokens.append(g)
    trace.duration = n_days * 86400.0
    return trace


def load_trace(
    path: str | Path | None,
    envelope: str = "flat",
    seed: int = 0,
    rate_scale: float | None = None,
    days: int | None = None,
) -> Trace:
    """Load the CSV (default: :func:`default_trace_path`) and apply ``envelope``."""
    return build_trace(load_azure_csv(path or default_trace_path()), envelope, seed, rate_scale, days)

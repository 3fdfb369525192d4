"""Replica floors ahead of recurring peaks: scheduled windows and a learned time-of-day profile.

Why it exists: a replica takes minutes to load its model, so a purely reactive autoscaler
is always a cold start late for a morning spike. Two opt-in floors raise the autoscaler's
minimum ahead of time (:class:`..policy.Floor`, applied by :func:`..policy.decide`):

* **Schedules** (``spec.scaling.schedules``, like KEDA's cron scaler): while a window is
  open the floor is its ``minReplicas``. Deterministic and reviewable in Git. Times are
  local to the window's IANA time zone (``zoneinfo``, so daylight saving time is followed:
  09:00 Europe/Berlin is 08:00 UTC in winter and 07:00 UTC in summer). ``days`` name the
  day a window *opens*; a window whose end is earlier than its start closes the next day.
  A local time skipped by a DST jump never happens, so a window inside the skipped hour
  does not open that day.
* **Prediction** (``spec.scaling.predictive``): a :class:`Profile` of 96 fifteen-minute
  slots of the local day holds the replicas the *load* needed in each slot on previous
  days (the policy's load-driven capacity, never the floor itself, so a pre-warm cannot
  teach itself to start earlier every day). The floor at ``t`` is the largest learned peak
  over the slots from ``t`` to ``t + lead``. A peak not seen again decays, halving over
  ``lookbackDays`` days, so a one-off burst fades and a weekday peak is still partly
  pre-warmed after a quiet weekend.

Everything here is pure (no Kubernetes, no clock): the controller and ``qwenctl simulate``
call the same functions.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, NamedTuple, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .policy import Decision, Floor, PoolState

SLOT_SECONDS = 900
SLOTS = 86400 // SLOT_SECONDS
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_EPS = 1e-6


class ScheduleProblem(NamedTuple):
    """A window the operator cannot evaluate (admission cannot check time zone names)."""

    field: str  # e.g. spec.scaling.schedules[1].timezone
    message: str


@dataclass(frozen=True)
class Window:
    """One ``spec.scaling.schedules`` entry, parsed."""

    name: str
    start: int  # minutes after local midnight
    end: int  # exclusive; <= start: the next day
    min_replicas: int
    timezone: str = "UTC"
    days: frozenset[int] = frozenset(range(7))  # 0 = Monday: the days the window opens on


class _ScheduleLike(Protocol):  # spec.ScalingSchedule, without importing the API here
    @property
    def name(self) -> str | None: ...
    @property
    def days(self) -> Sequence[str]: ...
    @property
    def start(self) -> str: ...
    @property
    def end(self) -> str: ...
    @property
    def timezone(self) -> str: ...
    @property
    def min_replicas(self) -> int: ...


def parse_hhmm(text: str) -> int:
    """``"09:30"`` -> 570 minutes after midnight (``ValueError`` otherwise)."""
    hh, sep, mm = text.partition(":")
    if not sep or not (hh.isdigit() and mm.isdigit()) or len(mm) != 2 or not (0 < len(hh) <= 2):
        raise ValueError(f"{text!r} is not HH:MM")
    h, m = int(hh), int(mm)
    if h > 23 or m > 59:
        raise ValueError(f"{text!r} is not a time of day between 00:00 and 23:59")
    return h * 60 + m


def windows_from_spec(schedules: Iterable[_ScheduleLike]) -> list[Window]:
    """The spec's schedules as :class:`Window` s (unnamed ones are called after their index)."""
    return [
        Window(
            name=s.name or f"schedules[{i}]",
            start=parse_hhmm(s.start),
            end=parse_hhmm(s.end),
            min_replicas=s.min_replicas,
            timezone=s.timezone,
            days=frozenset(WEEKDAYS.index(d) for d in s.days),
        )
        for i, s in enumerate(schedules)
    ]


@lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo | None:
    """The IANA zone called ``name``, None when the tz database does not know it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def _aware(when: dt.datetime) -> dt.datetime:
    if when.tzinfo is None:
        raise ValueError("a timezone-aware datetime is required (e.g. datetime.now(UTC))")
    return when


def window_open(w: Window, when: dt.datetime) -> bool:
    """Whether ``w`` is open at the instant ``when`` (timezone-aware); False for an unknown zone."""
    tz = zone(w.timezone)
    if tz is None:
        return False
    local = _aware(when).astimezone(tz)
    minute, day = local.hour * 60 + local.minute, local.weekday()
    if w.start < w.end:
        return day in w.days and w.start <= minute < w.end
    # crosses midnight: the evening part on an allowed day, the morning part on the day after one
    return (day in w.days and minute >= w.start) or ((day - 1) % 7 in w.days and minute < w.end)


def schedule_floor(windows: Sequence[Window], when: dt.datetime) -> tuple[Floor | None, list[ScheduleProblem]]:
    """The highest ``minReplicas`` of the windows open at ``when``, and every window that cannot be read."""
    problems = [
        ScheduleProblem(
            f"spec.scaling.schedules[{i}].timezone",
            f"schedule {w.name!r}: time zone {w.timezone!r} is not in the operator's IANA time zone database;"
            " the window is ignored",
        )
        for i, w in enumerate(windows)
        if zone(w.timezone) is None
    ]
    open_ = [w for w in windows if window_open(w, when)]
    if not open_:
        return None, problems
    best = max(open_, key=lambda w: w.min_replicas)
    return Floor(best.min_replicas, f"schedule '{best.name}' floor {best.min_replicas}"), problems


def combine(floors: Iterable[Floor | None], min_replicas: int, max_replicas: int) -> Floor | None:
    """The binding floor: the highest, clamped to ``max_replicas``; None when none exceeds ``min_replicas``."""
    present = [f for f in floors if f is not None]
    if not present:
        return None
    best = max(present, key=lambda f: f.replicas)
    if best.replicas <= min_replicas:
        return None
    if best.replicas > max_replicas:
        return Floor(max_replicas, f"{best.reason} (clamped to maxReplicas {max_replicas})")
    return best


# --- the learned profile -------------------------------------------------------------------


def decay_per_day(lookback_days: int) -> float:
    """Daily factor that halves an unrepeated peak over ``lookback_days``."""
    return float(0.5 ** (1.0 / max(1, lookback_days)))


def slot_of(local: dt.datetime) -> int:
    """The slot of the day a local wall-clock time falls in."""
    return (local.hour * 3600 + local.minute * 60 + local.second) // SLOT_SECONDS


@dataclass(frozen=True)
class Profile:
    """Load-driven replicas per slot of the local day: ``peaks`` from previous days, ``today`` so far.

    ``day`` is the proleptic ordinal of the local date ``today`` belongs to (0: nothing learned yet).
    """

    day: int = 0
    peaks: tuple[float, ...] = (0.0,) * SLOTS
    today: tuple[int, ...] = (0,) * SLOTS

    @property
    def empty(self) -> bool:
        return self.day == 0

    def to_status(self) -> dict[str, Any]:
        """The ``status.autoscaler.profile`` object (peaks rounded to 0.01 replica)."""
        return {
            "slotSeconds": SLOT_SECONDS,
            "day": dt.date.fromordinal(self.day).isoformat() if self.day else "",
            "peaks": [round(p, 2) for p in self.peaks],
            "today": list(self.today),
        }

    @classmethod
    def from_status(cls, raw: Mapping[str, Any] | None) -> Profile:
        """Read back what :meth:`to_status` wrote; anything unreadable starts an empty profile."""
        if not raw:
            return cls()
        try:
            if int(raw.get("slotSeconds", SLOT_SECONDS)) != SLOT_SECONDS:
                return cls()
            day = dt.date.fromisoformat(str(raw["day"])).toordinal() if raw.get("day") else 0
            peaks = tuple(max(0.0, float(p)) for p in raw.get("peaks") or ())
            today = tuple(max(0, int(t)) for t in raw.get("today") or ())
        except (TypeError, ValueError, KeyError):
            return cls()
        if len(peaks) != SLOTS or len(today) != SLOTS:
            return cls()
        return cls(day, peaks, today)


def roll(profile: Profile, day: int, lookback_days: int) -> Profile:
    """``profile`` as of local day ``day``: each finished day folds into ``peaks``, which decay daily."""
    if profile.empty:
        return Profile(day=day)
    if day <= profile.day:  # same day, or the clock went back: keep what we have
        return profile
    k = day - profile.day
    f = decay_per_day(lookback_days)
    # yesterday's maxima count in full; every further day without them decays them once
    peaks = tuple(max(p * f**k, t * f ** (k - 1)) for p, t in zip(profile.peaks, profile.today, strict=True))
    return Profile(day=day, peaks=peaks)


def observe(profile: Profile, local: dt.datetime, replicas: int, lookback_days: int) -> Profile:
    """Record that load needed ``replicas`` at local time ``local`` (the slot keeps today's maximum)."""
    p = roll(profile, local.toordinal(), lookback_days)
    s = slot_of(local)
    if replicas <= p.today[s]:
        return p
    today = list(p.today)
    today[s] = replicas
    return replace(p, today=tuple(today))


def predicted_floor(
    profile: Profile, when: dt.datetime, timezone: str, lead_seconds: float, lookback_days: int
) -> Floor | None:
    """The largest learned peak over the slots from ``when`` to ``when + lead`` (previous days only)."""
    tz = zone(timezone)
    if tz is None or profile.empty:
        return None
    local = _aware(when).astimezone(tz)
    p = roll(profile, local.toordinal(), lookback_days)
    end = (_aware(when) + dt.timedelta(seconds=max(0.0, lead_seconds))).astimezone(tz)
    first = slot_of(local)
    span = min(SLOTS, (end.toordinal() - local.toordinal()) * SLOTS + slot_of(end) - first + 1)
    best, best_offset = 0, 0
    for offset in range(max(1, span)):
        s = (first + offset) % SLOTS
        learned = p.peaks[s]
        if first + offset >= SLOTS:  # tomorrow's slot: today's maxima are a previous day by then
            learned = max(learned, p.today[s])
        need = math.ceil(learned - 0.05) if learned > _EPS else 0  # 0.05: the status rounding
        if need > best:
            best, best_offset = need, offset
    if best <= 0:
        return None
    now_s = local.hour * 3600 + local.minute * 60 + local.second
    wait = max(0, (first + best_offset) * SLOT_SECONDS - now_s) if best_offset else 0
    when_text = f"in {math.ceil(wait / 60)} min" if wait else "now"
    return Floor(best, f"predicted peak {when_text}: floor {best}")


def load_replicas(
    decision: Decision, pools: Sequence[PoolState], max_replicas: int, floor: Floor | None = None
) -> int | None:
    """Replicas the load alone asked for in ``decision`` (its capacity over the fleet's mean replica
    capacity); None when the decision had no load signal. This, not the floored total, is learned.

    Also None when a ``floor`` is in force and the load asks for no more than it: a fleet held
    above its need reads a latency ratio relative to its own size (an idle replica's time to
    first token is not zero), which would overstate the need and keep the floor up for ever.
    Under a floor only a need above it is learned; otherwise the slot's peak decays."""
    if decision.desired_capacity is None:
        return None
    n = sum(p.replicas for p in pools)
    per = sum(p.replicas * p.throughput for p in pools) / n if n else min((p.throughput for p in pools), default=1.0)
    if per <= 0:
        return None
    need = max(0, min(max_replicas, math.ceil(decision.desired_capacity / per - _EPS)))
    if floor is not None and need <= floor.replicas:
        return None
    return need

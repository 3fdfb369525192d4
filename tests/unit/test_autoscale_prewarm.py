"""Pre-warm floors: schedule windows (time zones, DST, midnight, days, clamping) and the learned profile."""

from __future__ import annotations

import datetime as dt

import pytest

from qwen_operator.api.spec import ScalingSpec
from qwen_operator.autoscale import prewarm
from qwen_operator.autoscale.policy import Decision, Floor, History, PoolState
from qwen_operator.autoscale.prewarm import Profile, Window

UTC = dt.UTC


def at(text: str) -> dt.datetime:
    """An instant in UTC, e.g. ``2024-01-15 08:30`` (2024-01-15 is a Monday)."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def hm(text: str) -> int:
    return prewarm.parse_hhmm(text)


def test_parse_hhmm() -> None:
    assert hm("00:00") == 0 and hm("09:30") == 570 and hm("23:59") == 1439
    for bad in ("24:00", "9:5", "09-30", "ab:cd", "09:60", ""):
        with pytest.raises(ValueError):
            prewarm.parse_hhmm(bad)


def test_window_in_utc_with_exclusive_end() -> None:
    w = Window("morning", hm("08:50"), hm("11:00"), 4)
    assert not prewarm.window_open(w, at("2024-01-15 08:49:59"))
    assert prewarm.window_open(w, at("2024-01-15 08:50"))
    assert prewarm.window_open(w, at("2024-01-15 10:59"))
    assert not prewarm.window_open(w, at("2024-01-15 11:00"))


def test_day_filter_names_the_day_the_window_opens() -> None:
    weekdays = Window("w", hm("09:00"), hm("10:00"), 3, days=frozenset(range(5)))
    assert prewarm.window_open(weekdays, at("2024-01-19 09:30"))  # Friday
    assert not prewarm.window_open(weekdays, at("2024-01-20 09:30"))  # Saturday


def test_window_crossing_midnight_ends_the_next_day() -> None:
    friday_night = Window("batch", hm("22:00"), hm("06:00"), 5, days=frozenset({4}))
    assert prewarm.window_open(friday_night, at("2024-01-19 23:00"))  # Fri evening
    assert prewarm.window_open(friday_night, at("2024-01-20 05:59"))  # Sat morning: opened Friday
    assert not prewarm.window_open(friday_night, at("2024-01-20 06:00"))
    assert not prewarm.window_open(friday_night, at("2024-01-20 23:00"))  # Sat evening: Sat not listed
    assert not prewarm.window_open(friday_night, at("2024-01-19 05:00"))  # Fri morning: Thu not listed
    sunday_night = Window("sun", hm("23:00"), hm("01:00"), 2, days=frozenset({6}))
    assert prewarm.window_open(sunday_night, at("2024-01-22 00:30"))  # Monday 00:30 (Sunday wraps to Monday)


def test_local_time_follows_daylight_saving_time() -> None:
    berlin = Window("berlin", hm("09:00"), hm("10:00"), 4, timezone="Europe/Berlin")
    assert prewarm.window_open(berlin, at("2024-01-15 08:30"))  # 09:30 CET (UTC+1)
    assert not prewarm.window_open(berlin, at("2024-01-15 07:30"))
    assert prewarm.window_open(berlin, at("2024-07-15 07:30"))  # 09:30 CEST (UTC+2)
    assert not prewarm.window_open(berlin, at("2024-07-15 08:30"))  # 10:30 CEST
    # the night the clocks go forward (NY 2024-03-10: 02:00 EST -> 03:00 EDT), 02:00-03:00 never happens
    skipped = Window("skipped", hm("02:00"), hm("03:00"), 2, timezone="America/New_York")
    for instant in ("2024-03-10 06:59", "2024-03-10 07:00", "2024-03-10 07:30"):
        assert not prewarm.window_open(skipped, at(instant)), instant
    # the night they go back (2024-11-03: 01:00-02:00 happens twice): open both times
    repeated = Window("twice", hm("01:00"), hm("02:00"), 2, timezone="America/New_York")
    assert prewarm.window_open(repeated, at("2024-11-03 05:30"))  # 01:30 EDT
    assert prewarm.window_open(repeated, at("2024-11-03 06:30"))  # 01:30 EST


def test_schedule_floor_takes_the_highest_open_window_and_reports_unknown_zones() -> None:
    windows = [
        Window("base", hm("08:00"), hm("18:00"), 2),
        Window("peak", hm("09:00"), hm("11:00"), 6),
        Window("mars", hm("00:00"), hm("23:59"), 9, timezone="Mars/Olympus_Mons"),
    ]
    floor, problems = prewarm.schedule_floor(windows, at("2024-01-15 09:30"))
    assert floor == Floor(6, "schedule 'peak' floor 6")
    assert [p.field for p in problems] == ["spec.scaling.schedules[2].timezone"]
    assert "Mars/Olympus_Mons" in problems[0].message and "ignored" in problems[0].message
    floor, _ = prewarm.schedule_floor(windows, at("2024-01-15 12:00"))
    assert floor is not None and floor.replicas == 2
    assert prewarm.schedule_floor(windows, at("2024-01-15 20:00"))[0] is None


def test_combine_clamps_to_max_and_drops_floors_at_or_below_min() -> None:
    assert prewarm.combine([Floor(12, "schedule 'x' floor 12")], 1, 8) == Floor(
        8, "schedule 'x' floor 12 (clamped to maxReplicas 8)"
    )
    assert prewarm.combine([Floor(2, "a")], 2, 8) is None  # minReplicas already keeps 2
    assert prewarm.combine([None, None], 1, 8) is None
    assert prewarm.combine([Floor(3, "a"), None, Floor(5, "b")], 1, 8) == Floor(5, "b")


def test_windows_from_the_spec() -> None:
    spec = ScalingSpec.model_validate(
        {
            "maxReplicas": 8,
            "schedules": [
                {"name": "morning", "days": ["Mon", "Fri"], "start": "08:50", "end": "11:00", "minReplicas": 4},
                {"start": "22:00", "end": "02:00", "timezone": "Asia/Tokyo", "minReplicas": 2},
            ],
        }
    )
    a, b = prewarm.windows_from_spec(spec.schedules)
    assert a == Window("morning", 530, 660, 4, "UTC", frozenset({0, 4}))
    assert b.name == "schedules[1]" and b.days == frozenset(range(7)) and b.timezone == "Asia/Tokyo"


# --- the learned profile ---------------------------------------------------------------------

MONDAY = dt.datetime(2024, 1, 15, tzinfo=UTC)


def learned(peak: int, slot_time: str = "09:00", day: dt.datetime = MONDAY, lookback: int = 7) -> Profile:
    h, m = map(int, slot_time.split(":"))
    return prewarm.observe(Profile(), day.replace(hour=h, minute=m), peak, lookback)


def test_observe_keeps_todays_maximum_per_slot() -> None:
    p = learned(3)
    p = prewarm.observe(p, MONDAY.replace(hour=9, minute=10), 5, 7)  # same 15-minute slot
    p = prewarm.observe(p, MONDAY.replace(hour=9, minute=14), 4, 7)
    assert p.today[36] == 5 and p.today[37] == 0 and sum(p.peaks) == 0  # 09:00 = slot 36
    assert p.day == MONDAY.toordinal()


def test_roll_folds_yesterday_in_full_and_decays_older_peaks() -> None:
    p = learned(8)
    tue = prewarm.roll(p, MONDAY.toordinal() + 1, 7)
    assert tue.peaks[36] == 8 and tue.today[36] == 0
    # seven more days without that peak: halved
    later = prewarm.roll(tue, MONDAY.toordinal() + 8, 7)
    assert later.peaks[36] == pytest.approx(4.0)
    # a day skipped (operator down): yesterday's maxima decay once for each further day
    skipped = prewarm.roll(p, MONDAY.toordinal() + 3, 7)
    assert skipped.peaks[36] == pytest.approx(8 * prewarm.decay_per_day(7) ** 2)
    # a new, higher peak replaces the decayed one; a lower one does not
    assert prewarm.roll(prewarm.observe(tue, MONDAY.replace(day=16, hour=9), 10, 7), MONDAY.toordinal() + 2, 7).peaks[
        36
    ] == pytest.approx(10)
    lower = prewarm.roll(prewarm.observe(tue, MONDAY.replace(day=16, hour=9), 2, 7), MONDAY.toordinal() + 2, 7)
    assert lower.peaks[36] == pytest.approx(8 * prewarm.decay_per_day(7))
    assert prewarm.roll(tue, MONDAY.toordinal(), 7) is tue  # clock went back: unchanged


def test_predicted_floor_looks_lead_seconds_ahead_at_previous_days_only() -> None:
    p = learned(5)  # Monday 09:00 needed 5 replicas
    tuesday = dt.datetime(2024, 1, 16, tzinfo=UTC)
    f = prewarm.predicted_floor(p, tuesday.replace(hour=8, minute=56), "UTC", 300, 7)
    assert f == Floor(5, "predicted peak in 4 min: floor 5")
    assert prewarm.predicted_floor(p, tuesday.replace(hour=8, minute=40), "UTC", 300, 7) is None
    f = prewarm.predicted_floor(p, tuesday.replace(hour=9, minute=5), "UTC", 300, 7)
    assert f is not None and f.reason == "predicted peak now: floor 5"
    # the same day's observations are not a prediction
    assert prewarm.predicted_floor(p, MONDAY.replace(hour=8, minute=56), "UTC", 300, 7) is None
    assert prewarm.predicted_floor(Profile(), tuesday, "UTC", 300, 7) is None
    assert prewarm.predicted_floor(p, tuesday, "Not/AZone", 300, 7) is None


def test_predicted_floor_across_midnight_uses_todays_early_slots_as_a_previous_day() -> None:
    p = learned(3, "00:05")  # early Monday
    f = prewarm.predicted_floor(p, MONDAY.replace(hour=23, minute=58), "UTC", 600, 7)
    assert f is not None and f.replicas == 3 and f.reason == "predicted peak in 2 min: floor 3"


def test_predicted_floor_in_a_local_time_zone() -> None:
    berlin = dt.datetime(2024, 7, 15, 9, 0, tzinfo=prewarm.zone("Europe/Berlin"))  # 07:00 UTC
    p = prewarm.observe(Profile(), berlin, 6, 7)
    f = prewarm.predicted_floor(p, dt.datetime(2024, 7, 16, 6, 57, tzinfo=UTC), "Europe/Berlin", 300, 7)
    assert f is not None and f.replicas == 6


def test_profile_round_trips_through_status_and_rejects_garbage() -> None:
    p = prewarm.roll(learned(7), MONDAY.toordinal() + 2, 7)
    raw = p.to_status()
    assert raw["slotSeconds"] == 900 and raw["day"] == "2024-01-17" and len(raw["peaks"]) == 96
    back = Profile.from_status(raw)
    assert back.day == p.day and back.peaks[36] == pytest.approx(p.peaks[36], abs=0.01)
    for garbage in (None, {}, {"day": "yesterday", "peaks": [], "today": []}, {**raw, "peaks": [1, 2]}):
        assert Profile.from_status(garbage).empty
    assert Profile.from_status({**raw, "slotSeconds": 600}).empty


def test_rounded_decayed_peak_keeps_the_replica_count() -> None:
    p = prewarm.roll(learned(4), MONDAY.toordinal() + 1, 7)
    back = Profile.from_status({**p.to_status(), "peaks": [4.04 if x else 0 for x in p.to_status()["peaks"]]})
    f = prewarm.predicted_floor(back, MONDAY.replace(day=16, hour=9), "UTC", 0, 7)
    assert f is not None and f.replicas == 4  # not 5 for a rounding crumb


def test_load_replicas_learns_the_load_not_the_floor() -> None:
    pools = [PoolState("L40S", 1.86, throughput=5.0, ready=6, starting=0, free=2)]
    held_by_floor = Decision({"L40S": 6}, 6, "hold", "schedule 'x' floor 6: holding", History(), 0.2, 10.0)
    assert prewarm.load_replicas(held_by_floor, pools, 8) == 2  # 10 req/s over 5 per replica
    no_signal = Decision({"L40S": 6}, 6, "hold", "holding", History())
    assert prewarm.load_replicas(no_signal, pools, 8) is None
    flood = Decision({"L40S": 8}, 8, "panic", "x", History(), 9.0, 400.0)
    assert prewarm.load_replicas(flood, pools, 8) == 8  # clamped to maxReplicas
    # under a floor, only a need above it is learned (a held fleet's latency ratio overstates the need)
    floor = Floor(6, "predicted peak now: floor 6")
    assert prewarm.load_replicas(held_by_floor, pools, 8, floor) is None
    assert prewarm.load_replicas(flood, pools, 8, floor) == 8

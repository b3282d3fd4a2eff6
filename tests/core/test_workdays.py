"""Working days in China (core.china_time.WorkCalendar over data/holidays.yaml)."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime

import pytest

from core.china_time import CALENDAR, HOLIDAYS_FILE, WorkCalendar, add_working_days, working_deadline


@pytest.mark.parametrize(
    "start, days, expected, why",
    [
        (date(2026, 11, 27), 1, date(2026, 11, 30), "a Friday plus one is the Monday"),
        (date(2026, 2, 13), 1, date(2026, 2, 14), "Saturday 14 February 2026 is a make-up working day (调休)"),
        (date(2026, 2, 14), 1, date(2026, 2, 24), "then the Spring Festival, 15-23 February"),
        (date(2026, 9, 30), 1, date(2026, 10, 8), "National Day, 1-7 October"),
        (date(2026, 10, 8), 1, date(2026, 10, 9), ""),
        (date(2026, 10, 9), 1, date(2026, 10, 10), "Saturday 10 October 2026 is worked"),
        (date(2025, 9, 26), 1, date(2025, 9, 28), "Sunday 28 September 2025 is worked"),
        (date(2025, 12, 31), 1, date(2026, 1, 4), "New Year 1-3 January 2026; Sunday the 4th is worked"),
        (date(2026, 4, 3), 15, date(2026, 4, 27), "Qingming 4-6 April, then fifteen working days"),
        (date(2026, 4, 30), 1, date(2026, 5, 6), "Labour Day, 1-5 May"),
        (date(2026, 5, 8), 1, date(2026, 5, 9), "Saturday 9 May 2026 is worked"),
        (date(2026, 6, 18), 1, date(2026, 6, 22), "Dragon Boat, 19-21 June"),
        (date(2026, 11, 30), 0, date(2026, 11, 30), "zero days is the same day"),
    ],
)
def test_adding_working_days(start, days, expected, why):
    assert add_working_days(start, days) == expected, why


def test_every_listed_day_off_and_make_up_day_is_what_the_notice_says():
    # Spot checks against the State Council's notices (2024-11-12 and 2025-11-04).
    assert not CALENDAR.is_working_day(date(2025, 1, 28)) and not CALENDAR.is_working_day(date(2025, 2, 4))
    assert CALENDAR.is_working_day(date(2025, 2, 8)) and CALENDAR.is_working_day(date(2025, 4, 27))
    assert not CALENDAR.is_working_day(date(2026, 2, 23))  # a Monday of the Spring Festival
    assert CALENDAR.is_working_day(date(2026, 2, 28)) and CALENDAR.is_working_day(date(2026, 9, 20))
    assert len([d for d in CALENDAR.off if d.year == 2026]) == 3 + 9 + 3 + 5 + 3 + 3 + 7
    assert sorted(d for d in CALENDAR.on if d.year == 2026) == [
        date(2026, 1, 4),
        date(2026, 2, 14),
        date(2026, 2, 28),
        date(2026, 5, 9),
        date(2026, 9, 20),
        date(2026, 10, 10),
    ]
    assert {2025, 2026} <= CALENDAR.years


def test_a_deadline_ends_at_midnight_china_time():
    # Friday 13 February 2026, 11:00 in Beijing: one working day is Saturday the 14th, to its end.
    assert working_deadline(datetime(2026, 2, 13, 3, 0, tzinfo=UTC), 1) == datetime(2026, 2, 14, 16, 0, tzinfo=UTC)


def test_a_year_without_a_notice_is_counted_monday_to_friday_and_said_loudly(caplog):
    calendar = WorkCalendar.load(HOLIDAYS_FILE)
    with caplog.at_level(logging.WARNING, logger="zhangban.calendar"):
        assert calendar.add_working_days(date(2031, 1, 3), 1) == date(2031, 1, 6)
    assert any("2031" in r.getMessage() and "holidays.yaml" in r.getMessage() for r in caplog.records)


def test_a_make_up_day_that_is_not_a_weekend_is_refused(tmp_path):
    bad = tmp_path / "holidays.yaml"
    bad.write_text("2026:\n  days_off: []\n  working_weekends: [2026-02-16]\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not a weekend"):
        WorkCalendar.load(bad)

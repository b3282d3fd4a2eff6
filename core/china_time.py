"""China time: the zone every date a citizen sees is in, quiet hours, working days (with public holidays)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from pathlib import Path
from zoneinfo import ZoneInfo

import yaml

CHINA = ZoneInfo("Asia/Shanghai")
log = logging.getLogger("zhangban.calendar")


@dataclass(frozen=True)
class QuietHours:
    """A daily window of China time, e.g. 22:00-08:00 (it may cross midnight)."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> QuietHours | None:
        text = (text or "").strip()
        if not text:
            return None
        match = re.fullmatch(r"(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})", text)
        if not match:
            raise ValueError("expected HH:MM-HH:MM, e.g. 22:00-08:00, or empty for none")
        h1, m1, h2, m2 = map(int, match.groups())
        if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
            raise ValueError("hours are 0-23 and minutes 0-59")
        if (h1, m1) == (h2, m2):
            raise ValueError("start and end are the same time")
        return cls(time(h1, m1), time(h2, m2))

    def contains(self, moment: time) -> bool:
        if self.start < self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end

    def resume_at(self, now: datetime) -> datetime | None:
        """When a non-urgent push due at `now` may go: None if now, else the window's end."""
        local = now.astimezone(CHINA)
        if not self.contains(local.time().replace(tzinfo=None)):
            return None
        end = local.replace(hour=self.end.hour, minute=self.end.minute, second=0, microsecond=0)
        if end <= local:
            end += timedelta(days=1)
        return end.astimezone(UTC)


HOLIDAYS_FILE = Path(__file__).resolve().parent.parent / "data" / "holidays.yaml"


@dataclass(frozen=True)
class WorkCalendar:
    """Working days in China: Monday to Friday, less the public holidays, plus the make-up
    working weekends (调休), for the years the State Council has published (data/holidays.yaml)."""

    off: frozenset[date]
    on: frozenset[date]
    years: frozenset[int]

    @classmethod
    def load(cls, path: Path = HOLIDAYS_FILE) -> WorkCalendar:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        off: set[date] = set()
        on: set[date] = set()
        for year, spec in raw.items():
            for item in spec.get("days_off", []):
                off.update(_days(item, int(year)))
            for item in spec.get("working_weekends", []):
                day = _day(item)
                if day.weekday() < 5:
                    raise ValueError(f"{path.name}: {day} is listed as a make-up working day but is not a weekend")
                on.add(day)
        return cls(frozenset(off), frozenset(on), frozenset(int(y) for y in raw))

    def is_working_day(self, day: date) -> bool:
        if day.year not in self.years:
            _missing_year(day.year)
        if day in self.on:
            return True
        return day.weekday() < 5 and day not in self.off

    def add_working_days(self, start: date, days: int) -> date:
        """`start` plus `days` working days: the day on which the `days`-th working day after `start` ends."""
        current = start
        while days > 0:
            current += timedelta(days=1)
            if self.is_working_day(current):
                days -= 1
        return current

    def deadline(self, moment: datetime, days: int) -> datetime:
        """The end (24:00 China time) of the `days`-th working day after `moment`, in UTC."""
        last = self.add_working_days(moment.astimezone(CHINA).date(), days)
        return datetime.combine(last + timedelta(days=1), time(0, 0), tzinfo=CHINA).astimezone(UTC)


def _day(item: object) -> date:
    if isinstance(item, date):
        return item
    return date.fromisoformat(str(item).strip())


def _days(item: object, year: int) -> list[date]:
    text = str(item)
    if ".." in text:
        first, last = (_day(part) for part in text.split(".."))
    else:
        first = last = _day(item)
    if first.year != year and last.year != year:
        raise ValueError(f"holidays.yaml: {text} is listed under {year}")
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


@cache
def _missing_year(year: int) -> None:
    # A warning, once per year and process: the deadline is still given (counted Monday to
    # Friday), and an operator must add the year's notice.
    log.warning(
        "working days of %s are counted Monday to Friday: its public holidays are not in data/holidays.yaml "
        "(add the State Council's notice for %s)",
        year,
        year,
    )


CALENDAR = WorkCalendar.load()


def add_working_days(start: date, days: int) -> date:
    """`start` plus `days` working days, public holidays and make-up working days counted."""
    return CALENDAR.add_working_days(start, days)


def working_deadline(moment: datetime, days: int) -> datetime:
    """The end of the `days`-th working day after `moment` (China time), in UTC."""
    return CALENDAR.deadline(moment, days)

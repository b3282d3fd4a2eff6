"""China time: the zone every date a citizen sees is in, quiet hours, working days."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

CHINA = ZoneInfo("Asia/Shanghai")


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


def add_working_days(start: date, days: int) -> date:
    """`start` plus `days` working days (Monday–Friday; public holidays are not modelled yet)."""
    current = start
    while days > 0:
        current += timedelta(days=1)
        if current.weekday() < 5:
            days -= 1
    return current

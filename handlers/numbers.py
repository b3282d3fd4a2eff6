"""Readable, unique numbers: a prefix, the China date and a daily sequence kept in the database."""

from __future__ import annotations

from datetime import datetime

from tortoise.expressions import F

from core.china_time import CHINA
from storage.models import DailySequence


async def next_number(prefix: str) -> str:
    """`prefix` + YYYYMMDD + a 6-digit daily sequence, e.g. ZB20261122000017 (call inside a transaction)."""
    day = datetime.now(CHINA).strftime("%Y%m%d")
    key = f"{prefix}:{day}"
    await DailySequence.bulk_create([DailySequence(id=key, last_value=0)], ignore_conflicts=True)
    await DailySequence.filter(id=key).update(last_value=F("last_value") + 1)
    row = await DailySequence.get(id=key)
    return f"{prefix}{day}{row.last_value:06d}"

"""The outbox relay (handlers.cases.outbox.Relay) on factory rows, with a recording platform.

Cases reaching the real platform simulator over HTTP are in tests/bridge/test_platform.py; here,
the claim: relays running at once hand every row over exactly once.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from bridge.client import PlatformError
from core.kicks import NO_KICKS
from handlers.cases.outbox import Relay
from storage.models import Case, CaseStatus, Outbox
from tests import factories

S = CaseStatus


class RecordingPlatform:
    """Takes every case handed over, a little slowly, so that relays running at once overlap."""

    def __init__(self, *, down: bool = False):
        self.received: Counter[str] = Counter()
        self.down = down

    async def submit_case(self, payload: dict) -> dict:
        await asyncio.sleep(0.005)
        if self.down:
            raise PlatformError("platform answered 503", retryable=True, status=503)
        self.received[payload["case_no"]] += 1
        return {"platform_case_id": "P" + payload["case_no"]}


async def no_links(ids: list[str]) -> list[dict]:
    return []


def relay(platform: RecordingPlatform, **kw) -> Relay:
    return Relay(platform=platform, cipher=factories.CIPHER, material_links=no_links, kicks=NO_KICKS, **kw)


async def submitted_cases(count: int) -> list[Case]:
    user = await factories.create_user(level="L3")
    return [await factories.create_case(user=user, status=S.SUBMITTED) for _ in range(count)]


async def test_two_relays_at_once_deliver_each_row_exactly_once(db):
    cases = await submitted_cases(12)
    platform = RecordingPlatform()
    # Small batches, so that each relay claims again while the other is sending.
    first, second = relay(platform, batch=2, concurrency=2), relay(platform, batch=3, concurrency=2)
    done = await asyncio.gather(first.run_due(), second.run_due(), first.run_due())
    assert sum(done) == 12
    assert platform.received == Counter({case.case_no: 1 for case in cases})
    assert {row.status for row in await Outbox.filter(case_id__in=[c.id for c in cases])} == {"done"}
    assert {c.status for c in await Case.filter(id__in=[c.id for c in cases])} == {S.DELIVERED}


async def test_a_failed_delivery_waits_for_its_next_attempt(db):
    [case] = await submitted_cases(1)
    platform = RecordingPlatform(down=True)
    assert await relay(platform).run_due() == 0
    row = await Outbox.get(case_id=case.id)
    assert (row.status, row.attempts) == ("pending", 1) and "503" in row.last_error
    platform.down = False
    assert await relay(platform).run_due() == 0  # not due again before its backoff
    assert platform.received == Counter()

"""The console's ticket list pages by keyset on (deadline, id), ties included (handlers.tickets)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.errors import ValidationFailed
from core.kicks import NO_KICKS
from handlers.catalog.reader import CatalogueReader
from handlers.tickets import TicketPolicy, Tickets
from storage.models import Ticket
from tests import factories

POLICE = "泸州市公安局"


@pytest.fixture
def tickets(db, redis, keys, cipher) -> Tickets:
    return Tickets(
        catalogue=CatalogueReader(redis=redis, keys=keys), cipher=cipher, policy=TicketPolicy(), kicks=NO_KICKS
    )


async def make(cipher, n: int, due: datetime, department: str = POLICE) -> Ticket:
    return await Ticket.create(
        ticket_no=f"TS20261130{n:06d}",
        kind="complaint",
        oa_openid="",
        department=department,
        content_enc=cipher.encrypt("窗口排队时间太长", column="tickets.content"),
        dedup_key=f"test:{n}",
        channel="miniprogram",
        due_at=due,
    )


async def test_pages_follow_the_deadline_then_the_id_without_gaps_or_repeats(tickets, cipher):
    base = datetime(2026, 12, 1, 16, 0, tzinfo=UTC)
    # Two deadlines shared by several tickets: the id breaks the tie.
    dues = [base + timedelta(days=2), base, base + timedelta(days=1), base, base + timedelta(days=1), base]
    made = [await make(cipher, n, due) for n, due in enumerate(dues, start=1)]
    await make(cipher, 99, base, department="泸州市医疗保障局")  # another department's: never listed
    officer = await factories.create_official(department=POLICE)
    expected = [t.ticket_no for t in sorted(made, key=lambda t: (t.due_at, t.id))]
    seen, after, sizes = [], None, []
    while True:
        page = await tickets.list_for(official=officer, status="open", limit=2, after=after)
        sizes.append(len(page["items"]))
        seen += [i["ticket_no"] for i in page["items"]]
        after = page["next_cursor"]
        if after is None:
            break
    assert seen == expected and sizes == [2, 2, 2]
    whole = await tickets.list_for(official=officer, status="open", limit=6)
    assert [i["ticket_no"] for i in whole["items"]] == expected and whole["next_cursor"] is None
    for bad in ("x", "1-", "-1", "12345678901234567890-1", "1-99999999999999999999"):
        with pytest.raises(ValidationFailed):
            await tickets.list_for(official=officer, after=bad)

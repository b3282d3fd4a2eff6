"""The statistics of 好差评 and tickets against hand-computed values on a prepared set (handlers.stats)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import pytest

from core.china_time import CHINA
from core.errors import ValidationFailed
from handlers.stats import evaluation_stats
from storage.models import CaseStatus, Evaluation, Rectification, Ticket
from tests import factories

DAY = date(2026, 11, 20)
NOON = datetime.combine(DAY, time(12, 0), tzinfo=CHINA).astimezone(UTC)
PSB, HRSS = "泸州市公安局", "泸州市人力资源和社会保障局"


async def rated(level: int, *, active: bool = True, department: str = PSB, at: datetime = NOON) -> Evaluation:
    user = await factories.create_user(level="L3")
    case = await factories.create_case(user=user, status=CaseStatus.CLOSED)
    evaluation = await Evaluation.create(
        case=case,
        user=user,
        department=department,
        service_code=case.service_code,
        level=level,
        active=active,
        channel="miniprogram" if active else "default",
        identity_level="L3",
    )
    await Evaluation.filter(id=evaluation.id).update(created_at=at)
    return await Evaluation.get(id=evaluation.id)


async def rectification(evaluation: Evaluation, **columns) -> Rectification:
    row = await Rectification.create(
        evaluation=evaluation,
        case_id=evaluation.case_id,
        department=evaluation.department,
        verify_due_at=NOON + timedelta(days=1),
        rectify_due_at=NOON + timedelta(days=21),
        **columns,
    )
    await Rectification.filter(id=row.id).update(created_at=evaluation.created_at)
    return row


async def ticket(kind: str, *, answered_after: timedelta | None, due_in: timedelta, department: str = PSB) -> None:
    row = await Ticket.create(
        ticket_no=factories._token("T")[:20],
        kind=kind,
        oa_openid="",
        department=department,
        content_enc=b"x",
        dedup_key=factories._token("dedup"),
        channel="miniprogram",
        due_at=NOON + due_in,
        answered_at=None if answered_after is None else NOON + answered_after,
        status="open" if answered_after is None else "answered",
    )
    await Ticket.filter(id=row.id).update(created_at=NOON)


async def test_the_figures_of_a_prepared_set(db):
    # Eight evaluations at the public security bureau: 5,5,4,3 (active), 3,3 (default), 2,1 (active).
    for level in (5, 5, 4, 3):
        await rated(level)
    for _ in range(2):
        await rated(3, active=False)
    two, one = await rated(2), await rated(1)
    # One more bad review that a supervisor excluded (申诉): in no figure.
    excluded = await rated(1)
    await rectification(excluded, status="excluded", exclusion="approved")
    # The two bad reviews: one closed, rectified on time; one still rectifying.
    await rectification(two, status="closed", rectified_at=NOON + timedelta(days=3), on_time=True)
    await rectification(one, status="rectifying")
    # Another department, and another day: not in the figures asked for.
    await rated(1, department=HRSS)
    await rated(5, at=NOON - timedelta(days=30))
    # Tickets: consultations answered in time, late, not yet; one complaint in time.
    await ticket("consultation", answered_after=timedelta(hours=5), due_in=timedelta(days=2))
    await ticket("consultation", answered_after=timedelta(days=3), due_in=timedelta(days=2))
    await ticket("consultation", answered_after=None, due_in=timedelta(days=2))
    await ticket("complaint", answered_after=timedelta(days=1), due_in=timedelta(days=5))

    stats = await evaluation_stats(start=DAY, end=DAY, department=PSB)
    e = stats["evaluations"]
    assert (e["total"], e["active"], e["default"]) == (8, 6, 2)
    assert e["by_level"] == {
        "1": {"all": 1, "active": 1},
        "2": {"all": 1, "active": 1},
        "3": {"all": 3, "active": 1},
        "4": {"all": 1, "active": 1},
        "5": {"all": 2, "active": 2},
    }
    assert e["good_rate"] == round(6 / 8, 4)  # 5,5,4,3,3,3
    assert e["active_good_rate"] == round(4 / 6, 4)  # 5,5,4,3 of the six given
    assert e["unrated_rate"] == round(2 / 8, 4)
    b = stats["bad_reviews"]
    assert (b["total"], b["rectifications"], b["closed"], b["rectified"], b["rectified_on_time"]) == (2, 2, 1, 1, 1)
    assert b["rectification_rate"] == 0.5 and b["on_time_rate"] == 1.0
    t = stats["tickets"]
    assert t["consultation"] == {"received": 3, "answered": 2, "answered_on_time": 1, "on_time_rate": 0.5}
    assert t["complaint"] == {"received": 1, "answered": 1, "answered_on_time": 1, "on_time_rate": 1.0}

    everywhere = await evaluation_stats(start=DAY - timedelta(days=31), end=DAY, department=None)
    assert everywhere["evaluations"]["total"] == 10  # + the other department's and the older one


async def test_nothing_to_divide_by_is_null_and_ranges_are_checked(db):
    empty = await evaluation_stats(start=DAY, end=DAY, department=PSB)
    assert empty["evaluations"]["good_rate"] is None and empty["bad_reviews"]["on_time_rate"] is None
    with pytest.raises(ValidationFailed):
        await evaluation_stats(start=DAY, end=DAY - timedelta(days=1), department=None)
    with pytest.raises(ValidationFailed):
        await evaluation_stats(start=DAY - timedelta(days=400), end=DAY, department=None)
    for far in (date(1, 1, 1), date(9999, 12, 31)):  # China midnight would overflow a datetime
        with pytest.raises(ValidationFailed):
            await evaluation_stats(start=far, end=far, department=None)

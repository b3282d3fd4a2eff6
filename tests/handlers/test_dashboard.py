"""The dashboard's figures and the alerts against hand-computed values on prepared rows
(handlers.dashboard), on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import pytest

from core.china_time import CHINA
from core.errors import Forbidden, NotFound, ValidationFailed
from core.kicks import NO_KICKS
from handlers import dashboard
from handlers.cases.sweeps import mark_overdue
from handlers.stats import evaluation_stats
from storage.models import (
    Case,
    CaseEvent,
    CaseStatus,
    Evaluation,
    Notification,
    Official,
    Outbox,
    PaymentAlert,
    PushAttempt,
    Rectification,
    Ticket,
)
from tests import factories
from tests.helpers import CODE, RENEWAL

S = CaseStatus
PSB, HRSS = "泸州市公安局", "泸州市人力资源和社会保障局"
RESIDENCE = CODE["居住证办理"]  # psb, 7 promised working days, not fully online
LICENCE = CODE["机动车驾驶证换证"]  # psb, 1 day, fully online
SOCIAL_CARD = CODE["社保卡补办"]  # hrss, 10 days, fully online
REMIND = timedelta(hours=8)


def china(day: date, hour: int = 10, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=CHINA).astimezone(UTC)


def official(department: str = PSB, *roles: str) -> Official:
    return Official(id=1, username="o", display_name="o", department=department, roles=list(roles or ["officer"]))


async def case_at(
    submitted: datetime, *, code: str = RENEWAL, status: S = S.IN_REVIEW, decided: datetime | None = None
) -> Case:
    user = await factories.create_user(level="L3")
    case = await factories.create_case(user=user, status=status, service_code=code)
    await Case.filter(id=case.id).update(submitted_at=submitted)
    await CaseEvent.filter(case_id=case.id).update(at=submitted)
    if decided is not None:
        await CaseEvent.filter(case_id=case.id, to_status__in=["approved", "rejected"]).update(at=decided)
    return await Case.get(id=case.id)


# -- the dashboard ---------------------------------------------------------------------------


async def test_cases_per_china_day_and_the_fully_online_share(db):
    d1, d2 = date(2026, 11, 16), date(2026, 11, 17)
    await case_at(china(d1, 0, 10))  # 16 Nov 00:10 in China is still 15 Nov in UTC
    await case_at(china(d1, 23, 50), code=RESIDENCE)
    await case_at(china(d2), code=LICENCE)
    await case_at(china(d1), code=SOCIAL_CARD)  # another department
    await case_at(china(d2 + timedelta(days=1), 0, 5))  # after the range (still 17 Nov in UTC)
    await case_at(china(d1 - timedelta(days=1), 23, 55))  # before it

    mine = await dashboard.dashboard(official=official(), start=d1, end=d2)
    cases = mine["cases"]
    assert mine["department"] == PSB
    assert cases["per_day"] == [
        {"day": "2026-11-16", "submitted": 2, "fully_online": 0},
        {"day": "2026-11-17", "submitted": 1, "fully_online": 1},
    ]
    assert (cases["submitted"], cases["fully_online"], cases["fully_online_share"]) == (3, 1, round(1 / 3, 4))

    everyone = await dashboard.dashboard(official=official("", "admin"), start=d1, end=d2)
    assert everyone["department"] is None
    assert (everyone["cases"]["submitted"], everyone["cases"]["fully_online"]) == (4, 2)
    theirs = await dashboard.dashboard(official=official("", "admin"), start=d1, end=d2, department=HRSS)
    assert theirs["cases"]["per_day"][0] == {"day": "2026-11-16", "submitted": 1, "fully_online": 1}


async def test_handling_time_in_working_days_against_the_promise(db):
    # Mon 2 Nov -> Fri 6 Nov: 4 working days (renewal promises 15).
    four = await case_at(china(date(2026, 11, 2)), status=S.CLOSED, decided=china(date(2026, 11, 6), 16))
    # Fri 6 Nov -> Tue 10 Nov: 2 working days over the weekend (residence permit promises 7).
    await case_at(china(date(2026, 11, 6)), code=RESIDENCE, status=S.REJECTED, decided=china(date(2026, 11, 10), 9))
    # Fri 25 Sep (中秋节) -> Tue 3 Nov, across National Day and the make-up Saturday 10 Oct.
    holiday = await case_at(
        china(date(2026, 9, 25)), code=RESIDENCE, status=S.APPROVED, decided=china(date(2026, 11, 3), 9)
    )
    await Case.filter(id=holiday.id).update(overdue_at=china(date(2026, 10, 20)))
    # Not decided (in review), withdrawn, another department's, decided outside the range.
    await case_at(china(date(2026, 11, 2)))
    await case_at(china(date(2026, 11, 2)), status=S.WITHDRAWN)
    await case_at(china(date(2026, 11, 2)), code=SOCIAL_CARD, status=S.APPROVED, decided=china(date(2026, 11, 4)))
    await case_at(china(date(2026, 10, 12)), status=S.APPROVED, decided=china(date(2026, 10, 30)))

    figures = await dashboard.dashboard(official=official(), start=date(2026, 11, 1), end=date(2026, 11, 15))
    handling = figures["handling"]
    # Working days after 25 Sep up to 3 Nov: 28-30 Sep, 8-10 Oct, 12-16, 19-23, 26-30 Oct, 2-3 Nov.
    long_one = 3 + 3 + 5 + 5 + 5 + 2
    assert handling["decided"] == 3
    assert handling["average_working_days"] == round((4 + 2 + long_one) / 3, 2)
    assert handling["average_promised_days"] == round((15 + 7 + 7) / 3, 2)
    assert (handling["decided_late"], handling["on_time_rate"]) == (1, round(2 / 3, 4))
    assert four.status == S.CLOSED


async def test_overdue_open_cases_are_those_the_sweep_marks(db):
    now = china(date(2026, 11, 30), 9)
    late = await case_at(china(date(2026, 11, 2)))  # renewal: 15 working days ended 23 Nov
    await case_at(china(date(2026, 11, 20)), code=RESIDENCE)  # 7 working days end 1 Dec
    edge = await case_at(china(date(2026, 11, 20), 23), code=RESIDENCE, status=S.ACCEPTED)
    await case_at(china(date(2026, 11, 2)), status=S.CLOSED)  # decided
    await case_at(china(date(2026, 11, 2)), status=S.CORRECTION_REQUESTED)  # the citizen's turn
    theirs = await case_at(china(date(2026, 11, 2)), code=SOCIAL_CARD)
    licence = await case_at(china(date(2026, 11, 26)), code=LICENCE, status=S.SUBMITTED)  # due 27 Nov

    mine = (await dashboard.dashboard(official=official(), now=now))["overdue"]
    assert mine["open_overdue"] == 2
    assert [c["case_no"] for c in mine["oldest"]] == [late.case_no, licence.case_no]
    assert mine["oldest"][0]["promised_date"] == "2026-11-23"
    everywhere = (await dashboard.dashboard(official=official("", "admin"), now=now))["overdue"]
    assert everywhere["open_overdue"] == 3

    assert await mark_overdue(kicks=NO_KICKS, now=now) == 3
    marked = set(await Case.filter(overdue_at__isnull=False).values_list("id", flat=True))
    assert marked == {late.id, licence.id, theirs.id} and edge.id not in marked


async def test_push_reach_per_channel(db):
    day = date(2026, 11, 16)
    mine = await case_at(china(day))
    theirs = await case_at(china(day), code=SOCIAL_CARD)

    async def notification(case: Case, status: str, channel: str, attempts: list[tuple[str, str]]) -> None:
        n = await factories.create_notification(case=case, push_status=status)
        await Notification.filter(id=n.id).update(channel=channel, created_at=china(day, 11))
        for attempt_channel, result in attempts:
            a = await PushAttempt.create(notification_id=n.id, channel=attempt_channel, result=result)
            await PushAttempt.filter(id=a.id).update(started_at=china(day, 11))

    await notification(mine, "sent", "subscribe", [("subscribe", "ok")])
    await notification(mine, "sent", "template", [("subscribe", "no_grant"), ("template", "ok")])
    await notification(mine, "inbox_only", "inbox", [("template", "refused"), ("inbox", "inbox_only")])
    await notification(mine, "failed", "", [("template", "transient"), ("template", "transient")])
    await notification(mine, "pending", "", [("-", "deferred")])
    await notification(theirs, "failed", "", [("subscribe", "refused")])

    pushes = (await dashboard.dashboard(official=official(), start=day, end=day))["pushes"]
    channels = {c["channel"]: c for c in pushes["channels"]}
    assert list(channels) == ["subscribe", "template", "inbox"]
    assert (channels["subscribe"]["delivered"], channels["subscribe"]["failed"]) == (1, 1)
    assert (channels["template"]["delivered"], channels["template"]["failed"]) == (1, 3)
    assert channels["template"]["delivery_rate"] == 0.25
    assert channels["inbox"]["results"] == {"inbox_only": 1} and channels["inbox"]["delivery_rate"] is None
    n = pushes["notifications"]
    assert (n["total"], n["wechat"], n["inbox_only"], n["failed"], n["pending"]) == (5, 2, 1, 1, 1)
    assert n["by_channel"] == {"subscribe": 1, "template": 1} and n["reach_rate"] == 0.5


async def test_evaluation_figures_are_the_statistics_ones_and_scope_is_enforced(db):
    case = await case_at(china(date(2026, 11, 16)), status=S.CLOSED)
    evaluation = await Evaluation.create(
        case=case, user_id=case.user_id, department=PSB, service_code=RENEWAL, level=2, channel="miniprogram"
    )
    await Evaluation.filter(id=evaluation.id).update(created_at=china(date(2026, 11, 16)))
    start, end = date(2026, 11, 1), date(2026, 11, 30)
    figures = await dashboard.dashboard(official=official(), start=start, end=end)
    stats = await evaluation_stats(start=start, end=end, department=PSB)
    assert figures["evaluations"] == stats["evaluations"] and figures["evaluations"]["total"] == 1
    assert figures["bad_reviews"] == stats["bad_reviews"] and figures["tickets"] == stats["tickets"]

    with pytest.raises(NotFound):
        await dashboard.dashboard(official=official(), department=HRSS)
    with pytest.raises(Forbidden):
        await dashboard.dashboard(official=official(PSB, "finance"))
    default = await dashboard.dashboard(official=official(), now=china(date(2026, 11, 30)))
    assert (default["from"], default["to"]) == ("2026-11-01", "2026-11-30")
    assert len(default["cases"]["per_day"]) == 30


def test_a_range_given_at_one_end_runs_thirty_days():
    now = china(date(2026, 11, 30))
    assert dashboard.resolve_range(None, date(2026, 6, 30), now) == (date(2026, 6, 1), date(2026, 6, 30))
    assert dashboard.resolve_range(date(2026, 6, 1), None, now) == (date(2026, 6, 1), date(2026, 6, 30))
    assert dashboard.resolve_range(date(2026, 11, 20), None, now) == (date(2026, 11, 20), date(2026, 11, 30))
    for far in (date(1, 1, 1), date(9999, 12, 31)):  # no overflow into a 500
        with pytest.raises(ValidationFailed):
            dashboard.resolve_range(far, None, now)


# -- alerts ----------------------------------------------------------------------------------


async def rectification(department: str, status: str, *, verify_due: datetime, rectify_due: datetime) -> Rectification:
    case = await case_at(china(date(2026, 11, 2)), status=S.CLOSED, code=RENEWAL if department == PSB else SOCIAL_CARD)
    evaluation = await Evaluation.create(
        case=case, user_id=case.user_id, department=department, service_code=case.service_code, level=1, channel="mp"
    )
    return await Rectification.create(
        evaluation=evaluation,
        case=case,
        department=department,
        status=status,
        verify_due_at=verify_due,
        rectify_due_at=rectify_due,
    )


async def ticket(department: str, due_at: datetime, status: str = "open") -> Ticket:
    return await Ticket.create(
        ticket_no=factories._token("T")[:20],
        kind="complaint",
        oa_openid="",
        department=department,
        content_enc=b"x",
        dedup_key=factories._token("dedup"),
        channel="miniprogram",
        due_at=due_at,
        status=status,
    )


async def test_alerts_of_a_department(db):
    now = datetime.now(UTC)
    late = await rectification(
        PSB, "verifying", verify_due=now - timedelta(hours=1), rectify_due=now + timedelta(days=9)
    )
    soon = await rectification(
        PSB, "rectifying", verify_due=now - timedelta(days=5), rectify_due=now + timedelta(hours=3)
    )
    await rectification(PSB, "rectifying", verify_due=now - timedelta(days=5), rectify_due=now + timedelta(days=5))
    await rectification(
        PSB, "awaiting_citizen", verify_due=now - timedelta(days=9), rectify_due=now - timedelta(days=1)
    )
    await rectification(HRSS, "verifying", verify_due=now - timedelta(hours=1), rectify_due=now + timedelta(days=9))
    overdue_ticket = await ticket(PSB, now - timedelta(hours=2))
    soon_ticket = await ticket(PSB, now + timedelta(hours=5))
    await ticket(PSB, now + timedelta(days=3))
    await ticket(PSB, now - timedelta(days=1), status="answered")
    await ticket(HRSS, now - timedelta(hours=2))
    case, theirs = await case_at(now - timedelta(days=1)), await case_at(now - timedelta(days=1), code=SOCIAL_CARD)
    for target, channel, result, ago in (
        (case, "template", "refused", timedelta(hours=2)),
        (case, "template", "ok", timedelta(hours=2)),
        (case, "subscribe", "ok", timedelta(hours=2)),
        (case, "subscribe", "transient", timedelta(hours=30)),  # more than a day ago
        (theirs, "subscribe", "refused", timedelta(hours=1)),
    ):
        n = await factories.create_notification(case=target)
        attempt = await PushAttempt.create(notification_id=n.id, channel=channel, result=result)
        await PushAttempt.filter(id=attempt.id).update(started_at=now - ago)

    out = await dashboard.alerts(official=official(), ticket_remind=timedelta(hours=24), rectify_remind=REMIND, now=now)
    r = out["rectifications"]
    assert (r["overdue"], r["due_soon"]) == (1, 1)
    assert [(i["id"], i["overdue"], i["deadline"]) for i in r["items"]] == [
        (late.id, True, "verify"),
        (soon.id, False, "rectify"),
    ]
    t = out["tickets"]
    assert (t["overdue"], t["due_soon"]) == (1, 1)
    assert [i["ticket_no"] for i in t["items"]] == [overdue_ticket.ticket_no, soon_ticket.ticket_no]
    assert out["pushes"]["failing_channels"] == [
        {
            "channel": "template",
            "attempts": 2,
            "delivered": 1,
            "failed": 1,
            "results": {"refused": 1, "ok": 1},
            "delivery_rate": 0.5,
        }
    ]
    assert out["payments"] is None and out["outbox"] is None  # not a finance official, not an admin
    assert out["attention"] == 4

    with pytest.raises(NotFound):
        await dashboard.alerts(official=official(), department=HRSS, ticket_remind=REMIND, rectify_remind=REMIND)
    everywhere = await dashboard.alerts(
        official=official("", "admin"), ticket_remind=timedelta(hours=24), rectify_remind=REMIND, now=now
    )
    assert everywhere["rectifications"]["overdue"] == 2 and everywhere["tickets"]["overdue"] == 2
    assert {c["channel"] for c in everywhere["pushes"]["failing_channels"]} == {"template", "subscribe"}


async def test_payment_alerts_for_finance_and_the_outbox_for_admins(db):
    now = datetime.now(UTC)
    for kind, resolved in (
        ("amount_mismatch", None),
        ("amount_mismatch", None),
        ("paid_after_close", now),
        ("refund_failed", None),
    ):
        await PaymentAlert.create(kind=kind, dedup_key=factories._token(kind), detail={}, resolved_at=resolved)
    waiting = await case_at(now - timedelta(hours=3), status=S.SUBMITTED)  # its deliver_case row is pending
    await Outbox.filter(case_id=waiting.id).update(created_at=now - timedelta(minutes=20))
    await case_at(now - timedelta(hours=3), status=S.SUBMITTED)
    stuck = await case_at(now - timedelta(hours=3), status=S.SUBMITTED)
    await Outbox.filter(case_id=stuck.id).update(status="dead")

    finance = await dashboard.alerts(
        official=official(PSB, "finance"), ticket_remind=REMIND, rectify_remind=REMIND, now=now
    )
    assert finance["rectifications"] is None and finance["tickets"] is None and finance["outbox"] is None
    assert finance["payments"]["open"] == 3
    assert [(k["kind"], k["open"]) for k in finance["payments"]["kinds"]] == [
        ("amount_mismatch", 2),
        ("refund_failed", 1),
    ]

    admin = await dashboard.alerts(official=official("", "admin"), ticket_remind=REMIND, rectify_remind=REMIND, now=now)
    assert admin["payments"]["open"] == 3
    outbox = admin["outbox"]
    assert (outbox["backlog"], outbox["dead"]) == (2, 1)
    assert 20 * 60 <= outbox["oldest_age_s"] < 21 * 60
    assert admin["attention"] == 3 + 1

    with pytest.raises(Forbidden):
        await dashboard.alerts(official=official(PSB, "publisher"), ticket_remind=REMIND, rectify_remind=REMIND)

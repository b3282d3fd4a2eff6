"""Ticket deadlines, reminders, escalation and the answer's route, on factory rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.china_time import CHINA
from core.kicks import NO_KICKS
from handlers.catalog.reader import CatalogueReader
from handlers.tickets import ANSWERED, TicketPolicy, Tickets
from storage.models import Follower, LoopEvent, Notification, Official, Ticket
from tests import factories


@pytest.fixture
def tickets(db, redis, keys, cipher) -> Tickets:
    return Tickets(
        catalogue=CatalogueReader(redis=redis, keys=keys), cipher=cipher, policy=TicketPolicy(), kicks=NO_KICKS
    )


def china(*args) -> datetime:
    return datetime(*args, tzinfo=CHINA)


async def actions(ticket_no: str) -> list[str]:
    ticket = await Ticket.get(ticket_no=ticket_no)
    return [e.action for e in await LoopEvent.filter(subject_type="ticket", subject_id=ticket.id).order_by("id")]


async def test_a_complaint_on_the_friday_before_qingming_is_due_after_five_working_days(tickets):
    user = await factories.create_user()
    # Friday 2026-04-03; 清明 is 04-04..04-06 (Saturday to Monday): Tue 7, Wed 8, Thu 9, Fri 10, Mon 13.
    made = await tickets.create(user=user, kind="complaint", content="今天天气怎么样呢", now=china(2026, 4, 3, 16, 30))
    assert datetime.fromisoformat(made["due_at"]) == china(2026, 4, 14, 0, 0)
    assert made["department"] == "泸州市政务服务中心"  # nothing in the catalogue matches: the duty department
    assert await actions(made["ticket_no"]) == ["created"]


async def test_a_consultation_before_a_make_up_saturday_counts_it(tickets):
    user = await factories.create_user()
    # Friday 2026-10-09, then Saturday 10-10 is a make-up working day (调休): Sat 10, Mon 12.
    made = await tickets.create(
        user=user, kind="consultation", content="公积金提取后多久能到账？", now=china(2026, 10, 9, 9, 0)
    )
    assert datetime.fromisoformat(made["due_at"]) == china(2026, 10, 13, 0, 0)
    assert made["department"] == "泸州市住房公积金管理中心"  # routed by the matching service
    # And one across the National Day holiday (10-01..10-07) from Wednesday 09-30: Thu 10-08, Fri 10-09.
    other = await tickets.create(
        user=user, kind="consultation", content="公积金提取要带什么", now=china(2026, 9, 30, 9)
    )
    assert datetime.fromisoformat(other["due_at"]) == china(2026, 10, 10, 0, 0)


async def test_the_settings_set_the_days_and_the_duty_department(db, redis, keys, cipher):
    policy = TicketPolicy(consultation_days=1, complaint_days=3, duty_department="泸州市人民政府办公室")
    tickets = Tickets(catalogue=CatalogueReader(redis=redis, keys=keys), cipher=cipher, policy=policy, kicks=NO_KICKS)
    user = await factories.create_user()
    made = await tickets.create(user=user, kind="complaint", content="今天天气怎么样呢", now=china(2026, 11, 2, 9))
    assert datetime.fromisoformat(made["due_at"]) == china(2026, 11, 6, 0, 0)  # Mon + 3 working days: Thu 11-05
    assert made["department"] == "泸州市人民政府办公室"


async def test_reminder_before_the_deadline_and_escalation_after_it(tickets):
    user = await factories.create_user()
    made = await tickets.create(
        user=user, kind="consultation", content="公积金提取要带什么材料", now=china(2026, 11, 2, 9)
    )
    due = datetime.fromisoformat(made["due_at"])
    assert await tickets.sweep_deadlines(now=due - timedelta(hours=30)) == {"reminded": 0, "escalated": 0, "linked": 0}
    assert await tickets.sweep_deadlines(now=due - timedelta(hours=2)) == {"reminded": 1, "escalated": 0, "linked": 0}
    assert await tickets.sweep_deadlines(now=due - timedelta(hours=1)) == {"reminded": 0, "escalated": 0, "linked": 0}
    row = await Ticket.get(ticket_no=made["ticket_no"])
    assert row.reminded_at == due - timedelta(hours=2) and row.escalated_at is None
    assert await tickets.sweep_deadlines(now=due + timedelta(minutes=1)) == {"reminded": 0, "escalated": 1, "linked": 0}
    assert await tickets.sweep_deadlines(now=due + timedelta(hours=5)) == {"reminded": 0, "escalated": 0, "linked": 0}
    row = await Ticket.get(ticket_no=made["ticket_no"])
    assert row.escalated_at == due + timedelta(minutes=1)
    assert await actions(made["ticket_no"]) == ["created", "reminded", "escalated"]
    escalated = await LoopEvent.get(subject_type="ticket", subject_id=row.id, action="escalated")
    assert escalated.actor_type.value == "system" and escalated.data["to"] == "supervisor"


async def test_an_answered_ticket_is_neither_reminded_nor_escalated(tickets):
    user = await factories.create_user()
    made = await tickets.create(user=user, kind="complaint", content="公积金提取一直没到账", now=china(2026, 11, 2, 9))
    await Ticket.filter(ticket_no=made["ticket_no"]).update(status="answered", answered_at=datetime.now(UTC))
    due = datetime.fromisoformat(made["due_at"])
    assert await tickets.sweep_deadlines(now=due - timedelta(hours=1)) == {"reminded": 0, "escalated": 0, "linked": 0}
    assert await tickets.sweep_deadlines(now=due + timedelta(days=1)) == {"reminded": 0, "escalated": 0, "linked": 0}


async def test_the_answer_route_follows_the_channel_the_citizen_used(tickets, cipher):
    user = await factories.create_user()
    mp = await tickets.create(user=user, kind="consultation", content="公积金提取要带什么材料")
    follower = await factories.create_follower(user=user)
    oa = await Ticket.create(
        ticket_no="ZX20261102000999",
        kind="consultation",
        oa_openid=follower.oa_openid,
        user=user,
        content_enc=cipher.encrypt("社保卡怎么补办", column="tickets.content"),
        answer_enc=cipher.encrypt("携带身份证到任一网点办理。", column="tickets.answer"),
        dedup_key="oa:test",
        channel="official_account",
    )
    now = datetime.now(UTC)
    for no in (mp["ticket_no"], oa.ticket_no):
        await Notification.create(
            dedup_key=f"ticket:{no}:answered", user=user, kind=ANSWERED, title="t", body="b", next_attempt_at=now
        )
    mp_route = await tickets.route_of(await Notification.get(dedup_key=f"ticket:{mp['ticket_no']}:answered"))
    assert mp_route.channels == ("subscribe",) and mp_route.reference == mp["ticket_no"]
    oa_route = await tickets.route_of(await Notification.get(dedup_key=f"ticket:{oa.ticket_no}:answered"))
    assert oa_route.channels == ("custom", "template") and oa_route.oa_openid == follower.oa_openid
    assert "携带身份证到任一网点办理。" in oa_route.text and oa.ticket_no in oa_route.text


async def test_an_answer_to_an_unlinked_follower_is_notified_once_they_link(tickets, cipher):
    follower = await factories.create_follower(unionid="oU_link_later")
    ticket = await Ticket.create(
        ticket_no="ZX20261102000998",
        kind="consultation",
        oa_openid=follower.oa_openid,
        content_enc=cipher.encrypt("社保卡怎么补办", column="tickets.content"),
        dedup_key="oa:late-link",
        channel="official_account",
        department="泸州市政务服务中心",
        due_at=datetime.now(UTC) + timedelta(days=2),
    )
    official = await Official.create(
        username="fund1", display_name="办事员", department="泸州市政务服务中心", roles=["officer"], password_hash="-"
    )
    await tickets.answer(official=official, ticket_no=ticket.ticket_no, text="携带身份证办理。", ip="-", request_id="-")
    assert not await Notification.filter(dedup_key=f"ticket:{ticket.ticket_no}:answered").exists()
    assert (await tickets.sweep_deadlines())["linked"] == 0
    user = await factories.create_user(unionid="oU_link_later")
    await Follower.filter(oa_openid=follower.oa_openid).update(user_id=user.id)
    assert (await tickets.sweep_deadlines())["linked"] == 1
    assert (await tickets.sweep_deadlines())["linked"] == 0
    notification = await Notification.get(dedup_key=f"ticket:{ticket.ticket_no}:answered")
    assert notification.user_id == user.id and "携带身份证" not in notification.body  # the answer stays sealed

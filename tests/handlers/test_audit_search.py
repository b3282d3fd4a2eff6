"""Searching the audit trail (handlers.audit_search), on factory rows: who may read which rows,
each filter, keyset pages and the export. Over HTTP: tests/console/test_audit.py."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from core.china_time import CHINA
from core.errors import Forbidden, ValidationFailed
from handlers import audit, audit_search
from storage.models import ActorType, AuditLog
from tests import factories

POLICE, FUND = "泸州市公安局", "泸州市住房公积金管理中心"
SEEN = {"ip": "10.0.0.2", "request_id": "req-audit"}


async def row(actor, action: str, target_type: str | None = None, target_id: object = None, **detail) -> AuditLog:
    actor_type = ActorType.OFFICIAL if hasattr(actor, "username") else ActorType.CITIZEN
    actor_id = actor.id if actor is not None else None
    return await audit.record(
        actor_type=actor_type if actor is not None else ActorType.SYSTEM,
        actor_id=actor_id,
        action=action,
        target_type=target_type,
        target_id=target_id,
        detail=detail,
    )


async def ids(official, **filters) -> list[int]:
    return [r["id"] for r in (await audit_search.search(official=official, limit=200, **filters))["items"]]


async def test_an_admin_filters_by_official_action_and_date(db):
    admin = await factories.create_official(department="", roles=["admin"])
    police = await factories.create_official(department=POLICE, username="police_a")
    fund = await factories.create_official(department=FUND)
    a = await row(police, "case.read", "case", "ZB20261130000001")
    b = await row(police, "personal_data.read", "user", 7, reason="核对")
    c = await row(fund, "ticket.read", "ticket", "ZX20261130000001")
    d = await row(None, "case.overdue", "case", "ZB20261130000001")
    assert await ids(admin) == [d.id, c.id, b.id, a.id]
    assert await ids(admin, actor="police_a") == [b.id, a.id]
    assert await ids(admin, actor="nobody") == []
    assert await ids(admin, action="case.read") == [a.id]
    assert await ids(admin, action="case.*") == [d.id, a.id]
    assert await ids(admin, action="case.") == []  # exact unless it ends in *
    listed = (await audit_search.search(official=admin, actor="police_a", action="personal_data.read"))["items"]
    assert listed[0]["actor_username"] == "police_a" and listed[0]["actor_name"] == "测试工作人员"
    assert listed[0]["detail"] == {"reason": "核对"} and listed[0]["actor_type"] == "official"

    # Dates are China days: 23:30 UTC on the 29th is already the 30th in Beijing.
    await AuditLog.filter(id=a.id).update(at=datetime(2026, 11, 29, 23, 30, tzinfo=UTC))
    await AuditLog.filter(id=b.id).update(at=datetime(2026, 11, 29, 15, 59, tzinfo=UTC))  # 23:59 on the 29th
    await AuditLog.filter(id__in=[c.id, d.id]).update(at=datetime(2026, 12, 1, 16, 0, tzinfo=UTC))  # 12-02 00:00
    assert await ids(admin, since=date(2026, 11, 30), until=date(2026, 11, 30)) == [a.id]
    assert await ids(admin, until=date(2026, 11, 29)) == [b.id]
    assert await ids(admin, since=date(2026, 12, 2)) == [d.id, c.id]
    assert (
        datetime.fromisoformat((await audit_search.search(official=admin, until=date(2026, 11, 29)))["items"][0]["at"])
        .astimezone(CHINA)
        .day
        == 29
    )
    with pytest.raises(ValidationFailed) as backwards:
        await audit_search.search(official=admin, since=date(2026, 12, 2), until=date(2026, 12, 1))
    assert "until" in backwards.value.details["fields"]
    with pytest.raises(ValidationFailed):
        await audit_search.search(official=admin, action="Case.Read; --")


async def test_a_citizen_filter_finds_rows_about_them_their_cases_tickets_and_materials(db, cipher):
    user = await factories.create_user(level="L3")
    other = await factories.create_user(level="L3")
    case = await factories.create_case(user=user)
    theirs = await factories.create_case(user=other)
    material = await factories.create_material(user=user)
    admin = await factories.create_official(department="", roles=["admin"])
    police = await factories.create_official(department=POLICE)
    about_user = await row(police, "personal_data.read", "user", user.id)
    about_case = await row(police, "case.read", "case", case.case_no)
    about_material = await row(police, "material.read", "material", material.id)
    await row(police, "case.read", "case", theirs.case_no)
    await row(police, "personal_data.read", "user", other.id)
    await row(user, "identity.declared", "user", None)  # no target: not about anyone in particular
    assert await ids(admin, citizen=user.id) == [about_material.id, about_case.id, about_user.id]
    assert await ids(admin, citizen=user.id, action="case.read") == [about_case.id]
    assert await ids(admin, citizen=999_999_999) == []


async def test_a_supervisor_reads_only_their_departments_officials_and_an_officer_nothing(db):
    police = await factories.create_official(department=POLICE, username="police_b")
    chief = await factories.create_official(department=POLICE, roles=["supervisor"])
    fund = await factories.create_official(department=FUND, username="fund_b")
    citizen = await factories.create_user()
    mine = await row(police, "case.read", "case", "ZB20261130000009")
    own = await row(chief, "ticket.read", "ticket", "TS20261130000001")
    await row(fund, "case.read", "case", "ZB20261130000010")
    await row(citizen, "identity.declared")
    await row(None, "case.overdue")
    assert await ids(chief) == [own.id, mine.id]
    assert await ids(chief, actor="police_b") == [mine.id]
    assert await ids(chief, actor="fund_b") == []  # another department's official: nothing
    lonely = await factories.create_official(department="", roles=["supervisor"])
    assert await ids(lonely) == []
    with pytest.raises(Forbidden) as denied:
        await audit_search.search(official=police)
    assert denied.value.code == "role_required"
    with pytest.raises(Forbidden):
        await audit_search.export(official=police, **SEEN)
    assert not await AuditLog.filter(action="audit.export").exists()


async def test_pages_follow_the_cursor_and_rows_written_meanwhile_do_not_shift_them(db):
    admin = await factories.create_official(department="", roles=["admin"])
    police = await factories.create_official(department=POLICE)
    made = [(await row(police, "case.read", "case", f"ZB2026113000000{i}")).id for i in range(7)]
    first = await audit_search.search(official=admin, actor=police.username, limit=3)
    await row(police, "case.read", "case", "ZB20261130000099")  # lands above the pages already seen
    pages, page = [[r["id"] for r in first["items"]]], first
    while page["next_cursor"] is not None:
        page = await audit_search.search(official=admin, actor=police.username, before=page["next_cursor"], limit=3)
        pages.append([r["id"] for r in page["items"]])
    assert pages == [made[::-1][0:3], made[::-1][3:6], made[::-1][6:7]]
    assert (await audit_search.search(official=admin, actor=police.username, limit=8))["next_cursor"] is None


async def test_an_export_lists_the_rows_below_its_own_and_is_audited(db):
    admin = await factories.create_official(department="", roles=["admin"])
    police = await factories.create_official(department=POLICE)
    made = [(await row(police, "case.read", "case", f"ZB2026113000001{i}")).id for i in range(5)]
    rows = await audit_search.export(official=admin, batch=2, **SEEN)
    assert [r["id"] async for r in rows] == made[::-1]  # its own audit.export row is not listed
    [own] = await AuditLog.filter(action="audit.export")
    assert own.actor_id == str(admin.id) and own.ip == "10.0.0.2"
    assert own.detail["official"] is None and own.detail["action"] is None
    assert [r["id"] async for r in await audit_search.export(official=admin, batch=2, most=3, **SEEN)] == [
        (await AuditLog.filter(action="audit.export").order_by("id").first()).id,
        made[4],
        made[3],
    ]

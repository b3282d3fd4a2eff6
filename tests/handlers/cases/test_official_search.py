"""An official's case search and case view (handlers.cases.search), on factory rows.

Scoping (another department's case is neither listed nor shown), keyset pages, the number
prefix, the masked and the clear view and their audit rows. Over HTTP: tests/console/test_cases.py.
"""

from __future__ import annotations

import pytest

from core.errors import Forbidden, NotFound, ValidationFailed
from handlers.cases import search
from storage.models import AuditLog, Case, CaseStatus
from tests import factories
from tests.helpers import CODE, RENEWAL

S = CaseStatus
POLICE, FUND = "泸州市公安局", "泸州市住房公积金管理中心"
WITHDRAWAL = CODE["公积金提取"]
SEEN = {"ip": "10.0.0.1", "request_id": "req-test"}


async def everything(official, **filters) -> list[str]:
    return [row["case_no"] for row in (await search.search(official=official, limit=200, **filters))["items"]]


async def test_an_official_finds_only_their_departments_cases_and_an_admin_finds_all(db):
    user = await factories.create_user(level="L3")
    renewal = await factories.create_case(user=user)
    withdrawal = await factories.create_case(user=user, service_code=WITHDRAWAL)
    police = await factories.create_official(department=POLICE)
    fund = await factories.create_official(department=FUND)
    admin = await factories.create_official(department="", roles=["admin"])

    assert await everything(police) == [renewal.case_no]
    assert await everything(fund) == [withdrawal.case_no]
    assert await everything(admin) == [withdrawal.case_no, renewal.case_no]  # newest first
    assert await everything(admin, department=FUND) == [withdrawal.case_no]
    assert await everything(police, department=FUND) == []  # not theirs: nothing, not an error
    nowhere = await factories.create_official(department="", roles=["officer"])
    assert await everything(nowhere) == []
    row = (await search.search(official=police))["items"][0]
    assert row["department"] == POLICE and row["service_code"] == RENEWAL and row["status"] == "submitted"
    assert "user_id" not in row and "applicant" not in row  # no personal data in a listing


async def test_pages_follow_the_cursor_without_gaps_or_repeats(db):
    user = await factories.create_user(level="L3")
    made = [(await factories.create_case(user=user)).case_no for _ in range(7)]
    police = await factories.create_official(department=POLICE)
    pages, before = [], None
    while True:
        page = await search.search(official=police, before=before, limit=3)
        pages.append([row["case_no"] for row in page["items"]])
        if page["next_cursor"] is None:
            break
        before = page["next_cursor"]
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [n for p in pages for n in p] == made[::-1]
    # Exactly a page's worth: the last full page says there is no next one.
    assert (await search.search(official=police, limit=7))["next_cursor"] is None
    # A case submitted while the official pages on does not shift the pages already seen.
    first = await search.search(official=police, limit=3)
    await factories.create_case(user=user)
    second = await search.search(official=police, before=first["next_cursor"], limit=3)
    assert [row["case_no"] for row in second["items"]] == made[::-1][3:6]


async def test_a_number_or_its_beginning_status_and_service_narrow_the_search(db):
    user = await factories.create_user(level="L3")
    one = await factories.create_case(user=user)
    two = await factories.create_case(user=user, status=S.IN_REVIEW)
    admin = await factories.create_official(department="", roles=["admin"])
    assert await everything(admin, q=one.case_no) == [one.case_no]
    assert await everything(admin, q=one.case_no.lower()) == [one.case_no]
    assert await everything(admin, q=one.case_no[:10]) == [two.case_no, one.case_no]
    assert await everything(admin, q="ZB19990101") == []
    assert await everything(admin, status="in_review") == [two.case_no]
    assert await everything(admin, service=WITHDRAWAL) == []
    assert await everything(admin, service=RENEWAL, status="submitted") == [one.case_no]
    with pytest.raises(ValidationFailed) as refused:
        await search.search(official=admin, q="ZB-2026%")
    assert "q" in refused.value.details["fields"]


async def test_a_view_masks_the_applicant_and_is_audited(db, cipher):
    user = await factories.create_user(level="L3", name="欧阳小满", phone="13722223333")
    photo = await factories.create_material(user=user, locked=True)
    case = await factories.create_case(user=user, status=S.ACCEPTED, materials={"photo": [photo.id]})
    await factories.create_notification(case=case, kind="accepted")
    order = await factories.create_order(case=case, state="paid", amount_fen=2000)
    police = await factories.create_official(department=POLICE)

    seen = await search.view(official=police, case_no=case.case_no, reason=None, cipher=cipher, **SEEN)
    number = factories.personal_data(user)["id_number"]
    assert seen["applicant"] == {
        "user_id": user.id,
        "identity_level": "L3",
        "name": "欧***",
        "id_number": number[:4] + "*" * 10 + number[-4:],
        "phone": "137****3333",
        "masked": True,
    }
    assert seen["form"] is None
    assert [e["status"] for e in seen["timeline"]] == ["submitted", "delivered_to_platform", "accepted"]
    assert seen["timeline"][2]["label"] == "已受理" and seen["timeline"][2]["actor_type"] == "platform"
    assert [(m["slot"], m["id"], m["kind"], m["locked"]) for m in seen["materials"]] == [
        ("photo", photo.id, "photo", True)
    ]
    assert [p["kind"] for p in seen["pushes"]] == ["accepted"]
    assert [(o["payment_id"], o["status"], o["amount_fen"]) for o in seen["payments"]["orders"]] == [
        (order.payment_id, "paid", 2000)
    ]
    assert seen["department"] == POLICE and seen["promised_date"]
    [row] = await AuditLog.filter(action="case.read")
    assert (row.actor_id, row.target_type, row.target_id) == (str(police.id), "case", case.case_no)
    assert row.detail == {"user_id": user.id, "clear": False} and row.ip == "10.0.0.1"
    assert not await AuditLog.filter(action="personal_data.read").exists()


async def test_the_clear_view_needs_the_role_and_a_reason_and_writes_both_rows(db, cipher):
    user = await factories.create_user(level="L3", name="林小满")
    case = await factories.create_case(user=user)
    police = await factories.create_official(department=POLICE)
    with pytest.raises(Forbidden) as denied:
        await search.view(official=police, case_no=case.case_no, reason="核对申请信息", cipher=cipher, **SEEN)
    assert denied.value.code == "personal_data_forbidden"
    reader = await factories.create_official(department=POLICE, roles=["officer", "personal_data"])
    with pytest.raises(ValidationFailed):
        await search.view(official=reader, case_no=case.case_no, reason="  看 ", cipher=cipher, **SEEN)
    assert not await AuditLog.exists()  # refused views leave no trace of data seen

    reason = f"核对办件 {case.case_no} 的申请人"
    seen = await search.view(official=reader, case_no=case.case_no, reason=reason, cipher=cipher, **SEEN)
    clear = factories.personal_data(user)
    assert seen["applicant"]["masked"] is False
    assert (seen["applicant"]["name"], seen["applicant"]["id_number"]) == ("林小满", clear["id_number"])
    assert seen["form"]["applicant"]["id_number"] == clear["id_number"]
    [read] = await AuditLog.filter(action="case.read")
    assert read.detail == {"user_id": user.id, "clear": True, "reason": reason}
    [personal] = await AuditLog.filter(action="personal_data.read")
    assert (personal.target_type, personal.target_id) == ("user", str(user.id))
    assert personal.detail["case_no"] == case.case_no and personal.detail["reason"] == reason


async def test_another_departments_case_is_not_found_and_not_audited(db, cipher):
    user = await factories.create_user(level="L3")
    case = await factories.create_case(user=user)
    fund = await factories.create_official(department=FUND, roles=["officer", "personal_data"])
    for reason in (None, "核对申请信息"):
        with pytest.raises(NotFound) as hidden:
            await search.view(official=fund, case_no=case.case_no, reason=reason, cipher=cipher, **SEEN)
        assert hidden.value.code == "case_not_found"
    with pytest.raises(NotFound) as unknown:
        await search.view(official=fund, case_no="ZB20000101000001", reason=None, cipher=cipher, **SEEN)
    assert unknown.value.code == hidden.value.code and unknown.value.message == hidden.value.message
    assert not await AuditLog.exists()
    admin = await factories.create_official(department="", roles=["admin"])
    assert (await search.view(official=admin, case_no=case.case_no, reason=None, cipher=cipher, **SEEN))["case_no"]


async def test_an_export_reads_every_row_in_batches_and_is_audited(db):
    user = await factories.create_user(level="L3")
    made = [(await factories.create_case(user=user)).case_no for _ in range(5)]
    await factories.create_case(user=user, service_code=WITHDRAWAL)
    police = await factories.create_official(department=POLICE)
    rows = await search.export(official=police, batch=2, **SEEN)  # three batches for five rows
    assert [row["case_no"] async for row in rows] == made[::-1]
    [row] = await AuditLog.filter(action="case.export")
    assert row.actor_id == str(police.id)
    assert len([row async for row in await search.export(official=police, batch=2, most=3, **SEEN)]) == 3
    with pytest.raises(ValidationFailed):
        await search.export(official=police, q="ZB 1", **SEEN)
    assert await AuditLog.filter(action="case.export").count() == 2
    assert await Case.all().count() == 6

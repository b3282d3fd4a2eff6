"""Resubmission after a correction request (handlers.cases.resubmit), on factory rows.

The whole journey over HTTP (the platform asks, the citizen corrects, the platform decides)
is in tests/miniprogram_api/test_push.py; here, the rules: only what was asked, all of it, reviewed like a
submission, the same case.
"""

from __future__ import annotations

import json

import pytest

from core.errors import NotFound, Unprocessable, ValidationFailed
from core.kicks import NO_KICKS
from handlers.cases.lifecycle import IllegalTransition
from handlers.cases.resubmission import resubmit
from handlers.drafts import SNAPSHOT_COLUMN
from storage.models import Case, CaseEvent, CaseStatus, Material, Notification, Outbox, User
from tests import factories

S = CaseStatus
ASKED = {"fields": ["applicant.phone"], "materials": ["photo"], "reason": "联系电话无法接通，照片不清晰"}


async def case_in_correction(user: User | None = None) -> tuple[User, Case]:
    user = user or await factories.create_user(level="L3")
    photo = await factories.create_material(user=user, locked=True)
    case = await factories.create_case(
        user=user, status=S.CORRECTION_REQUESTED, materials={"photo": [photo.id]}, correction=ASKED
    )
    return user, case


async def call(user: User, case: Case, fields: dict, materials: dict, cipher) -> Case:
    """The case row after the citizen's resubmission (the use case answers with the citizen's view)."""
    view = await resubmit(
        user=user, case_no=case.case_no, fields=fields, materials=materials, cipher=cipher, kicks=NO_KICKS
    )
    assert view["case_no"] == case.case_no and view["status"] == S.RESUBMITTED.value
    return await Case.get(case_no=case.case_no)


async def unchanged(case: Case) -> None:
    fresh = await Case.get(id=case.id)
    assert fresh.status == S.CORRECTION_REQUESTED and fresh.row_version == case.row_version
    assert fresh.form_snapshot_enc == case.form_snapshot_enc and fresh.materials == case.materials
    assert not await Outbox.filter(case_id=case.id, kind="resubmit_case").exists()


async def test_the_corrected_case_keeps_its_number_and_goes_back_to_the_platform(db, cipher):
    user, case = await case_in_correction()
    photo = await factories.create_material(user=user)
    done = await call(user, case, {"applicant.phone": "13900001111"}, {"photo": [photo.id]}, cipher)
    assert (done.id, done.case_no, done.status) == (case.id, case.case_no, S.RESUBMITTED)
    fresh = await Case.get(id=case.id)
    form = json.loads(cipher.decrypt(fresh.form_snapshot_enc, column=SNAPSHOT_COLUMN))
    before = json.loads(cipher.decrypt(case.form_snapshot_enc, column=SNAPSHOT_COLUMN))
    assert form["applicant"] == {**before["applicant"], "phone": "13900001111"}
    assert form["appointment"] == before["appointment"]
    assert form["materials"]["photo"] == [photo.id] and fresh.materials["photo"] == [photo.id]
    assert (await Material.get(id=photo.id)).locked_at is not None  # kept exactly as it will be reviewed
    last = await CaseEvent.filter(case_id=case.id).order_by("-id").first()
    assert (last.from_status, last.to_status, last.actor_type.value) == (
        "correction_requested",
        "resubmitted",
        "citizen",
    )
    assert last.data == {"fields": ["applicant.phone"], "materials": ["photo"]}
    [row] = await Outbox.filter(case_id=case.id, kind="resubmit_case")
    assert row.status == "pending" and row.payload["materials"] == {"photo": [photo.id]}
    fields = json.loads(cipher.decrypt(bytes.fromhex(row.payload["fields_enc"]), column="outbox.payload"))
    assert fields == {"applicant.phone": "13900001111"}
    # The citizen is not told about what they did themselves.
    assert not await Notification.filter(case_id=case.id).exists()


async def test_only_the_listed_fields_and_materials_may_change(db, cipher):
    user, case = await case_in_correction()
    photo = await factories.create_material(user=user)
    pdf = await factories.create_material(user=user, kind="pdf", mime="application/pdf")
    with pytest.raises(ValidationFailed) as caught:
        await call(
            user,
            case,
            {"applicant.phone": "13900001111", "appointment.station": "naxi"},
            {"photo": [photo.id], "hukou_book": [pdf.id]},
            cipher,
        )
    assert caught.value.fields == {
        "fields.appointment.station": "该项不在补正要求之内，不能修改",
        "materials.hukou_book": "该材料不在补正要求之内，不能更换",
    }
    await unchanged(case)


async def test_every_listed_field_and_material_is_required(db, cipher):
    user, case = await case_in_correction()
    with pytest.raises(ValidationFailed) as caught:
        await call(user, case, {}, {}, cipher)
    assert caught.value.fields == {"fields.applicant.phone": "请补正此项", "materials.photo": "请重新上传此材料"}
    for empty in ([], "abc", [1]):
        with pytest.raises(ValidationFailed) as caught:
            await call(user, case, {"applicant.phone": "13900001111"}, {"photo": empty}, cipher)
        assert caught.value.fields == {"materials.photo": "应为已上传文件编号的列表"}
    await unchanged(case)


async def test_the_correction_is_reviewed_like_a_submission(db, cipher):
    user, case = await case_in_correction()
    stranger = await factories.create_user(level="L3")
    theirs = await factories.create_material(user=stranger)
    with pytest.raises(Unprocessable) as caught:
        await call(user, case, {"applicant.phone": "123"}, {"photo": [theirs.id]}, cipher)
    assert caught.value.code == "review_failed"
    problems = {(p["path"], p["code"]) for p in caught.value.details["problems"]}
    assert ("materials.photo", "material_not_found") in problems
    assert any(path == "applicant.phone" for path, _ in problems)
    pdf = await factories.create_material(user=user, kind="pdf", mime="application/pdf")
    with pytest.raises(Unprocessable) as caught:
        await call(user, case, {"applicant.phone": "13900001111"}, {"photo": [pdf.id]}, cipher)
    assert [(p["path"], p["code"]) for p in caught.value.details["problems"]] == [
        ("materials.photo", "material_kind_not_allowed")
    ]
    await unchanged(case)


async def test_only_a_case_in_correction_and_only_ones_own(db, cipher):
    user = await factories.create_user(level="L3")
    reviewing = await factories.create_case(user=user, status=S.IN_REVIEW)
    with pytest.raises(IllegalTransition) as caught:
        await call(user, reviewing, {}, {}, cipher)
    assert caught.value.code == "not_in_correction" and caught.value.details == {"status": "in_review"}
    _, theirs = await case_in_correction()
    with pytest.raises(NotFound) as caught:
        await call(user, theirs, {"applicant.phone": "13900001111"}, {}, cipher)
    assert caught.value.code == "case_not_found"
    await unchanged(theirs)

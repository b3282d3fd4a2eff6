"""The factories make rows the app itself would have made (so use-case tests test the app)."""

from __future__ import annotations

import json

import pytest

from handlers.cases.access import my_case
from handlers.cases.lifecycle import TRANSITIONS
from handlers.cases.views import detail
from handlers.drafts import DATA_COLUMN, SNAPSHOT_COLUMN, Application, review
from handlers.identity import profile
from storage.models import ActorType, CaseEvent, CaseStatus, Outbox
from tests import factories

S = CaseStatus


async def test_citizens_at_each_level_read_as_the_app_reads_them(db, cipher):
    l1 = await factories.create_user()
    l2 = await factories.create_user(level="L2", name="王小二", id_number="51050219900215008x", phone="13800001111")
    l3 = await factories.create_user(level="L3")
    assert profile(l1, [], cipher)["name_masked"] is None
    seen = profile(l2, [], cipher)
    assert (seen["identity_level"], seen["face_verified"]) == ("L2", False)
    assert seen["name_masked"] != "王小二" and seen["phone_masked"] != "13800001111"
    assert factories.personal_data(l2) == {"name": "王小二", "id_number": "51050219900215008X", "phone": "13800001111"}
    assert l2.id_number_digest == cipher.blind_index("51050219900215008X", column="users.id_number")
    assert l2.verified_id_digest is None
    assert l3.verified_id_digest == l3.id_number_digest and l3.face_verified_at is not None
    assert profile(l3, [], cipher)["face_verified"] is True


async def test_a_draft_holds_its_data_sealed(db, cipher):
    user = await factories.create_user(level="L3")
    draft = await factories.create_draft(user=user, data={"applicant": {"phone": "13800001111"}})
    assert json.loads(cipher.decrypt(draft.data_enc, column=DATA_COLUMN)) == {"applicant": {"phone": "13800001111"}}
    assert b"13800001111" not in draft.data_enc


async def test_the_default_form_passes_the_apps_review(db, cipher):
    user = await factories.create_user(level="L3")
    case = await factories.create_case(user=user)
    item = await factories.service_item()
    form = json.loads(cipher.decrypt(case.form_snapshot_enc, column=SNAPSHOT_COLUMN))
    assert review(Application(items=[item], bundle=None), form, user) == []


@pytest.mark.parametrize("status", list(CaseStatus))
async def test_a_case_has_the_history_of_its_status(db, status):
    user = await factories.create_user(level="L3")
    case = await factories.create_case(user=user, status=status)
    events = await CaseEvent.filter(case_id=case.id).order_by("id")
    assert events[0].from_status is None and events[0].to_status == "submitted"
    for event in events[1:]:  # every step one the table allows
        assert S(event.to_status) in TRANSITIONS[S(event.from_status)]
        assert events[events.index(event) - 1].to_status == event.from_status
    assert events[-1].to_status == status.value
    platform = [e for e in events if e.actor_type == ActorType.PLATFORM]
    assert [e.data["seq"] for e in platform] == list(range(1, case.platform_seq + 1))
    assert case.row_version == len(events)
    outbox = {(o.kind, o.status) for o in await Outbox.filter(case_id=case.id)}
    delivered = status not in (S.SUBMITTED, S.WITHDRAWN)
    assert ("deliver_case", "done" if delivered else "pending") in outbox
    assert (("withdraw_case", "pending") in outbox) == (status == S.WITHDRAWN)
    assert (("resubmit_case", "pending") in outbox) == (status == S.RESUBMITTED)
    # The citizen's view of it works.
    view = await detail(await my_case(user=user, case_no=case.case_no))
    assert view["status"] == status.value and len(view["timeline"]) == len(events)

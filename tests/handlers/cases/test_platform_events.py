"""Platform callbacks applied to cases (handlers.cases.platform_events.apply_platform_event), on factory rows.

The HTTP side of callbacks (signatures, replays, validation, 20 concurrent duplicates) is in
tests/bridge/test_platform.py; here, the ordering rules on the real database.
"""

from __future__ import annotations

from core.kicks import NO_KICKS
from handlers.cases.platform_events import apply_platform_event
from handlers.push import notify
from storage.models import Case, CaseEvent, CaseStatus, Notification, User
from tests import factories

S = CaseStatus


async def history(case: Case) -> list[tuple[str, str]]:
    return [(e.to_status, e.note) for e in await CaseEvent.filter(case_id=case.id).order_by("id")]


async def notifications(case: Case) -> list[str]:
    return [n.kind for n in await Notification.filter(case_id=case.id).order_by("id")]


async def event(case: Case, seq: int, name: str, data: dict | None = None) -> str:
    return await apply_platform_event(
        case_no=case.case_no, seq=seq, event=name, data=data or {}, at="2026-11-22T10:00:00+08:00", kicks=NO_KICKS
    )


async def l3() -> User:
    return await factories.create_user(level="L3")


async def test_a_duplicate_is_acknowledged_and_changes_nothing(db):
    case = await factories.create_case(user=await l3(), status=S.ACCEPTED)
    before = await history(case)
    assert await event(case, 1, "accepted") == "duplicate"
    assert await event(case, 1, "in_review") == "duplicate"  # same seq, whatever it says
    fresh = await Case.get(id=case.id)
    assert (fresh.status, fresh.platform_seq, fresh.row_version) == (S.ACCEPTED, 1, case.row_version)
    assert await history(case) == before
    assert await notifications(case) == []


async def test_an_older_event_never_moves_a_case_back(db):
    case = await factories.create_case(user=await l3(), status=S.DELIVERED)
    assert await event(case, 3, "in_review") == "applied"
    assert await event(case, 2, "accepted") == "duplicate"
    fresh = await Case.get(id=case.id)
    assert (fresh.status, fresh.platform_seq) == (S.IN_REVIEW, 3)
    statuses = [status for status, _ in await history(case)]
    assert statuses == ["submitted", "delivered_to_platform", "accepted", "in_review"]


async def test_skipped_steps_are_recorded_as_such_with_one_notification(db):
    case = await factories.create_case(user=await l3(), status=S.DELIVERED)
    assert await event(case, 1, "approved") == "applied"
    assert (await history(case))[2:] == [("accepted", "审批部门已受理（补记）"), ("approved", "审批通过")]
    skipped, reached = (await CaseEvent.filter(case_id=case.id).order_by("id"))[2:]
    assert skipped.data == {"seq": 1, "event": "approved", "at": "2026-11-22T10:00:00+08:00"}
    assert reached.from_status == "accepted"
    fresh = await Case.get(id=case.id)
    assert (fresh.status, fresh.platform_seq, fresh.row_version) == (S.APPROVED, 1, case.row_version + 2)
    # The citizen is told where the case is now, not about the steps skipped over.
    assert await notifications(case) == ["approved"]


async def test_a_rejection_is_never_inferred_as_a_skipped_step(db):
    case = await factories.create_case(user=await l3(), status=S.DELIVERED)
    assert await event(case, 1, "closed") == "applied"
    statuses = [status for status, _ in await history(case)]
    assert "rejected" not in statuses
    assert statuses[-1] == "closed" and statuses[2:-1] == ["accepted", "approved"]


async def test_a_withdrawal_is_never_inferred_and_a_withdrawn_case_ignores_late_events(db):
    user = await l3()
    submitted = await factories.create_case(user=user, status=S.SUBMITTED)
    # Accepted before our relay recorded the delivery: the delivery is inferred, never a withdrawal.
    assert await event(submitted, 1, "accepted") == "applied"
    assert [s for s, _ in await history(submitted)] == ["submitted", "delivered_to_platform", "accepted"]
    withdrawn = await factories.create_case(user=user, status=S.WITHDRAWN)
    before = await history(withdrawn)
    assert await event(withdrawn, 1, "accepted") == "ignored"
    fresh = await Case.get(id=withdrawn.id)
    assert fresh.status == S.WITHDRAWN and await history(withdrawn) == before
    assert await notifications(withdrawn) == []


async def test_a_late_event_for_a_state_already_left_is_ignored_but_its_seq_counts(db):
    case = await factories.create_case(user=await l3(), status=S.APPROVED)
    assert case.platform_seq == 3
    before = await history(case)
    assert await event(case, 4, "in_review") == "ignored"
    fresh = await Case.get(id=case.id)
    assert (fresh.status, fresh.platform_seq) == (S.APPROVED, 4)
    assert await history(case) == before and await notifications(case) == []
    # The same event again is now a duplicate.
    assert await event(case, 4, "in_review") == "duplicate"


async def test_a_rejection_carries_its_reason(db):
    case = await factories.create_case(user=await l3(), status=S.IN_REVIEW)
    assert await event(case, 3, "rejected", {"reason": "证件照片不符合要求"}) == "applied"
    assert (await history(case))[-1] == ("rejected", "未予通过：证件照片不符合要求")
    [notification] = await Notification.filter(case_id=case.id)
    assert notification.kind == "rejected" and "证件照片不符合要求" in notification.body


async def test_a_fee_changes_no_status_and_is_an_urgent_notification(db):
    case = await factories.create_case(user=await l3(), status=S.ACCEPTED)
    assert await event(case, 2, "fee_assessed", {"amount_fen": 2005}) == "applied"
    fresh = await Case.get(id=case.id)
    assert (fresh.status, fresh.fee_fen, fresh.platform_seq) == (S.ACCEPTED, 2005, 2)
    assert (await history(case))[-1] == ("accepted", "应缴费用 20.05 元")
    [notification] = await Notification.filter(case_id=case.id)
    assert notification.kind == "fee_assessed" and notification.urgent


async def test_an_unknown_case_is_said_so(db):
    result = await apply_platform_event(
        case_no="ZB20000101000001", seq=1, event="accepted", data={}, at=None, kicks=NO_KICKS
    )
    assert result == "unknown_case"


async def test_the_notification_is_the_one_notify_writes(db):
    """The callback writes its notification in SQL: the same row as `handlers.push.notify`."""
    case = await factories.create_case(user=await l3(), status=S.IN_REVIEW)
    assert await event(case, 3, "rejected", {"reason": "证件照片不符合要求"}) == "applied"
    [written] = await Notification.filter(case_id=case.id)
    reference = await notify(
        await Case.get(id=case.id), kind="rejected", dedup_key="reference", data={"reason": "证件照片不符合要求"}
    )
    skip = {"id", "dedup_key", "created_at", "next_attempt_at"}
    fields = [f for f in Notification._meta.db_fields if f not in skip]
    assert {f: getattr(written, f) for f in fields} == {f: getattr(reference, f) for f in fields}
    last = await CaseEvent.filter(case_id=case.id).order_by("-id").first()
    assert written.dedup_key == f"event:{last.id}"

"""What the core platform tells us about a case, applied exactly once and never backwards.

Platform callbacks carry a per-case sequence number. An event at or below the case's last
sequence is a duplicate or a late arrival and changes nothing; a newer one moves the case,
recording any steps the platform skipped over, so a case never moves backwards.
"""

from __future__ import annotations

from datetime import UTC, datetime

from tortoise.transactions import in_transaction

from core.kicks import Kicks
from handlers.cases.lifecycle import path_to
from handlers.payments.refunds import refund_case_fees
from handlers.push import notify
from storage.models import ActorType, Case, CaseEvent, CaseStatus

S = CaseStatus

EVENT_STATUS: dict[str, CaseStatus | None] = {
    "accepted": S.ACCEPTED,
    "in_review": S.IN_REVIEW,
    "correction_requested": S.CORRECTION_REQUESTED,
    "fee_assessed": None,
    "approved": S.APPROVED,
    "rejected": S.REJECTED,
    "result_issued": S.RESULT_ISSUED,
    "closed": S.CLOSED,
}
EVENT_NOTES = {
    "accepted": "审批部门已受理",
    "in_review": "审批部门审核中",
    "correction_requested": "需要补正",
    "approved": "审批通过",
    "rejected": "未予通过",
    "result_issued": "办理结果已出具",
    "closed": "已办结",
}


_EVENT_COLUMNS = ("id", "case_no", "status", "platform_seq", "row_version", "user_id", "service_code", "service_name")
# A case that ends so gives its paid fee back.
_REFUNDING = {S.REJECTED: "case_rejected"}


async def apply_platform_event(*, case_no: str, seq: int, event: str, data: dict, at: str | None, kicks: Kicks) -> str:
    """What one platform callback did: 'applied', 'duplicate' (old seq), 'ignored' (cannot
    apply) or 'unknown_case'.

    The change, its case events and the citizen's notification commit together; the push job
    is kicked after the commit (the push sweep picks up a kick that was lost)."""
    target = EVENT_STATUS[event]
    notification = None
    refunds = 0
    async with in_transaction():
        # Only what the change needs: not the sealed form snapshot, which can be kilobytes.
        case = await Case.select_for_update().filter(case_no=case_no).only(*_EVENT_COLUMNS).first()
        if case is None:
            return "unknown_case"
        if seq <= case.platform_seq:
            return "duplicate"
        updates: dict = {"platform_seq": seq, "platform_heard_at": datetime.now(UTC)}
        result = "applied"
        if target is None:  # fee assessed: no status change
            amount = int(data["amount_fen"])
            notice_no = str(data["notice_no"])[:64] if data.get("notice_no") else None
            updates.update(fee_fen=amount, fee_ref=f"platform:{seq}", fee_notice_no=notice_no, fee_paid_at=None)
            record = await CaseEvent.create(
                case=case,
                actor_type=ActorType.PLATFORM,
                from_status=case.status.value,
                to_status=case.status.value,
                note=f"应缴费用 {amount / 100:.2f} 元",
                data={"seq": seq, "event": event, **data},
            )
            notification = await notify(case, kind=event, dedup_key=f"event:{record.id}", data=data)
        else:
            chain = path_to(case.status, target)
            if not chain:
                result = "ignored"  # e.g. a late event for a state already left, or a withdrawn case
            else:
                previous = case.status
                for step in chain:
                    skipped = step != target
                    note = EVENT_NOTES.get(step.value, "")
                    if skipped:
                        note += "（补记）"
                    elif data.get("reason"):
                        note += f"：{str(data['reason'])[:200]}"
                    record = await CaseEvent.create(
                        case=case,
                        actor_type=ActorType.PLATFORM,
                        from_status=previous.value,
                        to_status=step.value,
                        note=note,
                        data={"seq": seq, "event": event, "at": at, **({} if skipped else data)},
                    )
                    previous = step
                # One notification for the change, about where the case is now: the steps the
                # platform skipped over are history, not news.
                notification = await notify(case, kind=target.value, dedup_key=f"event:{record.id}", data=data)
                updates.update(status=target, row_version=case.row_version + len(chain))
                if target in _REFUNDING:
                    refunds = await refund_case_fees(case, cause=_REFUNDING[target])
        await Case.filter(id=case.id).update(**updates)
    if notification is not None:
        await kicks.push([notification.id])
    if refunds:
        await kicks.refunds()
    return result

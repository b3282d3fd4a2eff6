"""What a citizen sees of their cases (list, detail with timeline and next action), and what an
official of the case's department sees of its pushes."""

from __future__ import annotations

from handlers import audit
from handlers.cases.access import case_for_official, my_case
from handlers.cases.lifecycle import STATUS_LABELS, S, promised_date
from handlers.evaluation.views import case_evaluation
from handlers.payments.orders import PAYABLE, fee_of_case
from handlers.push import attempts_of_case
from storage.models import ActorType, Case, CaseEvent, CaseStatus, Official, User


async def _my_cases(*, user: User, before: int | None, limit: int) -> list[Case]:
    query = Case.filter(user_id=user.id)
    if before is not None:
        query = query.filter(id__lt=before)
    return await query.order_by("-id").limit(limit)


def summary(case: Case) -> dict:
    return {
        "case_no": case.case_no,
        "service_code": case.service_code,
        "service_name": case.service_name,
        "status": case.status.value,
        "status_label": STATUS_LABELS[case.status],
        "bundle_no": case.bundle_no,
        "submitted_at": case.submitted_at.isoformat(),
    }


def correction_request(events: list[CaseEvent]) -> dict:
    """What the latest correction request asks for: {"fields", "materials", "reason"}."""
    latest = next((e for e in reversed(events) if e.to_status == S.CORRECTION_REQUESTED.value), None)
    data = latest.data if latest else {}
    return {
        "fields": list(data.get("fields", [])),
        "materials": list(data.get("materials", [])),
        "reason": data.get("reason", ""),
    }


async def detail(case: Case) -> dict:
    """The case with its timeline, what the citizen must do next, and the promised date."""
    events = await CaseEvent.filter(case_id=case.id).order_by("id")
    promised = promised_date(case)
    next_action: dict | None = None
    if case.status == S.CORRECTION_REQUESTED:
        next_action = {"type": "correct", **correction_request(events)}
    elif case.status in (S.SUBMITTED, S.DELIVERED):
        next_action = {"type": "wait", "can_withdraw": True}
    elif case.fee_fen and case.fee_paid_at is None and case.status in PAYABLE:
        next_action = {"type": "pay", "amount_fen": case.fee_fen, "notice_no": case.fee_notice_no}
    issued = next((e for e in reversed(events) if e.to_status == S.RESULT_ISSUED.value and e.data.get("kind")), None)
    result = None
    if issued is not None:
        result = {key: issued.data[key] for key in ("kind", "licence_no", "tracking_no") if issued.data.get(key)}
    return {
        **summary(case),
        "timeline": [
            {
                "status": e.to_status,
                "label": STATUS_LABELS.get(CaseStatus(e.to_status), e.to_status),
                "at": e.at.isoformat(),
                "note": e.note,
            }
            for e in events
        ],
        "next_action": next_action,
        "promised_date": promised.isoformat(),
        "overdue": case.overdue_at is not None,
        "result": result,
        "fee_fen": case.fee_fen,
        "fee": await fee_of_case(case),
        **await case_evaluation(case),
    }


async def list_mine(*, user: User, before: int | None, limit: int) -> dict:
    """A page of the citizen's cases, newest first, with the cursor of the next page (keyset by id)."""
    rows = await _my_cases(user=user, before=before, limit=limit + 1)
    page = rows[:limit]
    return {"items": [summary(c) for c in page], "next_cursor": page[-1].id if len(rows) > limit else None}


async def view_mine(*, user: User, case_no: str) -> dict:
    """One of the citizen's cases in full (see `detail`)."""
    return await detail(await my_case(user=user, case_no=case_no))


async def pushes_for_official(*, official: Official, case_no: str, ip: str, request_id: str) -> dict:
    """A case's notifications and push attempts, for an official of its department (audited)."""
    case = await case_for_official(official=official, case_no=case_no)
    await audit.record(
        actor_type=ActorType.OFFICIAL,
        actor_id=official.id,
        action="case.pushes.read",
        target_type="case",
        target_id=case.case_no,
        request_id=request_id,
        ip=ip,
    )
    return {"case_no": case.case_no, "status": case.status.value, "notifications": await attempts_of_case(case.id)}

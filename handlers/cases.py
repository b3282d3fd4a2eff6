"""Cases: the lifecycle as a table, the one function that applies it, and the citizen's view.

Zhangban does not decide cases; the core platform does. Every change of status goes through
`transition()`, which refuses moves the table does not allow and writes a case event (who,
when, from, to, note) — the citizen's timeline and the audit trail in one.
"""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta, timezone

from tortoise.transactions import in_transaction

from core.errors import ApiError, NotFound
from handlers.numbers import CHINA
from storage.models import ActorType, Case, CaseEvent, CaseStatus, User

log = logging.getLogger("zhangban.cases")
S = CaseStatus

TRANSITIONS: dict[CaseStatus, frozenset[CaseStatus]] = {
    S.SUBMITTED: frozenset({S.DELIVERED, S.WITHDRAWN}),
    S.DELIVERED: frozenset({S.ACCEPTED, S.REJECTED, S.WITHDRAWN}),
    S.ACCEPTED: frozenset({S.IN_REVIEW, S.CORRECTION_REQUESTED, S.APPROVED, S.REJECTED}),
    S.IN_REVIEW: frozenset({S.CORRECTION_REQUESTED, S.APPROVED, S.REJECTED}),
    S.CORRECTION_REQUESTED: frozenset({S.RESUBMITTED, S.REJECTED}),
    S.RESUBMITTED: frozenset({S.IN_REVIEW, S.CORRECTION_REQUESTED, S.APPROVED, S.REJECTED}),
    S.APPROVED: frozenset({S.RESULT_ISSUED, S.CLOSED}),
    S.REJECTED: frozenset({S.CLOSED}),
    S.RESULT_ISSUED: frozenset({S.CLOSED}),
    S.CLOSED: frozenset(),
    S.WITHDRAWN: frozenset(),
}

STATUS_LABELS: dict[CaseStatus, str] = {
    S.SUBMITTED: "已提交，等待推送至审批部门",
    S.DELIVERED: "已推送至审批部门，等待受理",
    S.ACCEPTED: "已受理",
    S.IN_REVIEW: "审核中",
    S.CORRECTION_REQUESTED: "需要补正材料",
    S.RESUBMITTED: "已补正，等待重新审核",
    S.APPROVED: "审批通过",
    S.REJECTED: "未予通过",
    S.RESULT_ISSUED: "办理结果已出具",
    S.CLOSED: "已办结",
    S.WITHDRAWN: "已撤回",
}


class IllegalTransition(ApiError):
    status, code, message = 409, "illegal_transition", "当前办件状态不允许此操作"


async def transition(
    case_id: int, to: CaseStatus, *, actor_type: ActorType, actor_id: object | None = None, note: str = "",
    data: dict | None = None,
) -> Case:
    """Moves a case to `to` if the table allows it, with its event, in one transaction."""
    async with in_transaction():
        case = await Case.select_for_update().get(id=case_id)
        if to not in TRANSITIONS[case.status]:
            log.warning("illegal case transition refused", extra={"case_no": case.case_no, "from": case.status.value,
                                                                   "to": to.value})
            raise IllegalTransition(details={"from": case.status.value, "to": to.value})
        await CaseEvent.create(
            case=case, actor_type=actor_type, actor_id=None if actor_id is None else str(actor_id),
            from_status=case.status.value, to_status=to.value, note=note, data=data or {},
        )
        await Case.filter(id=case.id).update(status=to, row_version=case.row_version + 1,
                                             updated_at=datetime.now(timezone.utc))
        case.status, case.row_version = to, case.row_version + 1
    return case


def add_working_days(start: date, days: int) -> date:
    """`start` plus `days` working days (Monday–Friday; public holidays are not modelled)."""
    current = start
    while days > 0:
        current += timedelta(days=1)
        if current.weekday() < 5:
            days -= 1
    return current


# -- the citizen's view ---------------------------------------------------------------------------


async def my_cases(*, user: User, before: int | None, limit: int) -> list[Case]:
    """The citizen's cases, newest first, keyset-paged by id."""
    query = Case.filter(user_id=user.id)
    if before is not None:
        query = query.filter(id__lt=before)
    return await query.order_by("-id").limit(limit)


async def my_case(*, user: User, case_no: str) -> Case:
    """One of the citizen's cases; anyone else's is the same 404 as an unknown number."""
    case = await Case.get_or_none(case_no=case_no, user_id=user.id).prefetch_related("service_item")
    if case is None:
        raise NotFound("办件不存在", code="case_not_found")
    return case


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


async def detail(case: Case) -> dict:
    """The case with its timeline, what the citizen must do next, and the promised date."""
    events = await CaseEvent.filter(case_id=case.id).order_by("id")
    promised_days = case.service_item.content.get("promised_days", 0)
    promised = add_working_days(case.submitted_at.astimezone(CHINA).date(), promised_days)
    next_action: dict | None = None
    if case.status == S.CORRECTION_REQUESTED:
        latest = next((e for e in reversed(events) if e.to_status == S.CORRECTION_REQUESTED.value), None)
        data = latest.data if latest else {}
        next_action = {"type": "correct", "fields": data.get("fields", []), "materials": data.get("materials", []),
                       "reason": data.get("reason", "")}
    elif case.status in (S.SUBMITTED, S.DELIVERED):
        next_action = {"type": "wait", "can_withdraw": True}
    elif case.fee_fen and case.status in (S.ACCEPTED, S.IN_REVIEW, S.APPROVED):
        next_action = {"type": "pay", "amount_fen": case.fee_fen}
    return {
        **summary(case),
        "timeline": [
            {"status": e.to_status, "label": STATUS_LABELS.get(CaseStatus(e.to_status), e.to_status),
             "at": e.at.isoformat(), "note": e.note}
            for e in events
        ],
        "next_action": next_action,
        "promised_date": promised.isoformat(),
        "fee_fen": case.fee_fen,
    }


async def withdraw(*, user: User, case_no: str, reason: str = "") -> Case:
    """The citizen withdraws a case the platform has not accepted yet."""
    case = await my_case(user=user, case_no=case_no)
    if S.WITHDRAWN not in TRANSITIONS[case.status]:
        raise IllegalTransition("办件已受理，不能撤回；如需撤回请联系承办部门", code="withdraw_not_allowed")
    return await transition(case.id, S.WITHDRAWN, actor_type=ActorType.CITIZEN, actor_id=user.id,
                            note=reason.strip()[:200] or "申请人撤回")

"""The case lifecycle: the table of allowed moves and the one function that applies it.

Zhangban does not decide cases; the core platform does. Every change of status goes through
`transition()`, which refuses moves the table does not allow and writes a case event (who,
when, from, to, note): the citizen's timeline and the audit trail in one.
"""

from __future__ import annotations

import logging
from collections import deque
from datetime import UTC, date, datetime

from tortoise.transactions import in_transaction

from core.china_time import CHINA, add_working_days
from core.errors import Conflict
from core.kicks import NO_KICKS, Kicks
from handlers.push import notify
from storage.models import ActorType, Case, CaseEvent, CaseStatus

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


class IllegalTransition(Conflict):
    code, message = "illegal_transition", "当前办件状态不允许此操作"


async def transition(
    case_id: int,
    to: CaseStatus,
    *,
    actor_type: ActorType,
    actor_id: object | None = None,
    note: str = "",
    data: dict | None = None,
    kicks: Kicks = NO_KICKS,
) -> Case:
    """The case moved to `to` if the table allows it, with its event, in one transaction.

    A change made by anyone but the citizen writes the citizen's notification in the same
    transaction; its push is kicked after the commit."""
    notification = None
    async with in_transaction():
        case = await Case.select_for_update().get(id=case_id)
        if to not in TRANSITIONS[case.status]:
            log.warning(
                "illegal case transition refused",
                extra={"case_no": case.case_no, "from": case.status.value, "to": to.value},
            )
            raise IllegalTransition(details={"from": case.status.value, "to": to.value})
        event = await CaseEvent.create(
            case=case,
            actor_type=actor_type,
            actor_id=None if actor_id is None else str(actor_id),
            from_status=case.status.value,
            to_status=to.value,
            note=note,
            data=data or {},
        )
        await Case.filter(id=case.id).update(status=to, row_version=case.row_version + 1, updated_at=datetime.now(UTC))
        case.status, case.row_version = to, case.row_version + 1
        if actor_type != ActorType.CITIZEN:  # the citizen is not told about what they did themselves
            notification = await notify(case, kind=to.value, dedup_key=f"event:{event.id}", data=data)
    if notification is not None:
        await kicks.push([notification.id])
    return case


def promised_date(case: Case) -> date:
    """The date the item promises a decision by: submission plus its working days (needs service_item)."""
    return add_working_days(
        case.submitted_at.astimezone(CHINA).date(), case.service_item.content.get("promised_days", 0)
    )


def path_to(start: CaseStatus, goal: CaseStatus) -> list[CaseStatus] | None:
    """The shortest chain of allowed steps from `start` to `goal` (excluding start), or None.

    A step skipped over is recorded as inferred ("补记"), so a rejection or a withdrawal is
    never inferred: the chain passes through them only as its goal."""
    if start == goal:
        return []
    queue, parent = deque([start]), {start: None}
    while queue:
        node = queue.popleft()
        for nxt in sorted(TRANSITIONS[node], key=lambda s: s.value):
            if nxt in parent or (nxt in (S.WITHDRAWN, S.REJECTED) and nxt != goal):
                continue
            parent[nxt] = node
            if nxt == goal:
                chain = [nxt]
                while parent[chain[-1]] != start:
                    chain.append(parent[chain[-1]])
                return chain[::-1]
            queue.append(nxt)
    return None

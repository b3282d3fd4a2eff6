"""Cases: the lifecycle as a table, the one function that applies it, and the citizen's view.

Zhangban does not decide cases; the core platform does. Every change of status goes through
`transition()`, which refuses moves the table does not allow and writes a case event (who,
when, from, to, note) — the citizen's timeline and the audit trail in one.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta

from tortoise.transactions import in_transaction

from bridge.client import PlatformClient, PlatformError
from core.errors import Conflict, NotFound, Unavailable, Unprocessable, ValidationFailed
from handlers.numbers import CHINA
from handlers.push import kick, notify
from storage.crypto import FieldCipher
from storage.models import ActorType, Case, CaseEvent, CaseStatus, Outbox, User

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
) -> Case:
    """Moves a case to `to` if the table allows it, with its event, in one transaction."""
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
        await kick([notification.id])
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


def promised_date(case: Case) -> date:
    """The date the item promises a decision by: submission plus its working days (needs service_item)."""
    return add_working_days(
        case.submitted_at.astimezone(CHINA).date(), case.service_item.content.get("promised_days", 0)
    )


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
    elif case.fee_fen and case.status in (S.ACCEPTED, S.IN_REVIEW, S.APPROVED):
        next_action = {"type": "pay", "amount_fen": case.fee_fen}
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
    }


class PlatformUnavailable(Unavailable):
    code, message = "platform_unavailable", "审批部门系统暂时无法连接，请稍后再试"


async def withdraw(*, user: User, case_no: str, reason: str = "", platform: PlatformClient) -> Case:
    """The citizen withdraws a case the platform has not accepted yet.

    Before the case has left, the withdrawal is ours to make (an outbox row still tells the
    platform, in case the delivery was already on its way). Once the platform holds the case
    it decides: it is asked at once, and a case it has accepted meanwhile cannot be withdrawn."""
    case = await my_case(user=user, case_no=case_no)
    if S.WITHDRAWN not in TRANSITIONS[case.status]:
        raise IllegalTransition("办件已受理，不能撤回；如需撤回请联系承办部门", code="withdraw_not_allowed")
    note = reason.strip()[:200] or "申请人撤回"
    if case.status == S.DELIVERED:
        try:
            await platform.withdraw_case(case.case_no, reason=note)
        except PlatformError as exc:
            if exc.status == 409:
                raise IllegalTransition(
                    "审批部门已受理该申请，不能撤回；如需撤回请联系承办部门", code="withdraw_not_allowed"
                ) from None
            if exc.status != 404:
                raise PlatformUnavailable() from None
        return await transition(case.id, S.WITHDRAWN, actor_type=ActorType.CITIZEN, actor_id=user.id, note=note)
    async with in_transaction():
        case = await transition(case.id, S.WITHDRAWN, actor_type=ActorType.CITIZEN, actor_id=user.id, note=note)
        await Outbox.create(
            kind="withdraw_case", case_id=case.id, payload={"reason": note}, next_attempt_at=datetime.now(UTC)
        )
    return case


async def resubmit(
    *, user: User, case_no: str, fields: dict, materials: dict, cipher: FieldCipher, snapshot_column: str
) -> Case:
    """The citizen corrects exactly what the platform asked for, all at once, and resubmits.

    Only the listed fields and materials may change, and every one of them must be given.
    The corrected form is checked like a submission; the case keeps its number."""
    import json

    from handlers.drafts import Application, _set, review
    from handlers.forms import Problem
    from handlers.materials import lock_for_case, review_attached

    case = await my_case(user=user, case_no=case_no)
    if case.status != S.CORRECTION_REQUESTED:
        raise IllegalTransition("办件当前不需要补正", code="not_in_correction", details={"status": case.status.value})
    asked = correction_request(await CaseEvent.filter(case_id=case.id).order_by("id"))
    errors: dict[str, str] = {}
    for path in fields:
        if path not in asked["fields"]:
            errors[f"fields.{path}"] = "该项不在补正要求之内，不能修改"
    for slot in materials:
        if slot not in asked["materials"]:
            errors[f"materials.{slot}"] = "该材料不在补正要求之内，不能更换"
    for path in asked["fields"]:
        if path not in fields:
            errors[f"fields.{path}"] = "请补正此项"
    for slot in asked["materials"]:
        ids = materials.get(slot)
        if slot in materials and (not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids)):
            errors[f"materials.{slot}"] = "应为已上传文件编号的列表"
        elif slot not in materials:
            errors[f"materials.{slot}"] = "请重新上传此材料"
    if errors:
        raise ValidationFailed(errors)
    data = json.loads(cipher.decrypt(case.form_snapshot_enc, column=snapshot_column))
    for path, value in fields.items():
        _set(data, path, value)
    data.setdefault("materials", {})
    data["materials"].update(materials)
    application = Application(items=[case.service_item], bundle=None)
    problems = review(application, data, user)
    problems += [Problem(*p) for p in await review_attached(user.id, materials, application.materials)]
    if problems:
        raise Unprocessable(
            f"补正内容还有{len(problems)}处问题，请按提示修改",
            code="review_failed",
            details={"problems": [{"path": p.path, "code": p.code, "message": p.message} for p in problems]},
        )
    async with in_transaction():
        case = await transition(
            case.id,
            S.RESUBMITTED,
            actor_type=ActorType.CITIZEN,
            actor_id=user.id,
            note="已按要求补正并重新提交",
            data={"fields": sorted(fields), "materials": sorted(materials)},
        )
        await Case.filter(id=case.id).update(
            form_snapshot_enc=cipher.encrypt(json.dumps(data, ensure_ascii=False), column=snapshot_column),
            materials={**(case.materials or {}), **materials},
        )
        await lock_for_case([i for ids in materials.values() for i in ids])
        await Outbox.create(
            kind="resubmit_case",
            case_id=case.id,
            next_attempt_at=datetime.now(UTC),
            payload={
                "fields_enc": cipher.encrypt(json.dumps(fields, ensure_ascii=False), column="outbox.payload").hex(),
                "materials": materials,
            },
        )
    return case


async def case_for_official(*, official, case_no: str) -> Case:
    """A case an official may see: one of their department's items, or any case for an admin."""
    from core.errors import Forbidden

    case = await Case.get_or_none(case_no=case_no).prefetch_related("service_item")
    if case is None:
        raise NotFound("办件不存在", code="case_not_found")
    if "admin" not in (official.roles or []) and official.department != case.service_item.department:
        raise Forbidden("您不是该办件的承办部门人员，无权查看", code="case_forbidden")
    return case


async def pushes_for_official(*, official, case_no: str, ip: str, request_id: str) -> dict:
    """A case's notifications and push attempts, for an official of its department (audited)."""
    from handlers import audit
    from handlers.push import attempts_of_case

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

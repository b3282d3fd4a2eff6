"""The closed loop of a bad review (差评整改): call back, rectify, the citizen answers; or excluded (申诉).

A rectification opens with the 差评 (levels 1-2), for the department of the rated item, with two
deadlines in working days from its opening (China's calendar, `core.china_time`): the call-back
(回访, RECTIFY_VERIFY_DAYS) and the rectification (整改, RECTIFY_DAYS).

    verifying --verify--> rectifying --rectify--> awaiting_citizen --satisfied--> closed
        ^                                               |
        +------------- not satisfied: round + 1, new deadlines, escalated ----+
    any open status --exclusion approved by a supervisor--> excluded (kept, marked)

The department's call-back note and rectification text go to the citizen (inbox + push), and so
does the outcome of an exclusion request. A sweep reminds the department shortly before the
deadline ahead (`reminded_at`) and escalates to supervisors once it has passed (`escalated_at`).
Every step is a `LoopEvent` with who took it and when. Texts are sealed at rest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tortoise.transactions import in_transaction

from core.china_time import working_deadline
from core.cn_ids import mask_name
from core.errors import Conflict, NotFound
from core.kicks import Kicks
from handlers import audit
from handlers.evaluation.tags import label
from handlers.push import notify
from handlers.scoping import OFFICER, SUPERVISOR, in_scope, is_admin, require_role
from storage.crypto import FieldCipher
from storage.models import ActorType, Case, Evaluation, LoopEvent, Official, Rectification

log = logging.getLogger("zhangban.evaluation")

OPEN = ("verifying", "rectifying")  # a deadline runs
LIVE = ("verifying", "rectifying", "awaiting_citizen")  # not finished
SUBJECT = "rectification"
NOTE_COLUMN = "rectifications.verify_note"
TEXT_COLUMN = "rectifications.rectify_text"
COMMENT_COLUMN = "evaluations.comment"
EVENT_COLUMN = "loop_events.data"


@dataclass(frozen=True)
class LoopPolicy:
    """Deadlines (working days) and how long before one the department is reminded."""

    verify_days: int = 1
    rectify_days: int = 15
    remind_before: timedelta = timedelta(hours=8)

    def deadlines(self, start: datetime) -> tuple[datetime, datetime]:
        return working_deadline(start, self.verify_days), working_deadline(start, self.rectify_days)


def next_deadline(r: Rectification) -> tuple[str, datetime] | None:
    """The deadline ahead: ("verify", when) while calling back, ("rectify", when) while rectifying."""
    if r.status == "verifying":
        return "verify", r.verify_due_at
    if r.status == "rectifying":
        return "rectify", r.rectify_due_at
    return None


async def event(
    r: Rectification,
    action: str,
    *,
    actor_type: ActorType,
    actor_id: object | None = None,
    note: str = "",
    data: dict | None = None,
    at: datetime | None = None,
) -> LoopEvent:
    return await LoopEvent.create(
        subject_type=SUBJECT,
        subject_id=r.id,
        action=action,
        actor_type=actor_type,
        actor_id=None if actor_id is None else str(actor_id),
        note=note,
        data=data or {},
        at=at or datetime.now(UTC),
    )


async def open_rectification(evaluation: Evaluation, case: Case, policy: LoopPolicy, now: datetime) -> Rectification:
    """The rectification of a new 差评 (call inside the evaluation's transaction)."""
    verify_due, rectify_due = policy.deadlines(now)
    r = await Rectification.create(
        evaluation=evaluation,
        case=case,
        department=evaluation.department,
        status="verifying",
        verify_due_at=verify_due,
        rectify_due_at=rectify_due,
    )
    await event(
        r,
        "created",
        actor_type=ActorType.SYSTEM,
        note=f"差评（{label(evaluation.level)}）转{evaluation.department}核实整改",
        data={
            "level": evaluation.level,
            "verify_due_at": verify_due.isoformat(),
            "rectify_due_at": rectify_due.isoformat(),
        },
        at=now,
    )
    return r


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


class Rectifications:
    """The officials' side of the loop, the citizen's answer, and the deadline sweep."""

    def __init__(self, *, cipher: FieldCipher, kicks: Kicks, policy: LoopPolicy):
        self.cipher, self.kicks, self.policy = cipher, kicks, policy

    # -- reading -----------------------------------------------------------------------------

    def summary(self, r: Rectification, now: datetime) -> dict:
        ahead = next_deadline(r)
        return {
            "id": r.id,
            "case_no": r.case.case_no,
            "service_code": r.case.service_code,
            "service_name": r.case.service_name,
            "department": r.department,
            "level": r.evaluation.level,
            "level_label": label(r.evaluation.level),
            "tags": list(r.evaluation.tags or []),
            "status": r.status,
            "round": r.round,
            "verify_due_at": _iso(r.verify_due_at),
            "rectify_due_at": _iso(r.rectify_due_at),
            "next_deadline": ahead[0] if ahead else None,
            "next_due_at": _iso(ahead[1]) if ahead else None,
            "seconds_left": int((ahead[1] - now).total_seconds()) if ahead else None,
            "overdue": bool(ahead and ahead[1] < now),
            "reminded_at": _iso(r.reminded_at),
            "escalated_at": _iso(r.escalated_at),
            "exclusion": r.exclusion,
            "on_time": r.on_time,
            "created_at": _iso(r.created_at),
            "closed_at": _iso(r.closed_at),
        }

    async def list_for(
        self,
        *,
        official: Official,
        status: str | None = None,
        overdue: bool | None = None,
        escalated: bool | None = None,
        exclusion: str | None = None,
        now: datetime | None = None,
        limit: int = 200,
    ) -> dict:
        """The bad reviews of the official's department (every department for an admin), the
        nearest deadline first, each with the seconds left to it."""
        now = now or datetime.now(UTC)
        query = Rectification.all()
        if not is_admin(official):
            query = query.filter(department=official.department or "\x00none")
        if status:
            query = query.filter(status=status)
        if exclusion:
            query = query.filter(exclusion=exclusion)
        if escalated is not None:
            query = query.filter(escalated_at__isnull=not escalated)
        rows = await query.order_by("id").limit(2000).prefetch_related("case", "evaluation")
        items = [self.summary(r, now) for r in rows]
        if overdue is not None:
            items = [i for i in items if i["overdue"] == overdue]
        far = float("inf")
        items.sort(key=lambda i: (i["seconds_left"] if i["seconds_left"] is not None else far, i["id"]))
        return {"items": items[:limit], "now": now.isoformat()}

    async def _scoped(self, official: Official, rect_id: int) -> Rectification:
        r = await Rectification.get_or_none(id=rect_id).prefetch_related("case", "evaluation", "evaluation__user")
        if r is None:
            raise NotFound("评价不存在", code="not_found")
        in_scope(official, r.department, what="评价")
        return r

    def _open_text(self, enc: bytes | None, column: str) -> str | None:
        return self.cipher.decrypt_opt(enc, column=column)

    async def view(self, *, official: Official, rect_id: int, ip: str, request_id: str) -> dict:
        """One bad review with its comment, the department's texts and every step; the evaluator
        is shown masked (their clear data only through the audited citizens route). Audited."""
        r = await self._scoped(official, rect_id)
        user = r.evaluation.user
        events = await LoopEvent.filter(subject_type=SUBJECT, subject_id=r.id).order_by("id")
        await audit.record(
            actor_type=ActorType.OFFICIAL,
            actor_id=official.id,
            action="evaluation.review.read",
            target_type="rectification",
            target_id=r.id,
            request_id=request_id,
            ip=ip,
            detail={"case_no": r.case.case_no},
        )
        return {
            **self.summary(r, datetime.now(UTC)),
            "comment": self._open_text(r.evaluation.comment_enc, COMMENT_COLUMN),
            "evaluated_at": _iso(r.evaluation.created_at),
            "channel": r.evaluation.channel,
            "evaluator": {
                "user_id": user.id,
                "name_masked": mask_name(self.cipher.decrypt_opt(user.real_name_enc, column="users.real_name")),
                "identity_level": r.evaluation.identity_level,
            },
            "verify_note": self._open_text(r.verify_note_enc, NOTE_COLUMN),
            "verified_at": _iso(r.verified_at),
            "rectify_text": self._open_text(r.rectify_text_enc, TEXT_COLUMN),
            "rectified_at": _iso(r.rectified_at),
            "citizen_answer": r.citizen_answer,
            "answered_at": _iso(r.answered_at),
            "exclusion_reason": r.exclusion_reason,
            "exclusion_decision": r.exclusion_decision,
            "events": [self._event_view(e) for e in events],
        }

    def _event_view(self, e: LoopEvent) -> dict:
        data = dict(e.data or {})
        sealed = data.pop("text_enc", None)
        if sealed:
            data["text"] = self.cipher.decrypt(bytes.fromhex(sealed), column=EVENT_COLUMN)
        return {
            "action": e.action,
            "actor_type": e.actor_type.value,
            "actor_id": e.actor_id,
            "note": e.note,
            "data": data,
            "at": e.at.isoformat(),
        }

    # -- the department's steps ---------------------------------------------------------------

    async def _step(self, official: Official, rect_id: int, *roles: str) -> Rectification:
        r = await self._scoped(official, rect_id)
        require_role(official, *roles)
        return r

    async def _locked(self, r: Rectification, statuses: tuple[str, ...], message: str) -> Rectification:
        fresh = await Rectification.select_for_update().get(id=r.id)
        if fresh.status not in statuses:
            raise Conflict(message, code="rectification_step_not_allowed", details={"status": fresh.status})
        return fresh

    async def verify(self, *, official: Official, rect_id: int, note: str, now: datetime | None = None) -> dict:
        """The call-back (回访) is done: its note goes to the citizen; rectifying begins."""
        now = now or datetime.now(UTC)
        r = await self._step(official, rect_id, OFFICER, SUPERVISOR)
        async with in_transaction():
            fresh = await self._locked(r, ("verifying",), "该评价当前不在核实回访阶段")
            await Rectification.filter(id=fresh.id).update(
                status="rectifying", verified_at=now, verify_note_enc=self.cipher.encrypt(note, column=NOTE_COLUMN)
            )
            step = await event(
                fresh, "verified", actor_type=ActorType.OFFICIAL, actor_id=official.id, data=self._sealed(note), at=now
            )
            n = await notify(r.case, kind="evaluation_verified", dedup_key=f"loop:{step.id}", data={"text": note})
        await self._push(n)
        return await self._fresh_summary(r.id, now)

    async def rectify(self, *, official: Official, rect_id: int, text: str, now: datetime | None = None) -> dict:
        """The rectification is reported: it goes to the citizen, who answers satisfied or not."""
        now = now or datetime.now(UTC)
        r = await self._step(official, rect_id, OFFICER, SUPERVISOR)
        async with in_transaction():
            fresh = await self._locked(r, ("verifying", "rectifying"), "该评价当前不在整改阶段")
            on_time = now <= fresh.rectify_due_at
            await Rectification.filter(id=fresh.id).update(
                status="awaiting_citizen",
                verified_at=fresh.verified_at or now,
                rectified_at=now,
                rectify_text_enc=self.cipher.encrypt(text, column=TEXT_COLUMN),
                on_time=on_time if fresh.on_time is None else fresh.on_time and on_time,
            )
            step = await event(
                fresh,
                "rectified",
                actor_type=ActorType.OFFICIAL,
                actor_id=official.id,
                data={**self._sealed(text), "on_time": on_time},
                at=now,
            )
            n = await notify(r.case, kind="rectification_replied", dedup_key=f"loop:{step.id}", data={"text": text})
        await self._push(n)
        return await self._fresh_summary(r.id, now)

    async def request_exclusion(
        self, *, official: Official, rect_id: int, reason: str, now: datetime | None = None
    ) -> dict:
        """Asks a supervisor to leave a malicious or mistaken review out (申诉)."""
        now = now or datetime.now(UTC)
        r = await self._step(official, rect_id, OFFICER, SUPERVISOR)
        async with in_transaction():
            fresh = await self._locked(r, LIVE, "该评价已办结，不能申请不计入")
            if fresh.exclusion == "requested":
                raise Conflict("已提交申诉，等待审核", code="exclusion_pending")
            await Rectification.filter(id=fresh.id).update(exclusion="requested", exclusion_reason=reason)
            await event(
                fresh, "exclusion_requested", actor_type=ActorType.OFFICIAL, actor_id=official.id, note=reason, at=now
            )
        return await self._fresh_summary(r.id, now)

    async def decide_exclusion(
        self, *, official: Official, rect_id: int, approve: bool, reason: str, now: datetime | None = None
    ) -> dict:
        """A supervisor approves (the review is kept, marked excluded, the loop ends) or refuses
        (the loop goes on); the reasons are kept and the citizen is told the outcome."""
        now = now or datetime.now(UTC)
        r = await self._step(official, rect_id, SUPERVISOR)
        async with in_transaction():
            fresh = await Rectification.select_for_update().get(id=r.id)
            if fresh.exclusion != "requested":
                raise Conflict("该评价没有待审核的申诉", code="exclusion_not_requested")
            changes: dict = {"exclusion": "approved" if approve else "refused", "exclusion_decision": reason}
            if approve:
                changes.update(status="excluded", closed_at=now)
            await Rectification.filter(id=fresh.id).update(**changes)
            step = await event(
                fresh,
                "exclusion_approved" if approve else "exclusion_refused",
                actor_type=ActorType.OFFICIAL,
                actor_id=official.id,
                note=reason,
                at=now,
            )
            n = await notify(
                r.case,
                kind="evaluation_reviewed",
                dedup_key=f"loop:{step.id}",
                data={"approved": approve, "reason": reason},
            )
        await self._push(n)
        return await self._fresh_summary(r.id, now)

    async def reassign(
        self, *, official: Official, rect_id: int, department: str, reason: str, now: datetime | None = None
    ) -> dict:
        """A supervisor hands the review to another department (its deadlines run on)."""
        now = now or datetime.now(UTC)
        r = await self._step(official, rect_id, SUPERVISOR)
        if department == r.department:
            raise Conflict("已由该部门办理", code="same_department")
        async with in_transaction():
            fresh = await self._locked(r, LIVE, "该评价已办结，不能转办")
            await Rectification.filter(id=fresh.id).update(department=department)
            await event(
                fresh,
                "reassigned",
                actor_type=ActorType.OFFICIAL,
                actor_id=official.id,
                note=reason,
                data={"from": fresh.department, "to": department},
                at=now,
            )
        return {"id": r.id, "department": department}

    # -- the citizen's answer -----------------------------------------------------------------

    async def citizen_answer(
        self, *, rectification: Rectification, satisfied: bool, now: datetime | None = None
    ) -> dict:
        """Satisfied: the loop closes. Not satisfied: a new round with new deadlines, escalated."""
        now = now or datetime.now(UTC)
        async with in_transaction():
            fresh = await Rectification.select_for_update().get(id=rectification.id)
            if fresh.status != "awaiting_citizen":
                raise Conflict("整改结果尚未反馈，暂不能评价", code="rectification_not_awaiting_answer")
            answer = "satisfied" if satisfied else "not_satisfied"
            changes: dict = {"citizen_answer": answer, "answered_at": now}
            if satisfied:
                changes.update(status="closed", closed_at=now)
            else:
                verify_due, rectify_due = self.policy.deadlines(now)
                changes.update(
                    status="verifying",
                    round=fresh.round + 1,
                    verify_due_at=verify_due,
                    rectify_due_at=rectify_due,
                    escalated_at=now,
                    reminded_at=None,
                )
            await Rectification.filter(id=fresh.id).update(**changes)
            await event(
                fresh, f"citizen_{answer}", actor_type=ActorType.CITIZEN, actor_id=rectification.case.user_id, at=now
            )
            if not satisfied:
                await event(
                    fresh,
                    "escalated",
                    actor_type=ActorType.SYSTEM,
                    note="群众不满意，升级督办，进入第二轮整改" if fresh.round == 1 else "群众仍不满意，升级督办",
                    data={"round": fresh.round + 1, "cause": "not_satisfied"},
                    at=now,
                )
                log.warning("bad review escalated: citizen not satisfied", extra={"rectification": fresh.id})
        return {"status": changes.get("status"), "round": changes.get("round", fresh.round)}

    # -- deadlines -----------------------------------------------------------------------------

    async def sweep(self, *, now: datetime | None = None, limit: int = 1000) -> dict:
        """Reminds the department of a deadline within `remind_before` (once per deadline) and
        escalates one that has passed (once per deadline). Returns the counts."""
        now = now or datetime.now(UTC)
        reminded = escalated = 0
        rows = await Rectification.filter(status__in=OPEN).order_by("id").limit(limit)
        for r in rows:
            which, due = next_deadline(r)  # type: ignore[misc]
            if due <= now:
                if r.escalated_at is not None and r.escalated_at >= due:
                    continue
                if await Rectification.filter(id=r.id, status=r.status).update(escalated_at=now):
                    await event(
                        r,
                        "escalated",
                        actor_type=ActorType.SYSTEM,
                        note=("回访" if which == "verify" else "整改") + "已超期，升级至督办人员",
                        data={"deadline": which, "due_at": due.isoformat(), "cause": "overdue"},
                        at=now,
                    )
                    log.warning(
                        "bad review deadline passed: escalated",
                        extra={"rectification": r.id, "deadline": which, "department": r.department},
                    )
                    escalated += 1
            elif due - now <= self.policy.remind_before:
                if r.reminded_at is not None and r.reminded_at >= due - self.policy.remind_before:
                    continue
                if await Rectification.filter(id=r.id, status=r.status).update(reminded_at=now):
                    await event(
                        r,
                        "reminded",
                        actor_type=ActorType.SYSTEM,
                        note=("回访" if which == "verify" else "整改") + "即将到期，已提醒承办部门",
                        data={"deadline": which, "due_at": due.isoformat()},
                        at=now,
                    )
                    log.info(
                        "bad review deadline near: department reminded",
                        extra={"rectification": r.id, "deadline": which, "department": r.department},
                    )
                    reminded += 1
        return {"reminded": reminded, "escalated": escalated}

    # -- helpers ---------------------------------------------------------------------------------

    def _sealed(self, text: str) -> dict:
        return {"text_enc": self.cipher.encrypt(text, column=EVENT_COLUMN).hex()}

    async def _push(self, n) -> None:
        if n is not None:
            await self.kicks.push([n.id])

    async def _fresh_summary(self, rect_id: int, now: datetime) -> dict:
        r = await Rectification.get(id=rect_id).prefetch_related("case", "evaluation")
        return self.summary(r, now)

"""Consultations (咨询) and complaints (投诉): taken by the bot or the mini-program, routed to a
department, answered in the console on a deadline in working days, the answer carried back to
the citizen through the channel they used, and rated.

- **Routing.** The given service's department (or the department of the citizen's case), else
  the department of the best catalogue search match, else the duty department.
- **Deadlines.** `due_at` is the end of the n-th working day after the ticket was made
  (`TICKET_CONSULTATION_DAYS`, `TICKET_COMPLAINT_DAYS`; public holidays and 调休 counted). The
  deadline sweep reminds the department `TICKET_REMIND_HOURS` before it and escalates to the
  supervisors once it has passed.
- **The answer** is sealed at rest. It reaches the citizen as an inbox notification (dedup key
  per ticket), carried by the progress push pipeline (`handlers.push.Pusher`) through the route
  `route_of` gives: a bot ticket by a customer-service text while the follower is inside WeChat's
  48-hour window, else the official account's template message; a mini-program ticket by a
  subscribe message when the citizen has a grant. The inbox always has it.
- Every step is a `LoopEvent` (subject `ticket`) with who took it and when; every official's
  read of a ticket's text is audited.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tortoise.exceptions import IntegrityError
from tortoise.expressions import Q
from tortoise.transactions import in_transaction

from core.china_time import working_deadline
from core.errors import Conflict, NotFound, Unprocessable, ValidationFailed
from core.kicks import Kicks
from handlers import audit
from handlers.catalog.reader import CatalogueReader, published_departments
from handlers.numbers import next_number
from handlers.push import Route
from handlers.scoping import ADMIN, OFFICER, SUPERVISOR, in_scope, is_admin, require_role
from storage.crypto import FieldCipher
from storage.models import ActorType, Case, Follower, LoopEvent, Notification, Official, Ticket, User

KINDS = {"consultation": ("ZX", "咨询"), "complaint": ("TS", "投诉")}
ANSWERED = "ticket_answered"  # the notification kind of an answer
CONTENT_COLUMN, ANSWER_COLUMN = "tickets.content", "tickets.answer"
CUSTOM_WINDOW = timedelta(hours=48)
_TICKET_NO = re.compile(r"^(ZX|TS)\d{14}$")


def label_of(kind: str) -> str:
    return KINDS[kind][1]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CURSOR = re.compile(r"^(\d{1,17})-(\d{1,19})$")


def _cursor_of(ticket: Ticket) -> str:
    """A page's cursor: its last ticket's deadline (microseconds since the epoch) and id."""
    return f"{(ticket.due_at - _EPOCH) // timedelta(microseconds=1)}-{ticket.id}"


def _parse_cursor(cursor: str) -> tuple[datetime, int]:
    found = _CURSOR.match(cursor or "")
    if found is None or int(found.group(2)) > 2**63 - 1:
        raise ValidationFailed({"after": "翻页参数无效，请从第一页重新查看"})
    return _EPOCH + timedelta(microseconds=int(found.group(1))), int(found.group(2))


def ticket_page(ticket_no: str) -> str:
    return f"pages/ticket/detail?ticket_no={ticket_no}"


@dataclass(frozen=True)
class TicketPolicy:
    """Where a ticket goes and by when it must be answered (from the settings)."""

    consultation_days: int = 2
    complaint_days: int = 5
    duty_department: str = "泸州市政务服务中心"
    remind_before: timedelta = timedelta(hours=24)

    def days(self, kind: str) -> int:
        return self.consultation_days if kind == "consultation" else self.complaint_days

    def due_at(self, kind: str, created: datetime) -> datetime:
        return working_deadline(created, self.days(kind))

    async def route(
        self, catalogue: CatalogueReader, content: str, service_code: str | None = None
    ) -> tuple[str, str | None]:
        """(department, service code): the given service's, else the best search match's, else the duty department."""
        if service_code:
            guide = await catalogue.require_guide(code=service_code)
            return guide["department"], guide["code"]
        index = await catalogue.search_index()
        hits = index.search(content, limit=1)
        if hits and hits[0].score >= index.MIN_SCORE:
            guide = await catalogue.guide(hits[0].code)
            if guide is not None:
                return guide["department"], guide["code"]
        return self.duty_department, None


async def event(ticket: Ticket, action: str, actor_type: ActorType, actor_id: object | None, **data) -> None:
    note = str(data.pop("note", ""))
    await LoopEvent.create(
        subject_type="ticket",
        subject_id=ticket.id,
        action=action,
        actor_type=actor_type,
        actor_id=None if actor_id is None else str(actor_id),
        note=note,
        data=data,
    )


async def open_ticket(
    *,
    cipher: FieldCipher,
    policy: TicketPolicy,
    kind: str,
    content: str,
    department: str,
    service_code: str | None,
    dedup_key: str,
    channel: str,
    user_id: int | None,
    oa_openid: str = "",
    case_no: str | None = None,
    now: datetime | None = None,
) -> Ticket:
    """A new ticket with its deadline and its `created` event, in one transaction."""
    moved_clock = now is not None
    now = now or datetime.now(UTC)
    async with in_transaction():
        ticket = await Ticket.create(
            ticket_no=await next_number(KINDS[kind][0]),
            kind=kind,
            oa_openid=oa_openid,
            user_id=user_id,
            department=department,
            service_code=service_code,
            case_no=case_no,
            channel=channel,
            content_enc=cipher.encrypt(content[:2000], column=CONTENT_COLUMN),
            dedup_key=dedup_key,
            due_at=policy.due_at(kind, now),
        )
        if moved_clock:  # a ticket made at a given moment (a moved clock): it is dated then
            await Ticket.filter(id=ticket.id).update(created_at=now)
            ticket.created_at = now
        actor = (ActorType.CITIZEN, user_id) if user_id else (ActorType.SYSTEM, "bot")
        await event(ticket, "created", *actor, channel=channel, department=department, due_at=ticket.due_at.isoformat())
    return ticket


def confirmation(ticket: Ticket, policy: TicketPolicy) -> str:
    """What the citizen is told when the ticket is taken."""
    label = label_of(ticket.kind)
    return (
        f"您的{label}已受理，编号 {ticket.ticket_no}，已转交{ticket.department}，"
        f"将在{policy.days(ticket.kind)}个工作日内答复。"
    )


async def _answer_notification(ticket: Ticket, user_id: int, now: datetime) -> Notification:
    """The citizen's notification of the answer (one per ticket, by its dedup key); the answer itself
    stays sealed on the ticket and travels only in the push (`Tickets.route_of`)."""
    label = label_of(ticket.kind)
    return await Notification.create(
        dedup_key=f"ticket:{ticket.ticket_no}:answered",
        user_id=user_id,
        case_id=None,
        kind=ANSWERED,
        title=f"您的{label}已答复"[:64],
        body=f"您的{label}（编号 {ticket.ticket_no}）已由{ticket.department}答复，请在小程序中查看并评价。",
        page=ticket_page(ticket.ticket_no),
        next_attempt_at=now,
    )


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


class Tickets:
    """The ticket use cases of the mini-program, the console and the deadline sweep."""

    def __init__(self, *, catalogue: CatalogueReader, cipher: FieldCipher, policy: TicketPolicy, kicks: Kicks):
        self.catalogue, self.cipher, self.policy, self.kicks = catalogue, cipher, policy, kicks

    # -- the citizen's side ------------------------------------------------------------------

    async def create(
        self,
        *,
        user: User,
        kind: str,
        content: str,
        service_code: str | None = None,
        case_no: str | None = None,
        now: datetime | None = None,
    ) -> dict:
        """A ticket from the mini-program; a case named must be the citizen's own (else 404)."""
        if case_no:
            case = await Case.get_or_none(case_no=case_no, user_id=user.id)
            if case is None:
                raise NotFound("办件不存在", code="case_not_found")
            service_code = service_code or case.service_code
        department, code = await self.policy.route(self.catalogue, content, service_code)
        ticket = await open_ticket(
            cipher=self.cipher,
            policy=self.policy,
            kind=kind,
            content=content,
            department=department,
            service_code=code,
            dedup_key=f"mp:{user.id}:{uuid.uuid4().hex}",
            channel="miniprogram",
            user_id=user.id,
            case_no=case_no,
            now=now,
        )
        return self._citizen_view(ticket)

    async def mine(self, *, user: User, before: int | None, limit: int) -> dict:
        query = Ticket.filter(user_id=user.id)
        if before is not None:
            query = query.filter(id__lt=before)
        rows = await query.order_by("-id").limit(limit + 1)
        page = rows[:limit]
        return {
            "items": [self._citizen_view(t) for t in page],
            "next_cursor": page[-1].id if len(rows) > limit else None,
        }

    async def rate(self, *, user: User, ticket_no: str, level: int, now: datetime | None = None) -> dict:
        """The citizen's rating of the answer, once (409 a second time, or before an answer)."""
        now = now or datetime.now(UTC)
        ticket = await self._own(user, ticket_no)
        if ticket.answered_at is None:
            raise Conflict("该工单尚未答复，答复后再评价", code="ticket_not_answered")
        async with in_transaction():
            changed = await Ticket.filter(id=ticket.id, rating__isnull=True).update(
                rating=level, rated_at=now, status="closed"
            )
            if not changed:
                raise Conflict("您已评价过该答复", code="ticket_already_rated")
            await event(ticket, "rated", ActorType.CITIZEN, user.id, level=level)
        await ticket.refresh_from_db()
        return self._citizen_view(ticket)

    async def _own(self, user: User, ticket_no: str) -> Ticket:
        ticket = await Ticket.get_or_none(ticket_no=ticket_no, user_id=user.id)
        if ticket is None:
            raise NotFound("工单不存在", code="ticket_not_found")
        return ticket

    def _citizen_view(self, ticket: Ticket) -> dict:
        return {
            "ticket_no": ticket.ticket_no,
            "kind": ticket.kind,
            "kind_label": label_of(ticket.kind),
            "channel": ticket.channel,
            "status": ticket.status,
            "department": ticket.department,
            "service_code": ticket.service_code,
            "case_no": ticket.case_no,
            "content": self.cipher.decrypt(ticket.content_enc, column=CONTENT_COLUMN),
            "created_at": _iso(ticket.created_at),
            "due_at": _iso(ticket.due_at),
            "answer": self._answer_text(ticket),
            "answered_at": _iso(ticket.answered_at),
            "rating": ticket.rating,
            "rated_at": _iso(ticket.rated_at),
        }

    def _answer_text(self, ticket: Ticket) -> str | None:
        return self.cipher.decrypt(ticket.answer_enc, column=ANSWER_COLUMN) if ticket.answer_enc else None

    # -- the console -------------------------------------------------------------------------

    async def list_for(
        self,
        *,
        official: Official,
        kind: str | None = None,
        status: str | None = None,
        overdue: bool | None = None,
        escalated: bool | None = None,
        department: str | None = None,
        limit: int = 50,
        after: str | None = None,
        now: datetime | None = None,
    ) -> dict:
        """The official's department's tickets (an admin's: all, or `department`), soonest deadline first,
        keyset-paginated on (deadline, id): `after` is the `next_cursor` of the previous page.
        No citizen's text is shown here, so the list is not a read of personal data."""
        require_role(official, OFFICER, SUPERVISOR, ADMIN)
        now = now or datetime.now(UTC)
        if is_admin(official):
            query = Ticket.filter(department=department) if department else Ticket.all()
        else:
            query = Ticket.filter(department=official.department or "\x00-none")
        if kind:
            query = query.filter(kind=kind)
        if status:
            query = query.filter(status=status)
        if overdue is True:
            query = query.filter(status="open", due_at__lte=now)
        elif overdue is False:
            query = query.exclude(status="open", due_at__lte=now)
        if escalated is True:
            query = query.filter(escalated_at__isnull=False)
        elif escalated is False:
            query = query.filter(escalated_at__isnull=True)
        if after is not None:
            due, last_id = _parse_cursor(after)
            query = query.filter(Q(due_at__gt=due) | Q(due_at=due, id__gt=last_id))
        rows = await query.order_by("due_at", "id").limit(limit + 1)
        page = rows[:limit]
        more = len(rows) > limit and page[-1].due_at is not None
        return {
            "items": [self._official_summary(t, now) for t in page],
            "next_cursor": _cursor_of(page[-1]) if more else None,
        }

    @staticmethod
    def _official_summary(ticket: Ticket, now: datetime) -> dict:
        open_ = ticket.status == "open"
        seconds = int((ticket.due_at - now).total_seconds()) if ticket.due_at else None
        return {
            "ticket_no": ticket.ticket_no,
            "kind": ticket.kind,
            "kind_label": label_of(ticket.kind),
            "channel": ticket.channel,
            "status": ticket.status,
            "department": ticket.department,
            "service_code": ticket.service_code,
            "case_no": ticket.case_no,
            "created_at": _iso(ticket.created_at),
            "due_at": _iso(ticket.due_at),
            "seconds_left": seconds if open_ else None,
            "overdue": bool(open_ and seconds is not None and seconds <= 0),
            "reminded_at": _iso(ticket.reminded_at),
            "escalated_at": _iso(ticket.escalated_at),
            "answered_at": _iso(ticket.answered_at),
            "rating": ticket.rating,
        }

    async def _in_scope(self, official: Official, ticket_no: str) -> Ticket:
        ticket = await Ticket.get_or_none(ticket_no=ticket_no) if _TICKET_NO.match(ticket_no) else None
        if ticket is None:
            raise NotFound("工单不存在", code="ticket_not_found")
        try:
            in_scope(official, ticket.department, what="工单")
        except NotFound:
            raise NotFound("工单不存在", code="ticket_not_found") from None
        return ticket

    async def read_for(self, *, official: Official, ticket_no: str, ip: str, request_id: str) -> dict:
        """One ticket with its text and answer in clear and every step; the read is audited first."""
        require_role(official, OFFICER, SUPERVISOR, ADMIN)
        ticket = await self._in_scope(official, ticket_no)
        await audit.record(
            actor_type=ActorType.OFFICIAL,
            actor_id=official.id,
            action="ticket.read",
            target_type="ticket",
            target_id=ticket.ticket_no,
            request_id=request_id,
            ip=ip,
        )
        return await self._official_view(ticket)

    async def _official_view(self, ticket: Ticket) -> dict:
        events = await LoopEvent.filter(subject_type="ticket", subject_id=ticket.id).order_by("id")
        return {
            **self._official_summary(ticket, datetime.now(UTC)),
            "content": self.cipher.decrypt(ticket.content_enc, column=CONTENT_COLUMN),
            "answer": self._answer_text(ticket),
            "answered_by": ticket.answered_by,
            "events": [
                {
                    "action": e.action,
                    "actor_type": e.actor_type.value,
                    "actor_id": e.actor_id,
                    "note": e.note,
                    "data": e.data,
                    "at": e.at.isoformat(),
                }
                for e in events
            ],
        }

    async def answer(
        self, *, official: Official, ticket_no: str, text: str, ip: str, request_id: str, now: datetime | None = None
    ) -> dict:
        """The department's answer: sealed, an event, and the citizen's notification (pushed after the commit)."""
        require_role(official, OFFICER, SUPERVISOR)
        now = now or datetime.now(UTC)
        ticket = await self._in_scope(official, ticket_no)
        user_id = await self._citizen_of(ticket)
        async with in_transaction():
            changed = await Ticket.filter(id=ticket.id, status="open", answered_at__isnull=True).update(
                status="answered",
                answer_enc=self.cipher.encrypt(text, column=ANSWER_COLUMN),
                answered_at=now,
                answered_by=official.id,
                user_id=user_id,
            )
            if not changed:
                raise Conflict("该工单已答复", code="ticket_already_answered")
            on_time = bool(ticket.due_at and now <= ticket.due_at)
            await event(ticket, "answered", ActorType.OFFICIAL, official.id, on_time=on_time)
            notification = None
            if user_id is not None:
                notification = await _answer_notification(ticket, user_id, now)
            await audit.record(
                actor_type=ActorType.OFFICIAL,
                actor_id=official.id,
                action="ticket.answer",
                target_type="ticket",
                target_id=ticket.ticket_no,
                request_id=request_id,
                ip=ip,
            )
        if notification is not None:
            await self.kicks.push([notification.id])
        await ticket.refresh_from_db()
        return await self._official_view(ticket)

    @staticmethod
    async def _citizen_of(ticket: Ticket) -> int | None:
        """The citizen's account: the ticket's, or the follower's once linked by unionid since."""
        if ticket.user_id is not None:
            return ticket.user_id
        if not ticket.oa_openid:
            return None
        follower = await Follower.get_or_none(oa_openid=ticket.oa_openid)
        if follower is not None and follower.user_id is not None:
            return follower.user_id
        user = await User.get_or_none(oa_openid=ticket.oa_openid)
        return user.id if user else None

    async def reassign(
        self, *, official: Official, ticket_no: str, department: str, reason: str, ip: str, request_id: str
    ) -> dict:
        """A supervisor hands an open ticket to another department; the deadline stays."""
        require_role(official, SUPERVISOR)
        ticket = await self._in_scope(official, ticket_no)
        known = {d.get("name") for d in await published_departments()} | {self.policy.duty_department}
        if department not in known:
            raise Unprocessable("没有这个部门", code="department_unknown", details={"department": department})
        async with in_transaction():
            changed = await Ticket.filter(id=ticket.id, status="open").update(department=department, reminded_at=None)
            if not changed:
                raise Conflict("该工单已答复", code="ticket_already_answered")
            await event(
                ticket,
                "reassigned",
                ActorType.OFFICIAL,
                official.id,
                note=reason,
                **{"from": ticket.department, "to": department},
            )
            await audit.record(
                actor_type=ActorType.OFFICIAL,
                actor_id=official.id,
                action="ticket.reassign",
                target_type="ticket",
                target_id=ticket.ticket_no,
                request_id=request_id,
                ip=ip,
                detail={"from": ticket.department, "to": department},
            )
        await ticket.refresh_from_db()
        return self._official_summary(ticket, datetime.now(UTC))

    # -- deadlines ---------------------------------------------------------------------------

    async def sweep_deadlines(self, *, now: datetime | None = None) -> dict:
        """Reminds departments of open tickets due within `remind_before`, escalates the overdue ones."""
        now = now or datetime.now(UTC)
        reminded = escalated = 0
        due_soon = await Ticket.filter(
            status="open", reminded_at__isnull=True, due_at__gt=now, due_at__lte=now + self.policy.remind_before
        ).limit(500)
        for ticket in due_soon:
            async with in_transaction():
                if await Ticket.filter(id=ticket.id, status="open", reminded_at__isnull=True).update(reminded_at=now):
                    await event(
                        ticket,
                        "reminded",
                        ActorType.SYSTEM,
                        "deadline_sweep",
                        department=ticket.department,
                        due_at=ticket.due_at.isoformat(),
                    )
                    reminded += 1
        overdue = await Ticket.filter(status="open", escalated_at__isnull=True, due_at__lte=now).limit(500)
        for ticket in overdue:
            async with in_transaction():
                if await Ticket.filter(id=ticket.id, status="open", escalated_at__isnull=True).update(escalated_at=now):
                    await event(
                        ticket,
                        "escalated",
                        ActorType.SYSTEM,
                        "deadline_sweep",
                        department=ticket.department,
                        due_at=ticket.due_at.isoformat(),
                        to="supervisor",
                    )
                    escalated += 1
        return {"reminded": reminded, "escalated": escalated, "linked": await self._answers_for_linked(now)}

    async def _answers_for_linked(self, now: datetime) -> int:
        """Answers of bot tickets whose follower had no account then and has one now: their notification."""
        made = []
        pending = await Ticket.filter(user_id__isnull=True, answered_at__isnull=False).exclude(oa_openid="").limit(500)
        for ticket in pending:
            user_id = await self._citizen_of(ticket)
            if user_id is None:
                continue
            try:
                async with in_transaction():
                    if await Ticket.filter(id=ticket.id, user_id__isnull=True).update(user_id=user_id):
                        made.append((await _answer_notification(ticket, user_id, now)).id)
            except IntegrityError:  # its notification exists already
                continue
        if made:
            await self.kicks.push(made)
        return len(made)

    # -- how the answer travels ----------------------------------------------------------------

    async def route_of(self, notification: Notification) -> Route | None:
        """The push route of an answer's notification (`Pusher.routes`): by the channel the citizen used."""
        ticket_no = notification.dedup_key.split(":")[1] if notification.dedup_key.startswith("ticket:") else ""
        ticket = await Ticket.get_or_none(ticket_no=ticket_no)
        if ticket is None:
            return None
        label = label_of(ticket.kind)
        if ticket.channel == "official_account" and ticket.oa_openid:
            answer = self._answer_text(ticket) or ""
            text = f"【{label}答复】编号 {ticket.ticket_no}\n{answer}\n——{ticket.department}"
            return Route(
                reference=ticket.ticket_no,
                phrase="已答复",
                channels=("custom", "template"),
                oa_openid=ticket.oa_openid,
                text=text,
                custom_window=CUSTOM_WINDOW,
            )
        return Route(reference=ticket.ticket_no, phrase="已答复", channels=("subscribe",))

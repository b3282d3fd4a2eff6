"""Reading the audit trail: who did or read what, searched by official, citizen, action and date.

Who may read it:
- an `admin` reads every row;
- a `supervisor` reads the rows of the officials of their own department (what the people they
  answer for did and read), and nothing else: not the citizens' own actions, not the system's,
  not another department's officials;
- nobody else (`403 role_required`).

Filters: `official` (a username: that official's rows), `citizen` (a user id: rows whose target
is the citizen, their cases, tickets or materials), `action` (exact, or a prefix ending in `*`,
e.g. `personal_data.*`), and a date range in China time. Rows come newest first, keyset-paginated
on the id (the cursor is the last row's id); no COUNT. An export reads the same rows in batches
of `EXPORT_BATCH`, at most `EXPORT_MAX`, and is itself audited (`audit.export`).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta

from tortoise.expressions import Q

from core.china_time import CHINA
from core.errors import ValidationFailed
from handlers import audit
from handlers.scoping import ADMIN, SUPERVISOR, is_admin, require_role
from storage.models import ActorType, AuditLog, Case, Material, Official, Ticket

EXPORT_BATCH = 500
EXPORT_MAX = 50_000
ACTION = re.compile(r"^[a-z_][a-z0-9_.]{0,62}\*?$")
# A citizen's own objects that audit rows name as their target, at most this many of each kind.
TARGETS_PER_KIND = 1000


def _window(since: date | None, until: date | None) -> tuple[datetime | None, datetime | None]:
    if since and until and until < since:
        raise ValidationFailed({"until": "结束日期不能早于开始日期"})
    # In UTC: SQLite compares the stored text, which is UTC.
    start = datetime.combine(since, time.min, tzinfo=CHINA).astimezone(UTC) if since else None
    end = datetime.combine(until + timedelta(days=1), time.min, tzinfo=CHINA).astimezone(UTC) if until else None
    return start, end


async def _citizen_targets(user_id: int) -> Q:
    """Rows about a citizen: the citizen themself, or one of their cases, tickets or materials."""
    recent = TARGETS_PER_KIND
    case_nos = await Case.filter(user_id=user_id).order_by("-id").limit(recent).values_list("case_no", flat=True)
    ticket_nos = await Ticket.filter(user_id=user_id).order_by("-id").limit(recent).values_list("ticket_no", flat=True)
    material_ids = (
        await Material.filter(user_id=user_id).order_by("-created_at").limit(recent).values_list("id", flat=True)
    )
    about = Q(target_type="user", target_id=str(user_id))
    for kind, ids in (("case", case_nos), ("ticket", ticket_nos), ("material", material_ids)):
        if ids:
            about |= Q(target_type=kind, target_id__in=list(ids))
    return about


async def _scope(official: Official) -> list[str] | None:
    """The official ids whose rows this official may read (None: every row, for an admin)."""
    require_role(official, SUPERVISOR, ADMIN)
    if is_admin(official):
        return None
    if not official.department:
        return []
    return [str(i) for i in await Official.filter(department=official.department).values_list("id", flat=True)]


async def _query(
    *,
    official: Official,
    actor: str | None,
    citizen: int | None,
    action: str | None,
    since: date | None,
    until: date | None,
):
    """The filtered query (without the cursor), or None when nothing can match."""
    if action is not None and not ACTION.match(action):
        raise ValidationFailed({"action": "操作名称只能包含小写字母、数字、下划线和点，可以 * 结尾表示前缀"})
    start, end = _window(since, until)
    visible = await _scope(official)
    query = AuditLog.all()
    if visible is not None:
        if not visible:
            return None
        query = query.filter(actor_type=ActorType.OFFICIAL, actor_id__in=visible)
    if actor is not None:
        actor_id = await Official.filter(username=actor).values_list("id", flat=True)
        if not actor_id or (visible is not None and str(actor_id[0]) not in visible):
            return None
        query = query.filter(actor_type=ActorType.OFFICIAL, actor_id=str(actor_id[0]))
    if citizen is not None:
        query = query.filter(await _citizen_targets(citizen))
    if action is not None:
        query = query.filter(action__startswith=action[:-1]) if action.endswith("*") else query.filter(action=action)
    if start is not None:
        query = query.filter(at__gte=start)
    if end is not None:
        query = query.filter(at__lt=end)
    return query


async def _rows(page: list[AuditLog]) -> list[dict]:
    ids = {int(r.actor_id) for r in page if r.actor_type == ActorType.OFFICIAL and (r.actor_id or "").isdigit()}
    officials = {
        str(i): (username, name)
        for i, username, name in (
            await Official.filter(id__in=ids).values_list("id", "username", "display_name") if ids else []
        )
    }
    out = []
    for r in page:
        by_official = r.actor_type == ActorType.OFFICIAL
        username, name = officials.get(r.actor_id or "", (None, None)) if by_official else (None, None)
        out.append(
            {
                "id": r.id,
                "at": r.at.isoformat(),
                "actor_type": r.actor_type.value,
                "actor_id": r.actor_id,
                "actor_username": username,
                "actor_name": name,
                "action": r.action,
                "target_type": r.target_type,
                "target_id": r.target_id,
                "ip": r.ip,
                "request_id": r.request_id,
                "detail": r.detail or {},
            }
        )
    return out


async def search(
    *,
    official: Official,
    actor: str | None = None,
    citizen: int | None = None,
    action: str | None = None,
    since: date | None = None,
    until: date | None = None,
    before: int | None = None,
    limit: int = 50,
) -> dict:
    """A page of the audit rows the official may read, newest first, and the next page's cursor."""
    query = await _query(official=official, actor=actor, citizen=citizen, action=action, since=since, until=until)
    if query is None:
        return {"items": [], "next_cursor": None}
    if before is not None:
        query = query.filter(id__lt=before)
    rows = await query.order_by("-id").limit(limit + 1)
    page = rows[:limit]
    return {"items": await _rows(page), "next_cursor": page[-1].id if len(rows) > limit else None}


async def export(
    *,
    official: Official,
    actor: str | None = None,
    citizen: int | None = None,
    action: str | None = None,
    since: date | None = None,
    until: date | None = None,
    ip: str,
    request_id: str,
    batch: int = EXPORT_BATCH,
    most: int = EXPORT_MAX,
) -> AsyncIterator[dict]:
    """Every row of a search (at most `most`), newest first, read in keyset batches of `batch`.

    Await it (rights and input are checked, and the export audited, before any row is read),
    then iterate the rows."""
    query = await _query(official=official, actor=actor, citizen=citizen, action=action, since=since, until=until)
    own = await audit.record(
        actor_type=ActorType.OFFICIAL,
        actor_id=official.id,
        action="audit.export",
        target_type="audit_log",
        request_id=request_id,
        ip=ip,
        detail={
            "official": actor,
            "citizen": citizen,
            "action": action,
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
        },
    )

    async def rows() -> AsyncIterator[dict]:
        if query is None:
            return
        # The export lists what was there when it was asked for: the rows below its own.
        before, sent = own.id, 0
        while sent < most:
            wanted = min(batch, most - sent)
            found = await query.filter(id__lt=before).order_by("-id").limit(wanted)
            for row in await _rows(found):
                yield row
            sent += len(found)
            if len(found) < wanted:
                return
            before = found[-1].id

    return rows()

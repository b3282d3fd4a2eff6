"""What the core platform tells us about a case, applied exactly once and never backwards.

Platform callbacks carry a per-case sequence number. An event at or below the case's last
sequence is a duplicate or a late arrival and changes nothing; a newer one moves the case,
recording any steps the platform skipped over, so a case never moves backwards.

The hot path of platform callbacks, so it is written in SQL: the case is read without a lock,
the change planned from what was read, and written by one conditional statement (on
PostgreSQL one statement moves the case, writes its events and the citizen's notification;
on SQLite a short transaction of three). The write applies only if the case's sequence and
status are still those read; otherwise someone moved it meanwhile and the event is planned
again from the new row. The row lock is held for that one statement, not for a round trip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.transactions import in_transaction

from core.kicks import Kicks
from handlers.cases.lifecycle import path_to
from handlers.payments.refunds import refund_case_fees
from handlers.push import NOTIFICATION_COLUMNS, NOTIFICATION_VALUES, PG_NOTIFICATION_VALUES, notification_values
from storage.models import ActorType, CaseStatus
from storage.sql import connection, db_json, is_postgres, rows

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


# A case that ends so gives its paid fee back.
_REFUNDING = {S.REJECTED: "case_rejected"}
_PLATFORM = ActorType.PLATFORM.value


@dataclass
class _Plan:
    """What one event does to the case read: the columns it sets, the events it records (from,
    to, note, data) and the notification about the last one."""

    result: str = "applied"
    sets: dict = field(default_factory=dict)
    steps: int = 0  # status steps taken: the row version moves by as many
    events: list[tuple[str, str, str, str]] = field(default_factory=list)
    notify: tuple[str, dict] | None = None  # (kind, data)
    refund_cause: str | None = None


def _plan(status: CaseStatus, *, seq: int, event: str, data: dict, at: str | None, now: datetime) -> _Plan:
    target = EVENT_STATUS[event]
    plan = _Plan(sets={"platform_seq": seq, "platform_heard_at": now})
    if target is None:  # fee assessed: no status change
        amount = int(data["amount_fen"])
        notice_no = str(data["notice_no"])[:64] if data.get("notice_no") else None
        plan.sets.update(fee_fen=amount, fee_ref=f"platform:{seq}", fee_notice_no=notice_no, fee_paid_at=None)
        note = f"应缴费用 {amount / 100:.2f} 元"
        plan.events.append((status.value, status.value, note, db_json({"seq": seq, "event": event, **data})))
        plan.notify = (event, data)
        return plan
    chain = path_to(status, target)
    if not chain:
        plan.result = "ignored"  # e.g. a late event for a state already left, or a withdrawn case
        return plan
    previous = status
    for step in chain:
        skipped = step != target
        note = EVENT_NOTES.get(step.value, "")
        if skipped:
            note += "（补记）"
        elif data.get("reason"):
            note += f"：{str(data['reason'])[:200]}"
        payload = {"seq": seq, "event": event, "at": at, **({} if skipped else data)}
        plan.events.append((previous.value, step.value, note, db_json(payload)))
        previous = step
    # One notification for the change, about where the case is now: the steps the platform
    # skipped over are history, not news.
    plan.notify = (target.value, data)
    plan.sets["status"] = target.value
    plan.steps = len(chain)
    plan.refund_cause = _REFUNDING.get(target)
    return plan


def _set_clause(plan: _Plan) -> str:
    return ", ".join([f"{column} = ?" for column in plan.sets] + ["row_version = row_version + ?"])


async def _write_postgres(conn: BaseDBAsyncClient, case: dict, plan: _Plan, now: datetime) -> tuple[bool, int | None]:
    """One statement: the case moved if still as read, its events, the notification."""
    sql = (
        f"WITH moved AS (UPDATE cases SET {_set_clause(plan)} WHERE id = ? AND platform_seq = ? AND status = ? "
        "RETURNING id), "
        "written AS (INSERT INTO case_events (case_id, at, actor_type, from_status, to_status, note, data) "
        "SELECT moved.id, ?::timestamptz, ?::text, e.f, e.t, e.n, e.d FROM moved, "
        "unnest(?::text[], ?::text[], ?::text[], ?::jsonb[]) WITH ORDINALITY AS e(f, t, n, d, i) "
        "ORDER BY e.i RETURNING id), "
        f"told AS (INSERT INTO notifications (dedup_key, {NOTIFICATION_COLUMNS}) "
        f"SELECT 'event:' || max(written.id), {PG_NOTIFICATION_VALUES} FROM written HAVING count(*) > 0 "
        "RETURNING id) "
        "SELECT (SELECT count(*) FROM moved) AS moved, (SELECT id FROM told) AS notification_id"
    )
    kind, data = plan.notify or ("", {})
    told = notification_values(case, kind, data, now) if plan.notify else [None] * 9
    values = [*plan.sets.values(), plan.steps, case["id"], case["platform_seq"], case["status"], now, _PLATFORM]
    values += [[e[i] for e in plan.events] for i in range(4)]
    [row] = await rows(conn, sql, values + told)
    return bool(row["moved"]), row["notification_id"]


async def _write_sqlite(conn: BaseDBAsyncClient, case: dict, plan: _Plan, now: datetime) -> tuple[bool, int | None]:
    """The same in three statements (SQLite has no writing WITH); call inside a transaction."""
    moved = await rows(
        conn,
        f"UPDATE cases SET {_set_clause(plan)} WHERE id = ? AND platform_seq = ? AND status = ? RETURNING id",
        [*plan.sets.values(), plan.steps, case["id"], case["platform_seq"], case["status"]],
    )
    if not moved or not plan.events:
        return bool(moved), None
    written = await rows(
        conn,
        "INSERT INTO case_events (case_id, at, actor_type, from_status, to_status, note, data) VALUES "
        + ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(plan.events))
        + " RETURNING id",
        [v for e in plan.events for v in (case["id"], now, _PLATFORM, *e)],
    )
    kind, data = plan.notify
    [told] = await rows(
        conn,
        f"INSERT INTO notifications (dedup_key, {NOTIFICATION_COLUMNS}) VALUES (?, {NOTIFICATION_VALUES}) RETURNING id",
        [f"event:{max(r['id'] for r in written)}", *notification_values(case, kind, data, now)],
    )
    return True, told["id"]


async def apply_platform_event(*, case_no: str, seq: int, event: str, data: dict, at: str | None, kicks: Kicks) -> str:
    """What one platform callback did: 'applied', 'duplicate' (old seq), 'ignored' (cannot
    apply) or 'unknown_case'.

    The change, its case events and the citizen's notification commit together; the push job
    is kicked after the commit (the push sweep picks up a kick that was lost)."""
    conn = connection()
    postgres = is_postgres(conn)
    while True:
        found = await rows(
            conn,
            "SELECT id, case_no, status, platform_seq, user_id, service_code, service_name FROM cases "
            "WHERE case_no = ?",
            [case_no],
        )
        if not found:
            return "unknown_case"
        case = found[0]
        if seq <= case["platform_seq"]:
            return "duplicate"
        now = datetime.now(UTC)
        plan = _plan(S(case["status"]), seq=seq, event=event, data=data, at=at, now=now)
        refunds = 0
        if postgres and plan.refund_cause is None:
            moved, notification_id = await _write_postgres(conn, case, plan, now)
        else:
            async with in_transaction() as tx:
                write = _write_postgres if postgres else _write_sqlite
                moved, notification_id = await write(tx, case, plan, now)
                if moved and plan.refund_cause is not None:
                    refunds = await refund_case_fees(case["id"], cause=plan.refund_cause)
        if moved:
            break
        # Moved by someone else since it was read: plan again from the new row.
    if notification_id is not None:
        await kicks.push([notification_id])
    if refunds:
        await kicks.refunds()
    return plan.result

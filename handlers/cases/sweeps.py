"""Periodic sweeps over cases: ask the platform about silent cases, mark overdue ones.

(Outbox rows stuck in flight are re-queued by the relay itself: a claim is a lease of
OUTBOX_STUCK_S, after which the row is due again.)
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from tortoise.expressions import Q
from tortoise.transactions import in_transaction

from bridge.client import PlatformClient, PlatformError
from core.china_time import CHINA
from core.kicks import Kicks
from handlers.cases.lifecycle import promised_date
from handlers.cases.platform_events import apply_platform_event
from handlers.push import notify
from storage.models import Case, CaseStatus

log = logging.getLogger("zhangban.sweeps")
S = CaseStatus
# Cases the platform still owes us news about.
WAITING = (S.DELIVERED, S.ACCEPTED, S.IN_REVIEW, S.RESUBMITTED)
# Cases still open against their promised date (correction time is the citizen's, not counted here).
OPEN = (S.SUBMITTED, S.DELIVERED, S.ACCEPTED, S.IN_REVIEW, S.RESUBMITTED)
# The platform's status -> the callback event that would have told us.
STATUS_EVENT = {
    "accepted": "accepted",
    "in_review": "in_review",
    "correction_requested": "correction_requested",
    "approved": "approved",
    "rejected": "rejected",
    "result_issued": "result_issued",
    "closed": "closed",
}


async def query_silent_cases(*, platform: PlatformClient, silence: timedelta, kicks: Kicks, limit: int = 200) -> int:
    """How many cases silent for `silence` had moved on at the platform; what was missed is applied.

    A case the platform moved on (a higher seq) gets the missed step as if its callback had
    come, so the citizen is told; one that has not moved is only marked as heard from."""
    cutoff = datetime.now(UTC) - silence
    rows = (
        await Case.filter(Q(status__in=WAITING) & (Q(platform_heard_at__lt=cutoff) | Q(platform_heard_at=None)))
        .order_by("platform_heard_at")
        .limit(limit)
    )
    moved = 0
    for case in rows:
        try:
            answer = await platform.case_status(case.case_no)
        except PlatformError as exc:
            log.warning("platform status query failed", extra={"case_no": case.case_no, "error": str(exc)})
            if exc.retryable:
                break  # the platform is down: the next sweep tries again
            continue
        seq, event = answer.get("seq"), STATUS_EVENT.get(answer.get("status"))
        if isinstance(seq, int) and event and seq > case.platform_seq:
            data = {"reason": "请在小程序查看或联系承办部门了解补正要求"} if event == "correction_requested" else {}
            data["source"] = "status_query"
            if (
                await apply_platform_event(case_no=case.case_no, seq=seq, event=event, data=data, at=None, kicks=kicks)
                == "applied"
            ):
                moved += 1
                log.warning("missed platform callback recovered by status query", extra={"case_no": case.case_no})
                continue
        await Case.filter(id=case.id).update(platform_heard_at=datetime.now(UTC))
    return moved


async def mark_overdue(*, kicks: Kicks, now: datetime | None = None, limit: int = 1000) -> int:
    """How many open cases passed their promised date now; each is marked and its citizen told once."""
    now = now or datetime.now(UTC)
    today = now.astimezone(CHINA).date()
    marked = []
    rows = (
        await Case.filter(status__in=OPEN, overdue_at=None).order_by("id").limit(limit).prefetch_related("service_item")
    )
    for case in rows:
        if promised_date(case) >= today:
            continue
        async with in_transaction():
            if not await Case.filter(id=case.id, overdue_at=None).update(overdue_at=now):
                continue
            notification = await notify(case, kind="overdue", dedup_key=f"overdue:{case.id}")
        marked.append(notification.id)
    await kicks.push(marked)
    return len(marked)

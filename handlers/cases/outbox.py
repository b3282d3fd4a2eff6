"""Handing cases to the core platform through the transactional outbox.

Submission writes the case and its `deliver_case` outbox row in one transaction. The relay
claims due rows in batches (a lease, so a crashed worker's rows return after LEASE), calls the platform,
and on failure schedules the next attempt with exponential backoff and jitter, without limit:
an outage of any length loses nothing, and the platform deduplicates by our case number.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from tortoise.transactions import in_transaction

from bridge.client import PlatformClient, PlatformError
from core.backoff import backoff
from core.kicks import Kicks
from handlers.push import notify
from storage.crypto import FieldCipher
from storage.models import ActorType, Case, CaseEvent, CaseStatus, Outbox
from storage.sql import connection, is_postgres, rows

log = logging.getLogger("zhangban.outbox")
S = CaseStatus
LEASE = timedelta(minutes=5)
MAX_BACKOFF_S = 600
# Material ids -> signed links the platform can fetch them by.
MaterialLinks = Callable[[list[str]], Awaitable[list[dict]]]
# Outbox kinds of other domains (payments: fee_paid, request_receipt): row -> notification ids to push.
Delivery = Callable[[Outbox], Awaitable[list[int]]]


async def enqueue_delivery(case: Case) -> Outbox:
    """The outbox row that hands `case` to the platform (call inside the case's transaction)."""
    return await Outbox.create(kind="deliver_case", case=case, payload={}, next_attempt_at=datetime.now(UTC))


class Relay:
    """Delivers due outbox rows to the platform.

    A run claims due rows in batches (one statement each, see `_claim`) and sends a batch
    concurrently, at most `concurrency` cases at a time; the rows of one case go one after
    another in the order they were written (a delivery before its resubmission, a fee before
    its receipt)."""

    def __init__(
        self,
        *,
        platform: PlatformClient,
        cipher: FieldCipher,
        material_links: MaterialLinks,
        kicks: Kicks,
        lease: timedelta = LEASE,
        deliveries: dict[str, Delivery] | None = None,
        batch: int = 50,
        concurrency: int = 8,
    ):
        self.platform, self.cipher, self.material_links, self.lease = platform, cipher, material_links, lease
        self.kicks = kicks
        self.deliveries = deliveries or {}
        self.batch, self.concurrency = batch, concurrency

    async def run_due(self, *, limit: int = 200) -> int:
        """Delivers due rows, a batch at a time, until none is due (at most `limit`); returns
        how many were done."""
        done = 0
        while limit > 0 and (ids := await self._claim(min(self.batch, limit))):
            limit -= len(ids)
            done += await self._run(ids)
        return done

    async def _claim(self, limit: int) -> list[int]:
        """Takes up to `limit` due rows under a lease, in one statement; their ids.

        On PostgreSQL the rows another relay is claiming are skipped (SKIP LOCKED), and the due
        condition is checked again on each row updated, so a row is never claimed twice; SQLite
        runs one writing statement at a time."""
        conn = connection()
        now = datetime.now(UTC)
        lock = " FOR UPDATE SKIP LOCKED" if is_postgres(conn) else ""
        due = "status IN ('pending', 'sending') AND next_attempt_at <= ?"
        sql = (
            f"UPDATE outbox SET status = 'sending', next_attempt_at = ? WHERE {due} AND id IN "
            f"(SELECT id FROM outbox WHERE {due} ORDER BY id LIMIT ?{lock}) RETURNING id"
        )
        return sorted(int(r["id"]) for r in await rows(conn, sql, [now + self.lease, now, now, limit]))

    async def _run(self, ids: list[int]) -> int:
        """Sends the claimed rows: the rows of one case one after another, in the order they
        were written, and at most `concurrency` cases at once; how many were done."""
        claimed = await Outbox.filter(id__in=ids).order_by("id").prefetch_related("case", "case__service_item")
        by_case: dict[int, list[Outbox]] = {}
        for row in claimed:
            by_case.setdefault(row.case_id, []).append(row)
        pool = asyncio.Semaphore(self.concurrency)

        async def one_case(case_rows: list[Outbox]) -> int:
            async with pool:
                return sum([await self._send(row) for row in case_rows])

        return sum(await asyncio.gather(*(one_case(case_rows) for case_rows in by_case.values())))

    async def _send(self, row: Outbox) -> int:
        try:
            await self._deliver(row)
        except PlatformError as exc:
            attempts = row.attempts + 1
            status = "pending" if exc.retryable else "dead"
            await Outbox.filter(id=row.id).update(
                status=status,
                attempts=attempts,
                last_error=str(exc)[:500],
                next_attempt_at=datetime.now(UTC) + backoff(attempts, base_s=1, cap_s=MAX_BACKOFF_S),
            )
            log.warning(
                "platform delivery failed",
                extra={"case_no": row.case.case_no, "attempts": attempts, "retryable": exc.retryable},
            )
            return 0
        await Outbox.filter(id=row.id).update(status="done", attempts=row.attempts + 1, done_at=datetime.now(UTC))
        return 1

    async def _deliver(self, row: Outbox) -> None:
        case = row.case
        if row.kind == "withdraw_case":
            await self._withdraw(row)
            return
        if row.kind == "resubmit_case":
            await self._resubmit(row)
            return
        if row.kind in self.deliveries:
            notification_ids = await self.deliveries[row.kind](row)
            if notification_ids:
                await self.kicks.push(notification_ids)
            return
        if row.kind != "deliver_case":
            raise PlatformError(f"unknown outbox kind {row.kind}", retryable=False)
        if case.status == S.WITHDRAWN:
            return  # withdrawn before it left: nothing to hand over
        form = json.loads(self.cipher.decrypt(case.form_snapshot_enc, column="cases.form_snapshot"))
        materials = [
            {"slot": slot, **link}
            for slot, ids in (case.materials or {}).items()
            for link in await self.material_links(ids)
        ]
        answer = await self.platform.submit_case(
            {
                "case_no": case.case_no,
                "service_code": case.service_code,
                "item_version": case.service_item.version,
                "applicant": form.get("applicant", {}),
                "form": {k: v for k, v in form.items() if k != "materials"},
                "materials": materials,
                "submitted_at": case.submitted_at.isoformat(),
            }
        )
        notification = None
        async with in_transaction():
            fresh = await Case.select_for_update().get(id=case.id)
            if fresh.platform_case_id is None and answer.get("platform_case_id"):
                fresh.platform_case_id = str(answer["platform_case_id"])
                await fresh.save(update_fields=["platform_case_id", "updated_at"])
            if fresh.status == S.SUBMITTED:
                event = await CaseEvent.create(
                    case=fresh,
                    actor_type=ActorType.SYSTEM,
                    from_status=S.SUBMITTED.value,
                    to_status=S.DELIVERED.value,
                    note="已推送至审批部门",
                    data={"platform_case_id": fresh.platform_case_id},
                )
                await Case.filter(id=fresh.id).update(
                    status=S.DELIVERED, row_version=fresh.row_version + 1, platform_heard_at=datetime.now(UTC)
                )
                notification = await notify(fresh, kind=S.DELIVERED.value, dedup_key=f"event:{event.id}")
        if notification is not None:
            await self.kicks.push([notification.id])

    async def _withdraw(self, row: Outbox) -> None:
        """Tells the platform about a withdrawal made before the case left (it may have left
        meanwhile); a platform that never received the case (404) has nothing to withdraw."""
        try:
            await self.platform.withdraw_case(row.case.case_no, reason=row.payload.get("reason", ""))
        except PlatformError as exc:
            if exc.status != 404:
                raise

    async def _resubmit(self, row: Outbox) -> None:
        """Hands the corrected fields and materials to the platform."""
        materials = [
            {"slot": slot, **link}
            for slot, ids in (row.payload.get("materials") or {}).items()
            for link in await self.material_links(ids)
        ]
        fields = json.loads(self.cipher.decrypt(bytes.fromhex(row.payload["fields_enc"]), column="outbox.payload"))
        await self.platform.resubmit_case(row.case.case_no, {"fields": fields, "materials": materials})

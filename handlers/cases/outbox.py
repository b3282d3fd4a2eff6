"""Handing cases to the core platform through the transactional outbox.

Submission writes the case and its `deliver_case` outbox row in one transaction. The relay
claims due rows (a lease, so a crashed worker's row returns after LEASE), calls the platform,
and on failure schedules the next attempt with exponential backoff and jitter, without limit:
an outage of any length loses nothing, and the platform deduplicates by our case number.
"""

from __future__ import annotations

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
    """Delivers due outbox rows to the platform."""

    def __init__(
        self,
        *,
        platform: PlatformClient,
        cipher: FieldCipher,
        material_links: MaterialLinks,
        kicks: Kicks,
        lease: timedelta = LEASE,
        deliveries: dict[str, Delivery] | None = None,
    ):
        self.platform, self.cipher, self.material_links, self.lease = platform, cipher, material_links, lease
        self.kicks = kicks
        self.deliveries = deliveries or {}

    async def run_due(self, *, limit: int = 50) -> int:
        """Delivers every due row (at most `limit`); returns how many were done."""
        now = datetime.now(UTC)
        rows = (
            await Outbox.filter(status__in=["pending", "sending"], next_attempt_at__lte=now).order_by("id").limit(limit)
        )
        done = 0
        for row in rows:
            done += await self.run_one(row.id)
        return done

    async def run_one(self, outbox_id: int) -> int:
        now = datetime.now(UTC)
        # Claim with a lease: a worker killed mid-call leaves the row to be claimed again after LEASE.
        claimed = await Outbox.filter(id=outbox_id, status__in=["pending", "sending"], next_attempt_at__lte=now).update(
            status="sending", next_attempt_at=now + self.lease
        )
        if not claimed:
            return 0
        row = await Outbox.get(id=outbox_id).prefetch_related("case", "case__service_item")
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

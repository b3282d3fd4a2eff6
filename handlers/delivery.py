"""Handing cases to the core platform through the transactional outbox, and what comes back.

Submission writes the case and its `deliver_case` outbox row in one transaction. The relay
claims due rows (a lease, so a crashed worker's row returns after LEASE), calls the platform,
and on failure schedules the next attempt with exponential backoff and jitter, without limit:
an outage of any length loses nothing, and the platform deduplicates by our case number.

Platform callbacks carry a per-case sequence number. An event at or below the case's last
sequence is a duplicate or a late arrival and changes nothing; a newer one moves the case,
recording any steps the platform skipped over, so a case never moves backwards.
"""

from __future__ import annotations

import json
import logging
import random
from collections import deque
from datetime import UTC, datetime, timedelta

from tortoise.transactions import in_transaction

from bridge.client import PlatformClient, PlatformError
from handlers.cases import TRANSITIONS
from handlers.push import kick, notify
from storage.crypto import FieldCipher
from storage.models import ActorType, Case, CaseEvent, CaseStatus, Outbox

log = logging.getLogger("zhangban.delivery")
S = CaseStatus
LEASE = timedelta(minutes=5)
MAX_BACKOFF_S = 600

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


def backoff(attempts: int) -> timedelta:
    """Exponential backoff with ±25% jitter, capped at 10 minutes."""
    base = min(2 ** max(attempts - 1, 0), MAX_BACKOFF_S)
    return timedelta(seconds=base * random.uniform(0.75, 1.25))


async def kick_relay() -> None:
    """Asks a worker to relay the outbox now (call after the commit); the relay's schedule
    would, within seconds, so a broker that is down fails nothing."""
    try:
        from core.jobs import relay_outbox

        await relay_outbox.kiq()
    except Exception:
        log.warning("could not kick the outbox relay; the schedule will")


async def enqueue_delivery(case: Case) -> Outbox:
    """The outbox row that hands `case` to the platform (call inside the case's transaction)."""
    return await Outbox.create(kind="deliver_case", case=case, payload={}, next_attempt_at=datetime.now(UTC))


class Relay:
    """Delivers due outbox rows to the platform."""

    def __init__(self, *, platform: PlatformClient, cipher: FieldCipher, material_links, lease: timedelta = LEASE):
        self.platform, self.cipher, self.material_links, self.lease = platform, cipher, material_links, lease

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
                next_attempt_at=datetime.now(UTC) + backoff(attempts),
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
            await kick([notification.id])

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


_EVENT_COLUMNS = ("id", "case_no", "status", "platform_seq", "row_version", "user_id", "service_code", "service_name")


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


async def apply_platform_event(*, case_no: str, seq: int, event: str, data: dict, at: str | None) -> str:
    """Applies one platform callback: 'applied', 'duplicate' (old seq) or 'ignored' (cannot apply).

    The change, its case events and the citizen's notification commit together; the push job
    is kicked after the commit (the push sweep picks up a kick that was lost)."""
    target = EVENT_STATUS[event]
    notification = None
    async with in_transaction():
        # Only what the change needs: not the sealed form snapshot, which can be kilobytes.
        case = await Case.select_for_update().filter(case_no=case_no).only(*_EVENT_COLUMNS).first()
        if case is None:
            return "unknown_case"
        if seq <= case.platform_seq:
            return "duplicate"
        updates: dict = {"platform_seq": seq, "platform_heard_at": datetime.now(UTC)}
        result = "applied"
        if target is None:  # fee assessed: no status change
            amount = int(data["amount_fen"])
            updates["fee_fen"] = amount
            record = await CaseEvent.create(
                case=case,
                actor_type=ActorType.PLATFORM,
                from_status=case.status.value,
                to_status=case.status.value,
                note=f"应缴费用 {amount / 100:.2f} 元",
                data={"seq": seq, "event": event, **data},
            )
            notification = await notify(case, kind=event, dedup_key=f"event:{record.id}", data=data)
        else:
            chain = path_to(case.status, target)
            if not chain:
                result = "ignored"  # e.g. a late event for a state already left, or a withdrawn case
            else:
                previous = case.status
                for step in chain:
                    skipped = step != target
                    note = EVENT_NOTES.get(step.value, "")
                    if skipped:
                        note += "（补记）"
                    elif data.get("reason"):
                        note += f"：{str(data['reason'])[:200]}"
                    record = await CaseEvent.create(
                        case=case,
                        actor_type=ActorType.PLATFORM,
                        from_status=previous.value,
                        to_status=step.value,
                        note=note,
                        data={"seq": seq, "event": event, "at": at, **({} if skipped else data)},
                    )
                    previous = step
                # One notification for the change, about where the case is now: the steps the
                # platform skipped over are history, not news.
                notification = await notify(case, kind=target.value, dedup_key=f"event:{record.id}", data=data)
                updates.update(status=target, row_version=case.row_version + len(chain))
        await Case.filter(id=case.id).update(**updates)
    if notification is not None:
        await kick([notification.id])
    return result

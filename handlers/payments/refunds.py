"""Refunds: a paid fee goes back when its case is rejected or withdrawn, or when the money
arrived on an order we had closed. A refund row is written in the transaction that decides
it; the refund job asks the channel (idempotent there by `out_refund_no`, so a retry after a
crash never refunds twice), and the channel's refund notify or our query settles it.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from tortoise.transactions import in_transaction

from core.backoff import backoff
from handlers.payments.alerts import raise_alert
from handlers.payments.channels import Channels, provider_of
from handlers.payments.states import move
from handlers.push import notify
from payments.base import ChannelRefund, PaymentError
from storage.models import ActorType, Case, CaseEvent, Notification, PaymentOrder, PaymentRefund

log = logging.getLogger("zhangban.payments")
LEASE = timedelta(minutes=2)
MAX_BACKOFF_S = 1800


async def open_refund(order: PaymentOrder, *, cause: str, reason: str) -> PaymentRefund:
    """The refund of what is left of `order` (call inside the transaction that moved it to refunding)."""
    count = await PaymentRefund.filter(order_id=order.id).count()
    return await PaymentRefund.create(
        order_id=order.id,
        out_refund_no=f"{order.out_trade_no}R{count + 1}",
        amount_fen=order.amount_fen - order.refunded_fen,
        cause=cause,
        reason=reason[:80],
        next_attempt_at=datetime.now(UTC),
    )


async def refund_case_fees(case_id: int, *, cause: str) -> int:
    """Opens a refund for every paid order of the case (inside the case's transaction); how many."""
    opened = 0
    for order in await PaymentOrder.select_for_update().filter(case_id=case_id, state="paid"):
        if await move(order, "refunding", source="refund", data={"cause": cause}):
            await open_refund(order, cause=cause, reason="办件未通过或已撤回，退还费用")
            opened += 1
    return opened


class Refunder:
    """Asks the channels for the refunds that are due, and settles what they answer."""

    def __init__(self, *, channels: Channels):
        self.channels = channels

    async def run_due(self, *, limit: int = 50) -> tuple[int, list[int]]:
        """(refunds settled, notification ids to push) over every due refund."""
        now = datetime.now(UTC)
        due = (
            await PaymentRefund.filter(state__in=["requested", "processing"], next_attempt_at__lte=now)
            .order_by("id")
            .limit(limit)
            .values_list("id", flat=True)
        )
        settled, notes = 0, []
        for refund_id in due:
            done, ids = await self.run_one(refund_id)
            settled += done
            notes += ids
        return settled, notes

    async def run_one(self, refund_id: int) -> tuple[int, list[int]]:
        now = datetime.now(UTC)
        # A lease: a worker killed mid-call leaves the refund to be asked about again.
        claimed = await PaymentRefund.filter(
            id=refund_id, state__in=["requested", "processing"], next_attempt_at__lte=now
        ).update(next_attempt_at=now + LEASE)
        if not claimed:
            return 0, []
        refund = await PaymentRefund.get(id=refund_id).prefetch_related("order")
        order = refund.order
        try:
            if refund.state == "requested":
                answer = await self._ask(order, refund)
            else:
                answer = await self._query(order, refund)
        except PaymentError as exc:
            attempts = refund.attempts + 1
            failed = not exc.retryable
            await PaymentRefund.filter(id=refund.id).update(
                attempts=attempts,
                last_error=f"{exc.code}: {exc}"[:300],
                state="failed" if failed else refund.state,
                next_attempt_at=datetime.now(UTC) + backoff(attempts, base_s=5, cap_s=MAX_BACKOFF_S),
            )
            if failed:
                detail = {"out_refund_no": refund.out_refund_no, "error": f"{exc.code}: {exc}"[:300]}
                await raise_alert("refund_failed", order=order, dedup=refund.out_refund_no, detail=detail)
            log.warning("refund %s failed: %s", refund.out_refund_no, exc, extra={"retryable": exc.retryable})
            return 0, []
        if answer.state == "processing" and refund.state == "requested":
            await PaymentRefund.filter(id=refund.id, state="requested").update(
                state="processing",
                refund_id=answer.refund_id,
                attempts=refund.attempts + 1,
                next_attempt_at=datetime.now(UTC) + timedelta(seconds=30),
            )
            return 0, []
        if answer.state == "processing":
            await PaymentRefund.filter(id=refund.id).update(
                next_attempt_at=datetime.now(UTC) + backoff(refund.attempts + 1, base_s=30, cap_s=MAX_BACKOFF_S),
                attempts=refund.attempts + 1,
            )
            return 0, []
        return await apply_refund(answer, source="query")

    async def _ask(self, order: PaymentOrder, refund: PaymentRefund) -> ChannelRefund:
        if provider_of(order.channel) == "wechat":
            return await self.channels.wechat.refund(
                out_trade_no=order.out_trade_no,
                out_refund_no=refund.out_refund_no,
                amount_fen=refund.amount_fen,
                total_fen=order.amount_fen,
                reason=refund.reason,
            )
        return await self.channels.alipay.refund(
            out_trade_no=order.out_trade_no,
            out_request_no=refund.out_refund_no,
            amount_fen=refund.amount_fen,
            reason=refund.reason,
        )

    async def _query(self, order: PaymentOrder, refund: PaymentRefund) -> ChannelRefund:
        if provider_of(order.channel) == "wechat":
            return await self.channels.wechat.query_refund(refund.out_refund_no)
        return await self.channels.alipay.query_refund(
            out_trade_no=order.out_trade_no, out_request_no=refund.out_refund_no
        )


async def apply_refund(answer: ChannelRefund, *, source: str) -> tuple[int, list[int]]:
    """Settles a refund the channel reports done (success) or failed; once, whoever reports it."""
    if answer.state not in ("success", "failed", "closed"):
        return 0, []
    notes: list[Notification] = []
    async with in_transaction():
        refund = await PaymentRefund.select_for_update().get_or_none(out_refund_no=answer.out_refund_no)
        if refund is None or refund.state in ("success", "failed"):
            return 0, []
        order = await PaymentOrder.select_for_update().get(id=refund.order_id)
        now = datetime.now(UTC)
        if answer.state != "success":
            await PaymentRefund.filter(id=refund.id).update(state="failed", done_at=now, refund_id=answer.refund_id)
            detail = {"out_refund_no": refund.out_refund_no, "channel_state": answer.state}
            await raise_alert("refund_failed", order=order, dedup=refund.out_refund_no, detail=detail)
            return 1, []
        if answer.amount_fen != refund.amount_fen:
            detail = {"out_refund_no": refund.out_refund_no, "ours": refund.amount_fen, "theirs": answer.amount_fen}
            await raise_alert("mismatch", order=order, dedup=f"refund:{refund.out_refund_no}", detail=detail)
            return 0, []
        await PaymentRefund.filter(id=refund.id).update(state="success", done_at=now, refund_id=answer.refund_id)
        refunded = order.refunded_fen + refund.amount_fen
        if order.state == "refunding":
            target = "refunded" if refunded >= order.amount_fen else "partially_refunded"
            await move(
                order, target, source=source, data={"out_refund_no": refund.out_refund_no}, refunded_fen=refunded
            )
        case = await Case.get(id=order.case_id)
        amount = f"{refund.amount_fen // 100}.{refund.amount_fen % 100:02d}"
        event = await CaseEvent.create(
            case=case,
            actor_type=ActorType.SYSTEM,
            from_status=case.status.value,
            to_status=case.status.value,
            note=f"已退费 {amount} 元",
            data={"event": "fee_refunded", "payment_id": order.payment_id, "amount_fen": refund.amount_fen},
        )
        note = await notify(
            case, kind="fee_refunded", dedup_key=f"event:{event.id}", data={"amount_fen": refund.amount_fen}
        )
        if note is not None:
            notes.append(note)
    return 1, [n.id for n in notes]

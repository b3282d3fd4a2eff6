"""What a channel says about a trade, applied exactly once, whoever says it first.

A notify and a query answer arrive here alike (`apply_trade`). The order is read again under a
row lock and moved by a conditional update, so 100 copies of one notify, a notify racing the
mini-program's poll and the sweep, or a worker killed after the channel's success and before our
commit, all end with the order paid once: one case event, one notification, one `fee_paid` for
the platform. A trade whose amount, merchant or app is not the order's changes nothing and raises
an alert. A payment that lands on an order we had already closed is kept (the money is real) and
refunded at once, with an alert for officials.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from tortoise.transactions import in_transaction

from core.kicks import Kicks
from handlers.payments.alerts import raise_alert
from handlers.payments.channels import CHANNEL_LABELS, Channels, provider_of
from handlers.payments.refunds import open_refund
from handlers.payments.states import OPEN, move
from handlers.push import notify
from payments.base import ChannelTrade
from storage.models import ActorType, Case, CaseEvent, CaseStatus, Notification, Outbox, PaymentOrder

log = logging.getLogger("zhangban.payments")
S = CaseStatus
# A case that ends without a decision in the citizen's favour returns the fee.
REFUNDED_CASE_STATES = (S.REJECTED, S.WITHDRAWN)
_CASE_COLUMNS = ("id", "case_no", "status", "user_id", "service_code", "service_name", "fee_ref", "fee_paid_at")


@dataclass(frozen=True)
class Settled:
    """What `apply_trade` did: 'paid', 'paid_after_close', 'closed', 'unchanged', 'duplicate',
    'mismatch' or 'unknown_order'; with the notifications to push and whether refunds wait."""

    result: str
    notification_ids: tuple[int, ...] = ()
    refund_due: bool = False
    relay_due: bool = False


async def after_settled(settled: Settled | None, kicks: Kicks) -> None:
    """The work a settlement queued, asked for once its transaction has committed."""
    if settled is None:
        return
    if settled.notification_ids:
        await kicks.push(list(settled.notification_ids))
    if settled.relay_due:
        await kicks.relay()
    if settled.refund_due:
        await kicks.refunds()


def mismatches(order: PaymentOrder, trade: ChannelTrade, channels: Channels) -> dict[str, dict]:
    """Where the channel's trade is not our order's: {field: {"ours", "theirs"}}."""
    merchant, app = channels.expected(provider_of(order.channel))
    found: dict[str, dict] = {}
    if trade.amount_fen is not None and trade.amount_fen != order.amount_fen:
        found["amount_fen"] = {"ours": order.amount_fen, "theirs": trade.amount_fen}
    if merchant is not None and trade.merchant_id is not None and trade.merchant_id != merchant:
        found["merchant_id"] = {"ours": merchant, "theirs": trade.merchant_id}
    if trade.app_id is not None and trade.app_id != app:
        found["app_id"] = {"ours": app, "theirs": trade.app_id}
    if trade.state == "paid" and trade.amount_fen is None:
        found["amount_fen"] = {"ours": order.amount_fen, "theirs": None}
    return found


async def apply_trade(trade: ChannelTrade, *, channels: Channels, source: str) -> Settled:
    """Applies the channel's word on one trade (see the module docstring)."""
    order = await PaymentOrder.get_or_none(out_trade_no=trade.out_trade_no)
    if order is None:
        await raise_alert(
            "unknown_order", order=None, dedup=trade.out_trade_no, detail={"out_trade_no": trade.out_trade_no}
        )
        return Settled("unknown_order")
    if trade.state not in ("paid", "refunded", "closed"):
        return Settled("unchanged")
    wrong = mismatches(order, trade, channels)
    if wrong:
        await raise_alert(
            "mismatch",
            order=order,
            dedup=f"{order.out_trade_no}:{trade.transaction_id}:{sorted(wrong)}",
            detail={"out_trade_no": order.out_trade_no, "source": source, "fields": wrong},
        )
        return Settled("mismatch")
    if trade.state == "closed":
        return await _closed_at_channel(order, source=source)
    return await _paid(order, trade, source=source)


async def _closed_at_channel(order: PaymentOrder, *, source: str) -> Settled:
    async with in_transaction():
        order = await PaymentOrder.select_for_update().get(id=order.id)
        if order.state not in OPEN:
            return Settled("unchanged")
        await move(
            order, "closed", source=source, closed_at=datetime.now(UTC), close_reason="channel_closed", open_slot=None
        )
    return Settled("closed")


async def _paid(order: PaymentOrder, trade: ChannelTrade, *, source: str) -> Settled:
    paid_at = trade.paid_at or datetime.now(UTC)
    money = {"transaction_id": trade.transaction_id, "paid_at": paid_at}
    data = {"transaction_id": trade.transaction_id, "payer": trade.payer, "channel_state": trade.state}
    notifications: list[Notification] = []
    async with in_transaction():
        order = await PaymentOrder.select_for_update().get(id=order.id)
        if order.state == "closed":
            # Paid after we closed it: keep the record of the money, and give it back.
            await move(order, "refunding", source=source, data={**data, "paid_after_close": True}, **money)
            await open_refund(order, cause="paid_after_close", reason="订单已关闭后支付，自动退款")
            await raise_alert(
                "paid_after_close",
                order=order,
                dedup=order.out_trade_no,
                detail={"out_trade_no": order.out_trade_no, "amount_fen": order.amount_fen, "source": source},
            )
            return Settled("paid_after_close", refund_due=True)
        if order.state not in OPEN:
            return Settled("duplicate")
        await move(order, "paid", source=source, data=data, **money)
        # Only what the change needs: not the sealed form snapshot, which can be kilobytes.
        case = await Case.select_for_update().filter(id=order.case_id).only(*_CASE_COLUMNS).get()
        refund_due = False
        if case.fee_ref == order.fee_ref and case.fee_paid_at is None:
            await Case.filter(id=case.id).update(fee_paid_at=paid_at)
        amount = f"{order.amount_fen // 100}.{order.amount_fen % 100:02d}"
        label = CHANNEL_LABELS[order.channel]
        event = await CaseEvent.create(
            case=case,
            actor_type=ActorType.SYSTEM,
            from_status=case.status.value,
            to_status=case.status.value,
            note=f"已缴费 {amount} 元（{label}）",
            data={"event": "fee_paid", "payment_id": order.payment_id, "amount_fen": order.amount_fen},
        )
        note = await notify(
            case,
            kind="fee_paid",
            dedup_key=f"event:{event.id}",
            data={"amount_fen": order.amount_fen, "channel_label": label},
        )
        if note is not None:
            notifications.append(note)
        await Outbox.create(
            kind="fee_paid",
            case=case,
            payload={
                "payment_id": order.payment_id,
                "out_trade_no": order.out_trade_no,
                "channel": order.channel,
                "transaction_id": trade.transaction_id,
                "amount_fen": order.amount_fen,
                "paid_at": paid_at.isoformat(),
                "notice_no": order.notice_no,
            },
            next_attempt_at=datetime.now(UTC),
        )
        if case.status in REFUNDED_CASE_STATES:
            # The case ended against the citizen while they were paying: the fee goes back.
            await move(order, "refunding", source=source, data={"cause": f"case_{case.status.value}"})
            await open_refund(order, cause=f"case_{case.status.value}", reason="办件未通过或已撤回，退还费用")
            refund_due = True
    return Settled("paid", notification_ids=tuple(n.id for n in notifications), refund_due=refund_due, relay_due=True)

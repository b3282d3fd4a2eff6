"""What a channel says about a trade, applied exactly once, whoever says it first.

A notify and a query answer arrive here alike (`apply_trade`). The order is read again under a
row lock and moved by a conditional update, so 100 copies of one notify, a notify racing the
mini-program's poll and the sweep, or a worker killed after the channel's success and before our
commit, all end with the order paid once: one case event, one notification, one `fee_paid` for
the platform. A trade whose amount, merchant or app is not the order's changes nothing and raises
an alert. A payment that lands on an order we had already closed is kept (the money is real) and
refunded at once, with an alert for officials.

The common case, a paid trade for an open order of a case that stands, is the hot path of
payment notifies: on PostgreSQL it is read by one query and written by one conditional
statement (the case's fee marked paid, the order moved, its payment event, the case event, the
citizen's notification and the platform's outbox row), which applies only while the order and
the case are still as read; otherwise the trade is read again and applied by the ORM path below,
which holds the order's row lock through the other outcomes (a duplicate, a payment after the
close, a case ended against the citizen). The case row is locked before the order's, in the
order platform callbacks take them.
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
from handlers.push import NOTIFICATION_COLUMNS, PG_NOTIFICATION_VALUES, notification_values, notify
from payments.base import ChannelTrade
from storage.models import ActorType, Case, CaseEvent, CaseStatus, Notification, Outbox, PaymentOrder
from storage.sql import connection, db_json, is_postgres, rows

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


def mismatches(order: PaymentOrder | _OrderRead, trade: ChannelTrade, channels: Channels) -> dict[str, dict]:
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
    if trade.state == "paid" and is_postgres(connection()):
        settled = await _paid_in_one_statement(trade, channels=channels, source=source)
        if settled is not None:
            return settled
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


@dataclass(frozen=True)
class _FeePaid:
    """What a paid order writes, on either path: the order's event data, the case event's note
    and data, the notification's data and the platform's `fee_paid` outbox payload."""

    order_event: dict
    note: str
    case_event: dict
    notification: dict
    outbox: dict

    @classmethod
    def of(cls, order: PaymentOrder | _OrderRead, trade: ChannelTrade, paid_at: datetime) -> _FeePaid:
        amount = f"{order.amount_fen // 100}.{order.amount_fen % 100:02d}"
        label = CHANNEL_LABELS[order.channel]
        return cls(
            order_event={"transaction_id": trade.transaction_id, "payer": trade.payer, "channel_state": trade.state},
            note=f"已缴费 {amount} 元（{label}）",
            case_event={"event": "fee_paid", "payment_id": order.payment_id, "amount_fen": order.amount_fen},
            notification={"amount_fen": order.amount_fen, "channel_label": label},
            outbox={
                "payment_id": order.payment_id,
                "out_trade_no": order.out_trade_no,
                "channel": order.channel,
                "transaction_id": trade.transaction_id,
                "amount_fen": order.amount_fen,
                "paid_at": paid_at.isoformat(),
                "notice_no": order.notice_no,
            },
        )


@dataclass(frozen=True)
class _OrderRead:
    """An order and its case as the one-statement path reads them, without a lock."""

    id: int
    payment_id: str
    out_trade_no: str
    channel: str
    amount_fen: int
    state: str
    fee_ref: str
    notice_no: str | None
    case_id: int
    case_no: str
    case_status: str
    user_id: int
    service_code: str
    service_name: str


_READ_ORDER = (
    "SELECT o.id, o.payment_id, o.out_trade_no, o.channel, o.amount_fen, o.state, o.fee_ref, o.notice_no, "
    "c.id AS case_id, c.case_no, c.status AS case_status, c.user_id, c.service_code, c.service_name "
    "FROM payment_orders o JOIN cases c ON c.id = o.case_id WHERE o.out_trade_no = ?"
)
# The case is taken first (its fee marked paid only if this order's fee is still the case's
# and unpaid), the order moves only if the case still stands as read, and everything else is
# written only if the order moved.
_SETTLE = (
    "WITH fee AS (UPDATE cases SET fee_paid_at = CASE WHEN fee_ref = ?::text AND fee_paid_at IS NULL "
    "THEN ?::timestamptz ELSE fee_paid_at END WHERE id = ?::bigint AND status = ?::text RETURNING id), "
    "moved AS (UPDATE payment_orders SET state = 'paid', updated_at = ?::timestamptz, transaction_id = ?::text, "
    "paid_at = ?::timestamptz WHERE id = ?::bigint AND state = ?::text AND EXISTS (SELECT 1 FROM fee) "
    "RETURNING id), "
    "logged AS (INSERT INTO payment_events (order_id, at, from_state, to_state, source, data) "
    "SELECT moved.id, ?::timestamptz, ?::text, 'paid', ?::text, ?::jsonb FROM moved RETURNING id), "
    "written AS (INSERT INTO case_events (case_id, at, actor_type, from_status, to_status, note, data) "
    "SELECT fee.id, ?::timestamptz, ?::text, ?::text, ?::text, ?::text, ?::jsonb FROM fee, moved RETURNING id), "
    f"told AS (INSERT INTO notifications (dedup_key, {NOTIFICATION_COLUMNS}) "
    f"SELECT 'event:' || written.id, {PG_NOTIFICATION_VALUES} FROM written RETURNING id), "
    "queued AS (INSERT INTO outbox (kind, case_id, payload, status, attempts, next_attempt_at, last_error, created_at) "
    "SELECT 'fee_paid', fee.id, ?::jsonb, 'pending', 0, ?::timestamptz, '', ?::timestamptz FROM fee, moved "
    "RETURNING id) "
    # PostgreSQL runs every writing WITH to completion whether or not the answer reads it.
    "SELECT (SELECT count(*) FROM moved) AS moved, (SELECT id FROM told) AS notification_id"
)


async def _paid_in_one_statement(trade: ChannelTrade, *, channels: Channels, source: str) -> Settled | None:
    """A paid trade settled by one statement (see the module docstring); None when the trade is
    not the common case, for the ORM path to apply."""
    conn = connection()
    while True:
        found = await rows(conn, _READ_ORDER, [trade.out_trade_no])
        if not found:
            return None
        order = _OrderRead(**found[0])
        if order.state not in OPEN or order.case_status in REFUNDED_CASE_STATES or mismatches(order, trade, channels):
            return None
        now = datetime.now(UTC)
        paid_at = trade.paid_at or now
        told = _FeePaid.of(order, trade, paid_at)
        case = {"id": order.case_id, "case_no": order.case_no, "user_id": order.user_id,
                "service_code": order.service_code, "service_name": order.service_name}  # fmt: skip
        values = [order.fee_ref, paid_at, order.case_id, order.case_status]
        values += [now, trade.transaction_id, paid_at, order.id, order.state]
        values += [now, order.state, source, db_json(told.order_event)]
        values += [
            now,
            ActorType.SYSTEM.value,
            order.case_status,
            order.case_status,
            told.note,
            db_json(told.case_event),
        ]
        values += notification_values(case, "fee_paid", told.notification, now)
        values += [db_json(told.outbox), now, now]
        [row] = await rows(conn, _SETTLE, values)
        if row["moved"]:
            return Settled("paid", notification_ids=(row["notification_id"],), relay_due=True)
        # The order or the case moved since it was read: read again (a duplicate that lost the
        # race then goes to the ORM path, which answers 'duplicate').


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
    told = _FeePaid.of(order, trade, paid_at)
    data = told.order_event
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
        event = await CaseEvent.create(
            case=case,
            actor_type=ActorType.SYSTEM,
            from_status=case.status.value,
            to_status=case.status.value,
            note=told.note,
            data=told.case_event,
        )
        note = await notify(
            case,
            kind="fee_paid",
            dedup_key=f"event:{event.id}",
            data=told.notification,
        )
        if note is not None:
            notifications.append(note)
        await Outbox.create(
            kind="fee_paid",
            case=case,
            payload=told.outbox,
            next_attempt_at=datetime.now(UTC),
        )
        if case.status in REFUNDED_CASE_STATES:
            # The case ended against the citizen while they were paying: the fee goes back.
            await move(order, "refunding", source=source, data={"cause": f"case_{case.status.value}"})
            await open_refund(order, cause=f"case_{case.status.value}", reason="办件未通过或已撤回，退还费用")
            refund_due = True
    return Settled("paid", notification_ids=tuple(n.id for n in notifications), refund_due=refund_due, relay_due=True)

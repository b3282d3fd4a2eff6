"""The payments sweep: a notify can be late or lost, and a process can die mid-order.

Every run asks the channel about orders `paying` for longer than PAYMENT_QUERY_AFTER_S (and
settles what it says), closes expired ones at the channel and then here (asking first, so a
payment made in the last second is kept), and closes `created` rows whose process died before
asking the channel.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from tortoise.transactions import in_transaction

from handlers.payments.channels import Channels
from handlers.payments.settle import apply_trade
from handlers.payments.states import OPEN, move
from payments.base import PaymentError
from storage.models import PaymentOrder

log = logging.getLogger("zhangban.payments")
STUCK_CREATED = timedelta(minutes=5)


@dataclass
class SweepResult:
    asked: int = 0
    paid: int = 0
    closed: int = 0
    notification_ids: list[int] = field(default_factory=list)
    refund_due: bool = False
    relay_due: bool = False


class Sweeper:
    """The sweep over the channels it is handed (see the module docstring)."""

    def __init__(self, *, channels: Channels, query_after: timedelta):
        self.channels, self.query_after = channels, query_after

    async def run(self) -> SweepResult:
        return await sweep(channels=self.channels, query_after=self.query_after)


async def sweep(*, channels: Channels, query_after: timedelta, limit: int = 200) -> SweepResult:
    now = datetime.now(UTC)
    result = SweepResult()
    due = await PaymentOrder.filter(state="paying", updated_at__lte=now - query_after).order_by("id").limit(limit)
    expired = await PaymentOrder.filter(state="paying", expires_at__lte=now).order_by("id").limit(limit)
    seen: set[int] = set()
    for order in [*due, *expired]:
        if order.id in seen:
            continue
        seen.add(order.id)
        await _ask(order, channels=channels, now=now, result=result)
    for order in await PaymentOrder.filter(state="created", created_at__lte=now - STUCK_CREATED).limit(limit):
        async with in_transaction():
            fresh = await PaymentOrder.select_for_update().get(id=order.id)
            if fresh.state == "created" and await move(
                fresh, "closed", source="job", closed_at=now, close_reason="never_opened", open_slot=None
            ):
                result.closed += 1
    return result


async def _ask(order: PaymentOrder, *, channels: Channels, now: datetime, result: SweepResult) -> None:
    result.asked += 1
    try:
        trade = await channels.query(order.channel, order.out_trade_no)
    except PaymentError as exc:
        log.warning("payments sweep could not ask about %s: %s", order.out_trade_no, exc)
        return
    await PaymentOrder.filter(id=order.id).update(last_checked_at=now, updated_at=now)
    if trade.state in ("paid", "refunded", "closed"):
        settled = await apply_trade(trade, channels=channels, source="query")
        result.paid += settled.result in ("paid", "paid_after_close")
        result.closed += settled.result == "closed"
        result.notification_ids += settled.notification_ids
        result.refund_due |= settled.refund_due
        result.relay_due |= settled.relay_due
        return
    if order.expires_at > now:
        return
    # Expired and unpaid at the channel: close it there first, then here.
    if trade.state != "not_found":
        try:
            await channels.close(order.channel, order.out_trade_no)
        except PaymentError as exc:
            log.warning("payments sweep could not close %s: %s", order.out_trade_no, exc)
            return
    async with in_transaction():
        fresh = await PaymentOrder.select_for_update().get(id=order.id)
        if fresh.state in OPEN and await move(
            fresh, "closed", source="expiry", closed_at=now, close_reason="expired", open_slot=None
        ):
            result.closed += 1

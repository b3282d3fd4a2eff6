"""The order state machine. Every move is `UPDATE ... WHERE id = ? AND state = <expected>` inside
the caller's transaction, with its `PaymentEvent`: of two concurrent deciders (a notify, a query,
the expiry sweep), exactly one wins and the other sees that it lost.

    created ─→ paying ─→ paid ─→ refunding ─→ refunded | partially_refunded
       └─────────┴──→ closed ─→ refunding            (a payment that arrived after the close)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from core.errors import Conflict
from storage.models import PaymentEvent, PaymentOrder

TRANSITIONS: dict[str, frozenset[str]] = {
    "created": frozenset({"paying", "closed"}),
    "paying": frozenset({"paid", "closed"}),
    "paid": frozenset({"refunding"}),
    "refunding": frozenset({"refunded", "partially_refunded", "paid"}),
    "partially_refunded": frozenset({"refunding"}),
    "refunded": frozenset(),
    "closed": frozenset({"refunding"}),
}
OPEN = ("created", "paying")
# States in which the channel holds (or held) the citizen's money for this order.
MONEY_RECEIVED = ("paid", "refunding", "refunded", "partially_refunded")
STATUS_LABELS = {
    "created": "待支付",
    "paying": "待支付",
    "paid": "已支付",
    "refunding": "退款中",
    "refunded": "已退款",
    "partially_refunded": "部分退款",
    "closed": "已关闭",
}


class IllegalTransition(Conflict):
    code = "illegal_payment_transition"
    message = "订单当前状态不允许此操作"


async def move(order: PaymentOrder, to: str, *, source: str, data: dict[str, Any] | None = None, **columns) -> bool:
    """Moves `order` from the state it was read in to `to`; False when another decider moved it first.

    `order` is updated in memory when the move wins. A move the table forbids is a bug of the
    caller, raised as IllegalTransition, never applied.
    """
    start = order.state
    if to not in TRANSITIONS[start]:
        raise IllegalTransition(details={"from": start, "to": to})
    won = await PaymentOrder.filter(id=order.id, state=start).update(state=to, updated_at=datetime.now(UTC), **columns)
    if not won:
        return False
    await PaymentEvent.create(order_id=order.id, from_state=start, to_state=to, source=source, data=data or {})
    order.state = to
    for name, value in columns.items():
        setattr(order, name, value)
    return True

"""Reconciliation (对账): a channel's bill of one China-time day against our orders and refunds.

Every payment line of the bill is matched to our order by out_trade_no:
    matched          paid at both, the same amount
    channel_only     paid at the channel, not paid here (长款): money we hold without a paid order
    ours_only        paid here, not in the channel's bill (短款): an order we count that the channel does not
    amount_mismatch  both, different amounts
Refund lines are matched to our refunds by out_refund_no the same way. The report keeps the
lines that need a person and the totals (fen) of both sides; it replaces an earlier report of
the same channel and day, so running it twice is harmless.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from core.china_time import CHINA
from handlers.payments.channels import Channels
from payments.base import BillRow
from storage.models import PaymentOrder, PaymentRefund, ReconciliationReport

CHANNEL_ORDERS = {"wechat": ("wechat",), "alipay": ("alipay_qr", "alipay_wap")}


class Reconciler:
    """Downloads a channel's bill of a day and reconciles it."""

    def __init__(self, *, channels: Channels):
        self.channels = channels

    async def run(self, provider: str, bill_date: date) -> ReconciliationReport:
        if provider == "wechat":
            rows = await self.channels.wechat.trade_bill(bill_date)
        else:
            rows = await self.channels.alipay.bill(bill_date)
        return await reconcile(provider=provider, bill_date=bill_date, rows=rows)


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(0, 0), tzinfo=CHINA).astimezone(UTC)
    return start, start + timedelta(days=1)


async def reconcile(*, provider: str, bill_date: date, rows: list[BillRow]) -> ReconciliationReport:
    start, end = day_bounds(bill_date)
    orders = await PaymentOrder.filter(channel__in=CHANNEL_ORDERS[provider], paid_at__gte=start, paid_at__lt=end).all()
    ours = {o.out_trade_no: o for o in orders}
    refunds = await PaymentRefund.filter(
        order__channel__in=CHANNEL_ORDERS[provider], state="success", done_at__gte=start, done_at__lt=end
    ).prefetch_related("order")
    our_refunds = {r.out_refund_no: r for r in refunds}

    items: list[dict] = []
    counts = {"matched": 0, "channel_only": 0, "ours_only": 0, "amount_mismatch": 0}
    refund_counts = {"matched": 0, "channel_only": 0, "ours_only": 0, "amount_mismatch": 0}
    totals = {"channel_paid_fen": 0, "our_paid_fen": 0, "channel_refund_fen": 0, "our_refund_fen": 0}
    seen_pay: set[str] = set()
    seen_refund: set[str] = set()
    for row in rows:
        if row.kind == "pay":
            totals["channel_paid_fen"] += row.amount_fen
            seen_pay.add(row.out_trade_no)
            order = ours.get(row.out_trade_no) or await PaymentOrder.get_or_none(out_trade_no=row.out_trade_no)
            if order is None or order.paid_at is None:
                counts["channel_only"] += 1
                items.append(_item("channel_only", row, ours_fen=None))
            elif order.amount_fen != row.amount_fen:
                counts["amount_mismatch"] += 1
                items.append(_item("amount_mismatch", row, ours_fen=order.amount_fen))
            else:
                counts["matched"] += 1
        else:
            totals["channel_refund_fen"] += row.amount_fen
            key = row.out_refund_no or ""
            seen_refund.add(key)
            refund = our_refunds.get(key) or await PaymentRefund.get_or_none(out_refund_no=key)
            if refund is None or refund.state != "success":
                refund_counts["channel_only"] += 1
                items.append(_item("refund_channel_only", row, ours_fen=None))
            elif refund.amount_fen != row.amount_fen:
                refund_counts["amount_mismatch"] += 1
                items.append(_item("refund_amount_mismatch", row, ours_fen=refund.amount_fen))
            else:
                refund_counts["matched"] += 1
    for order in orders:
        totals["our_paid_fen"] += order.amount_fen
        if order.out_trade_no not in seen_pay:
            counts["ours_only"] += 1
            items.append(
                {
                    "kind": "ours_only",
                    "out_trade_no": order.out_trade_no,
                    "payment_id": order.payment_id,
                    "ours_fen": order.amount_fen,
                    "channel_fen": None,
                    "at": order.paid_at.isoformat(),
                }
            )
    for refund in refunds:
        totals["our_refund_fen"] += refund.amount_fen
        if refund.out_refund_no not in seen_refund:
            refund_counts["ours_only"] += 1
            items.append(
                {
                    "kind": "refund_ours_only",
                    "out_trade_no": refund.order.out_trade_no,
                    "out_refund_no": refund.out_refund_no,
                    "ours_fen": refund.amount_fen,
                    "channel_fen": None,
                    "at": refund.done_at.isoformat() if refund.done_at else None,
                }
            )
    summary = {
        "payments": counts,
        "refunds": refund_counts,
        "totals": totals,
        "balanced": not items,
        "bill_rows": len(rows),
    }
    report, _ = await ReconciliationReport.update_or_create(
        channel=provider, bill_date=bill_date, defaults={"summary": summary, "items": items}
    )
    return report


def _item(kind: str, row: BillRow, *, ours_fen: int | None) -> dict:
    return {
        "kind": kind,
        "out_trade_no": row.out_trade_no,
        "out_refund_no": row.out_refund_no,
        "transaction_id": row.transaction_id,
        "channel_fen": row.amount_fen,
        "ours_fen": ours_fen,
        "at": row.at.isoformat(),
    }


def report_view(report: ReconciliationReport) -> dict:
    return {
        "channel": report.channel,
        "bill_date": report.bill_date.isoformat(),
        "created_at": report.created_at.isoformat(),
        "summary": report.summary,
        "items": report.items,
    }

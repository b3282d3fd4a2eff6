"""Reconciliation (对账) of a prepared bill against factory orders (handlers.payments.reconcile)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from core.china_time import CHINA
from handlers.payments.reconcile import reconcile
from payments.base import BillRow
from storage.models import CaseStatus, PaymentOrder, PaymentRefund, ReconciliationReport
from tests import factories

DAY = date(2026, 11, 29)
NOON = datetime.combine(DAY, time(12, 0), tzinfo=CHINA).astimezone(UTC)


async def paid_order(amount_fen: int, channel: str = "wechat", at: datetime = NOON) -> PaymentOrder:
    case = await factories.create_case(user=await factories.create_user(level="L3"), status=CaseStatus.IN_REVIEW)
    case = await factories.assess_fee(case, amount_fen=amount_fen)
    order = await factories.create_order(case=case, channel=channel, state="paid")
    await PaymentOrder.filter(id=order.id).update(paid_at=at)
    return await PaymentOrder.get(id=order.id)


def pay_row(order_no: str, fen: int) -> BillRow:
    return BillRow(kind="pay", out_trade_no=order_no, transaction_id="42" + order_no[-8:], amount_fen=fen, at=NOON)


async def test_a_day_with_one_long_one_short_and_one_mismatch(db):
    matched = await paid_order(2000)
    short = await paid_order(3000)  # paid here, missing from the bill: 短款
    mismatched = await paid_order(1500)
    other_day = await paid_order(999, at=NOON - timedelta(days=1))  # not this day's business
    alipay = await paid_order(4000, channel="alipay_qr")  # another channel's bill
    refunded = await paid_order(500)
    await PaymentOrder.filter(id=refunded.id).update(state="refunded", refunded_fen=500)
    refund = await PaymentRefund.create(
        order_id=refunded.id,
        out_refund_no=refunded.out_trade_no + "R1",
        amount_fen=500,
        cause="case_rejected",
        state="success",
        next_attempt_at=NOON,
        done_at=NOON + timedelta(hours=1),
    )
    rows = [
        pay_row(matched.out_trade_no, 2000),
        pay_row(mismatched.out_trade_no, 1600),
        pay_row("ZB20261129120000FFFFFFFFFF", 777),  # paid at the channel, unknown here: 长款
        pay_row(refunded.out_trade_no, 500),
        BillRow(
            kind="refund",
            out_trade_no=refunded.out_trade_no,
            transaction_id="42x",
            amount_fen=500,
            at=NOON,
            out_refund_no=refund.out_refund_no,
        ),
    ]
    report = await reconcile(provider="wechat", bill_date=DAY, rows=rows)
    summary = report.summary
    assert summary["payments"] == {"matched": 2, "channel_only": 1, "ours_only": 1, "amount_mismatch": 1}
    assert summary["refunds"] == {"matched": 1, "channel_only": 0, "ours_only": 0, "amount_mismatch": 0}
    assert summary["totals"] == {
        "channel_paid_fen": 2000 + 1600 + 777 + 500,
        "our_paid_fen": 2000 + 3000 + 1500 + 500,
        "channel_refund_fen": 500,
        "our_refund_fen": 500,
    }
    assert summary["balanced"] is False
    kinds = {item["kind"]: item for item in report.items}
    assert kinds["ours_only"]["out_trade_no"] == short.out_trade_no
    assert kinds["channel_only"]["channel_fen"] == 777
    assert (kinds["amount_mismatch"]["ours_fen"], kinds["amount_mismatch"]["channel_fen"]) == (1500, 1600)
    assert other_day.out_trade_no not in str(report.items) and alipay.out_trade_no not in str(report.items)
    # Run again: the same report, replaced, not a second one.
    await reconcile(provider="wechat", bill_date=DAY, rows=rows)
    assert await ReconciliationReport.filter(channel="wechat", bill_date=DAY).count() == 1


async def test_a_balanced_day(db):
    order = await paid_order(2000, channel="alipay_wap")
    report = await reconcile(provider="alipay", bill_date=DAY, rows=[pay_row(order.out_trade_no, 2000)])
    assert report.summary["balanced"] is True and report.items == []

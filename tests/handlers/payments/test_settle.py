"""What the channels say about trades and refunds, applied to orders on factory rows
(handlers.payments.settle / refunds / states). The wire side (signatures, decryption,
the simulators, real HTTP) is in tests/payments/ and tests/miniprogram_api/test_payments.py."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from tortoise.transactions import in_transaction

from core.kicks import NO_KICKS
from handlers.cases.platform_events import apply_platform_event
from handlers.payments.channels import Channels
from handlers.payments.refunds import apply_refund, open_refund
from handlers.payments.settle import apply_trade
from handlers.payments.states import IllegalTransition, move
from payments.base import ChannelRefund, ChannelTrade, fen_to_yuan, yuan_to_fen
from storage.models import (
    Case,
    CaseEvent,
    CaseStatus,
    Notification,
    Outbox,
    PaymentAlert,
    PaymentEvent,
    PaymentOrder,
    PaymentRefund,
)
from tests import factories

S = CaseStatus
MCHID, APPID, ALIPAY_APP, SELLER = "1900000109", "wx_sim_miniprogram", "2021000000000001", "2088000000000001"
# The adapters are not called by settlement: it reads only the ids a trade must carry.
CHANNELS = Channels(
    wechat=None, alipay=None, wechat_mchid=MCHID, wechat_appid=APPID, alipay_app_id=ALIPAY_APP, alipay_seller_id=SELLER
)


async def fee_case(status=S.IN_REVIEW, amount_fen=2000):
    case = await factories.create_case(user=await factories.create_user(level="L3"), status=status)
    return await factories.assess_fee(case, amount_fen=amount_fen, notice_no="510500261234")


def paid(order: PaymentOrder, **overrides) -> ChannelTrade:
    wechat = order.channel == "wechat"
    trade = ChannelTrade(
        out_trade_no=order.out_trade_no,
        state="paid",
        amount_fen=order.amount_fen,
        transaction_id="4200001234202611300000000001",
        paid_at=datetime.now(UTC),
        merchant_id=MCHID if wechat else SELLER,
        app_id=APPID if wechat else ALIPAY_APP,
        payer="o_payer",
    )
    return replace(trade, **overrides)


async def test_a_payment_moves_the_order_once_with_its_event_notification_and_platform_row(db):
    case = await fee_case()
    order = await factories.create_order(case=case)
    first = await apply_trade(paid(order), channels=CHANNELS, source="notify")
    again = await apply_trade(paid(order), channels=CHANNELS, source="query")
    assert (first.result, again.result) == ("paid", "duplicate")
    assert len(first.notification_ids) == 1 and again.notification_ids == ()
    fresh = await PaymentOrder.get(id=order.id)
    assert fresh.state == "paid" and fresh.transaction_id == "4200001234202611300000000001"
    assert (await Case.get(id=case.id)).fee_paid_at is not None
    notes = [e.note for e in await CaseEvent.filter(case_id=case.id).order_by("id")]
    assert notes[-1] == "已缴费 20.00 元（微信支付）"
    assert [n.kind for n in await Notification.filter(case_id=case.id)] == ["fee_paid"]
    rows = await Outbox.filter(case_id=case.id, kind="fee_paid")
    assert len(rows) == 1 and rows[0].payload["amount_fen"] == 2000 and rows[0].payload["channel"] == "wechat"
    assert rows[0].payload["notice_no"] == "510500261234"
    assert [(e.from_state, e.to_state, e.source) for e in await PaymentEvent.filter(order_id=order.id)] == [
        ("paying", "paid", "notify")
    ]


async def test_concurrent_copies_of_one_notify_pay_once(db):
    case = await fee_case()
    order = await factories.create_order(case=case)
    results = await asyncio.gather(*(apply_trade(paid(order), channels=CHANNELS, source="notify") for _ in range(20)))
    assert sorted(r.result for r in results).count("paid") == 1
    assert await Outbox.filter(case_id=case.id, kind="fee_paid").count() == 1
    assert await Notification.filter(case_id=case.id, kind="fee_paid").count() == 1
    assert await PaymentEvent.filter(order_id=order.id, to_state="paid").count() == 1


@pytest.mark.parametrize(
    "field, value",
    [("amount_fen", 1999), ("merchant_id", "1900000999"), ("app_id", "wx_another_app"), ("amount_fen", None)],
)
async def test_a_trade_that_is_not_our_order_changes_nothing_and_alerts_once(db, field, value):
    case = await fee_case()
    order = await factories.create_order(case=case)
    for _ in range(3):
        settled = await apply_trade(paid(order, **{field: value}), channels=CHANNELS, source="notify")
        assert settled.result == "mismatch"
    assert (await PaymentOrder.get(id=order.id)).state == "paying"
    assert await Outbox.filter(case_id=case.id, kind="fee_paid").count() == 0
    alerts = await PaymentAlert.filter(order_id=order.id)
    assert [a.kind for a in alerts] == ["mismatch"] and field in alerts[0].detail["fields"]


async def test_alipay_trades_are_checked_against_the_seller_and_app(db):
    case = await fee_case()
    order = await factories.create_order(case=case, channel="alipay_qr")
    assert (
        await apply_trade(paid(order, merchant_id="2088999999999999"), channels=CHANNELS, source="notify")
    ).result == "mismatch"
    assert (await apply_trade(paid(order), channels=CHANNELS, source="notify")).result == "paid"


async def test_an_unknown_order_is_an_alert(db):
    trade = ChannelTrade(out_trade_no="ZB20261130000000ABCDEF0123", state="paid", amount_fen=1)
    assert (await apply_trade(trade, channels=CHANNELS, source="notify")).result == "unknown_order"
    assert await PaymentAlert.filter(kind="unknown_order").count() == 1


async def test_paid_after_close_is_kept_and_refunded_with_an_alert(db):
    case = await fee_case()
    order = await factories.create_order(case=case, state="closed")
    settled = await apply_trade(paid(order), channels=CHANNELS, source="notify")
    assert settled.result == "paid_after_close" and settled.refund_due
    fresh = await PaymentOrder.get(id=order.id)
    assert fresh.state == "refunding" and fresh.transaction_id and fresh.paid_at
    refund = await PaymentRefund.get(order_id=order.id)
    assert (refund.cause, refund.amount_fen, refund.state) == ("paid_after_close", 2000, "requested")
    assert [a.kind for a in await PaymentAlert.filter(order_id=order.id)] == ["paid_after_close"]
    # The fee itself is still due: a closed order paid nothing towards it.
    assert (await Case.get(id=case.id)).fee_paid_at is None
    # The same news again changes nothing.
    assert (await apply_trade(paid(order), channels=CHANNELS, source="notify")).result == "duplicate"
    assert await PaymentRefund.filter(order_id=order.id).count() == 1


async def test_a_trade_closed_at_the_channel_closes_the_order_and_frees_the_fee(db):
    case = await fee_case()
    order = await factories.create_order(case=case)
    closed = ChannelTrade(
        out_trade_no=order.out_trade_no, state="closed", amount_fen=2000, merchant_id=MCHID, app_id=APPID
    )
    assert (await apply_trade(closed, channels=CHANNELS, source="query")).result == "closed"
    fresh = await PaymentOrder.get(id=order.id)
    assert fresh.state == "closed" and fresh.open_slot is None and fresh.close_reason == "channel_closed"


async def test_a_payment_for_a_case_rejected_meanwhile_is_refunded(db):
    case = await fee_case(status=S.REJECTED)
    order = await factories.create_order(case=case)
    settled = await apply_trade(paid(order), channels=CHANNELS, source="notify")
    assert settled.result == "paid" and settled.refund_due
    assert (await PaymentOrder.get(id=order.id)).state == "refunding"
    assert (await PaymentRefund.get(order_id=order.id)).cause == "case_rejected"


async def test_a_rejection_refunds_the_paid_fee(db):
    case = await fee_case()
    order = await factories.create_order(case=case, state="paid")
    result = await apply_platform_event(
        case_no=case.case_no,
        seq=case.platform_seq + 1,
        event="rejected",
        data={"reason": "不符合条件"},
        at=None,
        kicks=NO_KICKS,
    )
    assert result == "applied"
    assert (await PaymentOrder.get(id=order.id)).state == "refunding"
    refund = await PaymentRefund.get(order_id=order.id)
    assert (refund.cause, refund.amount_fen) == ("case_rejected", 2000)
    # A duplicate of the callback opens no second refund.
    await apply_platform_event(
        case_no=case.case_no, seq=case.platform_seq + 1, event="rejected", data={"reason": "x"}, at=None, kicks=NO_KICKS
    )
    assert await PaymentRefund.filter(order_id=order.id).count() == 1


async def test_a_refund_settles_once_and_tells_the_citizen(db):
    case = await fee_case(status=S.REJECTED)
    order = await factories.create_order(case=case, state="paid")
    await apply_platform_event(
        case_no=case.case_no, seq=case.platform_seq + 1, event="closed", data={}, at=None, kicks=NO_KICKS
    )
    async with in_transaction():
        fresh = await PaymentOrder.get(id=order.id)
        await move(fresh, "refunding", source="refund")
        refund = await open_refund(fresh, cause="case_rejected", reason="退还")
    done = ChannelRefund(
        out_refund_no=refund.out_refund_no,
        out_trade_no=order.out_trade_no,
        state="success",
        amount_fen=2000,
        refund_id="50300",
    )
    first = await apply_refund(done, source="notify")
    second = await apply_refund(done, source="query")
    assert first[0] == 1 and len(first[1]) == 1 and second == (0, [])
    fresh = await PaymentOrder.get(id=order.id)
    assert (fresh.state, fresh.refunded_fen) == ("refunded", 2000)
    assert (await PaymentRefund.get(id=refund.id)).state == "success"
    assert [n.kind for n in await Notification.filter(case_id=case.id, kind="fee_refunded")] == ["fee_refunded"]


async def test_illegal_moves_are_refused_and_stale_ones_lose(db):
    case = await fee_case()
    order = await factories.create_order(case=case, state="paid")
    with pytest.raises(IllegalTransition):
        await move(order, "closed", source="job")
    stale = await PaymentOrder.get(id=order.id)
    assert await move(order, "refunding", source="refund")
    assert not await move(stale, "refunding", source="refund")  # read as paid, no longer so
    assert await PaymentEvent.filter(order_id=order.id).count() == 1


def test_yuan_and_fen_are_exact():
    assert yuan_to_fen("0.01") == 1 and fen_to_yuan(1) == "0.01"
    assert yuan_to_fen("99999999.99") == 9_999_999_999 and fen_to_yuan(9_999_999_999) == "99999999.99"
    assert yuan_to_fen("20.00") == 2000 and fen_to_yuan(2000) == "20.00"
    for bad in ("1.5", "1e3", "-1.00", "0.001", "01.00", " 1.00", "1,00", "", "NaN"):
        with pytest.raises(ValueError):
            yuan_to_fen(bad)
    for bad in (-1, 1.0, True, "1"):
        with pytest.raises(ValueError):
            fen_to_yuan(bad)

"""A citizen's orders: one open order per fee of a case, created idempotently, shown with what
the mini-program needs to pay it, and asked about once when the notify is late.

Creating an order is three steps, so a crash or a channel outage never leaves a half-made one:
the row (`created`, holding the fee's `open_slot`, unique) commits first; then the channel is
asked; then the row moves to `paying` with the channel's answer, or to `closed`. The sweep closes
a `created` row whose process died between the two.
"""

from __future__ import annotations

import base64
import io
import logging
import re
import secrets
from datetime import UTC, datetime, timedelta

import qrcode
from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from core.china_time import CHINA
from core.errors import Conflict, NotFound, Unavailable, UpstreamError, ValidationFailed
from core.kicks import Kicks
from handlers.cases.access import my_case
from handlers.payments.channels import CHANNEL_LABELS, CHANNELS, Channels, provider_of
from handlers.payments.settle import Settled, after_settled, apply_trade
from handlers.payments.states import MONEY_RECEIVED, OPEN, STATUS_LABELS, move
from payments.base import PaymentError
from storage.models import Case, CaseStatus, PaymentOrder, PaymentRefund, User

log = logging.getLogger("zhangban.payments")
S = CaseStatus
PAYABLE = (S.ACCEPTED, S.IN_REVIEW, S.APPROVED)
KEY = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")
# A poll asks the channel at most this often per order.
POLL_EVERY = timedelta(seconds=3)
# An open order is reused for the same channel only if the citizen has this long left to pay.
REUSE_MARGIN = timedelta(minutes=2)


REFUSED = "支付渠道拒绝了该订单，请稍后再试或更换支付方式"


def channel_unavailable() -> Unavailable:
    return Unavailable("支付渠道暂时无法连接，请稍后再试", code="payment_channel_unavailable", retry_after=5)


def new_out_trade_no(now: datetime) -> str:
    """26 characters of [0-9A-Z], valid at both channels (6-32 of [0-9A-Za-z_-]), unguessable."""
    return f"ZB{now.astimezone(CHINA):%Y%m%d%H%M%S}{secrets.token_hex(5).upper()}"


def qr_png(text: str) -> str:
    """A PNG of `text` as a QR code, base64 (for a PC payer scanning with Alipay)."""
    image = qrcode.make(text, box_size=6, border=2)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


class Payments:
    """Orders for citizens' fees, over the channels."""

    def __init__(self, *, channels: Channels, expire_minutes: int, kicks: Kicks):
        self.channels, self.expire, self.kicks = channels, timedelta(minutes=expire_minutes), kicks

    # -- create ----------------------------------------------------------------------------

    async def create(self, *, user: User, case_no: str, channel: str, idempotency_key: str) -> dict:
        """The order to pay the case's fee with: the order made earlier with the same key, the
        fee's paid order, the open order of the same channel, or a new one."""
        view, settled = await self._create(user=user, case_no=case_no, channel=channel, idempotency_key=idempotency_key)
        await after_settled(settled, self.kicks)
        return view

    async def _create(
        self, *, user: User, case_no: str, channel: str, idempotency_key: str
    ) -> tuple[dict, Settled | None]:
        if channel not in CHANNELS:
            raise ValidationFailed(fields={"channel": f"应为 {'、'.join(CHANNELS)} 之一"})
        if not KEY.match(idempotency_key or ""):
            raise ValidationFailed(fields={"Idempotency-Key": "应为 8-128 位字母、数字或 . _ : -"})
        replay = await PaymentOrder.get_or_none(user_id=user.id, idempotency_key=idempotency_key)
        case = await my_case(user=user, case_no=case_no)
        if replay is not None:
            if replay.case_id != case.id or replay.channel != channel:
                raise Conflict("该幂等键已用于另一笔支付，请勿重复使用", code="idempotency_key_reused")
            return await self.view(replay), None
        paid = await self._paid_order(case)
        if paid is not None:
            return await self.view(paid), None
        if not case.fee_fen or case.status not in PAYABLE:
            raise Conflict("该办件当前没有待缴费用", code="no_fee_due")
        settled = None
        current = await PaymentOrder.get_or_none(open_slot=self._slot(case))
        if current is not None:
            now = datetime.now(UTC)
            if current.channel == channel and current.state == "paying" and current.expires_at - now > REUSE_MARGIN:
                return await self.view(current), None
            # Switching channel (or an order about to expire): the old one is closed at its
            # channel first, so the citizen can never pay twice.
            settled = await self._close(current, reason="switched")
            paid = await self._paid_order(case)
            if paid is not None:
                return await self.view(paid), settled
        order = await self._new_order(user=user, case=case, channel=channel, idempotency_key=idempotency_key)
        await self._open_at_channel(order, case=case, user=user)
        return await self.view(order), settled

    @staticmethod
    def _slot(case: Case) -> str:
        return f"{case.id}:{case.fee_ref or 'catalogue'}"

    async def _paid_order(self, case: Case) -> PaymentOrder | None:
        return (
            await PaymentOrder.filter(case_id=case.id, fee_ref=case.fee_ref or "catalogue", state__in=MONEY_RECEIVED)
            .order_by("-id")
            .first()
        )

    async def _new_order(self, *, user: User, case: Case, channel: str, idempotency_key: str) -> PaymentOrder:
        now = datetime.now(UTC)
        try:
            async with in_transaction():
                return await PaymentOrder.create(
                    payment_id="pay_" + secrets.token_hex(12),
                    out_trade_no=new_out_trade_no(now),
                    case_id=case.id,
                    user_id=user.id,
                    fee_ref=case.fee_ref or "catalogue",
                    open_slot=self._slot(case),
                    idempotency_key=idempotency_key,
                    channel=channel,
                    amount_fen=case.fee_fen,
                    notice_no=case.fee_notice_no,
                    expires_at=now + self.expire,
                )
        except IntegrityError:
            # Another request made an order for this fee (or this key) at the same moment.
            raise Conflict("该笔费用正在支付中，请刷新后重试", code="payment_in_progress") from None

    async def _open_at_channel(self, order: PaymentOrder, *, case: Case, user: User) -> None:
        subject = f"{case.service_name or case.service_code}-{case.case_no}"[:120]
        try:
            if order.channel == "wechat":
                if not user.openid:
                    raise PaymentError("citizen has no mini-program openid", code="NO_OPENID")
                prepay_id = await self.channels.wechat.jsapi_prepay(
                    out_trade_no=order.out_trade_no,
                    description=subject,
                    amount_fen=order.amount_fen,
                    payer_openid=user.openid,
                    expires_at=order.expires_at,
                )
                pay_data = {"prepay_id": prepay_id}
            elif order.channel == "alipay_qr":
                qr_code = await self.channels.alipay.precreate(
                    out_trade_no=order.out_trade_no,
                    subject=subject,
                    amount_fen=order.amount_fen,
                    expires_at=order.expires_at,
                )
                pay_data = {"qr_code": qr_code}
            else:
                pay_data = {
                    "pay_url": self.channels.alipay.wap_pay_url(
                        out_trade_no=order.out_trade_no,
                        subject=subject,
                        amount_fen=order.amount_fen,
                        expires_at=order.expires_at,
                    )
                }
        except PaymentError as exc:
            async with in_transaction():
                await move(
                    order,
                    "closed",
                    source="citizen",
                    data={"error": f"{exc.code}: {exc}"[:200]},
                    closed_at=datetime.now(UTC),
                    close_reason="channel_error",
                    open_slot=None,
                )
            log.warning("order %s refused by %s: %s", order.out_trade_no, order.channel, exc)
            if exc.retryable:
                raise channel_unavailable() from None
            raise UpstreamError(
                "支付渠道拒绝了该订单，请稍后再试或更换支付方式", code="payment_channel_refused"
            ) from None
        async with in_transaction():
            await move(order, "paying", source="citizen", pay_data=pay_data)

    async def _close(self, order: PaymentOrder, *, reason: str) -> Settled | None:
        """Closes an open order at its channel, then here; a trade paid meanwhile is settled instead."""
        if order.state == "paying":
            try:
                await self.channels.close(order.channel, order.out_trade_no)
            except PaymentError as exc:
                # Paid meanwhile (or the channel cannot say): what the channel holds decides.
                trade = await self.channels.query(order.channel, order.out_trade_no)
                if trade.state in ("paid", "refunded"):
                    return await apply_trade(trade, channels=self.channels, source="query")
                if exc.retryable:
                    raise channel_unavailable() from None
        async with in_transaction():
            fresh = await PaymentOrder.select_for_update().get(id=order.id)
            if fresh.state in OPEN:
                await move(
                    fresh, "closed", source="citizen", closed_at=datetime.now(UTC), close_reason=reason, open_slot=None
                )
        return None

    # -- read ------------------------------------------------------------------------------

    async def mine(self, *, user: User, payment_id: str) -> PaymentOrder:
        order = await PaymentOrder.get_or_none(payment_id=payment_id, user_id=user.id)
        if order is None:
            raise NotFound("支付订单不存在", code="payment_not_found")
        return order

    async def poll(self, *, user: User, payment_id: str) -> dict:
        """The order; if still unpaid, the channel is asked once (the notify may be late)."""
        order = await self.mine(user=user, payment_id=payment_id)
        settled = None
        now = datetime.now(UTC)
        if order.state == "paying" and (order.last_checked_at is None or now - order.last_checked_at >= POLL_EVERY):
            await PaymentOrder.filter(id=order.id).update(last_checked_at=now)
            try:
                trade = await self.channels.query(order.channel, order.out_trade_no)
            except PaymentError as exc:
                log.info("poll of %s could not ask %s: %s", order.out_trade_no, order.channel, exc)
            else:
                settled = await apply_trade(trade, channels=self.channels, source="query")
            order = await PaymentOrder.get(id=order.id)
        await after_settled(settled, self.kicks)
        return await self.view(order)

    async def list_for_case(self, *, user: User, case_no: str) -> dict:
        case = await my_case(user=user, case_no=case_no)
        orders = await PaymentOrder.filter(case_id=case.id).order_by("-id").limit(50)
        refunds: dict[int, list[PaymentRefund]] = {}
        for refund in await PaymentRefund.filter(order_id__in=[o.id for o in orders]).order_by("id"):
            refunds.setdefault(refund.order_id, []).append(refund)
        return {
            "items": [
                await self.view(o, with_pay=False, case_no=case.case_no, refunds=refunds.get(o.id, [])) for o in orders
            ]
        }

    async def view(
        self,
        order: PaymentOrder,
        *,
        with_pay: bool = True,
        case_no: str | None = None,
        refunds: list[PaymentRefund] | None = None,
    ) -> dict:
        """The order as its citizen sees it (`case_no` and `refunds` when the caller has them already)."""
        if case_no is None:
            case_no = await Case.filter(id=order.case_id).first().values_list("case_no", flat=True)
        if refunds is None:
            refunds = await PaymentRefund.filter(order_id=order.id).order_by("id")
        body = {
            "payment_id": order.payment_id,
            "out_trade_no": order.out_trade_no,
            "case_no": case_no,
            "amount_fen": order.amount_fen,
            "channel": order.channel,
            "channel_label": CHANNEL_LABELS[order.channel],
            "status": order.state,
            "status_label": STATUS_LABELS[order.state],
            "expires_at": order.expires_at.isoformat(),
            "created_at": order.created_at.isoformat(),
            "paid_at": order.paid_at.isoformat() if order.paid_at else None,
            "notice_no": order.notice_no,
            "refunded_fen": order.refunded_fen,
            "refunds": [
                {
                    "amount_fen": r.amount_fen,
                    "status": r.state,
                    "reason": r.reason,
                    "created_at": r.created_at.isoformat(),
                }
                for r in refunds
            ],
            "receipt": order.receipt,
        }
        if with_pay and order.state == "paying":
            if order.channel == "wechat":
                body["request_payment"] = self.channels.wechat.pay_params(order.pay_data["prepay_id"])
            elif order.channel == "alipay_qr":
                body["qr_code"] = order.pay_data["qr_code"]
                body["qr_png_base64"] = qr_png(order.pay_data["qr_code"])
            else:
                body["pay_url"] = order.pay_data["pay_url"]
        return body


async def fee_of_case(case: Case) -> dict | None:
    """The case's fee as the case view shows it: amount, notice number, paid or not, its order and receipt."""
    if not case.fee_fen:
        return None
    fee_ref = case.fee_ref or "catalogue"
    order = await PaymentOrder.filter(case_id=case.id, fee_ref=fee_ref).exclude(state="closed").order_by("-id").first()
    return {
        "amount_fen": case.fee_fen,
        "notice_no": case.fee_notice_no,
        "paid": case.fee_paid_at is not None,
        "paid_at": case.fee_paid_at.isoformat() if case.fee_paid_at else None,
        "payment": None
        if order is None
        else {
            "payment_id": order.payment_id,
            "channel": order.channel,
            "status": order.state,
            "status_label": STATUS_LABELS[order.state],
            "refunded_fen": order.refunded_fen,
        },
        "receipt": order.receipt if order is not None else None,
    }


__all__ = ["Payments", "fee_of_case", "provider_of"]

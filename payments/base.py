"""What every payment channel adapter speaks: trades, refunds, bill rows, notifies and errors.

The adapters (`payments/wechatpay.py`, `payments/alipay.py`) turn each channel's wire format
into these; the payments use cases (`handlers/payments.py`) speak only these. Amounts are
integer fen everywhere; a channel that writes yuan ("12.34") is converted exactly by
`yuan_to_fen` / `fen_to_yuan`, never through a float.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Literal

# The channel's view of a trade, normalised:
#   pending   - created, not paid (WeChat NOTPAY/USERPAYING, Alipay WAIT_BUYER_PAY)
#   paid      - money taken (WeChat SUCCESS, Alipay TRADE_SUCCESS/TRADE_FINISHED)
#   refunded  - paid, then refunded in part or whole (WeChat REFUND)
#   closed    - closed unpaid (WeChat CLOSED/REVOKED/PAYERROR, Alipay TRADE_CLOSED while unpaid)
#   not_found - the channel never heard of it (WeChat ORDER_NOT_EXIST, Alipay ACQ.TRADE_NOT_EXIST)
TradeState = Literal["pending", "paid", "refunded", "closed", "not_found"]
RefundState = Literal["processing", "success", "failed", "closed"]

_YUAN = re.compile(r"^(0|[1-9][0-9]{0,11})\.([0-9]{2})$")


def yuan_to_fen(text: str) -> int:
    """'12.34' -> 1234, exactly; anything but digits with exactly two decimals is a ValueError."""
    match = _YUAN.match(text if isinstance(text, str) else "")
    if not match:
        raise ValueError(f"not an amount in yuan with two decimals: {text!r}")
    return int(match.group(1)) * 100 + int(match.group(2))


def fen_to_yuan(fen: int) -> str:
    """1234 -> '12.34'; 1 -> '0.01'."""
    if isinstance(fen, bool) or not isinstance(fen, int) or fen < 0:
        raise ValueError(f"not an amount in fen: {fen!r}")
    return f"{fen // 100}.{fen % 100:02d}"


@dataclass(frozen=True)
class ChannelTrade:
    """A trade as the channel reports it (query answer or notify)."""

    out_trade_no: str
    state: TradeState
    amount_fen: int | None = None  # the order total the channel holds
    transaction_id: str | None = None  # WeChat transaction_id / Alipay trade_no
    paid_at: datetime | None = None
    merchant_id: str | None = None  # WeChat mchid / Alipay seller_id
    app_id: str | None = None  # WeChat appid / Alipay app_id
    payer: str | None = None  # WeChat payer openid / Alipay buyer_logon_id (masked by Alipay)
    raw: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class ChannelRefund:
    """A refund as the channel reports it."""

    out_refund_no: str
    out_trade_no: str
    state: RefundState
    amount_fen: int
    refund_id: str | None = None
    refunded_at: datetime | None = None
    raw: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class BillRow:
    """One line of a channel's daily bill."""

    kind: Literal["pay", "refund"]
    out_trade_no: str
    transaction_id: str
    amount_fen: int  # for a refund: the amount refunded
    at: datetime
    out_refund_no: str | None = None


@dataclass(frozen=True)
class Notify:
    """A verified notify: exactly one of `trade` / `refund` is set."""

    channel: Literal["wechat", "alipay"]
    notify_id: str  # the channel's id of this notify (WeChat `id`, Alipay `notify_id`)
    trade: ChannelTrade | None = None
    refund: ChannelRefund | None = None


class PaymentError(Exception):
    """A channel call that failed. `retryable`: a timeout, a 5xx, a SYSTEM_ERROR; not: a refusal."""

    def __init__(self, message: str, *, code: str = "", retryable: bool = False, status: int | None = None):
        super().__init__(message)
        self.code, self.retryable, self.status = code, retryable, status


class NotifyRejected(Exception):
    """A notify we must not act on: bad or test signature, stale timestamp, undecryptable,
    another merchant's. `reason` is a stable word for logs and metrics."""

    def __init__(self, reason: str, message: str = ""):
        super().__init__(message or reason)
        self.reason = reason


BillDate = date

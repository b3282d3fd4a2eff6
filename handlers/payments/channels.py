"""The payment channels as the use cases see them: the two adapters and what identifies us there."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Protocol

from payments.base import BillRow, ChannelRefund, ChannelTrade

CHANNELS = ("wechat", "alipay_qr", "alipay_wap")
CHANNEL_LABELS = {"wechat": "微信支付", "alipay_qr": "支付宝", "alipay_wap": "支付宝"}


def provider_of(channel: str) -> str:
    """'wechat' or 'alipay': the company behind an order's channel."""
    return "wechat" if channel == "wechat" else "alipay"


class WeChatPayPort(Protocol):
    async def jsapi_prepay(
        self, *, out_trade_no: str, description: str, amount_fen: int, payer_openid: str, expires_at: datetime
    ) -> str: ...
    def pay_params(self, prepay_id: str) -> dict[str, str]: ...
    async def query(self, out_trade_no: str) -> ChannelTrade: ...
    async def close(self, out_trade_no: str) -> None: ...
    async def refund(
        self, *, out_trade_no: str, out_refund_no: str, amount_fen: int, total_fen: int, reason: str
    ) -> ChannelRefund: ...
    async def query_refund(self, out_refund_no: str) -> ChannelRefund: ...
    async def trade_bill(self, bill_date: date) -> list[BillRow]: ...


class AlipayPort(Protocol):
    async def precreate(self, *, out_trade_no: str, subject: str, amount_fen: int, expires_at: datetime) -> str: ...
    def wap_pay_url(self, *, out_trade_no: str, subject: str, amount_fen: int, expires_at: datetime) -> str: ...
    async def query(self, out_trade_no: str) -> ChannelTrade: ...
    async def close(self, out_trade_no: str) -> None: ...
    async def refund(
        self, *, out_trade_no: str, out_request_no: str, amount_fen: int, reason: str
    ) -> ChannelRefund: ...
    async def query_refund(self, *, out_trade_no: str, out_request_no: str) -> ChannelRefund: ...
    async def bill(self, bill_date: date) -> list[BillRow]: ...


@dataclass(frozen=True)
class Channels:
    """The adapters, and the merchant and app ids a channel's word must carry to be ours."""

    wechat: WeChatPayPort
    alipay: AlipayPort
    wechat_mchid: str
    wechat_appid: str
    alipay_app_id: str
    alipay_seller_id: str | None = None

    def expected(self, provider: str) -> tuple[str | None, str]:
        """(merchant id, app id) a trade of `provider` must carry (merchant None: not checked)."""
        if provider == "wechat":
            return self.wechat_mchid, self.wechat_appid
        return self.alipay_seller_id, self.alipay_app_id

    async def query(self, channel: str, out_trade_no: str) -> ChannelTrade:
        adapter = self.wechat if provider_of(channel) == "wechat" else self.alipay
        return await adapter.query(out_trade_no)

    async def close(self, channel: str, out_trade_no: str) -> None:
        adapter = self.wechat if provider_of(channel) == "wechat" else self.alipay
        await adapter.close(out_trade_no)

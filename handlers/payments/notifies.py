"""Notifies from the payment channels: verified by the adapter before a byte of content is
trusted, then applied like any other word of the channel (`settle.apply_trade`,
`refunds.apply_refund`). Duplicates and concurrent copies are harmless: the state moves once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from core.errors import BadRequest, Conflict
from core.kicks import Kicks
from handlers.payments.channels import Channels
from handlers.payments.refunds import apply_refund
from handlers.payments.settle import Settled, after_settled, apply_trade
from payments.base import Notify, NotifyRejected

log = logging.getLogger("zhangban.payments")


class NotifyRefused(BadRequest):
    code, message = "notify_rejected", "通知验签失败"


class NotifyNotApplied(Conflict):
    code, message = "notify_not_applied", "通知内容与订单不符"


class Notifies:
    def __init__(
        self,
        *,
        channels: Channels,
        kicks: Kicks,
        parse_wechat: Callable[[Mapping[str, str], bytes], Notify],
        parse_alipay: Callable[[Mapping[str, str]], Notify],
    ):
        self.channels, self.kicks = channels, kicks
        self.parse_wechat, self.parse_alipay = parse_wechat, parse_alipay

    async def wechat(self, headers: Mapping[str, str], body: bytes) -> str:
        try:
            notify = self.parse_wechat(headers, body)
        except NotifyRejected as exc:
            log.warning("wechat pay notify refused: %s", exc.reason)
            raise NotifyRefused(details={"reason": exc.reason}) from None
        return await self._apply(notify)

    async def alipay(self, form: Mapping[str, str]) -> str:
        try:
            notify = self.parse_alipay(form)
        except NotifyRejected as exc:
            log.warning("alipay notify refused: %s", exc.reason)
            raise NotifyRefused(details={"reason": exc.reason}) from None
        return await self._apply(notify)

    async def _apply(self, notify: Notify) -> str:
        if notify.refund is not None:
            _, notification_ids = await apply_refund(notify.refund, source="notify")
            if notification_ids:
                await self.kicks.push(notification_ids)
            return "refund"
        assert notify.trade is not None
        settled: Settled = await apply_trade(notify.trade, channels=self.channels, source="notify")
        await after_settled(settled, self.kicks)
        if settled.result in ("mismatch", "unknown_order"):
            # Not ours to take: the channel keeps retrying, and officials have the alert.
            raise NotifyNotApplied(details={"result": settled.result})
        return settled.result

"""The fan-out of a notice: every recipient once, through the channel they can receive.

One run of `Sender.run(notice_id)` (the job holds a Redis lock per notice, so one sender works a
notice at a time) repeats:

1. delivery rows still `pending` (handed out, not yet sent) are sent, a few at a time: each chunk
   is claimed (`pending` → `sending`) in the transaction that writes the recipients' inbox
   notifications, then sent concurrently within `NOTICE_SEND_RATE` messages per second over every
   sender (a counter per second in Redis), then each row gets its outcome;
2. with none pending, the next `NOTICE_BATCH` recipients after the notice's cursor are read in key
   order (keyset pagination: the audience is never loaded whole) and inserted as delivery rows,
   unique per notice and recipient (a row already there, from a sender that died, is left alone),
   in the transaction that moves the cursor;
3. once no recipient is left after the cursor and none is pending, the notice is `sent`.

Channels: a subscribe message while the citizen has a grant for the notice's mini-program template
(43101: WeChat holds none, try the next), else the official account's template message to a
follower (43004: no longer following), else the inbox alone (`skipped`). The inbox notification is
written for every citizen, whatever the channel. A follower not linked to a citizen has no inbox.

WeChat's quota and rate errors (45009, 45011), busy (-1) and an unreachable WeChat put the row back
to `pending`, give back the grant it took, and pause the notice with exponential backoff
(`paused_until`); the next run after that resumes it. Nothing is lost and nothing is sent twice.

A sender killed mid-chunk leaves at most that chunk `sending`: whether WeChat took those messages
is unknown, so the next run marks them `failed` ("interrupted") and never sends them again. Rows
already `sent`, `failed` or `skipped` are never touched again. Each run stops after `slice_s`
seconds, so the lock it holds never outlives it; the next tick goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from redis.asyncio import Redis
from tortoise.expressions import F
from tortoise.functions import Count
from tortoise.transactions import in_transaction

from core.backoff import backoff
from core.china_time import CHINA
from handlers.notices import audience
from handlers.push import clip
from storage.models import Follower, Notice, NoticeDelivery, Notification, SubscriptionGrant, User
from storage.redis import Keys
from wechat.client import OfficialAccountAPI, WeChatClient, WeChatError, WeChatUnavailable

log = logging.getLogger("zhangban.notices")

NO_GRANT, NOT_FOLLOWING = 43101, 43004
# Come back later: WeChat's quota (45009), its rate limit (45011), busy (-1).
PAUSE_ERRCODES = frozenset({45009, 45011, -1})
NOTIFICATION_KIND = "notice"
MAX_PAUSE_S = 3600


def notice_page(notice_id: int) -> str:
    return f"pages/notice/detail?id={notice_id}"


def notice_no(notice_id: int) -> str:
    return f"GG{notice_id}"


def template_data(notice: Notice) -> dict:
    """The template's keywords within WeChat's limits (thing 20, phrase 5, character_string 32)."""
    at = (notice.published_at or datetime.now(UTC)).astimezone(CHINA)
    return {
        "thing1": {"value": clip(notice.title, 20)},
        "character_string2": {"value": notice_no(notice.id)},
        "phrase3": {"value": "新通知"},
        "time4": {"value": f"{at:%Y年%m月%d日 %H:%M}"},
        "thing5": {"value": clip(notice.body, 20)},
    }


class _Pause(Exception):
    """WeChat asked us to slow down (or could not be reached): this recipient later."""

    def __init__(self, errcode: int | None):
        super().__init__(errcode)
        self.errcode = errcode


@dataclass
class _Outcome:
    status: str  # sent | failed | skipped
    channel: str = ""
    errcode: int | None = None
    detail: str = ""


@dataclass
class _Who:
    """What a chunk's recipients are reachable by, read for the whole chunk at once."""

    users: dict[int, dict]
    followers: dict[int, str]  # user id -> oa_openid
    grants: set[int]  # user ids with a grant left for the template


@dataclass
class Sender:
    mp: WeChatClient
    oa: OfficialAccountAPI
    mp_appid: str
    mp_template_id: str | None
    oa_template_id: str | None
    redis: Redis
    keys: Keys
    rate: int = 50  # messages per second over every sender; 0: no limit
    batch: int = 200
    concurrency: int = 8
    slice_s: float = 60.0
    miniprogram_state: str = "formal"

    # -- the run -----------------------------------------------------------------------------

    async def run(self, notice_id: int, *, now: datetime | None = None) -> str:
        """Sends what is left of one notice: "sent", "paused", "cancelled", "continue" (the slice
        ended, more to do) or "not_sending"."""
        now = now or datetime.now(UTC)
        notice = await Notice.get_or_none(id=notice_id)
        if notice is None or notice.status != "sending":
            return "not_sending"
        if notice.paused_until is not None and notice.paused_until > now:
            return "paused"
        interrupted = await NoticeDelivery.filter(notice_id=notice_id, status="sending").update(
            status="failed", errcode=None, detail="发送中断，是否送达未知，为避免重复不再补发", finished_at=now
        )
        if interrupted:
            log.warning("notice send resumed after an interruption", extra={"notice": notice_id, "rows": interrupted})
            await Notice.filter(id=notice_id).update(failed=F("failed") + interrupted)
        started = time.monotonic()
        while True:
            if not await Notice.filter(id=notice_id, status="sending").exists():
                return "cancelled"
            pending = (
                await NoticeDelivery.filter(notice_id=notice_id, status="pending").order_by("id").limit(self.batch)
            )
            if pending:
                for i in range(0, len(pending), self.concurrency):
                    if await self._send_chunk(notice, pending[i : i + self.concurrency], now) == "paused":
                        return "paused"
                if time.monotonic() - started > self.slice_s:
                    return "continue"
                continue
            if notice.exhausted:
                await self._finish(notice, now)
                return "sent"
            recipients = await audience.page(notice.audience, notice.cursor, self.batch)
            async with in_transaction():
                if recipients:
                    await NoticeDelivery.bulk_create(
                        [
                            NoticeDelivery(
                                notice_id=notice_id, recipient=r.key, user_id=r.user_id, oa_openid=r.oa_openid
                            )
                            for r in recipients
                        ],
                        ignore_conflicts=True,
                    )
                    notice.cursor = recipients[-1].cursor
                    await Notice.filter(id=notice_id).update(cursor=notice.cursor)
                else:
                    notice.exhausted = True
                    await Notice.filter(id=notice_id).update(exhausted=True)

    async def _finish(self, notice: Notice, now: datetime) -> None:
        """The notice is sent: its counters from the delivery rows themselves."""
        counts = await self.counts(notice.id)
        await Notice.filter(id=notice.id, status="sending").update(
            status="sent",
            finished_at=now,
            sent=counts.get("sent", 0),
            failed=counts.get("failed", 0),
            skipped=counts.get("skipped", 0),
            total=sum(counts.values()),
        )

    @staticmethod
    async def counts(notice_id: int) -> dict[str, int]:
        rows = (
            await NoticeDelivery.filter(notice_id=notice_id)
            .annotate(n=Count("id"))
            .group_by("status")
            .values("status", "n")
        )
        return {row["status"]: int(row["n"]) for row in rows}

    # -- one chunk ---------------------------------------------------------------------------

    async def _send_chunk(self, notice: Notice, rows: list[NoticeDelivery], now: datetime) -> str:
        who = await self._who(rows)
        title, body, page = clip(notice.title, 64), notice.body[:500], notice_page(notice.id)
        async with in_transaction():
            await NoticeDelivery.filter(id__in=[r.id for r in rows], status="pending").update(status="sending")
            inbox = [
                Notification(
                    dedup_key=f"notice:{notice.id}:{row.user_id}",
                    user_id=row.user_id,
                    kind=NOTIFICATION_KIND,
                    title=title,
                    body=body,
                    page=page,
                    # The notice's delivery row is its WeChat record; the pusher leaves this one alone.
                    push_status="inbox_only",
                    channel="notice",
                    next_attempt_at=now,
                )
                for row in rows
                if row.user_id is not None and row.user_id in who.users and who.users[row.user_id]["is_active"]
            ]
            if inbox:
                await Notification.bulk_create(inbox, ignore_conflicts=True)
        results = await asyncio.gather(*(self._deliver(notice, row, who) for row in rows), return_exceptions=True)
        done, paused, tally = [], [], {"sent": 0, "failed": 0, "skipped": 0}
        finished_at = datetime.now(UTC)
        for row, result in zip(rows, results, strict=True):
            if isinstance(result, _Pause):
                paused.append(row.id)
                continue
            if isinstance(result, BaseException):
                log.error("notice delivery failed unexpectedly", exc_info=result, extra={"notice": notice.id})
                result = _Outcome("failed", detail=f"内部错误：{type(result).__name__}")
            row.status, row.channel, row.errcode = result.status, result.channel, result.errcode
            row.detail, row.finished_at = result.detail[:200], finished_at
            done.append(row)
            tally[result.status] += 1
        async with in_transaction():
            if done:
                await NoticeDelivery.bulk_update(done, fields=["status", "channel", "errcode", "detail", "finished_at"])
            if paused:
                await NoticeDelivery.filter(id__in=paused).update(status="pending")
            await Notice.filter(id=notice.id).update(
                sent=F("sent") + tally["sent"],
                failed=F("failed") + tally["failed"],
                skipped=F("skipped") + tally["skipped"],
            )
            if paused:
                notice.quota_hits += 1
                until = now + backoff(notice.quota_hits, base_s=30, cap_s=MAX_PAUSE_S)
                await Notice.filter(id=notice.id).update(paused_until=until, quota_hits=F("quota_hits") + 1)
        if paused:
            log.warning("notice send paused by WeChat", extra={"notice": notice.id, "recipients": len(paused)})
            return "paused"
        return "ok"

    async def _who(self, rows: list[NoticeDelivery]) -> _Who:
        user_ids = sorted({r.user_id for r in rows if r.user_id is not None})
        if not user_ids:
            return _Who({}, {}, set())
        users = {u["id"]: u for u in await User.filter(id__in=user_ids).values("id", "openid", "unionid", "is_active")}
        followers: dict[int, str] = {}
        for user_id, openid in await Follower.filter(user_id__in=user_ids, subscribed=True).values_list(
            "user_id", "oa_openid"
        ):
            followers.setdefault(user_id, openid)
        by_unionid = {u["unionid"]: u["id"] for u in users.values() if u["unionid"] and u["id"] not in followers}
        if by_unionid:
            for unionid, openid in await Follower.filter(unionid__in=list(by_unionid), subscribed=True).values_list(
                "unionid", "oa_openid"
            ):
                followers.setdefault(by_unionid[unionid], openid)
        grants: set[int] = set()
        if self.mp_template_id:
            grants = set(
                await SubscriptionGrant.filter(
                    user_id__in=user_ids, template_id=self.mp_template_id, remaining__gt=0
                ).values_list("user_id", flat=True)
            )
        return _Who(users, followers, grants)

    # -- one recipient -----------------------------------------------------------------------

    async def _deliver(self, notice: Notice, row: NoticeDelivery, who: _Who) -> _Outcome:
        """The outcome for one recipient; raises _Pause to try them again later."""
        user = who.users.get(row.user_id) if row.user_id is not None else None
        if row.user_id is not None and (user is None or not user["is_active"]):
            return _Outcome("skipped", detail="用户已注销")
        oa_openid = row.oa_openid or (who.followers.get(row.user_id) if row.user_id is not None else None)
        data = template_data(notice)
        page = notice_page(notice.id)
        refused: list[tuple[int, str]] = []
        if self.mp_template_id and user is not None and user["openid"] and row.user_id in who.grants:
            if await self._take_grant(row.user_id):
                try:
                    await self._limit()
                    await self.mp.send_subscribe(
                        openid=user["openid"],
                        template_id=self.mp_template_id,
                        data=data,
                        page=page,
                        miniprogram_state=self.miniprogram_state,
                    )
                except WeChatError as exc:
                    if exc.errcode in PAUSE_ERRCODES:
                        await self._give_back_grant(row.user_id)
                        raise _Pause(exc.errcode) from None
                    if exc.errcode == NO_GRANT:
                        await SubscriptionGrant.filter(user_id=row.user_id, template_id=self.mp_template_id).update(
                            remaining=0
                        )
                    else:
                        refused.append((exc.errcode, exc.errmsg))
                except WeChatUnavailable:
                    await self._give_back_grant(row.user_id)
                    raise _Pause(None) from None
                else:
                    return _Outcome("sent", "subscribe", 0)
        if self.oa_template_id and oa_openid:
            try:
                await self._limit()
                await self.oa.send_template(
                    oa_openid, self.oa_template_id, data, miniprogram={"appid": self.mp_appid, "pagepath": page}
                )
            except WeChatError as exc:
                if exc.errcode in PAUSE_ERRCODES:
                    raise _Pause(exc.errcode) from None
                if exc.errcode == NOT_FOLLOWING:
                    await Follower.filter(oa_openid=oa_openid).update(subscribed=False)
                else:
                    refused.append((exc.errcode, exc.errmsg))
            except WeChatUnavailable:
                raise _Pause(None) from None
            else:
                return _Outcome("sent", "template", 0)
        if refused:
            errcode, errmsg = refused[-1]
            return _Outcome("failed", "", errcode, errmsg)
        if user is not None:
            return _Outcome("skipped", "inbox", None, "无订阅授权且未关注公众号，仅站内消息")
        return _Outcome("skipped", "", None, "已取消关注公众号")

    async def _take_grant(self, user_id: int) -> bool:
        return bool(
            await SubscriptionGrant.filter(user_id=user_id, template_id=self.mp_template_id, remaining__gt=0).update(
                remaining=F("remaining") - 1
            )
        )

    async def _give_back_grant(self, user_id: int) -> None:
        await SubscriptionGrant.filter(user_id=user_id, template_id=self.mp_template_id).update(
            remaining=F("remaining") + 1
        )

    async def _limit(self) -> None:
        """Waits for a slot within `rate` messages per second, counted in Redis over every sender."""
        if not self.rate:
            return
        while True:
            second = int(time.time())
            key = self.keys("notice", "rate", second)
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.expire(key, 5)
                taken, _ = await pipe.execute()
            if taken <= self.rate:
                return
            await asyncio.sleep(max(second + 1 - time.time(), 0.005))

"""Progress pushes: every citizen-visible change of a case reaches the citizen exactly once.

A notification is written in the same transaction as the case event that caused it; its
`dedup_key` names that event, so one change can never make two notifications, whatever the
callback duplicates, retries and restarts. The notification is the citizen's inbox item at
once. A job (kicked after the commit, and the sweep for kicks that were lost) then carries it
to WeChat through the first channel that can reach the citizen:

1. the mini-program subscribe message, while the citizen has a one-time grant left for the
   progress template (each grant is one message; errcode 43101 means WeChat holds none for
   us: fall through at once, no retry);
2. the official account's template message, when the citizen follows the account (linked by
   unionid); 43004 means they no longer do: fall through;
3. otherwise the inbox alone (`inbox_only`).

Transient failures (WeChat busy, unreachable, over quota) retry the notification with
exponential backoff up to PUSH_MAX_ATTEMPTS, and a subscribe grant taken for a send that did
not happen is given back. A worker takes notifications in batches with a lease (see `Pusher`);
one killed mid-push leaves them to be taken again when the lease runs out, and the attempts it
left unfinished are marked `interrupted` and sent again (whether WeChat took them is unknown:
at worst the pushes of the round in flight, at most PUSH_BATCH, reach a citizen twice). Each
attempt and its result is stored, so an official can see why a citizen was or was not reached.

Quiet hours (PUSH_QUIET_HOURS, China time, default 22:00-08:00): a non-urgent push found due
inside them waits until they end. Urgent ones (a correction to make, a fee to pay) go at once.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from tortoise.exceptions import IntegrityError
from tortoise.expressions import F
from tortoise.transactions import in_transaction

from core.backoff import backoff
from core.china_time import CHINA, QuietHours
from storage.models import Case, Follower, Notification, PushAttempt, SubscriptionGrant, User
from storage.sql import connection, is_postgres, rows
from wechat.client import OfficialAccountAPI, WeChatClient, WeChatError, WeChatUnavailable

log = logging.getLogger("zhangban.push")

# kind -> (status word for the template's `phrase` field, at most 5 Chinese characters)
PHRASES: dict[str, str] = {
    "delivered_to_platform": "已报送",
    "accepted": "已受理",
    "in_review": "审核中",
    "correction_requested": "需补正",
    "fee_assessed": "待缴费",
    "approved": "已通过",
    "rejected": "未通过",
    "result_issued": "已出证",
    "closed": "已办结",
    "overdue": "已超期",
    "fee_paid": "已缴费",
    "fee_refunded": "已退费",
    "receipt_issued": "已开票",
    "evaluation_verified": "已回访",
    "rectification_replied": "已整改",
    "evaluation_reviewed": "评价复核",
}
URGENT = frozenset({"correction_requested", "fee_assessed"})
NO_GRANT, NOT_FOLLOWING = 43101, 43004
OUTSIDE_WINDOW = 45015  # a customer-service message more than 48 hours after the follower's last message
TRANSIENT_ERRCODES = frozenset({-1, 45009, 45011})
# Refusals that mean "not through this channel": (attempt result, what officials read).
FALL_THROUGH = {
    NO_GRANT: ("no_grant", "用户未授权订阅消息（43101），改用下一渠道"),
    NOT_FOLLOWING: ("not_following", "用户已取消关注公众号"),
    OUTSIDE_WINDOW: ("outside_window", "超出48小时客服消息窗口（45015），改用下一渠道"),
}
MAX_BACKOFF_S = 3600


def case_page(case_no: str) -> str:
    return f"pages/case/detail?case_no={case_no}"


def _amount(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


# The decision's push invites the rating (好差评) of the case.
RATE_INVITE = "欢迎在小程序办件详情中对本次服务进行评价。"


def body_of(kind: str, data: dict) -> str:
    """What the citizen is told, in full (the inbox shows it; templates carry a short cut)."""
    reason = str(data.get("reason") or "").strip()
    if kind == "delivered_to_platform":
        return "您的申请已推送至审批部门，等待受理。"
    if kind == "accepted":
        return "审批部门已受理您的申请。"
    if kind == "in_review":
        return "审批部门正在审核您的申请。"
    if kind == "correction_requested":
        items = [*data.get("fields", []), *data.get("materials", [])]
        head = f"您的申请需要补正（{reason}）" if reason else "您的申请需要补正"
        return f"{head}，共{len(items)}项，请在小程序中按提示一次性修改后重新提交。"
    if kind == "fee_assessed":
        return f"应缴费用 {_amount(int(data.get('amount_fen', 0)))} 元，请在小程序中完成缴费。"
    if kind == "approved":
        return "您的申请已审批通过。" + RATE_INVITE
    if kind == "rejected":
        refused = f"很遗憾，您的申请未予通过：{reason}。" if reason else "很遗憾，您的申请未予通过。"
        return refused + RATE_INVITE
    if kind == "result_issued":
        if data.get("kind") == "mail" and data.get("tracking_no"):
            return f"办理结果已寄出，快递单号 {data['tracking_no']}。" + RATE_INVITE
        if data.get("licence_no"):
            return f"电子证照已出具（编号 {data['licence_no']}），可在小程序中查看。" + RATE_INVITE
        return "办理结果已出具，可在小程序中查看。" + RATE_INVITE
    if kind == "closed":
        return "您的办件已办结，欢迎对本次服务进行评价。"
    if kind == "fee_paid":
        paid = f"已收到您缴纳的费用 {_amount(int(data.get('amount_fen', 0)))} 元（{data.get('channel_label', '')}）"
        return paid + "，电子票据开具后将通知您。"
    if kind == "fee_refunded":
        return f"已退还费用 {_amount(int(data.get('amount_fen', 0)))} 元，原路退回您的支付账户。{reason}".strip()
    if kind == "receipt_issued":
        return f"缴费电子票据已开具，票据号 {data.get('receipt_no', '')}，可在办件详情中查验。"
    if kind == "overdue":
        return "您的办件已超过承诺办结时限，我们已督促承办部门尽快办理。"
    if kind == "evaluation_verified":
        return f"承办部门已就您的评价进行核实回访：{data.get('text', '')}"
    if kind == "rectification_replied":
        return f"承办部门已就您的评价完成整改：{data.get('text', '')}。请在小程序中反馈是否满意。"
    if kind == "evaluation_reviewed":
        if data.get("approved"):
            return f"经复核，您对本办件的评价不计入统计：{reason}"
        return f"经复核，您的评价继续有效，承办部门将继续整改。{reason}".strip()
    raise KeyError(kind)


async def notify(case: Case, *, kind: str, dedup_key: str, data: dict | None = None) -> Notification | None:
    """The notification of one case change (call inside the change's transaction), or None
    when the change is not one the citizen is told about (their own submit, resubmit, withdraw)."""
    if kind not in PHRASES:
        return None
    return await Notification.create(
        dedup_key=dedup_key,
        user_id=case.user_id,
        case_id=case.id,
        kind=kind,
        **message_of(case.service_name or case.service_code, case.case_no, kind, data or {}),
        next_attempt_at=datetime.now(UTC),
    )


def message_of(service: str, case_no: str, kind: str, data: dict) -> dict:
    """A case change's notification text: title, body, page and urgency (what `notify` writes,
    and the platform callback's single statement too)."""
    return {
        "title": f"{service}：{PHRASES[kind]}"[:64],
        "body": body_of(kind, data)[:500],
        "page": case_page(case_no),
        "urgent": kind in URGENT,
    }


# A notification written by hand-written SQL (platform callbacks, payment notifies): the
# columns `notify` fills, in the order `notification_values` gives them, after a dedup_key.
NOTIFICATION_COLUMNS = (
    "user_id, case_id, kind, title, body, page, urgent, push_status, channel, attempts, next_attempt_at, created_at"
)
NOTIFICATION_VALUES = "?, ?, ?, ?, ?, ?, ?, 'pending', '', 0, ?, ?"
PG_NOTIFICATION_VALUES = (
    "?::bigint, ?::bigint, ?::text, ?::text, ?::text, ?::text, ?::boolean, 'pending', '', 0, "
    "?::timestamptz, ?::timestamptz"
)


def notification_values(case: dict, kind: str, data: dict, now: datetime) -> list:
    """The values of NOTIFICATION_COLUMNS for one change of `case` (a row with id, case_no,
    user_id, service_code and service_name), as `notify` would write them."""
    message = message_of(case["service_name"] or case["service_code"], case["case_no"], kind, data)
    return [case["user_id"], case["id"], kind, message["title"], message["body"], message["page"], message["urgent"],
            now, now]  # fmt: skip


def clip(value: str, limit: int) -> str:
    """`value` on one line within `limit` characters, cut with an ellipsis when too long."""
    value = re.sub(r"\s+", " ", value).strip()
    return value if len(value) <= limit else value[: limit - 1] + "…"


@dataclass(frozen=True)
class Route:
    """How a notification that is not about a case travels (a ticket's answer), given by the
    `Pusher.routes` hook of its kind: the channels to try in order ("custom": a customer-service
    text to `oa_openid` while its follower is inside `custom_window`; "subscribe": the
    mini-program's subscribe message; "template": the official account's template message to
    `oa_openid`), the inbox always; `reference` and `phrase` fill the template's number and status."""

    reference: str
    phrase: str
    channels: tuple[str, ...]
    oa_openid: str | None = None
    text: str = ""
    custom_window: timedelta = timedelta(hours=48)


def template_data(notification: Notification, case: Case | None, route: Route | None = None) -> dict:
    """The progress template's keywords within WeChat's limits (thing 20, phrase 5 Chinese
    characters, character_string 32 printable ASCII, time)."""
    at = notification.created_at.astimezone(CHINA)
    reference = route.reference if route else str(notification.id)
    return {
        "thing1": {"value": clip(case.service_name if case else notification.title, 20)},
        "character_string2": {"value": (case.case_no if case else reference)[:32]},
        "phrase3": {"value": route.phrase if route else PHRASES.get(notification.kind, "有更新")},
        "time4": {"value": f"{at:%Y年%m月%d日 %H:%M}"},
        "thing5": {"value": clip(notification.body, 20)},
    }


SUBSCRIBE, TEMPLATE, CUSTOM, INBOX = "subscribe", "template", "custom", "inbox"
_LOOKUP = "lookup"  # a case push about to try the template message: its follower is looked up first


def _marks(values: list) -> str:
    return ", ".join("?" for _ in values)


@dataclass(eq=False)
class _Push:
    """One claimed notification on its way through its channels, a round at a time."""

    notification: Notification
    data: dict
    channels: deque[str]  # still to try, in order
    route: Route | None = None
    follower: Follower | None = None
    looked_up: bool = False  # a case push's follower has been looked up (routed ones know theirs)
    reasons: list[str] = field(default_factory=list)  # why channels were skipped (routed pushes)
    channel: str | None = None  # tried in this round
    outcome: str | None = None  # the channel that carried it, "inbox" for the inbox alone
    retry: str | None = None  # a transient failure: the whole notification is tried again later

    @property
    def done(self) -> bool:
        return self.outcome is not None or self.retry is not None

    def skip(self, reason: str) -> None:
        self.channels.popleft()
        if self.route is not None:
            self.reasons.append(reason)


@dataclass
class Pusher:
    """Carries due notifications to WeChat, a batch at a time.

    A drain claims up to `batch` due notifications in one statement (FOR UPDATE SKIP LOCKED on
    PostgreSQL, so drains of several workers never share one) and carries them in rounds: each
    round tries one channel for the oldest unsettled notification of every citizen in the batch
    (a citizen's pushes keep their order), takes the subscribe grants in one statement, writes
    the attempts before the sends, sends concurrently (at most `concurrency` calls in flight per
    channel and process) and writes the results in one transaction."""

    mp: WeChatClient
    oa: OfficialAccountAPI
    mp_appid: str
    mp_template_id: str | None
    oa_template_id: str | None
    quiet: QuietHours | None = None
    lease_s: int = 120
    max_attempts: int = 8
    miniprogram_state: str = "formal"
    # Case-less notification kinds -> their route (e.g. a ticket's answer: handlers.tickets).
    routes: dict[str, Callable[[Notification], Awaitable[Route | None]]] = field(default_factory=dict)
    batch: int = 100
    concurrency: int = 16
    lanes: int = 2
    _claiming: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)
    _busy: set[int] = field(default_factory=set, init=False, repr=False)
    _limits: dict[str, asyncio.Semaphore] = field(default_factory=dict, init=False, repr=False)
    _draining: bool = field(default=False, init=False, repr=False)
    _wanted: bool = field(default=False, init=False, repr=False)

    async def drain(self) -> int:
        """Pushes every due notification, batch after batch, until none is due; returns how many
        were settled. A drain already running in this process is only told to look again (it
        claims once more before it stops), so a burst of kicks costs one loop, not one each.

        On PostgreSQL `lanes` batches are under way at once, so one batch's statements run while
        another's sends wait on WeChat; a lane never claims a push of a citizen whose push is in
        another lane of this process, so a citizen's pushes still go one after the other."""
        self._wanted = True
        if self._draining:
            return 0
        self._draining = True
        settled = 0
        lanes = self.lanes if is_postgres(connection()) else 1
        try:
            while self._wanted:
                self._wanted = False
                settled += sum(await asyncio.gather(*(self._lane() for _ in range(lanes))))
        finally:
            self._draining = False
        return settled

    async def _lane(self) -> int:
        settled = 0
        while True:
            async with self._claiming:
                claimed = await self._claim(self.batch, busy=self._busy)
                users = {user_id for _, user_id in claimed}
                self._busy |= users
            if not claimed:
                return settled
            try:
                outcomes = await self._run([notification_id for notification_id, _ in claimed])
            finally:
                self._busy -= users
            settled += sum(o in ("sent", "inbox_only", "failed") for o in outcomes.values())

    async def run_due(self, *, limit: int = 200) -> int:
        """Pushes due notifications (at most `limit`); returns how many were settled."""
        settled = 0
        while limit > 0 and (claimed := await self._claim(min(self.batch, limit))):
            limit -= len(claimed)
            outcomes = await self._run([notification_id for notification_id, _ in claimed])
            settled += sum(o in ("sent", "inbox_only", "failed") for o in outcomes.values())
        return settled

    async def run_one(self, notification_id: int) -> str:
        """One notification: its outcome, or "not_due" when it is not this worker's to push now."""
        if not await self._claim(1, notification_id):
            return "not_due"
        return (await self._run([notification_id]))[notification_id]

    # -- claiming ------------------------------------------------------------------------------

    async def _claim(
        self, limit: int, notification_id: int | None = None, busy: set[int] | None = None
    ) -> list[tuple[int, int]]:
        """Takes up to `limit` due notifications under a lease, in one statement, none of the
        citizens in `busy` (PostgreSQL only); their (id, user_id) in id order."""
        conn = connection()
        now = datetime.now(UTC)
        values: list = [now + timedelta(seconds=self.lease_s), now]
        only = ""
        if notification_id is not None:
            only += " AND id = ?"
            values.append(notification_id)
        if busy and is_postgres(conn):
            only += " AND user_id <> ALL(?::bigint[])"
            values.append(list(busy))
        lock = " FOR UPDATE SKIP LOCKED" if is_postgres(conn) else ""
        sql = (
            "UPDATE notifications SET push_status = 'sending', next_attempt_at = ?, attempts = attempts + 1 "
            "WHERE id IN (SELECT id FROM notifications WHERE push_status IN ('pending', 'sending') "
            f"AND next_attempt_at <= ?{only} ORDER BY next_attempt_at, id LIMIT ?{lock}) RETURNING id, user_id"
        )
        values.append(limit)
        return sorted((int(row["id"]), int(row["user_id"])) for row in await rows(conn, sql, values))

    # -- one batch -----------------------------------------------------------------------------

    async def _run(self, ids: list[int]) -> dict[int, str]:
        """Carries the claimed notifications `ids`; each one's outcome."""
        now = datetime.now(UTC)
        notifications = await Notification.filter(id__in=ids).order_by("id").select_related("case", "user")
        outcomes: dict[int, str] = {}
        await self._interrupted([n for n in notifications if n.attempts > 1], now)
        if self.quiet is not None:
            resume = self.quiet.resume_at(now)
            waiting = [n for n in notifications if not n.urgent] if resume is not None else []
            if waiting:
                detail = f"免打扰时段，{resume.astimezone(CHINA):%m月%d日 %H:%M} 推送"
                await PushAttempt.bulk_create(
                    [
                        PushAttempt(
                            notification_id=n.id, channel="-", finished_at=now, result="deferred", detail=detail
                        )
                        for n in waiting
                    ]
                )
                await Notification.filter(id__in=[n.id for n in waiting]).update(
                    push_status="pending", next_attempt_at=resume, attempts=F("attempts") - 1
                )
                outcomes.update(dict.fromkeys((n.id for n in waiting), "deferred"))
                notifications = [n for n in notifications if n.urgent]
        queues: dict[int, deque[_Push]] = {}
        for notification in notifications:
            push = await self._start(notification)
            queues.setdefault(notification.user_id, deque()).append(push)
        while queues:
            heads = [queue[0] for queue in queues.values()]
            await self._round(heads)
            for user_id in list(queues):
                queue = queues[user_id]
                while queue and queue[0].done:
                    push = queue.popleft()
                    outcomes[push.notification.id] = self._outcome(push)
                if not queue:
                    del queues[user_id]
        return outcomes

    def _outcome(self, push: _Push) -> str:
        if push.retry is not None:
            return "failed" if push.notification.attempts >= self.max_attempts else "retry"
        return "inbox_only" if push.outcome == INBOX else "sent"

    async def _interrupted(self, retaken: list[Notification], now: datetime) -> None:
        """An attempt left unfinished means a worker died in the middle of it. Whether WeChat
        took that message is unknown; the grant it used is given back (were it used after all,
        WeChat answers 43101 and the push falls through to the next channel)."""
        if not retaken:
            return
        left = await PushAttempt.filter(notification_id__in=[n.id for n in retaken], finished_at=None)
        if not left:
            return
        await PushAttempt.filter(id__in=[a.id for a in left]).update(
            finished_at=now, result="interrupted", detail="推送过程中工作进程中断，已重新推送"
        )
        user_of = {n.id: n.user_id for n in retaken}
        owed = Counter(user_of[a.notification_id] for a in left if a.channel == SUBSCRIBE)
        for count in set(owed.values()):
            await SubscriptionGrant.filter(
                user_id__in=[u for u, c in owed.items() if c == count], template_id=self.mp_template_id
            ).update(remaining=F("remaining") + count)

    async def _start(self, notification: Notification) -> _Push:
        if notification.case_id is None and notification.kind in self.routes:
            route = await self.routes[notification.kind](notification)
            if route is not None:
                follower = (
                    await Follower.get_or_none(oa_openid=route.oa_openid, subscribed=True) if route.oa_openid else None
                )
                return _Push(
                    notification,
                    template_data(notification, None, route),
                    deque(route.channels),
                    route=route,
                    follower=follower,
                    looked_up=True,
                )
        return _Push(notification, template_data(notification, notification.case), deque([SUBSCRIBE, TEMPLATE]))

    # -- one round -----------------------------------------------------------------------------

    async def _round(self, heads: list[_Push]) -> None:
        """One channel tried for each of `heads` (one per citizen), or the inbox when none is left."""
        await self._choose(heads)
        now = datetime.now(UTC)
        trying = [p for p in heads if p.channel != INBOX]
        inbox = [p for p in heads if p.channel == INBOX]
        # Written before the sends: a worker killed mid-send leaves them unfinished (see _interrupted).
        await PushAttempt.bulk_create(
            [PushAttempt(notification_id=p.notification.id, channel=p.channel) for p in trying]
            + [
                PushAttempt(
                    notification_id=p.notification.id,
                    channel=INBOX,
                    finished_at=now,
                    result="inbox_only",
                    detail=self._inbox_detail(p),
                )
                for p in inbox
            ]
        )
        for p in inbox:
            p.outcome = INBOX
        results = await asyncio.gather(*(self._send(p) for p in trying))
        await self._record(list(zip(trying, results, strict=True)), inbox)

    async def _choose(self, heads: list[_Push]) -> None:
        """Sets each head's channel for this round: the next one it can use (taking the
        subscribe grants in one statement), or INBOX."""
        pending = heads
        while pending:
            lookups = [p for p in pending if self._next(p) == _LOOKUP]
            await self._find_followers(lookups)
            wanting = []
            for p in pending:
                channel = self._next(p)
                if channel == SUBSCRIBE:
                    wanting.append(p)
                else:
                    p.channel = channel
            granted = await self._take_grants([p.notification.user_id for p in wanting])
            pending = []
            for p in wanting:
                if p.notification.user_id in granted:
                    p.channel = SUBSCRIBE
                else:
                    p.skip("无剩余订阅授权")
                    pending.append(p)

    def _next(self, p: _Push) -> str:
        """The next channel `p` can try (SUBSCRIBE still needs its grant), skipping those that
        cannot reach the citizen."""
        user: User = p.notification.user
        while p.channels:
            channel = p.channels[0]
            if channel == SUBSCRIBE:
                if self.mp_template_id and user.openid:
                    return SUBSCRIBE
                p.skip("无剩余订阅授权")
            elif channel == TEMPLATE:
                if not p.looked_up:
                    return _LOOKUP
                if self.oa_template_id and p.follower is not None:
                    return TEMPLATE
                p.skip("未关注公众号")
            elif channel == CUSTOM:
                seen = p.follower.last_message_at if p.follower else None
                if seen is not None and datetime.now(UTC) - seen <= p.route.custom_window:
                    return CUSTOM
                p.skip("超出48小时客服消息窗口")
            else:
                p.channels.popleft()
        return INBOX

    def _inbox_detail(self, p: _Push) -> str:
        if p.route is not None:
            return ("，".join(p.reasons) + "，" if p.reasons else "") + "仅站内消息"
        user: User = p.notification.user
        reasons = ["未配置小程序订阅消息" if not self.mp_template_id or not user.openid else "无剩余订阅授权"]
        reasons.append("未关注公众号" if p.follower is None else "公众号模板消息未送达")
        return "，".join(reasons) + "，仅站内消息"

    async def _find_followers(self, pushes: list[_Push]) -> None:
        """Each citizen's official-account follower record, linked by unionid, if still following."""
        if not pushes:
            return
        users = {p.notification.user_id: p.notification.user for p in pushes}
        found: dict[int, Follower] = {}
        for follower in await Follower.filter(user_id__in=list(users), subscribed=True).order_by("oa_openid"):
            found.setdefault(follower.user_id, follower)
        unionids = {u.unionid: u.id for u in users.values() if u.id not in found and u.unionid}
        if unionids:
            by_unionid = Follower.filter(unionid__in=list(unionids), subscribed=True).order_by("oa_openid")
            for follower in await by_unionid:
                user_id = unionids[follower.unionid]
                if user_id in found:
                    continue
                found[user_id] = follower
                if follower.user_id is None:
                    await Follower.filter(oa_openid=follower.oa_openid).update(user_id=user_id)
        for p in pushes:
            p.follower, p.looked_up = found.get(p.notification.user_id), True

    async def _take_grants(self, user_ids: list[int]) -> set[int]:
        """Takes one subscribe grant of each of `user_ids` that has one left, in one statement; who had one."""
        if not user_ids:
            return set()
        sql = (
            "UPDATE subscription_grants SET remaining = remaining - 1 WHERE template_id = ? AND remaining > 0 "
            f"AND user_id IN ({_marks(user_ids)}) RETURNING user_id"
        )
        granted = await rows(connection(), sql, [self.mp_template_id, *user_ids])
        return {int(row["user_id"]) for row in granted}

    def _limit(self, channel: str) -> asyncio.Semaphore:
        if channel not in self._limits:
            self._limits[channel] = asyncio.Semaphore(self.concurrency)
        return self._limits[channel]

    async def _send(self, p: _Push) -> tuple[str, int | None, str]:
        """One try at p.channel: ("ok", 0, detail), a refusal (result, errcode, detail) after
        which the next channel is tried, or ("transient", errcode, detail)."""
        n, channel = p.notification, p.channel
        try:
            async with self._limit(channel):
                if channel == SUBSCRIBE:
                    await self.mp.send_subscribe(
                        openid=n.user.openid,
                        template_id=self.mp_template_id,
                        data=p.data,
                        page=n.page,
                        miniprogram_state=self.miniprogram_state,
                    )
                    return "ok", 0, ""
                if channel == TEMPLATE:
                    msgid = await self.oa.send_template(
                        p.follower.oa_openid,
                        self.oa_template_id,
                        p.data,
                        miniprogram={"appid": self.mp_appid, "pagepath": n.page},
                    )
                    return "ok", 0, f"msgid {msgid}"
                await self.oa.send_text(p.follower.oa_openid, p.route.text)
                return "ok", 0, ""
        except WeChatError as exc:
            if exc.errcode in TRANSIENT_ERRCODES:
                return "transient", exc.errcode, exc.errmsg[:300]
            result, detail = FALL_THROUGH.get(exc.errcode, ("refused", exc.errmsg[:300]))
            return result, exc.errcode, detail
        except WeChatUnavailable:
            return "transient", None, "微信服务暂时不可用"
        except Exception as exc:  # one broken push must not hold up the batch: it is tried again later
            log.exception("push failed", extra={"notification": n.id})
            return "transient", None, f"推送出错（{type(exc).__name__}）"

    async def _record(self, tried: list[tuple[_Push, tuple[str, int | None, str]]], inbox: list[_Push]) -> None:
        """The round's results, in one transaction: attempts finished, grants and followers
        corrected, settled notifications marked."""
        now = datetime.now(UTC)
        finished: dict[tuple, list[int]] = {}
        zero_grants, give_back, gone = [], [], []
        for p, (result, errcode, detail) in tried:
            finished.setdefault((result, errcode, detail), []).append(p.notification.id)
            if result == "ok":
                p.outcome = p.channel
            elif result == "transient":
                p.retry = detail
                if p.channel == SUBSCRIBE:  # WeChat did not take it: the grant is still there
                    give_back.append(p.notification.user_id)
            else:
                p.channels.popleft()
                if p.channel == SUBSCRIBE and errcode == NO_GRANT:  # ours was stale
                    zero_grants.append(p.notification.user_id)
                if p.channel == TEMPLATE and errcode == NOT_FOLLOWING:
                    gone.append(p.follower.oa_openid)
        settled = [p for p, _ in tried if p.done] + inbox
        async with in_transaction():
            for (result, errcode, detail), ids in finished.items():
                await PushAttempt.filter(notification_id__in=ids, finished_at=None).update(
                    finished_at=now, result=result, errcode=errcode, detail=detail
                )
            if zero_grants:
                await SubscriptionGrant.filter(user_id__in=zero_grants, template_id=self.mp_template_id).update(
                    remaining=0
                )
            if give_back:
                await SubscriptionGrant.filter(user_id__in=give_back, template_id=self.mp_template_id).update(
                    remaining=F("remaining") + 1
                )
            if gone:
                await Follower.filter(oa_openid__in=gone).update(subscribed=False)
            carried: dict[str, list[int]] = {}
            for p in settled:
                if p.outcome is not None:
                    carried.setdefault(p.outcome, []).append(p.notification.id)
            for channel, ids in carried.items():
                await Notification.filter(id__in=ids).update(
                    push_status="inbox_only" if channel == INBOX else "sent",
                    channel=channel,
                    sent_at=None if channel == INBOX else now,
                )
            given_up = [p.notification.id for p in settled if p.retry and p.notification.attempts >= self.max_attempts]
            if given_up:
                await Notification.filter(id__in=given_up).update(push_status="failed")
            for p in settled:
                if p.retry and p.notification.attempts < self.max_attempts:
                    await Notification.filter(id=p.notification.id).update(
                        push_status="pending",
                        next_attempt_at=now + backoff(p.notification.attempts, base_s=5, cap_s=MAX_BACKOFF_S),
                    )
        for p in settled:
            if p.retry and p.notification.attempts >= self.max_attempts:
                log.warning("push given up", extra={"notification": p.notification.id, "error": p.retry})


# -- the citizen's side --------------------------------------------------------------------


async def record_grants(user: User, results: dict[str, str]) -> list[dict]:
    """Records what `wx.requestSubscribeMessage` answered: each "accept" is one more send."""
    out = []
    for template_id, result in results.items():
        grant = await SubscriptionGrant.get_or_none(user_id=user.id, template_id=template_id)
        if grant is None:
            try:
                grant = await SubscriptionGrant.create(user_id=user.id, template_id=template_id)
            except IntegrityError:
                grant = await SubscriptionGrant.get(user_id=user.id, template_id=template_id)
        if result == "accept":
            await SubscriptionGrant.filter(id=grant.id).update(
                remaining=F("remaining") + 1, accepted_total=F("accepted_total") + 1, last_result=result
            )
        elif result == "ban":
            # The user turned the template off for good: WeChat keeps no grant for it.
            await SubscriptionGrant.filter(id=grant.id).update(remaining=0, last_result=result)
        else:
            await SubscriptionGrant.filter(id=grant.id).update(last_result=result)
        await grant.refresh_from_db()
        out.append({"template_id": template_id, "result": result, "remaining": grant.remaining})
    return out


async def inbox(user: User, *, before: int | None, limit: int) -> tuple[list[Notification], int]:
    """The citizen's notifications, newest first (keyset by id), and how many are unread."""
    query = Notification.filter(user_id=user.id)
    if before is not None:
        query = query.filter(id__lt=before)
    rows = await query.order_by("-id").limit(limit).prefetch_related("case")
    return rows, await unread_count(user)


async def unread_count(user: User) -> int:
    return await Notification.filter(user_id=user.id, read_at=None).count()


def inbox_item(n: Notification) -> dict:
    return {
        "id": n.id,
        "title": n.title,
        "body": n.body,
        "kind": n.kind,
        "case_no": n.case.case_no if n.case else None,
        "page": n.page,
        "created_at": n.created_at.isoformat(),
        "read": n.read_at is not None,
    }


async def mark_read(user: User, ids: list[int] | None) -> int:
    """Marks the given notifications (or all, when `ids` is None) read; returns how many changed."""
    query = Notification.filter(user_id=user.id, read_at=None)
    if ids is not None:
        query = query.filter(id__in=ids)
    return await query.update(read_at=datetime.now(UTC))


async def attempts_of_case(case_id: int) -> list[dict]:
    """Every notification of a case with each delivery attempt: why a citizen was or was not reached."""
    rows = await Notification.filter(case_id=case_id).order_by("id").prefetch_related("push_attempts")
    return [
        {
            "id": n.id,
            "kind": n.kind,
            "title": n.title,
            "push_status": n.push_status,
            "channel": n.channel,
            "created_at": n.created_at.isoformat(),
            "sent_at": n.sent_at.isoformat() if n.sent_at else None,
            "read": n.read_at is not None,
            "attempts": [
                {
                    "channel": a.channel,
                    "result": a.result,
                    "errcode": a.errcode,
                    "detail": a.detail,
                    "started_at": a.started_at.isoformat(),
                    "finished_at": a.finished_at.isoformat() if a.finished_at else None,
                }
                for a in sorted(n.push_attempts, key=lambda a: a.id)
            ],
        }
        for n in rows
    ]

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
not happen is given back. A worker takes a notification with a lease; one killed mid-push
leaves it to be taken again when the lease runs out, and the attempt it left unfinished is
marked `interrupted`. Each attempt and its result is stored, so an official can see why a
citizen was or was not reached.

Quiet hours (PUSH_QUIET_HOURS, China time, default 22:00-08:00): a non-urgent push found due
inside them waits until they end. Urgent ones (a correction to make, a fee to pay) go at once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from tortoise.exceptions import IntegrityError
from tortoise.expressions import F

from core.backoff import backoff
from core.china_time import CHINA, QuietHours
from storage.models import Case, Follower, Notification, PushAttempt, SubscriptionGrant, User
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
        title=f"{case.service_name or case.service_code}：{PHRASES[kind]}"[:64],
        body=body_of(kind, data or {})[:500],
        page=case_page(case.case_no),
        urgent=kind in URGENT,
        next_attempt_at=datetime.now(UTC),
    )


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


class _Retry(Exception):
    """A transient failure: try the whole notification again later."""


@dataclass
class Pusher:
    """Carries due notifications to WeChat."""

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

    async def run_due(self, *, limit: int = 200) -> int:
        """Pushes every due notification (at most `limit`); returns how many were settled."""
        now = datetime.now(UTC)
        ids = (
            await Notification.filter(push_status__in=["pending", "sending"], next_attempt_at__lte=now)
            .order_by("next_attempt_at")
            .limit(limit)
            .values_list("id", flat=True)
        )
        settled = 0
        for notification_id in ids:
            if await self.run_one(notification_id) in ("sent", "inbox_only", "failed"):
                settled += 1
        return settled

    async def run_one(self, notification_id: int) -> str:
        """One notification: its outcome, or "not_due" when it is not this worker's to push now."""
        now = datetime.now(UTC)
        claimed = await Notification.filter(
            id=notification_id, push_status__in=["pending", "sending"], next_attempt_at__lte=now
        ).update(
            push_status="sending", next_attempt_at=now + timedelta(seconds=self.lease_s), attempts=F("attempts") + 1
        )
        if not claimed:
            return "not_due"
        notification = await Notification.get(id=notification_id).select_related("case", "user")
        # An attempt left unfinished means a worker died in the middle of it. Whether WeChat
        # took that message is unknown; the grant it used is given back (were it used after
        # all, WeChat answers 43101 and the push falls through to the next channel).
        unfinished = (
            []
            if notification.attempts == 1
            else await PushAttempt.filter(notification_id=notification_id, finished_at=None)
        )
        for left in unfinished:
            await PushAttempt.filter(id=left.id).update(
                finished_at=now, result="interrupted", detail="推送过程中工作进程中断，已重新推送"
            )
            if left.channel == "subscribe":
                await self._give_back_grant(notification.user_id)
        if not notification.urgent and self.quiet is not None:
            resume = self.quiet.resume_at(now)
            if resume is not None:
                await PushAttempt.create(
                    notification_id=notification_id,
                    channel="-",
                    finished_at=now,
                    result="deferred",
                    detail=f"免打扰时段，{resume.astimezone(CHINA):%m月%d日 %H:%M} 推送",
                )
                await Notification.filter(id=notification_id).update(
                    push_status="pending", next_attempt_at=resume, attempts=F("attempts") - 1
                )
                return "deferred"
        try:
            outcome = await self._push(notification)
        except _Retry as exc:
            if notification.attempts >= self.max_attempts:
                await Notification.filter(id=notification_id).update(push_status="failed")
                log.warning("push given up", extra={"notification": notification_id, "error": str(exc)})
                return "failed"
            await Notification.filter(id=notification_id).update(
                push_status="pending",
                next_attempt_at=datetime.now(UTC) + backoff(notification.attempts, base_s=5, cap_s=MAX_BACKOFF_S),
            )
            return "retry"
        await Notification.filter(id=notification_id).update(
            push_status="sent" if outcome != "inbox" else "inbox_only",
            channel=outcome,
            sent_at=datetime.now(UTC) if outcome != "inbox" else None,
        )
        return "sent" if outcome != "inbox" else "inbox_only"

    async def _push(self, notification: Notification) -> str:
        """The channel that carried it: "subscribe", "template" or "inbox"; raises _Retry."""
        if notification.case_id is None and notification.kind in self.routes:
            route = await self.routes[notification.kind](notification)
            if route is not None:
                return await self._push_routed(notification, route)
        user: User = notification.user
        data = template_data(notification, notification.case)
        if self.mp_template_id and user.openid and await self._take_grant(user.id):

            async def subscribe() -> str:
                await self.mp.send_subscribe(
                    openid=user.openid,
                    template_id=self.mp_template_id,
                    data=data,
                    page=notification.page,
                    miniprogram_state=self.miniprogram_state,
                )
                return ""

            try:
                refused = await self._attempt(notification.id, "subscribe", subscribe)
            except _Retry:
                await self._give_back_grant(user.id)  # WeChat did not take it: the grant is still there
                raise
            if refused is None:
                return "subscribe"
            if refused == NO_GRANT:  # WeChat holds no grant for us after all: ours was stale
                await SubscriptionGrant.filter(user_id=user.id, template_id=self.mp_template_id).update(remaining=0)
        follower = await self._follower(user)
        if self.oa_template_id and follower is not None:
            if await self._by_template(notification, follower, data):
                return "template"
        reasons = []
        if not self.mp_template_id or not user.openid:
            reasons.append("未配置小程序订阅消息")
        else:
            reasons.append("无剩余订阅授权")
        reasons.append("未关注公众号" if follower is None else "公众号模板消息未送达")
        await PushAttempt.create(
            notification_id=notification.id,
            channel="inbox",
            finished_at=datetime.now(UTC),
            result="inbox_only",
            detail="，".join(reasons) + "，仅站内消息",
        )
        return "inbox"

    async def _push_routed(self, notification: Notification, route: Route) -> str:
        """A case-less notification along its route: "custom", "subscribe", "template" or "inbox"; raises _Retry."""
        user: User = notification.user
        data = template_data(notification, None, route)
        follower = await Follower.get_or_none(oa_openid=route.oa_openid, subscribed=True) if route.oa_openid else None
        reasons = []
        for channel in route.channels:
            if channel == "custom":
                seen = follower.last_message_at if follower else None
                if seen is None or datetime.now(UTC) - seen > route.custom_window:
                    reasons.append("超出48小时客服消息窗口")
                    continue

                async def custom() -> str:
                    await self.oa.send_text(follower.oa_openid, route.text)
                    return ""

                if await self._attempt(notification.id, "custom", custom) is None:
                    return "custom"
            elif channel == "subscribe":
                if not (self.mp_template_id and user.openid and await self._take_grant(user.id)):
                    reasons.append("无剩余订阅授权")
                    continue

                async def subscribe() -> str:
                    await self.mp.send_subscribe(
                        openid=user.openid,
                        template_id=self.mp_template_id,
                        data=data,
                        page=notification.page,
                        miniprogram_state=self.miniprogram_state,
                    )
                    return ""

                try:
                    refused = await self._attempt(notification.id, "subscribe", subscribe)
                except _Retry:
                    await self._give_back_grant(user.id)
                    raise
                if refused is None:
                    return "subscribe"
                if refused == NO_GRANT:
                    await SubscriptionGrant.filter(user_id=user.id, template_id=self.mp_template_id).update(remaining=0)
            elif channel == "template":
                if not (self.oa_template_id and follower is not None):
                    reasons.append("未关注公众号")
                    continue
                if await self._by_template(notification, follower, data):
                    return "template"
        await PushAttempt.create(
            notification_id=notification.id,
            channel="inbox",
            finished_at=datetime.now(UTC),
            result="inbox_only",
            detail=("，".join(reasons) + "，" if reasons else "") + "仅站内消息",
        )
        return "inbox"

    async def _by_template(self, notification: Notification, follower: Follower, data: dict) -> bool:
        """One try by the official account's template message (opening the mini-program page); True
        when WeChat took it. A follower WeChat says has left is marked unsubscribed."""

        async def template() -> str:
            msgid = await self.oa.send_template(
                follower.oa_openid,
                self.oa_template_id,
                data,
                miniprogram={"appid": self.mp_appid, "pagepath": notification.page},
            )
            return f"msgid {msgid}"

        refused = await self._attempt(notification.id, "template", template)
        if refused == NOT_FOLLOWING:
            await Follower.filter(oa_openid=follower.oa_openid).update(subscribed=False)
        return refused is None

    async def _attempt(self, notification_id: int, channel: str, send) -> int | None:
        """One recorded try at a channel: None when WeChat took it, its errcode when WeChat refused
        it for good (try the next channel); raises _Retry when the failure is transient."""
        attempt = await PushAttempt.create(notification_id=notification_id, channel=channel)
        try:
            detail = await send()
        except WeChatError as exc:
            if exc.errcode in TRANSIENT_ERRCODES:
                await self._finish(attempt, "transient", exc.errcode, exc.errmsg[:300])
                raise _Retry(exc.errmsg) from None
            result, detail = FALL_THROUGH.get(exc.errcode, ("refused", exc.errmsg[:300]))
            await self._finish(attempt, result, exc.errcode, detail)
            return exc.errcode
        except WeChatUnavailable:
            await self._finish(attempt, "transient", None, "微信服务暂时不可用")
            raise _Retry("wechat unavailable") from None
        await self._finish(attempt, "ok", 0, detail)
        return None

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

    @staticmethod
    async def _follower(user: User) -> Follower | None:
        """The citizen's official-account follower record, linked by unionid, if still following."""
        follower = await Follower.filter(user_id=user.id, subscribed=True).first()
        if follower is None and user.unionid:
            follower = await Follower.filter(unionid=user.unionid, subscribed=True).first()
            if follower is not None and follower.user_id is None:
                await Follower.filter(oa_openid=follower.oa_openid).update(user_id=user.id)
        return follower

    @staticmethod
    async def _finish(attempt: PushAttempt, result: str, errcode: int | None, detail: str) -> None:
        await PushAttempt.filter(id=attempt.id).update(
            finished_at=datetime.now(UTC), result=result, errcode=errcode, detail=detail
        )


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

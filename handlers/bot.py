"""What the official-account bot says: guides from the catalogue search, case progress,
consultation and complaint tickets, nearby service halls, menus.

Transport-free: `bot/callback.py` turns WeChat's XML into a `Message` and our answer back into
XML; `answer` routes a message (by type, events by their name) to what the bot says, and links
the follower to their mini-program account by unionid on the way. Every answer is plain text
(WeChat's passive replies and customer-service messages both carry it), with mini-program links
written the way WeChat renders them in text.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import yaml
from redis.asyncio import Redis
from tortoise.exceptions import IntegrityError

from handlers.cases.lifecycle import STATUS_LABELS
from handlers.catalog.reader import CatalogueReader, normalise_query
from handlers.catalog.search import SearchIndex
from handlers.evaluation.rating import Evaluations
from handlers.notices.notices import Notices
from handlers.tickets import TicketPolicy, confirmation, open_ticket
from storage.crypto import FieldCipher
from storage.models import Case, Follower, Ticket, User
from storage.redis import Keys
from wechat.client import OfficialAccountAPI, WeChatError, WeChatUnavailable

log = logging.getLogger("zhangban.bot")

HALLS_FILE = Path(__file__).resolve().parent.parent / "data" / "halls.yaml"
FAQ_FILE = Path(__file__).resolve().parent.parent / "data" / "faq.yaml"
CASE_NO = re.compile(r"ZB\d{14}")
RATING_INTENT = re.compile(r"^\s*评价\s*(ZB\d{14})\s*([1-5])(?:[\s,，:：]+(.*))?$", re.S | re.I)
TICKET_INTENT = re.compile(r"^\s*(咨询|投诉)[\s:：，,]*(.*)$", re.S)
MENU_WORDS = {"菜单", "帮助", "help", "?", "？", "你好", "您好"}
PROGRESS_WORDS = {"查进度", "进度", "办件进度", "查询进度", "我的办件"}
NOTICE_WORDS = {"通知", "公告", "通知公告", "最新通知", "最新公告"}

IMAGE_HINT = "图片请在掌办小程序的申请页面上传，公众号暂不接收材料图片。"
VOICE_HINT = "抱歉，没有听清您的语音，请用文字再说一遍。"
UNIONID_LOOKUP_TIMEOUT_S = 2.0
SEEN_WINDOW = timedelta(minutes=1)  # `last_message_at` is written at most once per window

MENU_TEXT = (
    "您好，这里是“掌办”泸州政务服务。您可以：\n"
    "1. 直接提问，如“身份证过期了怎么办”“公积金怎么取”\n"
    "2. 回复“查进度”或办件编号（ZB开头）查询办件进度\n"
    "3. 回复“咨询 + 问题”或“投诉 + 内容”留言，我们会转交部门答复\n"
    "4. 发送位置，查看附近的政务服务大厅"
)


@dataclass(frozen=True)
class Hall:
    name: str
    address: str
    hours: str
    phone: str
    lat: float
    lng: float


def load_halls(path: Path = HALLS_FILE) -> list[Hall]:
    return [Hall(**h) for h in yaml.safe_load(path.read_text(encoding="utf-8"))["halls"]]


class FAQ:
    """Questions the bot answers directly, ranked by the catalogue search engine."""

    def __init__(self, entries: list[dict]):
        self.answers = {e["code"]: e["answer"] for e in entries}
        self.index = SearchIndex.build(
            [
                {
                    "code": e["code"],
                    "name": e["question"],
                    "aliases": e.get("aliases", []),
                    "keywords": e.get("keywords", []),
                    "summary": e["answer"],
                }
                for e in entries
            ],
            [],
        )

    @classmethod
    def load(cls, path: Path = FAQ_FILE) -> FAQ:
        return cls(yaml.safe_load(path.read_text(encoding="utf-8"))["faq"])

    def best(self, question: str) -> tuple[float, str] | None:
        """(score, answer) of the best entry, or None."""
        hits = self.index.search(question, limit=1)
        return (hits[0].score, self.answers[hits[0].code]) if hits else None


def distance_km(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """Great-circle distance (haversine), in kilometres."""
    r = 6371.0
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lng2 - lng1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * r * math.asin(math.sqrt(a))


def nearest_halls(halls: list[Hall], lat: float, lng: float, n: int = 3) -> list[tuple[Hall, float]]:
    return sorted(((h, distance_km(lat, lng, h.lat, h.lng)) for h in halls), key=lambda x: x[1])[:n]


def fee_text(fee: dict) -> str:
    if fee["kind"] == "fixed":
        yuan = fee["amount_fen"] / 100
        return f"{yuan:g}元"
    return "按核定金额收取" if fee["kind"] == "assessed" else "免费"


class FollowerCache:
    """Follower records this process read or wrote in the last `ttl_s` seconds, by OpenID.

    What a message needs of its sender's record on the hot path: that the record exists, that
    `last_message_at` is recent (written at most once a minute) and that the unionid was looked
    up. A hit answers all three without a query. Only `Bot.follower` fills it, with the record as
    it just read or wrote it, and entries are never modified (each read makes a new record).

    The account link (`user_id`) is never taken from an entry without it: an answer that reads
    the link reads the record again while it has none (`Bot.linked`), so a citizen who just
    linked in another process is answered as linked. An entry with a link is the truth, since a
    link once made is never undone (it is set only while empty, and users are never deleted).
    Subscription events always read and write the database, and an unsubscribe drops the entry.
    """

    def __init__(self, *, ttl_s: float = 30.0, size: int = 10_000, clock: Callable[[], float] = time.monotonic):
        self.ttl_s, self.size, self.clock = ttl_s, size, clock
        self._entries: OrderedDict[str, tuple[float, Follower]] = OrderedDict()

    def get(self, oa_openid: str) -> Follower | None:
        entry = self._entries.get(oa_openid)
        if entry is None:
            return None
        if entry[0] <= self.clock():
            del self._entries[oa_openid]
            return None
        return entry[1]

    def put(self, follower: Follower) -> None:
        self._entries[follower.oa_openid] = (self.clock() + self.ttl_s, follower)
        self._entries.move_to_end(follower.oa_openid)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def drop(self, oa_openid: str) -> None:
        self._entries.pop(oa_openid, None)


class Bot:
    """Answers followers' messages."""

    def __init__(
        self,
        *,
        catalogue: CatalogueReader,
        cipher: FieldCipher,
        halls: list[Hall],
        mp_appid: str,
        faq: FAQ | None = None,
        evaluations: Evaluations | None = None,
        ticket_policy: TicketPolicy | None = None,
        notices: Notices | None = None,
    ):
        self.catalogue, self.cipher, self.halls, self.mp_appid = catalogue, cipher, halls, mp_appid
        self.faq = faq
        self.evaluations = evaluations
        self.ticket_policy = ticket_policy or TicketPolicy()
        self.notices = notices
        self.followers = FollowerCache()

    def mp_link(self, text: str, path: str = "pages/index/index") -> str:
        """A mini-program link inside a text message, as WeChat renders it."""
        return f'<a data-miniprogram-appid="{self.mp_appid}" data-miniprogram-path="{path}" href="https://mp.weixin.qq.com">{text}</a>'

    # -- followers -------------------------------------------------------------------------

    async def follower(self, oa_openid: str, *, unionid: str | None = None, subscribed: bool | None = None) -> Follower:
        """The follower record, created on first contact and linked to a user by unionid.

        `last_message_at` (the 48-hour customer-service window) is written at most once a
        minute per follower, so a chatty follower costs one read, not a write per message.
        """
        follower = await Follower.get_or_none(oa_openid=oa_openid)
        if follower is None:
            try:
                follower = await Follower.create(oa_openid=oa_openid)
            except IntegrityError:
                follower = await Follower.get(oa_openid=oa_openid)
        now = datetime.now(UTC)
        changed: list[str] = []
        if follower.last_message_at is None or now - follower.last_message_at > SEEN_WINDOW:
            follower.last_message_at = now
            changed.append("last_message_at")
        if subscribed is not None and follower.subscribed != subscribed:
            follower.subscribed = subscribed
            changed.append("subscribed")
        if unionid and follower.unionid != unionid:
            follower.unionid = unionid
            changed.append("unionid")
        if follower.user_id is None and follower.unionid:
            user = await User.filter(unionid=follower.unionid).first()
            if user is not None:
                follower.user_id = user.id
                changed.append("user_id")
                if user.oa_openid != oa_openid:
                    await User.filter(id=user.id).update(oa_openid=oa_openid)
        if changed:
            await follower.save(update_fields=[*changed, "updated_at"])
        self.followers.put(follower)
        return follower

    def seen_follower(self, oa_openid: str) -> Follower | None:
        """The follower as this process last read or wrote it, when that needs no write now (its
        `last_message_at` still within the minute); None: call `follower`."""
        follower = self.followers.get(oa_openid)
        if follower is None or follower.last_message_at is None:
            return None
        if datetime.now(UTC) - follower.last_message_at > SEEN_WINDOW:
            return None
        return follower

    async def linked(self, follower: Follower) -> Follower:
        """`follower` with its account link as the database has it now: a record without one is
        read again (and linked by unionid if it can be), since another process may have linked it."""
        if follower.user_id is not None:
            return follower
        return await self.follower(follower.oa_openid)

    # -- answers -----------------------------------------------------------------------------

    def welcome(self) -> str:
        return "感谢关注“掌办”！\n" + MENU_TEXT + "\n" + self.mp_link("👉 打开掌办小程序，在线办理")

    async def progress(self, follower: Follower, case_no: str | None) -> str:
        """The status of the follower's own cases; another person's case number reads as unknown."""
        follower = await self.linked(follower)
        if follower.user_id is None:
            return "查询办件进度需要先登录掌办小程序完成实名认证：" + self.mp_link("点击登录掌办", "pages/login/index")
        query = Case.filter(user_id=follower.user_id)
        if case_no:
            case = await query.filter(case_no=case_no).first()
            if case is None:
                return f"未找到办件 {case_no}，请核对编号，或在小程序“我的办件”中查看。"
            return self._case_line(case)
        cases = await query.order_by("-id").limit(3)
        if not cases:
            return "您还没有办件。" + self.mp_link("去小程序办理", "pages/index/index")
        return "您最近的办件：\n" + "\n".join(self._case_line(c) for c in cases)

    @staticmethod
    def _case_line(case: Case) -> str:
        return f"{case.case_no}（{case.service_name}）：{STATUS_LABELS[case.status]}"

    async def guide_answer(self, question: str) -> str:
        """The best guide for a question, with its key facts, or suggestions when nothing fits.

        Worked out once per normalised question and catalogue revision (the search engine reads
        the question normalised the same way), then answered from the catalogue's memory."""
        return await self.catalogue.remember(("bot-guide", normalise_query(question)), lambda: self._guide(question))

    async def _guide(self, question: str) -> str:
        index = await self.catalogue.search_index()
        hits = index.search(question, limit=3)
        faq = self.faq.best(question) if self.faq else None
        if faq is not None and faq[0] >= index.MIN_SCORE and (not hits or faq[0] > hits[0].score):
            return faq[1]
        if not hits or hits[0].score < index.MIN_SCORE:
            suggestions = "、".join(h.name for h in hits[:3]) if hits else ""
            text = "抱歉，没有找到与您的问题匹配的办事指南。"
            if suggestions:
                text += f"\n您是不是想办：{suggestions}？"
            return text + "\n可回复“咨询 + 您的问题”留言，工作人员会尽快答复。"
        guide = await self.catalogue.guide(hits[0].code)
        materials = [m["name"] for m in guide["materials"] if m["source"] == "applicant" and m["required"]]
        shared = [m["name"] for m in guide["materials"] if m["source"] == "shared"]
        flags = guide["flags"]
        channel = "全程网办" if flags["fully_online"] else f"需到现场{flags['visits_required']}次"
        lines = [
            f"【{guide['name']}{'（' + guide['sub_name'] + '）' if guide.get('sub_name') else ''}】",
            f"办理部门：{guide['department']}",
            f"承诺时限：{guide['promised_days']}个工作日（法定{guide['legal_days']}个工作日）",
            f"收费：{fee_text(guide['fee'])}",
            f"办理方式：{channel}{'，最多跑一次' if flags['max_one_trip'] else ''}",
        ]
        if materials:
            lines.append("需准备：" + "、".join(materials))
        if shared:
            lines.append("无需提交（部门共享获取）：" + "、".join(shared))
        lines.append(self.mp_link("👉 在线办理", f"pages/service/index?code={guide['code']}"))
        if len(hits) > 1 and hits[1].score >= index.MIN_SCORE:
            lines.append("相关事项：" + "、".join(h.name for h in hits[1:]))
        return "\n".join(lines)

    async def take_ticket(self, follower: Follower, kind: str, content: str, dedup_key: str) -> str:
        """A consultation or complaint ticket, routed to the department of the best-matching service."""
        content = content.strip()
        label = "咨询" if kind == "consultation" else "投诉"
        if len(content) < 4:
            return f"请在“{label}”后写明具体内容，例如：{label} 公积金提取需要多久到账？"
        existing = await Ticket.get_or_none(dedup_key=dedup_key)
        if existing is not None:
            return self._ticket_confirmation(existing)
        department, service_code = await self.ticket_policy.route(self.catalogue, content)
        follower = await self.linked(follower)
        try:
            ticket = await open_ticket(
                cipher=self.cipher,
                policy=self.ticket_policy,
                kind=kind,
                content=content,
                department=department,
                service_code=service_code,
                dedup_key=dedup_key,
                channel="official_account",
                user_id=follower.user_id,
                oa_openid=follower.oa_openid,
            )
        except IntegrityError:  # the same message taken concurrently: one ticket
            ticket = await Ticket.get(dedup_key=dedup_key)
        return self._ticket_confirmation(ticket)

    def _ticket_confirmation(self, ticket: Ticket) -> str:
        return confirmation(ticket, self.ticket_policy)

    def halls_answer(self, lat: float, lng: float) -> str:
        lines = ["离您最近的政务服务大厅："]
        for i, (hall, km) in enumerate(nearest_halls(self.halls, lat, lng), start=1):
            lines.append(f"{i}. {hall.name}（约{km:.1f}公里）\n   {hall.address}\n   {hall.hours}  电话 {hall.phone}")
        return "\n".join(lines)

    async def answer_text(self, follower: Follower, text: str, dedup_key: str) -> str:
        """The answer to a typed (or recognised voice) message."""
        text = text.strip()
        if not text or text.lower() in MENU_WORDS:
            return MENU_TEXT
        rating = RATING_INTENT.match(text)
        if rating and self.evaluations is not None:
            case_no, level, comment = rating.group(1).upper(), int(rating.group(2)), (rating.group(3) or "").strip()
            return await self.evaluations.rate_by_message(await self.linked(follower), case_no, level, comment or None)
        if text in NOTICE_WORDS and self.notices is not None:
            return await self.notices.latest_text(lambda label, path: self.mp_link(label, path))
        found = CASE_NO.search(text.upper())
        if found or text in PROGRESS_WORDS:
            return await self.progress(follower, found.group(0) if found else None)
        intent = TICKET_INTENT.match(text)
        if intent:
            kind = "consultation" if intent.group(1) == "咨询" else "complaint"
            return await self.take_ticket(follower, kind, intent.group(2), dedup_key)
        return await self.guide_answer(text)

    async def answer_click(self, follower: Follower, key: str) -> str:
        if key == "MENU_PROGRESS":
            return await self.progress(follower, None)
        if key == "MENU_CONSULT":
            return "请回复“咨询 + 您的问题”或“投诉 + 具体内容”，我们会转交相关部门在规定时间内答复。"
        if key == "EVALUATE" and self.evaluations is not None:
            return await self.evaluations.menu_hint(await self.linked(follower))
        if key == "MENU_HALLS":
            return "请点击输入框旁的“+”，发送您的位置，为您查找附近的政务服务大厅。"
        return MENU_TEXT


# The official account's menu, pushed by `python server.py menu push`.
def menu_definition(mp_appid: str, public_base_url: str) -> dict:
    return {
        "button": [
            {"type": "click", "name": "办事指南", "key": "MENU_GUIDE"},
            {
                "type": "miniprogram",
                "name": "掌上办理",
                "url": public_base_url,
                "appid": mp_appid,
                "pagepath": "pages/index/index",
            },
            {
                "name": "我的",
                "sub_button": [
                    {"type": "click", "name": "查进度", "key": "MENU_PROGRESS"},
                    {"type": "click", "name": "咨询投诉", "key": "MENU_CONSULT"},
                    {"type": "click", "name": "附近大厅", "key": "MENU_HALLS"},
                    {"type": "click", "name": "评价办件", "key": "EVALUATE"},
                ],
            },
        ]
    }


# -- flows: routing a follower's message ----------------------------------------------------


class IncomingMessage(Protocol):
    """What `answer` reads of a message; `bot.messages.Message` is one."""

    from_user: str
    msg_type: str
    content: str | None
    recognition: str | None
    location: tuple | None  # (lat, lng, ...)
    event: str | None
    event_key: str | None


class UnionidChecks:
    """Remembers (in Redis, for an hour) that a follower's unionid was looked up, found or not,
    so a follower whose account has no unionid costs WeChat one call an hour, not one a message."""

    TTL_S = 3600

    def __init__(self, *, redis: Redis, keys: Keys):
        self.redis, self.keys = redis, keys

    async def forget(self, openid: str) -> None:
        await self.redis.delete(self.keys("bot", "unionid-checked", openid))

    async def should_look_up(self, openid: str) -> bool:
        """True once an hour per follower: the caller looks the unionid up now."""
        return bool(await self.redis.set(self.keys("bot", "unionid-checked", openid), b"1", nx=True, ex=self.TTL_S))


@dataclass(frozen=True)
class _Turn:
    """One message being answered, with what answering it needs."""

    bot: Bot
    oa: OfficialAccountAPI
    message: IncomingMessage
    dedup_key: str
    checks: UnionidChecks | None

    async def follower(self, *, subscribed: bool | None = None) -> Follower:
        """The sender's follower record, its unionid looked up from WeChat when still unknown.

        A message or a non-subscription event takes it from the bot's cache when it needs no write;
        a (un)subscription always reads and writes the database."""
        openid = self.message.from_user
        if subscribed is None:
            cached = self.bot.seen_follower(openid)
            if cached is not None:
                return cached
        follower = await self.bot.follower(openid, subscribed=subscribed)
        if follower.unionid is None and (self.checks is None or await self.checks.should_look_up(openid)):
            try:  # the unionid links the follower to their mini-program account
                info = await asyncio.wait_for(self.oa.user_info(openid), UNIONID_LOOKUP_TIMEOUT_S)
                if info.get("unionid"):
                    follower = await self.bot.follower(openid, unionid=info["unionid"])
            except (TimeoutError, WeChatError, WeChatUnavailable):
                log.info("follower unionid not available yet")
        return follower


async def _on_unsubscribe(turn: _Turn) -> None:
    await turn.bot.follower(turn.message.from_user, subscribed=False)
    turn.bot.followers.drop(turn.message.from_user)


async def _on_subscribe(turn: _Turn) -> str:
    if turn.checks is not None:
        await turn.checks.forget(turn.message.from_user)  # a (re)subscribe always looks the unionid up
    await turn.follower(subscribed=True)
    return turn.bot.welcome()


async def _on_scan(turn: _Turn) -> None:
    await turn.follower(subscribed=True)


async def _on_click(turn: _Turn) -> str:
    return await turn.bot.answer_click(await turn.follower(), turn.message.event_key or "")


async def _on_other_event(turn: _Turn) -> None:
    await turn.follower()  # location reports, menu views: nothing to say, but the follower is seen


EVENT_ANSWERS: dict[str, Callable[[_Turn], Awaitable[str | None]]] = {
    "unsubscribe": _on_unsubscribe,
    "subscribe": _on_subscribe,
    "scan": _on_scan,
    "click": _on_click,
}


async def _on_text(turn: _Turn, follower: Follower) -> str:
    return await turn.bot.answer_text(follower, turn.message.content or "", turn.dedup_key)


async def _on_voice(turn: _Turn, follower: Follower) -> str:
    if turn.message.recognition:
        return await turn.bot.answer_text(follower, turn.message.recognition, turn.dedup_key)
    return VOICE_HINT


async def _on_media(turn: _Turn, follower: Follower) -> str:
    return IMAGE_HINT


async def _on_location(turn: _Turn, follower: Follower) -> str:
    if not turn.message.location:
        return turn.bot.welcome()
    lat, lng = turn.message.location[0], turn.message.location[1]
    return turn.bot.halls_answer(float(lat), float(lng))


async def _on_other_message(turn: _Turn, follower: Follower) -> str:
    return turn.bot.welcome()


MESSAGE_ANSWERS: dict[str, Callable[[_Turn, Follower], Awaitable[str]]] = {
    "text": _on_text,
    "voice": _on_voice,
    "image": _on_media,
    "video": _on_media,
    "shortvideo": _on_media,
    "location": _on_location,
}


async def answer(
    *,
    bot: Bot,
    oa: OfficialAccountAPI,
    message: IncomingMessage,
    dedup_key: str,
    checks: UnionidChecks | None = None,
) -> str | None:
    """The text to answer `message` with, or None for no reply."""
    turn = _Turn(bot, oa, message, dedup_key, checks)
    if message.msg_type == "event":
        return await EVENT_ANSWERS.get(message.event or "", _on_other_event)(turn)
    follower = await turn.follower()
    return await MESSAGE_ANSWERS.get(message.msg_type, _on_other_message)(turn, follower)


async def send_late_answer(*, oa: OfficialAccountAPI, openid: str, content: str) -> None:
    """Sends an answer that missed the callback's deadline as a customer-service message; failures are logged."""
    try:
        await oa.send_text(openid, content)
    except WeChatError as exc:
        if exc.errcode == 45015:  # outside the 48-hour window: WeChat will not deliver it
            log.warning("late answer not sent: follower outside the 48-hour window")
        else:
            log.error("late answer not sent: errcode %s", exc.errcode)
    except WeChatUnavailable:
        log.error("late answer not sent: WeChat unavailable")

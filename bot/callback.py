"""`GET/POST /wechat/oa`: the official-account callback.

Order of work for a POST, each step refusing before the next reads anything:
1. body size (64 KiB) and the URL signature (constant time, timestamp within 5 minutes) → 403;
2. safe mode (`encrypt_type=aes`): msg_signature over the ciphertext, then decryption → 403;
3. parsing with defusedxml (no DTDs or entities) → 400;
4. de-duplication in Redis (SET NX, 60 s): WeChat retries a message up to three times when it
   gets no answer in 5 s; a retry gets the first request's reply, never a second action;
5. the answer, under a deadline (~4 s): if it is late the callback answers `success` and the
   answer follows as a customer-service message.
Replies go back encrypted when the request came encrypted.
"""

from __future__ import annotations

import asyncio
import logging
import time

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, text

from bot.crypto import CallbackRejected, OACrypto
from bot.messages import BadMessage, Message, dedup_key, parse, text_reply
from core.errors import BadRequest, Forbidden, PayloadTooLarge
from handlers.bot import Bot
from wechat.client import WeChatError, WeChatUnavailable

log = logging.getLogger("zhangban.bot")
bp = Blueprint("wechat_oa")

BODY_LIMIT = 64 * 1024
SEEN_TTL_S = 60  # WeChat retries over about 15 s; keep the guard well beyond that
IMAGE_HINT = "图片请在掌办小程序的申请页面上传，公众号暂不接收材料图片。"
VOICE_HINT = "抱歉，没有听清您的语音，请用文字再说一遍。"


def _crypto(request: Request) -> OACrypto:
    return request.app.ctx.oa_crypto


@bp.get("/wechat/oa")
async def verify(request: Request) -> HTTPResponse:
    args = request.args
    try:
        echo = _crypto(request).verify_url(
            args.get("signature", ""), args.get("timestamp", ""), args.get("nonce", ""), args.get("echostr", "")
        )
    except CallbackRejected as exc:
        log.warning("official-account URL verification refused: %s", exc)
        raise Forbidden("签名校验失败", code="signature_invalid") from None
    return text(echo)


@bp.post("/wechat/oa")
async def receive(request: Request) -> HTTPResponse:
    args, crypto = request.args, _crypto(request)
    if len(request.body or b"") > BODY_LIMIT:
        raise PayloadTooLarge("消息过大", code="payload_too_large")
    timestamp, nonce = args.get("timestamp", ""), args.get("nonce", "")
    encrypted = args.get("encrypt_type", "raw") == "aes"
    try:
        crypto.check_signature(args.get("signature", ""), timestamp, nonce)
        plain = (
            crypto.decrypt(request.body, msg_signature=args.get("msg_signature", ""), timestamp=timestamp, nonce=nonce)
            if encrypted
            else request.body
        )
    except CallbackRejected as exc:
        log.warning("official-account callback refused: %s", exc)
        raise Forbidden("签名校验失败", code="signature_invalid") from None
    try:
        message = parse(plain, limit=BODY_LIMIT)
    except BadMessage as exc:
        log.warning("official-account message unreadable: %s", exc)
        raise BadRequest("消息格式错误", code="bad_message") from None

    reply = await _reply_once(request, message)
    if reply == "success":
        return text("success")
    if encrypted:
        return text(crypto.encrypt(reply, nonce=nonce), content_type="application/xml")
    return text(reply, content_type="application/xml")


async def _reply_once(request: Request, message: Message) -> str:
    """The reply XML (or "success"); a duplicate delivery waits for and returns the first one's."""
    ctx = request.app.ctx
    key = dedup_key(message)
    seen_key, reply_key = ctx.keys("bot", "seen", key), ctx.keys("bot", "reply", key)
    deadline = ctx.settings.BOT_DEADLINE_S
    if not await ctx.redis.set(seen_key, b"1", nx=True, ex=SEEN_TTL_S):
        waited_until = time.monotonic() + deadline
        while time.monotonic() < waited_until:
            cached = await ctx.redis.get(reply_key)
            if cached is not None:
                return cached.decode()
            await asyncio.sleep(0.05)
        return "success"
    reply = await _answer_within(request, message, key, deadline)
    await ctx.redis.set(reply_key, reply.encode(), ex=SEEN_TTL_S)
    return reply


async def _answer_within(request: Request, message: Message, key: str, deadline: float) -> str:
    ctx = request.app.ctx
    work = asyncio.ensure_future(answer(ctx.bot, ctx.oa, message, key, checked=_UnionidChecks(ctx.redis, ctx.keys)))
    # Tracked until done: if WeChat hangs up and Sanic cancels this handler, the shielded work
    # goes on, and a graceful stop waits for it instead of closing the pools under it.
    ctx.bot_tasks.add(work)
    work.add_done_callback(ctx.bot_tasks.discard)
    try:
        content = await asyncio.wait_for(asyncio.shield(work), deadline)
    except TimeoutError:
        # Too slow for WeChat's 5 seconds: answer `success` now and send the answer later.
        work.add_done_callback(lambda t: _send_late(ctx, message.from_user, t))
        log.info("bot answer deferred to a customer-service message", extra={"msg_type": message.msg_type})
        return "success"
    return "success" if content is None else text_reply(message, content)


def _send_late(ctx, openid: str, task: asyncio.Task) -> None:
    ctx.bot_tasks.discard(task)
    if task.cancelled() or task.exception() is not None or task.result() is None:
        if not task.cancelled() and task.exception() is not None:
            log.error("late bot answer failed", exc_info=task.exception())
        return
    sending = asyncio.ensure_future(_deliver(ctx, openid, task.result()))
    ctx.bot_tasks.add(sending)
    sending.add_done_callback(ctx.bot_tasks.discard)


async def _deliver(ctx, openid: str, content: str) -> None:
    try:
        await ctx.oa.send_text(openid, content)
    except WeChatError as exc:
        if exc.errcode == 45015:  # outside the 48-hour window: WeChat will not deliver it
            log.warning("late answer not sent: follower outside the 48-hour window")
        else:
            log.error("late answer not sent: errcode %s", exc.errcode)
    except WeChatUnavailable:
        log.error("late answer not sent: WeChat unavailable")


class _UnionidChecks:
    """Remembers (in Redis, for an hour) that a follower's unionid was looked up, found or not,
    so a follower whose account has no unionid costs WeChat one call an hour, not one a message."""

    TTL_S = 3600

    def __init__(self, redis, keys):
        self.redis, self.keys = redis, keys

    async def forget(self, openid: str) -> None:
        await self.redis.delete(self.keys("bot", "unionid-checked", openid))

    async def should_look_up(self, openid: str) -> bool:
        return bool(await self.redis.set(self.keys("bot", "unionid-checked", openid), b"1", nx=True, ex=self.TTL_S))


async def answer(bot: Bot, oa, message: Message, key: str, *, checked: _UnionidChecks | None = None) -> str | None:
    """The text to answer `message` with, or None for no reply."""
    if message.msg_type == "event":
        event = message.event or ""
        if event == "unsubscribe":
            await bot.follower(message.from_user, subscribed=False)
            return None
        if event == "subscribe" and checked is not None:
            await checked.forget(message.from_user)  # a (re)subscribe always looks the unionid up
        follower = await _follower(
            bot, oa, message.from_user, checked, subscribed=True if event in {"subscribe", "scan"} else None
        )
        if event == "subscribe":
            return bot.welcome()
        if event == "click":
            return await bot.answer_click(follower, message.event_key or "")
        return None  # location reports, menu views: nothing to say
    follower = await _follower(bot, oa, message.from_user, checked)
    if message.msg_type == "text":
        return await bot.answer_text(follower, message.content or "", key)
    if message.msg_type == "voice":
        if message.recognition:
            return await bot.answer_text(follower, message.recognition, key)
        return VOICE_HINT
    if message.msg_type in {"image", "video", "shortvideo"}:
        return IMAGE_HINT
    if message.msg_type == "location" and message.location:
        lat, lng = message.location[0], message.location[1]
        return bot.halls_answer(float(lat), float(lng))
    return bot.welcome()


async def _follower(bot: Bot, oa, openid: str, checked: _UnionidChecks | None, *, subscribed: bool | None = None):
    follower = await bot.follower(openid, subscribed=subscribed)
    if follower.unionid is None and (checked is None or await checked.should_look_up(openid)):
        try:  # the unionid links the follower to their mini-program account
            info = await asyncio.wait_for(oa.user_info(openid), 2.0)
            if info.get("unionid"):
                follower = await bot.follower(openid, unionid=info["unionid"])
        except (TimeoutError, WeChatError, WeChatUnavailable):
            log.info("follower unionid not available yet")
    return follower

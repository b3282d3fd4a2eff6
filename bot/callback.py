"""`GET/POST /wechat/oa`: the official-account callback.

Order of work for a POST, each step refusing before the next reads anything:
1. body size (64 KiB) and the URL signature (constant time, timestamp within 5 minutes) → 403;
2. safe mode (`encrypt_type=aes`): msg_signature over the ciphertext, then decryption → 403; a
   plain-mode message is refused (403) unless the account is set to compatible mode;
3. parsing with defusedxml (no DTDs or entities) → 400 (after claiming the signature as in 4,
   so that a replayed signature is 403 whatever its body);
4. one Redis round trip (a Lua script, `CLAIM`) that claims the signature's (timestamp, nonce) for
   as long as the timestamp is accepted and the message's de-duplication key for 60 s, and returns
   the first delivery's reply when there is one. The same signature with another body (or first
   seen on the GET verification) is a replay → 403; with the same body it is a resend, answered
   with the first delivery's reply and never acted on. WeChat retries a message up to three times
   when it gets no answer in 5 s; a retry gets the first request's reply, never a second action;
   a retry that comes while the first delivery is still answering waits for its reply;
5. the answer (`handlers.bot.answer`), under a deadline (~4 s): if it is late the callback answers
   `success` and the answer follows as a customer-service message. The reply is stored for the
   duplicates before it is sent, so a duplicate that finds the claim finds the reply soon after.
Replies go back encrypted when the request came encrypted.
"""

from __future__ import annotations

import asyncio
import logging
import time

from pydantic import BaseModel, Field
from redis.commands.core import AsyncScript
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, text

from bot.crypto import CallbackRejected, OACrypto, Verified
from bot.messages import BadMessage, Message, dedup_key, parse, text_reply
from container import Services
from core.errors import BadRequest, Forbidden, PayloadTooLarge
from core.openapi import document
from handlers.bot import UnionidChecks, answer, send_late_answer
from wechat.client import OfficialAccountAPI

log = logging.getLogger("zhangban.bot")
bp = Blueprint("wechat_oa")

BODY_LIMIT = 64 * 1024
SEEN_TTL_S = 60  # WeChat retries over about 15 s; keep the guard well beyond that

# KEYS: the signature, the message's de-duplication key, its reply.
# ARGV: the request's body digest, the signature's TTL, the de-duplication TTL.
# Answers {CLAIMED} (answer it now), {REPLAY}, {REPLY, xml}, {WAIT} (the first delivery is still
# answering) or {GONE} (a resend whose first delivery is forgotten: never answered anew).
_CLAIM = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {0} end
  if redis.call('EXISTS', KEYS[2]) == 0 then return {4} end
elseif redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[3]) then
  return {1}
end
local reply = redis.call('GET', KEYS[3])
if reply then return {2, reply} end
return {3}
"""
REPLAY, CLAIMED, REPLY, WAIT, GONE = 0, 1, 2, 3, 4


def _crypto(request: Request) -> OACrypto:
    return request.app.ctx.oa_crypto


def _refused(what: str, exc: CallbackRejected) -> Forbidden:
    log.warning("%s refused: %s", what, exc)
    return Forbidden("签名校验失败", code="oa_signature_invalid")


async def _first_use(request: Request, verified: Verified) -> bool:
    """Claims the request's signature; True the first time, False for a resend of the same request.

    Raises CallbackRejected when the signature was already used with another body: a replay.
    """
    services = Services.of(request)
    key = services.keys("bot", "sig", verified.replay_key)
    digest = verified.body_digest.encode()
    if await services.redis.set(key, digest, nx=True, ex=verified.ttl_s):
        return True
    if await services.redis.get(key) == digest:
        return False
    raise CallbackRejected("replayed signature")


class VerifyQuery(BaseModel):
    """WeChat's URL verification (checked by OACrypto, documented here)."""

    signature: str
    timestamp: str
    nonce: str
    echostr: str


class MessageQuery(BaseModel):
    """WeChat's signature of a pushed message (checked by OACrypto, documented here)."""

    signature: str
    timestamp: str
    nonce: str
    openid: str | None = None
    encrypt_type: str | None = Field(None, description="aes in safe mode")
    msg_signature: str | None = Field(None, description="the signature of the encrypted message (safe mode)")


@bp.get("/wechat/oa")
@document(
    summary="WeChat verifies the official account's server URL (echoes echostr)",
    tag="official-account",
    query=VerifyQuery,
    content_type="text/plain",
    errors=(403,),
)
async def verify(request: Request) -> HTTPResponse:
    args = request.args
    try:
        verified = _crypto(request).open_verification(
            args.get("signature", ""), args.get("timestamp", ""), args.get("nonce", ""), args.get("echostr", "")
        )
        await _first_use(request, verified)
    except CallbackRejected as exc:
        raise _refused("official-account URL verification", exc) from None
    return text(args.get("echostr", ""))


@bp.post("/wechat/oa")
@document(
    summary="WeChat pushes a citizen's message to the official account (XML); the answer is XML or success",
    tag="official-account",
    query=MessageQuery,
    raw_body="text/xml",
    content_type=("text/plain", "application/xml"),
    errors=(400, 403, 413),
)
async def receive(request: Request) -> HTTPResponse:
    args, crypto = request.args, _crypto(request)
    if len(request.body or b"") > BODY_LIMIT:
        raise PayloadTooLarge("消息过大", code="payload_too_large")
    nonce = args.get("nonce", "")
    try:
        verified = crypto.open(
            request.body or b"",
            signature=args.get("signature", ""),
            timestamp=args.get("timestamp", ""),
            nonce=nonce,
            encrypt_type=args.get("encrypt_type", "raw"),
            msg_signature=args.get("msg_signature", ""),
        )
    except CallbackRejected as exc:
        raise _refused("official-account callback", exc) from None
    try:
        message = parse(verified.xml, limit=BODY_LIMIT)
    except BadMessage as exc:
        try:
            await _first_use(request, verified)
        except CallbackRejected as rejected:
            raise _refused("official-account callback", rejected) from None
        log.warning("official-account message unreadable: %s", exc)
        raise BadRequest("消息格式错误", code="bad_message") from None

    services, key = Services.of(request), dedup_key(message)
    reply_key = services.keys("bot", "reply", key)
    found = await _claim_script(request)(
        keys=[services.keys("bot", "sig", verified.replay_key), services.keys("bot", "seen", key), reply_key],
        args=[verified.body_digest, verified.ttl_s, SEEN_TTL_S],
    )
    outcome = int(found[0])
    if outcome == REPLAY:
        raise _refused("official-account callback", CallbackRejected("replayed signature"))
    if outcome == CLAIMED:
        reply = await _answer_within(request, message, key, services.settings.BOT_DEADLINE_S)
        # Stored before it is sent: a duplicate never finds the claim without the reply for long.
        await services.redis.set(reply_key, reply.encode(), ex=SEEN_TTL_S)
    elif outcome == REPLY:
        reply = found[1].decode()
    elif outcome == WAIT:
        reply = await _first_reply(services, reply_key)
    else:  # GONE
        reply = "success"
    if reply == "success":
        return text("success")
    if verified.encrypted:
        return text(crypto.encrypt(reply, nonce=nonce), content_type="application/xml")
    return text(reply, content_type="application/xml")


def _claim_script(request: Request) -> AsyncScript:
    """The registered `_CLAIM` script of this app's Redis client (EVALSHA, loaded on first use)."""
    script = getattr(request.app.ctx, "bot_claim", None)
    if script is None:
        script = request.app.ctx.bot_claim = Services.of(request).redis.register_script(_CLAIM)
    return script


async def _first_reply(services: Services, reply_key: str) -> str:
    """The first delivery's reply, waited for up to the deadline; "success" if it does not come
    (the first delivery failed, or is answering after its own deadline with `success` too)."""
    waited_until = time.monotonic() + services.settings.BOT_DEADLINE_S
    pause = 0.01
    while True:
        await asyncio.sleep(pause)
        cached = await services.redis.get(reply_key)
        if cached is not None:
            return cached.decode()
        if time.monotonic() >= waited_until:
            return "success"
        pause = min(pause * 2, 0.1)


async def _answer_within(request: Request, message: Message, key: str, deadline: float) -> str:
    services, tasks = Services.of(request), request.app.ctx.bot_tasks
    checks = UnionidChecks(redis=services.redis, keys=services.keys)
    work = asyncio.ensure_future(
        answer(bot=services.bot, oa=services.oa, message=message, dedup_key=key, checks=checks)
    )
    # Tracked until done: if WeChat hangs up and Sanic cancels this handler, the shielded work
    # goes on, and a graceful stop waits for it instead of closing the pools under it.
    tasks.add(work)
    work.add_done_callback(tasks.discard)
    try:
        content = await asyncio.wait_for(asyncio.shield(work), deadline)
    except TimeoutError:
        # Too slow for WeChat's 5 seconds: answer `success` now and send the answer later.
        work.add_done_callback(lambda t: _send_late(services.oa, tasks, message.from_user, t))
        log.info("bot answer deferred to a customer-service message", extra={"msg_type": message.msg_type})
        return "success"
    return "success" if content is None else text_reply(message, content)


def _send_late(oa: OfficialAccountAPI, tasks: set[asyncio.Future], openid: str, task: asyncio.Task) -> None:
    tasks.discard(task)
    if task.cancelled() or task.exception() is not None or task.result() is None:
        if not task.cancelled() and task.exception() is not None:
            log.error("late bot answer failed", exc_info=task.exception())
        return
    sending = asyncio.ensure_future(send_late_answer(oa=oa, openid=openid, content=task.result()))
    tasks.add(sending)
    sending.add_done_callback(tasks.discard)

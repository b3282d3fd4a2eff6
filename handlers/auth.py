"""Citizen sign-in: WeChat login, opaque bearer tokens, rotating refresh tokens.

Access tokens live in Redis under their SHA-256 (never in clear) for `ACCESS_TTL_S`.
Refresh tokens are rows (hashed) in a *family*: each refresh marks the presented token used
and issues the next one in the same family. Presenting a used token means it was stolen or
replayed, so the whole family is revoked, access tokens included. Rotations and revocations
of one family are serialised on a lock of the family, and an access token granted by a
rotation is checked against its family once it is in Redis, so no token outlives a revocation
that a concurrent request decided.

A serving process resolves a token it has just seen from memory: `signed_in` keeps the token's
citizen for AUTH_CACHE_TTL_S (counted from before the lookup), so a hit costs no round trip.
Revocations and account changes are announced on a Redis channel every serving process listens
to (`TokenStore.listen`), which drops what it kept at once; the short life of an entry bounds
what a missed announcement could leave, so a logout, a reused refresh token or an account change
takes effect on every worker of every node within a second.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
import secrets
import time
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis
from tortoise.exceptions import IntegrityError
from tortoise.signals import post_save
from tortoise.transactions import in_transaction

from core.errors import Forbidden, Unauthenticated
from handlers import audit
from handlers.upstream import wechat_errors
from storage.crypto import FieldCipher
from storage.models import ActorType, IdentityLevel, RefreshToken, User
from storage.redis import Keys
from wechat.client import WeChatClient

log = logging.getLogger("zhangban.auth")

ACCESS_TTL_S = 15 * 60
REFRESH_TTL = timedelta(days=30)
# How long a serving process trusts a token it resolved without asking again (the bound on a
# revocation it was not told about), and how many resolved tokens it keeps at most.
AUTH_CACHE_TTL_S = 0.5
AUTH_CACHE_MAX = 100_000
# After losing the revocation channel, the wait before listening again.
RELISTEN_S = 1.0


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    user: User


@dataclass(frozen=True)
class Principal:
    """Who a bearer token stands for."""

    user_id: int
    family: str


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# -- service: data in, data out ------------------------------------------------------------


async def get_or_create_user(*, openid: str, unionid: str | None) -> User:
    """The user for this mini-program openid, linking by unionid (same person in the official account)."""
    user = await User.get_or_none(openid=openid)
    if user is None and unionid:
        user = await User.get_or_none(unionid=unionid, openid=None)
        if user is not None:
            user.openid = openid
            await user.save(update_fields=["openid", "updated_at"])
    if user is None:
        try:
            user = await User.create(openid=openid, unionid=unionid)
        except IntegrityError:  # a concurrent login created it first (unique openid)
            user = await User.get(openid=openid)
    elif unionid and user.unionid != unionid:
        user.unionid = unionid
        await user.save(update_fields=["unionid", "updated_at"])
    return user


# -- flows: tokens, Redis, WeChat ----------------------------------------------------------


# Every token store of this process, told when an account changes (`account_changed`).
_stores: weakref.WeakSet[TokenStore] = weakref.WeakSet()


class TokenStore:
    """Issues, checks and revokes citizens' tokens; resolves recently seen ones from memory."""

    def __init__(
        self, *, redis: Redis, keys: Keys, access_ttl_s: int = ACCESS_TTL_S, cache_ttl_s: float = AUTH_CACHE_TTL_S
    ):
        self.redis, self.keys, self.access_ttl_s = redis, keys, access_ttl_s
        self.cache_ttl_s = cache_ttl_s
        # token hash -> (monotonic time it expires, principal, the account as read), oldest first.
        self._resolved: dict[str, tuple[float, Principal, User]] = {}
        # Bumped by every revocation: a lookup that started before one is not kept.
        self._generation = 0
        _stores.add(self)

    def _access_key(self, token_hash: str) -> str:
        return self.keys("auth", "access", token_hash)

    def _family_key(self, family: str) -> str:
        return self.keys("auth", "family", family)

    async def issue(self, user: User) -> TokenPair:
        """A new access + refresh pair for `user` in a new family (a login)."""
        family = secrets.token_hex(16)
        refresh = await self._new_refresh(user, family)
        return TokenPair(await self._grant_access(user, family), refresh, self.access_ttl_s, user)

    async def _new_refresh(self, user: User, family: str) -> str:
        refresh = secrets.token_urlsafe(48)
        await RefreshToken.create(
            user=user, family=family, token_hash=_hash(refresh), expires_at=datetime.now(UTC) + REFRESH_TTL
        )
        return refresh

    async def _grant_access(self, user: User, family: str) -> str:
        access = secrets.token_urlsafe(32)
        access_hash = _hash(access)
        pipe = self.redis.pipeline()
        pipe.set(self._access_key(access_hash), json.dumps({"uid": user.id, "fam": family}), ex=self.access_ttl_s)
        pipe.sadd(self._family_key(family), access_hash)
        pipe.expire(self._family_key(family), int(REFRESH_TTL.total_seconds()))
        await pipe.execute()
        return access

    async def principal(self, access_token: str | None) -> Principal:
        """Who `access_token` stands for; raises Unauthenticated if it is missing, bad or expired."""
        if not access_token:
            raise Unauthenticated()
        return await self._principal_of(_hash(access_token))

    async def _principal_of(self, token_hash: str) -> Principal:
        raw = await self.redis.get(self._access_key(token_hash))
        if raw is None:
            raise Unauthenticated("登录已过期，请重新登录")
        data = json.loads(raw)
        return Principal(user_id=data["uid"], family=data["fam"])

    async def signed_in(self, access_token: str | None) -> tuple[Principal, User]:
        """Who `access_token` stands for and their active account: kept in memory for
        `cache_ttl_s` after a lookup; Unauthenticated if the token is missing, bad, expired or
        revoked, or the account is disabled. The account is the caller's own copy."""
        if not access_token:
            raise Unauthenticated()
        token_hash = _hash(access_token)
        started = time.monotonic()
        kept = self._resolved.get(token_hash)
        if kept is not None and kept[0] > started:
            return kept[1], _own_copy(kept[2])
        generation = self._generation
        principal = await self._principal_of(token_hash)
        user = await User.get_or_none(id=principal.user_id, is_active=True)
        if user is None:
            raise Unauthenticated("账号已停用", code="account_disabled")
        if generation == self._generation:  # no revocation since the lookup began
            self._keep(token_hash, (started + self.cache_ttl_s, principal, user))
        return principal, _own_copy(user)

    def _keep(self, token_hash: str, entry: tuple[float, Principal, User]) -> None:
        resolved = self._resolved
        resolved.pop(token_hash, None)
        # Entries expire in the order they were kept: drop the expired ones from the front.
        now = time.monotonic()
        while resolved:
            oldest = next(iter(resolved))
            if resolved[oldest][0] > now and len(resolved) < AUTH_CACHE_MAX:
                break
            del resolved[oldest]
        resolved[token_hash] = entry

    def forget(self, *, family: str | None = None, user_id: int | None = None) -> None:
        """Drops, in this process, the kept tokens of a login `family` or of an account."""
        self._generation += 1
        for token_hash, (_, principal, _) in list(self._resolved.items()):
            if principal.family == family or principal.user_id == user_id:
                self._resolved.pop(token_hash, None)

    def forget_all(self) -> None:
        self._generation += 1
        self._resolved.clear()

    def _channel(self) -> str:
        return self.keys("auth", "revoked")

    async def announce(self, *, family: str | None = None, user_id: int | None = None) -> None:
        """Drops the kept tokens of `family` or of account `user_id` here, and in every process
        listening (`listen`)."""
        self.forget(family=family, user_id=user_id)
        await self.redis.publish(self._channel(), json.dumps({"family": family, "user_id": user_id}))

    async def listen(self) -> None:
        """Follows the revocation channel for ever, dropping what each announcement names; after
        losing the channel (Redis restarted), drops everything kept, as an announcement may have
        been missed, and listens again."""
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel())
                self.forget_all()
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        data = json.loads(message["data"])
                        self.forget(family=data.get("family"), user_id=data.get("user_id"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("token revocation channel lost, listening again: %r", exc)
            finally:
                self.forget_all()
                try:
                    await pubsub.aclose()
                except Exception:  # the connection is already gone
                    pass
            await asyncio.sleep(RELISTEN_S)

    async def refresh(self, refresh_token: str) -> TokenPair:
        """The next pair for a live refresh token; a reused one revokes its whole family."""
        row = await RefreshToken.get_or_none(token_hash=_hash(refresh_token)).prefetch_related("user")
        if row is None:
            raise Unauthenticated("登录凭证无效，请重新登录", code="invalid_refresh_token")
        now = datetime.now(UTC)
        refresh = None
        async with in_transaction():
            await _lock_family(row.family)
            current = await RefreshToken.get(id=row.id)  # read under the lock, not before it
            if current.revoked_at is None and current.used_at is None:
                if current.expires_at <= now:
                    raise Unauthenticated("登录已过期，请重新登录", code="token_expired")
                if not row.user.is_active:
                    raise Unauthenticated("账号已停用", code="account_disabled")
                await RefreshToken.filter(id=row.id).update(used_at=now)
                refresh = await self._new_refresh(row.user, row.family)
            else:
                await _revoke_rows(row.family)
        if refresh is None:
            await self._revoke_access(row.family)
            raise _reused()
        access = await self._grant_access(row.user, row.family)
        # A revocation of the family may have committed after our rotation but read the family's
        # access tokens in Redis before ours was added: look again now that it is there.
        if not await RefreshToken.filter(token_hash=_hash(refresh), revoked_at=None).exists():
            await self._revoke_access(row.family)
            raise _reused()
        return TokenPair(access, refresh, self.access_ttl_s, row.user)

    async def revoke_family(self, family: str) -> None:
        """Revokes every refresh and access token of `family`."""
        async with in_transaction():
            await _lock_family(family)
            await _revoke_rows(family)
        await self._revoke_access(family)

    async def _revoke_access(self, family: str) -> None:
        # Only after the rows are revoked: an access token granted later is then seen by its
        # own rotation's check in `refresh`.
        members = await self.redis.smembers(self._family_key(family))
        pipe = self.redis.pipeline()
        for token_hash in members:
            pipe.delete(self._access_key(token_hash.decode() if isinstance(token_hash, bytes) else token_hash))
        pipe.delete(self._family_key(family))
        await pipe.execute()
        await self.announce(family=family)


def _reused() -> Unauthenticated:
    return Unauthenticated("登录凭证已被使用，为保护账号安全已退出所有登录，请重新登录", code="token_reused")


async def _lock_family(family: str) -> None:
    """Locks the family's first token (until the transaction ends) on PostgreSQL.

    Every rotation and revocation of a family takes this lock first, so they happen one after
    the other, and each statement after it sees every token the ones before it committed (a
    revocation then catches the token a concurrent rotation just made). Rows are never deleted
    one by one, so the first token stays the family's lock. SQLite runs transactions one at a
    time anyway.
    """
    await RefreshToken.filter(family=family).order_by("id").select_for_update().only("id").first()


async def _revoke_rows(family: str) -> None:
    await RefreshToken.filter(family=family, revoked_at=None).update(revoked_at=datetime.now(UTC))


def _own_copy(user: User) -> User:
    """A copy of a kept account for one request, which may change and save it."""
    own = copy.copy(user)
    own._await_when_save = {}
    return own


async def signed_in(*, tokens: TokenStore, access_token: str | None) -> tuple[Principal, User]:
    """Who a bearer token stands for and their active account; Unauthenticated otherwise."""
    return await tokens.signed_in(access_token)


async def account_changed(user_id: int) -> None:
    """Tells every serving process that account `user_id` changed: the tokens they kept for it
    are looked up again. Saving a `User` says so by itself; a bulk `update()` calls this."""
    for store in list(_stores):
        try:
            await store.announce(user_id=user_id)
        except Exception as exc:  # Redis down: the change is saved, kept tokens expire within a second
            log.warning("account change not announced: %r", exc)


@post_save(User)
async def _user_saved(sender, instance: User, created: bool, using_db, update_fields) -> None:
    if not created:
        await account_changed(instance.id)


async def login(*, code: str, wechat: WeChatClient, tokens: TokenStore, cipher: FieldCipher, ip: str) -> TokenPair:
    """Signs a citizen in with a `wx.login` code; the session_key is kept, encrypted, never returned."""
    with wechat_errors():
        session = await wechat.code2session(code)
    user = await get_or_create_user(openid=session.openid, unionid=session.unionid)
    user.session_key_enc = cipher.encrypt(session.session_key, column="users.session_key")
    await user.save(update_fields=["session_key_enc", "updated_at"])
    pair = await tokens.issue(user)
    await audit.record(
        actor_type=ActorType.CITIZEN,
        actor_id=user.id,
        action="auth.login",
        target_type="user",
        target_id=user.id,
        ip=ip,
    )
    return pair


IDENTITY_LEVELS = [IdentityLevel.L1, IdentityLevel.L2, IdentityLevel.L3]
LEVEL_NAMES = {IdentityLevel.L1: "微信登录", IdentityLevel.L2: "实名认证", IdentityLevel.L3: "实名实人认证"}


def require_level(user: User, level: IdentityLevel | str) -> None:
    """Raises 403 identity_level_required unless `user` has at least `level`."""
    level = IdentityLevel(level)
    if IDENTITY_LEVELS.index(user.identity_level) < IDENTITY_LEVELS.index(level):
        raise Forbidden(
            f"办理该事项需要先完成{LEVEL_NAMES[level]}（{level.value}）",
            code="identity_level_required",
            details={"required": level.value, "current": user.identity_level.value},
        )

"""Citizen sign-in: WeChat login, opaque bearer tokens, rotating refresh tokens.

Access tokens live in Redis under their SHA-256 (never in clear) for `ACCESS_TTL_S`.
Refresh tokens are rows (hashed) in a *family*: each refresh marks the presented token used
and issues the next one in the same family. Presenting a used token means it was stolen or
replayed, so the whole family is revoked, access tokens included.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis
from tortoise.exceptions import IntegrityError

from core.errors import Forbidden, Unauthenticated
from handlers import audit
from handlers.upstream import wechat_errors
from storage.crypto import FieldCipher
from storage.models import ActorType, IdentityLevel, RefreshToken, User
from storage.redis import Keys
from wechat.client import WeChatClient

ACCESS_TTL_S = 15 * 60
REFRESH_TTL = timedelta(days=30)


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


class TokenStore:
    """Issues, checks and revokes citizens' tokens."""

    def __init__(self, *, redis: Redis, keys: Keys, access_ttl_s: int = ACCESS_TTL_S):
        self.redis, self.keys, self.access_ttl_s = redis, keys, access_ttl_s

    def _access_key(self, token_hash: str) -> str:
        return self.keys("auth", "access", token_hash)

    def _family_key(self, family: str) -> str:
        return self.keys("auth", "family", family)

    async def issue(self, user: User, *, family: str | None = None) -> TokenPair:
        """A new access + refresh pair for `user`, in `family` (a new family on login)."""
        family = family or secrets.token_hex(16)
        access, refresh = secrets.token_urlsafe(32), secrets.token_urlsafe(48)
        await RefreshToken.create(
            user=user, family=family, token_hash=_hash(refresh), expires_at=datetime.now(UTC) + REFRESH_TTL
        )
        access_hash = _hash(access)
        pipe = self.redis.pipeline()
        pipe.set(self._access_key(access_hash), json.dumps({"uid": user.id, "fam": family}), ex=self.access_ttl_s)
        pipe.sadd(self._family_key(family), access_hash)
        pipe.expire(self._family_key(family), int(REFRESH_TTL.total_seconds()))
        await pipe.execute()
        return TokenPair(access, refresh, self.access_ttl_s, user)

    async def principal(self, access_token: str | None) -> Principal:
        """Who `access_token` stands for; raises Unauthenticated if it is missing, bad or expired."""
        if not access_token:
            raise Unauthenticated()
        raw = await self.redis.get(self._access_key(_hash(access_token)))
        if raw is None:
            raise Unauthenticated("登录已过期，请重新登录")
        data = json.loads(raw)
        return Principal(user_id=data["uid"], family=data["fam"])

    async def refresh(self, refresh_token: str) -> TokenPair:
        """The next pair for a live refresh token; a reused one revokes its whole family."""
        row = await RefreshToken.get_or_none(token_hash=_hash(refresh_token)).prefetch_related("user")
        if row is None:
            raise Unauthenticated("登录凭证无效，请重新登录", code="invalid_refresh_token")
        now = datetime.now(UTC)
        if row.revoked_at is not None or row.used_at is not None:
            await self.revoke_family(row.family)
            raise Unauthenticated("登录凭证已被使用，为保护账号安全已退出所有登录，请重新登录", code="token_reused")
        if row.expires_at <= now:
            raise Unauthenticated("登录已过期，请重新登录", code="token_expired")
        # Conditional update: of two concurrent refreshes with one token, exactly one wins.
        won = await RefreshToken.filter(id=row.id, used_at=None, revoked_at=None).update(used_at=now)
        if not won:
            await self.revoke_family(row.family)
            raise Unauthenticated("登录凭证已被使用，为保护账号安全已退出所有登录，请重新登录", code="token_reused")
        if not row.user.is_active:
            raise Unauthenticated("账号已停用", code="account_disabled")
        return await self.issue(row.user, family=row.family)

    async def revoke_family(self, family: str) -> None:
        """Revokes every refresh and access token of `family`."""
        await RefreshToken.filter(family=family, revoked_at=None).update(revoked_at=datetime.now(UTC))
        members = await self.redis.smembers(self._family_key(family))
        pipe = self.redis.pipeline()
        for token_hash in members:
            pipe.delete(self._access_key(token_hash.decode() if isinstance(token_hash, bytes) else token_hash))
        pipe.delete(self._family_key(family))
        await pipe.execute()


async def signed_in(*, tokens: TokenStore, access_token: str | None) -> tuple[Principal, User]:
    """Who a bearer token stands for and their active account; Unauthenticated otherwise."""
    principal = await tokens.principal(access_token)
    user = await User.get_or_none(id=principal.user_id, is_active=True)
    if user is None:
        raise Unauthenticated("账号已停用", code="account_disabled")
    return principal, user


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

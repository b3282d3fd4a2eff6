"""Officials' accounts: creation, password hashing (stdlib scrypt) and console sessions."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from core.errors import TooManyRequests, Unauthenticated
from handlers import audit
from handlers.catalog.reader import published_departments
from storage.models import ActorType, Official

_N, _R, _P = 2**14, 8, 1


class OfficialExists(Exception):
    """An official with this username already exists."""


class UnknownDepartment(Exception):
    """The department is none of the published catalogue's; `known` lists those (code, name)."""

    def __init__(self, department: str, known: list[tuple[str, str]]):
        super().__init__(department)
        self.department, self.known = department, known


async def catalogue_department(department: str) -> str:
    """The catalogue's name of `department`, given by code or name ("" stays "": no department).

    Case access compares an official's department with the item's department *name*, so a typo
    or a code stored as given would silently show the official no case at all.
    """
    if not department:
        return ""
    known = [(d["code"], d["name"]) for d in await published_departments()]
    for code, name in known:
        if department in (code, name):
            return name
    raise UnknownDepartment(department, known)


def hash_password(password: str) -> str:
    """A salted scrypt hash of `password` in a self-describing string."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """True when `password` matches the `stored` hash; constant-time."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


async def create_official(
    *, username: str, display_name: str, password: str, department: str = "", roles: list[str] | None = None
) -> Official:
    """Creates an official account; raises OfficialExists if the username is taken, UnknownDepartment
    if `department` (a code or name) is not the published catalogue's."""
    department = await catalogue_department(department)
    if await Official.exists(username=username):
        raise OfficialExists(username)
    return await Official.create(
        username=username,
        display_name=display_name,
        department=department,
        roles=roles or ["officer"],
        password_hash=hash_password(password),
    )


# -- console sign-in (flows: touch Redis and the audit log) -----------------------------------

SESSION_TTL_S = 8 * 3600
LOGIN_WINDOW_S = 15 * 60
LOGIN_MAX_FAILURES = 5
# Verified against when the username is unknown, so both paths cost one scrypt.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


@dataclass(frozen=True)
class ConsoleSession:
    token: str
    csrf_token: str
    official: Official


def _session_key(keys, token: str) -> str:
    return keys("console", "session", hashlib.sha256(token.encode()).hexdigest())


async def sign_in(*, redis, keys, username: str, password: str, ip: str, request_id: str) -> ConsoleSession:
    """A new console session for valid credentials; failures are counted and audited."""
    failures_key = keys("console", "login-failures", username.lower())
    if int(await redis.get(failures_key) or 0) >= LOGIN_MAX_FAILURES:
        raise TooManyRequests("登录失败次数过多，请 15 分钟后再试", code="login_locked")
    official = await Official.get_or_none(username=username, is_active=True)
    if not verify_password(password, official.password_hash if official else _DUMMY_HASH) or official is None:
        pipe = redis.pipeline()
        pipe.incr(failures_key)
        pipe.expire(failures_key, LOGIN_WINDOW_S)
        await pipe.execute()
        await audit.record(
            actor_type=ActorType.OFFICIAL,
            actor_id=None,
            action="console.sign_in_failed",
            target_type="official",
            target_id=username,
            request_id=request_id,
            ip=ip,
        )
        raise Unauthenticated("用户名或密码错误", code="invalid_credentials")
    await redis.delete(failures_key)
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
    await redis.set(_session_key(keys, token), json.dumps({"official_id": official.id, "csrf": csrf}), ex=SESSION_TTL_S)
    official.last_login_at = datetime.now(UTC)
    await official.save(update_fields=["last_login_at"])
    await audit.record(
        actor_type=ActorType.OFFICIAL,
        actor_id=official.id,
        action="console.sign_in",
        target_type="official",
        target_id=official.id,
        request_id=request_id,
        ip=ip,
    )
    return ConsoleSession(token=token, csrf_token=csrf, official=official)


async def session_for(*, redis, keys, token: str | None) -> ConsoleSession:
    """The live session for a cookie token; raises Unauthenticated otherwise."""
    if not token:
        raise Unauthenticated("请先登录管理后台")
    raw = await redis.get(_session_key(keys, token))
    if raw is None:
        raise Unauthenticated("登录已过期，请重新登录", code="session_expired")
    data = json.loads(raw)
    official = await Official.get_or_none(id=data["official_id"], is_active=True)
    if official is None:
        await redis.delete(_session_key(keys, token))
        raise Unauthenticated("账号已停用", code="account_disabled")
    return ConsoleSession(token=token, csrf_token=data["csrf"], official=official)


async def sign_out(*, redis, keys, session: ConsoleSession) -> None:
    """Ends the session at once, on every device holding its cookie."""
    await redis.delete(_session_key(keys, session.token))

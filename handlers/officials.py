"""Officials' accounts: creation, password hashing (stdlib scrypt) and console sessions."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

import pyotp
from tortoise.expressions import Q

from core.errors import Conflict, Forbidden, NotFound, TooManyRequests, Unauthenticated, Unprocessable
from handlers import audit
from handlers.catalog.reader import published_departments
from storage.models import ActorType, Official, RolePolicy

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
    roles = check_roles(roles or ["officer"])
    department = await catalogue_department(department)
    if await Official.exists(username=username):
        raise OfficialExists(username)
    return await Official.create(
        username=username,
        display_name=display_name,
        department=department,
        roles=roles,
        password_hash=hash_password(password),
    )


# -- console sign-in (flows: touch Redis and the audit log) -----------------------------------

SESSION_TTL_S = 8 * 3600
LOGIN_WINDOW_S = 15 * 60
LOGIN_MAX_FAILURES = 5
# A password accepted, the second factor still to come: how long and how many tries.
PENDING_TTL_S = 5 * 60
TOTP_ISSUER = "掌办管理后台"
TOTP_COLUMN = "officials.totp_secret"
# Verified against when the username is unknown, so both paths cost one scrypt.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


class SecondFactorRequired(Unauthenticated):
    """The password was right; a TOTP code must follow (`pending` finishes the sign-in)."""

    code, message = "totp_required", "请输入动态验证码"

    def __init__(self, pending: str):
        super().__init__(details={"pending": pending})
        self.pending = pending


@dataclass(frozen=True)
class ConsoleSession:
    token: str
    csrf_token: str
    official: Official
    # A role of the official asks for a second factor the official has not set up yet: until
    # then the session may only enrol one (and sign out).
    enrolment_required: bool = False


def _session_key(keys, token: str) -> str:
    return keys("console", "session", hashlib.sha256(token.encode()).hexdigest())


def _pending_key(keys, pending: str) -> str:
    return keys("console", "pending", hashlib.sha256(pending.encode()).hexdigest())


async def _count_failure(redis, failures_key: str) -> None:
    pipe = redis.pipeline()
    pipe.incr(failures_key)
    pipe.expire(failures_key, LOGIN_WINDOW_S)
    await pipe.execute()


async def _locked(redis, failures_key: str) -> None:
    if int(await redis.get(failures_key) or 0) >= LOGIN_MAX_FAILURES:
        raise TooManyRequests("登录失败次数过多，请 15 分钟后再试", code="login_locked")


async def totp_roles() -> set[str]:
    """The roles whose holders must sign in with a second factor."""
    return set(await RolePolicy.filter(require_totp=True).values_list("role", flat=True))


async def totp_required_for(official: Official) -> bool:
    return bool(set(official.roles or []) & await totp_roles())


def _totp_enabled(official: Official) -> bool:
    return official.totp_enabled_at is not None and official.totp_secret_enc is not None


async def _accept_totp(official: Official, code: str, cipher) -> bool:
    """True once for a valid code of the current step (or the one each side): the step is
    recorded with a conditional update, so the same code never signs in twice, even at once."""
    code = (code or "").strip()
    if not (code.isdigit() and len(code) == 6) or not _totp_enabled(official):
        return False
    totp = pyotp.TOTP(cipher.decrypt(bytes(official.totp_secret_enc), column=TOTP_COLUMN))
    now = datetime.now(UTC)
    for drift in (0, -1, 1):
        at = now.timestamp() + drift * totp.interval
        if hmac.compare_digest(totp.at(at), code):
            step = int(at // totp.interval)
            unused = Q(totp_last_step__isnull=True) | Q(totp_last_step__lt=step)
            return bool(await Official.filter(unused, id=official.id).update(totp_last_step=step))
    return False


async def _open_session(*, redis, keys, official: Official, ip: str, request_id: str, factors: str) -> ConsoleSession:
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
    enrol = not _totp_enabled(official) and await totp_required_for(official)
    payload = {"official_id": official.id, "csrf": csrf, "enrol": enrol}
    await redis.set(_session_key(keys, token), json.dumps(payload), ex=SESSION_TTL_S)
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
        detail={"factors": factors},
    )
    return ConsoleSession(token=token, csrf_token=csrf, official=official, enrolment_required=enrol)


async def _failed(*, redis, failures_key: str, username: str, ip: str, request_id: str, why: str) -> None:
    await _count_failure(redis, failures_key)
    await audit.record(
        actor_type=ActorType.OFFICIAL,
        actor_id=None,
        action="console.sign_in_failed",
        target_type="official",
        target_id=username,
        request_id=request_id,
        ip=ip,
        detail={"why": why},
    )


async def sign_in(
    *, redis, keys, cipher, username: str, password: str, ip: str, request_id: str, totp: str | None = None
) -> ConsoleSession:
    """A new console session for valid credentials; failures are counted and audited.

    An official with a second factor gives its code as `totp`, or gets SecondFactorRequired
    with a `pending` token to finish with `finish_sign_in`.
    """
    failures_key = keys("console", "login-failures", username.lower())
    await _locked(redis, failures_key)
    official = await Official.get_or_none(username=username, is_active=True)
    if not verify_password(password, official.password_hash if official else _DUMMY_HASH) or official is None:
        await _failed(
            redis=redis, failures_key=failures_key, username=username, ip=ip, request_id=request_id, why="password"
        )
        raise Unauthenticated("用户名或密码错误", code="invalid_credentials")
    if _totp_enabled(official):
        if not totp:
            pending = secrets.token_urlsafe(32)
            await redis.set(
                _pending_key(keys, pending), json.dumps({"official_id": official.id, "tries": 0}), ex=PENDING_TTL_S
            )
            raise SecondFactorRequired(pending)
        if not await _accept_totp(official, totp, cipher):
            await _failed(
                redis=redis, failures_key=failures_key, username=username, ip=ip, request_id=request_id, why="totp"
            )
            raise Unauthenticated("动态验证码不正确或已使用", code="totp_invalid")
    await redis.delete(failures_key)
    factors = "password+totp" if _totp_enabled(official) else "password"
    return await _open_session(redis=redis, keys=keys, official=official, ip=ip, request_id=request_id, factors=factors)


async def finish_sign_in(*, redis, keys, cipher, pending: str, code: str, ip: str, request_id: str) -> ConsoleSession:
    """The session for a `pending` sign-in once its TOTP code is right; a wrong code counts as a
    failed sign-in (the same lockout), and the pending token is spent after three wrong codes."""
    key = _pending_key(keys, pending or "")
    raw = await redis.get(key) if pending else None
    if raw is None:
        raise Unauthenticated("验证已过期，请重新输入用户名和密码", code="totp_pending_expired")
    data = json.loads(raw)
    official = await Official.get_or_none(id=data["official_id"], is_active=True)
    if official is None:
        await redis.delete(key)
        raise Unauthenticated("账号已停用", code="account_disabled")
    failures_key = keys("console", "login-failures", official.username.lower())
    await _locked(redis, failures_key)
    if not await _accept_totp(official, code, cipher):
        await _failed(
            redis=redis, failures_key=failures_key, username=official.username, ip=ip, request_id=request_id, why="totp"
        )
        data["tries"] += 1
        if data["tries"] >= 3:
            await redis.delete(key)
        else:
            await redis.set(key, json.dumps(data), keepttl=True)
        raise Unauthenticated("动态验证码不正确或已使用", code="totp_invalid")
    await redis.delete(key, failures_key)
    return await _open_session(
        redis=redis, keys=keys, official=official, ip=ip, request_id=request_id, factors="password+totp"
    )


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
    enrol = bool(data.get("enrol")) and not _totp_enabled(official)
    return ConsoleSession(token=token, csrf_token=data["csrf"], official=official, enrolment_required=enrol)


async def sign_out(*, redis, keys, session: ConsoleSession) -> None:
    """Ends the session at once, on every device holding its cookie."""
    await redis.delete(_session_key(keys, session.token))


# -- the second factor: enrolment by the official, reset by an admin ----------------------------


@dataclass(frozen=True)
class TotpEnrolment:
    secret: str
    uri: str


async def begin_totp(*, official: Official, cipher) -> TotpEnrolment:
    """A new secret for the official to add to an authenticator app, pending until confirmed.
    An official who already has a second factor must have it reset by an admin first."""
    if _totp_enabled(official):
        raise Conflict("已启用动态验证码；如需更换，请联系管理员重置", code="totp_already_enabled")
    secret = pyotp.random_base32()
    official.totp_secret_enc = cipher.encrypt(secret, column=TOTP_COLUMN)
    official.totp_last_step = None
    await official.save(update_fields=["totp_secret_enc", "totp_last_step", "updated_at"])
    uri = pyotp.TOTP(secret).provisioning_uri(name=official.username, issuer_name=TOTP_ISSUER)
    return TotpEnrolment(secret=secret, uri=uri)


def pending_totp(*, official: Official, cipher) -> TotpEnrolment | None:
    """The secret being set up (not yet confirmed), to show again after a mistyped code."""
    if official.totp_secret_enc is None or _totp_enabled(official):
        return None
    secret = cipher.decrypt(bytes(official.totp_secret_enc), column=TOTP_COLUMN)
    uri = pyotp.TOTP(secret).provisioning_uri(name=official.username, issuer_name=TOTP_ISSUER)
    return TotpEnrolment(secret=secret, uri=uri)


async def confirm_totp(*, official: Official, cipher, code: str, ip: str, request_id: str) -> Official:
    """Turns the pending secret on once the official proves the app shows its codes."""
    if _totp_enabled(official):
        raise Conflict("已启用动态验证码", code="totp_already_enabled")
    if official.totp_secret_enc is None:
        raise Conflict("请先生成动态验证码密钥", code="totp_not_started")
    secret = cipher.decrypt(bytes(official.totp_secret_enc), column=TOTP_COLUMN)
    totp = pyotp.TOTP(secret)
    if not totp.verify((code or "").strip(), valid_window=1):
        raise Unprocessable("动态验证码不正确，请核对手机时间后重试", code="totp_code_invalid")
    official.totp_enabled_at = datetime.now(UTC)
    official.totp_last_step = int(official.totp_enabled_at.timestamp() // totp.interval)
    await official.save(update_fields=["totp_enabled_at", "totp_last_step", "updated_at"])
    await audit.record(
        actor_type=ActorType.OFFICIAL,
        actor_id=official.id,
        action="console.totp_enabled",
        target_type="official",
        target_id=official.id,
        request_id=request_id,
        ip=ip,
    )
    return official


async def finish_enrolment(*, redis, keys, session: ConsoleSession) -> None:
    """The session may be used in full once its official has a second factor."""
    raw = await redis.get(_session_key(keys, session.token))
    if raw is not None:
        data = json.loads(raw)
        data["enrol"] = False
        await redis.set(_session_key(keys, session.token), json.dumps(data), keepttl=True)


# -- accounts, by an admin ---------------------------------------------------------------------

ROLES = ("officer", "supervisor", "publisher", "finance", "personal_data", "admin")


def check_roles(roles: list[str]) -> list[str]:
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise Unprocessable("未知的角色", code="unknown_role", details={"unknown": unknown, "known": list(ROLES)})
    if not roles:
        raise Unprocessable("至少需要一个角色", code="unknown_role", details={"known": list(ROLES)})
    return [role for role in ROLES if role in roles]


async def list_officials(*, after_id: int | None = None, limit: int = 100) -> list[Official]:
    query = Official.all().order_by("id")
    if after_id:
        query = query.filter(id__gt=after_id)
    return await query.limit(limit)


async def update_official(
    *,
    admin: Official,
    official_id: int,
    roles: list[str] | None = None,
    department: str | None = None,
    is_active: bool | None = None,
    display_name: str | None = None,
    ip: str,
    request_id: str,
) -> Official:
    """Re-roles, moves or disables an official; a disabled official's sessions stop at once
    (every console request reads the account). An admin cannot lock themself out."""
    official = await Official.get_or_none(id=official_id)
    if official is None:
        raise NotFound("账号不存在", code="not_found")
    changes: dict = {}
    if roles is not None:
        roles = check_roles(roles)
        if official.id == admin.id and "admin" not in roles:
            raise Forbidden("不能移除自己的管理员角色", code="self_lockout")
        changes["roles"] = [list(official.roles or []), roles]
        official.roles = roles
    if department is not None:
        try:
            name = await catalogue_department(department)
        except UnknownDepartment as exc:
            raise Unprocessable(
                "部门不在目录中", code="unknown_department", details={"known": [n for _, n in exc.known]}
            ) from None
        changes["department"] = [official.department, name]
        official.department = name
    if display_name is not None:
        changes["display_name"] = [official.display_name, display_name]
        official.display_name = display_name
    if is_active is not None:
        if official.id == admin.id and not is_active:
            raise Forbidden("不能停用自己的账号", code="self_lockout")
        changes["is_active"] = [official.is_active, is_active]
        official.is_active = is_active
    await official.save()
    await audit.record(
        actor_type=ActorType.OFFICIAL,
        actor_id=admin.id,
        action="console.official_updated",
        target_type="official",
        target_id=official.id,
        request_id=request_id,
        ip=ip,
        detail=changes,
    )
    return official


async def reset_totp(*, admin: Official, official_id: int, ip: str, request_id: str) -> Official:
    """Clears an official's second factor (a lost phone); they enrol again at the next sign-in."""
    official = await Official.get_or_none(id=official_id)
    if official is None:
        raise NotFound("账号不存在", code="not_found")
    official.totp_secret_enc, official.totp_enabled_at, official.totp_last_step = None, None, None
    await official.save(update_fields=["totp_secret_enc", "totp_enabled_at", "totp_last_step", "updated_at"])
    await audit.record(
        actor_type=ActorType.OFFICIAL,
        actor_id=admin.id,
        action="console.totp_reset",
        target_type="official",
        target_id=official.id,
        request_id=request_id,
        ip=ip,
    )
    return official


async def role_policies() -> dict[str, bool]:
    required = await totp_roles()
    return {role: role in required for role in ROLES}


async def set_role_policy(
    *, admin: Official, role: str, require_totp: bool, ip: str, request_id: str
) -> dict[str, bool]:
    check_roles([role])
    await RolePolicy.update_or_create(role=role, defaults={"require_totp": require_totp, "updated_by": admin.id})
    await audit.record(
        actor_type=ActorType.OFFICIAL,
        actor_id=admin.id,
        action="console.role_policy",
        target_type="role",
        target_id=role,
        request_id=request_id,
        ip=ip,
        detail={"require_totp": require_totp},
    )
    return await role_policies()


async def audit_created(*, admin: Official, official: Official, ip: str, request_id: str) -> None:
    await audit.record(
        actor_type=ActorType.OFFICIAL,
        actor_id=admin.id,
        action="console.official_created",
        target_type="official",
        target_id=official.id,
        request_id=request_id,
        ip=ip,
        detail={"roles": official.roles, "department": official.department},
    )

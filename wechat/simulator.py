"""WeChat API simulator: WeChat's real paths, parameters, JSON shapes, errcodes and errmsgs, in memory.

WeChat cannot be reached from development and test machines, so Zhangban talks to this simulator
instead. Mount it in-process (`simulator_blueprint(state, url_prefix="/_sim/wechat")`) or run it
standalone:

    python -m wechat.simulator --host 127.0.0.1 --port 8701

WeChat endpoints (`WECHAT_PATHS`); `access_token` is a query parameter where WeChat uses one:

    GET  /sns/jscode2session                         code2Session (mini-program login)
    POST /cgi-bin/stable_token                       getStableAccessToken
    POST /wxa/business/getuserphonenumber            getPhoneNumber                     mini-program
    POST /cityservice/face/identify/getverifyid      getVerifyId (face verification)    mini-program
    POST /cityservice/face/identify/queryverifyinfo  queryVerifyInfo                    mini-program
    POST /cgi-bin/message/subscribe/send             subscribeMessage.send              mini-program
    POST /cgi-bin/message/template/send              template message                   official account
    POST /cgi-bin/message/custom/send                customer-service message           both
    POST /cgi-bin/menu/create                        custom menu                        official account

Wire behaviour, as WeChat does it:

- every answer is HTTP 200 `application/json`; failures are `{"errcode": N, "errmsg": "..."}`;
  jscode2session and stable_token success bodies carry no errcode, the others `errcode: 0, errmsg: "ok"`;
- like today's WeChat, a failure's errmsg ends with `, rid: xxxxxxxx-xxxxxxxx-xxxxxxxx`
  (`SimState(rid_in_errmsg=False)` turns that off): match on errcode or on the errmsg prefix;
- the wrong HTTP method answers 43001 "require GET method" / 43002 "require POST method";
  an empty body 44002 "empty post data", a body that is not a JSON object 47001 "data format error";
- tokens: missing 41001, unknown 40001, expired 42001, superseded by a forced refresh and past its
  5-minute overlap 40001, a token of an app of the wrong kind for the API (for example the official
  account's token on getuserphonenumber) 40001.

Token lifecycle (getStableAccessToken): normal mode returns the current token while it is valid, with
`expires_in` counting down from 7200; in its last 5 minutes, or once expired, a call issues a new one
(the old one stays valid until its own expiry, as WeChat documents). `force_refresh: true` issues a new
token at once and the old one stays valid 5 more minutes; forced refreshes less than 30 s apart return
the current token without refreshing (WeChat's documented rule). Issuing runs under an asyncio lock.

Choices where WeChat's documentation is silent (face verification):

- getverifyid: out_seq_no not 5-32 characters of `[0-9A-Za-z_-]` -> 40097 "invalid out_seq_no";
  an out_seq_no already used by this app -> 40097 "invalid out_seq_no, out_seq_no has been used";
  bad cert_info -> 40097 "invalid args, cert_info..."; unknown openid -> 40003 "invalid openid";
- queryverifyinfo: unknown verify_id (or another app's) -> 40097 "invalid args, verify_id not exist";
  past its 3600 s -> 40097 "invalid args, verify_id expired"; openid differs -> 40003; out_seq_no
  differs -> 40097 "invalid out_seq_no, ..."; cert_hash differs -> 40097 "invalid args, cert_hash ...";
  the user has not finished the face scan -> `errcode 0, verify_ret 90000` (90000 is the enum's generic
  "face error" start value; only 10000 means success);
- cert_hash = lowercase hex SHA-256 of `cert_type=<b64>&cert_name=<b64>&cert_no=<b64>` (standard
  base64 of each UTF-8 value), see `cert_hash()`.

Control API (not WeChat; JSON in and out; errors are `{"code", "message", "details"}` like Zhangban's):

    POST /__sim__/apps            {"appid", "secret", "kind"?: "miniprogram"|"official_account"}
    POST /__sim__/users           {"appid", "openid"?, "unionid"?: str|true, "phone"?} -> {"openid", "unionid"}
    POST /__sim__/users/bulk      {"appid", "prefix", "start"?: 0, "count"} users <prefix><7-digit i> (benchmarks)
    POST /__sim__/login-code      {"appid", "openid"?} -> {"code", "openid"}   (what wx.login gives)
    POST /__sim__/phone-code      {"appid", "openid", "phone", "country_code"?: "86"} -> {"code"}
    POST /__sim__/face/complete   {"verify_id", "verify_ret": 10000}
    POST /__sim__/tokens/expire   {"appid"}                    every token of the app expires now
    POST /__sim__/fail            {"path", "errcode"?: -1, "errmsg"?, "http_status"?, "delay_s"?: 0, "times"?: 1}
    POST /__sim__/subscriptions   {"appid", "openid", "template_id", "count"}  grants count one-time subscriptions
    POST /__sim__/followers       {"appid", "openid"?, "subscribed"?: true, "last_interaction_at"?: unix ts}
    POST /__sim__/clock           {"advance_s"} -> {"now"}    moves the simulator's clock forward
    GET  /__sim__/stats           {"calls": {path: n}, "tokens_issued": {appid: n}}
    GET  /__sim__/messages        {"messages": [...]}  every subscribe/template/custom message sent, in order
    GET  /__sim__/menu?appid=     {"appid", "menu"}
    POST /__sim__/reset           back to the start state (default apps only)

Users made by the control API count as followers who interacted just now (subscribed, last
interaction = creation time), so customer-service messages work until `/__sim__/followers` says
otherwise. Default apps: mini-program `wx_sim_miniprogram` / `sim_mp_secret_0123456789abcdef`,
official account `wx_sim_officialacct` / `sim_oa_secret_0123456789abcdef`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import inspect
import json
import logging
import math
import re
import secrets
import string
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sanic import Blueprint, Request, Sanic
from sanic.response import HTTPResponse

from core import simserver
from core.simserver import SimError, json_response

log = logging.getLogger("zhangban.wechat_sim")

MINIPROGRAM = "miniprogram"
OFFICIAL_ACCOUNT = "official_account"
APP_KINDS = (MINIPROGRAM, OFFICIAL_ACCOUNT)

DEFAULT_MP_APPID = "wx_sim_miniprogram"
DEFAULT_MP_SECRET = "sim_mp_secret_0123456789abcdef"
DEFAULT_OA_APPID = "wx_sim_officialacct"
DEFAULT_OA_SECRET = "sim_oa_secret_0123456789abcdef"

JSCODE2SESSION = "/sns/jscode2session"
STABLE_TOKEN = "/cgi-bin/stable_token"
GET_USER_PHONE_NUMBER = "/wxa/business/getuserphonenumber"
GET_VERIFY_ID = "/cityservice/face/identify/getverifyid"
QUERY_VERIFY_INFO = "/cityservice/face/identify/queryverifyinfo"
SUBSCRIBE_SEND = "/cgi-bin/message/subscribe/send"
TEMPLATE_SEND = "/cgi-bin/message/template/send"
CUSTOM_SEND = "/cgi-bin/message/custom/send"
MENU_CREATE = "/cgi-bin/menu/create"
USER_INFO = "/cgi-bin/user/info"
WECHAT_PATHS = (
    JSCODE2SESSION,
    STABLE_TOKEN,
    GET_USER_PHONE_NUMBER,
    GET_VERIFY_ID,
    QUERY_VERIFY_INFO,
    SUBSCRIBE_SEND,
    TEMPLATE_SEND,
    CUSTOM_SEND,
    MENU_CREATE,
    USER_INFO,
)

FACE_VERIFY_SUCCESS = 10000
FACE_VERIFY_NOT_FINISHED = 90000

ERRMSG: dict[int, str] = {
    -1: "system error",
    0: "ok",
    40001: "invalid credential, access_token is invalid or not latest",
    40002: "invalid grant_type",
    40003: "invalid openid",
    40007: "invalid media_id",
    40008: "invalid message type",
    40013: "invalid appid",
    40016: "invalid button size",
    40017: "invalid button type",
    40018: "invalid button name size",
    40019: "invalid button key size",
    40020: "invalid button url size",
    40023: "invalid sub button size",
    40024: "invalid sub button type",
    40025: "invalid sub button name size",
    40026: "invalid sub button key size",
    40027: "invalid sub button url size",
    40029: "invalid code",
    40037: "invalid template_id",
    40054: "invalid sub button url domain",
    40055: "invalid button url domain",
    40097: "invalid args",
    40125: "invalid appsecret",
    40163: "code been used",
    41001: "access_token missing",
    41002: "appid missing",
    41004: "appsecret missing",
    41008: "missing code",
    42001: "access_token expired",
    43001: "require GET method",
    43002: "require POST method",
    43004: "require subscribe",
    43101: "user refuse to accept the msg",
    44002: "empty post data",
    44004: "empty content",
    45002: "content size out of limit",
    45009: "reach max api daily quota limit",
    45011: "api minute-quota reach limit, must slower, retry next minute",
    45015: "response out of time limit or subscription is canceled",
    47001: "data format error",
    47003: "argument invalid!",
    48001: "api unauthorized",
}

_ALNUM = string.ascii_letters + string.digits
_URLSAFE = _ALNUM + "-_"
_OUT_SEQ_NO = re.compile(r"^[0-9A-Za-z_-]{5,32}$")
_CERT_NO = re.compile(r"^\d{17}[\dX]$")


def _rand(alphabet: str, n: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def new_openid() -> str:
    """An id shaped like WeChat's openids and unionids: `o` + 27 characters of `[A-Za-z0-9_-]`."""
    return "o" + _rand(_URLSAFE, 27)


def cert_hash(cert_type: str, cert_name: str, cert_no: str) -> str:
    """queryVerifyInfo's cert_hash: hex SHA-256 of `cert_type=<b64>&cert_name=<b64>&cert_no=<b64>`."""

    def b64(value: str) -> str:
        return base64.b64encode(value.encode("utf-8")).decode("ascii")

    raw = f"cert_type={b64(cert_type)}&cert_name={b64(cert_name)}&cert_no={b64(cert_no)}"
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


# -- errors --------------------------------------------------------------------------------


class WeChatError(Exception):
    """A WeChat failure: answered as HTTP 200 `{"errcode", "errmsg"}`."""

    def __init__(self, errcode: int, errmsg: str | None = None):
        self.errcode = errcode
        self.errmsg = errmsg or ERRMSG.get(errcode, "system error")
        super().__init__(f"{errcode} {self.errmsg}")


class ControlError(SimError):
    """A control-API failure: answered as `{"code", "message", "details"}` with `status`."""


def _not_found(what: str, **details: Any) -> ControlError:
    return ControlError(404, "not_found", f"{what}不存在", details)


# -- state ---------------------------------------------------------------------------------


@dataclass
class SimApp:
    appid: str
    secret: str
    kind: str


@dataclass
class SimUser:
    appid: str
    openid: str
    unionid: str | None = None
    phone: str | None = None
    country_code: str = "86"
    subscribed: bool = True
    last_interaction_at: float | None = None
    session_key: str | None = None


@dataclass
class _Code:
    value: str
    appid: str
    openid: str
    issued_at: float
    used: bool = False
    phone: str | None = None
    country_code: str = "86"


@dataclass
class _Token:
    value: str
    appid: str
    issued_at: float
    expires_at: float
    superseded_until: float | None = None


@dataclass
class _VerifySession:
    verify_id: str
    appid: str
    openid: str
    out_seq_no: str
    cert_info: dict[str, str]
    cert_hash: str
    issued_at: float
    expires_at: float
    verify_ret: int | None = None


@dataclass
class _Failure:
    errcode: int | None
    errmsg: str | None
    http_status: int | None
    delay_s: float
    remaining: int


class SimState:
    """All simulator state, in memory: apps, users, codes, tokens, face sessions, messages, counters,
    injected failures and the simulator's clock. One instance per app (or per test run)."""

    CODE_TTL_S = 300
    TOKEN_TTL_S = 7200
    TOKEN_OVERLAP_S = 300
    FORCE_REFRESH_MIN_INTERVAL_S = 30
    VERIFY_TTL_S = 3600
    CUSTOM_MESSAGE_WINDOW_S = 48 * 3600

    def __init__(self, *, rid_in_errmsg: bool = True, apps: dict[str, tuple[str, str]] | None = None):
        self.rid_in_errmsg = rid_in_errmsg
        # {appid: (secret, kind)} of the start state; a host passes its own so that no secret
        # it relies on is one written in this file.
        self.start_apps = apps or {
            DEFAULT_MP_APPID: (DEFAULT_MP_SECRET, MINIPROGRAM),
            DEFAULT_OA_APPID: (DEFAULT_OA_SECRET, OFFICIAL_ACCOUNT),
        }
        self._token_lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None
        self.reset()

    def reset(self) -> None:
        """Back to the start state: the start apps, nothing else; the clock back to real time."""
        self.clock_offset = 0.0
        self.apps: dict[str, SimApp] = {}
        self.users: dict[tuple[str, str], SimUser] = {}
        self.login_codes: dict[str, _Code] = {}
        self.phone_codes: dict[str, _Code] = {}
        self.tokens: dict[str, _Token] = {}
        self.current_token: dict[str, str] = {}
        self.last_forced_refresh: dict[str, float] = {}
        self.verify_sessions: dict[str, _VerifySession] = {}
        self.used_out_seq_nos: set[tuple[str, str]] = set()
        self.subscriptions: dict[tuple[str, str, str], int] = {}
        self.messages: list[dict[str, Any]] = []
        self.menus: dict[str, dict[str, Any]] = {}
        self.calls: dict[str, int] = {}
        self.tokens_issued: dict[str, int] = {}
        self.failures: dict[str, list[_Failure]] = {}
        self._next_msgid = 2_000_000_000 + secrets.randbelow(1_000_000)
        for appid, (secret, kind) in self.start_apps.items():
            self.add_app(appid, secret, kind)

    # clock ---------------------------------------------------------------------------------

    def now(self) -> float:
        """The simulator's time: real time plus whatever `advance_clock` added."""
        return time.time() + self.clock_offset

    def advance_clock(self, seconds: float) -> float:
        self.clock_offset += seconds
        return self.now()

    # errors --------------------------------------------------------------------------------

    def error_body(self, error: WeChatError) -> dict[str, Any]:
        errmsg = error.errmsg
        if self.rid_in_errmsg and error.errcode != 0:
            errmsg = f"{errmsg}, rid: {int(time.time()):08x}-{secrets.token_hex(4)}-{secrets.token_hex(4)}"
        return {"errcode": error.errcode, "errmsg": errmsg}

    # apps and users ------------------------------------------------------------------------

    def add_app(self, appid: str, secret: str, kind: str = MINIPROGRAM) -> SimApp:
        if kind not in APP_KINDS:
            raise ValueError(f"kind must be one of {APP_KINDS}")
        app = self.apps.get(appid)
        if app is None:
            app = self.apps[appid] = SimApp(appid, secret, kind)
        else:
            app.secret, app.kind = secret, kind
        return app

    def app(self, appid: str) -> SimApp:
        app = self.apps.get(appid)
        if app is None:
            raise _not_found("应用", appid=appid)
        return app

    def user(self, appid: str, openid: str) -> SimUser | None:
        return self.users.get((appid, openid))

    def add_user(
        self,
        appid: str,
        openid: str | None = None,
        *,
        unionid: str | bool | None = None,
        phone: str | None = None,
        country_code: str | None = None,
    ) -> SimUser:
        """Creates (or updates) a user of `appid`; `unionid=True` makes a new unionid."""
        self.app(appid)
        openid = openid or new_openid()
        user = self.users.get((appid, openid))
        if user is None:
            user = self.users[(appid, openid)] = SimUser(appid, openid, last_interaction_at=self.now())
        if unionid is True:
            user.unionid = user.unionid or new_openid()
        elif isinstance(unionid, str) and unionid:
            user.unionid = unionid
        if phone:
            user.phone = phone
            user.country_code = country_code or "86"
        return user

    def set_follower(
        self,
        appid: str,
        openid: str | None = None,
        *,
        subscribed: bool | None = None,
        last_interaction_at: float | None = None,
    ) -> SimUser:
        user = self.add_user(appid, openid)
        if subscribed is not None:
            user.subscribed = subscribed
        if last_interaction_at is not None:
            user.last_interaction_at = last_interaction_at
        return user

    # counters and failures -----------------------------------------------------------------

    def count_call(self, path: str) -> None:
        self.calls[path] = self.calls.get(path, 0) + 1

    def stats(self) -> dict[str, Any]:
        return {"calls": dict(self.calls), "tokens_issued": dict(self.tokens_issued)}

    def inject_failure(
        self,
        path: str,
        *,
        errcode: int | None = None,
        errmsg: str | None = None,
        http_status: int | None = None,
        delay_s: float = 0.0,
        times: int = 1,
    ) -> int:
        """The next `times` calls to `path` fail: after `delay_s`, with `http_status` (and a system-error
        body) if given, else with `errcode` (-1 "system error" unless the failure is a pure delay)."""
        if path not in WECHAT_PATHS:
            raise ValueError(f"unknown WeChat path {path!r}")
        if errcode is None and http_status is None and not delay_s:
            errcode = -1
        queue = self.failures.setdefault(path, [])
        queue.append(_Failure(errcode, errmsg, http_status, float(delay_s), times))
        return sum(f.remaining for f in queue)

    def take_failure(self, path: str) -> _Failure | None:
        queue = self.failures.get(path)
        if not queue:
            return None
        failure = queue[0]
        failure.remaining -= 1
        if failure.remaining <= 0:
            queue.pop(0)
        return failure

    # login ---------------------------------------------------------------------------------

    def issue_login_code(self, appid: str, openid: str | None = None) -> _Code:
        """What wx.login gives the mini-program: a one-time code, valid 5 minutes."""
        user = self.user(appid, openid) if openid else None
        if user is None:
            user = self.add_user(appid, openid)
        code = _Code(_rand(_ALNUM, 32), appid, user.openid, self.now())
        self.login_codes[code.value] = code
        return code

    def _check_app_secret(self, appid: str | None, secret: str | None) -> SimApp:
        if not appid:
            raise WeChatError(41002)
        app = self.apps.get(appid)
        if app is None:
            raise WeChatError(40013)
        if not secret:
            raise WeChatError(41004)
        if not secrets.compare_digest(secret.encode(), app.secret.encode()):
            raise WeChatError(40125)
        return app

    def code2session(self, appid: str | None, secret: str | None, js_code: str | None, grant_type: str | None) -> dict:
        self._check_app_secret(appid, secret)
        if not js_code:
            raise WeChatError(41008)
        if grant_type != "authorization_code":
            raise WeChatError(40002)
        code = self.login_codes.get(js_code)
        if code is None or code.appid != appid:
            raise WeChatError(40029)
        if code.used:
            raise WeChatError(40163)
        if self.now() - code.issued_at > self.CODE_TTL_S:
            raise WeChatError(40029)
        code.used = True
        user = self.add_user(appid, code.openid)
        user.session_key = base64.b64encode(secrets.token_bytes(16)).decode("ascii")
        body = {"session_key": user.session_key, "openid": user.openid}
        if user.unionid:
            body["unionid"] = user.unionid
        return body

    # access tokens -------------------------------------------------------------------------

    def _lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._token_lock is None or self._lock_loop is not loop:
            self._token_lock, self._lock_loop = asyncio.Lock(), loop
        return self._token_lock

    def _token_problem(self, token: _Token, now: float) -> int | None:
        if now >= token.expires_at:
            return 42001
        if token.superseded_until is not None and now >= token.superseded_until:
            return 40001
        return None

    def _remaining(self, token: _Token, now: float) -> int:
        return max(0, min(self.TOKEN_TTL_S, math.ceil(token.expires_at - now)))

    def _issue_token(self, appid: str, now: float) -> _Token:
        value = f"{secrets.randbelow(90) + 10}_{_rand(_URLSAFE, 134)}"
        token = _Token(value, appid, now, now + self.TOKEN_TTL_S)
        self.tokens[value] = token
        self.current_token[appid] = value
        self.tokens_issued[appid] = self.tokens_issued.get(appid, 0) + 1
        return token

    async def stable_token(self, appid: str | None, secret: str | None, force_refresh: bool = False) -> dict:
        """getStableAccessToken: `{"access_token", "expires_in"}`."""
        self._check_app_secret(appid, secret)
        async with self._lock():
            now = self.now()
            current = self.tokens.get(self.current_token.get(appid, ""))
            usable = current is not None and self._token_problem(current, now) is None
            if force_refresh:
                last = self.last_forced_refresh.get(appid)
                if usable and last is not None and now - last < self.FORCE_REFRESH_MIN_INTERVAL_S:
                    return {"access_token": current.value, "expires_in": self._remaining(current, now)}
                self.last_forced_refresh[appid] = now
                if usable:
                    current.superseded_until = min(current.expires_at, now + self.TOKEN_OVERLAP_S)
            elif usable and current.expires_at - now > self.TOKEN_OVERLAP_S:
                return {"access_token": current.value, "expires_in": self._remaining(current, now)}
            token = self._issue_token(appid, now)
            return {"access_token": token.value, "expires_in": self.TOKEN_TTL_S}

    def expire_tokens(self, appid: str) -> int:
        """Every still-valid token of `appid` expires now; the next stable_token call issues a new one."""
        self.app(appid)
        now = self.now()
        expired = 0
        for token in self.tokens.values():
            if token.appid == appid and token.expires_at > now:
                token.expires_at = now
                expired += 1
        self.last_forced_refresh.pop(appid, None)
        return expired

    def authenticate(self, access_token: str | None, kinds: tuple[str, ...]) -> SimApp:
        """The app `access_token` belongs to, if it is valid for an API open to `kinds` of app."""
        if not access_token:
            raise WeChatError(41001)
        token = self.tokens.get(access_token)
        if token is None:
            raise WeChatError(40001)
        problem = self._token_problem(token, self.now())
        if problem is not None:
            raise WeChatError(problem)
        app = self.apps.get(token.appid)
        if app is None or app.kind not in kinds:
            raise WeChatError(40001)
        return app

    # phone numbers -------------------------------------------------------------------------

    def issue_phone_code(
        self, appid: str, openid: str, phone: str | None = None, country_code: str | None = None
    ) -> _Code:
        """What the getPhoneNumber button gives the mini-program: a one-time code, valid 5 minutes."""
        user = self.add_user(appid, openid, phone=phone, country_code=country_code)
        if not user.phone:
            raise ControlError(422, "validation_failed", "用户没有手机号", {"fields": {"phone": "此项为必填项"}})
        code = _Code(secrets.token_hex(32), appid, openid, self.now(), phone=user.phone, country_code=user.country_code)
        self.phone_codes[code.value] = code
        return code

    def get_phone_number(self, app: SimApp, code_value: Any) -> dict:
        if not isinstance(code_value, str) or not code_value:
            raise WeChatError(40029)
        code = self.phone_codes.get(code_value)
        if code is None or code.appid != app.appid or code.used or self.now() - code.issued_at > self.CODE_TTL_S:
            raise WeChatError(40029)
        code.used = True
        full = code.phone if code.country_code == "86" else f"+{code.country_code}{code.phone}"
        return {
            "errcode": 0,
            "errmsg": "ok",
            "phone_info": {
                "phoneNumber": full,
                "purePhoneNumber": code.phone,
                "countryCode": code.country_code,
                "watermark": {"timestamp": int(code.issued_at), "appid": app.appid},
            },
        }

    # face verification ---------------------------------------------------------------------

    def get_verify_id(self, app: SimApp, body: dict) -> dict:
        out_seq_no = body.get("out_seq_no")
        if not isinstance(out_seq_no, str) or not _OUT_SEQ_NO.match(out_seq_no):
            raise WeChatError(40097, "invalid out_seq_no")
        info = body.get("cert_info")
        if not isinstance(info, dict):
            raise WeChatError(40097, "invalid args, cert_info missing")
        cert_type, cert_name, cert_no = info.get("cert_type"), info.get("cert_name"), info.get("cert_no")
        if cert_type != "IDENTITY_CARD":
            raise WeChatError(40097, "invalid args, cert_info.cert_type must be IDENTITY_CARD")
        if not isinstance(cert_name, str) or not cert_name.strip() or len(cert_name) > 64:
            raise WeChatError(40097, "invalid args, cert_info.cert_name invalid")
        if not isinstance(cert_no, str) or not _CERT_NO.match(cert_no):
            raise WeChatError(40097, "invalid args, cert_info.cert_no invalid")
        openid = body.get("openid")
        if not isinstance(openid, str) or self.user(app.appid, openid) is None:
            raise WeChatError(40003)
        if (app.appid, out_seq_no) in self.used_out_seq_nos:
            raise WeChatError(40097, "invalid out_seq_no, out_seq_no has been used")
        self.used_out_seq_nos.add((app.appid, out_seq_no))
        now = self.now()
        session = _VerifySession(
            verify_id=_rand(_URLSAFE, 64),
            appid=app.appid,
            openid=openid,
            out_seq_no=out_seq_no,
            cert_info={"cert_type": cert_type, "cert_name": cert_name, "cert_no": cert_no},
            cert_hash=cert_hash(cert_type, cert_name, cert_no),
            issued_at=now,
            expires_at=now + self.VERIFY_TTL_S,
        )
        self.verify_sessions[session.verify_id] = session
        return {"errcode": 0, "errmsg": "ok", "verify_id": session.verify_id, "expires_in": self.VERIFY_TTL_S}

    def complete_face(self, verify_id: str, verify_ret: int = FACE_VERIFY_SUCCESS) -> _VerifySession:
        """Records the result of the user's face scan (what wx.requestFacialVerify did on the phone)."""
        session = self.verify_sessions.get(verify_id)
        if session is None:
            raise _not_found("核身会话", verify_id=verify_id)
        if self.now() >= session.expires_at:
            raise ControlError(409, "verify_expired", "核身会话已过期", {"verify_id": verify_id})
        session.verify_ret = verify_ret
        return session

    def query_verify_info(self, app: SimApp, body: dict) -> dict:
        verify_id = body.get("verify_id")
        session = self.verify_sessions.get(verify_id) if isinstance(verify_id, str) else None
        if session is None or session.appid != app.appid:
            raise WeChatError(40097, "invalid args, verify_id not exist")
        if self.now() >= session.expires_at:
            raise WeChatError(40097, "invalid args, verify_id expired")
        if body.get("openid") != session.openid:
            raise WeChatError(40003, "invalid openid, openid does not match verify_id")
        if body.get("out_seq_no") != session.out_seq_no:
            raise WeChatError(40097, "invalid out_seq_no, out_seq_no does not match verify_id")
        given_hash = body.get("cert_hash")
        if not isinstance(given_hash, str) or not secrets.compare_digest(
            given_hash.encode(), session.cert_hash.encode()
        ):
            raise WeChatError(40097, "invalid args, cert_hash does not match verify_id")
        verify_ret = FACE_VERIFY_NOT_FINISHED if session.verify_ret is None else session.verify_ret
        return {"errcode": 0, "errmsg": "ok", "verify_ret": verify_ret}

    # messages ------------------------------------------------------------------------------

    def grant_subscription(self, appid: str, openid: str, template_id: str, count: int = 1) -> int:
        """The user accepted `count` more one-time subscriptions to `template_id`; returns what is left."""
        self.add_user(appid, openid)
        key = (appid, openid, template_id)
        self.subscriptions[key] = self.subscriptions.get(key, 0) + count
        return self.subscriptions[key]

    def _record(self, kind: str, app: SimApp, touser: str, **fields: Any) -> dict:
        message = {"type": kind, "appid": app.appid, "touser": touser, "sent_at": int(self.now()), **fields}
        self.messages.append(message)
        return message

    def _known_user(self, app: SimApp, body: dict) -> SimUser:
        touser = body.get("touser")
        user = self.user(app.appid, touser) if isinstance(touser, str) and touser else None
        if user is None:
            raise WeChatError(40003)
        return user

    def send_subscribe_message(self, app: SimApp, body: dict) -> dict:
        user = self._known_user(app, body)
        template_id = body.get("template_id")
        if not isinstance(template_id, str) or not template_id:
            raise WeChatError(40037)
        _check_subscribe_data(body.get("data"))
        state = body.get("miniprogram_state", "formal")
        if state not in ("developer", "trial", "formal"):
            raise WeChatError(47003, "argument invalid! miniprogram_state invalid")
        lang = body.get("lang", "zh_CN")
        if lang not in ("zh_CN", "en_US", "zh_HK", "zh_TW"):
            raise WeChatError(47003, "argument invalid! lang invalid")
        page = body.get("page")
        if page is not None and not isinstance(page, str):
            raise WeChatError(47003, "argument invalid! page invalid")
        key = (app.appid, user.openid, template_id)
        if self.subscriptions.get(key, 0) <= 0:
            raise WeChatError(43101)
        self.subscriptions[key] -= 1
        self._record(
            "subscribe",
            app,
            user.openid,
            template_id=template_id,
            page=page,
            data=body["data"],
            miniprogram_state=state,
            lang=lang,
        )
        return {"errcode": 0, "errmsg": "ok"}

    def send_template_message(self, app: SimApp, body: dict) -> dict:
        user = self._known_user(app, body)
        template_id = body.get("template_id")
        if not isinstance(template_id, str) or not template_id:
            raise WeChatError(40037)
        data = body.get("data")
        if not isinstance(data, dict) or not all(isinstance(v, dict) and "value" in v for v in data.values()):
            raise WeChatError(47001)
        miniprogram = body.get("miniprogram")
        if miniprogram is not None and (not isinstance(miniprogram, dict) or not miniprogram.get("appid")):
            raise WeChatError(47001)
        url = body.get("url")
        if url is not None and not isinstance(url, str):
            raise WeChatError(47001)
        if not user.subscribed:
            raise WeChatError(43004)
        msgid = self._next_msgid
        self._next_msgid += 1
        self._record(
            "template",
            app,
            user.openid,
            template_id=template_id,
            url=url,
            miniprogram=miniprogram,
            data=data,
            msgid=msgid,
        )
        return {"errcode": 0, "errmsg": "ok", "msgid": msgid}

    def send_custom_message(self, app: SimApp, body: dict) -> dict:
        user = self._known_user(app, body)
        msgtype = body.get("msgtype")
        if msgtype not in _CUSTOM_MSGTYPES:
            raise WeChatError(40008)
        content = body.get(msgtype)
        if not isinstance(content, dict):
            raise WeChatError(47001)
        if msgtype == "text":
            text = content.get("content")
            if not isinstance(text, str) or not text:
                raise WeChatError(44004)
            if len(text.encode("utf-8")) > 2048:
                raise WeChatError(45002)
        last = user.last_interaction_at
        if not user.subscribed or last is None or self.now() - last > self.CUSTOM_MESSAGE_WINDOW_S:
            raise WeChatError(45015)
        self._record("custom", app, user.openid, msgtype=msgtype, content=content)
        return {"errcode": 0, "errmsg": "ok"}

    def user_info(self, app: SimApp, openid: str | None) -> dict:
        """`/cgi-bin/user/info`: a follower's profile; unionid only while subscribed and bound."""
        user = self.user(app.appid, openid) if openid else None
        if user is None:
            raise WeChatError(40003)
        if not user.subscribed:
            return {"subscribe": 0, "openid": user.openid}
        info = {
            "subscribe": 1,
            "openid": user.openid,
            "language": "zh_CN",
            "subscribe_time": int(self.now()),
            "remark": "",
            "groupid": 0,
            "tagid_list": [],
            "subscribe_scene": "ADD_SCENE_SEARCH",
            "qr_scene": 0,
            "qr_scene_str": "",
        }
        if user.unionid:
            info["unionid"] = user.unionid
        return info

    def create_menu(self, app: SimApp, body: dict) -> dict:
        _check_menu(body)
        self.menus[app.appid] = {"button": body["button"]}
        return {"errcode": 0, "errmsg": "ok"}


# -- payload rules -------------------------------------------------------------------------

_CUSTOM_MSGTYPES = frozenset(
    {"text", "image", "voice", "video", "music", "news", "mpnews", "mpnewsarticle", "msgmenu", "wxcard"}
    | {"miniprogrampage", "link"}
)

# subscribe-message keyword rules, from the "订阅消息参数值内容限制说明" table
_SUBSCRIBE_RULES: dict[str, tuple[int, re.Pattern | None]] = {
    "thing": (20, None),
    "number": (32, re.compile(r"^\d+(\.\d+)?$")),
    "letter": (32, re.compile(r"^[A-Za-z]+$")),
    "symbol": (5, None),
    "character_string": (32, re.compile(r"^[\x21-\x7e]+$")),
    "time": (64, re.compile(r"^[\d\s:年月日时分秒~\-/.]+$")),
    "date": (64, re.compile(r"^[\d\s:年月日时分秒~\-/.]+$")),
    "amount": (16, re.compile(r"^[¥￥$]?\d{1,10}(\.\d{1,2})?元?$")),
    "phone_number": (17, re.compile(r"^[\d+\-() ]+$")),
    "car_number": (8, None),
    "name": (20, None),
    "phrase": (5, re.compile(r"^[\u4e00-\u9fff]+$")),
}
_KEYWORD = re.compile(r"^([a-z_]+?)(\d+)$")


def _check_subscribe_data(data: Any) -> None:
    if not isinstance(data, dict) or not data:
        raise WeChatError(47003, "argument invalid! data is empty")
    for key, item in data.items():
        if not isinstance(item, dict) or "value" not in item:
            raise WeChatError(47003, f"argument invalid! data.{key}.value is empty")
        value = item["value"]
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise WeChatError(47003, f"argument invalid! data.{key}.value invalid")
        value = str(value)
        if not value.strip():
            raise WeChatError(47003, f"argument invalid! data.{key}.value is empty")
        match = _KEYWORD.match(key)
        rule = _SUBSCRIBE_RULES.get(match.group(1)) if match else None
        if rule is None:
            continue
        max_len, pattern = rule
        if match.group(1) == "name" and not value.isascii():
            max_len = 10
        if len(value) > max_len or (pattern is not None and not pattern.match(value)):
            raise WeChatError(47003, f"argument invalid! data.{key}.value invalid")


_MENU_TYPES = frozenset(
    {
        "click",
        "view",
        "scancode_push",
        "scancode_waitmsg",
        "pic_sysphoto",
        "pic_photo_or_album",
        "pic_weixin",
        "location_select",
        "media_id",
        "view_limited",
        "article_id",
        "article_view_limited",
        "miniprogram",
    }
)
_KEY_TYPES = frozenset(
    {"click", "scancode_push", "scancode_waitmsg", "pic_sysphoto", "pic_photo_or_album", "pic_weixin"}
    | {"location_select"}
)


def _check_button(button: Any, sub: bool) -> None:
    # errcodes for (type, name, key, url, url domain) at the top level and in sub-menus
    if sub:
        e_type, e_name, e_key, e_url, e_domain = 40024, 40025, 40026, 40027, 40054
    else:
        e_type, e_name, e_key, e_url, e_domain = 40017, 40018, 40019, 40020, 40055
    if not isinstance(button, dict):
        raise WeChatError(47001)
    name = button.get("name")
    if not isinstance(name, str) or not name or len(name.encode("utf-8")) > (60 if sub else 16):
        raise WeChatError(e_name)
    kind = button.get("type")
    if kind not in _MENU_TYPES:
        raise WeChatError(e_type)
    if kind in _KEY_TYPES:
        key = button.get("key")
        if not isinstance(key, str) or not key or len(key.encode("utf-8")) > 128:
            raise WeChatError(e_key)
    if kind in ("view", "miniprogram"):
        url = button.get("url")
        if not isinstance(url, str) or not url or len(url.encode("utf-8")) > 1024:
            raise WeChatError(e_url)
        if not re.match(r"^https?://[^/\s]+", url):
            raise WeChatError(e_domain)
    if kind == "miniprogram" and not (button.get("appid") and button.get("pagepath")):
        raise WeChatError(40097, "invalid args, miniprogram button needs appid and pagepath")
    if kind in ("media_id", "view_limited") and not button.get("media_id"):
        raise WeChatError(40007)
    if kind in ("article_id", "article_view_limited") and not button.get("article_id"):
        raise WeChatError(40097, "invalid args, article_id missing")


def _check_menu(body: dict) -> None:
    buttons = body.get("button")
    if not isinstance(buttons, list) or not 1 <= len(buttons) <= 3:
        raise WeChatError(40016)
    for button in buttons:
        if not isinstance(button, dict):
            raise WeChatError(47001)
        subs = button.get("sub_button")
        if subs:
            if not isinstance(subs, list) or len(subs) > 5:
                raise WeChatError(40023)
            name = button.get("name")
            if not isinstance(name, str) or not name or len(name.encode("utf-8")) > 16:
                raise WeChatError(40018)
            for sub_button in subs:
                _check_button(sub_button, sub=True)
        else:
            _check_button(button, sub=False)


# -- HTTP ----------------------------------------------------------------------------------


def _wechat_body(request: Request) -> dict:
    if not request.body:
        raise WeChatError(44002)
    try:
        data = json.loads(request.body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise WeChatError(47001) from None
    if not isinstance(data, dict):
        raise WeChatError(47001)
    return data


class _Fields:
    """Reads control-API fields, collecting every problem before failing with 422."""

    def __init__(self, body: dict):
        self.body = body
        self.errors: dict[str, str] = {}

    def text(self, name: str, *, required: bool = True, max_len: int = 128) -> str | None:
        value = self.body.get(name)
        if value is None or value == "":
            if required:
                self.errors[name] = "此项为必填项"
            return None
        if not isinstance(value, str):
            self.errors[name] = "应为文本"
        elif len(value) > max_len:
            self.errors[name] = f"不能超过 {max_len} 个字符"
        else:
            return value
        return None

    def integer(
        self, name: str, *, default: int | None = None, low: int | None = None, high: int | None = None
    ) -> int | None:
        value = self.body.get(name, default)
        if value is None:
            self.errors[name] = "此项为必填项"
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.errors[name] = "应为整数"
            return None
        if (low is not None and value < low) or (high is not None and value > high):
            self.errors[name] = "超出允许的范围"
            return None
        return value

    def number(self, name: str, *, default: float | None = None, low: float = 0) -> float | None:
        value = self.body.get(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
            self.errors[name] = "应为不小于 0 的数字"
            return None
        return float(value)

    def boolean(self, name: str) -> bool | None:
        value = self.body.get(name)
        if value is None:
            return None
        if not isinstance(value, bool):
            self.errors[name] = "应为是或否"
            return None
        return value

    def done(self) -> None:
        simserver.check_fields(self.errors)


Handler = Callable[[Request], Awaitable[dict] | dict]


def simulator_blueprint(state: SimState, url_prefix: str = "") -> Blueprint:
    """The simulator's routes (WeChat API and `/__sim__/` control API) over `state`."""
    bp = Blueprint("wechat_sim", url_prefix=url_prefix or None)
    mp_only = (MINIPROGRAM,)
    oa_only = (OFFICIAL_ACCOUNT,)
    both = APP_KINDS

    def wechat(path: str, method: str, kinds: tuple[str, ...] | None = None):
        """Registers a WeChat endpoint: counts the call, plays injected failures, checks method and token."""

        def register(handler: Callable[..., Awaitable[dict] | dict]) -> None:
            async def route(request: Request) -> HTTPResponse:
                state.count_call(path)
                failure = state.take_failure(path)
                if failure is not None:
                    if failure.delay_s > 0:
                        await asyncio.sleep(failure.delay_s)
                    if failure.http_status is not None:
                        error = WeChatError(failure.errcode if failure.errcode is not None else -1, failure.errmsg)
                        return json_response(state.error_body(error), status=failure.http_status)
                    if failure.errcode is not None:
                        return json_response(state.error_body(WeChatError(failure.errcode, failure.errmsg)))
                try:
                    if request.method != method:
                        raise WeChatError(43001 if method == "GET" else 43002)
                    if kinds is None:
                        result = handler(request)
                    else:
                        app = state.authenticate(request.args.get("access_token"), kinds)
                        result = handler(app, _wechat_body(request))
                    if inspect.isawaitable(result):
                        result = await result
                except WeChatError as error:
                    return json_response(state.error_body(error))
                except Exception:
                    log.exception("simulator error on %s", path)
                    return json_response(state.error_body(WeChatError(-1)), status=500)
                return json_response(result)

            bp.add_route(route, path, methods=["GET", "POST"], name="wx" + path.replace("/", "_"))

        return register

    def control(path: str, methods: tuple[str, ...] = ("POST",)):
        def register(handler: Handler) -> None:
            name = "sim" + path.removeprefix("/__sim__").replace("/", "_").replace("-", "_")
            bp.add_route(simserver.control_route(handler, log=log, path=path), path, methods=list(methods), name=name)

        return register

    # -- WeChat ----------------------------------------------------------------------------

    @wechat(JSCODE2SESSION, "GET")
    def _jscode2session(request: Request) -> dict:
        args = request.args
        return state.code2session(args.get("appid"), args.get("secret"), args.get("js_code"), args.get("grant_type"))

    @wechat(STABLE_TOKEN, "POST")
    async def _stable_token(request: Request) -> dict:
        body = _wechat_body(request)
        if body.get("grant_type") != "client_credential":
            raise WeChatError(40002)
        force = body.get("force_refresh", False)
        if not isinstance(force, bool):
            raise WeChatError(40097, "invalid args, force_refresh must be a boolean")
        appid, secret = body.get("appid"), body.get("secret")
        return await state.stable_token(
            appid if isinstance(appid, str) else None, secret if isinstance(secret, str) else None, force
        )

    wechat(GET_USER_PHONE_NUMBER, "POST", mp_only)(lambda app, body: state.get_phone_number(app, body.get("code")))
    wechat(GET_VERIFY_ID, "POST", mp_only)(state.get_verify_id)
    wechat(QUERY_VERIFY_INFO, "POST", mp_only)(state.query_verify_info)
    wechat(SUBSCRIBE_SEND, "POST", mp_only)(state.send_subscribe_message)
    wechat(TEMPLATE_SEND, "POST", oa_only)(state.send_template_message)
    wechat(CUSTOM_SEND, "POST", both)(state.send_custom_message)
    wechat(MENU_CREATE, "POST", oa_only)(state.create_menu)

    @wechat(USER_INFO, "GET")
    def _user_info(request: Request) -> dict:
        app = state.authenticate(request.args.get("access_token"), oa_only)
        return state.user_info(app, request.args.get("openid"))

    # -- control ---------------------------------------------------------------------------

    def _existing_app(fields: _Fields) -> SimApp:
        appid = fields.text("appid")
        fields.done()
        return state.app(appid)

    @control("/__sim__/apps")
    def _apps(request: Request) -> dict:
        fields = _Fields(simserver.json_object(request))
        appid, secret = fields.text("appid", max_len=64), fields.text("secret", max_len=128)
        kind = fields.text("kind", required=False) or MINIPROGRAM
        if kind not in APP_KINDS:
            fields.errors["kind"] = "不是允许的取值"
        fields.done()
        app = state.add_app(appid, secret, kind)
        return {"appid": app.appid, "kind": app.kind}

    @control("/__sim__/users")
    def _users(request: Request) -> dict:
        body = simserver.json_object(request)
        fields = _Fields(body)
        appid = fields.text("appid")
        openid = fields.text("openid", required=False)
        unionid = body.get("unionid")
        if unionid is not None and not isinstance(unionid, (str, bool)):
            fields.errors["unionid"] = "应为文本或 true"
        phone, country_code = _phone_fields(fields, required=False)
        fields.done()
        state.app(appid)
        user = state.add_user(appid, openid, unionid=unionid, phone=phone, country_code=country_code)
        return {"openid": user.openid, "unionid": user.unionid}

    @control("/__sim__/users/bulk")
    def _users_bulk(request: Request) -> dict:
        fields = _Fields(simserver.json_object(request))
        appid, prefix = fields.text("appid"), fields.text("prefix", max_len=40)
        start = fields.integer("start", default=0, low=0, high=10_000_000)
        count = fields.integer("count", default=1, low=1, high=200_000)
        fields.done()
        state.app(appid)
        for i in range(start, start + count):
            state.add_user(appid, f"{prefix}{i:07d}")
        return {"appid": appid, "created": count, "first": f"{prefix}{start:07d}"}

    @control("/__sim__/login-code")
    def _login_code(request: Request) -> dict:
        fields = _Fields(simserver.json_object(request))
        appid, openid = fields.text("appid"), fields.text("openid", required=False)
        fields.done()
        code = state.issue_login_code(state.app(appid).appid, openid)
        return {"code": code.value, "openid": code.openid}

    @control("/__sim__/phone-code")
    def _phone_code(request: Request) -> dict:
        fields = _Fields(simserver.json_object(request))
        appid, openid = fields.text("appid"), fields.text("openid")
        phone, country_code = _phone_fields(fields, required=False)
        fields.done()
        state.app(appid)
        return {"code": state.issue_phone_code(appid, openid, phone, country_code).value}

    @control("/__sim__/face/complete")
    def _face_complete(request: Request) -> dict:
        fields = _Fields(simserver.json_object(request))
        verify_id = fields.text("verify_id", max_len=256)
        verify_ret = fields.integer("verify_ret", default=FACE_VERIFY_SUCCESS)
        if verify_ret is not None and not (10000 <= verify_ret <= 10099 or 90001 <= verify_ret <= 90199):
            fields.errors["verify_ret"] = "应为 10000-10099 或 90001-90199"
        fields.done()
        session = state.complete_face(verify_id, verify_ret)
        return {"verify_id": session.verify_id, "verify_ret": session.verify_ret}

    @control("/__sim__/tokens/expire")
    def _tokens_expire(request: Request) -> dict:
        app = _existing_app(_Fields(simserver.json_object(request)))
        return {"appid": app.appid, "expired": state.expire_tokens(app.appid)}

    @control("/__sim__/fail")
    def _fail(request: Request) -> dict:
        fields = _Fields(simserver.json_object(request))
        path = fields.text("path", max_len=256)
        if path:
            if url_prefix and path.startswith(url_prefix.rstrip("/") + "/"):
                path = path[len(url_prefix.rstrip("/")) :]
            path = "/" + path.lstrip("/")
            if path not in WECHAT_PATHS:
                fields.errors["path"] = "不是模拟的微信接口"
        errcode = fields.integer("errcode", default=-1) if "errcode" in fields.body else None
        errmsg = fields.text("errmsg", required=False, max_len=256)
        http_status = None
        if "http_status" in fields.body:
            http_status = fields.integer("http_status", low=400, high=599)
        delay_s = fields.number("delay_s", default=0.0)
        if delay_s is not None and delay_s > 60:
            fields.errors["delay_s"] = "不能超过 60 秒"
        times = fields.integer("times", default=1, low=1, high=10_000)
        fields.done()
        pending = state.inject_failure(
            path, errcode=errcode, errmsg=errmsg, http_status=http_status, delay_s=delay_s or 0.0, times=times
        )
        return {"path": path, "pending": pending}

    @control("/__sim__/subscriptions")
    def _subscriptions(request: Request) -> dict:
        fields = _Fields(simserver.json_object(request))
        appid, openid, template_id = fields.text("appid"), fields.text("openid"), fields.text("template_id")
        count = fields.integer("count", default=1, low=0, high=1_000_000)
        fields.done()
        state.app(appid)
        remaining = state.grant_subscription(appid, openid, template_id, count)
        return {"appid": appid, "openid": openid, "template_id": template_id, "remaining": remaining}

    @control("/__sim__/followers")
    def _followers(request: Request) -> dict:
        fields = _Fields(simserver.json_object(request))
        appid, openid = fields.text("appid"), fields.text("openid", required=False)
        subscribed = fields.boolean("subscribed")
        last = fields.number("last_interaction_at")
        fields.done()
        state.app(appid)
        user = state.set_follower(appid, openid, subscribed=subscribed, last_interaction_at=last)
        return {
            "appid": appid,
            "openid": user.openid,
            "subscribed": user.subscribed,
            "last_interaction_at": user.last_interaction_at,
        }

    @control("/__sim__/clock")
    def _clock(request: Request) -> dict:
        fields = _Fields(simserver.json_object(request))
        advance = fields.number("advance_s", default=0.0)
        fields.done()
        return {"now": state.advance_clock(advance or 0.0), "offset_s": state.clock_offset}

    @control("/__sim__/stats", ("GET",))
    def _stats(request: Request) -> dict:
        return state.stats()

    @control("/__sim__/messages", ("GET",))
    def _messages(request: Request) -> dict:
        wanted = {k: request.args.get(k) for k in ("type", "appid", "touser") if request.args.get(k)}
        return {"messages": [m for m in state.messages if all(m.get(k) == v for k, v in wanted.items())]}

    @control("/__sim__/menu", ("GET",))
    def _menu(request: Request) -> dict:
        appid = request.args.get("appid") or DEFAULT_OA_APPID
        state.app(appid)
        return {"appid": appid, "menu": state.menus.get(appid)}

    @control("/__sim__/reset")
    def _reset(request: Request) -> dict:
        state.reset()
        return {"ok": True}

    return bp


def _phone_fields(fields: _Fields, *, required: bool) -> tuple[str | None, str | None]:
    phone = fields.text("phone", required=required, max_len=20)
    country_code = fields.text("country_code", required=False, max_len=4) or "86"
    if not country_code.isdigit():
        fields.errors["country_code"] = "应为数字"
    if phone:
        pattern = r"^1\d{10}$" if country_code == "86" else r"^\d{4,15}$"
        if not re.match(pattern, phone):
            fields.errors["phone"] = "手机号格式不正确"
    return phone, country_code


# -- standalone app ------------------------------------------------------------------------


def create_simulator_app(state: SimState | None = None) -> Sanic:
    """A standalone Sanic app serving the simulator at the root, answering JSON for every error."""
    state = state or SimState()
    return simserver.create_app("wechat_sim", simulator_blueprint(state), state=state, log=log)


def main(argv: list[str] | None = None) -> None:
    """Serves the simulator standalone until stopped: `python -m wechat.simulator [--host H] [--port 8701]`."""
    simserver.main(
        argv,
        prog="python -m wechat.simulator",
        description=__doc__.splitlines()[0],
        port=8701,
        build=lambda args: create_simulator_app(),
    )


if __name__ == "__main__":
    main()

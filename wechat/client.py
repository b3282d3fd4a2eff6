"""A non-blocking client for the WeChat server API (mini-program and official account).

Access tokens come from `/cgi-bin/stable_token` in normal mode and are cached in Redis (and,
for LOCAL_TOKEN_S, in each process, so a push costs no Redis read for its token). Only
one process refreshes at a time (a Redis lock); the others wait for the lock and then read the
token the winner stored, so concurrent refreshes never overwrite each other. A call rejected
with 40001/42001 drops the cached token only if it is still the one that failed (compare and
delete in one Lua step; the process's copy too), then retries once. `errcode -1` (system busy), timeouts and 5xx are
retried with exponential backoff.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
from redis.asyncio import Redis

from core.backoff import backoff_s
from storage.redis import held_lock

log = logging.getLogger("zhangban.wechat")

TOKEN_MARGIN_S = 300  # refresh this long before WeChat's expiry
LOCAL_TOKEN_S = 30  # a process reuses the token it read from Redis this long
TOKEN_ERRCODES = {40001, 42001, 40014}
BUSY_ERRCODE = -1
RETRIES = 3

_DROP_IF_SAME = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class _ServerError(Exception):
    """WeChat answered 5xx: retried like a timeout."""


class WeChatError(Exception):
    """WeChat answered with an errcode; `errcode`/`errmsg` keep its own words for the log."""

    def __init__(self, errcode: int, errmsg: str, path: str):
        super().__init__(f"{path}: errcode {errcode}: {errmsg}")
        self.errcode, self.errmsg, self.path = errcode, errmsg, path


class WeChatUnavailable(Exception):
    """WeChat could not be reached, or kept answering busy."""


@dataclass(frozen=True)
class LoginSession:
    openid: str
    session_key: str
    unionid: str | None


class AiohttpSender:
    """WeChat calls sent through one aiohttp session, opened on first use in the running loop.

    Pushes and notices make a WeChat call per message; httpx spends 2-4 ms of CPU on each here
    (its request model, URL parsing, cookie handling and connection pool), aiohttp about 0.4 ms
    (benchmarks/push.py). `headers` go with every call (the simulator secret, if any)."""

    def __init__(self, *, timeout_s: float = 10.0, connect_s: float = 3.0, limit: int = 100, headers=None):
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_s)
        self._limit, self._headers = limit, dict(headers or {})
        self._session: aiohttp.ClientSession | None = None

    async def send(self, method: str, url: str, *, params=None, content=None, headers=None) -> tuple[int, bytes]:
        """The status and body of one call; aiohttp.ClientError or TimeoutError when it failed."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit),
                timeout=self._timeout,
                headers=self._headers,
                # Nothing of the machine's environment (proxies, .netrc) and no cookie jar.
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        async with self._session.request(method, url, params=params, data=content, headers=headers) as response:
            return response.status, await response.read()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class WeChatClient:
    """The WeChat server API for one app (appid/secret), sharing tokens through Redis.

    `http` is an AiohttpSender (what the services use) or an httpx.AsyncClient."""

    def __init__(
        self,
        *,
        appid: str,
        secret: str,
        base_url: str,
        redis: Redis,
        token_key: str,
        http: AiohttpSender | httpx.AsyncClient,
        backoff_s: float = 0.2,
    ):
        self.appid, self._secret, self.base_url = appid, secret, base_url.rstrip("/")
        self._redis, self._token_key, self._lock_key = redis, token_key, token_key + ":lock"
        self._http = http
        self._local_lock = asyncio.Lock()
        self._token: str | None = None
        self._token_until = 0.0
        self._drop_if_same = redis.register_script(_DROP_IF_SAME)
        self._backoff_s = backoff_s

    # -- transport ---------------------------------------------------------------------

    async def _send(self, method: str, url: str, *, params=None, content=None, headers=None) -> tuple[int, bytes]:
        if isinstance(self._http, AiohttpSender):
            return await self._http.send(method, url, params=params, content=content, headers=headers)
        response = await self._http.request(method, url, params=params, content=content, headers=headers)
        return response.status_code, response.content

    async def _request(
        self, method: str, path: str, *, params=None, json_body=None, content=None, headers=None
    ) -> dict[str, Any]:
        """One WeChat call with retries for busy, timeouts and 5xx; returns the JSON body."""
        if json_body is not None:
            content = json.dumps(json_body, ensure_ascii=False).encode("utf-8")
            headers = {"Content-Type": "application/json; charset=utf-8"}
        for attempt in range(1, RETRIES + 1):
            try:
                status, raw = await self._send(
                    method, self.base_url + path, params=params, content=content, headers=headers
                )
                if status >= 500:
                    raise _ServerError(status)
                body = json.loads(raw)
            except (httpx.TransportError, aiohttp.ClientError, TimeoutError, _ServerError, ValueError) as exc:
                if attempt == RETRIES:
                    log.warning("wechat %s unreachable: %s", path, type(exc).__name__)
                    raise WeChatUnavailable() from None
            else:
                errcode = body.get("errcode", 0) if isinstance(body, dict) else 0
                if errcode != BUSY_ERRCODE or attempt == RETRIES:
                    return body
            await asyncio.sleep(backoff_s(attempt, base_s=self._backoff_s, cap_s=60, jitter=0.25))
        raise AssertionError("unreachable")

    # -- access tokens -------------------------------------------------------------------

    async def access_token(self) -> str:
        """A valid access token: this process's copy (read from Redis at most LOCAL_TOKEN_S ago),
        the one cached in Redis, or a fresh one fetched by one process only."""
        if self._token is not None and time.monotonic() < self._token_until:
            return self._token
        cached = await self._redis.get(self._token_key)
        if cached:
            return self._keep(cached.decode())
        async with self._local_lock:  # coroutines of this process queue here, not at Redis
            cached = await self._redis.get(self._token_key)
            if cached:
                return self._keep(cached.decode())
            async with held_lock(self._redis, self._lock_key, timeout=15, blocking_timeout=20) as held:
                if not held:
                    raise WeChatUnavailable()
                cached = await self._redis.get(self._token_key)  # another process may have won
                if cached:
                    return self._keep(cached.decode())
                return self._keep(await self._fetch_token())

    def _keep(self, token: str) -> str:
        # Redis drops a token TOKEN_MARGIN_S before WeChat expires it, so a copy kept for
        # LOCAL_TOKEN_S (far less) is never served expired; a call refused for a stale token
        # drops the copy with the shared one (drop_token).
        self._token, self._token_until = token, time.monotonic() + LOCAL_TOKEN_S
        return token

    async def _fetch_token(self) -> str:
        body = await self._request(
            "POST",
            "/cgi-bin/stable_token",
            json_body={
                "grant_type": "client_credential",
                "appid": self.appid,
                "secret": self._secret,
                "force_refresh": False,
            },
        )
        if body.get("errcode"):
            raise WeChatError(body["errcode"], body.get("errmsg", ""), "/cgi-bin/stable_token")
        token, expires_in = body["access_token"], int(body.get("expires_in", 7200))
        await self._redis.set(self._token_key, token, ex=max(expires_in - TOKEN_MARGIN_S, 60))
        log.info("wechat access token refreshed", extra={"appid": self.appid, "expires_in": expires_in})
        return token

    async def drop_token(self, token: str) -> bool:
        """Forgets the cached token if it is still `token`; True if it was dropped."""
        if self._token == token:
            self._token = None
        return bool(await self._drop_if_same(keys=[self._token_key], args=[token]))

    async def call(
        self, path: str, payload: dict[str, Any] | None = None, *, query: dict | None = None
    ) -> dict[str, Any]:
        """Calls `path` with an access token (POST `payload`, else GET `query`); one retry on a stale token."""
        for attempt in (1, 2):
            token = await self.access_token()
            params = {"access_token": token, **(query or {})}
            if payload is None:
                body = await self._request("GET", path, params=params)
            else:
                body = await self._request("POST", path, params=params, json_body=payload)
            errcode = body.get("errcode", 0)
            if errcode in TOKEN_ERRCODES and attempt == 1:
                await self.drop_token(token)
                continue
            if errcode:
                raise WeChatError(errcode, body.get("errmsg", ""), path)
            return body
        raise AssertionError("unreachable")

    # -- mini-program APIs ---------------------------------------------------------------

    async def code2session(self, code: str) -> LoginSession:
        """The openid, session_key and unionid for a `wx.login` code."""
        body = await self._request(
            "GET",
            "/sns/jscode2session",
            params={"appid": self.appid, "secret": self._secret, "js_code": code, "grant_type": "authorization_code"},
        )
        if body.get("errcode"):
            raise WeChatError(body["errcode"], body.get("errmsg", ""), "/sns/jscode2session")
        return LoginSession(openid=body["openid"], session_key=body["session_key"], unionid=body.get("unionid"))

    async def phone_number(self, code: str) -> str:
        """The user's bare mobile number for a `getPhoneNumber` code."""
        body = await self.call("/wxa/business/getuserphonenumber", {"code": code})
        return body["phone_info"]["purePhoneNumber"]

    async def get_verify_id(self, *, out_seq_no: str, name: str, id_number: str, openid: str) -> tuple[str, int]:
        """A face-verification session id for `wx.requestFacialVerify`, and its lifetime."""
        body = await self.call(
            "/cityservice/face/identify/getverifyid",
            {
                "out_seq_no": out_seq_no,
                "cert_info": {"cert_type": "IDENTITY_CARD", "cert_name": name, "cert_no": id_number},
                "openid": openid,
            },
        )
        return body["verify_id"], int(body.get("expires_in", 3600))

    async def query_verify_info(self, *, verify_id: str, out_seq_no: str, cert_hash: str, openid: str) -> int:
        """The `verify_ret` of a finished face verification (10000 means passed)."""
        body = await self.call(
            "/cityservice/face/identify/queryverifyinfo",
            {"verify_id": verify_id, "out_seq_no": out_seq_no, "cert_hash": cert_hash, "openid": openid},
        )
        return int(body["verify_ret"])

    async def send_subscribe(
        self, *, openid: str, template_id: str, data: dict, page: str | None = None, miniprogram_state: str = "formal"
    ) -> None:
        """A one-time subscribe message (uses up one of the user's grants for `template_id`)."""
        payload: dict[str, Any] = {
            "touser": openid,
            "template_id": template_id,
            "data": data,
            "miniprogram_state": miniprogram_state,
            "lang": "zh_CN",
        }
        if page:
            payload["page"] = page
        await self.call("/cgi-bin/message/subscribe/send", payload)


class OfficialAccountAPI:
    """The official-account calls the bot and progress pushes use, on a WeChatClient."""

    def __init__(self, client: WeChatClient):
        self.client = client

    async def user_info(self, openid: str) -> dict[str, Any]:
        """The follower's profile (`subscribe`, `unionid` when bound to the open platform)."""
        return await self.client.call("/cgi-bin/user/info", query={"openid": openid, "lang": "zh_CN"})

    async def send_text(self, openid: str, content: str) -> None:
        """A customer-service text message (within 48 hours of the follower's last message)."""
        await self.client.call(
            "/cgi-bin/message/custom/send", {"touser": openid, "msgtype": "text", "text": {"content": content}}
        )

    async def send_news(self, openid: str, articles: list[dict]) -> None:
        """A customer-service news message (one article with title, description, url, picurl)."""
        await self.client.call(
            "/cgi-bin/message/custom/send", {"touser": openid, "msgtype": "news", "news": {"articles": articles[:1]}}
        )

    async def send_miniprogram_page(
        self, openid: str, *, title: str, appid: str, pagepath: str, thumb_media_id: str
    ) -> None:
        """A customer-service mini-program card."""
        await self.client.call(
            "/cgi-bin/message/custom/send",
            {
                "touser": openid,
                "msgtype": "miniprogrampage",
                "miniprogrampage": {
                    "title": title,
                    "appid": appid,
                    "pagepath": pagepath,
                    "thumb_media_id": thumb_media_id,
                },
            },
        )

    async def send_template(
        self, openid: str, template_id: str, data: dict, *, miniprogram: dict | None = None, url: str | None = None
    ) -> str:
        """A template message; returns WeChat's msgid."""
        payload: dict[str, Any] = {"touser": openid, "template_id": template_id, "data": data}
        if miniprogram:
            payload["miniprogram"] = miniprogram
        if url:
            payload["url"] = url
        return str((await self.client.call("/cgi-bin/message/template/send", payload)).get("msgid", ""))

    async def create_menu(self, menu: dict) -> None:
        await self.client.call("/cgi-bin/menu/create", menu)


def cert_hash(*, name: str, id_number: str, cert_type: str = "IDENTITY_CARD") -> str:
    """WeChat's cert_hash: sha256 hex of `cert_type=<b64>&cert_name=<b64>&cert_no=<b64>`."""
    import base64
    import hashlib

    b64 = lambda v: base64.b64encode(v.encode("utf-8")).decode()  # noqa: E731
    return hashlib.sha256(
        f"cert_type={b64(cert_type)}&cert_name={b64(name)}&cert_no={b64(id_number)}".encode()
    ).hexdigest()

"""What every console route needs: the signed-in official's session and the caller's address."""

from __future__ import annotations

import hmac
from functools import wraps

from sanic import Request

from container import Services
from core.errors import Forbidden
from handlers import officials

COOKIE = "zb_console"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# How the OpenAPI document describes these credentials (core.openapi.secure).
SESSION = {
    "consoleSession": {
        "type": "apiKey",
        "in": "cookie",
        "name": COOKIE,
        "description": "the session cookie set by `POST /console/api/session`",
    }
}
SESSION_AND_CSRF = {
    **SESSION,
    "consoleCsrf": {
        "type": "apiKey",
        "in": "header",
        "name": CSRF_HEADER,
        "description": "the session's csrf_token, echoed on every method that changes something",
    },
}


async def current_session(request: Request, *, csrf: bool = True, enrolment: bool = True) -> officials.ConsoleSession:
    """The signed-in official's session; a method that changes something must also echo the CSRF
    token in its header (`csrf=False`: the caller checks a form field instead), and a session that
    owes a second factor may only enrol one (`enrolment=False`: the caller redirects instead)."""
    session = await officials.session_for(
        redis=Services.of(request).redis, keys=Services.of(request).keys, token=request.cookies.get(COOKIE)
    )
    if (
        csrf
        and request.method not in SAFE_METHODS
        and not hmac.compare_digest(request.headers.get(CSRF_HEADER, ""), session.csrf_token)
    ):
        raise Forbidden("页面已过期，请刷新后重试", code="csrf_failed")
    if enrolment and session.enrolment_required and request.path not in ENROLMENT_PATHS:
        raise Forbidden("您的角色要求启用动态验证码，请先完成设置", code="totp_enrolment_required")
    return session


# What a session may still do while its official owes a second factor.
ENROLMENT_PATHS = frozenset({"/console/api/session", "/console/api/account/totp", "/console/api/account/totp/confirm"})


def official(handler):
    """Route decorator: `request.ctx.session` is the signed-in official's session, else 401 (403 without CSRF)."""

    @wraps(handler)
    async def wrapper(request: Request, *args, **kwargs):
        request.ctx.session = await current_session(request)
        return await handler(request, *args, **kwargs)

    return wrapper

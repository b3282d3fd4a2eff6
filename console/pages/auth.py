"""Sign-in pages: `/console/login` (password, then the TOTP code when the official has one),
`/console/logout`, and `/console/account/totp` where an official sets up the second factor."""

from __future__ import annotations

import hmac
import io
from urllib.parse import urlencode

import qrcode
import qrcode.image.svg
from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from console.auth import set_session_cookie
from console.deps import COOKIE
from console.pages.base import (
    PRE_COOKIE,
    form_value,
    new_pre_token,
    page,
    redirect_to,
    render,
    safe_next,
)
from container import Services
from core.errors import DomainError, TooManyRequests
from core.http import client_ip, request_id
from handlers import officials

bp = Blueprint("console_pages_auth", url_prefix="/console")
PENDING_COOKIE = "zb_console_mfa"


def _login_page(request: Request, *, status: int = 200, error: str = "", pending: bool = False, username: str = ""):
    token = request.cookies.get(PRE_COOKIE) or new_pre_token()
    response = render(
        request,
        "login.html",
        status=status,
        pre_token=token,
        next=safe_next(request.args.get("next") or (form_value(request, "next") if request.form else None)),
        error=error,
        pending=pending,
        username=username,
    )
    response.add_cookie(
        PRE_COOKIE,
        token,
        httponly=True,
        samesite="Strict",
        path="/console",
        max_age=1800,
        secure=_https(request),
    )
    return response


def _https(request: Request) -> bool:
    return Services.of(request).settings.public_base_url.startswith("https://")


def _pre_ok(request: Request) -> bool:
    """The sign-in form's CSRF check: its hidden field equals the pre-session cookie."""
    cookie, field = request.cookies.get(PRE_COOKIE, ""), form_value(request, "csrf_token")
    return bool(cookie) and hmac.compare_digest(cookie, field)


def _signed_in(request: Request, session) -> HTTPResponse:
    response = redirect_to(request, safe_next(form_value(request, "next")))
    set_session_cookie(request, response, session.token)
    response.delete_cookie(PENDING_COOKIE, path="/console")
    return response


@bp.get("/login")
async def login_form(request: Request) -> HTTPResponse:
    return _login_page(request)


@bp.post("/login")
async def login(request: Request) -> HTTPResponse:
    if not _pre_ok(request):
        return _login_page(request, status=403, error="页面已过期，请重新登录")
    username = form_value(request, "username")[:64]
    password = form_value(request, "password")[:256]
    if not username or not password:
        return _login_page(request, status=422, error="请输入用户名和密码", username=username)
    services = Services.of(request)
    try:
        session = await officials.sign_in(
            redis=services.redis,
            keys=services.keys,
            cipher=services.cipher,
            username=username,
            password=password,
            ip=client_ip(request),
            request_id=request_id(request),
        )
    except officials.SecondFactorRequired as needed:
        response = _login_page(request, pending=True)
        response.add_cookie(
            PENDING_COOKIE,
            needed.pending,
            httponly=True,
            samesite="Strict",
            path="/console",
            max_age=officials.PENDING_TTL_S,
            secure=_https(request),
        )
        return response
    except TooManyRequests as exc:
        return _login_page(request, status=429, error=exc.message, username=username)
    except DomainError as exc:
        return _login_page(request, status=401, error=exc.message, username=username)
    return _signed_in(request, session)


@bp.post("/login/totp")
async def login_totp(request: Request) -> HTTPResponse:
    if not _pre_ok(request):
        return _login_page(request, status=403, error="页面已过期，请重新登录")
    services = Services.of(request)
    try:
        session = await officials.finish_sign_in(
            redis=services.redis,
            keys=services.keys,
            cipher=services.cipher,
            pending=request.cookies.get(PENDING_COOKIE, ""),
            code=form_value(request, "code")[:16],
            ip=client_ip(request),
            request_id=request_id(request),
        )
    except DomainError as exc:
        expired = exc.code in ("totp_pending_expired", "account_disabled")
        status = 429 if isinstance(exc, TooManyRequests) else 401
        return _login_page(request, status=status, error=exc.message, pending=not expired)
    return _signed_in(request, session)


@bp.post("/logout")
@page()
async def logout(request: Request) -> HTTPResponse:
    services = Services.of(request)
    await officials.sign_out(redis=services.redis, keys=services.keys, session=request.ctx.session)
    response = redirect_to(request, "/console/login?" + urlencode({"next": "/console/"}), flash="您已退出登录")
    response.delete_cookie(COOKIE, path="/console")
    return response


def _qr_svg(uri: str) -> str:
    image = qrcode.make(uri, image_factory=qrcode.image.svg.SvgPathImage, box_size=8)
    out = io.BytesIO()
    image.save(out)
    svg = out.getvalue().decode()
    # An accessible name for the picture; the secret below it is the text alternative.
    return svg.replace("<svg ", '<svg role="img" aria-label="动态验证码二维码" ', 1).split("?>", 1)[-1]


@bp.get("/account/totp")
@page()
async def totp_page(request: Request) -> HTTPResponse:
    official = request.ctx.session.official
    return render(request, "account_totp.html", enabled=official.totp_enabled_at is not None, enrolment=None)


@bp.post("/account/totp")
@page()
async def totp_start(request: Request) -> HTTPResponse:
    official = request.ctx.session.official
    enrolment = await officials.begin_totp(official=official, cipher=Services.of(request).cipher)
    return render(request, "account_totp.html", enabled=False, enrolment=enrolment, qr_svg=_qr_svg(enrolment.uri))


@bp.post("/account/totp/confirm")
@page()
async def totp_confirm(request: Request) -> HTTPResponse:
    services = Services.of(request)
    session = request.ctx.session
    try:
        await officials.confirm_totp(
            official=session.official,
            cipher=services.cipher,
            code=form_value(request, "code")[:16],
            ip=client_ip(request),
            request_id=request_id(request),
        )
    except DomainError as exc:
        if exc.code != "totp_code_invalid":
            raise
        enrolment = officials.pending_totp(official=session.official, cipher=services.cipher)
        return render(
            request,
            "account_totp.html",
            status=422,
            enabled=False,
            enrolment=enrolment,
            qr_svg=_qr_svg(enrolment.uri) if enrolment else "",
            error=exc.message,
        )
    await officials.finish_enrolment(redis=services.redis, keys=services.keys, session=session)
    return redirect_to(request, "/console/account/totp", flash="动态验证码已启用")

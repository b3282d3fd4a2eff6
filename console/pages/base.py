"""What every console page needs: the Jinja2 environment, the `@page` guard (session, roles, CSRF),
the security headers, CSV export and flash messages. See README.md beside this file."""

from __future__ import annotations

import csv
import hmac
import io
import secrets
from collections.abc import Iterable
from datetime import datetime
from functools import wraps
from pathlib import Path
from urllib.parse import quote, unquote, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from sanic import Request
from sanic.response import HTTPResponse, html, redirect

from console.deps import COOKIE, current_session
from core.china_time import CHINA
from core.errors import DomainError, Forbidden, NotFound, Unauthenticated
from core.http import status_of
from handlers.scoping import roles_of

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
env = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(["html", "svg"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def china_time(value: str | None, seconds: bool = False) -> str:
    """An ISO 8601 moment from a use case, shown in China time: `2026-11-30 13:37` (or "—")."""
    if not value:
        return "—"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is not None:
        moment = moment.astimezone(CHINA)
    return moment.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


env.filters["china_time"] = china_time

# No inline script, no inline style, nothing from another host; the console runs on an intranet.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
PRE_COOKIE = "zb_console_pre"  # the sign-in form's CSRF token (no session yet)
FLASH_COOKIE = "zb_flash"
CSRF_FIELD = "csrf_token"

# The navigation: (path, label, roles that see it; empty = everyone).
NAV = [
    ("/console/", "工作台", ()),
    ("/console/alerts", "待办提醒", ()),
    ("/console/cases", "办件查询", ("officer", "supervisor")),
    ("/console/reviews", "差评整改", ("officer", "supervisor")),
    ("/console/tickets", "咨询投诉", ("officer", "supervisor")),
    ("/console/notices", "通知公告", ("publisher",)),
    ("/console/catalogue", "事项目录", ()),
    ("/console/payments", "支付对账", ("finance",)),
    ("/console/audit", "审计日志", ("supervisor",)),
    ("/console/officials", "账号管理", ()),
]


def nav_for(official) -> list[tuple[str, str]]:
    roles = roles_of(official)
    admin = "admin" in roles
    return [(path, label) for path, label, need in NAV if admin or (need and roles & set(need)) or not need]


def secure_headers(response: HTTPResponse) -> HTTPResponse:
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    return response


def render(request: Request, template: str, *, status: int = 200, **context) -> HTTPResponse:
    """The page `template` rendered with `context`, the signed-in official and the flash message."""
    session = getattr(request.ctx, "session", None)
    flash = unquote(request.cookies.get(FLASH_COOKIE, ""))[:200]
    body = env.get_template(template).render(
        request=request,
        session=session,
        official=session.official if session else None,
        csrf_token=session.csrf_token if session else "",
        nav=nav_for(session.official) if session else [],
        flash=flash,
        **context,
    )
    response = secure_headers(html(body, status=status))
    if flash:
        response.delete_cookie(FLASH_COOKIE, path="/console")
    return response


def redirect_to(request: Request, url: str, *, flash: str | None = None) -> HTTPResponse:
    """A 303 to `url` (after a form), with an optional one-time message for the next page."""
    response = redirect(url, status=303)
    if flash:
        response.add_cookie(
            FLASH_COOKIE,
            quote(flash),
            httponly=True,
            samesite="Strict",
            path="/console",
            max_age=60,
            secure=request.scheme == "https",
        )
    return secure_headers(response)


def safe_next(value: str | None) -> str:
    """Where to go after signing in: only a console path of ours, never another host."""
    if value and value.startswith("/console") and not value.startswith("//") and "\\" not in value:
        return value
    return "/console/"


def form_value(request: Request, name: str, default: str = "") -> str:
    values = request.form.get(name) if request.form else None
    return (values if isinstance(values, str) else default).strip() if values is not None else default


def _csrf_ok(request: Request, expected: str) -> bool:
    given = form_value(request, CSRF_FIELD) or request.headers.get("X-CSRF-Token", "")
    return bool(given) and hmac.compare_digest(given, expected)


def page(*roles: str):
    """Page decorator: the signed-in official in `request.ctx.session` (else to the sign-in page),
    one of `roles` if given (admin has every role), the CSRF field on every POST; a domain error
    becomes the error page with its status, never a stack trace."""

    def decorate(handler):
        @wraps(handler)
        async def wrapper(request: Request, *args, **kwargs):
            try:
                # The form's field, not the API's header, carries the token: check it here.
                request.ctx.session = await current_session(request, csrf=False, enrolment=False)
            except Unauthenticated:
                target = request.path + (f"?{request.query_string}" if request.query_string else "")
                return redirect_to(request, "/console/login?" + urlencode({"next": target}))
            session = request.ctx.session
            if session.enrolment_required and request.path != "/console/account/totp":
                return redirect_to(request, "/console/account/totp")
            try:
                if request.method == "POST" and not _csrf_ok(request, session.csrf_token):
                    raise Forbidden("页面已过期，请刷新后重试", code="csrf_failed")
                if roles:
                    held = roles_of(session.official)
                    if "admin" not in held and not held & set(roles):
                        raise Forbidden("您没有访问此页面的权限", code="role_required")
                return await handler(request, *args, **kwargs)
            except DomainError as exc:
                return error_page(request, exc)

        return wrapper

    return decorate


def error_page(request: Request, error: DomainError) -> HTTPResponse:
    return render(request, "error.html", status=status_of(error), error=error)


def not_found(what: str = "页面") -> NotFound:
    return NotFound(f"{what}不存在", code="not_found")


def csv_response(filename: str, header: list[str], rows: Iterable[Iterable]) -> HTTPResponse:
    """A CSV download (UTF-8 with BOM, so Excel reads Chinese); cells that a spreadsheet would
    run as a formula are quoted with a leading apostrophe."""
    out = io.StringIO()
    out.write("\ufeff")
    writer = csv.writer(out)
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(value) for value in row])
    response = HTTPResponse(out.getvalue().encode("utf-8"), content_type="text/csv; charset=utf-8")
    response.headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(filename)}"
    return secure_headers(response)


def _cell(value) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def new_pre_token() -> str:
    return secrets.token_urlsafe(24)


__all__ = ["COOKIE", "page", "render", "redirect_to", "csv_response", "env", "form_value", "safe_next"]

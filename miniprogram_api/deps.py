"""What every mini-program route needs: the signed-in citizen and the app's services."""

from __future__ import annotations

from functools import wraps

from sanic import Request

from core.errors import Unauthenticated
from storage.models import User


def bearer(request: Request) -> str | None:
    """The bearer token of the request, if any."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def citizen(handler):
    """Route decorator: `request.ctx.user` is the signed-in citizen, else 401 unauthenticated."""

    @wraps(handler)
    async def wrapper(request: Request, *args, **kwargs):
        principal = await request.app.ctx.tokens.principal(bearer(request))
        user = await User.get_or_none(id=principal.user_id, is_active=True)
        if user is None:
            raise Unauthenticated("账号已停用", code="account_disabled")
        request.ctx.principal, request.ctx.user = principal, user
        return await handler(request, *args, **kwargs)

    return wrapper


def client_ip(request: Request) -> str:
    return request.remote_addr or request.ip

"""What every mini-program route needs: the signed-in citizen and the app's services."""

from __future__ import annotations

from functools import wraps

from sanic import Request

from container import Services
from handlers.auth import signed_in


def bearer(request: Request) -> str | None:
    """The bearer token of the request, if any."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def citizen(handler):
    """Route decorator: `request.ctx.user` is the signed-in citizen, else 401 unauthenticated."""

    @wraps(handler)
    async def wrapper(request: Request, *args, **kwargs):
        request.ctx.principal, request.ctx.user = await signed_in(
            tokens=Services.of(request).tokens, access_token=bearer(request)
        )
        return await handler(request, *args, **kwargs)

    return wrapper

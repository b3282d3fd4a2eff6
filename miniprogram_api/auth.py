"""`/api/v1/auth`: WeChat login, token refresh, logout."""

from __future__ import annotations

from pydantic import BaseModel, Field
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from container import Services
from core.http import client_ip, json_body
from core.openapi import BEARER, document, secure
from handlers import auth
from miniprogram_api.deps import citizen

bp = Blueprint("mp_auth", url_prefix="/api/v1/auth")
secure(bp, BEARER)


class LoginIn(BaseModel):
    code: str = Field(min_length=1, max_length=128, description="the code from wx.login()")


class RefreshIn(BaseModel):
    refresh_token: str = Field(min_length=16, max_length=256)


class UserRef(BaseModel):
    id: int
    identity_level: str


class TokensOut(BaseModel):
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str
    user: UserRef


def _tokens(pair: auth.TokenPair) -> dict:
    """The body of a sign-in or refresh answer (`TokensOut`)."""
    return {
        "access_token": pair.access_token,
        "refresh_token": pair.refresh_token,
        "expires_in": pair.expires_in,
        "token_type": "Bearer",
        "user": {"id": pair.user.id, "identity_level": pair.user.identity_level.value},
    }


@bp.post("/login")
@document(
    summary="Sign in with a wx.login code",
    tag="auth",
    body=LoginIn,
    response=TokensOut,
    errors=(400, 422, 429, 503),
    public=True,
)
async def login(request: Request) -> HTTPResponse:
    body = json_body(request, LoginIn)
    ctx = Services.of(request)
    await ctx.limiter.hit("login", "ip", client_ip(request))
    pair = await auth.login(
        code=body.code, wechat=ctx.wechat_mp, tokens=ctx.tokens, cipher=ctx.cipher, ip=client_ip(request)
    )
    return json(_tokens(pair))


@bp.post("/refresh")
@document(
    summary="Rotate the refresh token for a new pair",
    tag="auth",
    body=RefreshIn,
    response=TokensOut,
    errors=(401, 422, 429),
    public=True,
)
async def refresh(request: Request) -> HTTPResponse:
    body = json_body(request, RefreshIn)
    await Services.of(request).limiter.hit("refresh", "ip", client_ip(request))
    pair = await Services.of(request).tokens.refresh(body.refresh_token)
    return json(_tokens(pair))


@bp.post("/logout")
@document(summary="Sign out: revoke this login's tokens", tag="auth", status=204, errors=(401,))
@citizen
async def logout(request: Request) -> HTTPResponse:
    await Services.of(request).tokens.revoke_family(request.ctx.principal.family)
    return HTTPResponse(status=204)

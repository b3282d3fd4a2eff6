"""Console sign-in: `/console/api/session` (cookie session, CSRF token for unsafe methods)."""

from __future__ import annotations

import hmac

from pydantic import BaseModel, Field
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from core.errors import Forbidden
from core.http import json_body, request_id
from core.openapi import document
from handlers import officials

bp = Blueprint("console_auth", url_prefix="/console/api")

COOKIE = "zb_console"
CSRF_HEADER = "X-CSRF-Token"


class SignIn(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=10, max_length=256)


class OfficialOut(BaseModel):
    id: int
    username: str
    display_name: str
    department: str
    roles: list[str]


class SessionOut(BaseModel):
    official: OfficialOut
    csrf_token: str


def _official(o) -> dict:
    return {
        "id": o.id,
        "username": o.username,
        "display_name": o.display_name,
        "department": o.department,
        "roles": o.roles,
    }


async def current_session(request: Request, *, unsafe: bool) -> officials.ConsoleSession:
    """The signed-in official's session; unsafe methods must also echo the CSRF token."""
    session = await officials.session_for(
        redis=request.app.ctx.redis, keys=request.app.ctx.keys, token=request.cookies.get(COOKIE)
    )
    if unsafe and not hmac.compare_digest(request.headers.get(CSRF_HEADER, ""), session.csrf_token):
        raise Forbidden("页面已过期，请刷新后重试", code="csrf_failed")
    return session


@bp.post("/session")
@document(summary="Official signs in", tag="console", body=SignIn, response=SessionOut, errors=(401, 422, 429))
async def sign_in(request: Request) -> HTTPResponse:
    body = json_body(request, SignIn)
    session = await officials.sign_in(
        redis=request.app.ctx.redis,
        keys=request.app.ctx.keys,
        username=body.username,
        password=body.password,
        ip=request.remote_addr or request.ip,
        request_id=request_id(request),
    )
    response = json({"official": _official(session.official), "csrf_token": session.csrf_token})
    response.add_cookie(
        COOKIE,
        session.token,
        httponly=True,
        samesite="Strict",
        secure=request.app.ctx.settings.public_base_url.startswith("https://"),
        max_age=officials.SESSION_TTL_S,
        path="/console",
    )
    return response


@bp.get("/session")
@document(summary="The signed-in official", tag="console", response=SessionOut, errors=(401,))
async def who_am_i(request: Request) -> HTTPResponse:
    session = await current_session(request, unsafe=False)
    return json({"official": _official(session.official), "csrf_token": session.csrf_token})


@bp.delete("/session")
@document(summary="Official signs out", tag="console", errors=(401, 403))
async def sign_out(request: Request) -> HTTPResponse:
    session = await current_session(request, unsafe=True)
    await officials.sign_out(redis=request.app.ctx.redis, keys=request.app.ctx.keys, session=session)
    response = HTTPResponse(status=204)
    response.delete_cookie(COOKIE, path="/console")
    return response

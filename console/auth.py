"""Console sign-in: `/console/api/session` (cookie session, CSRF token for unsafe methods)."""

from __future__ import annotations

from pydantic import BaseModel, Field
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from console.deps import COOKIE, SESSION, SESSION_AND_CSRF, official
from container import Services
from core.http import client_ip, json_body, request_id
from core.openapi import document, secure
from handlers import officials

bp = Blueprint("console_auth", url_prefix="/console/api")
secure(bp, SESSION, unsafe=SESSION_AND_CSRF)


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


@bp.post("/session")
@document(
    summary="Official signs in (sets the session cookie)",
    tag="console",
    body=SignIn,
    response=SessionOut,
    errors=(401, 422, 429),
    public=True,
)
async def sign_in(request: Request) -> HTTPResponse:
    body = json_body(request, SignIn)
    session = await officials.sign_in(
        redis=Services.of(request).redis,
        keys=Services.of(request).keys,
        username=body.username,
        password=body.password,
        ip=client_ip(request),
        request_id=request_id(request),
    )
    response = json({"official": _official(session.official), "csrf_token": session.csrf_token})
    response.add_cookie(
        COOKIE,
        session.token,
        httponly=True,
        samesite="Strict",
        secure=Services.of(request).settings.public_base_url.startswith("https://"),
        max_age=officials.SESSION_TTL_S,
        path="/console",
    )
    return response


@bp.get("/session")
@document(summary="The signed-in official", tag="console", response=SessionOut, errors=(401,))
@official
async def who_am_i(request: Request) -> HTTPResponse:
    session = request.ctx.session
    return json({"official": _official(session.official), "csrf_token": session.csrf_token})


@bp.delete("/session")
@document(summary="Official signs out", tag="console", status=204, errors=(401, 403))
@official
async def sign_out(request: Request) -> HTTPResponse:
    await officials.sign_out(
        redis=Services.of(request).redis, keys=Services.of(request).keys, session=request.ctx.session
    )
    response = HTTPResponse(status=204)
    response.delete_cookie(COOKIE, path="/console")
    return response

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
    totp: str | None = Field(
        None, pattern=r"^\d{6}$", description="the authenticator's code, for an official with a second factor"
    )


class SecondFactorIn(BaseModel):
    pending: str = Field(min_length=16, max_length=128, description="`details.pending` of the `totp_required` answer")
    code: str = Field(pattern=r"^\d{6}$", description="the authenticator's 6-digit code")


class TotpCode(BaseModel):
    code: str = Field(pattern=r"^\d{6}$")


class TotpSecretOut(BaseModel):
    secret: str = Field(description="base32, for typing into an authenticator app")
    uri: str = Field(description="otpauth:// URI, for a QR code")


class TotpStateOut(BaseModel):
    enabled: bool


class OfficialOut(BaseModel):
    id: int
    username: str
    display_name: str
    department: str
    roles: list[str]


class SessionOut(BaseModel):
    official: OfficialOut
    csrf_token: str
    totp_enrolment_required: bool = Field(
        description="a role of this official requires a second factor not yet set up: only enrolment is open"
    )


def _official(o) -> dict:
    return {
        "id": o.id,
        "username": o.username,
        "display_name": o.display_name,
        "department": o.department,
        "roles": o.roles,
    }


def _session_response(request: Request, session) -> HTTPResponse:
    response = json(
        {
            "official": _official(session.official),
            "csrf_token": session.csrf_token,
            "totp_enrolment_required": session.enrolment_required,
        }
    )
    set_session_cookie(request, response, session.token)
    return response


def set_session_cookie(request: Request, response: HTTPResponse, token: str) -> None:
    """The console session cookie: HttpOnly, SameSite=Strict, Secure when served over https."""
    response.add_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="Strict",
        secure=Services.of(request).settings.public_base_url.startswith("https://"),
        max_age=officials.SESSION_TTL_S,
        path="/console",
    )


@bp.post("/session")
@document(
    summary="Official signs in (sets the session cookie); with a second factor: `totp`, or "
    "`401 totp_required` whose `details.pending` finishes at `POST /console/api/session/totp`",
    tag="console",
    body=SignIn,
    response=SessionOut,
    errors=(401, 422, 429),
    public=True,
)
async def sign_in(request: Request) -> HTTPResponse:
    body = json_body(request, SignIn)
    services = Services.of(request)
    session = await officials.sign_in(
        redis=services.redis,
        keys=services.keys,
        cipher=services.cipher,
        username=body.username,
        password=body.password,
        totp=body.totp,
        ip=client_ip(request),
        request_id=request_id(request),
    )
    return _session_response(request, session)


@bp.post("/session/totp")
@document(
    summary="Official finishes signing in with the second factor",
    tag="console",
    body=SecondFactorIn,
    response=SessionOut,
    errors=(401, 422, 429),
    public=True,
)
async def second_factor(request: Request) -> HTTPResponse:
    body = json_body(request, SecondFactorIn)
    services = Services.of(request)
    session = await officials.finish_sign_in(
        redis=services.redis,
        keys=services.keys,
        cipher=services.cipher,
        pending=body.pending,
        code=body.code,
        ip=client_ip(request),
        request_id=request_id(request),
    )
    return _session_response(request, session)


@bp.get("/session")
@document(summary="The signed-in official", tag="console", response=SessionOut, errors=(401,))
@official
async def who_am_i(request: Request) -> HTTPResponse:
    session = request.ctx.session
    return json(
        {
            "official": _official(session.official),
            "csrf_token": session.csrf_token,
            "totp_enrolment_required": session.enrolment_required,
        }
    )


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


@bp.post("/account/totp")
@document(
    summary="Official starts setting up a TOTP second factor (a new pending secret)",
    tag="console",
    response=TotpSecretOut,
    errors=(401, 403, 409),
)
@official
async def totp_begin(request: Request) -> HTTPResponse:
    enrolment = await officials.begin_totp(official=request.ctx.session.official, cipher=Services.of(request).cipher)
    return json({"secret": enrolment.secret, "uri": enrolment.uri}, headers={"Cache-Control": "no-store"})


@bp.post("/account/totp/confirm")
@document(
    summary="Official confirms the second factor with a code from the app",
    tag="console",
    body=TotpCode,
    response=TotpStateOut,
    errors=(401, 403, 409, 422),
)
@official
async def totp_confirm(request: Request) -> HTTPResponse:
    body = json_body(request, TotpCode)
    services = Services.of(request)
    await officials.confirm_totp(
        official=request.ctx.session.official,
        cipher=services.cipher,
        code=body.code,
        ip=client_ip(request),
        request_id=request_id(request),
    )
    await officials.finish_enrolment(redis=services.redis, keys=services.keys, session=request.ctx.session)
    return json({"enabled": True})

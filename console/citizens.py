"""`/console/api/citizens`: an official reads a citizen's personal data, with a reason, audited."""

from __future__ import annotations

from pydantic import BaseModel, Field
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from console.deps import SESSION, SESSION_AND_CSRF, official
from container import Services
from core.http import client_ip, request_id
from core.openapi import document, secure
from handlers.personal_data import read_citizen

bp = Blueprint("console_citizens", url_prefix="/console/api/citizens")
secure(bp, SESSION, unsafe=SESSION_AND_CSRF)


class ReasonQuery(BaseModel):
    """Why the official looks (checked and audited by the use case, documented here)."""

    reason: str = Field(min_length=4, max_length=200, description="why the official looks, e.g. the case number")


class AddressOut(BaseModel):
    recipient: str
    phone: str
    region_code: str
    detail: str


class CitizenOut(BaseModel):
    id: int
    identity_level: str
    name: str | None
    id_number: str | None
    phone: str | None
    addresses: list[AddressOut]


@bp.get("/<user_id:int>")
@document(
    summary="Read a citizen's clear personal data (role personal_data; ?reason= required; audited)",
    tag="console",
    query=ReasonQuery,
    response=CitizenOut,
    errors=(401, 403, 404, 422),
)
@official
async def citizen(request: Request, user_id: int) -> HTTPResponse:
    data = await read_citizen(
        official=request.ctx.session.official,
        user_id=user_id,
        reason=request.args.get("reason", ""),
        cipher=Services.of(request).cipher,
        ip=client_ip(request),
        request_id=request_id(request),
    )
    response = json(data)
    response.headers["Cache-Control"] = "no-store"
    return response

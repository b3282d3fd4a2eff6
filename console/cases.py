"""`/console/api/cases/{case_no}/materials/{id}`: an official's watermarked, audited copy of a material."""

from __future__ import annotations

from pydantic import BaseModel, Field
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json, raw

from console.deps import SESSION, SESSION_AND_CSRF, official
from container import Services
from core.http import client_ip, file_headers, request_id
from core.openapi import document, secure
from handlers.cases.views import pushes_for_official
from handlers.materials.service import official_copy

bp = Blueprint("console_cases", url_prefix="/console/api/cases")
secure(bp, SESSION, unsafe=SESSION_AND_CSRF)


class PushAttemptOut(BaseModel):
    channel: str
    result: str
    errcode: int | None
    detail: str
    started_at: str
    finished_at: str | None


class NotificationOut(BaseModel):
    id: int
    kind: str
    title: str
    push_status: str
    channel: str
    created_at: str
    sent_at: str | None
    read: bool
    attempts: list[PushAttemptOut]


class CasePushes(BaseModel):
    case_no: str
    status: str
    notifications: list[NotificationOut]


class ReasonQuery(BaseModel):
    """Why the official looks (checked and audited by the use case, documented here)."""

    reason: str = Field(min_length=4, max_length=200, description="why the official looks, e.g. the case number")


@bp.get("/<case_no:str>/materials/<material_id:str>")
@document(
    summary="An official's copy of a case material (?reason= required; audited; watermarked)",
    tag="console",
    query=ReasonQuery,
    response=None,
    content_type="application/octet-stream",
    errors=(401, 403, 404, 422),
)
@official
async def material(request: Request, case_no: str, material_id: str) -> HTTPResponse:
    data, mime = await official_copy(
        materials=Services.of(request).materials,
        official=request.ctx.session.official,
        case_no=case_no,
        material_id=material_id,
        reason=request.args.get("reason", ""),
        ip=client_ip(request),
        request_id=request_id(request),
    )
    headers = {"Cache-Control": "no-store", **file_headers(mime, f"{case_no}-{material_id}")}
    return raw(data, content_type=mime, headers=headers)


@bp.get("/<case_no:str>/pushes")
@document(
    summary="A case's notifications and every push attempt (why the citizen was or was not reached)",
    tag="console",
    response=CasePushes,
    errors=(401, 403, 404),
)
@official
async def pushes(request: Request, case_no: str) -> HTTPResponse:
    data = await pushes_for_official(
        official=request.ctx.session.official, case_no=case_no, ip=client_ip(request), request_id=request_id(request)
    )
    return json(data, headers={"Cache-Control": "no-store"})

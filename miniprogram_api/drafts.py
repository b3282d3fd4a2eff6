"""`/api/v1/drafts`: fill in an application, get every problem at once, submit exactly once."""

from __future__ import annotations

import re

from pydantic import BaseModel, Field, StrictInt
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from container import Services
from core.errors import BadRequest
from core.http import INT32_MAX, json_body
from core.openapi import BEARER, document, secure
from handlers.drafts import problem_body
from miniprogram_api.deps import citizen

bp = Blueprint("mp_drafts", url_prefix="/api/v1/drafts")
secure(bp, BEARER)

# A draft's data is the owner's own answers in full (ID number, phone, address): no cache
# between them and us may keep a copy.
PRIVATE = {"Cache-Control": "no-store"}

_KEY = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")


class CreateIn(BaseModel):
    service_code: str | None = Field(None, max_length=64)
    bundle_code: str | None = Field(None, max_length=64)


class PatchIn(BaseModel):
    version: StrictInt = Field(ge=1, le=INT32_MAX)
    data: dict


class SubmitIn(BaseModel):
    version: StrictInt | None = Field(
        None, ge=1, le=INT32_MAX, description="submit only if the draft is still at this version"
    )


class DraftOut(BaseModel):
    id: str
    version: int
    service_code: str | None
    bundle_code: str | None
    status: str
    data: dict
    expires_at: str
    prefill: dict | None = None
    materials: dict | None = None


class DraftSummary(BaseModel):
    id: str
    version: int
    service_code: str | None
    bundle_code: str | None
    updated_at: str
    expires_at: str


class DraftList(BaseModel):
    items: list[DraftSummary]


class ProblemOut(BaseModel):
    path: str
    code: str
    message: str


class ReviewOut(BaseModel):
    ok: bool
    problems: list[ProblemOut]


class SubmitOut(BaseModel):
    case_no: str
    status: str
    bundle_no: str | None = None
    cases: list[dict]


IDEMPOTENCY_KEY = {
    "Idempotency-Key": {
        "required": True,
        "description": "a unique key per submission (8-128 of A-Z a-z 0-9 . _ : -); a retry gets the same answer",
        "schema": {"type": "string", "pattern": _KEY.pattern},
    }
}


def _view(draft, data: dict, prefill: dict | None = None) -> dict:
    body = {
        "id": draft.id,
        "version": draft.version,
        "service_code": draft.service_code,
        "bundle_code": draft.bundle_code,
        "status": draft.status,
        "data": data,
        "expires_at": draft.expires_at.isoformat(),
    }
    if prefill is not None:
        body["prefill"] = prefill
    return body


@bp.post("/")
@document(
    summary="Start a draft, prefilled",
    tag="drafts",
    body=CreateIn,
    response=DraftOut,
    status=201,
    errors=(401, 404, 422),
)
@citizen
async def create(request: Request) -> HTTPResponse:
    body = json_body(request, CreateIn)
    draft, data, prefill, materials = await Services.of(request).drafts.create(
        user=request.ctx.user, service_code=body.service_code, bundle_code=body.bundle_code
    )
    return json({**_view(draft, data, prefill), "materials": materials}, status=201, headers=PRIVATE)


@bp.get("/")
@document(summary="My open drafts", tag="drafts", response=DraftList, errors=(401,))
@citizen
async def mine(request: Request) -> HTTPResponse:
    drafts = await Services.of(request).drafts.mine(user=request.ctx.user)
    return json(
        {
            "items": [
                {
                    "id": d.id,
                    "version": d.version,
                    "service_code": d.service_code,
                    "bundle_code": d.bundle_code,
                    "updated_at": d.updated_at.isoformat(),
                    "expires_at": d.expires_at.isoformat(),
                }
                for d in drafts
            ]
        }
    )


@bp.get("/<draft_id:str>")
@document(summary="One of my drafts", tag="drafts", response=DraftOut, errors=(401, 404, 410))
@citizen
async def read(request: Request, draft_id: str) -> HTTPResponse:
    service = Services.of(request).drafts
    draft = await service.get(user=request.ctx.user, draft_id=draft_id)
    return json(_view(draft, service.data_of(draft)), headers=PRIVATE)


@bp.patch("/<draft_id:str>")
@document(
    summary="Save answers (merge) if the version is current",
    tag="drafts",
    body=PatchIn,
    response=DraftOut,
    errors=(401, 404, 409, 410, 422),
)
@citizen
async def patch(request: Request, draft_id: str) -> HTTPResponse:
    body = json_body(request, PatchIn)
    draft, data = await Services.of(request).drafts.patch(
        user=request.ctx.user, draft_id=draft_id, version=body.version, patch=body.data
    )
    return json(_view(draft, data), headers=PRIVATE)


@bp.post("/<draft_id:str>/review")
@document(summary="Pre-review: every problem at once", tag="drafts", response=ReviewOut, errors=(401, 404, 410))
@citizen
async def review(request: Request, draft_id: str) -> HTTPResponse:
    problems = await Services.of(request).drafts.review(user=request.ctx.user, draft_id=draft_id)
    return json({"ok": not problems, "problems": problem_body(problems)})


@bp.post("/<draft_id:str>/submit")
@document(
    summary="Submit (Idempotency-Key header required)",
    tag="drafts",
    body=SubmitIn,
    body_required=False,
    headers=IDEMPOTENCY_KEY,
    response=SubmitOut,
    status=201,
    errors=(400, 401, 404, 409, 410, 422),
)
@citizen
async def submit(request: Request, draft_id: str) -> HTTPResponse:
    key = request.headers.get("idempotency-key", "")
    if not _KEY.fullmatch(key):
        raise BadRequest("请在请求头 Idempotency-Key 中提供8至128位的唯一标识", code="idempotency_key_required")
    payload = json_body(request, SubmitIn).model_dump(exclude_none=True) if request.body else {}
    cases = await Services.of(request).drafts.submit(
        user=request.ctx.user, draft_id=draft_id, idempotency_key=key, body=payload
    )
    return json(
        {
            "case_no": cases[0].case_no,
            "status": cases[0].status.value,
            "bundle_no": cases[0].bundle_no,
            "cases": [
                {
                    "case_no": c.case_no,
                    "service_code": c.service_code,
                    "service_name": c.service_name,
                    "status": c.status.value,
                }
                for c in cases
            ],
        },
        status=201,
    )

"""`/api/v1/cases`: the citizen's cases, their timeline and what to do next; withdrawal."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from container import Services
from core.http import INT64_MAX, json_body, query_args
from core.openapi import BEARER, document, secure
from handlers.cases import resubmission, views, withdrawal
from miniprogram_api.deps import citizen

bp = Blueprint("mp_cases", url_prefix="/api/v1/cases")
secure(bp, BEARER)


class ListQuery(BaseModel):
    before: int | None = Field(None, ge=1, le=INT64_MAX, description="cursor: the next_cursor of the previous page")
    limit: int = Field(20, ge=1, le=100)


class CaseSummary(BaseModel):
    case_no: str
    service_code: str
    service_name: str
    status: str
    status_label: str
    bundle_no: str | None
    submitted_at: str


class CaseList(BaseModel):
    items: list[CaseSummary]
    next_cursor: int | None = Field(description="pass as `before` for the next page; null on the last")


class TimelineEntry(BaseModel):
    status: str
    label: str
    at: str
    note: str


class NextAction(BaseModel):
    type: str = Field(description="correct | wait | pay")
    fields: list[str] | None = None
    materials: list[str] | None = None
    reason: str | None = None
    can_withdraw: bool | None = None
    amount_fen: int | None = None
    notice_no: str | None = None


class FeeView(BaseModel):
    amount_fen: int
    notice_no: str | None
    paid: bool
    paid_at: str | None
    payment: dict | None = Field(description="the fee's order: payment_id, channel, status, status_label, refunded_fen")
    receipt: dict | None = Field(description="the e-receipt: receipt_no, verify_url, issued_at")


class EvaluationSummary(BaseModel):
    level: int
    level_label: str
    tags: list[str]
    active: bool = Field(description="false: the default 基本满意 given after 7 days without a rating")
    channel: str
    created_at: str
    rectification_status: str | None
    awaiting_answer: bool = Field(description="the department replied to a bad review: answer satisfied or not")


class CaseDetail(CaseSummary):
    timeline: list[TimelineEntry]
    next_action: NextAction | None
    promised_date: str
    overdue: bool
    result: dict | None = Field(description="kind, licence_no or tracking_no once issued")
    fee_fen: int | None
    fee: FeeView | None
    evaluation: EvaluationSummary | None
    evaluation_invited: bool = Field(description="the case may be rated now")


class WithdrawIn(BaseModel):
    reason: str = Field("", max_length=200)


class ResubmitIn(BaseModel):
    fields: dict[str, Any] = Field(
        default_factory=dict, description='corrected answers by path, e.g. {"applicant.phone": "..."}'
    )
    materials: dict[str, list[str]] = Field(default_factory=dict, description="re-uploaded material ids by slot")


@bp.get("/")
@document(
    summary="My cases, newest first (keyset pages)", tag="cases", query=ListQuery, response=CaseList, errors=(401, 422)
)
@citizen
async def mine(request: Request) -> HTTPResponse:
    query = query_args(request, ListQuery)
    return json(await views.list_mine(user=request.ctx.user, before=query.before, limit=query.limit))


@bp.get("/<case_no:str>")
@document(
    summary="One of my cases: timeline, next action, promised date, fee",
    tag="cases",
    response=CaseDetail,
    errors=(401, 404),
)
@citizen
async def read(request: Request, case_no: str) -> HTTPResponse:
    return json(await views.view_mine(user=request.ctx.user, case_no=case_no))


@bp.post("/<case_no:str>/withdraw")
@document(
    summary="Withdraw a case not yet accepted",
    tag="cases",
    body=WithdrawIn,
    body_required=False,
    response=CaseDetail,
    errors=(401, 404, 409, 422),
)
@citizen
async def withdraw(request: Request, case_no: str) -> HTTPResponse:
    body = json_body(request, WithdrawIn) if request.body else WithdrawIn()
    services = Services.of(request)
    return json(
        await withdrawal.withdraw(
            user=request.ctx.user, case_no=case_no, reason=body.reason, platform=services.platform, kicks=services.kicks
        )
    )


@bp.post("/<case_no:str>/resubmit")
@document(
    summary="Resubmit after correcting exactly the listed fields and materials",
    tag="cases",
    body=ResubmitIn,
    response=CaseDetail,
    errors=(401, 404, 409, 422),
)
@citizen
async def resubmit(request: Request, case_no: str) -> HTTPResponse:
    body = json_body(request, ResubmitIn)
    services = Services.of(request)
    return json(
        await resubmission.resubmit(
            user=request.ctx.user,
            case_no=case_no,
            fields=body.fields,
            materials=body.materials,
            cipher=services.cipher,
            kicks=services.kicks,
        )
    )

"""`/console/api/cases`: an official's case search (by number, status, service; keyset pages and a
CSV export), one case in full (timeline, pushes, materials, payments; audited, the applicant masked
unless revealed with a reason), its pushes, and a watermarked, audited copy of a material.
Another department's case is `404`, and never listed."""

from __future__ import annotations

from pydantic import BaseModel, Field
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json, raw

from console.csvstream import stream_csv
from console.deps import SESSION, SESSION_AND_CSRF, official
from container import Services
from core.http import INT64_MAX, client_ip, file_headers, query_args, request_id
from core.openapi import document, secure
from handlers.cases import search as case_search
from handlers.cases.views import pushes_for_official
from handlers.materials.service import official_copy
from storage.models import CaseStatus

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


class SearchFilters(BaseModel):
    q: str | None = Field(
        None, max_length=32, pattern=r"^[A-Za-z0-9]*$", description="a case number, or its beginning (e.g. ZB20261130)"
    )
    status: CaseStatus | None = None
    service: str | None = Field(None, min_length=1, max_length=64, description="a service item code")
    department: str | None = Field(None, min_length=1, max_length=128, description="admins only: one department")


class SearchQuery(SearchFilters):
    before: int | None = Field(None, ge=1, le=INT64_MAX, description="cursor: the next_cursor of the previous page")
    limit: int = Field(50, ge=1, le=200)


class CaseRow(BaseModel):
    case_no: str
    service_code: str
    service_name: str
    department: str
    status: str
    status_label: str
    bundle_no: str | None
    submitted_at: str
    overdue: bool
    fee_fen: int | None
    fee_paid: bool


class CasePage(BaseModel):
    items: list[CaseRow]
    next_cursor: int | None = Field(description="pass as `before` for the next page; null on the last")


class ViewQuery(BaseModel):
    reason: str | None = Field(
        None,
        min_length=4,
        max_length=200,
        description="role personal_data: why the official looks; the applicant and the form are then shown in clear",
    )


class ApplicantOut(BaseModel):
    user_id: int
    identity_level: str
    name: str | None
    id_number: str | None
    phone: str | None
    masked: bool


class EventOut(BaseModel):
    id: int
    at: str
    actor_type: str
    from_status: str | None
    status: str
    label: str
    note: str
    data: dict


class MaterialOut(BaseModel):
    slot: str
    id: str
    present: bool
    kind: str | None
    mime: str | None
    size: int | None
    pages: int | None
    locked: bool
    valid_until: str | None


class OrderOut(BaseModel):
    payment_id: str
    out_trade_no: str
    channel: str
    amount_fen: int
    status: str
    status_label: str
    created_at: str
    paid_at: str | None
    refunded_fen: int
    refunds: int


class PaymentsOut(BaseModel):
    fee: dict | None = Field(description="the case's fee: amount_fen, notice_no, paid, paid_at, payment, receipt")
    orders: list[OrderOut]


class CaseOut(CaseRow):
    service_version: int
    promised_date: str
    platform_case_id: str | None
    applicant: ApplicantOut
    form: dict | None = Field(description="the form as submitted, only in a clear view (with a reason)")
    timeline: list[EventOut]
    pushes: list[NotificationOut]
    materials: list[MaterialOut]
    payments: PaymentsOut


CSV_COLUMNS = (
    ("case_no", "办件编号"),
    ("service_name", "事项"),
    ("service_code", "事项编码"),
    ("department", "部门"),
    ("status_label", "状态"),
    ("submitted_at", "提交时间"),
    ("overdue", "已超期"),
    ("fee_fen", "费用（分）"),
    ("fee_paid", "已缴费"),
)


@bp.get("/")
@document(
    summary="Search my department's cases by number (or its beginning), status and service; newest first",
    tag="console",
    query=SearchQuery,
    response=CasePage,
    errors=(401, 422),
)
@official
async def listing(request: Request) -> HTTPResponse:
    query = query_args(request, SearchQuery)
    data = await case_search.search(
        official=request.ctx.session.official,
        q=query.q,
        status=query.status.value if query.status else None,
        service=query.service,
        department=query.department,
        before=query.before,
        limit=query.limit,
    )
    return json(data, headers={"Cache-Control": "no-store"})


@bp.get("/export")
@document(
    summary="The same search as CSV (at most 10,000 rows, newest first; the export is audited)",
    tag="console",
    query=SearchFilters,
    response=None,
    content_type="text/csv",
    errors=(401, 422),
)
@official
async def export(request: Request) -> None:
    query = query_args(request, SearchFilters)
    rows = await case_search.export(
        official=request.ctx.session.official,
        q=query.q,
        status=query.status.value if query.status else None,
        service=query.service,
        department=query.department,
        ip=client_ip(request),
        request_id=request_id(request),
    )
    await stream_csv(request, stem="cases", columns=CSV_COLUMNS, rows=rows)


@bp.get("/<case_no:str>")
@document(
    summary="One case in full: timeline, pushes, materials, payments (audited; ?reason= reveals the applicant)",
    tag="console",
    query=ViewQuery,
    response=CaseOut,
    errors=(401, 403, 404, 422),
)
@official
async def case(request: Request, case_no: str) -> HTTPResponse:
    query = query_args(request, ViewQuery)
    data = await case_search.view(
        official=request.ctx.session.official,
        case_no=case_no,
        reason=query.reason,
        cipher=Services.of(request).cipher,
        ip=client_ip(request),
        request_id=request_id(request),
    )
    return json(data, headers={"Cache-Control": "no-store"})


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

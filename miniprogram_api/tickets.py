"""`/api/v1/tickets`: the citizen's consultations (咨询) and complaints (投诉), and their rating of the answer."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, StrictInt, field_validator
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from container import Services
from core.http import INT64_MAX, json_body, query_args
from core.openapi import BEARER, document, secure
from miniprogram_api.deps import citizen

bp = Blueprint("mp_tickets", url_prefix="/api/v1/tickets")
secure(bp, BEARER)
PRIVATE = {"Cache-Control": "no-store"}


class TicketIn(BaseModel):
    kind: Literal["consultation", "complaint"]
    content: str = Field(min_length=4, max_length=2000, description="the question or the complaint, 4-2000 characters")
    service_code: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    case_no: str | None = Field(None, min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_-]+$")

    @field_validator("content")
    @classmethod
    def _content(cls, value: str) -> str:
        value = value.strip()
        if len(value) < 4:
            raise ValueError("请写明具体内容（至少 4 个字）")
        return value


class ListQuery(BaseModel):
    before: int | None = Field(None, ge=1, le=INT64_MAX, description="cursor: the next_cursor of the previous page")
    limit: int = Field(20, ge=1, le=100)


class RatingIn(BaseModel):
    level: StrictInt = Field(ge=1, le=5, description="5 非常满意 ... 1 非常不满意")


class TicketOut(BaseModel):
    ticket_no: str
    kind: str
    kind_label: str
    channel: str
    status: str
    department: str
    service_code: str | None
    case_no: str | None
    content: str
    created_at: str | None
    due_at: str | None
    answer: str | None
    answered_at: str | None
    rating: int | None
    rated_at: str | None


class TicketPage(BaseModel):
    items: list[TicketOut]
    next_cursor: int | None


@bp.post("/")
@document(
    summary="Ask a question or complain: routed to a department, answered within the working days given by due_at",
    tag="tickets",
    body=TicketIn,
    response=TicketOut,
    status=201,
    errors=(401, 404, 422),
)
@citizen
async def create(request: Request) -> HTTPResponse:
    body = json_body(request, TicketIn)
    ticket = await Services.of(request).tickets.create(
        user=request.ctx.user,
        kind=body.kind,
        content=body.content,
        service_code=body.service_code,
        case_no=body.case_no,
    )
    return json(ticket, status=201, headers=PRIVATE)


@bp.get("/")
@document(
    summary="My consultations and complaints, newest first, with their answers",
    tag="tickets",
    query=ListQuery,
    response=TicketPage,
    errors=(401, 422),
)
@citizen
async def mine(request: Request) -> HTTPResponse:
    query = query_args(request, ListQuery)
    data = await Services.of(request).tickets.mine(user=request.ctx.user, before=query.before, limit=query.limit)
    return json(data, headers=PRIVATE)


@bp.post("/<ticket_no:str>/rating")
@document(
    summary="Rate the answer to my consultation or complaint, once",
    tag="tickets",
    body=RatingIn,
    response=TicketOut,
    errors=(401, 404, 409, 422),
)
@citizen
async def rate(request: Request, ticket_no: str) -> HTTPResponse:
    body = json_body(request, RatingIn)
    data = await Services.of(request).tickets.rate(user=request.ctx.user, ticket_no=ticket_no, level=body.level)
    return json(data, headers=PRIVATE)

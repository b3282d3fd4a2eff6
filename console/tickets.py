"""`/console/api/tickets`: a department's consultations and complaints: list with countdowns, read
(audited), answer, reassign (supervisor). Another department's ticket is `404`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from console.deps import SESSION, SESSION_AND_CSRF, official
from container import Services
from core.http import client_ip, json_body, query_args, request_id
from core.openapi import document, secure

bp = Blueprint("console_tickets", url_prefix="/console/api/tickets")
secure(bp, SESSION, unsafe=SESSION_AND_CSRF)
PRIVATE = {"Cache-Control": "no-store"}


class ListQuery(BaseModel):
    kind: Literal["consultation", "complaint"] | None = None
    status: Literal["open", "answered", "closed"] | None = None
    overdue: bool | None = Field(None, description="only open tickets past their deadline (true), or the rest")
    escalated: bool | None = Field(None, description="only tickets escalated to the supervisors (true), or not (false)")
    department: str | None = Field(None, max_length=128, description="admins only: one department's tickets")
    limit: int = Field(50, ge=1, le=200)
    after: str | None = Field(
        None, max_length=40, pattern=r"^\d{1,17}-\d{1,19}$", description="cursor: the next_cursor of the previous page"
    )


class AnswerIn(BaseModel):
    answer: str = Field(min_length=2, max_length=2000, description="the department's answer, sent to the citizen")

    @field_validator("answer")
    @classmethod
    def _answer(cls, value: str) -> str:
        value = value.strip()
        if len(value) < 2:
            raise ValueError("答复内容不能为空")
        return value


class ReassignIn(BaseModel):
    department: str = Field(min_length=1, max_length=128, description="the department's name, as in the catalogue")
    reason: str = Field(min_length=2, max_length=500)


@bp.get("/")
@document(
    summary="My department's consultations and complaints, soonest deadline first, with countdowns",
    tag="console",
    query=ListQuery,
    errors=(401, 403, 422),
)
@official
async def listing(request: Request) -> HTTPResponse:
    query = query_args(request, ListQuery)
    data = await Services.of(request).tickets.list_for(
        official=request.ctx.session.official,
        kind=query.kind,
        status=query.status,
        overdue=query.overdue,
        escalated=query.escalated,
        department=query.department,
        limit=query.limit,
        after=query.after,
    )
    return json(data, headers=PRIVATE)


@bp.get("/<ticket_no:str>")
@document(
    summary="One ticket: the citizen's text and the answer in clear, every step (the read is audited)",
    tag="console",
    errors=(401, 403, 404),
)
@official
async def read(request: Request, ticket_no: str) -> HTTPResponse:
    data = await Services.of(request).tickets.read_for(
        official=request.ctx.session.official,
        ticket_no=ticket_no,
        ip=client_ip(request),
        request_id=request_id(request),
    )
    return json(data, headers=PRIVATE)


@bp.post("/<ticket_no:str>/answer")
@document(
    summary="Answer a ticket (officer): the answer goes to the citizen through the channel they used",
    tag="console",
    body=AnswerIn,
    errors=(401, 403, 404, 409, 422),
)
@official
async def answer(request: Request, ticket_no: str) -> HTTPResponse:
    body = json_body(request, AnswerIn)
    data = await Services.of(request).tickets.answer(
        official=request.ctx.session.official,
        ticket_no=ticket_no,
        text=body.answer,
        ip=client_ip(request),
        request_id=request_id(request),
    )
    return json(data, headers=PRIVATE)


@bp.post("/<ticket_no:str>/reassign")
@document(
    summary="Hand an open ticket to another department (supervisor); the deadline stays",
    tag="console",
    body=ReassignIn,
    errors=(401, 403, 404, 409, 422),
)
@official
async def reassign(request: Request, ticket_no: str) -> HTTPResponse:
    body = json_body(request, ReassignIn)
    data = await Services.of(request).tickets.reassign(
        official=request.ctx.session.official,
        ticket_no=ticket_no,
        department=body.department,
        reason=body.reason,
        ip=client_ip(request),
        request_id=request_id(request),
    )
    return json(data, headers=PRIVATE)

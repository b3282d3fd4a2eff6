"""`/console/api/audit`: the audit trail, searched by official, citizen, action and date, with keyset
pages and a CSV export. Admins read every row; a supervisor reads their department's officials' rows
(see `handlers.audit_search`)."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, Field
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from console.csvstream import stream_csv
from console.deps import SESSION, SESSION_AND_CSRF, official
from core.http import INT64_MAX, client_ip, query_args, request_id
from core.openapi import document, secure
from handlers import audit_search

bp = Blueprint("console_audit", url_prefix="/console/api/audit")
secure(bp, SESSION, unsafe=SESSION_AND_CSRF)


class AuditFilters(BaseModel):
    official: str | None = Field(
        None, min_length=1, max_length=64, description="an official's username: what that official did or read"
    )
    citizen: int | None = Field(
        None, ge=1, le=INT64_MAX, description="a citizen's user id: rows about them, their cases, tickets, materials"
    )
    action: str | None = Field(
        None,
        max_length=64,
        pattern=r"^[a-z_][a-z0-9_.]*\*?$",
        description="an action (e.g. personal_data.read), or a prefix ending in * (e.g. case.*)",
    )
    since: dt.date | None = Field(None, description="first day, China time (YYYY-MM-DD)")
    until: dt.date | None = Field(None, description="last day, China time (YYYY-MM-DD), not before `since`")


class AuditQuery(AuditFilters):
    before: int | None = Field(None, ge=1, le=INT64_MAX, description="cursor: the next_cursor of the previous page")
    limit: int = Field(50, ge=1, le=200)


class AuditRow(BaseModel):
    id: int
    at: str
    actor_type: str = Field(description="citizen | official | platform | system ...")
    actor_id: str | None
    actor_username: str | None = Field(description="the official's username, when an official acted")
    actor_name: str | None
    action: str
    target_type: str | None
    target_id: str | None
    ip: str | None
    request_id: str | None
    detail: dict = Field(description="what the row records besides: the reason given, the fields read ...")


class AuditPage(BaseModel):
    items: list[AuditRow]
    next_cursor: int | None = Field(description="pass as `before` for the next page; null on the last")


CSV_COLUMNS = (
    ("id", "编号"),
    ("at", "时间"),
    ("actor_type", "操作者类型"),
    ("actor_id", "操作者编号"),
    ("actor_username", "工作人员账号"),
    ("actor_name", "工作人员姓名"),
    ("action", "操作"),
    ("target_type", "对象类型"),
    ("target_id", "对象编号"),
    ("ip", "IP 地址"),
    ("request_id", "请求编号"),
    ("detail", "详情"),
)


def _filters(query: AuditFilters) -> dict:
    return {
        "actor": query.official,
        "citizen": query.citizen,
        "action": query.action,
        "since": query.since,
        "until": query.until,
    }


@bp.get("/")
@document(
    summary="Search the audit trail (admin: every row; supervisor: the department's officials), newest first",
    tag="console",
    query=AuditQuery,
    response=AuditPage,
    errors=(401, 403, 422),
)
@official
async def listing(request: Request) -> HTTPResponse:
    query = query_args(request, AuditQuery)
    data = await audit_search.search(
        official=request.ctx.session.official, before=query.before, limit=query.limit, **_filters(query)
    )
    return json(data, headers={"Cache-Control": "no-store"})


@bp.get("/export")
@document(
    summary="The same search as CSV (at most 50,000 rows, newest first; the export is itself audited)",
    tag="console",
    query=AuditFilters,
    response=None,
    content_type="text/csv",
    errors=(401, 403, 422),
)
@official
async def export(request: Request) -> None:
    query = query_args(request, AuditFilters)
    rows = await audit_search.export(
        official=request.ctx.session.official, ip=client_ip(request), request_id=request_id(request), **_filters(query)
    )
    await stream_csv(request, stem="audit", columns=CSV_COLUMNS, rows=rows)

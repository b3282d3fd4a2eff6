"""`/console/cases`: the case search (by number or its beginning, status, service; keyset pages;
CSV) and `/console/cases/{case_no}`: one case with its timeline, pushes, materials and payments.
Every view is audited by the use case; another department's case is the 404 page."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from console.pages.base import page, render
from container import Services
from core.errors import ValidationFailed
from core.http import client_ip, request_id
from handlers.cases import search as case_search
from handlers.cases.lifecycle import STATUS_LABELS

bp = Blueprint("console_pages_cases", url_prefix="/console")
STATUSES = [("", "全部状态")] + [(status.value, label) for status, label in STATUS_LABELS.items()]
FILTERS = ("q", "status", "service")
ACTORS = {"citizen": "申请人", "official": "工作人员", "platform": "审批平台", "system": "系统"}
CHANNELS = {"subscribe": "订阅消息", "template": "模板消息", "custom": "客服消息", "inbox": "站内消息"}


def _filters(request: Request) -> dict[str, str]:
    return {name: request.args.get(name, "").strip() for name in FILTERS}


def _cursor(request: Request) -> int | None:
    value = request.args.get("before", "")
    return int(value) if value.isdigit() and 0 < len(value) < 19 else None


@bp.get("/cases")
@page("officer", "supervisor")
async def listing(request: Request) -> HTTPResponse:
    filters = _filters(request)
    given = {k: v for k, v in filters.items() if v}
    problems, result = [], {"items": [], "next_cursor": None}
    if filters["status"] and filters["status"] not in {value for value, _ in STATUSES}:
        problems.append({"path": "状态", "message": "没有这个状态"})
        given.pop("status")
    try:
        result = await case_search.search(
            official=request.ctx.session.official,
            q=given.get("q"),
            status=given.get("status"),
            service=given.get("service"),
            before=_cursor(request),
            limit=50,
        )
    except ValidationFailed as exc:
        problems += [{"path": "办件编号", "message": message} for message in exc.details["fields"].values()]
    next_url = None
    if result["next_cursor"] is not None:
        next_url = "/console/cases?" + urlencode({**given, "before": result["next_cursor"]})
    return render(
        request,
        "cases.html",
        status=422 if problems else 200,
        filters=filters,
        statuses=STATUSES,
        cases=result["items"],
        problems=problems,
        next_url=next_url,
        export_url="/console/api/cases/export" + ("?" + urlencode(given) if given else ""),
    )


@bp.get("/cases/<case_no:str>")
@page("officer", "supervisor")
async def detail(request: Request, case_no: str) -> HTTPResponse:
    official = request.ctx.session.official
    reason = request.args.get("reason", "").strip() or None
    case = await case_search.view(
        official=official,
        case_no=case_no,
        reason=reason,
        cipher=Services.of(request).cipher,
        ip=client_ip(request),
        request_id=request_id(request),
    )
    return render(
        request,
        "case.html",
        case=case,
        form_text=json.dumps(case["form"], ensure_ascii=False, indent=2) if case["form"] else "",
        actors=ACTORS,
        channels=CHANNELS,
        may_reveal="personal_data" in (official.roles or []),
        reason=reason or "",
    )

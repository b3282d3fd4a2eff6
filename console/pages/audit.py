"""`/console/audit`: the audit trail searched by official, citizen, action and date (admin: every
row; supervisor: the department's officials), with a next-page link and the CSV export."""

from __future__ import annotations

import json
from datetime import date
from urllib.parse import urlencode

from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from console.pages.base import page, render
from core.errors import ValidationFailed
from handlers import audit_search

bp = Blueprint("console_pages_audit", url_prefix="/console")
FILTERS = ("official", "citizen", "action", "since", "until")
LABELS = {
    "official": "工作人员账号",
    "citizen": "公民用户编号",
    "action": "操作",
    "since": "开始日期",
    "until": "结束日期",
}


def _text(detail: dict) -> str:
    return json.dumps(detail, ensure_ascii=False, sort_keys=True) if detail else ""


def _number(value: str) -> int | None:
    return int(value) if value.isdigit() and 0 < len(value) < 19 and int(value) > 0 else None


def _parsed(filters: dict[str, str]) -> tuple[dict, list[dict]]:
    """The use case's arguments from the form, and a problem for each field it cannot read."""
    args: dict = {}
    problems = []
    if filters["official"]:
        args["actor"] = filters["official"][:64]
    if filters["citizen"]:
        if (citizen := _number(filters["citizen"])) is None:
            problems.append({"path": LABELS["citizen"], "message": "请输入数字编号"})
        args["citizen"] = citizen
    if filters["action"]:
        args["action"] = filters["action"]
    for name in ("since", "until"):
        if filters[name]:
            try:
                args[name] = date.fromisoformat(filters[name])
            except ValueError:
                problems.append({"path": LABELS[name], "message": "日期格式应为 YYYY-MM-DD"})
    return {k: v for k, v in args.items() if v is not None}, problems


@bp.get("/audit")
@page("supervisor")
async def listing(request: Request) -> HTTPResponse:
    filters = {name: request.args.get(name, "").strip() for name in FILTERS}
    given = {k: v for k, v in filters.items() if v}
    args, problems = _parsed(filters)
    result = {"items": [], "next_cursor": None}
    if not problems:
        try:
            result = await audit_search.search(
                official=request.ctx.session.official, before=_number(request.args.get("before", "")), limit=50, **args
            )
        except ValidationFailed as exc:
            problems = [{"path": LABELS.get(k, k), "message": m} for k, m in exc.details["fields"].items()]
    next_url = None
    if result["next_cursor"] is not None:
        next_url = "/console/audit?" + urlencode({**given, "before": result["next_cursor"]})
    return render(
        request,
        "audit.html",
        status=422 if problems else 200,
        filters=filters,
        rows=[{**row, "detail_text": _text(row["detail"])} for row in result["items"]],
        problems=problems,
        next_url=next_url,
        export_url="/console/api/audit/export" + ("?" + urlencode(given) if given else ""),
    )

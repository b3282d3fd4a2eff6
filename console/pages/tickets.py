"""`/console/tickets`: the department's consultations and complaints with countdowns (CSV too), and
`/console/tickets/{ticket_no}`: one ticket (the read audited) with the answer form. On the use
cases of `handlers.tickets`; another department's ticket is the 404 page."""

from __future__ import annotations

from urllib.parse import urlencode

from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from console.pages.base import csv_response, form_value, page, redirect_to, render
from container import Services
from core.errors import Conflict
from core.http import client_ip, request_id

bp = Blueprint("console_pages_tickets", url_prefix="/console")
KINDS = [("", "全部类型"), ("consultation", "咨询"), ("complaint", "投诉")]
STATUSES = [("open", "待答复"), ("answered", "已答复"), ("closed", "已关闭"), ("", "全部")]
STATUS_LABELS = {"open": "待答复", "answered": "已答复", "closed": "已关闭"}
PAGE = 50
EXPORT_MAX = 10_000
ACTIONS = {
    "created": "提交",
    "answered": "答复",
    "reassigned": "转办",
    "reminded": "临期提醒",
    "escalated": "超期上报",
    "rated": "群众评分",
}
CHANNELS = {"miniprogram": "小程序", "official_account": "公众号"}


def _choice(request: Request, name: str, options: list[tuple[str, str]], default: str) -> str:
    value = request.args.get(name, default)
    return value if value in {v for v, _ in options} else default


@bp.get("/tickets")
@page("officer", "supervisor")
async def listing(request: Request) -> HTTPResponse:
    kind = _choice(request, "kind", KINDS, "")
    status = _choice(request, "status", STATUSES, "open")
    tickets, official = Services.of(request).tickets, request.ctx.session.official
    filters = {"official": official, "kind": kind or None, "status": status or None}
    query = urlencode({"kind": kind, "status": status})
    if request.args.get("format") == "csv":
        return csv_response("tickets.csv", CSV_HEADER, [_csv_row(t) async for t in _every(tickets, filters)])
    found = await tickets.list_for(**filters, limit=PAGE, after=request.args.get("after") or None)
    return render(
        request,
        "tickets.html",
        tickets=found["items"],
        kinds=KINDS,
        statuses=STATUSES,
        chosen_status=status,
        kind=kind,
        status_labels=STATUS_LABELS,
        next_url=f"/console/tickets?{query}&after={found['next_cursor']}" if found["next_cursor"] else None,
        export_url=f"/console/tickets?{query}&format=csv",
    )


async def _every(tickets, filters: dict):
    """Every ticket of the filters, page after page (keyset), at most `EXPORT_MAX`."""
    after, sent = None, 0
    while sent < EXPORT_MAX:
        found = await tickets.list_for(**filters, limit=500, after=after)
        for item in found["items"]:
            yield item
        sent += len(found["items"])
        after = found["next_cursor"]
        if after is None:
            return


CSV_HEADER = ["编号", "类型", "状态", "部门", "办件编号", "提交时间", "答复期限", "已超期", "答复时间", "评分"]


def _csv_row(t: dict) -> list:
    return [
        t["ticket_no"],
        t["kind_label"],
        STATUS_LABELS.get(t["status"], t["status"]),
        t["department"],
        t["case_no"] or "",
        t["created_at"],
        t["due_at"] or "",
        "是" if t["overdue"] else "否",
        t["answered_at"] or "",
        t["rating"] or "",
    ]


async def _ticket_page(request: Request, ticket_no: str, *, status: int = 200, problems=None, answer: str = ""):
    ticket = await Services.of(request).tickets.read_for(
        official=request.ctx.session.official,
        ticket_no=ticket_no,
        ip=client_ip(request),
        request_id=request_id(request),
    )
    return render(
        request,
        "ticket.html",
        status=status,
        ticket=ticket,
        status_labels=STATUS_LABELS,
        actions=ACTIONS,
        channels=CHANNELS,
        problems=problems or [],
        answer=answer,
    )


@bp.get("/tickets/<ticket_no:str>")
@page("officer", "supervisor")
async def detail(request: Request, ticket_no: str) -> HTTPResponse:
    return await _ticket_page(request, ticket_no)


@bp.post("/tickets/<ticket_no:str>/answer")
@page("officer", "supervisor")
async def answer(request: Request, ticket_no: str) -> HTTPResponse:
    text = form_value(request, "answer")
    if not 2 <= len(text) <= 2000:
        problem = {"path": "答复内容", "message": "请填写答复内容（2至2000字）"}
        return await _ticket_page(request, ticket_no, status=422, problems=[problem], answer=text)
    try:
        await Services.of(request).tickets.answer(
            official=request.ctx.session.official,
            ticket_no=ticket_no,
            text=text,
            ip=client_ip(request),
            request_id=request_id(request),
        )
    except Conflict as exc:
        return await _ticket_page(request, ticket_no, status=409, problems=[{"path": "", "message": exc.message}])
    return redirect_to(request, f"/console/tickets/{ticket_no}", flash=f"已答复 {ticket_no}，答复已发送给群众")

"""`/console/reviews`: the department's bad reviews (差评) with countdowns to their next deadline
(CSV too), and `/console/reviews/{id}`: one review (the read audited) with the forms of the loop:
call-back (回访), rectification (整改), exclusion request (申诉); a supervisor also decides
exclusions and reassigns. On the use cases of `handlers.evaluation.loop`."""

from __future__ import annotations

from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from console.pages.base import csv_response, form_value, page, redirect_to, render
from container import Services
from core.errors import Conflict, Unprocessable
from core.http import client_ip, request_id

bp = Blueprint("console_pages_reviews", url_prefix="/console")
STATUS_LABELS = {
    "verifying": "待核实回访",
    "rectifying": "整改中",
    "awaiting_citizen": "待群众确认",
    "closed": "已办结",
    "excluded": "不计入",
}
STATUSES = [("", "未办结")] + list(STATUS_LABELS.items()) + [("all", "全部")]
ACTIONS = {
    "created": "收到差评",
    "verified": "核实回访",
    "rectified": "报告整改",
    "citizen_satisfied": "群众满意",
    "citizen_not_satisfied": "群众不满意",
    "reminded": "临期提醒",
    "escalated": "超期上报",
    "exclusion_requested": "申诉",
    "exclusion_approved": "申诉通过",
    "exclusion_refused": "申诉未通过",
    "reassigned": "转办",
}
LIVE = ("verifying", "rectifying", "awaiting_citizen")
DEADLINES = {"verify": "核实回访期限", "rectify": "整改期限"}
# What each form posts: (field, label, the use case's method, what the citizen is told).
STEPS = {
    "verify": ("note", "回访情况", "已记录回访，回访情况已告知群众"),
    "rectify": ("text", "整改情况", "已报告整改，群众将确认是否满意"),
    "exclusion": ("reason", "申诉理由", "已提交申诉，等待科室负责人审核"),
    "decision": ("reason", "审核意见", "已审核申诉，结果已告知群众"),
    "reassign": ("reassign_reason", "转办理由", "已转办"),
}


def _loop(request: Request):
    return Services.of(request).rectifications


@bp.get("/reviews")
@page("officer", "supervisor")
async def listing(request: Request) -> HTTPResponse:
    status = request.args.get("status", "")
    status = status if status in {v for v, _ in STATUSES} else ""
    found = await _loop(request).list_for(
        official=request.ctx.session.official, status=None if status in ("", "all") else status
    )
    items = [i for i in found["items"] if status != "" or i["status"] in LIVE]
    if request.args.get("format") == "csv":
        header = ["编号", "办件编号", "事项", "部门", "评价", "状态", "轮次", "下一期限", "期限时间", "已超期", "申诉"]
        rows = [
            [
                i["id"],
                i["case_no"],
                i["service_name"],
                i["department"],
                i["level_label"],
                STATUS_LABELS.get(i["status"], i["status"]),
                i["round"],
                DEADLINES.get(i["next_deadline"] or "", ""),
                i["next_due_at"] or "",
                "是" if i["overdue"] else "否",
                i["exclusion"],
            ]
            for i in items
        ]
        return csv_response("reviews.csv", header, rows)
    return render(
        request,
        "reviews.html",
        reviews=items,
        statuses=STATUSES,
        chosen_status=status,
        status_labels=STATUS_LABELS,
        deadlines=DEADLINES,
        export_url=f"/console/reviews?status={status}&format=csv",
    )


async def _review_page(request: Request, rect_id: int, *, status: int = 200, problems=None, values=None):
    official = request.ctx.session.official
    review = await _loop(request).view(
        official=official, rect_id=rect_id, ip=client_ip(request), request_id=request_id(request)
    )
    roles = set(official.roles or [])
    return render(
        request,
        "review.html",
        status=status,
        review=review,
        status_labels=STATUS_LABELS,
        actions=ACTIONS,
        deadlines=DEADLINES,
        live=review["status"] in LIVE,
        supervisor=bool(roles & {"supervisor", "admin"}),
        problems=problems or [],
        values=values or {},
    )


@bp.get("/reviews/<rect_id:int>")
@page("officer", "supervisor")
async def detail(request: Request, rect_id: int) -> HTTPResponse:
    return await _review_page(request, rect_id)


@bp.post("/reviews/<rect_id:int>/<step:str>")
@page("officer", "supervisor")
async def act(request: Request, rect_id: int, step: str) -> HTTPResponse:
    if step not in STEPS:
        return await _review_page(request, rect_id, status=404, problems=[{"path": "", "message": "没有这个操作"}])
    field, label, done = STEPS[step]
    value = form_value(request, field)
    shortest, longest = (2, 2000) if step in ("verify", "rectify") else (2, 500)
    if not shortest <= len(value) <= longest:
        problem = {"path": label, "message": f"请填写{label}（{shortest}至{longest}字）"}
        return await _review_page(request, rect_id, status=422, problems=[problem], values={step: value})
    loop, official = _loop(request), request.ctx.session.official
    try:
        if step == "verify":
            await loop.verify(official=official, rect_id=rect_id, note=value)
        elif step == "rectify":
            await loop.rectify(official=official, rect_id=rect_id, text=value)
        elif step == "exclusion":
            await loop.request_exclusion(official=official, rect_id=rect_id, reason=value)
        elif step == "decision":
            approve = form_value(request, "approve") == "1"
            await loop.decide_exclusion(official=official, rect_id=rect_id, approve=approve, reason=value)
        else:
            department = form_value(request, "department")
            await loop.reassign(official=official, rect_id=rect_id, department=department, reason=value)
            return redirect_to(request, "/console/reviews", flash=f"已转办至{department}")
    except (Conflict, Unprocessable) as exc:
        return await _review_page(
            request, rect_id, status=409, problems=[{"path": label, "message": exc.message}], values={step: value}
        )
    return redirect_to(request, f"/console/reviews/{rect_id}", flash=done)

"""`/console/notices`: compose a service notice, preview its audience, send or schedule it, follow
the send live and read the delivery report (officials with `publisher`; admin: all departments)."""

from __future__ import annotations

import datetime as dt

from pydantic import ValidationError
from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from console.notices import CASE_STATUSES, NoticeIn, ScheduleIn
from console.pages.base import csv_response, form_value, page, redirect_to, render
from container import Services
from core.china_time import CHINA
from core.errors import DomainError, Forbidden, NotFound, Unprocessable
from core.http import INT64_MAX, client_ip, request_id

bp = Blueprint("console_pages_notices", url_prefix="/console")
PUBLISHER = "publisher"

STATUS_NAMES = {"draft": "草稿", "scheduled": "已定时", "sending": "发送中", "sent": "已发送", "cancelled": "已取消"}
CASE_STATUS_NAMES = {
    "submitted": "已提交",
    "delivered_to_platform": "已推送平台",
    "accepted": "已受理",
    "in_review": "审查中",
    "correction_requested": "待补正",
    "resubmitted": "已补正",
    "approved": "已批准",
    "rejected": "不予批准",
    "result_issued": "已出结果",
    "closed": "已办结",
    "withdrawn": "已撤回",
}
AUDIENCE_NAMES = {
    "followers": "公众号全部关注者",
    "service": "办理某事项的群众",
    "theme": "订阅某主题的群众",
    "region": "某地区的群众",
}
FIELD_NAMES = {
    "title": "标题",
    "body": "正文",
    "link_kind": "链接类型",
    "link_target": "链接目标",
    "image_url": "图片地址",
    "audience": "受众",
    "kind": "受众类型",
    "service_code": "事项",
    "statuses": "办件状态",
    "theme": "主题",
    "region_code": "地区代码",
    "at": "发送时间",
}
assert set(CASE_STATUS_NAMES) == set(CASE_STATUSES.__args__)


def _problems(error: ValidationError) -> list[dict]:
    """Every problem of the form, each with the field it is about, in Chinese."""
    out = []
    for item in error.errors():
        path = " / ".join(FIELD_NAMES.get(str(part), str(part)) for part in item["loc"] if not isinstance(part, int))
        message = item["msg"].removeprefix("Value error, ")
        out.append({"path": path or "表单", "message": message})
    return out


def _form(request: Request) -> dict:
    names = ("title", "body", "link_kind", "link_target", "image_url", "kind", "service_code", "theme", "region_code")
    values = {name: form_value(request, name) for name in names}
    values["statuses"] = [s for s in (request.form.getlist("statuses") or []) if s in CASE_STATUS_NAMES]
    return values


def _notice_in(values: dict) -> NoticeIn:
    kind = values["kind"] or "followers"
    audience = {"kind": kind}
    if kind == "service":
        audience |= {"service_code": values["service_code"] or None, "statuses": values["statuses"]}
    elif kind == "theme":
        audience["theme"] = values["theme"] or None
    elif kind == "region":
        audience["region_code"] = values["region_code"] or None
    return NoticeIn(
        title=values["title"],
        body=values["body"],
        link_kind=values["link_kind"] or "none",
        link_target=values["link_target"],
        image_url=values["image_url"] or None,
        audience=audience,
    )


async def _choices(request: Request) -> dict:
    catalogue = Services.of(request).catalogue
    items = await catalogue.summaries()
    shared = await catalogue.shared()
    return {
        "services": [(i["code"], f"{i['name']}（{i['code']}）") for i in items],
        "themes": [(t["code"], t["name"]) for t in shared.get("themes", [])],
        "case_statuses": CASE_STATUS_NAMES,
        "audience_names": AUDIENCE_NAMES,
    }


@bp.get("/notices")
@page(PUBLISHER)
async def listing(request: Request) -> HTTPResponse:
    status = request.args.get("status") if request.args.get("status") in STATUS_NAMES else None
    before_arg = request.args.get("before", "")
    before = int(before_arg) if before_arg.isdigit() and 0 < int(before_arg) <= INT64_MAX else None
    notices = Services.of(request).notices
    official = request.ctx.session.official
    if request.args.get("format") == "csv":
        rows, cursor = [], before
        while True:
            data = await notices.list_for(official=official, status=status, department=None, before=cursor, limit=200)
            rows += [
                [
                    n["id"],
                    n["title"],
                    STATUS_NAMES.get(n["status"], n["status"]),
                    n["department"],
                    AUDIENCE_NAMES.get(n["audience"].get("kind"), ""),
                    n["progress"]["total"],
                    n["progress"]["sent"],
                    n["progress"]["failed"],
                    n["progress"]["skipped"],
                    n["scheduled_at"] or "",
                    n["finished_at"] or "",
                ]
                for n in data["items"]
            ]
            if not (cursor := data["next_cursor"]):
                break
        header = ["编号", "标题", "状态", "部门", "受众", "人数", "已发送", "失败", "跳过", "定时", "完成时间"]
        return csv_response("notices.csv", header, rows)
    data = await notices.list_for(official=official, status=status, department=None, before=before, limit=50)
    next_url = None
    if data["next_cursor"]:
        next_url = f"/console/notices?before={data['next_cursor']}" + (f"&status={status}" if status else "")
    return render(
        request,
        "notices.html",
        notices=data["items"],
        next_url=next_url,
        current_status=status,
        status_names=STATUS_NAMES,
        audience_names=AUDIENCE_NAMES,
    )


@bp.get("/notices/new")
@page(PUBLISHER)
async def compose(request: Request) -> HTTPResponse:
    return render(request, "notice_compose.html", form={"kind": "followers", "statuses": []}, **await _choices(request))


@bp.post("/notices/new")
@page(PUBLISHER)
async def compose_post(request: Request) -> HTTPResponse:
    values = _form(request)
    try:
        notice = _notice_in(values)
    except ValidationError as error:
        return render(
            request,
            "notice_compose.html",
            status=422,
            form=values,
            problems=_problems(error),
            **await _choices(request),
        )
    notices = Services.of(request).notices
    official = request.ctx.session.official
    audience = notice.audience.model_dump(exclude_none=True)
    if form_value(request, "action") == "preview":
        size = await notices.preview(official=official, audience_spec=audience)
        return render(
            request, "notice_compose.html", form=values, audience_size=size["total"], **await _choices(request)
        )
    created = await notices.create(
        official=official,
        title=notice.title,
        body=notice.body,
        audience_spec=audience,
        link_kind=notice.link_kind,
        link_target=notice.link_target,
        image_url=notice.image_url,
        department=None,
    )
    return redirect_to(request, f"/console/notices/{created['id']}", flash="草稿已保存，请核对受众人数后发送")


@bp.get("/notices/<notice_id:int>")
@page(PUBLISHER)
async def detail(request: Request, notice_id: int) -> HTTPResponse:
    notices = Services.of(request).notices
    official = request.ctx.session.official
    notice = await notices.view_for(official=official, notice_id=notice_id)
    size = None
    if notice["status"] in ("draft", "scheduled"):
        size = (await notices.preview_of(official=official, notice_id=notice_id))["total"]
    report = None
    if notice["status"] in ("sent", "cancelled", "sending"):
        report = await notices.report_for(official=official, notice_id=notice_id)
        if request.args.get("format") == "csv":
            rows = [[f.get("errcode"), f.get("errmsg", ""), f.get("count")] for f in report["failures"]]
            return csv_response(f"notice-{notice_id}-failures.csv", ["错误码", "说明", "人数"], rows)
    return render(
        request,
        "notice_detail.html",
        notice=notice,
        audience_size=size,
        report=report,
        status_names=STATUS_NAMES,
        audience_names=AUDIENCE_NAMES,
        case_statuses=CASE_STATUS_NAMES,
        default_at=(dt.datetime.now(CHINA) + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"),
    )


async def _act(request: Request, notice_id: int, action: str) -> HTTPResponse:
    notices = Services.of(request).notices
    official = request.ctx.session.official
    who = {"official": official, "notice_id": notice_id, "ip": client_ip(request), "request_id": request_id(request)}
    try:
        if action == "send":
            await notices.send_now(**who)
            flash = "已开始发送"
        elif action == "cancel":
            await notices.cancel(**who)
            flash = "已取消"
        else:
            try:
                at = ScheduleIn(at=form_value(request, "at")).at
            except ValidationError as error:
                raise Unprocessable(_problems(error)[0]["message"], code="validation_failed") from None
            await notices.schedule(at=at, **who)
            flash = "已设定发送时间"
    except DomainError as exc:
        if isinstance(exc, NotFound | Forbidden):
            raise
        return redirect_to(request, f"/console/notices/{notice_id}", flash=exc.message)
    return redirect_to(request, f"/console/notices/{notice_id}", flash=flash)


@bp.post("/notices/<notice_id:int>/send")
@page(PUBLISHER)
async def send(request: Request, notice_id: int) -> HTTPResponse:
    return await _act(request, notice_id, "send")


@bp.post("/notices/<notice_id:int>/schedule")
@page(PUBLISHER)
async def schedule(request: Request, notice_id: int) -> HTTPResponse:
    return await _act(request, notice_id, "schedule")


@bp.post("/notices/<notice_id:int>/cancel")
@page(PUBLISHER)
async def cancel(request: Request, notice_id: int) -> HTTPResponse:
    return await _act(request, notice_id, "cancel")

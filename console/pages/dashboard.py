"""`/console/` (the dashboard) and `/console/alerts` (what needs someone now): the figures of
handlers.dashboard as tables, charts drawn on the server (console.pages.charts) and a CSV export of
every table. An official without a dashboard role (a publisher, finance) gets the start page."""

from __future__ import annotations

import datetime as dt
from urllib.parse import urlencode

from pydantic import BaseModel, Field
from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from console.pages.base import csv_response, not_found, page, render
from console.pages.charts import bar_chart, share_bar
from container import Services
from core.china_time import CHINA
from core.http import query_args
from handlers import dashboard as use_case
from handlers.catalog.reader import published_departments
from handlers.scoping import ADMIN, OFFICER, SUPERVISOR, is_admin, roles_of

bp = Blueprint("console_pages_dashboard", url_prefix="/console")

CHANNELS = {"subscribe": "小程序订阅消息", "template": "公众号模板消息", "inbox": "站内消息"}
STATUSES = {
    "submitted": "已提交",
    "delivered_to_platform": "已推送审批部门",
    "accepted": "已受理",
    "in_review": "审核中",
    "resubmitted": "已补正",
}
LEVELS = {"5": "非常满意", "4": "满意", "3": "基本满意", "2": "不满意", "1": "非常不满意"}
KINDS = {"consultation": "咨询", "complaint": "投诉"}
DEADLINES = {"verify": "回访", "rectify": "整改"}


class RangeQuery(BaseModel):
    from_: dt.date | None = Field(None, alias="from")
    to: dt.date | None = None
    department: str | None = Field(None, min_length=1, max_length=128)


class DepartmentQuery(BaseModel):
    department: str | None = Field(None, min_length=1, max_length=128)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:g}"


def _when(iso: str | None) -> str:
    """An ISO timestamp as China time, to the minute."""
    if not iso:
        return ""
    return dt.datetime.fromisoformat(iso).astimezone(CHINA).strftime("%Y-%m-%d %H:%M")


def _yes(value: bool) -> str:
    return "是" if value else "否"


def _channel_row(c: dict) -> list:
    return [
        CHANNELS.get(c["channel"], c["channel"]),
        c["attempts"],
        c["delivered"],
        c["failed"],
        _pct(c["delivery_rate"]),
    ]


def _query(**params) -> str:
    kept = {k: v for k, v in params.items() if v}
    return "?" + urlencode(kept) if kept else ""


# -- the dashboard's tables (each shown on the page and exported as CSV) ------------------------


def summary_rows(d: dict) -> list[tuple[str, str]]:
    c, h, o, e, b = d["cases"], d["handling"], d["overdue"], d["evaluations"], d["bad_reviews"]
    n = d["pushes"]["notifications"]
    return [
        ("提交办件", f"{c['submitted']}"),
        ("全程网办办件", f"{c['fully_online']}"),
        ("全程网办占比", _pct(c["fully_online_share"])),
        ("办结（审批通过或不予通过）", f"{h['decided']}"),
        ("平均办理用时（工作日）", _num(h["average_working_days"])),
        ("平均承诺时限（工作日）", _num(h["average_promised_days"])),
        ("超期后办结", f"{h['decided_late']}"),
        ("按时办结率", _pct(h["on_time_rate"])),
        ("当前超期未办结", f"{o['open_overdue']}"),
        ("评价总数", f"{e['total']}"),
        ("好评率", _pct(e["good_rate"])),
        ("主动评价好评率", _pct(e["active_good_rate"])),
        ("未评价率", _pct(e["unrated_rate"])),
        ("差评整改率", _pct(b["rectification_rate"])),
        ("整改按时率", _pct(b["on_time_rate"])),
        ("推送触达率（微信）", _pct(n["reach_rate"])),
    ]


def table_of(name: str, d: dict) -> tuple[list[str], list[list]] | None:
    """The header and rows of one of the dashboard's tables, by name."""
    if name == "summary":
        return ["指标", "数值"], [list(r) for r in summary_rows(d)]
    if name == "days":
        return ["日期", "提交办件", "全程网办"], [
            [x["day"], x["submitted"], x["fully_online"]] for x in d["cases"]["per_day"]
        ]
    if name == "overdue":
        return ["办件编号", "事项", "状态", "提交时间", "承诺办结日期"], [
            [
                x["case_no"],
                x["service_name"],
                STATUSES.get(x["status"], x["status"]),
                _when(x["submitted_at"]),
                x["promised_date"],
            ]
            for x in d["overdue"]["oldest"]
        ]
    if name == "levels":
        levels = d["evaluations"]["by_level"]
        return ["评价等级", "全部", "主动评价"], [
            [f"{level} {LEVELS[level]}", levels[level]["all"], levels[level]["active"]]
            for level in ("5", "4", "3", "2", "1")
        ]
    if name == "channels":
        return ["渠道", "推送次数", "送达", "失败", "送达率"], [_channel_row(c) for c in d["pushes"]["channels"]]
    return None


DASHBOARD_TABLES = ("summary", "days", "overdue", "levels", "channels")


def charts(d: dict):
    days = d["cases"]["per_day"]
    c = d["cases"]
    levels = d["evaluations"]["by_level"]
    channels = d["pushes"]["channels"]
    labels, values, bad = [], [], []
    for ch in channels:
        name = CHANNELS.get(ch["channel"], ch["channel"])
        labels += [f"{name} 送达", f"{name} 失败"]
        values += [ch["delivered"], ch["failed"]]
        bad += [False, True]
    return {
        "days": bar_chart("每日提交办件量", [x["day"][5:] for x in days], [x["submitted"] for x in days], unit="件"),
        "online": share_bar(
            "全程网办办件占比", [("全程网办", c["fully_online"]), ("其他", c["submitted"] - c["fully_online"])]
        ),
        "levels": bar_chart(
            "各评价等级数量",
            [LEVELS[level] for level in ("5", "4", "3", "2", "1")],
            [levels[level]["all"] for level in ("5", "4", "3", "2", "1")],
            unit="条",
            bad=[False, False, False, True, True],
            label_every=1,
        ),
        "channels": bar_chart("各渠道推送送达与失败", labels, values, unit="次", bad=bad, label_every=1)
        if channels
        else None,
    }


async def _departments(official) -> list[tuple[str, str]]:
    if not is_admin(official):
        return []
    return [("", "全部部门")] + [(d["name"], d["name"]) for d in await published_departments()]


def _can_see_dashboard(official) -> bool:
    roles = roles_of(official)
    return ADMIN in roles or bool(roles & {OFFICER, SUPERVISOR})


@bp.get("/")
@page()
async def dashboard_page(request: Request) -> HTTPResponse:
    official = request.ctx.session.official
    if not _can_see_dashboard(official):
        return render(request, "home.html")
    query = query_args(request, RangeQuery)
    d = await use_case.dashboard(official=official, start=query.from_, end=query.to, department=query.department)
    params = _query(**{"from": d["from"], "to": d["to"], "department": query.department})
    tables = {name: table_of(name, d) for name in DASHBOARD_TABLES}
    return render(
        request,
        "dashboard.html",
        d=d,
        tables=tables,
        charts=charts(d),
        cards=dict(summary_rows(d)),
        exports={name: f"/console/dashboard/export/{name}{params}" for name in DASHBOARD_TABLES},
        departments=await _departments(official),
        department=query.department or "",
    )


@bp.get("/dashboard/export/<table:str>")
@page(OFFICER, SUPERVISOR)
async def dashboard_csv(request: Request, table: str) -> HTTPResponse:
    if table not in DASHBOARD_TABLES:
        raise not_found("表格")
    query = query_args(request, RangeQuery)
    d = await use_case.dashboard(
        official=request.ctx.session.official, start=query.from_, end=query.to, department=query.department
    )
    header, rows = table_of(table, d)
    scope = d["department"] or "全部部门"
    return csv_response(f"工作台-{table}-{scope}-{d['from']}至{d['to']}.csv", header, rows)


# -- alerts ------------------------------------------------------------------------------------


def alert_table(name: str, a: dict) -> tuple[list[str], list[list]] | None:
    if name == "rectifications" and a["rectifications"] is not None:
        return ["办件编号", "事项", "部门", "环节", "轮次", "截止时间", "已超期", "已上报"], [
            [
                r["case_no"],
                r["service_name"],
                r["department"],
                DEADLINES.get(r["deadline"], r["deadline"]),
                r["round"],
                _when(r["due_at"]),
                _yes(r["overdue"]),
                _yes(r["escalated"]),
            ]
            for r in a["rectifications"]["items"]
        ]
    if name == "tickets" and a["tickets"] is not None:
        return ["编号", "类型", "部门", "截止时间", "已超期", "已上报"], [
            [
                t["ticket_no"],
                KINDS.get(t["kind"], t["kind"]),
                t["department"],
                _when(t["due_at"]),
                _yes(t["overdue"]),
                _yes(t["escalated"]),
            ]
            for t in a["tickets"]["items"]
        ]
    if name == "pushes" and a["pushes"] is not None:
        return ["渠道", "推送次数", "送达", "失败", "送达率"], [
            _channel_row(c) for c in a["pushes"]["failing_channels"]
        ]
    if name == "payments" and a["payments"] is not None:
        return ["告警类型", "未处理", "最早发生"], [
            [k["kind"], k["open"], _when(k["oldest_at"])] for k in a["payments"]["kinds"]
        ]
    if name == "outbox" and a["outbox"] is not None:
        o = a["outbox"]
        age = o["oldest_age_s"]
        return ["待送核心平台", "最早一条已等待", "已放弃（dead）"], [
            [o["backlog"], "—" if age is None else f"{age // 60} 分钟", o["dead"]]
        ]
    return None


ALERT_TABLES = ("rectifications", "tickets", "pushes", "payments", "outbox")


async def _alerts(request: Request, department: str | None) -> dict:
    services = Services.of(request)
    return await use_case.alerts(
        official=request.ctx.session.official,
        department=department,
        ticket_remind=services.ticket_policy.remind_before,
        rectify_remind=services.loop_policy.remind_before,
    )


@bp.get("/alerts")
@page()
async def alerts_page(request: Request) -> HTTPResponse:
    query = query_args(request, DepartmentQuery)
    a = await _alerts(request, query.department)
    params = _query(department=query.department)
    return render(
        request,
        "alerts.html",
        a=a,
        tables={name: alert_table(name, a) for name in ALERT_TABLES},
        exports={name: f"/console/alerts/export/{name}{params}" for name in ALERT_TABLES},
        departments=await _departments(request.ctx.session.official),
        department=query.department or "",
    )


@bp.get("/alerts/export/<table:str>")
@page()
async def alerts_csv(request: Request, table: str) -> HTTPResponse:
    if table not in ALERT_TABLES:
        raise not_found("表格")
    query = query_args(request, DepartmentQuery)
    found = alert_table(table, await _alerts(request, query.department))
    if found is None:
        raise not_found("表格")
    header, rows = found
    return csv_response(f"待办提醒-{table}.csv", header, rows)

"""`/console/payments`: reconciliation reports (对账) and payment alerts for the finance role (admin
too), over the same use cases as `/console/api/payments` (every read audited there): filter by
channel and day, resolve an alert, export each table as CSV."""

from __future__ import annotations

import datetime as dt
import json

from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from console.pages.base import csv_response, page, redirect_to, render
from core.china_time import CHINA
from core.http import client_ip, request_id
from handlers.payments import finance

bp = Blueprint("console_pages_payments", url_prefix="/console")

CHANNELS = {"wechat": "微信支付", "alipay": "支付宝"}
ITEM_KINDS = {
    "channel_only": "长款（渠道有、本方无）",
    "ours_only": "短款（本方有、渠道无）",
    "amount_mismatch": "金额不符",
    "refund_channel_only": "退款长款（渠道有、本方无）",
    "refund_ours_only": "退款短款（本方有、渠道无）",
    "refund_amount_mismatch": "退款金额不符",
}
ALERT_KINDS = {
    "mismatch": "金额或信息不符",
    "paid_after_close": "关单后支付",
    "unknown_order": "未知订单",
    "refund_failed": "退款失败",
}


REPORT_HEADER = [
    "对账日期",
    "渠道",
    "支付相符",
    "长款",
    "短款",
    "金额不符",
    "退款相符",
    "退款长款",
    "退款短款",
    "退款金额不符",
    "渠道收款（元）",
    "本方收款（元）",
    "渠道退款（元）",
    "本方退款（元）",
    "是否平账",
    "生成时间",
]


def yuan(fen: int | None) -> str:
    """Integer fen as yuan with two decimals, without floating point."""
    if fen is None:
        return "—"
    sign = "-" if fen < 0 else ""
    fen = abs(int(fen))
    return f"{sign}{fen // 100}.{fen % 100:02d}"


def _filters(request: Request) -> tuple[str | None, dt.date | None, bool, list[dict]]:
    problems = []
    channel = request.args.get("channel") or None
    if channel is not None and channel not in CHANNELS:
        problems.append({"path": "渠道", "message": "请选择微信支付或支付宝"})
        channel = None
    day = None
    if raw := request.args.get("date", "").strip():
        try:
            day = dt.date.fromisoformat(raw[:10])
        except ValueError:
            problems.append({"path": "对账日期", "message": "日期格式应为 YYYY-MM-DD"})
    open_only = request.args.get("alerts", "open") != "all"
    return channel, day, open_only, problems


def _time(value: str | None) -> str:
    """An ISO 8601 moment as China time, to the second (what officials read)."""
    if not value:
        return ""
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return value[:19].replace("T", " ")
    if moment.tzinfo is not None:
        moment = moment.astimezone(CHINA)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _detail(detail: dict) -> str:
    return json.dumps(detail or {}, ensure_ascii=False, sort_keys=True)[:500]


@bp.get("/payments")
@page("finance")
async def payments(request: Request) -> HTTPResponse:
    official = request.ctx.session.official
    channel, day, open_only, problems = _filters(request)
    who = {"ip": client_ip(request), "request_id": request_id(request)}
    table = request.args.get("format") == "csv" and request.args.get("table")
    if table in ("reports", "items"):
        found = (await finance.reports(official=official, channel=channel, day=day, **who))["items"]
        if table == "reports":
            header = REPORT_HEADER
            rows = [_report_row(r) for r in found]
            return csv_response("reconciliation.csv", header, rows)
        header = ["对账日期", "渠道", "类型", "商户订单号", "退款单号", "渠道金额（元）", "本方金额（元）", "时间"]
        rows = [_item_row(r, i) for r in found for i in r["items"]]
        return csv_response("reconciliation-items.csv", header, rows)
    if table == "alerts":
        found = (await finance.alerts(official=official, open_only=open_only, **who))["items"]
        header = ["编号", "类型", "商户订单号", "详情", "发生时间", "处理时间"]
        rows = [
            [
                a["id"],
                ALERT_KINDS.get(a["kind"], a["kind"]),
                a["out_trade_no"] or "",
                _detail(a["detail"]),
                _time(a["created_at"]),
                _time(a["resolved_at"]),
            ]
            for a in found
        ]
        return csv_response("payment-alerts.csv", header, rows)

    reports = (await finance.reports(official=official, channel=channel, day=day, **who))["items"]
    alerts = (await finance.alerts(official=official, open_only=open_only, **who))["items"]
    query = "&".join(f"{k}={v}" for k, v in (("channel", channel), ("date", day and day.isoformat())) if v)
    return render(
        request,
        "payments.html",
        status=422 if problems else 200,
        problems=problems,
        reports=reports,
        alerts=alerts,
        channel=channel or "",
        day=day.isoformat() if day else "",
        open_only=open_only,
        query=query,
        channels=CHANNELS,
        item_kinds=ITEM_KINDS,
        alert_kinds=ALERT_KINDS,
        yuan=yuan,
        when=_time,
        detail=_detail,
    )


def _item_row(report: dict, item: dict) -> list:
    return [
        report["bill_date"],
        CHANNELS.get(report["channel"], report["channel"]),
        ITEM_KINDS.get(item.get("kind"), item.get("kind")),
        item.get("out_trade_no") or "",
        item.get("out_refund_no") or "",
        yuan(item.get("channel_fen")),
        yuan(item.get("ours_fen")),
        _time(item.get("at")),
    ]


def _report_row(report: dict) -> list:
    summary = report["summary"] or {}
    pay, refund, totals = summary.get("payments", {}), summary.get("refunds", {}), summary.get("totals", {})
    kinds = ("matched", "channel_only", "ours_only", "amount_mismatch")
    return [
        report["bill_date"],
        CHANNELS.get(report["channel"], report["channel"]),
        *[pay.get(k, 0) for k in kinds],
        *[refund.get(k, 0) for k in kinds],
        *[yuan(totals.get(k)) for k in ("channel_paid_fen", "our_paid_fen", "channel_refund_fen", "our_refund_fen")],
        "是" if summary.get("balanced") else "否",
        _time(report["created_at"]),
    ]


@bp.post("/payments/alerts/<alert_id:int>/resolve")
@page("finance")
async def resolve(request: Request, alert_id: int) -> HTTPResponse:
    await finance.resolve_alert(
        official=request.ctx.session.official, alert_id=alert_id, ip=client_ip(request), request_id=request_id(request)
    )
    return redirect_to(request, "/console/payments#alerts", flash=f"已将告警 {alert_id} 标记为已处理")

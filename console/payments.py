"""`/console/api/payments/...`: reconciliation reports and payment alerts, for the finance role."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, Field
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from console.deps import SESSION, SESSION_AND_CSRF, official
from core.http import client_ip, query_args, request_id
from core.openapi import document, secure
from handlers.payments import finance

bp = Blueprint("console_payments", url_prefix="/console/api/payments")
secure(bp, SESSION, unsafe=SESSION_AND_CSRF)
PRIVATE = {"Cache-Control": "no-store"}


class ReportQuery(BaseModel):
    channel: Literal["wechat", "alipay"] | None = None
    date: dt.date | None = Field(None, description="the bill's day, China time (YYYY-MM-DD)")


class ReportOut(BaseModel):
    channel: str
    bill_date: str
    created_at: str
    summary: dict = Field(
        description="payments and refunds: matched, channel_only (长款), ours_only (短款), amount_mismatch; totals"
    )
    items: list[dict] = Field(description="every line that needs a person: kind, out_trade_no, channel_fen, ours_fen")


class ReportList(BaseModel):
    items: list[ReportOut]


class AlertOut(BaseModel):
    id: int
    kind: str
    out_trade_no: str | None
    detail: dict
    created_at: str
    resolved_at: str | None


class AlertList(BaseModel):
    items: list[AlertOut]


class Resolved(BaseModel):
    id: int
    resolved: bool


class AlertQuery(BaseModel):
    open: bool = Field(True, description="only alerts nobody has resolved yet")


@bp.get("/reconciliation")
@document(
    summary="Reconciliation reports (对账): matched, 长款, 短款, mismatches and totals per channel and day",
    tag="console",
    query=ReportQuery,
    response=ReportList,
    errors=(401, 403, 422),
)
@official
async def reconciliation(request: Request) -> HTTPResponse:
    query = query_args(request, ReportQuery)
    data = await finance.reports(
        official=request.ctx.session.official,
        channel=query.channel,
        day=query.date,
        ip=client_ip(request),
        request_id=request_id(request),
    )
    return json(data, headers=PRIVATE)


@bp.get("/alerts")
@document(
    summary="Payment alerts: mismatches, payments after close, failed refunds",
    tag="console",
    query=AlertQuery,
    response=AlertList,
    errors=(401, 403, 422),
)
@official
async def alerts(request: Request) -> HTTPResponse:
    query = query_args(request, AlertQuery)
    data = await finance.alerts(
        official=request.ctx.session.official,
        open_only=query.open,
        ip=client_ip(request),
        request_id=request_id(request),
    )
    return json(data, headers=PRIVATE)


@bp.post("/alerts/<alert_id:int>/resolve")
@document(summary="Mark a payment alert as dealt with", tag="console", response=Resolved, errors=(401, 403, 404))
@official
async def resolve(request: Request, alert_id: int) -> HTTPResponse:
    data = await finance.resolve_alert(
        official=request.ctx.session.official, alert_id=alert_id, ip=client_ip(request), request_id=request_id(request)
    )
    return json(data, headers=PRIVATE)

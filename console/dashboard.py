"""`/console/api/dashboard` and `/console/api/alerts`: how the service is doing, and what needs an
official now (handlers.dashboard). Scoped to the official's department; admins see every
department or pick one."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, Field
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from console.deps import SESSION, SESSION_AND_CSRF, official
from console.stats import BadReviewFigures, EvaluationFigures, TicketFigures
from container import Services
from core.http import query_args
from core.openapi import document, secure
from handlers import dashboard as use_case

bp = Blueprint("console_dashboard", url_prefix="/console/api")
secure(bp, SESSION, unsafe=SESSION_AND_CSRF)
PRIVATE = {"Cache-Control": "no-store"}


class DashboardQuery(BaseModel):
    from_: dt.date | None = Field(
        None, alias="from", description="first day, China time (YYYY-MM-DD); default 29 days before `to`"
    )
    to: dt.date | None = Field(
        None, description="last day, China time (YYYY-MM-DD), at most 366 days after `from`; default today"
    )
    department: str | None = Field(
        None, min_length=1, max_length=128, description="a department (admins; others see their own)"
    )


class AlertsQuery(BaseModel):
    department: str | None = Field(
        None, min_length=1, max_length=128, description="a department (admins; others see their own)"
    )


class DayFigures(BaseModel):
    day: str
    submitted: int
    fully_online: int


class CaseFigures(BaseModel):
    submitted: int
    fully_online: int = Field(description="cases of a fully online (全程网办) item version")
    fully_online_share: float | None
    per_day: list[DayFigures] = Field(description="every day of the range, China time")


class HandlingFigures(BaseModel):
    decided: int = Field(description="cases approved or rejected in the range")
    average_working_days: float | None = Field(description="submission to decision, in working days")
    average_promised_days: float | None = Field(description="the promised working days of the same cases")
    decided_late: int = Field(description="decided after the overdue sweep had marked them")
    on_time_rate: float | None


class OverdueCase(BaseModel):
    case_no: str
    service_code: str
    service_name: str
    status: str
    submitted_at: str | None
    promised_date: str


class OverdueFigures(BaseModel):
    open_overdue: int = Field(description="open cases past their promised date, now")
    oldest: list[OverdueCase] = Field(description="the 20 submitted first")


class ChannelFigures(BaseModel):
    channel: str = Field(description="subscribe, template or inbox")
    attempts: int
    delivered: int
    failed: int
    results: dict[str, int] = Field(description="attempts per result (ok, refused, transient, no_grant, ...)")
    delivery_rate: float | None = Field(description="delivered over delivered and failed")


class NotificationFigures(BaseModel):
    total: int
    wechat: int = Field(description="reached the citizen through WeChat")
    inbox_only: int
    failed: int
    pending: int
    by_channel: dict[str, int]
    reach_rate: float | None = Field(description="through WeChat over the notifications done")


class PushFigures(BaseModel):
    channels: list[ChannelFigures]
    notifications: NotificationFigures


class DashboardOut(BaseModel):
    from_: str = Field(alias="from")
    to: str
    department: str | None
    cases: CaseFigures
    handling: HandlingFigures
    overdue: OverdueFigures
    evaluations: EvaluationFigures
    bad_reviews: BadReviewFigures
    tickets: dict[str, TicketFigures] = Field(description="consultation and complaint")
    pushes: PushFigures


class RectificationAlert(BaseModel):
    id: int
    case_no: str
    service_name: str
    department: str
    status: str
    deadline: str = Field(description="verify (回访) or rectify (整改)")
    round: int
    due_at: str | None
    seconds_left: int
    overdue: bool
    escalated: bool


class RectificationAlerts(BaseModel):
    overdue: int
    due_soon: int = Field(description="within RECTIFY_REMIND_HOURS")
    items: list[RectificationAlert]


class TicketAlert(BaseModel):
    ticket_no: str
    kind: str
    department: str
    service_code: str | None
    due_at: str | None
    seconds_left: int
    overdue: bool
    escalated: bool


class TicketAlerts(BaseModel):
    overdue: int
    due_soon: int = Field(description="unanswered, due within TICKET_REMIND_HOURS")
    items: list[TicketAlert]


class PushAlerts(BaseModel):
    since: str
    failing_channels: list[ChannelFigures]
    failed: int
    notifications_failed: int


class PaymentKind(BaseModel):
    kind: str
    open: int
    oldest_at: str | None


class PaymentAlerts(BaseModel):
    open: int
    kinds: list[PaymentKind]


class OutboxBacklog(BaseModel):
    backlog: int = Field(description="rows pending or being sent to the core platform")
    oldest_at: str | None
    oldest_age_s: int | None
    dead: int = Field(description="rows given up on")


class AlertsOut(BaseModel):
    now: str
    department: str | None
    attention: int = Field(description="how many things need someone")
    rectifications: RectificationAlerts | None = Field(description="officers, supervisors, admins")
    tickets: TicketAlerts | None = Field(description="officers, supervisors, admins")
    pushes: PushAlerts | None = Field(description="officers, supervisors, admins: the last 24 hours")
    payments: PaymentAlerts | None = Field(description="finance and admins")
    outbox: OutboxBacklog | None = Field(description="admins")


@bp.get("/dashboard")
@document(
    summary="Dashboard: cases per day, fully online share, handling days against promised, overdue, "
    "好评率 and rectification, push reach per channel",
    tag="console",
    query=DashboardQuery,
    response=DashboardOut,
    errors=(401, 403, 404, 422),
)
@official
async def figures(request: Request) -> HTTPResponse:
    query = query_args(request, DashboardQuery)
    data = await use_case.dashboard(
        official=request.ctx.session.official, start=query.from_, end=query.to, department=query.department
    )
    return json(data, headers=PRIVATE)


@bp.get("/alerts")
@document(
    summary="What needs an official now: rectifications and tickets near or past their deadline, failing "
    "pushes, payment alerts, the outbox backlog",
    tag="console",
    query=AlertsQuery,
    response=AlertsOut,
    errors=(401, 403, 404, 422),
)
@official
async def alerts(request: Request) -> HTTPResponse:
    query = query_args(request, AlertsQuery)
    services = Services.of(request)
    data = await use_case.alerts(
        official=request.ctx.session.official,
        department=query.department,
        ticket_remind=services.ticket_policy.remind_before,
        rectify_remind=services.loop_policy.remind_before,
    )
    return json(data, headers=PRIVATE)

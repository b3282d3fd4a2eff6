"""`/console/api/stats/...`: anonymous statistics of 好差评 and of consultations and complaints."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, Field
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from console.deps import SESSION, SESSION_AND_CSRF, official
from core.http import query_args
from core.openapi import document, secure
from handlers.scoping import ADMIN, OFFICER, SUPERVISOR, in_scope, is_admin, require_role
from handlers.stats import evaluation_stats

bp = Blueprint("console_stats", url_prefix="/console/api/stats")
secure(bp, SESSION, unsafe=SESSION_AND_CSRF)


class StatsQuery(BaseModel):
    from_: dt.date = Field(alias="from", description="first day, China time (YYYY-MM-DD)")
    to: dt.date = Field(description="last day, China time (YYYY-MM-DD), at most 366 days after `from`")
    department: str | None = Field(
        None, min_length=1, max_length=128, description="a department (admins; others see their own)"
    )


class EvaluationFigures(BaseModel):
    total: int
    active: int
    default: int
    by_level: dict[str, dict[str, int]] = Field(description='{"1".."5": {"all", "active"}}')
    good_rate: float | None = Field(description="好评率: levels 3-5 over all")
    active_good_rate: float | None = Field(description="主动评价好评率: the same over active evaluations")
    unrated_rate: float | None = Field(description="未评价率: default evaluations over all")


class BadReviewFigures(BaseModel):
    total: int
    rectifications: int
    closed: int
    rectified: int
    rectified_on_time: int
    rectification_rate: float | None
    on_time_rate: float | None


class TicketFigures(BaseModel):
    received: int
    answered: int
    answered_on_time: int
    on_time_rate: float | None


class StatsOut(BaseModel):
    from_: str = Field(alias="from")
    to: str
    department: str | None
    evaluations: EvaluationFigures
    bad_reviews: BadReviewFigures
    tickets: dict[str, TicketFigures] = Field(description="consultation and complaint")


@bp.get("/evaluations")
@document(
    summary="好差评 and ticket statistics: per level, 好评率, 主动评价好评率, 未评价率, rectification, answers on time",
    tag="console",
    query=StatsQuery,
    response=StatsOut,
    errors=(401, 403, 404, 422),
)
@official
async def evaluations(request: Request) -> HTTPResponse:
    query = query_args(request, StatsQuery)
    who = request.ctx.session.official
    require_role(who, OFFICER, SUPERVISOR, ADMIN)
    department = query.department
    if department is None and not is_admin(who):
        department = who.department
    if department is not None:
        in_scope(who, department, what="部门")
    data = await evaluation_stats(start=query.from_, end=query.to, department=department)
    return json(data, headers={"Cache-Control": "no-store"})

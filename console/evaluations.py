"""`/console/api/evaluations/...`: the bad reviews (差评) of the official's department and their loop.

Department-scoped (`handlers.scoping`): another department's review is 404. Officers verify,
rectify and ask for exclusion; supervisors also decide exclusions and reassign.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, StrictBool
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from console.deps import SESSION, SESSION_AND_CSRF, official
from container import Services
from core.http import client_ip, json_body, query_args, request_id
from core.openapi import document, secure

bp = Blueprint("console_evaluations", url_prefix="/console/api/evaluations")
secure(bp, SESSION, unsafe=SESSION_AND_CSRF)
PRIVATE = {"Cache-Control": "no-store"}

Status = Literal["verifying", "rectifying", "awaiting_citizen", "closed", "excluded"]


class ReviewQuery(BaseModel):
    status: Status | None = None
    overdue: bool | None = Field(None, description="only reviews whose next deadline has passed (or not)")
    escalated: bool | None = Field(None, description="only reviews escalated to supervisors (or not)")
    exclusion: Literal["none", "requested", "approved", "refused"] | None = None


class NoteIn(BaseModel):
    note: str = Field(min_length=2, max_length=2000, description="the call-back (回访) note, sent to the citizen")


class TextIn(BaseModel):
    text: str = Field(min_length=2, max_length=2000, description="what was rectified (整改), sent to the citizen")


class ReasonIn(BaseModel):
    reason: str = Field(min_length=2, max_length=500)


class DecisionIn(BaseModel):
    approve: StrictBool
    reason: str = Field(min_length=2, max_length=500, description="kept, and told to the citizen")


class ReassignIn(BaseModel):
    department: str = Field(min_length=1, max_length=128)
    reason: str = Field("", max_length=500)


def _loop(request: Request):
    return Services.of(request).rectifications


@bp.get("/reviews")
@document(
    summary="Bad reviews of my department with their deadlines and seconds left (nearest first)",
    tag="console",
    query=ReviewQuery,
    errors=(401, 422),
)
@official
async def reviews(request: Request) -> HTTPResponse:
    query = query_args(request, ReviewQuery)
    data = await _loop(request).list_for(
        official=request.ctx.session.official,
        status=query.status,
        overdue=query.overdue,
        escalated=query.escalated,
        exclusion=query.exclusion,
    )
    return json(data, headers=PRIVATE)


@bp.get("/reviews/<rect_id:int>")
@document(
    summary="One bad review: comment, evaluator (masked), the department's texts, every step (audited)",
    tag="console",
    errors=(401, 404),
)
@official
async def review(request: Request, rect_id: int) -> HTTPResponse:
    data = await _loop(request).view(
        official=request.ctx.session.official, rect_id=rect_id, ip=client_ip(request), request_id=request_id(request)
    )
    return json(data, headers=PRIVATE)


@bp.post("/reviews/<rect_id:int>/verify")
@document(
    summary="Record the call-back (回访); the note goes to the citizen",
    tag="console",
    body=NoteIn,
    errors=(401, 403, 404, 409, 422),
)
@official
async def verify(request: Request, rect_id: int) -> HTTPResponse:
    body = json_body(request, NoteIn)
    return json(await _loop(request).verify(official=request.ctx.session.official, rect_id=rect_id, note=body.note))


@bp.post("/reviews/<rect_id:int>/rectify")
@document(
    summary="Report the rectification (整改); it goes to the citizen, who answers",
    tag="console",
    body=TextIn,
    errors=(401, 403, 404, 409, 422),
)
@official
async def rectify(request: Request, rect_id: int) -> HTTPResponse:
    body = json_body(request, TextIn)
    return json(await _loop(request).rectify(official=request.ctx.session.official, rect_id=rect_id, text=body.text))


@bp.post("/reviews/<rect_id:int>/exclusion")
@document(
    summary="Ask a supervisor to leave a malicious or mistaken review out (申诉)",
    tag="console",
    body=ReasonIn,
    errors=(401, 403, 404, 409, 422),
)
@official
async def request_exclusion(request: Request, rect_id: int) -> HTTPResponse:
    body = json_body(request, ReasonIn)
    return json(
        await _loop(request).request_exclusion(
            official=request.ctx.session.official, rect_id=rect_id, reason=body.reason
        )
    )


@bp.post("/reviews/<rect_id:int>/exclusion/decision")
@document(
    summary="Supervisor: approve or refuse an exclusion, with the reason (the citizen is told)",
    tag="console",
    body=DecisionIn,
    errors=(401, 403, 404, 409, 422),
)
@official
async def decide_exclusion(request: Request, rect_id: int) -> HTTPResponse:
    body = json_body(request, DecisionIn)
    return json(
        await _loop(request).decide_exclusion(
            official=request.ctx.session.official, rect_id=rect_id, approve=body.approve, reason=body.reason
        )
    )


@bp.post("/reviews/<rect_id:int>/reassign")
@document(
    summary="Supervisor: hand the review to another department",
    tag="console",
    body=ReassignIn,
    errors=(401, 403, 404, 409, 422),
)
@official
async def reassign(request: Request, rect_id: int) -> HTTPResponse:
    body = json_body(request, ReassignIn)
    return json(
        await _loop(request).reassign(
            official=request.ctx.session.official, rect_id=rect_id, department=body.department, reason=body.reason
        )
    )

"""`/api/v1/.../evaluation`: 好差评 from the mini-program — the tags per level, rating a case once it
has a decision, reading it back with the department's reply, answering a rectification."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, StrictBool, StrictInt
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from container import Services
from core.http import json_body
from core.openapi import BEARER, document, secure
from handlers.evaluation import tags
from handlers.evaluation.rating import COMMENT_MAX
from miniprogram_api.deps import citizen

bp = Blueprint("mp_evaluations", url_prefix="/api/v1")
secure(bp, BEARER)


Tag = Annotated[str, Field(min_length=1, max_length=20)]


class EvaluationIn(BaseModel):
    level: StrictInt = Field(
        ge=1, le=5, description="5 非常满意, 4 满意, 3 基本满意, 2 不满意, 1 非常不满意 (1-2: 差评)"
    )
    tags: list[Tag] = Field(default_factory=list, max_length=10, description="tags offered for the level")
    comment: str | None = Field(None, max_length=COMMENT_MAX)


class AnswerIn(BaseModel):
    satisfied: StrictBool = Field(description="the citizen's answer to the department's rectification")


@bp.get("/evaluation/tags")
@document(summary="The five 好差评 levels with the tags offered for each", tag="evaluation", errors=(401,))
@citizen
async def level_tags(request: Request) -> HTTPResponse:
    return json(tags.catalogue())


@bp.post("/cases/<case_no:str>/evaluation")
@document(
    summary="Rate a case (once, after its decision); 1-2 open a rectification by the department",
    tag="evaluation",
    body=EvaluationIn,
    status=201,
    errors=(401, 404, 409, 422),
)
@citizen
async def rate(request: Request, case_no: str) -> HTTPResponse:
    body = json_body(request, EvaluationIn)
    view = await Services.of(request).evaluations.rate(
        user=request.ctx.user,
        case_no=case_no,
        level=body.level,
        tags=body.tags,
        comment=body.comment,
        channel="miniprogram",
    )
    return json({"case_no": case_no, "evaluation": view}, status=201, headers={"Cache-Control": "no-store"})


@bp.get("/cases/<case_no:str>/evaluation")
@document(
    summary="My evaluation of a case, with the department's reply to a 差评, or whether I am invited to rate",
    tag="evaluation",
    errors=(401, 404),
)
@citizen
async def read(request: Request, case_no: str) -> HTTPResponse:
    data = await Services.of(request).evaluations.mine(user=request.ctx.user, case_no=case_no)
    return json(data, headers={"Cache-Control": "no-store"})


@bp.post("/cases/<case_no:str>/evaluation/answer")
@document(
    summary="Satisfied or not with the department's rectification (not satisfied: a second round, escalated)",
    tag="evaluation",
    body=AnswerIn,
    errors=(401, 404, 409, 422),
)
@citizen
async def answer(request: Request, case_no: str) -> HTTPResponse:
    body = json_body(request, AnswerIn)
    data = await Services.of(request).evaluations.answer(
        user=request.ctx.user, case_no=case_no, satisfied=body.satisfied
    )
    return json(data)

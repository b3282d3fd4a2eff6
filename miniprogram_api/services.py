"""`/api/v1/services`: browse, search and read the service guides (cached per catalogue revision)."""

from __future__ import annotations

import base64

from pydantic import BaseModel, Field
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from core.errors import NotFound, ValidationFailed
from core.http import query_args
from core.openapi import document
from miniprogram_api.deps import citizen

bp = Blueprint("mp_services", url_prefix="/api/v1/services")

FLAGS = {"fully_online", "max_one_trip"}


class ListQuery(BaseModel):
    department: str | None = Field(None, max_length=64, description="department code")
    theme: str | None = Field(None, max_length=64)
    flag: str | None = Field(None, description="fully_online | max_one_trip")
    cursor: str | None = Field(None, max_length=200)
    limit: int = Field(20, ge=1, le=100)


class SearchQuery(BaseModel):
    q: str = Field(min_length=1, max_length=100)
    limit: int = Field(10, ge=1, le=50)


class Fee(BaseModel):
    kind: str
    amount_fen: int | None


class ServiceSummary(BaseModel):
    code: str
    name: str
    sub_name: str | None
    department: str
    department_code: str
    themes: list[str]
    flags: dict
    fee: Fee
    promised_days: int


class ServicePage(BaseModel):
    items: list[ServiceSummary]
    next_cursor: str | None


class SearchHit(BaseModel):
    code: str
    name: str
    score: float
    reason: str


class SearchResult(BaseModel):
    items: list[SearchHit]


def _cursor(code: str) -> str:
    return base64.urlsafe_b64encode(code.encode()).decode().rstrip("=")


def _after(cursor: str) -> str:
    try:
        after = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        after = ""
    if not after:
        raise ValidationFailed({"cursor": "分页参数无效，请从第一页重新加载"})
    return after


@bp.get("/")
@document(
    summary="Browse services (filters, keyset pagination)", tag="services", response=ServicePage, errors=(401, 422)
)
@citizen
async def list_services(request: Request) -> HTTPResponse:
    query = query_args(request, ListQuery)
    if query.flag and query.flag not in FLAGS:
        raise ValidationFailed({"flag": "可选值为 fully_online 或 max_one_trip"})
    items = await request.app.ctx.catalogue.summaries()
    if query.department:
        items = [i for i in items if i["department_code"] == query.department]
    if query.theme:
        items = [i for i in items if query.theme in i["themes"]]
    if query.flag:
        items = [i for i in items if i["flags"].get(query.flag)]
    if query.cursor:
        after = _after(query.cursor)
        items = [i for i in items if i["code"] > after]  # summaries are in code order
    page = items[: query.limit]
    next_cursor = _cursor(page[-1]["code"]) if len(items) > query.limit else None
    return json({"items": page, "next_cursor": next_cursor})


@bp.get("/search")
@document(summary="Search services the way citizens ask", tag="services", response=SearchResult, errors=(401, 422))
@citizen
async def search(request: Request) -> HTTPResponse:
    query = query_args(request, SearchQuery)
    index = await request.app.ctx.catalogue.search_index()
    hits = [h for h in index.search(query.q, limit=query.limit) if h.score >= index.MIN_SCORE]
    return json({"items": [{"code": h.code, "name": h.name, "score": h.score, "reason": h.reason} for h in hits]})


@bp.get("/<code:str>")
@document(summary="The full guide of a service (一次性告知)", tag="services", errors=(401, 404))
@citizen
async def guide(request: Request, code: str) -> HTTPResponse:
    found = await request.app.ctx.catalogue.guide(code)
    if found is None:
        raise NotFound("该事项不存在或已下线", code="service_not_found")
    return json(found)

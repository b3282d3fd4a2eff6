"""`/api/v1/services`: browse, search and read the service guides.

Service guides are public (政务公开): no token is needed, and one sent is not looked up. Each
answer is rendered once per catalogue revision and served from this process's memory with a
strong ETag (`If-None-Match` gets a `304`) and `Cache-Control: public, max-age=60`, so a CDN or
the mini-program may keep it; a publish changes the revision, hence every ETag, within a second.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Hashable

from pydantic import BaseModel, Field
from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from container import Services
from core.http import cached_json, query_args, rendered
from core.openapi import document
from handlers.catalog.reader import normalise_query

bp = Blueprint("mp_services", url_prefix="/api/v1/services")

PUBLIC_CACHE = "public, max-age=60"
# Revalidation: a client sends back the ETag it holds.
CONDITIONAL = {
    "If-None-Match": {
        "required": False,
        "description": "the ETag of the answer held: `304 Not Modified` while it is still current",
        "schema": {"type": "string"},
    }
}


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


class Guide(BaseModel):
    """The six uniform elements (六统一) of an item, its materials and its form."""

    code: str
    version: int
    name: str
    sub_name: str | None
    item_type: str
    basis: list | str = Field(description="设定依据: the legal basis")
    legal_days: int
    promised_days: int
    department: str
    region: str
    fee: Fee
    flags: dict
    min_identity_level: str
    summary: str
    conditions: list
    steps: list
    result: dict | str | None
    materials: list[dict] = Field(description="each with key, name, source and fetched_by_sharing")
    form: dict | None


async def _public(request: Request, key: Hashable, answer: Callable[[], Awaitable[object]]) -> HTTPResponse:
    """The answer for `key` in the current catalogue revision, rendered on first use."""

    async def render() -> tuple[bytes, str]:
        return rendered(await answer())

    body, etag = await Services.of(request).catalogue.remember(key, render)
    return cached_json(request, body, etag, PUBLIC_CACHE)


@bp.get("/")
@document(
    summary="Browse services (filters, keyset pagination); public, cached",
    tag="services",
    query=ListQuery,
    headers=CONDITIONAL,
    response=ServicePage,
    also=(304,),
    errors=(422,),
)
async def list_services(request: Request) -> HTTPResponse:
    query = query_args(request, ListQuery, keep_blank=True).model_dump()
    catalogue = Services.of(request).catalogue
    return await _public(request, ("list", *sorted(query.items())), lambda: catalogue.browse(**query))


@bp.get("/search")
@document(
    summary="Search services the way citizens ask; public, cached",
    tag="services",
    query=SearchQuery,
    headers=CONDITIONAL,
    response=SearchResult,
    also=(304,),
    errors=(422,),
)
async def search(request: Request) -> HTTPResponse:
    query = query_args(request, SearchQuery, keep_blank=True)
    catalogue = Services.of(request).catalogue

    async def answer() -> dict:
        hits = await catalogue.search(query=query.q, limit=query.limit)
        return {"items": [dataclasses.asdict(hit) for hit in hits]}

    return await _public(request, ("search", normalise_query(query.q), query.limit), answer)


@bp.get("/<code:str>")
@document(
    summary="The full guide of a service (一次性告知); public, cached",
    tag="services",
    headers=CONDITIONAL,
    response=Guide,
    also=(304,),
    errors=(404,),
)
async def guide(request: Request, code: str) -> HTTPResponse:
    catalogue = Services.of(request).catalogue
    return await _public(request, ("guide", code), lambda: catalogue.require_guide(code=code))

"""`/api/v1/services`: browse, search and read the service guides (cached per catalogue revision)."""

from __future__ import annotations

import dataclasses

from pydantic import BaseModel, Field
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from container import Services
from core.http import query_args
from core.openapi import BEARER, document, secure
from miniprogram_api.deps import citizen

bp = Blueprint("mp_services", url_prefix="/api/v1/services")
secure(bp, BEARER)


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


@bp.get("/")
@document(
    summary="Browse services (filters, keyset pagination)",
    tag="services",
    query=ListQuery,
    response=ServicePage,
    errors=(401, 422),
)
@citizen
async def list_services(request: Request) -> HTTPResponse:
    query = query_args(request, ListQuery)
    return json(await Services.of(request).catalogue.browse(**query.model_dump()))


@bp.get("/search")
@document(
    summary="Search services the way citizens ask",
    tag="services",
    query=SearchQuery,
    response=SearchResult,
    errors=(401, 422),
)
@citizen
async def search(request: Request) -> HTTPResponse:
    query = query_args(request, SearchQuery)
    hits = await Services.of(request).catalogue.search(query=query.q, limit=query.limit)
    return json({"items": [dataclasses.asdict(hit) for hit in hits]})


@bp.get("/<code:str>")
@document(summary="The full guide of a service (一次性告知)", tag="services", response=Guide, errors=(401, 404))
@citizen
async def guide(request: Request, code: str) -> HTTPResponse:
    return json(await Services.of(request).catalogue.require_guide(code=code))

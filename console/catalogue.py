"""`/console/api/catalogue`: the service catalogue, for officials with the `admin` role: check a
catalogue file (every problem with its path, e.g. `items[3].materials[1].name`, and its line; nothing
is published), publish it (all or nothing; only changed items get a new version; audited), list
the current items and every version of one. Anyone else is `403 role_required`."""

from __future__ import annotations

from pydantic import BaseModel, Field
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from console.deps import SESSION, SESSION_AND_CSRF, official
from container import Services
from core.http import client_ip, json_body, query_args, request_id
from core.openapi import document, secure
from handlers.catalog import admin
from handlers.catalog.schema import MAX_TEXT_BYTES

bp = Blueprint("console_catalogue", url_prefix="/console/api/catalogue")
secure(bp, SESSION, unsafe=SESSION_AND_CSRF)
PRIVATE = {"Cache-Control": "no-store"}


class CatalogueText(BaseModel):
    text: str = Field(
        min_length=1,
        max_length=MAX_TEXT_BYTES,
        description="the whole catalogue file (YAML, the format of `server.py import-catalogue`), at most 2 MB",
    )


class Problem(BaseModel):
    path: str = Field(description="where, e.g. `items[3].materials[1].name` (empty: the whole file)")
    code: str = Field(
        description="what kind of problem: a pydantic error type, or yaml_syntax, unknown_department, ..."
    )
    message: str
    line: int | None = Field(description="the line of the file it is on, counted from 1")
    column: int | None


class CheckOut(BaseModel):
    valid: bool
    problems: list[Problem] = Field(description="every problem of the file, in file order")
    items: int = Field(description="how many items the file holds (0 when it is invalid)")
    changed: list[str] = Field(description="codes of the items that publishing the file now would change")


class ChangedItem(BaseModel):
    code: str
    name: str
    version: int = Field(description="the item's new version")


class PublishOut(BaseModel):
    published: int
    unchanged: int
    changed: list[ChangedItem]
    revision: int = Field(description="the catalogue's revision after the publish")


class ItemsQuery(BaseModel):
    department: str | None = Field(None, min_length=1, max_length=128, description="one department's items (its name)")
    after: str | None = Field(None, min_length=1, max_length=64, description="cursor: the next_cursor of the last page")
    limit: int = Field(100, ge=1, le=500)


class ItemOut(BaseModel):
    code: str
    name: str
    version: int
    department: str
    status: str
    published_at: str | None


class ItemPage(BaseModel):
    items: list[ItemOut]
    next_cursor: str | None


class VersionOut(ItemOut):
    is_current: bool
    content_sha256: str


class VersionList(BaseModel):
    code: str
    items: list[VersionOut] = Field(description="every version, newest first")


@bp.post("/validate")
@document(
    summary="Check a catalogue file without publishing it: every problem with its path and line (admin)",
    tag="console",
    body=CatalogueText,
    response=CheckOut,
    errors=(400, 401, 403, 413, 415, 422),
)
@official
async def validate(request: Request) -> HTTPResponse:
    body = json_body(request, CatalogueText)
    data = await admin.check(official=request.ctx.session.official, text=body.text)
    return json(data, headers=PRIVATE)


@bp.post("/publish")
@document(
    summary="Validate a catalogue file whole and publish its changed items (admin, audited)",
    tag="console",
    body=CatalogueText,
    response=PublishOut,
    errors=(400, 401, 403, 413, 415, 422),
)
@official
async def publish(request: Request) -> HTTPResponse:
    body = json_body(request, CatalogueText)
    services = Services.of(request)
    data = await admin.publish(
        official=request.ctx.session.official,
        text=body.text,
        redis=services.redis,
        keys=services.keys,
        ip=client_ip(request),
        request_id=request_id(request),
        reader=services.catalogue,
    )
    return json(data, headers=PRIVATE)


@bp.get("/items")
@document(
    summary="The current version of every catalogue item, in code order, keyset pages (admin)",
    tag="console",
    query=ItemsQuery,
    response=ItemPage,
    errors=(401, 403, 422),
)
@official
async def items(request: Request) -> HTTPResponse:
    query = query_args(request, ItemsQuery)
    data = await admin.current_items(official=request.ctx.session.official, **query.model_dump())
    return json(data, headers=PRIVATE)


@bp.get("/items/<code:str>/versions")
@document(
    summary="Every published version of one catalogue item, newest first (admin)",
    tag="console",
    response=VersionList,
    errors=(401, 403, 404),
)
@official
async def versions(request: Request, code: str) -> HTTPResponse:
    data = await admin.versions(official=request.ctx.session.official, code=code)
    return json(data, headers=PRIVATE)

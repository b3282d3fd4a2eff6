"""`/api/v1/notices` (published service notices, newest first) and `/api/v1/me/themes` (the
catalogue themes a citizen subscribes to, for notices to a theme's audience)."""

from __future__ import annotations

from pydantic import BaseModel, Field
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from container import Services
from core.http import query_args
from core.openapi import BEARER, document, secure
from miniprogram_api.deps import citizen

bp = Blueprint("mp_notices", url_prefix="/api/v1")
secure(bp, BEARER)


class ListQuery(BaseModel):
    cursor: str | None = Field(
        None, max_length=48, pattern=r"^\d{1,20}-\d{1,20}$", description="the next_cursor of the previous page"
    )
    limit: int = Field(20, ge=1, le=50)


class NoticeLink(BaseModel):
    kind: str = Field(description="none, service or page")
    page: str | None = Field(description="the mini-program page the link opens")


class NoticeSummary(BaseModel):
    id: int
    title: str
    department: str
    published_at: str | None
    summary: str
    image_url: str | None
    link: NoticeLink
    page: str


class NoticeDetail(NoticeSummary):
    body: str


class NoticePage(BaseModel):
    items: list[NoticeSummary]
    next_cursor: str | None


class Theme(BaseModel):
    code: str
    name: str
    subscribed: bool


class ThemeList(BaseModel):
    items: list[Theme]


class ThemeState(BaseModel):
    theme: str
    subscribed: bool


@bp.get("/notices")
@document(
    summary="Published service notices, newest first (keyset pages)",
    tag="notices",
    query=ListQuery,
    response=NoticePage,
    errors=(401, 422),
)
@citizen
async def listing(request: Request) -> HTTPResponse:
    query = query_args(request, ListQuery, keep_blank=True)
    return json(await Services.of(request).notices.published(cursor=query.cursor, limit=query.limit))


@bp.get("/notices/<notice_id:int>")
@document(summary="One published notice in full", tag="notices", response=NoticeDetail, errors=(401, 404))
@citizen
async def read(request: Request, notice_id: int) -> HTTPResponse:
    return json(await Services.of(request).notices.published_one(notice_id))


@bp.get("/me/themes")
@document(summary="The catalogue's themes, and which I subscribe to", tag="notices", response=ThemeList, errors=(401,))
@citizen
async def my_themes(request: Request) -> HTTPResponse:
    return json(await Services.of(request).notices.my_themes(request.ctx.user))


@bp.post("/me/themes/<theme:str>")
@document(summary="Subscribe to a theme's notices", tag="notices", response=ThemeState, errors=(401, 404))
@citizen
async def subscribe(request: Request, theme: str) -> HTTPResponse:
    return json(await Services.of(request).notices.subscribe_theme(request.ctx.user, theme, on=True))


@bp.delete("/me/themes/<theme:str>")
@document(summary="Stop a theme's notices", tag="notices", response=ThemeState, errors=(401, 404))
@citizen
async def unsubscribe(request: Request, theme: str) -> HTTPResponse:
    return json(await Services.of(request).notices.subscribe_theme(request.ctx.user, theme, on=False))

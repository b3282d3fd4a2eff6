"""`/api/v1/subscriptions` and `/api/v1/inbox`: push consent from the mini-program, and the in-app inbox."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StrictInt, field_validator
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from core.errors import ValidationFailed
from core.http import INT64_MAX, json_body, query_args
from core.openapi import BEARER, document, secure
from handlers import push
from miniprogram_api.deps import citizen
from wechat.apps import SIM_APPS

bp = Blueprint("mp_inbox", url_prefix="/api/v1")
secure(bp, BEARER)

_TEMPLATE_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class SubscriptionsIn(BaseModel):
    results: dict[str, str] = Field(
        description='what wx.requestSubscribeMessage answered: {"<template_id>": '
        '"accept"|"reject"|"ban"|"filter"} (its "errMsg" key is ignored)'
    )

    @field_validator("results")
    @classmethod
    def _results(cls, value: dict[str, str]) -> dict[str, str]:
        value = {k: v for k, v in value.items() if k != "errMsg"}
        if not value:
            raise ValueError("至少包含一个模板的订阅结果")
        if len(value) > 20:
            raise ValueError("一次最多 20 个模板")
        for template_id, result in value.items():
            if not _TEMPLATE_ID.match(template_id):
                raise ValueError(f"模板编号格式不正确：{template_id[:40]}")
            if result not in ("accept", "reject", "ban", "filter"):
                raise ValueError(f"订阅结果应为 accept、reject、ban 或 filter：{template_id}")
        return value


class InboxQuery(BaseModel):
    before: int | None = Field(None, ge=1, le=INT64_MAX, description="cursor: the next_cursor of the previous page")
    limit: int = Field(20, ge=1, le=100)


class InboxPage(BaseModel):
    items: list[dict]
    unread: int
    next_cursor: int | None


class ReadOut(BaseModel):
    marked: int
    unread: int


class GrantsOut(BaseModel):
    grants: Any


class ReadIn(BaseModel):
    ids: list[Annotated[StrictInt, Field(ge=1, le=INT64_MAX)]] | None = Field(
        None, max_length=200, description="the items to mark read; omit for all"
    )
    all: Literal[True] | None = None

    @field_validator("all", mode="before")
    @classmethod
    def _strict_true(cls, value: Any) -> Any:
        if value is not None and value is not True:  # 1 is not true
            raise ValueError("应为 true")
        return value


@bp.post("/subscriptions")
@document(
    summary="Record the answers of wx.requestSubscribeMessage (each accept is one push)",
    tag="push",
    body=SubscriptionsIn,
    response=GrantsOut,
    errors=(401, 422),
)
@citizen
async def subscriptions(request: Request) -> HTTPResponse:
    body = json_body(request, SubscriptionsIn)
    grants = await push.record_grants(request.ctx.user, body.results)
    sim = getattr(request.app.ctx, "wechat_sim", None)
    if sim is not None and request.ctx.user.openid:
        # Embedded default: the in-process WeChat simulator plays WeChat, which records the
        # same consent when the citizen taps "allow" in the mini-program.
        for template_id, result in body.results.items():
            if result == "accept":
                sim.grant_subscription(SIM_APPS["mp"][0], request.ctx.user.openid, template_id)
    return json({"grants": grants})


@bp.get("/inbox")
@document(
    summary="My notifications, newest first, and the unread count",
    tag="push",
    query=InboxQuery,
    response=InboxPage,
    errors=(401, 422),
)
@citizen
async def inbox(request: Request) -> HTTPResponse:
    query = query_args(request, InboxQuery)
    rows, unread = await push.inbox(request.ctx.user, before=query.before, limit=query.limit + 1)
    page = rows[: query.limit]
    return json(
        {
            "items": [push.inbox_item(n) for n in page],
            "unread": unread,
            "next_cursor": page[-1].id if len(rows) > query.limit else None,
        }
    )


@bp.post("/inbox/read")
@document(
    summary='Mark notifications read: {"ids": [...]} or {"all": true}',
    tag="push",
    body=ReadIn,
    response=ReadOut,
    errors=(401, 422),
)
@citizen
async def mark_read(request: Request) -> HTTPResponse:
    body = json_body(request, ReadIn)
    if (body.ids is None) == (body.all is None):
        raise ValidationFailed({"ids": "请给出要标记的消息编号，或以 all: true 标记全部"})
    changed = await push.mark_read(request.ctx.user, None if body.all else body.ids)
    return json({"marked": changed, "unread": await push.unread_count(request.ctx.user)})

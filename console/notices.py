"""`/console/api/notices`: service notices, for officials with the `publisher` role (admin: every
department): compose, preview the audience, schedule, send, cancel, follow the progress and read the
delivery report. Another department's notice is `404`."""

from __future__ import annotations

import datetime as dt
import ipaddress
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator, model_validator
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from console.deps import SESSION, SESSION_AND_CSRF, official
from container import Services
from core.http import INT64_MAX, client_ip, json_body, query_args, request_id
from core.openapi import document, secure

bp = Blueprint("console_notices", url_prefix="/console/api/notices")
secure(bp, SESSION, unsafe=SESSION_AND_CSRF)
PRIVATE = {"Cache-Control": "no-store"}

CASE_STATUSES = Literal[
    "submitted",
    "delivered_to_platform",
    "accepted",
    "in_review",
    "correction_requested",
    "resubmitted",
    "approved",
    "rejected",
    "result_issued",
    "closed",
    "withdrawn",
]


class Audience(BaseModel):
    kind: Literal["followers", "service", "theme", "region"] = Field(
        description="followers: every follower of the official account; service: citizens with cases of "
        "`service_code` (in `statuses`, if given); theme: citizens subscribed to `theme`; region: citizens "
        "with an address whose region code starts with `region_code`"
    )
    service_code: str | None = Field(None, min_length=1, max_length=64)
    statuses: list[CASE_STATUSES] = Field(default_factory=list, max_length=11)
    theme: str | None = Field(None, min_length=1, max_length=64)
    region_code: str | None = Field(None, pattern=r"^\d{2,6}$", description="e.g. 5105 for 泸州市")

    @model_validator(mode="after")
    def _needs(self) -> Audience:
        needed = {"service": "service_code", "theme": "theme", "region": "region_code"}.get(self.kind)
        if needed and not getattr(self, needed):
            raise ValueError(f"受众类型 {self.kind} 需要 {needed}")
        return self


def _image_url(value: str | None) -> str | None:
    """An https address of a picture on a public host (never one of our intranet's)."""
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname or parts.username or parts.password:
        raise ValueError("图片地址应为 https 链接")
    host = parts.hostname
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if host == "localhost" or host.endswith((".local", ".internal", ".localhost")) or "." not in host:
            raise ValueError("图片地址应为公网地址") from None
    else:
        if not address.is_global:
            raise ValueError("图片地址应为公网地址")
    if not parts.path.lower().endswith((".jpg", ".jpeg", ".png", ".gif", ".webp")):
        raise ValueError("图片地址应指向 jpg、png、gif 或 webp 图片")
    return value


class NoticeIn(BaseModel):
    title: str = Field(min_length=2, max_length=64)
    body: str = Field(min_length=2, max_length=5000)
    link_kind: Literal["none", "service", "page"] = "none"
    link_target: str = Field("", max_length=256, description="a service code, or a mini-program page (pages/...)")
    image_url: str | None = Field(None, max_length=512, description="an https picture shown with the notice")
    audience: Audience
    department: str | None = Field(None, max_length=128, description="admins only: the publishing department")

    @field_validator("image_url")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        return _image_url(value)

    @field_validator("title", "body")
    @classmethod
    def _text(cls, value: str) -> str:
        value = value.strip()
        if len(value) < 2:
            raise ValueError("内容不能为空")
        return value


class NoticeChange(BaseModel):
    title: str | None = Field(None, min_length=2, max_length=64)
    body: str | None = Field(None, min_length=2, max_length=5000)
    link_kind: Literal["none", "service", "page"] | None = None
    link_target: str | None = Field(None, max_length=256)
    image_url: str | None = Field(None, max_length=512)
    audience: Audience | None = None

    @field_validator("image_url")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        return _image_url(value)


class PreviewIn(BaseModel):
    audience: Audience


class ScheduleIn(BaseModel):
    at: dt.datetime = Field(description="when to send (ISO 8601; without an offset, China time), within 90 days")


class ListQuery(BaseModel):
    status: Literal["draft", "scheduled", "sending", "sent", "cancelled"] | None = None
    department: str | None = Field(None, max_length=128, description="admins only: one department's notices")
    before: int | None = Field(None, ge=1, le=INT64_MAX, description="cursor: the next_cursor of the previous page")
    limit: int = Field(50, ge=1, le=200)


class Progress(BaseModel):
    id: int
    status: str
    total: int
    sent: int
    failed: int
    skipped: int
    remaining: int
    paused_until: str | None


class NoticeOut(BaseModel):
    id: int
    title: str
    body: str
    link: dict
    image_url: str | None
    audience: dict
    status: str
    department: str
    created_by: int
    scheduled_at: str | None
    published_at: str | None
    finished_at: str | None
    cancelled_at: str | None
    created_at: str | None
    progress: Progress


class NoticePage(BaseModel):
    items: list[NoticeOut]
    next_cursor: int | None


class AudienceSize(BaseModel):
    audience: dict
    total: int


class Report(BaseModel):
    id: int
    status: str
    progress: Progress
    deliveries: dict = Field(description="recipients per status: sent, failed, skipped, pending, sending")
    channels: dict = Field(description="recipients per channel: subscribe, template, inbox (inbox alone)")
    failures: list[dict] = Field(description="failed recipients by WeChat errcode, most first")
    quota_pauses: int
    published_at: str | None
    finished_at: str | None


def _who(request: Request):
    return request.ctx.session.official


@bp.get("/")
@document(
    summary="My department's notices, newest first (publisher; admin: all)",
    tag="console",
    query=ListQuery,
    response=NoticePage,
    errors=(401, 403, 422),
)
@official
async def listing(request: Request) -> HTTPResponse:
    query = query_args(request, ListQuery)
    data = await Services.of(request).notices.list_for(official=_who(request), **query.model_dump())
    return json(data, headers=PRIVATE)


@bp.post("/")
@document(
    summary="Compose a notice (a draft)",
    tag="console",
    body=NoticeIn,
    response=NoticeOut,
    status=201,
    errors=(401, 403, 404, 422),
)
@official
async def create(request: Request) -> HTTPResponse:
    body = json_body(request, NoticeIn)
    data = await Services.of(request).notices.create(
        official=_who(request),
        title=body.title,
        body=body.body,
        audience_spec=body.audience.model_dump(exclude_none=True),
        link_kind=body.link_kind,
        link_target=body.link_target,
        image_url=body.image_url,
        department=body.department,
    )
    return json(data, status=201, headers=PRIVATE)


@bp.post("/preview")
@document(
    summary="How many recipients an audience has now",
    tag="console",
    body=PreviewIn,
    response=AudienceSize,
    errors=(401, 403, 404, 422),
)
@official
async def preview(request: Request) -> HTTPResponse:
    body = json_body(request, PreviewIn)
    data = await Services.of(request).notices.preview(
        official=_who(request), audience_spec=body.audience.model_dump(exclude_none=True)
    )
    return json(data, headers=PRIVATE)


@bp.get("/<notice_id:int>")
@document(summary="One notice with its progress", tag="console", response=NoticeOut, errors=(401, 403, 404))
@official
async def read(request: Request, notice_id: int) -> HTTPResponse:
    return json(
        await Services.of(request).notices.view_for(official=_who(request), notice_id=notice_id), headers=PRIVATE
    )


@bp.patch("/<notice_id:int>")
@document(
    summary="Change a draft (title, body, link, image, audience)",
    tag="console",
    body=NoticeChange,
    response=NoticeOut,
    errors=(401, 403, 404, 409, 422),
)
@official
async def update(request: Request, notice_id: int) -> HTTPResponse:
    body = json_body(request, NoticeChange)
    changes = body.model_dump(exclude_unset=True)
    if "audience" in changes:
        changes["audience"] = body.audience.model_dump(exclude_none=True) if body.audience else None
        if changes["audience"] is None:
            changes.pop("audience")
    for name in ("title", "body", "link_kind", "link_target"):
        if changes.get(name, "") is None:
            changes.pop(name)
    data = await Services.of(request).notices.update(official=_who(request), notice_id=notice_id, changes=changes)
    return json(data, headers=PRIVATE)


@bp.get("/<notice_id:int>/preview")
@document(
    summary="How many recipients the notice's audience has now",
    tag="console",
    response=AudienceSize,
    errors=(401, 403, 404),
)
@official
async def preview_of(request: Request, notice_id: int) -> HTTPResponse:
    data = await Services.of(request).notices.preview_of(official=_who(request), notice_id=notice_id)
    return json(data, headers=PRIVATE)


@bp.post("/<notice_id:int>/schedule")
@document(
    summary="Send the notice at a given time",
    tag="console",
    body=ScheduleIn,
    response=NoticeOut,
    errors=(401, 403, 404, 409, 422),
)
@official
async def schedule(request: Request, notice_id: int) -> HTTPResponse:
    body = json_body(request, ScheduleIn)
    data = await Services.of(request).notices.schedule(
        official=_who(request), notice_id=notice_id, at=body.at, ip=client_ip(request), request_id=request_id(request)
    )
    return json(data, headers=PRIVATE)


@bp.post("/<notice_id:int>/send")
@document(summary="Send the notice now", tag="console", response=NoticeOut, errors=(401, 403, 404, 409))
@official
async def send(request: Request, notice_id: int) -> HTTPResponse:
    data = await Services.of(request).notices.send_now(
        official=_who(request), notice_id=notice_id, ip=client_ip(request), request_id=request_id(request)
    )
    return json(data, headers=PRIVATE)


@bp.post("/<notice_id:int>/cancel")
@document(
    summary="Cancel a draft or scheduled notice, or stop one being sent",
    tag="console",
    response=NoticeOut,
    errors=(401, 403, 404, 409),
)
@official
async def cancel(request: Request, notice_id: int) -> HTTPResponse:
    data = await Services.of(request).notices.cancel(
        official=_who(request), notice_id=notice_id, ip=client_ip(request), request_id=request_id(request)
    )
    return json(data, headers=PRIVATE)


@bp.get("/<notice_id:int>/progress")
@document(
    summary="The send's progress: sent, failed, skipped, remaining",
    tag="console",
    response=Progress,
    errors=(401, 403, 404),
)
@official
async def progress(request: Request, notice_id: int) -> HTTPResponse:
    data = await Services.of(request).notices.progress_for(official=_who(request), notice_id=notice_id)
    return json(data, headers=PRIVATE)


@bp.get("/<notice_id:int>/report")
@document(
    summary="The delivery report: per channel, failures by errcode",
    tag="console",
    response=Report,
    errors=(401, 403, 404),
)
@official
async def report(request: Request, notice_id: int) -> HTTPResponse:
    data = await Services.of(request).notices.report_for(official=_who(request), notice_id=notice_id)
    return json(data, headers=PRIVATE)

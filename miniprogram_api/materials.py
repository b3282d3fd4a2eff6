"""`/api/v1/materials` (upload, library, delete), draft slots, and `/files/...` signed downloads."""

from __future__ import annotations

import re
from datetime import date
from typing import Literal

from pydantic import BaseModel, Field
from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json, raw

from container import Services
from core.errors import BadRequest, DomainError, PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from core.http import file_headers, json_body
from core.openapi import BEARER, document, secure
from handlers.materials.service import UPLOAD_LIMIT, limit_for, view
from miniprogram_api.deps import citizen

bp = Blueprint("mp_materials", url_prefix="/api/v1")
secure(bp, BEARER)
files_bp = Blueprint("files", url_prefix="/files")

_KIND = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class AttachIn(BaseModel):
    material_id: str = Field(min_length=1, max_length=64)


class UploadForm(BaseModel):
    """The multipart form of an upload (read by `_read_upload`, documented here)."""

    file: bytes = Field(description="the photo (JPEG, PNG, HEIC) or PDF")
    kind: str = Field(pattern=_KIND.pattern, description="the material's kind, e.g. photo, id_card_front")
    valid_until: date | Literal[""] | None = Field(
        None, description="the document's expiry date, YYYY-MM-DD; empty or absent when it has none"
    )


class SignedLinkQuery(BaseModel):
    """The query of a signed file link (checked by the materials service, documented here)."""

    v: str = Field(description="the viewer the link was made for")
    e: str = Field(description="expiry, Unix seconds")
    s: str = Field(description="signature")


class MaterialOut(BaseModel):
    id: str
    kind: str
    mime: str
    size: int
    sha256: str
    width: int | None
    height: int | None
    pages: int | None
    quality_warnings: list[dict]
    valid_until: date | None = None
    expired: bool = False
    locked: bool = False
    created_at: str | None = None
    file_url: str
    url_expires_at: int | None = None
    thumbnail_url: str | None


class MaterialGroup(BaseModel):
    kind: str
    items: list[MaterialOut]


class Library(BaseModel):
    kinds: list[MaterialGroup]


class AttachOut(BaseModel):
    id: str
    version: int
    materials: dict


async def _read_upload(request: Request) -> tuple[str, bytes, date | None]:
    """(kind, file bytes, valid_until) from a streamed multipart body, refusing oversize files while reading."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise UnsupportedMediaType("请以 multipart/form-data 上传文件（wx.uploadFile）")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > UPLOAD_LIMIT + 64 * 1024:
        raise PayloadTooLarge("文件过大，图片不超过10MB，PDF不超过20MB", code="file_too_large")
    request.stream.request_max_size = UPLOAD_LIMIT + 64 * 1024

    parts: list[dict] = []
    current: dict = {}
    state = {"header": b"", "limit": UPLOAD_LIMIT}

    def on_part_begin():
        current.clear()
        current.update(headers={}, data=bytearray())

    def on_header_field(data, start, end):
        state["header"] = data[start:end].lower()

    def on_header_value(data, start, end):
        current["headers"][state["header"]] = current["headers"].get(state["header"], b"") + data[start:end]

    def on_part_data(data, start, end):
        buffer = current["data"]
        buffer += data[start:end]
        if len(buffer) >= 16 and "sniffed" not in current:
            current["sniffed"] = True
            state["limit"] = limit_for(bytes(buffer[:64]))
        if len(buffer) > state["limit"]:
            raise PayloadTooLarge("文件过大，图片不超过10MB，PDF不超过20MB", code="file_too_large")

    def on_part_end():
        _, disposition = parse_options_header(current["headers"].get(b"content-disposition", b""))
        parts.append(
            {
                "name": disposition.get(b"name", b"").decode(),
                "is_file": b"filename" in disposition,
                "data": bytes(current["data"]),
            }
        )

    parser = MultipartParser(
        params[b"boundary"],
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    while True:
        chunk = await request.stream.read()
        if chunk is None:
            break
        try:
            parser.write(chunk)
        except DomainError:
            raise
        except Exception:
            raise BadRequest("上传内容格式错误", code="malformed_multipart") from None
    fields = {p["name"]: p for p in parts}
    problems = {}
    if "file" not in fields or not fields["file"]["data"]:
        problems["file"] = "请选择要上传的文件"
    kind = fields.get("kind", {}).get("data", b"").decode("utf-8", "replace").strip()
    if not _KIND.fullmatch(kind):
        problems["kind"] = "请提供材料类别（小写字母、数字或下划线）"
    valid_until = None
    raw_valid = fields.get("valid_until", {}).get("data", b"").decode("utf-8", "replace").strip()
    if raw_valid:
        try:
            valid_until = date.fromisoformat(raw_valid)
        except ValueError:
            problems["valid_until"] = "有效期格式应为 YYYY-MM-DD"
    if problems:
        raise ValidationFailed(problems)
    return kind, fields["file"]["data"], valid_until


@bp.post("/materials", stream=True)
@document(
    summary="Upload a photo or PDF (201; 200 when the same file is already in the library)",
    tag="materials",
    form=UploadForm,
    response=MaterialOut,
    status=201,
    also=(200,),
    errors=(401, 413, 415, 422, 503),
)
@citizen
async def upload(request: Request) -> HTTPResponse:
    kind, data, valid_until = await _read_upload(request)
    service = Services.of(request).materials
    material, created = await service.upload(user=request.ctx.user, kind=kind, data=data, valid_until=valid_until)
    return json(
        view(material, urls=service.signed_urls(material, viewer=str(request.ctx.user.id))),
        status=201 if created else 200,
    )


@bp.get("/materials")
@document(summary="My material library, grouped by kind", tag="materials", response=Library, errors=(401,))
@citizen
async def library(request: Request) -> HTTPResponse:
    service, viewer = Services.of(request).materials, str(request.ctx.user.id)
    grouped = await service.library(user=request.ctx.user)
    return json(
        {
            "kinds": [
                {"kind": kind, "items": [view(m, urls=service.signed_urls(m, viewer=viewer)) for m in items]}
                for kind, items in grouped.items()
            ]
        }
    )


@bp.get("/materials/<material_id:str>")
@document(
    summary="One of my materials, with fresh signed links", tag="materials", response=MaterialOut, errors=(401, 404)
)
@citizen
async def read(request: Request, material_id: str) -> HTTPResponse:
    service = Services.of(request).materials
    material = await service.get(user=request.ctx.user, material_id=material_id)
    return json(view(material, urls=service.signed_urls(material, viewer=str(request.ctx.user.id))))


@bp.delete("/materials/<material_id:str>")
@document(
    summary="Delete a material (not one a submitted case uses)", tag="materials", status=204, errors=(401, 404, 409)
)
@citizen
async def delete(request: Request, material_id: str) -> HTTPResponse:
    await Services.of(request).materials.delete(user=request.ctx.user, material_id=material_id)
    return HTTPResponse(status=204)


@bp.put("/drafts/<draft_id:str>/materials/<slot:str>")
@document(
    summary="Attach an existing material to a draft slot (材料复用)",
    tag="materials",
    body=AttachIn,
    response=AttachOut,
    errors=(401, 404, 409, 410, 422),
)
@citizen
async def attach(request: Request, draft_id: str, slot: str) -> HTTPResponse:
    body = json_body(request, AttachIn)
    draft, data = await Services.of(request).materials.attach(
        user=request.ctx.user,
        drafts=Services.of(request).drafts,
        draft_id=draft_id,
        slot=slot,
        material_id=body.material_id,
    )
    return json({"id": draft.id, "version": draft.version, "materials": data.get("materials", {})})


@files_bp.get("/<material_id:str>/<variant:file|thumb>")
@document(
    summary="A material's file or thumbnail, by a signed link (from the material's file_url)",
    tag="materials",
    query=SignedLinkQuery,
    response=None,
    content_type="application/octet-stream",
    errors=(403, 404, 410),
)
async def download(request: Request, material_id: str, variant: str) -> HTTPResponse:
    args = request.args
    data, mime = await Services.of(request).materials.download(
        material_id=material_id,
        variant=variant,
        viewer=args.get("v", ""),
        expires=args.get("e", ""),
        signature=args.get("s", ""),
    )
    name = f"material-{material_id}" + ("-thumb" if variant == "thumb" else "")
    headers = {"Cache-Control": "private, max-age=300", **file_headers(mime, name)}
    return raw(data, content_type=mime, headers=headers)

"""`/console/catalogue`: the admin's catalogue page: upload a catalogue file (YAML) to check it or
to publish it (every problem listed with its path and line; nothing is published unless the whole
file is valid), the current items with their versions, one item's every version, and the current
catalogue as a file to edit."""

from __future__ import annotations

import datetime as dt

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, raw

from console.pages.base import csv_response, form_value, page, redirect_to, render, secure_headers
from container import Services
from core.china_time import CHINA
from core.http import client_ip, request_id
from handlers.catalog import admin
from handlers.catalog.schema import MAX_TEXT_BYTES, CatalogueError

bp = Blueprint("console_pages_catalogue", url_prefix="/console")
PAGE_SIZE = 100


def china_time(value: str | None) -> str:
    """An ISO 8601 moment as China time, to the second."""
    if not value:
        return ""
    moment = dt.datetime.fromisoformat(value)
    return (moment.astimezone(CHINA) if moment.tzinfo else moment).strftime("%Y-%m-%d %H:%M:%S")


def _after(request: Request) -> str | None:
    value = request.args.get("after", "")
    return value if 0 < len(value) <= 64 else None


async def _page(request: Request, *, status: int = 200, **context) -> HTTPResponse:
    official = request.ctx.session.official
    after = _after(request)
    found = await admin.current_items(official=official, after=after, limit=PAGE_SIZE)
    cursor = found["next_cursor"]
    return render(
        request,
        "catalogue.html",
        status=status,
        items=found["items"],
        next_url=f"/console/catalogue?after={cursor}" if cursor else None,
        max_mb=MAX_TEXT_BYTES // (1024 * 1024),
        when=china_time,
        **context,
    )


@bp.get("/catalogue")
@page("admin")
async def listing(request: Request) -> HTTPResponse:
    if request.args.get("format") == "csv":
        official, rows, after = request.ctx.session.official, [], None
        while True:
            found = await admin.current_items(official=official, after=after, limit=500)
            rows += [
                [i["code"], i["name"], i["department"], i["version"], i["status"], china_time(i["published_at"])]
                for i in found["items"]
            ]
            if (after := found["next_cursor"]) is None:
                break
        return csv_response("catalogue-items.csv", ["事项编码", "事项名称", "部门", "版本", "状态", "发布时间"], rows)
    return await _page(request)


def _uploaded(request: Request) -> tuple[str | None, str, list[dict]]:
    """The uploaded file's text and name, or the problems that stop it being read."""
    upload = request.files.get("file") if request.files else None
    if upload is None or not upload.body:
        return None, "", [{"path": "", "message": "请选择要上传的目录文件（YAML）"}]
    name = (upload.name or "catalogue.yaml")[:120]
    if len(upload.body) > MAX_TEXT_BYTES:
        return None, name, [{"path": "", "message": f"目录文件不能超过 {MAX_TEXT_BYTES // (1024 * 1024)} MB"}]
    try:
        text = upload.body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return None, name, [{"path": "", "message": f"文件不是 UTF-8 编码（第 {exc.start + 1} 个字节起无法识别）"}]
    if "\x00" in text:
        return None, name, [{"path": "", "message": "文件含有空字符，不是文本文件"}]
    return text, name, []


@bp.post("/catalogue")
@page("admin")
async def upload(request: Request) -> HTTPResponse:
    official = request.ctx.session.official
    action = form_value(request, "action")
    text, name, problems = _uploaded(request)
    if text is None:
        return await _page(request, status=422, problems=problems, file_name=name)
    if action != "publish":
        checked = await admin.check(official=official, text=text)
        return await _page(
            request,
            status=200 if checked["valid"] else 422,
            problems=checked["problems"],
            checked=checked,
            file_name=name,
        )
    services = Services.of(request)
    try:
        result = await admin.publish(
            official=official,
            text=text,
            redis=services.redis,
            keys=services.keys,
            ip=client_ip(request),
            request_id=request_id(request),
            reader=services.catalogue,
        )
    except CatalogueError as exc:
        return await _page(request, status=422, problems=exc.problems, file_name=name, refused=True)
    if result["published"]:
        flash = f"已发布目录第 {result['revision']} 版：{result['published']} 个事项更新，{result['unchanged']} 个未变"
    else:
        flash = f"目录没有变化：{result['unchanged']} 个事项与已发布的相同，未发布新版本"
    return redirect_to(request, "/console/catalogue", flash=flash)


@bp.get("/catalogue/items/<code:str>")
@page("admin")
async def versions(request: Request, code: str) -> HTTPResponse:
    history = await admin.versions(official=request.ctx.session.official, code=code)
    if request.args.get("format") == "csv":
        rows = [
            [
                v["version"],
                v["name"],
                v["department"],
                v["status"],
                v["is_current"],
                china_time(v["published_at"]),
                v["content_sha256"],
            ]
            for v in history["items"]
        ]
        header = ["版本", "事项名称", "部门", "状态", "当前版本", "发布时间", "内容摘要"]
        return csv_response(f"catalogue-{code}-versions.csv", header, rows)
    return render(request, "catalogue_versions.html", code=code, versions=history["items"], when=china_time)


@bp.get("/catalogue/export")
@page("admin")
async def export(request: Request) -> HTTPResponse:
    text = await admin.export(official=request.ctx.session.official)
    response = raw(text.encode("utf-8"), content_type="application/yaml; charset=utf-8")
    response.headers["Content-Disposition"] = "attachment; filename=catalogue.yaml"
    return secure_headers(response)

"""The console's web pages (a transport, like the console's JSON API beside it). See README.md."""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, raw

from console.pages import audit, auth, cases, catalogue, dashboard, notices, officials, payments, reviews, tickets
from core.errors import NotFound
from core.openapi import exclude

STATIC = Path(__file__).resolve().parent.parent.parent / "static" / "console"
TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml"}

static_bp = Blueprint("console_static", url_prefix="/console/static")


@cache
def _asset(name: str) -> tuple[bytes, str] | None:
    """The bytes of one of our own files under static/console/ (nothing else: no path walking)."""
    known = {path.name: path for path in STATIC.iterdir() if path.suffix in TYPES}
    if name not in known:
        return None
    data = known[name].read_bytes()
    return data, hashlib.sha256(data).hexdigest()[:16]


@static_bp.get("/<asset_name:str>")
async def asset(request: Request, asset_name: str) -> HTTPResponse:
    found = _asset(asset_name)
    if found is None:
        raise NotFound("文件不存在")
    data, digest = found
    etag = f'"{digest}"'
    headers = {"ETag": etag, "Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"}
    if request.headers.get("If-None-Match") == etag:
        return HTTPResponse(status=304, headers=headers)
    return raw(data, content_type=TYPES[Path(asset_name).suffix], headers=headers)


PAGE_BLUEPRINTS = [
    static_bp,
    auth.bp,
    dashboard.bp,
    officials.bp,
    notices.bp,
    catalogue.bp,
    payments.bp,
    cases.bp,
    audit.bp,
    reviews.bp,
    tickets.bp,
]

# HTML for people, not part of the JSON API: left out of /openapi.json (and so of the fuzz gate).
for _bp in PAGE_BLUEPRINTS:
    exclude(_bp)

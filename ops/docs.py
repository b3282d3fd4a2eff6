"""The API's documentation: `/openapi.json` (core.openapi) and `/docs`, ReDoc served from here.

Nothing on the page comes from another host (issue 12, finding 19): ReDoc is vendored under
`static/redoc/` (pinned, see its README), its start-up script is ours, the fonts are the system's,
and the page's Content-Security-Policy keeps the bundle's one outside reference from loading.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, html, json, raw

from core import openapi
from core.errors import NotFound

bp = Blueprint("docs")

STATIC = Path(__file__).resolve().parent.parent / "static"
REDOC_VERSION = "2.5.4"
ASSETS = {
    f"redoc-{REDOC_VERSION}.standalone.js": STATIC / "redoc" / f"redoc-{REDOC_VERSION}.standalone.js",
    "docs.js": STATIC / "docs" / "docs.js",
}
# Versioned names, so a year's cache is safe; docs.js is ours and small, so a day.
_CACHE = {
    f"redoc-{REDOC_VERSION}.standalone.js": "public, max-age=31536000, immutable",
    "docs.js": "public, max-age=86400",
}

PAGE = f"""<!DOCTYPE html>
<html lang="zh-CN">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>掌办 API 文档</title>
<style>body {{ margin: 0; padding: 0; }}</style>
</head>
<body>
<noscript>请启用 JavaScript 查看接口文档，或直接读取 <a href="/openapi.json">/openapi.json</a>。</noscript>
<div id="redoc"></div>
<script src="/docs/assets/redoc-{REDOC_VERSION}.standalone.js"></script>
<script src="/docs/assets/docs.js"></script>
</body>
</html>
"""

CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-eval'; worker-src 'self' blob:; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
)


@cache
def _asset(name: str) -> bytes:
    return ASSETS[name].read_bytes()


@bp.get("/openapi.json")
@openapi.exclude
async def openapi_json(request: Request) -> HTTPResponse:
    config = request.app.config
    document = openapi.build(
        request.app, title=config.API_TITLE, version=config.API_VERSION, description=config.API_DESCRIPTION
    )
    return json(document)


@bp.get("/docs")
@openapi.exclude
async def docs(request: Request) -> HTTPResponse:
    return html(PAGE, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"})


@bp.get("/docs/assets/<asset_name:str>")
@openapi.exclude
async def asset(request: Request, asset_name: str) -> HTTPResponse:
    name = asset_name
    if name not in ASSETS:
        raise NotFound()
    return raw(
        _asset(name),
        content_type="text/javascript; charset=utf-8",
        headers={"Cache-Control": _CACHE[name], "X-Content-Type-Options": "nosniff"},
    )

"""`/console/`: the official's start page (the dashboard replaces it when it lands)."""

from __future__ import annotations

from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from console.pages.base import page, render

bp = Blueprint("console_pages_home", url_prefix="/console")


@bp.get("/")
@page()
async def home(request: Request) -> HTTPResponse:
    return render(request, "home.html")

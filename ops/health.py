"""Operator endpoints: liveness and readiness (database and Redis)."""

from __future__ import annotations

import asyncio
import time

from pydantic import BaseModel
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from container import Services
from core.errors import NotReady
from core.http import error_response
from core.openapi import document
from storage import db

bp = Blueprint("ops")

READY_TIMEOUT = 2.0


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    checks: dict[str, str]
    jobs_heartbeat_age_s: float | None = None


async def _check(coro) -> str:
    try:
        await asyncio.wait_for(coro, READY_TIMEOUT)
        return "ok"
    except TimeoutError:
        return "timeout"
    except Exception as exc:  # the reason goes to the operator, not a trace
        return f"error: {type(exc).__name__}"


@bp.get("/healthz")
@document(response=Health, summary="Liveness: the process answers", tag="ops")
async def healthz(request: Request) -> HTTPResponse:
    return json({"status": "ok"})


@bp.get("/readyz")
@document(response=Readiness, summary="Readiness: the database and Redis answer", tag="ops", errors=(503,))
async def readyz(request: Request) -> HTTPResponse:
    redis = Services.of(request).redis
    checks = dict(
        zip(("database", "redis"), await asyncio.gather(_check(db.ping()), _check(redis.ping())), strict=True)
    )
    failed = [name for name, result in checks.items() if result != "ok"]
    if failed:
        return error_response(
            request,
            NotReady(f"服务暂不可用：{'、'.join(failed)} 无法连接", details={"failed": failed, "checks": checks}),
        )
    age = None
    beat = await redis.get(Services.of(request).keys("heartbeat", "jobs"))
    if beat:
        age = round(time.time() - float(beat), 1)
    return json({"status": "ready", "checks": checks, "jobs_heartbeat_age_s": age})

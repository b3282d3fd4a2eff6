"""`/console/api/officials` and `/console/api/role-policies`: the admin's page of accounts: create,
disable, re-role or move officials, reset a lost second factor, and require TOTP per role."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from console.deps import SESSION, SESSION_AND_CSRF, official
from core.errors import Conflict, Unprocessable
from core.http import client_ip, json_body, query_args, request_id
from core.openapi import document, secure
from handlers import officials
from handlers.scoping import ADMIN, require_role

bp = Blueprint("console_officials", url_prefix="/console/api")
secure(bp, SESSION, unsafe=SESSION_AND_CSRF)
PRIVATE = {"Cache-Control": "no-store"}
Role = Literal["officer", "supervisor", "publisher", "finance", "personal_data", "admin"]


class OfficialRow(BaseModel):
    id: int
    username: str
    display_name: str
    department: str
    roles: list[str]
    is_active: bool
    totp_enabled: bool
    last_login_at: str | None


class OfficialList(BaseModel):
    items: list[OfficialRow]
    next_after: int | None = Field(description="pass as `after` for the next page; null on the last")


class ListQuery(BaseModel):
    after: int | None = Field(None, ge=0, le=2**62)
    limit: int = Field(100, ge=1, le=200)


class NewOfficial(BaseModel):
    username: str = Field(min_length=3, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    display_name: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=10, max_length=256, description="the first password, given to the official")
    department: str = Field("", max_length=128, description="a catalogue department, by code or name")
    roles: list[Role] = Field(min_length=1, max_length=6)


class OfficialChange(BaseModel):
    display_name: str | None = Field(None, min_length=1, max_length=64)
    department: str | None = Field(None, max_length=128)
    roles: list[Role] | None = Field(None, min_length=1, max_length=6)
    is_active: bool | None = None


class PolicyIn(BaseModel):
    require_totp: bool


class Policies(BaseModel):
    policies: dict[str, bool] = Field(description="role -> whether its holders must use a second factor")


def row(o) -> dict:
    return {
        "id": o.id,
        "username": o.username,
        "display_name": o.display_name,
        "department": o.department,
        "roles": list(o.roles or []),
        "is_active": o.is_active,
        "totp_enabled": o.totp_enabled_at is not None,
        "last_login_at": o.last_login_at.isoformat() if o.last_login_at else None,
    }


@bp.get("/officials")
@document(
    summary="Every official's account (admin)",
    tag="console",
    query=ListQuery,
    response=OfficialList,
    errors=(401, 403, 422),
)
@official
async def listing(request: Request) -> HTTPResponse:
    require_role(request.ctx.session.official, ADMIN)
    query = query_args(request, ListQuery)
    found = await officials.list_officials(after_id=query.after, limit=query.limit + 1)
    more = len(found) > query.limit
    found = found[: query.limit]
    body = {"items": [row(o) for o in found], "next_after": found[-1].id if more else None}
    return json(body, headers=PRIVATE)


@bp.post("/officials")
@document(
    summary="Creates an official's account (admin)",
    tag="console",
    body=NewOfficial,
    response=OfficialRow,
    status=201,
    errors=(401, 403, 409, 422),
)
@official
async def create(request: Request) -> HTTPResponse:
    admin = request.ctx.session.official
    require_role(admin, ADMIN)
    body = json_body(request, NewOfficial)
    try:
        created = await officials.create_official(
            username=body.username,
            display_name=body.display_name,
            password=body.password,
            department=body.department,
            roles=list(body.roles),
        )
    except officials.OfficialExists:
        raise Conflict("用户名已存在", code="official_exists") from None
    except officials.UnknownDepartment as exc:
        raise Unprocessable(
            "部门不在目录中", code="unknown_department", details={"known": [n for _, n in exc.known]}
        ) from None
    await officials.audit_created(admin=admin, official=created, ip=client_ip(request), request_id=request_id(request))
    return json(row(created), status=201, headers=PRIVATE)


@bp.patch("/officials/<official_id:int>")
@document(
    summary="Re-roles, moves, renames or disables an official (admin)",
    tag="console",
    body=OfficialChange,
    response=OfficialRow,
    errors=(401, 403, 404, 422),
)
@official
async def change(request: Request, official_id: int) -> HTTPResponse:
    admin = request.ctx.session.official
    require_role(admin, ADMIN)
    body = json_body(request, OfficialChange)
    updated = await officials.update_official(
        admin=admin,
        official_id=official_id,
        roles=list(body.roles) if body.roles is not None else None,
        department=body.department,
        is_active=body.is_active,
        display_name=body.display_name,
        ip=client_ip(request),
        request_id=request_id(request),
    )
    return json(row(updated), headers=PRIVATE)


@bp.post("/officials/<official_id:int>/totp-reset")
@document(
    summary="Clears an official's second factor (a lost phone; admin)",
    tag="console",
    response=OfficialRow,
    errors=(401, 403, 404),
)
@official
async def totp_reset(request: Request, official_id: int) -> HTTPResponse:
    admin = request.ctx.session.official
    require_role(admin, ADMIN)
    updated = await officials.reset_totp(
        admin=admin, official_id=official_id, ip=client_ip(request), request_id=request_id(request)
    )
    return json(row(updated), headers=PRIVATE)


@bp.get("/role-policies")
@document(
    summary="Which roles must sign in with a second factor (admin)", tag="console", response=Policies, errors=(401, 403)
)
@official
async def policies(request: Request) -> HTTPResponse:
    require_role(request.ctx.session.official, ADMIN)
    return json({"policies": await officials.role_policies()}, headers=PRIVATE)


@bp.put("/role-policies/<role:str>")
@document(
    summary="Requires (or not) a second factor of a role's holders (admin)",
    tag="console",
    body=PolicyIn,
    response=Policies,
    errors=(401, 403, 422),
)
@official
async def set_policy(request: Request, role: str) -> HTTPResponse:
    admin = request.ctx.session.official
    require_role(admin, ADMIN)
    body = json_body(request, PolicyIn)
    result = await officials.set_role_policy(
        admin=admin, role=role, require_totp=body.require_totp, ip=client_ip(request), request_id=request_id(request)
    )
    return json({"policies": result}, headers=PRIVATE)

"""`/console/officials`: the admin's page of accounts (create, re-role, move, disable, reset a lost
second factor) and of the roles that must sign in with TOTP."""

from __future__ import annotations

from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from console.pages.base import csv_response, form_value, page, redirect_to, render
from core.errors import Conflict, DomainError, Unprocessable
from core.http import client_ip, request_id
from handlers import officials
from handlers.catalog.reader import published_departments

bp = Blueprint("console_pages_officials", url_prefix="/console")
ROLE_NAMES = {
    "officer": "经办人",
    "supervisor": "科室负责人",
    "publisher": "通知发布",
    "finance": "财务",
    "personal_data": "个人信息查阅",
    "admin": "管理员",
}


def _after(request: Request) -> int | None:
    value = request.args.get("after", "")
    return int(value) if value.isdigit() and len(value) < 19 else None


async def _page(request: Request, *, status: int = 200, problems: list[dict] | None = None, form: dict | None = None):
    after = _after(request)
    found = await officials.list_officials(after_id=after, limit=101)
    more = len(found) > 100
    found = found[:100]
    departments = [d["name"] for d in await published_departments()]
    return render(
        request,
        "officials.html",
        status=status,
        officials=found,
        next_url=f"/console/officials?after={found[-1].id}" if more else None,
        role_names=ROLE_NAMES,
        policies=await officials.role_policies(),
        departments=departments,
        problems=problems or [],
        form=form or {},
    )


@bp.get("/officials")
@page("admin")
async def listing(request: Request) -> HTTPResponse:
    if request.args.get("format") == "csv":
        rows = []
        after = None
        while batch := await officials.list_officials(after_id=after, limit=500):
            rows += [
                [
                    o.id,
                    o.username,
                    o.display_name,
                    o.department,
                    " ".join(o.roles or []),
                    o.is_active,
                    o.totp_enabled_at is not None,
                    o.last_login_at.isoformat() if o.last_login_at else "",
                ]
                for o in batch
            ]
            after = batch[-1].id
        header = ["编号", "用户名", "姓名", "部门", "角色", "启用", "动态验证码", "最近登录"]
        return csv_response("officials.csv", header, rows)
    return await _page(request)


def _roles(request: Request) -> list[str]:
    return [value for value in (request.form.getlist("roles") or []) if value in ROLE_NAMES]


@bp.post("/officials")
@page("admin")
async def create(request: Request) -> HTTPResponse:
    admin = request.ctx.session.official
    form = {name: form_value(request, name) for name in ("username", "display_name", "department")}
    password = form_value(request, "password")
    problems = []
    if (
        not (3 <= len(form["username"]) <= 64)
        or not form["username"].replace("_", "").replace(".", "").replace("-", "").isalnum()
        or not form["username"].isascii()
    ):
        problems.append({"path": "用户名", "message": "3-64 位字母、数字、下划线、点或短横线"})
    if not (1 <= len(form["display_name"]) <= 64):
        problems.append({"path": "姓名", "message": "请填写姓名（不超过 64 字）"})
    if not (10 <= len(password) <= 256):
        problems.append({"path": "初始密码", "message": "至少 10 位"})
    roles = _roles(request)
    if not roles:
        problems.append({"path": "角色", "message": "至少选择一个角色"})
    if problems:
        return await _page(request, status=422, problems=problems, form=form)
    try:
        created = await officials.create_official(
            username=form["username"],
            display_name=form["display_name"],
            password=password,
            department=form["department"],
            roles=roles,
        )
    except officials.OfficialExists:
        return await _page(request, status=409, problems=[{"path": "用户名", "message": "用户名已存在"}], form=form)
    except officials.UnknownDepartment:
        return await _page(request, status=422, problems=[{"path": "部门", "message": "部门不在目录中"}], form=form)
    await officials.audit_created(admin=admin, official=created, ip=client_ip(request), request_id=request_id(request))
    return redirect_to(request, "/console/officials", flash=f"已创建账号 {created.username}")


@bp.post("/officials/<official_id:int>")
@page("admin")
async def change(request: Request, official_id: int) -> HTTPResponse:
    try:
        updated = await officials.update_official(
            admin=request.ctx.session.official,
            official_id=official_id,
            roles=_roles(request),
            department=form_value(request, "department"),
            is_active=form_value(request, "is_active") == "1",
            ip=client_ip(request),
            request_id=request_id(request),
        )
    except (Unprocessable, Conflict) as exc:
        return await _page(request, status=422, problems=[{"path": f"账号 {official_id}", "message": exc.message}])
    except DomainError as exc:
        if exc.code != "self_lockout":
            raise
        return await _page(request, status=403, problems=[{"path": f"账号 {official_id}", "message": exc.message}])
    return redirect_to(request, "/console/officials", flash=f"已保存账号 {updated.username}")


@bp.post("/officials/<official_id:int>/totp-reset")
@page("admin")
async def totp_reset(request: Request, official_id: int) -> HTTPResponse:
    updated = await officials.reset_totp(
        admin=request.ctx.session.official,
        official_id=official_id,
        ip=client_ip(request),
        request_id=request_id(request),
    )
    return redirect_to(request, "/console/officials", flash=f"已重置 {updated.username} 的动态验证码")


@bp.post("/role-policies")
@page("admin")
async def policies(request: Request) -> HTTPResponse:
    required = set(request.form.getlist("require_totp") or [])
    admin = request.ctx.session.official
    current = await officials.role_policies()
    for role in ROLE_NAMES:
        if current.get(role, False) != (role in required):
            await officials.set_role_policy(
                admin=admin,
                role=role,
                require_totp=role in required,
                ip=client_ip(request),
                request_id=request_id(request),
            )
    return redirect_to(request, "/console/officials", flash="已保存动态验证码要求")

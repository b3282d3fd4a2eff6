"""Who in the console may see and do what: roles, and the department an official works for.

Roles (an official's `roles` list): `officer` works the department's items, `supervisor`
also decides exclusions and escalations and reassigns, `admin` sees every department.
An item of another department is answered as not found, the same as an item that does
not exist, so the console never tells one department what another holds.
"""

from __future__ import annotations

from core.errors import Forbidden, NotFound
from storage.models import Official

OFFICER, SUPERVISOR, ADMIN = "officer", "supervisor", "admin"


def roles_of(official: Official) -> set[str]:
    return set(official.roles or [])


def is_admin(official: Official) -> bool:
    return ADMIN in roles_of(official)


def require_role(official: Official, *roles: str) -> None:
    """Forbidden unless the official has one of `roles` (admin has them all)."""
    if is_admin(official) or roles_of(official) & set(roles):
        return
    raise Forbidden("您没有执行此操作的权限", code="role_required", details={"roles": list(roles)})


def sees_department(official: Official, department: str) -> bool:
    return is_admin(official) or (bool(official.department) and official.department == department)


def in_scope(official: Official, department: str, *, what: str = "事项") -> None:
    """NotFound unless the item's department is the official's (or the official is an admin)."""
    if not sees_department(official, department):
        raise NotFound(f"{what}不存在", code="not_found")

"""Who may see a case: its citizen, or an official of the item's department."""

from __future__ import annotations

from core.errors import NotFound
from handlers.scoping import sees_department
from storage.models import Case, Official, User


async def my_case(*, user: User, case_no: str) -> Case:
    """One of the citizen's cases; anyone else's is the same 404 as an unknown number."""
    case = await Case.get_or_none(case_no=case_no, user_id=user.id).prefetch_related("service_item")
    if case is None:
        raise NotFound("办件不存在", code="case_not_found")
    return case


async def case_for_official(*, official: Official, case_no: str) -> Case:
    """A case an official may see: one of their department's items, or any case for an admin (else 404)."""
    case = await Case.get_or_none(case_no=case_no).prefetch_related("service_item")
    if case is None:
        raise NotFound("办件不存在", code="case_not_found")
    if not sees_department(official, case.service_item.department):
        # Another department's case is the same 404 as an unknown number: nothing tells it exists.
        raise NotFound("办件不存在", code="case_not_found")
    return case

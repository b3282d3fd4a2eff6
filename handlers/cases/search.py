"""What an official sees of cases: a search by number, one case in full, both scoped to the
official's department (an admin sees every department).

- **Search** by case number or its prefix (a full number is an exact, indexed lookup), status and
  service; newest first, keyset-paginated on the case id (the cursor is the last row's id), never
  a COUNT. Another department's case is never listed.
- **A case in full**: its timeline, pushes, materials (their descriptions; the files come one by
  one, with a reason, from the materials route) and payment orders. The applicant's name, ID
  number and phone are masked; an official with the `personal_data` role who gives a reason sees
  them in the clear, with the form as submitted. Every view writes an audit row before the data
  leaves; a clear view writes a second one, `personal_data.read` on the citizen.
- Another department's case is the same `404` as a number that does not exist.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

from tortoise.transactions import in_transaction

from core.cn_ids import mask_id_number, mask_name, mask_phone
from core.errors import Forbidden, ValidationFailed
from handlers import audit
from handlers.cases.access import case_for_official
from handlers.cases.lifecycle import STATUS_LABELS, promised_date
from handlers.drafts import SNAPSHOT_COLUMN
from handlers.payments.orders import fee_of_case
from handlers.payments.states import STATUS_LABELS as PAYMENT_LABELS
from handlers.personal_data import READER_ROLE
from handlers.push import attempts_of_case
from handlers.scoping import is_admin
from storage.crypto import FieldCipher
from storage.models import (
    ActorType,
    Case,
    CaseEvent,
    CaseStatus,
    Material,
    Official,
    PaymentOrder,
    PaymentRefund,
    ServiceItem,
    User,
)

FULL_NUMBER = re.compile(r"^[A-Z]{2}\d{14}$")
NUMBER_PREFIX = re.compile(r"^[A-Z0-9]{1,32}$")
EXPORT_BATCH = 500
EXPORT_MAX = 10_000  # rows in one CSV export of a search
ORDERS_SHOWN = 20
_LABELS = {status.value: label for status, label in STATUS_LABELS.items()}


def _normalised_number(q: str | None) -> str | None:
    if q is None:
        return None
    q = q.strip().upper()
    if not q:
        return None
    if not NUMBER_PREFIX.match(q):
        raise ValidationFailed({"q": "请输入办件编号或其开头部分（字母和数字）"})
    return q


async def _item_ids(official: Official, department: str | None) -> list[int] | None:
    """The service item versions whose cases the official may see (None: every one, for an admin)."""
    if is_admin(official):
        if not department:
            return None
    else:
        if not official.department:
            return []
        if department and department != official.department:
            return []
        department = official.department
    return list(await ServiceItem.filter(department=department).values_list("id", flat=True))


async def _page(
    *,
    official: Official,
    q: str | None,
    status: str | None,
    service: str | None,
    department: str | None,
    before: int | None,
    limit: int,
) -> tuple[list[Case], bool, dict[int, str]]:
    """One page of cases (newest first), whether more follow, and {item id: department}."""
    number = _normalised_number(q)
    item_ids = await _item_ids(official, department)
    if item_ids == []:
        return [], False, {}
    query = Case.all()
    if item_ids is not None:
        query = query.filter(service_item_id__in=item_ids)
    if number is not None:
        query = query.filter(case_no=number) if FULL_NUMBER.match(number) else query.filter(case_no__startswith=number)
    if status:
        query = query.filter(status=CaseStatus(status))
    if service:
        query = query.filter(service_code=service)
    if before is not None:
        query = query.filter(id__lt=before)
    rows = await query.order_by("-id").limit(limit + 1)
    page = rows[:limit]
    departments = dict(
        await ServiceItem.filter(id__in={c.service_item_id for c in page}).values_list("id", "department")
    )
    return page, len(rows) > limit, departments


def _row(case: Case, department: str) -> dict:
    return {
        "case_no": case.case_no,
        "service_code": case.service_code,
        "service_name": case.service_name,
        "department": department,
        "status": case.status.value,
        "status_label": STATUS_LABELS[case.status],
        "bundle_no": case.bundle_no,
        "submitted_at": case.submitted_at.isoformat(),
        "overdue": case.overdue_at is not None,
        "fee_fen": case.fee_fen,
        "fee_paid": case.fee_paid_at is not None,
    }


async def search(
    *,
    official: Official,
    q: str | None = None,
    status: str | None = None,
    service: str | None = None,
    department: str | None = None,
    before: int | None = None,
    limit: int = 50,
) -> dict:
    """A page of the cases the official may see, newest first, and the cursor of the next page.

    `q` is a case number or its beginning (letters are upper-cased); `department` narrows an
    admin's search to one department (another official naming a department not theirs finds none).
    No personal data is listed, so a search is not audited; opening a case is."""
    page, more, departments = await _page(
        official=official, q=q, status=status, service=service, department=department, before=before, limit=limit
    )
    return {
        "items": [_row(c, departments.get(c.service_item_id, "")) for c in page],
        "next_cursor": page[-1].id if more and page else None,
    }


async def export(
    *,
    official: Official,
    q: str | None = None,
    status: str | None = None,
    service: str | None = None,
    department: str | None = None,
    ip: str,
    request_id: str,
    batch: int = EXPORT_BATCH,
    most: int = EXPORT_MAX,
) -> AsyncIterator[dict]:
    """Every row of a search (at most `most`), read in keyset batches of `batch`, never all at once.

    Await it (the input is checked and the export audited before any row is read), then iterate
    the rows it returns."""
    _normalised_number(q)  # bad input is refused before anything is sent
    await audit.record(
        actor_type=ActorType.OFFICIAL,
        actor_id=official.id,
        action="case.export",
        target_type="case",
        request_id=request_id,
        ip=ip,
        detail={"q": q, "status": status, "service": service, "department": department},
    )

    async def rows() -> AsyncIterator[dict]:
        before, sent = None, 0
        while sent < most:
            page, more, departments = await _page(
                official=official,
                q=q,
                status=status,
                service=service,
                department=department,
                before=before,
                limit=min(batch, most - sent),
            )
            for case in page:
                yield _row(case, departments.get(case.service_item_id, ""))
            sent += len(page)
            if not more or not page:
                return
            before = page[-1].id

    return rows()


# -- one case ---------------------------------------------------------------------------------


def _applicant(user: User, cipher: FieldCipher, *, clear: bool) -> dict:
    name = cipher.decrypt_opt(user.real_name_enc, column="users.real_name")
    number = cipher.decrypt_opt(user.id_number_enc, column="users.id_number")
    phone = cipher.decrypt_opt(user.phone_enc, column="users.phone")
    if not clear:
        name, number, phone = mask_name(name), mask_id_number(number), mask_phone(phone)
    return {
        "user_id": user.id,
        "identity_level": user.identity_level.value,
        "name": name,
        "id_number": number,
        "phone": phone,
        "masked": not clear,
    }


async def _materials(case: Case) -> list[dict]:
    slots = {
        slot: [i for i in ids if isinstance(i, str)]
        for slot, ids in (case.materials or {}).items()
        if isinstance(ids, list)
    }
    wanted = {i for ids in slots.values() for i in ids}
    found = {m.id: m for m in await Material.filter(id__in=wanted)} if wanted else {}
    out = []
    for slot, ids in slots.items():
        for material_id in ids:
            m = found.get(material_id)
            out.append(
                {
                    "slot": slot,
                    "id": material_id,
                    "present": m is not None,
                    "kind": m.kind if m else None,
                    "mime": m.mime if m else None,
                    "size": m.size if m else None,
                    "pages": m.pages if m else None,
                    "locked": bool(m and m.locked_at),
                    "valid_until": m.valid_until.isoformat() if m and m.valid_until else None,
                }
            )
    return out


async def _payments(case: Case) -> dict:
    orders = await PaymentOrder.filter(case_id=case.id).order_by("-id").limit(ORDERS_SHOWN)
    refunds: dict[int, int] = {}
    for order_id in await PaymentRefund.filter(order_id__in=[o.id for o in orders]).values_list("order_id", flat=True):
        refunds[order_id] = refunds.get(order_id, 0) + 1
    return {
        "fee": await fee_of_case(case),
        "orders": [
            {
                "payment_id": o.payment_id,
                "out_trade_no": o.out_trade_no,
                "channel": o.channel,
                "amount_fen": o.amount_fen,
                "status": o.state,
                "status_label": PAYMENT_LABELS.get(o.state, o.state),
                "created_at": o.created_at.isoformat(),
                "paid_at": o.paid_at.isoformat() if o.paid_at else None,
                "refunded_fen": o.refunded_fen,
                "refunds": refunds.get(o.id, 0),
            }
            for o in orders
        ],
    }


def _checked_reason(official: Official, reason: str | None) -> str | None:
    """None for a masked view; else the reason, once the role and the reason's length are checked."""
    if reason is None:
        return None
    if READER_ROLE not in (official.roles or []):
        raise Forbidden("您没有查看公民个人信息的权限", code="personal_data_forbidden")
    reason = reason.strip()
    if not 4 <= len(reason) <= 200:
        raise ValidationFailed({"reason": "请填写查看原因（4至200字），例如办件编号"})
    return reason


async def view(
    *, official: Official, case_no: str, reason: str | None, cipher: FieldCipher, ip: str, request_id: str
) -> dict:
    """One case in full for an official of its department (audited; the applicant masked unless
    `reason` is given by an official with the `personal_data` role)."""
    reason = _checked_reason(official, reason)
    case = await case_for_official(official=official, case_no=case_no)
    user = await User.get(id=case.user_id)
    clear = reason is not None
    async with in_transaction():
        # The audit rows are written before the data leaves: no view without its trace.
        await audit.record(
            actor_type=ActorType.OFFICIAL,
            actor_id=official.id,
            action="case.read",
            target_type="case",
            target_id=case.case_no,
            request_id=request_id,
            ip=ip,
            detail={"user_id": user.id, "clear": clear, **({"reason": reason} if clear else {})},
        )
        if clear:
            await audit.record(
                actor_type=ActorType.OFFICIAL,
                actor_id=official.id,
                action="personal_data.read",
                target_type="user",
                target_id=user.id,
                request_id=request_id,
                ip=ip,
                detail={"fields": ["name", "id_number", "phone", "form"], "case_no": case.case_no, "reason": reason},
            )
    events = await CaseEvent.filter(case_id=case.id).order_by("id")
    form = None
    if clear and case.form_snapshot_enc:
        form = json.loads(cipher.decrypt(case.form_snapshot_enc, column=SNAPSHOT_COLUMN))
    return {
        **_row(case, case.service_item.department),
        "service_version": case.service_item.version,
        "promised_date": promised_date(case).isoformat(),
        "platform_case_id": case.platform_case_id,
        "applicant": _applicant(user, cipher, clear=clear),
        "form": form,
        "timeline": [
            {
                "id": e.id,
                "at": e.at.isoformat(),
                "actor_type": e.actor_type.value,
                "from_status": e.from_status,
                "status": e.to_status,
                "label": _LABELS.get(e.to_status, e.to_status),
                "note": e.note,
                "data": e.data or {},
            }
            for e in events
        ],
        "pushes": await attempts_of_case(case.id),
        "materials": await _materials(case),
        "payments": await _payments(case),
    }

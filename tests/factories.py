"""Rows made directly through the ORM, for use-case tests (as GOV.UK Notify's `tests/app/db.py`).

Each function writes what the app would have written by the time the row is in that state:
personal data sealed with `CIPHER` under the app's column names, a case with the events of
its history and the outbox rows its status implies. Keyword arguments override the defaults.
Use them with the `db` fixture (tests/conftest.py), which empties the tables after the test.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import UTC, date, datetime, timedelta

from core.cn_ids import parse_id_number
from handlers.drafts import DATA_COLUMN, SNAPSHOT_COLUMN, next_case_no
from handlers.payments.orders import new_out_trade_no
from handlers.push import PHRASES, URGENT, body_of, case_page
from storage.crypto import FieldCipher
from storage.models import (
    ActorType,
    Case,
    CaseEvent,
    CaseStatus,
    Draft,
    Follower,
    IdentityLevel,
    Material,
    Notification,
    Official,
    Outbox,
    PaymentOrder,
    ServiceItem,
    SubscriptionGrant,
    User,
)
from tests.helpers import RENEWAL, renewal_answers
from tests.helpers import id_number as random_id_number

S = CaseStatus
KEY = secrets.token_bytes(32)
CIPHER = FieldCipher(KEY)

# The platform's events a case went through to reach each status, after its delivery.
_HISTORY: dict[CaseStatus, list[CaseStatus]] = {
    S.SUBMITTED: [],
    S.DELIVERED: [],
    S.ACCEPTED: [S.ACCEPTED],
    S.IN_REVIEW: [S.ACCEPTED, S.IN_REVIEW],
    S.CORRECTION_REQUESTED: [S.ACCEPTED, S.IN_REVIEW, S.CORRECTION_REQUESTED],
    S.RESUBMITTED: [S.ACCEPTED, S.IN_REVIEW, S.CORRECTION_REQUESTED],
    S.APPROVED: [S.ACCEPTED, S.IN_REVIEW, S.APPROVED],
    S.REJECTED: [S.ACCEPTED, S.IN_REVIEW, S.REJECTED],
    S.RESULT_ISSUED: [S.ACCEPTED, S.IN_REVIEW, S.APPROVED, S.RESULT_ISSUED],
    S.CLOSED: [S.ACCEPTED, S.IN_REVIEW, S.APPROVED, S.RESULT_ISSUED, S.CLOSED],
    S.WITHDRAWN: [],
}
_NOTES = {
    S.ACCEPTED: "审批部门已受理",
    S.IN_REVIEW: "审批部门审核中",
    S.CORRECTION_REQUESTED: "需要补正",
    S.APPROVED: "审批通过",
    S.REJECTED: "未予通过",
    S.RESULT_ISSUED: "办理结果已出具",
    S.CLOSED: "已办结",
}


def _token(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(8)}"


async def create_user(
    *,
    level: IdentityLevel | str = IdentityLevel.L1,
    name: str = "林小满",
    id_number: str | None = None,
    phone: str | None = None,
    openid: str | None = "auto",
    unionid: str | None = None,
    cipher: FieldCipher = CIPHER,
) -> User:
    """A citizen: L1 (WeChat login only), L2 (real name declared) or L3 (plus a passed face check)."""
    level = IdentityLevel(level)
    user = User(
        openid=_token("o_mp_") if openid == "auto" else openid,
        unionid=unionid,
        identity_level=level,
    )
    if level in (IdentityLevel.L2, IdentityLevel.L3):
        number = parse_id_number(id_number or random_id_number()).value
        user.real_name_enc = cipher.encrypt(name, column="users.real_name")
        user.id_number_enc = cipher.encrypt(number, column="users.id_number")
        user.id_number_digest = cipher.blind_index(number, column="users.id_number")
        user.key_id = cipher.current_id.hex()
        if level == IdentityLevel.L3:
            user.verified_id_digest = user.id_number_digest
            user.face_verified_at = datetime.now(UTC)
    if phone is not None:
        user.phone_enc = cipher.encrypt(phone, column="users.phone")
        user.phone_digest = cipher.blind_index(phone, column="users.phone")
    await user.save()
    return user


def personal_data(user: User, cipher: FieldCipher = CIPHER) -> dict:
    """The user's name, ID number and phone in the clear (None where not declared)."""
    return {
        "name": cipher.decrypt_opt(user.real_name_enc, column="users.real_name"),
        "id_number": cipher.decrypt_opt(user.id_number_enc, column="users.id_number"),
        "phone": cipher.decrypt_opt(user.phone_enc, column="users.phone"),
    }


async def create_follower(
    *, user: User | None = None, unionid: str | None = None, oa_openid: str | None = None, subscribed: bool = True
) -> Follower:
    """A follower of the official account; linked to `user` only when given (else by unionid, later)."""
    return await Follower.create(
        oa_openid=oa_openid or _token("o_oa_"),
        unionid=unionid,
        user=user,
        subscribed=subscribed,
        last_message_at=datetime.now(UTC),
    )


async def create_grant(*, user: User, template_id: str, remaining: int = 1) -> SubscriptionGrant:
    """One-time subscribe-message grants, as `record_grants` keeps them after `remaining` accepts."""
    return await SubscriptionGrant.create(
        user=user, template_id=template_id, remaining=remaining, accepted_total=remaining, last_result="accept"
    )


async def service_item(code: str = RENEWAL) -> ServiceItem:
    """The current published version of a demo-catalogue item (loaded once per session)."""
    return await ServiceItem.get(code=code, is_current=True)


async def create_material(
    *, user: User, kind: str = "photo", mime: str = "image/jpeg", locked: bool = False, valid_until: date | None = None
) -> Material:
    """A material row (its bytes are not stored: for checks on ownership, kind and locking only)."""
    digest = hashlib.sha256(secrets.token_bytes(16)).hexdigest()
    return await Material.create(
        id=secrets.token_hex(16),
        user=user,
        kind=kind,
        mime=mime,
        size=1024,
        sha256=digest,
        width=900 if mime.startswith("image/") else None,
        height=1200 if mime.startswith("image/") else None,
        pages=1 if mime == "application/pdf" else None,
        object_name=secrets.token_hex(16),
        file_key=secrets.token_bytes(60),
        valid_until=valid_until,
        locked_at=datetime.now(UTC) if locked else None,
    )


async def create_draft(
    *,
    user: User,
    service_code: str = RENEWAL,
    data: dict | None = None,
    status: str = "open",
    expires_at: datetime | None = None,
    cipher: FieldCipher = CIPHER,
) -> Draft:
    """A draft of one item, its data sealed as the app seals it."""
    item = await service_item(service_code)
    return await Draft.create(
        id=secrets.token_hex(16),
        user=user,
        service_code=service_code,
        item_ids=[item.id],
        data_enc=cipher.encrypt(json.dumps(data or {}, ensure_ascii=False), column=DATA_COLUMN),
        status=status,
        expires_at=expires_at or datetime.now(UTC) + timedelta(days=30),
    )


def renewal_form(user: User, *, photo: str = "not-uploaded", phone: str = "13722223333", cipher=CIPHER) -> dict:
    """A complete, valid ID-card renewal form of `user` (an L2/L3 citizen), as submitted."""
    answers = renewal_answers(photo)
    person = personal_data(user, cipher)
    answers["applicant"].update(name=person["name"], id_number=person["id_number"], phone=phone)
    return answers


async def create_case(
    *,
    user: User,
    status: CaseStatus | str = CaseStatus.SUBMITTED,
    service_code: str = RENEWAL,
    form: dict | None = None,
    materials: dict | None = None,
    correction: dict | None = None,
    cipher: FieldCipher = CIPHER,
) -> Case:
    """A case in `status` with the history a real one would have.

    Events: the citizen's submission, the relay's delivery, then the platform's events (each
    with its `seq`; the case's `platform_seq` is the last). Outbox rows: `deliver_case` (done
    once delivered), `withdraw_case` for a withdrawn case, `resubmit_case` for a resubmitted one.
    `correction` is what a correction request asked for: {"fields", "materials", "reason"}."""
    status = CaseStatus(status)
    item = await service_item(service_code)
    if form is None:
        photo = (materials or {}).get("photo", ["not-uploaded"])[0]
        form = renewal_form(user, photo=photo, cipher=cipher) if service_code == RENEWAL else {}
    if materials is None:
        materials = dict(form.get("materials", {}))
    now = datetime.now(UTC)
    delivered = status not in (S.SUBMITTED, S.WITHDRAWN)
    steps = _HISTORY[status]
    fee = item.content.get("fee", {})
    case = await Case.create(
        case_no=await next_case_no(),
        user=user,
        service_item=item,
        service_code=item.code,
        service_name=item.name,
        status=status,
        form_snapshot_enc=cipher.encrypt(json.dumps(form, ensure_ascii=False), column=SNAPSHOT_COLUMN),
        materials={k: v for k, v in materials.items() if k in {m["key"] for m in item.content.get("materials", [])}},
        fee_fen=fee.get("amount_fen") if fee.get("kind") == "fixed" else None,
        platform_case_id=_token("P") if delivered else None,
        platform_seq=len(steps),
        row_version=1 + int(delivered) + len(steps) + int(status in (S.RESUBMITTED, S.WITHDRAWN)),
        platform_heard_at=now if delivered else None,
    )
    await Outbox.create(
        kind="deliver_case",
        case=case,
        payload={},
        status="done" if delivered else "pending",
        attempts=1 if delivered else 0,
        next_attempt_at=now,
        done_at=now if delivered else None,
    )
    await CaseEvent.create(
        case=case,
        actor_type=ActorType.CITIZEN,
        actor_id=str(user.id),
        to_status=S.SUBMITTED.value,
        note="网上申请已提交",
        data={"item_version": item.version, "bundle": None},
    )
    previous = S.SUBMITTED
    if delivered:
        await CaseEvent.create(
            case=case,
            actor_type=ActorType.SYSTEM,
            from_status=S.SUBMITTED.value,
            to_status=S.DELIVERED.value,
            note="已推送至审批部门",
            data={"platform_case_id": case.platform_case_id},
        )
        previous = S.DELIVERED
    for seq, step in enumerate(steps, start=1):
        data = {"seq": seq, "event": step.value, "at": now.isoformat()}
        if step == S.CORRECTION_REQUESTED:
            asked = correction or {"fields": ["applicant.phone"], "materials": ["photo"], "reason": "联系电话无法接通"}
            data.update(asked)
        await CaseEvent.create(
            case=case,
            actor_type=ActorType.PLATFORM,
            from_status=previous.value,
            to_status=step.value,
            note=_NOTES[step],
            data=data,
        )
        previous = step
    if status == S.RESUBMITTED:
        await CaseEvent.create(
            case=case,
            actor_type=ActorType.CITIZEN,
            actor_id=str(user.id),
            from_status=previous.value,
            to_status=S.RESUBMITTED.value,
            note="已按要求补正并重新提交",
        )
        await Outbox.create(
            kind="resubmit_case",
            case=case,
            next_attempt_at=now,
            payload={"fields_enc": cipher.encrypt("{}", column="outbox.payload").hex(), "materials": {}},
        )
    if status == S.WITHDRAWN:
        await CaseEvent.create(
            case=case,
            actor_type=ActorType.CITIZEN,
            actor_id=str(user.id),
            from_status=previous.value,
            to_status=S.WITHDRAWN.value,
            note="申请人撤回",
        )
        await Outbox.create(kind="withdraw_case", case=case, payload={"reason": "申请人撤回"}, next_attempt_at=now)
    return case


async def create_notification(
    *,
    case: Case,
    kind: str = "accepted",
    data: dict | None = None,
    push_status: str = "pending",
    next_attempt_at: datetime | None = None,
) -> Notification:
    """A notification about `case` as `handlers.push.notify` writes it, due now unless told."""
    return await Notification.create(
        dedup_key=_token("test:"),
        user_id=case.user_id,
        case_id=case.id,
        kind=kind,
        title=f"{case.service_name or case.service_code}：{PHRASES[kind]}"[:64],
        body=body_of(kind, data or {})[:500],
        page=case_page(case.case_no),
        urgent=kind in URGENT,
        push_status=push_status,
        next_attempt_at=next_attempt_at or datetime.now(UTC),
    )


async def assess_fee(
    case: Case, *, amount_fen: int = 2000, seq: int | None = None, notice_no: str | None = None
) -> Case:
    """The platform assessed a fee on `case` (as `fee_assessed` records it)."""
    seq = case.platform_seq + 1
    await Case.filter(id=case.id).update(
        fee_fen=amount_fen, fee_ref=f"platform:{seq}", fee_notice_no=notice_no, fee_paid_at=None, platform_seq=seq
    )
    return await Case.get(id=case.id)


async def create_order(
    *,
    case: Case,
    channel: str = "wechat",
    state: str = "paying",
    amount_fen: int | None = None,
    expires_in: timedelta = timedelta(minutes=30),
) -> PaymentOrder:
    """A payment order of `case`'s fee in `state`, as `handlers.payments.orders` makes it."""
    now = datetime.now(UTC)
    fee_ref = case.fee_ref or "catalogue"
    open_state = state in ("created", "paying", "paid", "refunding", "refunded", "partially_refunded")
    return await PaymentOrder.create(
        payment_id=_token("pay_"),
        out_trade_no=new_out_trade_no(now),
        case_id=case.id,
        user_id=case.user_id,
        fee_ref=fee_ref,
        open_slot=f"{case.id}:{fee_ref}" if open_state else None,
        idempotency_key=_token("key-"),
        channel=channel,
        amount_fen=case.fee_fen if amount_fen is None else amount_fen,
        state=state,
        notice_no=case.fee_notice_no,
        pay_data={"prepay_id": _token("wx")} if channel == "wechat" else {"qr_code": "https://qr.alipay.com/x"},
        paid_at=now if state in ("paid", "refunding", "refunded", "partially_refunded") else None,
        transaction_id=_token("4200") if state in ("paid", "refunding", "refunded") else None,
        expires_at=now + expires_in,
    )


async def create_official(
    *, department: str = "泸州市公安局", roles: list[str] | tuple[str, ...] = ("officer",), username: str | None = None
) -> Official:
    """A console official of `department` with `roles` (no usable password: for use-case tests)."""
    return await Official.create(
        username=username or _token("official"),
        display_name="测试工作人员",
        department=department,
        roles=list(roles),
        password_hash="-",
    )

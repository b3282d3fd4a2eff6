"""Officials reading citizens' clear personal data: allowed by role, always with a reason, always audited."""

from __future__ import annotations

from tortoise.transactions import in_transaction

from core.errors import Forbidden, NotFound, ValidationFailed
from handlers import audit
from storage.crypto import FieldCipher
from storage.models import ActorType, Address, Official, User

READER_ROLE = "personal_data"


async def read_citizen(
    *, official: Official, user_id: int, reason: str, cipher: FieldCipher, ip: str, request_id: str
) -> dict:
    """A citizen's clear personal data for an official with the role, audited with the reason."""
    if READER_ROLE not in (official.roles or []):
        raise Forbidden("您没有查看公民个人信息的权限", code="personal_data_forbidden")
    reason = (reason or "").strip()
    if not 4 <= len(reason) <= 200:
        raise ValidationFailed({"reason": "请填写查看原因（4至200字），例如办件编号"})
    user = await User.get_or_none(id=user_id)
    if user is None:
        raise NotFound("该用户不存在", code="citizen_not_found")
    addresses = await Address.filter(user_id=user.id).order_by("-is_default", "id")
    async with in_transaction():
        # The audit row is written before the data leaves: no read without its trace.
        await audit.record(
            actor_type=ActorType.OFFICIAL,
            actor_id=official.id,
            action="personal_data.read",
            target_type="user",
            target_id=user.id,
            request_id=request_id,
            ip=ip,
            detail={"fields": ["name", "id_number", "phone", "addresses"], "reason": reason},
        )
    return {
        "id": user.id,
        "identity_level": user.identity_level.value,
        "name": cipher.decrypt_opt(user.real_name_enc, column="users.real_name"),
        "id_number": cipher.decrypt_opt(user.id_number_enc, column="users.id_number"),
        "phone": cipher.decrypt_opt(user.phone_enc, column="users.phone"),
        "addresses": [
            {
                "recipient": cipher.decrypt(a.recipient_enc, column="addresses.recipient"),
                "phone": cipher.decrypt(a.phone_enc, column="addresses.phone"),
                "region_code": a.region_code,
                "detail": cipher.decrypt(a.detail_enc, column="addresses.detail"),
            }
            for a in addresses
        ],
    }

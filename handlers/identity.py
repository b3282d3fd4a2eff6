"""Real name (实名) and face verification (实名实人), the profile, and mailing addresses.

Clear personal data exists only in memory while a request is served: names, ID numbers,
phones and addresses are sealed by `FieldCipher` before they reach the database, looked up
by blind index, and shown masked.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime, timedelta

from tortoise.transactions import in_transaction

from core.cn_ids import (
    PROVINCES,
    InvalidIdentifier,
    ascii_digits,
    check_name,
    mask_id_number,
    mask_name,
    mask_phone,
    parse_id_number,
)
from core.errors import Conflict, NotFound, Unprocessable, ValidationFailed
from handlers import audit
from handlers.auth import account_changed
from handlers.upstream import wechat_errors
from storage.crypto import FieldCipher
from storage.models import ActorType, Address, FaceVerification, IdentityLevel, User
from wechat.client import WeChatClient, cert_hash

FACE_PASSED = 10000
FACE_NOT_FINISHED = 90000  # the scan was not done (yet); the session stays usable
MAX_ADDRESSES = 10
# ASCII digits only: Python's \d also matches "٣" and "３" (full-width ones are made ASCII first).
_PHONE = re.compile(r"^1[3-9][0-9]{9}$")
_REGION = re.compile(r"^[0-9]{6}$")

FACE_FAILURES = {
    90001: "设备不支持人脸检测",
    90002: "您取消了人脸核身",
    90003: "您取消了人脸核身",
    90004: "您取消了人脸核身",
    90005: "您取消了人脸核身",
    90006: "您取消了人脸核身",
    90007: "网络错误，请重试",
    90008: "请允许小程序使用相机",
    90009: "请允许小程序使用麦克风",
    90010: "请允许小程序使用相机和麦克风",
    90011: "未采集到有效的人脸，请重试",
    90012: "网络错误，上传失败，请重试",
    90013: "未采集到有效的人脸，请重试",
    90014: "未采集到有效的人脸，请重试",
    90017: "识别超时，请重试",
    90018: "系统错误，请稍后重试",
    90104: "获取人脸配置失败，请重试",
    90105: "获取确认数据失败，请重试",
    90106: "相机启动失败，请重试",
    90107: "检测超时，请重试",
    90109: "设备不支持人脸检测",
    90110: "获取协议信息失败，请重试",
    90199: "系统错误，请稍后重试",
}


async def _audit(user: User, action: str, *, ip: str | None = None, detail: dict | None = None) -> None:
    await audit.record(
        actor_type=ActorType.CITIZEN,
        actor_id=user.id,
        action=action,
        target_type="user",
        target_id=user.id,
        ip=ip,
        detail=detail,
    )


# -- service: checks and views -----------------------------------------------------------------


def check_declaration(name: str, id_number: str):
    """The normalised name and parsed ID number; raises 422 naming what is wrong with each."""
    fields: dict[str, str] = {}
    parsed = clean_name = None
    try:
        parsed = parse_id_number(id_number)
    except InvalidIdentifier as exc:
        fields["id_number"] = str(exc)
    try:
        clean_name = check_name(name)
    except InvalidIdentifier as exc:
        fields["name"] = str(exc)
    if fields:
        code = "invalid_id_number" if "id_number" in fields else "invalid_name"
        error = ValidationFailed(fields, message=next(iter(fields.values())) if len(fields) == 1 else None)
        error.code = code
        raise error
    return clean_name, parsed


def profile(user: User, addresses: list[Address], cipher: FieldCipher) -> dict:
    """The citizen's own profile, every personal value masked."""
    return {
        "id": user.id,
        "identity_level": user.identity_level.value,
        "name_masked": mask_name(cipher.decrypt_opt(user.real_name_enc, column="users.real_name")),
        "id_number_masked": mask_id_number(cipher.decrypt_opt(user.id_number_enc, column="users.id_number")),
        "phone_masked": mask_phone(cipher.decrypt_opt(user.phone_enc, column="users.phone")),
        "face_verified": user.identity_level == IdentityLevel.L3,
        "addresses": [address_view(a, cipher) for a in addresses],
    }


async def addresses_of(*, user: User) -> list[Address]:
    """The user's mailing addresses, the default first, then in the order they were added."""
    return await Address.filter(user_id=user.id).order_by("-is_default", "id")


async def own_profile(*, user: User, cipher: FieldCipher) -> dict:
    """The citizen's own profile with their addresses, every personal value masked."""
    return profile(user, await addresses_of(user=user), cipher)


async def own_addresses(*, user: User, cipher: FieldCipher) -> list[dict]:
    """The citizen's own addresses as they see them (`address_view`)."""
    return [address_view(a, cipher) for a in await addresses_of(user=user)]


def address_view(address: Address, cipher: FieldCipher) -> dict:
    """An address for its owner: recipient and phone masked, the place in full so it can be chosen."""
    return {
        "id": address.id,
        "recipient_masked": mask_name(cipher.decrypt(address.recipient_enc, column="addresses.recipient")),
        "phone_masked": mask_phone(cipher.decrypt(address.phone_enc, column="addresses.phone")),
        "region_code": address.region_code,
        "detail": cipher.decrypt(address.detail_enc, column="addresses.detail"),
        "is_default": address.is_default,
    }


def check_address(data: dict) -> dict:
    """The normalised address fields; raises 422 listing every bad one."""
    fields: dict[str, str] = {}
    out: dict = {}
    try:
        out["recipient"] = check_name(str(data.get("recipient", "")))
    except InvalidIdentifier as exc:
        fields["recipient"] = str(exc).replace("姓名", "收件人姓名")
    phone = ascii_digits(str(data.get("phone", ""))).strip()
    if not _PHONE.fullmatch(phone):
        fields["phone"] = "请输入11位手机号码"
    out["phone"] = phone
    region = ascii_digits(str(data.get("region_code", "")))
    if not _REGION.fullmatch(region) or region[:2] not in PROVINCES:
        fields["region_code"] = "请选择正确的所在地区"
    out["region_code"] = region
    detail = re.sub(r"\s+", " ", str(data.get("detail", "")).strip())
    if not 5 <= len(detail) <= 120:
        fields["detail"] = "详细地址应为5至120个字"
    out["detail"] = detail
    out["is_default"] = bool(data.get("is_default", False))
    if fields:
        raise ValidationFailed(fields)
    return out


# -- flows ---------------------------------------------------------------------------------------


async def declare(*, user: User, name: str, id_number: str, transfer: bool, cipher: FieldCipher, ip: str) -> User:
    """Records the declared real name (L2); an ID verified by another account needs `transfer` and a face check."""
    clean_name, parsed = check_declaration(name, id_number)
    digests = cipher.blind_indexes(parsed.value, column="users.id_number")
    holder = await User.filter(verified_id_digest__in=digests).exclude(id=user.id).first()
    if holder is not None and not transfer:
        raise Conflict(
            "该身份证号码已由其他微信账号完成实名认证。如需转移到本账号，请在申报时选择转移并完成人脸核身",
            code="identity_taken",
        )
    same_as_verified = user.verified_id_digest in digests and user.identity_level == IdentityLevel.L3
    user.real_name_enc = cipher.encrypt(clean_name, column="users.real_name")
    user.id_number_enc = cipher.encrypt(parsed.value, column="users.id_number")
    user.id_number_digest = digests[0]
    user.key_id = cipher.current_id.hex()
    if not same_as_verified:
        user.verified_id_digest = None
        user.face_verified_at = None
        # A transfer stays at L1 until the face check proves the person.
        user.identity_level = IdentityLevel.L1 if holder is not None else IdentityLevel.L2
    async with in_transaction():
        await user.save()
        await _audit(user, "identity.declared", ip=ip, detail={"transfer": holder is not None})
    return user


async def start_face(*, user: User, wechat: WeChatClient, cipher: FieldCipher) -> FaceVerification:
    """A face-check session for the declared identity (getVerifyId)."""
    if user.id_number_enc is None or user.real_name_enc is None:
        raise Conflict("请先填写姓名和身份证号码完成实名申报", code="identity_not_declared")
    if not user.openid:
        raise Conflict("请在小程序中完成人脸核身", code="openid_missing")
    name = cipher.decrypt(user.real_name_enc, column="users.real_name")
    id_number = cipher.decrypt(user.id_number_enc, column="users.id_number")
    out_seq_no = "zb" + secrets.token_hex(12)  # 26 chars of [0-9a-z], unique
    with wechat_errors():
        verify_id, expires_in = await wechat.get_verify_id(
            out_seq_no=out_seq_no, name=name, id_number=id_number, openid=user.openid
        )
    return await FaceVerification.create(
        user=user,
        out_seq_no=out_seq_no,
        verify_id=verify_id,
        cert_hash=cert_hash(name=name, id_number=id_number),
        id_number_digest=user.id_number_digest,
        expires_at=datetime.now(UTC) + timedelta(seconds=expires_in),
    )


async def finish_face(*, user: User, verify_id: str, wechat: WeChatClient, ip: str) -> User:
    """Checks the face result (queryVerifyInfo); 10000 makes the user L3 (实名实人)."""
    session = await FaceVerification.get_or_none(verify_id=verify_id, user_id=user.id)
    if session is None:  # someone else's verify_id looks exactly like an unknown one
        raise NotFound("人脸核身会话不存在，请重新发起", code="verify_id_not_found")
    if session.expires_at <= datetime.now(UTC):
        raise Unprocessable("人脸核身已超时，请重新发起", code="face_verify_expired")
    # Claim the session: a verify_id is used once, even by two concurrent requests.
    if not await FaceVerification.filter(id=session.id, status="pending").update(status="checking"):
        raise Conflict("该人脸核身结果已使用，请重新发起", code="verify_id_used")
    try:
        with wechat_errors():
            verify_ret = await wechat.query_verify_info(
                verify_id=verify_id, out_seq_no=session.out_seq_no, cert_hash=session.cert_hash, openid=user.openid
            )
    except Exception:
        await FaceVerification.filter(id=session.id).update(status="pending")  # let the citizen retry
        raise
    now = datetime.now(UTC)
    if verify_ret == FACE_NOT_FINISHED:
        await FaceVerification.filter(id=session.id).update(status="pending")
        raise Conflict("人脸核身尚未完成，请先完成刷脸", code="face_verify_pending")
    if verify_ret != FACE_PASSED:
        await FaceVerification.filter(id=session.id).update(status="failed", verify_ret=verify_ret, finished_at=now)
        await _audit(user, "identity.face_failed", ip=ip, detail={"verify_ret": verify_ret})
        raise Unprocessable(
            f"人脸核身未通过：{FACE_FAILURES.get(verify_ret, '请重试')}",
            code="face_verify_failed",
            details={"verify_ret": verify_ret},
        )
    async with in_transaction():
        user = await User.select_for_update().get(id=user.id)
        if user.id_number_digest != session.id_number_digest:
            raise Conflict("实名信息在核身期间已修改，请重新发起人脸核身", code="identity_changed")
        digest = session.id_number_digest
        previous = await User.filter(verified_id_digest=digest).exclude(id=user.id).first()
        if previous is not None:  # the identity moves to this account
            await User.filter(id=previous.id).update(
                verified_id_digest=None, identity_level=IdentityLevel.L1, face_verified_at=None
            )
            await account_changed(previous.id)  # its signed-in requests see the lower level at once
            await _audit(previous, "identity.transferred_away", ip=ip, detail={"to_user": user.id})
        user.verified_id_digest = digest
        user.identity_level = IdentityLevel.L3
        user.face_verified_at = now
        await user.save(update_fields=["verified_id_digest", "identity_level", "face_verified_at", "updated_at"])
        await FaceVerification.filter(id=session.id).update(status="passed", verify_ret=verify_ret, finished_at=now)
        await _audit(user, "identity.face_passed", ip=ip, detail={"transfer_from": previous.id if previous else None})
    return user


async def bind_phone(*, user: User, code: str, wechat: WeChatClient, cipher: FieldCipher, ip: str) -> str:
    """Stores the mobile number WeChat gives for a getPhoneNumber code; returns it masked."""
    with wechat_errors():
        phone = await wechat.phone_number(code)
    user.phone_enc = cipher.encrypt(phone, column="users.phone")
    user.phone_digest = cipher.blind_index(phone, column="users.phone")
    await user.save(update_fields=["phone_enc", "phone_digest", "updated_at"])
    await _audit(user, "identity.phone_bound", ip=ip)
    return mask_phone(phone)


async def add_address(*, user: User, data: dict, cipher: FieldCipher) -> Address:
    """Adds a mailing address (at most MAX_ADDRESSES); the first or a flagged one becomes default."""
    clean = check_address(data)
    async with in_transaction():
        count = await Address.filter(user_id=user.id).count()
        if count >= MAX_ADDRESSES:
            raise Conflict(f"最多保存{MAX_ADDRESSES}个地址", code="too_many_addresses")
        is_default = clean["is_default"] or count == 0
        if is_default:
            await Address.filter(user_id=user.id).update(is_default=False)
        return await Address.create(user_id=user.id, is_default=is_default, **_sealed(clean, cipher))


async def update_address(*, user: User, address_id: int, data: dict, cipher: FieldCipher) -> Address:
    """Replaces one of the user's addresses; another user's id is 404."""
    clean = check_address(data)
    async with in_transaction():
        address = await Address.get_or_none(id=address_id, user_id=user.id)
        if address is None:
            raise NotFound("地址不存在", code="address_not_found")
        if clean["is_default"]:
            await Address.filter(user_id=user.id).update(is_default=False)
        for key, value in _sealed(clean, cipher).items():
            setattr(address, key, value)
        address.is_default = clean["is_default"] or address.is_default
        await address.save()
    return address


async def delete_address(*, user: User, address_id: int) -> None:
    """Deletes one of the user's addresses; another user's id is 404."""
    if not await Address.filter(id=address_id, user_id=user.id).delete():
        raise NotFound("地址不存在", code="address_not_found")


def _sealed(clean: dict, cipher: FieldCipher) -> dict:
    return {
        "recipient_enc": cipher.encrypt(clean["recipient"], column="addresses.recipient"),
        "phone_enc": cipher.encrypt(clean["phone"], column="addresses.phone"),
        "region_code": clean["region_code"],
        "detail_enc": cipher.encrypt(clean["detail"], column="addresses.detail"),
    }


# -- key rotation ----------------------------------------------------------------------------

_SEALED_COLUMNS = {
    User: {
        "real_name_enc": "users.real_name",
        "id_number_enc": "users.id_number",
        "phone_enc": "users.phone",
        "session_key_enc": "users.session_key",
    },
    Address: {"recipient_enc": "addresses.recipient", "phone_enc": "addresses.phone", "detail_enc": "addresses.detail"},
}


async def rotate_keys(*, cipher: FieldCipher, batch: int = 500) -> dict[str, int]:
    """Reseals every value not under the current key and recomputes blind indexes; counts rows changed."""
    counts = {"users": 0, "addresses": 0}
    for model, columns in _SEALED_COLUMNS.items():
        last_id = 0
        while True:
            rows = await model.filter(id__gt=last_id).order_by("id").limit(batch)
            if not rows:
                break
            for row in rows:
                last_id = row.id
                changed: list[str] = []
                for attr, column in columns.items():
                    blob = getattr(row, attr)
                    if blob is not None and not cipher.is_current(bytes(blob)):
                        setattr(row, attr, cipher.encrypt(cipher.decrypt(bytes(blob), column=column), column=column))
                        changed.append(attr)
                if model is User and changed:
                    if row.id_number_enc is not None:
                        number = cipher.decrypt(row.id_number_enc, column="users.id_number")
                        digest = cipher.blind_index(number, column="users.id_number")
                        if row.verified_id_digest is not None:
                            row.verified_id_digest = digest
                        row.id_number_digest = digest
                        changed += ["id_number_digest", "verified_id_digest"]
                    if row.phone_enc is not None:
                        row.phone_digest = cipher.blind_index(
                            cipher.decrypt(row.phone_enc, column="users.phone"), column="users.phone"
                        )
                        changed.append("phone_digest")
                    row.key_id = cipher.current_id.hex()
                    changed.append("key_id")
                if changed:
                    await row.save(update_fields=changed)
                    counts[model.Meta.table] += 1
    # Face sessions still pending keep the digest of the declaration they were started for.
    return counts

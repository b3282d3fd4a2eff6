"""Tortoise models: the whole schema, one class per table.

Personal data (names, ID numbers, phones, WeChat session keys) is stored only encrypted
(`*_enc`, AES-GCM by `storage.crypto`, filled by the identity issue) with a keyed digest
(`*_digest`) beside it where we must look a value up or keep it unique.
Schema changes go through `python server.py makemigrations`, never by hand. Class docstrings
become table comments: keep semicolons and apostrophes out of them (SQLite DDL breaks).
"""

from __future__ import annotations

from enum import Enum

from tortoise import fields
from tortoise.models import Model


class IdentityLevel(str, Enum):
    L1 = "L1"  # WeChat login only
    L2 = "L2"  # real name declared and checked (实名)
    L3 = "L3"  # real name plus face verification (实名实人)


class CaseStatus(str, Enum):
    SUBMITTED = "submitted"
    DELIVERED = "delivered_to_platform"
    ACCEPTED = "accepted"
    IN_REVIEW = "in_review"
    CORRECTION_REQUESTED = "correction_requested"
    RESUBMITTED = "resubmitted"
    APPROVED = "approved"
    REJECTED = "rejected"
    RESULT_ISSUED = "result_issued"
    CLOSED = "closed"
    WITHDRAWN = "withdrawn"


class ServiceItemStatus(str, Enum):
    PUBLISHED = "published"
    RETIRED = "retired"


class ActorType(str, Enum):
    CITIZEN = "citizen"
    OFFICIAL = "official"
    PLATFORM = "platform"
    SYSTEM = "system"


class User(Model):
    """A citizen, keyed by mini-program openid and linked across apps by unionid."""

    id = fields.BigIntField(primary_key=True)
    openid = fields.CharField(max_length=64, unique=True, null=True)
    unionid = fields.CharField(max_length=64, null=True, db_index=True)
    oa_openid = fields.CharField(max_length=64, unique=True, null=True)
    identity_level = fields.CharEnumField(IdentityLevel, max_length=2, default=IdentityLevel.L1)
    real_name_enc = fields.BinaryField(null=True)
    id_number_enc = fields.BinaryField(null=True)
    # Blind index of the declared ID number; `verified_id_digest` is set only after a passed
    # face check and is unique: one verified ID number belongs to one account.
    id_number_digest = fields.CharField(max_length=64, null=True, db_index=True)
    verified_id_digest = fields.CharField(max_length=64, unique=True, null=True)
    key_id = fields.CharField(max_length=8, null=True)
    phone_enc = fields.BinaryField(null=True)
    phone_digest = fields.CharField(max_length=64, null=True, db_index=True)
    session_key_enc = fields.BinaryField(null=True)
    face_verified_at = fields.DatetimeField(null=True)
    is_active = fields.BooleanField(default=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        table = "users"


class Address(Model):
    """A mailing address of a citizen, for results sent by post, every part encrypted."""

    id = fields.BigIntField(primary_key=True)
    user: fields.ForeignKeyRelation[User] = fields.ForeignKeyField(
        "models.User", related_name="addresses", on_delete=fields.CASCADE
    )
    recipient_enc = fields.BinaryField()
    phone_enc = fields.BinaryField()
    region_code = fields.CharField(max_length=6)
    detail_enc = fields.BinaryField()
    is_default = fields.BooleanField(default=False)
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        table = "addresses"


class RefreshToken(Model):
    """A refresh token, stored hashed, rotating ones share a family that is revoked together."""

    id = fields.BigIntField(primary_key=True)
    user: fields.ForeignKeyRelation[User] = fields.ForeignKeyField(
        "models.User", related_name="refresh_tokens", on_delete=fields.CASCADE
    )
    family = fields.CharField(max_length=32, db_index=True)
    token_hash = fields.CharField(max_length=64, unique=True)
    expires_at = fields.DatetimeField()
    used_at = fields.DatetimeField(null=True)
    revoked_at = fields.DatetimeField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "refresh_tokens"


class FaceVerification(Model):
    """One face check (人脸核身) session: our out_seq_no, WeChat's verify_id, the outcome."""

    id = fields.BigIntField(primary_key=True)
    user: fields.ForeignKeyRelation[User] = fields.ForeignKeyField(
        "models.User", related_name="face_verifications", on_delete=fields.CASCADE
    )
    out_seq_no = fields.CharField(max_length=32, unique=True)
    verify_id = fields.CharField(max_length=128, unique=True)
    cert_hash = fields.CharField(max_length=64)
    id_number_digest = fields.CharField(max_length=64)
    status = fields.CharField(max_length=16, default="pending")  # pending | passed | failed
    verify_ret = fields.IntField(null=True)
    expires_at = fields.DatetimeField()
    created_at = fields.DatetimeField(auto_now_add=True)
    finished_at = fields.DatetimeField(null=True)

    class Meta:
        table = "face_verifications"


class Follower(Model):
    """A follower of the official account, linked to a mini-program user by unionid when known."""

    oa_openid = fields.CharField(max_length=64, primary_key=True)
    unionid = fields.CharField(max_length=64, null=True, db_index=True)
    user: fields.ForeignKeyNullableRelation[User] = fields.ForeignKeyField(
        "models.User", related_name="followers", null=True, on_delete=fields.SET_NULL
    )
    subscribed = fields.BooleanField(default=True)
    last_message_at = fields.DatetimeField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        table = "followers"


class Ticket(Model):
    """A consultation (咨询) or complaint (投诉) taken by the bot, routed to a department."""

    id = fields.BigIntField(primary_key=True)
    ticket_no = fields.CharField(max_length=32, unique=True)
    kind = fields.CharField(max_length=16)  # consultation | complaint
    oa_openid = fields.CharField(max_length=64, db_index=True)
    user: fields.ForeignKeyNullableRelation[User] = fields.ForeignKeyField(
        "models.User", related_name="tickets", null=True, on_delete=fields.SET_NULL
    )
    department = fields.CharField(max_length=128, default="")
    service_code = fields.CharField(max_length=64, null=True)
    content_enc = fields.BinaryField()
    status = fields.CharField(max_length=16, default="open", db_index=True)  # open | answered | closed
    answer_enc = fields.BinaryField(null=True)
    dedup_key = fields.CharField(max_length=160, unique=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    answered_at = fields.DatetimeField(null=True)
    # Where it came from (official_account: oa_openid set; miniprogram: oa_openid empty) and
    # so how the answer goes back.
    channel = fields.CharField(max_length=16, default="official_account")
    case_no = fields.CharField(max_length=32, null=True)
    due_at = fields.DatetimeField(null=True, db_index=True)
    reminded_at = fields.DatetimeField(null=True)
    escalated_at = fields.DatetimeField(null=True)
    answered_by = fields.BigIntField(null=True)  # the official
    rating = fields.SmallIntField(null=True)  # the citizen's rating of the answer, 1-5
    rated_at = fields.DatetimeField(null=True)

    class Meta:
        table = "tickets"
        indexes = (("department", "status", "due_at"),)


class Material(Model):
    """An uploaded material (photo or PDF), stored sealed, reusable across applications (材料复用)."""

    id = fields.CharField(max_length=32, primary_key=True)  # random: ids cannot be guessed
    user: fields.ForeignKeyRelation[User] = fields.ForeignKeyField(
        "models.User", related_name="materials", on_delete=fields.CASCADE
    )
    kind = fields.CharField(max_length=64)
    mime = fields.CharField(max_length=64)
    size = fields.IntField()
    sha256 = fields.CharField(max_length=64)  # of the bytes uploaded
    width = fields.IntField(null=True)
    height = fields.IntField(null=True)
    pages = fields.IntField(null=True)
    warnings = fields.JSONField(default=list)
    object_name = fields.CharField(max_length=64)
    file_key = fields.BinaryField()
    thumb_object_name = fields.CharField(max_length=64, null=True)
    thumb_key = fields.BinaryField(null=True)
    valid_until = fields.DateField(null=True)
    locked_at = fields.DatetimeField(null=True)  # attached to a submitted case: kept exactly as reviewed
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "materials"
        unique_together = (("user", "sha256"),)


class Official(Model):
    """A government official who signs in to the web console."""

    id = fields.BigIntField(primary_key=True)
    username = fields.CharField(max_length=64, unique=True)
    display_name = fields.CharField(max_length=64)
    department = fields.CharField(max_length=128, default="")
    roles = fields.JSONField(default=list)
    password_hash = fields.CharField(max_length=255)
    is_active = fields.BooleanField(default=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    last_login_at = fields.DatetimeField(null=True)
    # The TOTP second factor: the sealed secret (pending until confirmed), when it was confirmed,
    # and the last time step accepted, so that one code never signs in twice.
    totp_secret_enc = fields.BinaryField(null=True)
    totp_enabled_at = fields.DatetimeField(null=True)
    totp_last_step = fields.BigIntField(null=True)
    updated_at = fields.DatetimeField(auto_now=True, null=True)

    class Meta:
        table = "officials"


class RolePolicy(Model):
    """What a console role demands of its holders: a TOTP second factor, as an admin decides."""

    role = fields.CharField(max_length=32, primary_key=True)
    require_totp = fields.BooleanField(default=False)
    updated_by = fields.BigIntField(null=True)
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        table = "console_role_policies"


class AuditLog(Model):
    """Who did or read what, when: every official read of personal data lands here."""

    id = fields.BigIntField(primary_key=True)
    at = fields.DatetimeField(auto_now_add=True, db_index=True)
    actor_type = fields.CharEnumField(ActorType, max_length=16)
    actor_id = fields.CharField(max_length=64, null=True)
    action = fields.CharField(max_length=64)
    target_type = fields.CharField(max_length=32, null=True)
    target_id = fields.CharField(max_length=64, null=True)
    request_id = fields.CharField(max_length=64, null=True)
    ip = fields.CharField(max_length=64, null=True)
    detail = fields.JSONField(default=dict)

    class Meta:
        table = "audit_log"
        indexes = (("target_type", "target_id"),)


class ServiceItem(Model):
    """One immutable published version of a catalogue item (事项), publishing adds a row."""

    id = fields.BigIntField(primary_key=True)
    code = fields.CharField(max_length=64)
    version = fields.IntField()
    name = fields.CharField(max_length=128)
    department = fields.CharField(max_length=128)
    status = fields.CharEnumField(ServiceItemStatus, max_length=16, default=ServiceItemStatus.PUBLISHED)
    is_current = fields.BooleanField(default=True)
    content = fields.JSONField()
    content_sha256 = fields.CharField(max_length=64)
    published_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "service_items"
        unique_together = (("code", "version"),)
        indexes = (("code", "is_current"),)


class CatalogueState(Model):
    """Catalogue-wide data (region, departments, themes, synonyms, bundles) and its revision."""

    id = fields.CharField(max_length=32, primary_key=True)  # "catalogue"
    revision = fields.IntField(default=0)
    content = fields.JSONField(default=dict)
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        table = "catalogue_state"


class Case(Model):
    """A submitted application, keeping the item version and the form as submitted."""

    id = fields.BigIntField(primary_key=True)
    case_no = fields.CharField(max_length=32, unique=True)
    user: fields.ForeignKeyRelation[User] = fields.ForeignKeyField(
        "models.User", related_name="cases", on_delete=fields.RESTRICT
    )
    service_item: fields.ForeignKeyRelation[ServiceItem] = fields.ForeignKeyField(
        "models.ServiceItem", related_name="cases", on_delete=fields.RESTRICT
    )
    service_code = fields.CharField(max_length=64, db_index=True)
    service_name = fields.CharField(max_length=128, default="")
    status = fields.CharEnumField(CaseStatus, max_length=32, default=CaseStatus.SUBMITTED, db_index=True)
    # The form as submitted, sealed whole: it holds names, ID numbers, phones, addresses.
    form_snapshot_enc = fields.BinaryField(null=True)
    materials = fields.JSONField(default=dict)
    fee_fen = fields.IntField(null=True)
    # Which fee `fee_fen` is: "catalogue" (the item's fixed fee) or "platform:<seq>" (assessed);
    # a new assessment is a new fee, to be paid by an order of its own.
    fee_ref = fields.CharField(max_length=32, default="")
    fee_notice_no = fields.CharField(max_length=64, null=True)  # the public payment platform's 缴款码
    fee_paid_at = fields.DatetimeField(null=True)
    platform_case_id = fields.CharField(max_length=64, null=True, unique=True)
    platform_seq = fields.IntField(default=0)
    draft_id = fields.CharField(max_length=32, null=True, db_index=True)
    bundle_no = fields.CharField(max_length=32, null=True, db_index=True)
    row_version = fields.IntField(default=1)
    submitted_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)
    # When the platform last told us something (a callback, or an answer to our status query).
    platform_heard_at = fields.DatetimeField(null=True)
    # Set by the overdue sweep once the promised date has passed without a decision.
    overdue_at = fields.DatetimeField(null=True)

    class Meta:
        table = "cases"


class Draft(Model):
    """An application being filled in, by one citizen, on the item version it started with."""

    id = fields.CharField(max_length=32, primary_key=True)  # random: ids cannot be guessed
    user: fields.ForeignKeyRelation[User] = fields.ForeignKeyField(
        "models.User", related_name="drafts", on_delete=fields.CASCADE
    )
    service_code = fields.CharField(max_length=64, null=True)
    bundle_code = fields.CharField(max_length=64, null=True)
    item_ids = fields.JSONField(default=list)  # the ServiceItem versions, one per item
    data_enc = fields.BinaryField()
    version = fields.IntField(default=1)
    status = fields.CharField(max_length=16, default="open")  # open | submitted
    expires_at = fields.DatetimeField(db_index=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        table = "drafts"
        indexes = (("user_id", "status"),)


class Submission(Model):
    """An idempotent submit: the same key returns the same cases, a different body is refused."""

    id = fields.BigIntField(primary_key=True)
    user: fields.ForeignKeyRelation[User] = fields.ForeignKeyField(
        "models.User", related_name="submissions", on_delete=fields.CASCADE
    )
    idempotency_key = fields.CharField(max_length=128)
    fingerprint = fields.CharField(max_length=64)
    draft_id = fields.CharField(max_length=32)
    case_nos = fields.JSONField(default=list)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "submissions"
        unique_together = (("user", "idempotency_key"),)


class DailySequence(Model):
    """The last number handed out per day and purpose (case numbers)."""

    id = fields.CharField(max_length=32, primary_key=True)  # e.g. "case:20261122"
    last_value = fields.IntField(default=0)

    class Meta:
        table = "daily_sequences"


class Outbox(Model):
    """Work for the core platform, committed with the change that caused it (transactional outbox)."""

    id = fields.BigIntField(primary_key=True)
    kind = fields.CharField(max_length=32)  # deliver_case | withdraw_case | resubmit_case
    case: fields.ForeignKeyRelation[Case] = fields.ForeignKeyField(
        "models.Case", related_name="outbox", on_delete=fields.CASCADE
    )
    payload = fields.JSONField(default=dict)
    status = fields.CharField(max_length=16, default="pending", db_index=True)  # pending | sending | done | dead
    attempts = fields.IntField(default=0)
    next_attempt_at = fields.DatetimeField(db_index=True)
    last_error = fields.CharField(max_length=500, default="")
    created_at = fields.DatetimeField(auto_now_add=True)
    done_at = fields.DatetimeField(null=True)

    class Meta:
        table = "outbox"


class CaseEvent(Model):
    """One state change of a case: the timeline shown to the citizen and the audit trail."""

    id = fields.BigIntField(primary_key=True)
    case: fields.ForeignKeyRelation[Case] = fields.ForeignKeyField(
        "models.Case", related_name="events", on_delete=fields.CASCADE
    )
    at = fields.DatetimeField(auto_now_add=True)
    actor_type = fields.CharEnumField(ActorType, max_length=16)
    actor_id = fields.CharField(max_length=64, null=True)
    from_status = fields.CharField(max_length=32, null=True)
    to_status = fields.CharField(max_length=32)
    note = fields.TextField(default="")
    data = fields.JSONField(default=dict)

    class Meta:
        table = "case_events"
        indexes = (("case_id", "at"),)


class SubscriptionGrant(Model):
    """One-time subscribe-message rights a citizen gave per template (wx.requestSubscribeMessage)."""

    id = fields.BigIntField(primary_key=True)
    user: fields.ForeignKeyRelation[User] = fields.ForeignKeyField(
        "models.User", related_name="subscription_grants", on_delete=fields.CASCADE
    )
    template_id = fields.CharField(max_length=128)
    remaining = fields.IntField(default=0)
    accepted_total = fields.IntField(default=0)
    last_result = fields.CharField(max_length=16, default="")
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        table = "subscription_grants"
        unique_together = (("user", "template_id"),)


class Notification(Model):
    """A message to a citizen about a case: the inbox item, and the WeChat push that carries it.

    dedup_key (one per case event) makes it exactly one notification per change, whatever
    the retries. push_status is pending, sending, sent, inbox_only or failed.
    """

    id = fields.BigIntField(primary_key=True)
    dedup_key = fields.CharField(max_length=96, unique=True)
    user: fields.ForeignKeyRelation[User] = fields.ForeignKeyField(
        "models.User", related_name="notifications", on_delete=fields.CASCADE
    )
    case: fields.ForeignKeyNullableRelation[Case] = fields.ForeignKeyField(
        "models.Case", related_name="notifications", null=True, on_delete=fields.CASCADE
    )
    kind = fields.CharField(max_length=32)  # a case status, or fee_assessed
    title = fields.CharField(max_length=64)
    body = fields.CharField(max_length=500)
    page = fields.CharField(max_length=256, default="")
    urgent = fields.BooleanField(default=False)
    push_status = fields.CharField(max_length=16, default="pending", db_index=True)
    channel = fields.CharField(max_length=16, default="")  # subscribe | template | inbox
    attempts = fields.IntField(default=0)
    next_attempt_at = fields.DatetimeField(db_index=True)
    read_at = fields.DatetimeField(null=True)
    sent_at = fields.DatetimeField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "notifications"
        indexes = (("user_id", "id"),)


class PushAttempt(Model):
    """One try at one channel for a notification, and what came of it (shown to officials)."""

    id = fields.BigIntField(primary_key=True)
    notification: fields.ForeignKeyRelation[Notification] = fields.ForeignKeyField(
        "models.Notification", related_name="push_attempts", on_delete=fields.CASCADE
    )
    channel = fields.CharField(max_length=16)
    started_at = fields.DatetimeField(auto_now_add=True)
    finished_at = fields.DatetimeField(null=True)
    result = fields.CharField(max_length=24, default="started")
    errcode = fields.IntField(null=True)
    detail = fields.CharField(max_length=300, default="")

    class Meta:
        table = "push_attempts"


class PaymentOrder(Model):
    """One attempt to pay one fee of a case through one channel (an order at WeChat Pay or Alipay).

    state moves only along handlers.payments.orders.TRANSITIONS, by conditional updates.
    open_slot is the case and fee while the order is not closed: unique, so a fee has one open order.
    """

    id = fields.BigIntField(primary_key=True)
    payment_id = fields.CharField(max_length=32, unique=True)  # random: the id citizens see
    out_trade_no = fields.CharField(max_length=32, unique=True)
    case: fields.ForeignKeyRelation[Case] = fields.ForeignKeyField(
        "models.Case", related_name="payment_orders", on_delete=fields.RESTRICT
    )
    user: fields.ForeignKeyRelation[User] = fields.ForeignKeyField(
        "models.User", related_name="payment_orders", on_delete=fields.RESTRICT
    )
    fee_ref = fields.CharField(max_length=32)
    open_slot = fields.CharField(max_length=64, null=True, unique=True)
    idempotency_key = fields.CharField(max_length=128)
    channel = fields.CharField(max_length=16)  # wechat | alipay_qr | alipay_wap
    amount_fen = fields.BigIntField()
    state = fields.CharField(max_length=20, default="created", db_index=True)
    notice_no = fields.CharField(max_length=64, null=True)
    pay_data = fields.JSONField(default=dict)  # prepay_id / qr_code / pay_url
    transaction_id = fields.CharField(max_length=64, null=True)
    paid_at = fields.DatetimeField(null=True)
    refunded_fen = fields.BigIntField(default=0)
    expires_at = fields.DatetimeField(db_index=True)
    closed_at = fields.DatetimeField(null=True)
    close_reason = fields.CharField(max_length=32, default="")
    receipt = fields.JSONField(null=True)  # the e-receipt: receipt_no, verify_url, issued_at
    last_checked_at = fields.DatetimeField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        table = "payment_orders"
        unique_together = (("user", "idempotency_key"),)
        indexes = (("case_id", "id"), ("state", "updated_at"))


class PaymentRefund(Model):
    """A refund of a paid order, idempotent at the channel by out_refund_no."""

    id = fields.BigIntField(primary_key=True)
    order: fields.ForeignKeyRelation[PaymentOrder] = fields.ForeignKeyField(
        "models.PaymentOrder", related_name="refunds", on_delete=fields.RESTRICT
    )
    out_refund_no = fields.CharField(max_length=64, unique=True)
    amount_fen = fields.BigIntField()
    cause = fields.CharField(max_length=32)  # case_rejected | case_withdrawn | paid_after_close
    reason = fields.CharField(max_length=80, default="")
    state = fields.CharField(max_length=16, default="requested", db_index=True)  # requested|processing|success|failed
    refund_id = fields.CharField(max_length=64, null=True)
    attempts = fields.IntField(default=0)
    next_attempt_at = fields.DatetimeField(db_index=True)
    last_error = fields.CharField(max_length=300, default="")
    created_at = fields.DatetimeField(auto_now_add=True)
    done_at = fields.DatetimeField(null=True)

    class Meta:
        table = "payment_refunds"


class PaymentEvent(Model):
    """Every change of an order or refund, with what caused it (notify, query, expiry, refund)."""

    id = fields.BigIntField(primary_key=True)
    order: fields.ForeignKeyRelation[PaymentOrder] = fields.ForeignKeyField(
        "models.PaymentOrder", related_name="events", on_delete=fields.RESTRICT
    )
    at = fields.DatetimeField(auto_now_add=True)
    from_state = fields.CharField(max_length=20)
    to_state = fields.CharField(max_length=20)
    source = fields.CharField(max_length=16)  # notify | query | expiry | citizen | refund | job
    data = fields.JSONField(default=dict)

    class Meta:
        table = "payment_events"
        indexes = (("order_id", "id"),)


class PaymentAlert(Model):
    """Something about money an official must look at (a mismatch, a payment after close)."""

    id = fields.BigIntField(primary_key=True)
    order: fields.ForeignKeyNullableRelation[PaymentOrder] = fields.ForeignKeyField(
        "models.PaymentOrder", related_name="alerts", null=True, on_delete=fields.RESTRICT
    )
    kind = fields.CharField(max_length=32)
    dedup_key = fields.CharField(max_length=128, unique=True)
    detail = fields.JSONField(default=dict)
    created_at = fields.DatetimeField(auto_now_add=True)
    resolved_at = fields.DatetimeField(null=True)

    class Meta:
        table = "payment_alerts"


class ReconciliationReport(Model):
    """One channel's bill of one day checked against our orders and refunds (对账)."""

    id = fields.BigIntField(primary_key=True)
    channel = fields.CharField(max_length=16)  # wechat | alipay
    bill_date = fields.DateField()
    summary = fields.JSONField(default=dict)
    items = fields.JSONField(default=list)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "reconciliation_reports"
        unique_together = (("channel", "bill_date"),)


class Evaluation(Model):
    """A citizen's rating of a case (好差评), one per case: given actively, or the default after 7 days."""

    id = fields.BigIntField(primary_key=True)
    case: fields.OneToOneRelation[Case] = fields.OneToOneField(
        "models.Case", related_name="evaluation", on_delete=fields.CASCADE
    )
    user: fields.ForeignKeyRelation[User] = fields.ForeignKeyField(
        "models.User", related_name="evaluations", on_delete=fields.CASCADE
    )
    department = fields.CharField(max_length=128)  # the item's department when rated
    service_code = fields.CharField(max_length=64)
    level = fields.SmallIntField()  # 5 非常满意 ... 1 非常不满意; 1-2 are 差评
    tags = fields.JSONField(default=list)
    comment_enc = fields.BinaryField(null=True)
    active = fields.BooleanField(default=True)  # False: the default 基本满意 after 7 days
    channel = fields.CharField(max_length=16)  # miniprogram | official_account | default
    identity_level = fields.CharField(max_length=2, default="")
    created_at = fields.DatetimeField(auto_now_add=True, db_index=True)

    class Meta:
        table = "evaluations"
        indexes = (("department", "created_at"), ("level", "created_at"))


class Rectification(Model):
    """The follow-up of a bad review (差评整改): call back, rectify, the citizen answers, or excluded (申诉).

    status is verifying, rectifying, awaiting_citizen, closed or excluded. exclusion is
    none, requested, approved or refused. round counts the times the citizen sent it back.
    """

    id = fields.BigIntField(primary_key=True)
    evaluation: fields.OneToOneRelation[Evaluation] = fields.OneToOneField(
        "models.Evaluation", related_name="rectification", on_delete=fields.CASCADE
    )
    case: fields.ForeignKeyRelation[Case] = fields.ForeignKeyField(
        "models.Case", related_name="rectifications", on_delete=fields.CASCADE
    )
    department = fields.CharField(max_length=128, db_index=True)
    status = fields.CharField(max_length=20, default="verifying", db_index=True)
    round = fields.SmallIntField(default=1)
    verify_due_at = fields.DatetimeField()
    rectify_due_at = fields.DatetimeField()
    verified_at = fields.DatetimeField(null=True)
    verify_note_enc = fields.BinaryField(null=True)
    rectified_at = fields.DatetimeField(null=True)
    rectify_text_enc = fields.BinaryField(null=True)
    citizen_answer = fields.CharField(max_length=16, null=True)  # satisfied | not_satisfied
    answered_at = fields.DatetimeField(null=True)
    reminded_at = fields.DatetimeField(null=True)
    escalated_at = fields.DatetimeField(null=True)
    exclusion = fields.CharField(max_length=12, default="none")
    exclusion_reason = fields.CharField(max_length=500, default="")
    exclusion_decision = fields.CharField(max_length=500, default="")
    closed_at = fields.DatetimeField(null=True)
    on_time = fields.BooleanField(null=True)  # rectified by rectify_due_at
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        table = "rectifications"
        indexes = (("department", "status", "rectify_due_at"),)


class LoopEvent(Model):
    """One step of a rectification or a ticket, with who took it and when."""

    id = fields.BigIntField(primary_key=True)
    subject_type = fields.CharField(max_length=16)  # rectification | ticket
    subject_id = fields.BigIntField()
    action = fields.CharField(max_length=32)
    actor_type = fields.CharEnumField(ActorType, max_length=16)
    actor_id = fields.CharField(max_length=64, null=True)
    note = fields.TextField(default="")
    data = fields.JSONField(default=dict)
    at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "loop_events"
        indexes = (("subject_type", "subject_id", "id"),)


class ThemeSubscription(Model):
    """A citizen who asked for the notices of one catalogue theme (主题订阅)."""

    id = fields.BigIntField(primary_key=True)
    user: fields.ForeignKeyRelation[User] = fields.ForeignKeyField(
        "models.User", related_name="theme_subscriptions", on_delete=fields.CASCADE
    )
    theme = fields.CharField(max_length=64)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "theme_subscriptions"
        unique_together = (("user", "theme"),)
        indexes = (("theme", "user_id"),)


class Notice(Model):
    """A service notice (通知公告) an official sends to an audience of citizens or followers.

    status is draft, scheduled, sending, sent or cancelled. cursor is the key of the last
    recipient handed out, so a sender that stopped resumes after it. paused_until holds the
    send back after a WeChat quota error (45009).
    """

    id = fields.BigIntField(primary_key=True)
    title = fields.CharField(max_length=64)
    body = fields.TextField()
    link_kind = fields.CharField(max_length=16, default="none")  # none | service | page
    link_target = fields.CharField(max_length=256, default="")
    image_url = fields.CharField(max_length=512, null=True)
    audience = fields.JSONField(default=dict)  # {"kind": followers | service | theme | region, ...}
    status = fields.CharField(max_length=16, default="draft", db_index=True)
    scheduled_at = fields.DatetimeField(null=True, db_index=True)
    department = fields.CharField(max_length=128, db_index=True)
    created_by = fields.BigIntField()  # the official
    total = fields.IntField(default=0)
    sent = fields.IntField(default=0)
    failed = fields.IntField(default=0)
    skipped = fields.IntField(default=0)
    cursor = fields.CharField(max_length=72, null=True)
    exhausted = fields.BooleanField(default=False)  # every recipient has been handed out
    paused_until = fields.DatetimeField(null=True)
    quota_hits = fields.IntField(default=0)
    published_at = fields.DatetimeField(null=True, db_index=True)
    finished_at = fields.DatetimeField(null=True)
    cancelled_at = fields.DatetimeField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        table = "notices"
        indexes = (("status", "published_at"),)


class NoticeDelivery(Model):
    """One recipient of one notice, unique per notice and recipient: a notice reaches a citizen once.

    recipient is u:<user id> or f:<official account openid>. status is pending, sending, sent,
    failed or skipped, channel subscribe, template or inbox.
    """

    id = fields.BigIntField(primary_key=True)
    notice: fields.ForeignKeyRelation[Notice] = fields.ForeignKeyField(
        "models.Notice", related_name="deliveries", on_delete=fields.CASCADE
    )
    recipient = fields.CharField(max_length=72)
    user_id = fields.BigIntField(null=True)
    oa_openid = fields.CharField(max_length=64, null=True)
    status = fields.CharField(max_length=12, default="pending")
    channel = fields.CharField(max_length=16, default="")
    errcode = fields.IntField(null=True)
    detail = fields.CharField(max_length=200, default="")
    created_at = fields.DatetimeField(auto_now_add=True)
    finished_at = fields.DatetimeField(null=True)

    class Meta:
        table = "notice_deliveries"
        unique_together = (("notice", "recipient"),)
        indexes = (("notice_id", "status", "id"),)

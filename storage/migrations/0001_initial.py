import functools
from json import dumps, loads

from tortoise import fields, migrations
from tortoise.fields.base import OnDelete
from tortoise.indexes import Index
from tortoise.migrations import operations as ops

from storage.models import ActorType, CaseStatus, IdentityLevel, ServiceItemStatus


class Migration(migrations.Migration):
    initial = True

    operations = [
        ops.CreateModel(
            name="AuditLog",
            fields=[
                ("id", fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ("at", fields.DatetimeField(db_index=True, auto_now=False, auto_now_add=True)),
                (
                    "actor_type",
                    fields.CharEnumField(
                        description="CITIZEN: citizen\nOFFICIAL: official\nPLATFORM: platform\nSYSTEM: system",
                        enum_type=ActorType,
                        max_length=16,
                    ),
                ),
                ("actor_id", fields.CharField(null=True, max_length=64)),
                ("action", fields.CharField(max_length=64)),
                ("target_type", fields.CharField(null=True, max_length=32)),
                ("target_id", fields.CharField(null=True, max_length=64)),
                ("request_id", fields.CharField(null=True, max_length=64)),
                ("ip", fields.CharField(null=True, max_length=64)),
                (
                    "detail",
                    fields.JSONField(
                        default=dict, encoder=functools.partial(dumps, separators=(",", ":")), decoder=loads
                    ),
                ),
            ],
            options={
                "table": "audit_log",
                "app": "models",
                "indexes": [Index(fields=["target_type", "target_id"])],
                "pk_attr": "id",
                "table_description": "Who did or read what, when: every official read of personal data lands here.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="CatalogueState",
            fields=[
                ("id", fields.CharField(primary_key=True, unique=True, db_index=True, max_length=32)),
                ("revision", fields.IntField(default=0)),
                (
                    "content",
                    fields.JSONField(
                        default=dict, encoder=functools.partial(dumps, separators=(",", ":")), decoder=loads
                    ),
                ),
                ("updated_at", fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={
                "table": "catalogue_state",
                "app": "models",
                "pk_attr": "id",
                "table_description": "Catalogue-wide data (region, departments, themes, synonyms, bundles) and its revision.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="DailySequence",
            fields=[
                ("id", fields.CharField(primary_key=True, unique=True, db_index=True, max_length=32)),
                ("last_value", fields.IntField(default=0)),
            ],
            options={
                "table": "daily_sequences",
                "app": "models",
                "pk_attr": "id",
                "table_description": "The last number handed out per day and purpose (case numbers).",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="Official",
            fields=[
                ("id", fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ("username", fields.CharField(unique=True, max_length=64)),
                ("display_name", fields.CharField(max_length=64)),
                ("department", fields.CharField(default="", max_length=128)),
                (
                    "roles",
                    fields.JSONField(
                        default=list, encoder=functools.partial(dumps, separators=(",", ":")), decoder=loads
                    ),
                ),
                ("password_hash", fields.CharField(max_length=255)),
                ("is_active", fields.BooleanField(default=True)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ("last_login_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={
                "table": "officials",
                "app": "models",
                "pk_attr": "id",
                "table_description": "A government official who signs in to the web console.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="ServiceItem",
            fields=[
                ("id", fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ("code", fields.CharField(max_length=64)),
                ("version", fields.IntField()),
                ("name", fields.CharField(max_length=128)),
                ("department", fields.CharField(max_length=128)),
                (
                    "status",
                    fields.CharEnumField(
                        default=ServiceItemStatus.PUBLISHED,
                        description="PUBLISHED: published\nRETIRED: retired",
                        enum_type=ServiceItemStatus,
                        max_length=16,
                    ),
                ),
                ("is_current", fields.BooleanField(default=True)),
                ("content", fields.JSONField(encoder=functools.partial(dumps, separators=(",", ":")), decoder=loads)),
                ("content_sha256", fields.CharField(max_length=64)),
                ("published_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={
                "table": "service_items",
                "app": "models",
                "unique_together": (("code", "version"),),
                "indexes": [Index(fields=["code", "is_current"])],
                "pk_attr": "id",
                "table_description": "One immutable published version of a catalogue item (事项), publishing adds a row.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="User",
            fields=[
                ("id", fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ("openid", fields.CharField(null=True, unique=True, max_length=64)),
                ("unionid", fields.CharField(null=True, db_index=True, max_length=64)),
                ("oa_openid", fields.CharField(null=True, unique=True, max_length=64)),
                (
                    "identity_level",
                    fields.CharEnumField(
                        default=IdentityLevel.L1,
                        description="L1: L1\nL2: L2\nL3: L3",
                        enum_type=IdentityLevel,
                        max_length=2,
                    ),
                ),
                ("real_name_enc", fields.BinaryField(null=True)),
                ("id_number_enc", fields.BinaryField(null=True)),
                ("id_number_digest", fields.CharField(null=True, db_index=True, max_length=64)),
                ("verified_id_digest", fields.CharField(null=True, unique=True, max_length=64)),
                ("key_id", fields.CharField(null=True, max_length=8)),
                ("phone_enc", fields.BinaryField(null=True)),
                ("phone_digest", fields.CharField(null=True, db_index=True, max_length=64)),
                ("session_key_enc", fields.BinaryField(null=True)),
                ("face_verified_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ("is_active", fields.BooleanField(default=True)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ("updated_at", fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={
                "table": "users",
                "app": "models",
                "pk_attr": "id",
                "table_description": "A citizen, keyed by mini-program openid and linked across apps by unionid.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="Address",
            fields=[
                ("id", fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                (
                    "user",
                    fields.ForeignKeyField(
                        "models.User",
                        source_field="user_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="addresses",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                ("recipient_enc", fields.BinaryField()),
                ("phone_enc", fields.BinaryField()),
                ("region_code", fields.CharField(max_length=6)),
                ("detail_enc", fields.BinaryField()),
                ("is_default", fields.BooleanField(default=False)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ("updated_at", fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={
                "table": "addresses",
                "app": "models",
                "pk_attr": "id",
                "table_description": "A mailing address of a citizen, for results sent by post, every part encrypted.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="Case",
            fields=[
                ("id", fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ("case_no", fields.CharField(unique=True, max_length=32)),
                (
                    "user",
                    fields.ForeignKeyField(
                        "models.User",
                        source_field="user_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="cases",
                        on_delete=OnDelete.RESTRICT,
                    ),
                ),
                (
                    "service_item",
                    fields.ForeignKeyField(
                        "models.ServiceItem",
                        source_field="service_item_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="cases",
                        on_delete=OnDelete.RESTRICT,
                    ),
                ),
                ("service_code", fields.CharField(db_index=True, max_length=64)),
                ("service_name", fields.CharField(default="", max_length=128)),
                (
                    "status",
                    fields.CharEnumField(
                        default=CaseStatus.SUBMITTED,
                        db_index=True,
                        description="SUBMITTED: submitted\nDELIVERED: delivered_to_platform\nACCEPTED: accepted\nIN_REVIEW: in_review\nCORRECTION_REQUESTED: correction_requested\nRESUBMITTED: resubmitted\nAPPROVED: approved\nREJECTED: rejected\nRESULT_ISSUED: result_issued\nCLOSED: closed\nWITHDRAWN: withdrawn",
                        enum_type=CaseStatus,
                        max_length=32,
                    ),
                ),
                ("form_snapshot_enc", fields.BinaryField(null=True)),
                (
                    "materials",
                    fields.JSONField(
                        default=dict, encoder=functools.partial(dumps, separators=(",", ":")), decoder=loads
                    ),
                ),
                ("fee_fen", fields.IntField(null=True)),
                ("platform_case_id", fields.CharField(null=True, unique=True, max_length=64)),
                ("platform_seq", fields.IntField(default=0)),
                ("draft_id", fields.CharField(null=True, db_index=True, max_length=32)),
                ("bundle_no", fields.CharField(null=True, db_index=True, max_length=32)),
                ("row_version", fields.IntField(default=1)),
                ("submitted_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ("updated_at", fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={
                "table": "cases",
                "app": "models",
                "pk_attr": "id",
                "table_description": "A submitted application, keeping the item version and the form as submitted.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="CaseEvent",
            fields=[
                ("id", fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                (
                    "case",
                    fields.ForeignKeyField(
                        "models.Case",
                        source_field="case_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="events",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                ("at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
                (
                    "actor_type",
                    fields.CharEnumField(
                        description="CITIZEN: citizen\nOFFICIAL: official\nPLATFORM: platform\nSYSTEM: system",
                        enum_type=ActorType,
                        max_length=16,
                    ),
                ),
                ("actor_id", fields.CharField(null=True, max_length=64)),
                ("from_status", fields.CharField(null=True, max_length=32)),
                ("to_status", fields.CharField(max_length=32)),
                ("note", fields.TextField(default="", unique=False)),
                (
                    "data",
                    fields.JSONField(
                        default=dict, encoder=functools.partial(dumps, separators=(",", ":")), decoder=loads
                    ),
                ),
            ],
            options={
                "table": "case_events",
                "app": "models",
                "indexes": [Index(fields=["case_id", "at"])],
                "pk_attr": "id",
                "table_description": "One state change of a case: the timeline shown to the citizen and the audit trail.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="Draft",
            fields=[
                ("id", fields.CharField(primary_key=True, unique=True, db_index=True, max_length=32)),
                (
                    "user",
                    fields.ForeignKeyField(
                        "models.User",
                        source_field="user_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="drafts",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                ("service_code", fields.CharField(null=True, max_length=64)),
                ("bundle_code", fields.CharField(null=True, max_length=64)),
                (
                    "item_ids",
                    fields.JSONField(
                        default=list, encoder=functools.partial(dumps, separators=(",", ":")), decoder=loads
                    ),
                ),
                ("data_enc", fields.BinaryField()),
                ("version", fields.IntField(default=1)),
                ("status", fields.CharField(default="open", max_length=16)),
                ("expires_at", fields.DatetimeField(db_index=True, auto_now=False, auto_now_add=False)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ("updated_at", fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={
                "table": "drafts",
                "app": "models",
                "indexes": [Index(fields=["user_id", "status"])],
                "pk_attr": "id",
                "table_description": "An application being filled in, by one citizen, on the item version it started with.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="FaceVerification",
            fields=[
                ("id", fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                (
                    "user",
                    fields.ForeignKeyField(
                        "models.User",
                        source_field="user_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="face_verifications",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                ("out_seq_no", fields.CharField(unique=True, max_length=32)),
                ("verify_id", fields.CharField(unique=True, max_length=128)),
                ("cert_hash", fields.CharField(max_length=64)),
                ("id_number_digest", fields.CharField(max_length=64)),
                ("status", fields.CharField(default="pending", max_length=16)),
                ("verify_ret", fields.IntField(null=True)),
                ("expires_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ("finished_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={
                "table": "face_verifications",
                "app": "models",
                "pk_attr": "id",
                "table_description": "One face check (人脸核身) session: our out_seq_no, WeChat's verify_id, the outcome.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="Follower",
            fields=[
                ("oa_openid", fields.CharField(primary_key=True, unique=True, db_index=True, max_length=64)),
                ("unionid", fields.CharField(null=True, db_index=True, max_length=64)),
                (
                    "user",
                    fields.ForeignKeyField(
                        "models.User",
                        source_field="user_id",
                        null=True,
                        db_constraint=True,
                        to_field="id",
                        related_name="followers",
                        on_delete=OnDelete.SET_NULL,
                    ),
                ),
                ("subscribed", fields.BooleanField(default=True)),
                ("last_message_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ("updated_at", fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={
                "table": "followers",
                "app": "models",
                "pk_attr": "oa_openid",
                "table_description": "A follower of the official account, linked to a mini-program user by unionid when known.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="Material",
            fields=[
                ("id", fields.CharField(primary_key=True, unique=True, db_index=True, max_length=32)),
                (
                    "user",
                    fields.ForeignKeyField(
                        "models.User",
                        source_field="user_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="materials",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                ("kind", fields.CharField(max_length=64)),
                ("mime", fields.CharField(max_length=64)),
                ("size", fields.IntField()),
                ("sha256", fields.CharField(max_length=64)),
                ("width", fields.IntField(null=True)),
                ("height", fields.IntField(null=True)),
                ("pages", fields.IntField(null=True)),
                (
                    "warnings",
                    fields.JSONField(
                        default=list, encoder=functools.partial(dumps, separators=(",", ":")), decoder=loads
                    ),
                ),
                ("object_name", fields.CharField(max_length=64)),
                ("file_key", fields.BinaryField()),
                ("thumb_object_name", fields.CharField(null=True, max_length=64)),
                ("thumb_key", fields.BinaryField(null=True)),
                ("valid_until", fields.DateField(null=True)),
                ("locked_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={
                "table": "materials",
                "app": "models",
                "unique_together": (("user", "sha256"),),
                "pk_attr": "id",
                "table_description": "An uploaded material (photo or PDF), stored sealed, reusable across applications (材料复用).",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="Outbox",
            fields=[
                ("id", fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ("kind", fields.CharField(max_length=32)),
                (
                    "case",
                    fields.ForeignKeyField(
                        "models.Case",
                        source_field="case_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="outbox",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                (
                    "payload",
                    fields.JSONField(
                        default=dict, encoder=functools.partial(dumps, separators=(",", ":")), decoder=loads
                    ),
                ),
                ("status", fields.CharField(default="pending", db_index=True, max_length=16)),
                ("attempts", fields.IntField(default=0)),
                ("next_attempt_at", fields.DatetimeField(db_index=True, auto_now=False, auto_now_add=False)),
                ("last_error", fields.CharField(default="", max_length=500)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ("done_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={
                "table": "outbox",
                "app": "models",
                "pk_attr": "id",
                "table_description": "Work for the core platform, committed with the change that caused it (transactional outbox).",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="RefreshToken",
            fields=[
                ("id", fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                (
                    "user",
                    fields.ForeignKeyField(
                        "models.User",
                        source_field="user_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="refresh_tokens",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                ("family", fields.CharField(db_index=True, max_length=32)),
                ("token_hash", fields.CharField(unique=True, max_length=64)),
                ("expires_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ("used_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ("revoked_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={
                "table": "refresh_tokens",
                "app": "models",
                "pk_attr": "id",
                "table_description": "A refresh token, stored hashed, rotating ones share a family that is revoked together.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="Submission",
            fields=[
                ("id", fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                (
                    "user",
                    fields.ForeignKeyField(
                        "models.User",
                        source_field="user_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="submissions",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                ("idempotency_key", fields.CharField(max_length=128)),
                ("fingerprint", fields.CharField(max_length=64)),
                ("draft_id", fields.CharField(max_length=32)),
                (
                    "case_nos",
                    fields.JSONField(
                        default=list, encoder=functools.partial(dumps, separators=(",", ":")), decoder=loads
                    ),
                ),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={
                "table": "submissions",
                "app": "models",
                "unique_together": (("user", "idempotency_key"),),
                "pk_attr": "id",
                "table_description": "An idempotent submit: the same key returns the same cases, a different body is refused.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="Ticket",
            fields=[
                ("id", fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ("ticket_no", fields.CharField(unique=True, max_length=32)),
                ("kind", fields.CharField(max_length=16)),
                ("oa_openid", fields.CharField(db_index=True, max_length=64)),
                (
                    "user",
                    fields.ForeignKeyField(
                        "models.User",
                        source_field="user_id",
                        null=True,
                        db_constraint=True,
                        to_field="id",
                        related_name="tickets",
                        on_delete=OnDelete.SET_NULL,
                    ),
                ),
                ("department", fields.CharField(default="", max_length=128)),
                ("service_code", fields.CharField(null=True, max_length=64)),
                ("content_enc", fields.BinaryField()),
                ("status", fields.CharField(default="open", db_index=True, max_length=16)),
                ("answer_enc", fields.BinaryField(null=True)),
                ("dedup_key", fields.CharField(unique=True, max_length=160)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ("answered_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={
                "table": "tickets",
                "app": "models",
                "pk_attr": "id",
                "table_description": "A consultation (咨询) or complaint (投诉) taken by the bot, routed to a department.",
            },
            bases=["Model"],
        ),
    ]

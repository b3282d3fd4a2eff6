import functools
from json import dumps, loads

from tortoise import fields, migrations
from tortoise.fields.base import OnDelete
from tortoise.indexes import Index
from tortoise.migrations import operations as ops

from storage.models import ActorType


class Migration(migrations.Migration):
    dependencies = [("models", "0003_payments")]

    initial = False

    operations = [
        ops.CreateModel(
            name="Evaluation",
            fields=[
                ("id", fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                (
                    "case",
                    fields.OneToOneField(
                        "models.Case",
                        source_field="case_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="evaluation",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                (
                    "user",
                    fields.ForeignKeyField(
                        "models.User",
                        source_field="user_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="evaluations",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                ("department", fields.CharField(max_length=128)),
                ("service_code", fields.CharField(max_length=64)),
                ("level", fields.SmallIntField()),
                (
                    "tags",
                    fields.JSONField(
                        default=list, encoder=functools.partial(dumps, separators=(",", ":")), decoder=loads
                    ),
                ),
                ("comment_enc", fields.BinaryField(null=True)),
                ("active", fields.BooleanField(default=True)),
                ("channel", fields.CharField(max_length=16)),
                ("identity_level", fields.CharField(default="", max_length=2)),
                ("created_at", fields.DatetimeField(db_index=True, auto_now=False, auto_now_add=True)),
            ],
            options={
                "table": "evaluations",
                "app": "models",
                "indexes": [Index(fields=["department", "created_at"]), Index(fields=["level", "created_at"])],
                "pk_attr": "id",
                "table_description": "A citizen's rating of a case (好差评), one per case: given actively, or the default after 7 days.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="LoopEvent",
            fields=[
                ("id", fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ("subject_type", fields.CharField(max_length=16)),
                ("subject_id", fields.BigIntField()),
                ("action", fields.CharField(max_length=32)),
                (
                    "actor_type",
                    fields.CharEnumField(
                        description="CITIZEN: citizen\nOFFICIAL: official\nPLATFORM: platform\nSYSTEM: system",
                        enum_type=ActorType,
                        max_length=16,
                    ),
                ),
                ("actor_id", fields.CharField(null=True, max_length=64)),
                ("note", fields.TextField(default="", unique=False)),
                (
                    "data",
                    fields.JSONField(
                        default=dict, encoder=functools.partial(dumps, separators=(",", ":")), decoder=loads
                    ),
                ),
                ("at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={
                "table": "loop_events",
                "app": "models",
                "indexes": [Index(fields=["subject_type", "subject_id", "id"])],
                "pk_attr": "id",
                "table_description": "One step of a rectification or a ticket, with who took it and when.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="Rectification",
            fields=[
                ("id", fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                (
                    "evaluation",
                    fields.OneToOneField(
                        "models.Evaluation",
                        source_field="evaluation_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="rectification",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                (
                    "case",
                    fields.ForeignKeyField(
                        "models.Case",
                        source_field="case_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="rectifications",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                ("department", fields.CharField(db_index=True, max_length=128)),
                ("status", fields.CharField(default="verifying", db_index=True, max_length=20)),
                ("round", fields.SmallIntField(default=1)),
                ("verify_due_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ("rectify_due_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ("verified_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ("verify_note_enc", fields.BinaryField(null=True)),
                ("rectified_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ("rectify_text_enc", fields.BinaryField(null=True)),
                ("citizen_answer", fields.CharField(null=True, max_length=16)),
                ("answered_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ("reminded_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ("escalated_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ("exclusion", fields.CharField(default="none", max_length=12)),
                ("exclusion_reason", fields.CharField(default="", max_length=500)),
                ("exclusion_decision", fields.CharField(default="", max_length=500)),
                ("closed_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ("on_time", fields.BooleanField(null=True)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ("updated_at", fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={
                "table": "rectifications",
                "app": "models",
                "indexes": [Index(fields=["department", "status", "rectify_due_at"])],
                "pk_attr": "id",
                "table_description": "The follow-up of a bad review (差评整改): call back, rectify, the citizen answers, or excluded (申诉).",
            },
            bases=["Model"],
        ),
        ops.AddField(
            model_name="Ticket",
            name="answered_by",
            field=fields.BigIntField(null=True),
        ),
        ops.AddField(
            model_name="Ticket",
            name="case_no",
            field=fields.CharField(null=True, max_length=32),
        ),
        ops.AddField(
            model_name="Ticket",
            name="channel",
            field=fields.CharField(default="official_account", max_length=16),
        ),
        ops.AddField(
            model_name="Ticket",
            name="due_at",
            field=fields.DatetimeField(null=True, db_index=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name="Ticket",
            name="escalated_at",
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name="Ticket",
            name="rated_at",
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name="Ticket",
            name="rating",
            field=fields.SmallIntField(null=True),
        ),
        ops.AddField(
            model_name="Ticket",
            name="reminded_at",
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddIndex(
            model_name="Ticket",
            index=Index(fields=["department", "status", "due_at"]),
        ),
    ]

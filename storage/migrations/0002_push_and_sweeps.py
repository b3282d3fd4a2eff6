from tortoise import fields, migrations
from tortoise.fields.base import OnDelete
from tortoise.indexes import Index
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    dependencies = [("models", "0001_initial")]

    initial = False

    operations = [
        ops.CreateModel(
            name="Notification",
            fields=[
                ("id", fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ("dedup_key", fields.CharField(unique=True, max_length=96)),
                (
                    "user",
                    fields.ForeignKeyField(
                        "models.User",
                        source_field="user_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="notifications",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                (
                    "case",
                    fields.ForeignKeyField(
                        "models.Case",
                        source_field="case_id",
                        null=True,
                        db_constraint=True,
                        to_field="id",
                        related_name="notifications",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                ("kind", fields.CharField(max_length=32)),
                ("title", fields.CharField(max_length=64)),
                ("body", fields.CharField(max_length=500)),
                ("page", fields.CharField(default="", max_length=256)),
                ("urgent", fields.BooleanField(default=False)),
                ("push_status", fields.CharField(default="pending", db_index=True, max_length=16)),
                ("channel", fields.CharField(default="", max_length=16)),
                ("attempts", fields.IntField(default=0)),
                ("next_attempt_at", fields.DatetimeField(db_index=True, auto_now=False, auto_now_add=False)),
                ("read_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ("sent_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={
                "table": "notifications",
                "app": "models",
                "indexes": [Index(fields=["user_id", "id"])],
                "pk_attr": "id",
                "table_description": "A message to a citizen about a case: the inbox item, and the WeChat push that carries it.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="PushAttempt",
            fields=[
                ("id", fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                (
                    "notification",
                    fields.ForeignKeyField(
                        "models.Notification",
                        source_field="notification_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="push_attempts",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                ("channel", fields.CharField(max_length=16)),
                ("started_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ("finished_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ("result", fields.CharField(default="started", max_length=24)),
                ("errcode", fields.IntField(null=True)),
                ("detail", fields.CharField(default="", max_length=300)),
            ],
            options={
                "table": "push_attempts",
                "app": "models",
                "pk_attr": "id",
                "table_description": "One try at one channel for a notification, and what came of it (shown to officials).",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="SubscriptionGrant",
            fields=[
                ("id", fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                (
                    "user",
                    fields.ForeignKeyField(
                        "models.User",
                        source_field="user_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="subscription_grants",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                ("template_id", fields.CharField(max_length=128)),
                ("remaining", fields.IntField(default=0)),
                ("accepted_total", fields.IntField(default=0)),
                ("last_result", fields.CharField(default="", max_length=16)),
                ("updated_at", fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={
                "table": "subscription_grants",
                "app": "models",
                "unique_together": (("user", "template_id"),),
                "pk_attr": "id",
                "table_description": "One-time subscribe-message rights a citizen gave per template (wx.requestSubscribeMessage).",
            },
            bases=["Model"],
        ),
        ops.AddField(
            model_name="Case",
            name="overdue_at",
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name="Case",
            name="platform_heard_at",
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
    ]

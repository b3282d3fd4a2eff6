import functools
from json import dumps, loads

from tortoise import fields, migrations
from tortoise.fields.base import OnDelete
from tortoise.indexes import Index
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    dependencies = [("models", "0004_evaluation_and_tickets")]

    initial = False

    operations = [
        ops.CreateModel(
            name="Notice",
            fields=[
                ("id", fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ("title", fields.CharField(max_length=64)),
                ("body", fields.TextField(unique=False)),
                ("link_kind", fields.CharField(default="none", max_length=16)),
                ("link_target", fields.CharField(default="", max_length=256)),
                ("image_url", fields.CharField(null=True, max_length=512)),
                (
                    "audience",
                    fields.JSONField(
                        default=dict, encoder=functools.partial(dumps, separators=(",", ":")), decoder=loads
                    ),
                ),
                ("status", fields.CharField(default="draft", db_index=True, max_length=16)),
                ("scheduled_at", fields.DatetimeField(null=True, db_index=True, auto_now=False, auto_now_add=False)),
                ("department", fields.CharField(db_index=True, max_length=128)),
                ("created_by", fields.BigIntField()),
                ("total", fields.IntField(default=0)),
                ("sent", fields.IntField(default=0)),
                ("failed", fields.IntField(default=0)),
                ("skipped", fields.IntField(default=0)),
                ("cursor", fields.CharField(null=True, max_length=72)),
                ("exhausted", fields.BooleanField(default=False)),
                ("paused_until", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ("quota_hits", fields.IntField(default=0)),
                ("published_at", fields.DatetimeField(null=True, db_index=True, auto_now=False, auto_now_add=False)),
                ("finished_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ("cancelled_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ("updated_at", fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={
                "table": "notices",
                "app": "models",
                "indexes": [Index(fields=["status", "published_at"])],
                "pk_attr": "id",
                "table_description": "A service notice (通知公告) an official sends to an audience of citizens or followers.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="NoticeDelivery",
            fields=[
                ("id", fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                (
                    "notice",
                    fields.ForeignKeyField(
                        "models.Notice",
                        source_field="notice_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="deliveries",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                ("recipient", fields.CharField(max_length=72)),
                ("user_id", fields.BigIntField(null=True)),
                ("oa_openid", fields.CharField(null=True, max_length=64)),
                ("status", fields.CharField(default="pending", max_length=12)),
                ("channel", fields.CharField(default="", max_length=16)),
                ("errcode", fields.IntField(null=True)),
                ("detail", fields.CharField(default="", max_length=200)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ("finished_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={
                "table": "notice_deliveries",
                "app": "models",
                "unique_together": (("notice", "recipient"),),
                "indexes": [Index(fields=["notice_id", "status", "id"])],
                "pk_attr": "id",
                "table_description": "One recipient of one notice, unique per notice and recipient: a notice reaches a citizen once.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="ThemeSubscription",
            fields=[
                ("id", fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                (
                    "user",
                    fields.ForeignKeyField(
                        "models.User",
                        source_field="user_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="theme_subscriptions",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                ("theme", fields.CharField(max_length=64)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={
                "table": "theme_subscriptions",
                "app": "models",
                "unique_together": (("user", "theme"),),
                "indexes": [Index(fields=["theme", "user_id"])],
                "pk_attr": "id",
                "table_description": "A citizen who asked for the notices of one catalogue theme (主题订阅).",
            },
            bases=["Model"],
        ),
    ]

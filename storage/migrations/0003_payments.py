import functools
from json import dumps, loads

from tortoise import fields, migrations
from tortoise.fields.base import OnDelete
from tortoise.indexes import Index
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    dependencies = [("models", "0002_push_and_sweeps")]

    initial = False

    operations = [
        ops.CreateModel(
            name="PaymentOrder",
            fields=[
                ("id", fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ("payment_id", fields.CharField(unique=True, max_length=32)),
                ("out_trade_no", fields.CharField(unique=True, max_length=32)),
                (
                    "case",
                    fields.ForeignKeyField(
                        "models.Case",
                        source_field="case_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="payment_orders",
                        on_delete=OnDelete.RESTRICT,
                    ),
                ),
                (
                    "user",
                    fields.ForeignKeyField(
                        "models.User",
                        source_field="user_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="payment_orders",
                        on_delete=OnDelete.RESTRICT,
                    ),
                ),
                ("fee_ref", fields.CharField(max_length=32)),
                ("open_slot", fields.CharField(null=True, unique=True, max_length=64)),
                ("idempotency_key", fields.CharField(max_length=128)),
                ("channel", fields.CharField(max_length=16)),
                ("amount_fen", fields.BigIntField()),
                ("state", fields.CharField(default="created", db_index=True, max_length=20)),
                ("notice_no", fields.CharField(null=True, max_length=64)),
                (
                    "pay_data",
                    fields.JSONField(
                        default=dict, encoder=functools.partial(dumps, separators=(",", ":")), decoder=loads
                    ),
                ),
                ("transaction_id", fields.CharField(null=True, max_length=64)),
                ("paid_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ("refunded_fen", fields.BigIntField(default=0)),
                ("expires_at", fields.DatetimeField(db_index=True, auto_now=False, auto_now_add=False)),
                ("closed_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ("close_reason", fields.CharField(default="", max_length=32)),
                (
                    "receipt",
                    fields.JSONField(null=True, encoder=functools.partial(dumps, separators=(",", ":")), decoder=loads),
                ),
                ("last_checked_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ("updated_at", fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={
                "table": "payment_orders",
                "app": "models",
                "unique_together": (("user", "idempotency_key"),),
                "indexes": [Index(fields=["case_id", "id"]), Index(fields=["state", "updated_at"])],
                "pk_attr": "id",
                "table_description": "One attempt to pay one fee of a case through one channel (an order at WeChat Pay or Alipay).",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="PaymentAlert",
            fields=[
                ("id", fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                (
                    "order",
                    fields.ForeignKeyField(
                        "models.PaymentOrder",
                        source_field="order_id",
                        null=True,
                        db_constraint=True,
                        to_field="id",
                        related_name="alerts",
                        on_delete=OnDelete.RESTRICT,
                    ),
                ),
                ("kind", fields.CharField(max_length=32)),
                ("dedup_key", fields.CharField(unique=True, max_length=128)),
                (
                    "detail",
                    fields.JSONField(
                        default=dict, encoder=functools.partial(dumps, separators=(",", ":")), decoder=loads
                    ),
                ),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ("resolved_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={
                "table": "payment_alerts",
                "app": "models",
                "pk_attr": "id",
                "table_description": "Something about money an official must look at (a mismatch, a payment after close).",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="PaymentEvent",
            fields=[
                ("id", fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                (
                    "order",
                    fields.ForeignKeyField(
                        "models.PaymentOrder",
                        source_field="order_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="events",
                        on_delete=OnDelete.RESTRICT,
                    ),
                ),
                ("at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ("from_state", fields.CharField(max_length=20)),
                ("to_state", fields.CharField(max_length=20)),
                ("source", fields.CharField(max_length=16)),
                (
                    "data",
                    fields.JSONField(
                        default=dict, encoder=functools.partial(dumps, separators=(",", ":")), decoder=loads
                    ),
                ),
            ],
            options={
                "table": "payment_events",
                "app": "models",
                "indexes": [Index(fields=["order_id", "id"])],
                "pk_attr": "id",
                "table_description": "Every change of an order or refund, with what caused it (notify, query, expiry, refund).",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="PaymentRefund",
            fields=[
                ("id", fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                (
                    "order",
                    fields.ForeignKeyField(
                        "models.PaymentOrder",
                        source_field="order_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="refunds",
                        on_delete=OnDelete.RESTRICT,
                    ),
                ),
                ("out_refund_no", fields.CharField(unique=True, max_length=64)),
                ("amount_fen", fields.BigIntField()),
                ("cause", fields.CharField(max_length=32)),
                ("reason", fields.CharField(default="", max_length=80)),
                ("state", fields.CharField(default="requested", db_index=True, max_length=16)),
                ("refund_id", fields.CharField(null=True, max_length=64)),
                ("attempts", fields.IntField(default=0)),
                ("next_attempt_at", fields.DatetimeField(db_index=True, auto_now=False, auto_now_add=False)),
                ("last_error", fields.CharField(default="", max_length=300)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ("done_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={
                "table": "payment_refunds",
                "app": "models",
                "pk_attr": "id",
                "table_description": "A refund of a paid order, idempotent at the channel by out_refund_no.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="ReconciliationReport",
            fields=[
                ("id", fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ("channel", fields.CharField(max_length=16)),
                ("bill_date", fields.DateField()),
                (
                    "summary",
                    fields.JSONField(
                        default=dict, encoder=functools.partial(dumps, separators=(",", ":")), decoder=loads
                    ),
                ),
                (
                    "items",
                    fields.JSONField(
                        default=list, encoder=functools.partial(dumps, separators=(",", ":")), decoder=loads
                    ),
                ),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={
                "table": "reconciliation_reports",
                "app": "models",
                "unique_together": (("channel", "bill_date"),),
                "pk_attr": "id",
                "table_description": "One channel's bill of one day checked against our orders and refunds (对账).",
            },
            bases=["Model"],
        ),
        ops.AddField(
            model_name="Case",
            name="fee_notice_no",
            field=fields.CharField(null=True, max_length=64),
        ),
        ops.AddField(
            model_name="Case",
            name="fee_paid_at",
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name="Case",
            name="fee_ref",
            field=fields.CharField(default="", max_length=32),
        ),
    ]

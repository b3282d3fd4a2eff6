from tortoise import migrations
from tortoise.indexes import Index
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    dependencies = [("models", "0006_console_accounts")]

    initial = False

    operations = [
        ops.AddIndex(
            model_name="Case",
            index=Index(fields=["submitted_at"]),
        ),
        ops.AddIndex(
            model_name="CaseEvent",
            index=Index(fields=["to_status", "at"]),
        ),
        ops.AddIndex(
            model_name="Notification",
            index=Index(fields=["created_at"]),
        ),
        ops.AddIndex(
            model_name="PushAttempt",
            index=Index(fields=["started_at"]),
        ),
    ]

from tortoise import fields, migrations
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    dependencies = [("models", "0005_notices")]

    initial = False

    operations = [
        ops.CreateModel(
            name="RolePolicy",
            fields=[
                ("role", fields.CharField(primary_key=True, unique=True, db_index=True, max_length=32)),
                ("require_totp", fields.BooleanField(default=False)),
                ("updated_by", fields.BigIntField(null=True)),
                ("updated_at", fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={
                "table": "console_role_policies",
                "app": "models",
                "pk_attr": "role",
                "table_description": "What a console role demands of its holders: a TOTP second factor, as an admin decides.",
            },
            bases=["Model"],
        ),
        ops.AddField(
            model_name="Official",
            name="totp_enabled_at",
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name="Official",
            name="totp_last_step",
            field=fields.BigIntField(null=True),
        ),
        ops.AddField(
            model_name="Official",
            name="totp_secret_enc",
            field=fields.BinaryField(null=True),
        ),
        ops.AddField(
            model_name="Official",
            name="updated_at",
            field=fields.DatetimeField(null=True, auto_now=True, auto_now_add=False),
        ),
    ]

from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.fields.base import OnDelete
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('models', '0001_initial')]

    initial = False

    operations = [
        ops.CreateModel(
            name='Address',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('user', fields.ForeignKeyField('models.User', source_field='user_id', db_constraint=True, to_field='id', related_name='addresses', on_delete=OnDelete.CASCADE)),
                ('recipient_enc', fields.BinaryField()),
                ('phone_enc', fields.BinaryField()),
                ('region_code', fields.CharField(max_length=6)),
                ('detail_enc', fields.BinaryField()),
                ('is_default', fields.BooleanField(default=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('updated_at', fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={'table': 'addresses', 'app': 'models', 'pk_attr': 'id', 'table_description': 'A mailing address of a citizen, for results sent by post, every part encrypted.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='FaceVerification',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('user', fields.ForeignKeyField('models.User', source_field='user_id', db_constraint=True, to_field='id', related_name='face_verifications', on_delete=OnDelete.CASCADE)),
                ('out_seq_no', fields.CharField(unique=True, max_length=32)),
                ('verify_id', fields.CharField(unique=True, max_length=128)),
                ('cert_hash', fields.CharField(max_length=64)),
                ('id_number_digest', fields.CharField(max_length=64)),
                ('status', fields.CharField(default='pending', max_length=16)),
                ('verify_ret', fields.IntField(null=True)),
                ('expires_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('finished_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'face_verifications', 'app': 'models', 'pk_attr': 'id', 'table_description': "One face check (人脸核身) session: our out_seq_no, WeChat's verify_id, the outcome."},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='RefreshToken',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('user', fields.ForeignKeyField('models.User', source_field='user_id', db_constraint=True, to_field='id', related_name='refresh_tokens', on_delete=OnDelete.CASCADE)),
                ('family', fields.CharField(db_index=True, max_length=32)),
                ('token_hash', fields.CharField(unique=True, max_length=64)),
                ('expires_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('used_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('revoked_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'refresh_tokens', 'app': 'models', 'pk_attr': 'id', 'table_description': 'A refresh token, stored hashed, rotating ones share a family that is revoked together.'},
            bases=['Model'],
        ),
        ops.AlterField(
            model_name='User',
            name='id_number_digest',
            field=fields.CharField(null=True, db_index=True, max_length=64),
        ),
        ops.AddField(
            model_name='User',
            name='key_id',
            field=fields.CharField(null=True, max_length=8),
        ),
        ops.AddField(
            model_name='User',
            name='verified_id_digest',
            field=fields.CharField(null=True, unique=True, max_length=64),
        ),
    ]

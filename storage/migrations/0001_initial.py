from tortoise import migrations
from tortoise.migrations import operations as ops
import functools
from json import dumps, loads
from storage.models import ActorType, CaseStatus, IdentityLevel, ServiceItemStatus
from tortoise.fields.base import OnDelete
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    initial = True

    operations = [
        ops.CreateModel(
            name='AuditLog',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('at', fields.DatetimeField(db_index=True, auto_now=False, auto_now_add=True)),
                ('actor_type', fields.CharEnumField(description='CITIZEN: citizen\nOFFICIAL: official\nPLATFORM: platform\nSYSTEM: system', enum_type=ActorType, max_length=16)),
                ('actor_id', fields.CharField(null=True, max_length=64)),
                ('action', fields.CharField(max_length=64)),
                ('target_type', fields.CharField(null=True, max_length=32)),
                ('target_id', fields.CharField(null=True, max_length=64)),
                ('request_id', fields.CharField(null=True, max_length=64)),
                ('ip', fields.CharField(null=True, max_length=64)),
                ('detail', fields.JSONField(default=dict, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
            ],
            options={'table': 'audit_log', 'app': 'models', 'indexes': [Index(fields=['target_type', 'target_id'])], 'pk_attr': 'id', 'table_description': 'Who did or read what, when: every official read of personal data lands here.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Official',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('username', fields.CharField(unique=True, max_length=64)),
                ('display_name', fields.CharField(max_length=64)),
                ('department', fields.CharField(default='', max_length=128)),
                ('roles', fields.JSONField(default=list, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('password_hash', fields.CharField(max_length=255)),
                ('is_active', fields.BooleanField(default=True)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('last_login_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'officials', 'app': 'models', 'pk_attr': 'id', 'table_description': 'A government official who signs in to the web console.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='ServiceItem',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('code', fields.CharField(max_length=64)),
                ('version', fields.IntField()),
                ('name', fields.CharField(max_length=128)),
                ('department', fields.CharField(max_length=128)),
                ('status', fields.CharEnumField(default=ServiceItemStatus.PUBLISHED, description='PUBLISHED: published\nRETIRED: retired', enum_type=ServiceItemStatus, max_length=16)),
                ('is_current', fields.BooleanField(default=True)),
                ('content', fields.JSONField(encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('content_sha256', fields.CharField(max_length=64)),
                ('published_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'service_items', 'app': 'models', 'unique_together': (('code', 'version'),), 'indexes': [Index(fields=['code', 'is_current'])], 'pk_attr': 'id', 'table_description': 'One immutable published version of a catalogue item (事项), publishing adds a row.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='User',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('openid', fields.CharField(null=True, unique=True, max_length=64)),
                ('unionid', fields.CharField(null=True, db_index=True, max_length=64)),
                ('oa_openid', fields.CharField(null=True, unique=True, max_length=64)),
                ('identity_level', fields.CharEnumField(default=IdentityLevel.L1, description='L1: L1\nL2: L2\nL3: L3', enum_type=IdentityLevel, max_length=2)),
                ('real_name_enc', fields.BinaryField(null=True)),
                ('id_number_enc', fields.BinaryField(null=True)),
                ('id_number_digest', fields.CharField(null=True, unique=True, max_length=64)),
                ('phone_enc', fields.BinaryField(null=True)),
                ('phone_digest', fields.CharField(null=True, db_index=True, max_length=64)),
                ('session_key_enc', fields.BinaryField(null=True)),
                ('face_verified_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('is_active', fields.BooleanField(default=True)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('updated_at', fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={'table': 'users', 'app': 'models', 'pk_attr': 'id', 'table_description': 'A citizen, keyed by mini-program openid and linked across apps by unionid.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Case',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('case_no', fields.CharField(unique=True, max_length=32)),
                ('user', fields.ForeignKeyField('models.User', source_field='user_id', db_constraint=True, to_field='id', related_name='cases', on_delete=OnDelete.RESTRICT)),
                ('service_item', fields.ForeignKeyField('models.ServiceItem', source_field='service_item_id', db_constraint=True, to_field='id', related_name='cases', on_delete=OnDelete.RESTRICT)),
                ('service_code', fields.CharField(db_index=True, max_length=64)),
                ('status', fields.CharEnumField(default=CaseStatus.SUBMITTED, db_index=True, description='SUBMITTED: submitted\nDELIVERED: delivered_to_platform\nACCEPTED: accepted\nIN_REVIEW: in_review\nCORRECTION_REQUESTED: correction_requested\nRESUBMITTED: resubmitted\nAPPROVED: approved\nREJECTED: rejected\nRESULT_ISSUED: result_issued\nCLOSED: closed\nWITHDRAWN: withdrawn', enum_type=CaseStatus, max_length=32)),
                ('form_snapshot', fields.JSONField(default=dict, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('materials', fields.JSONField(default=list, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('fee_fen', fields.IntField(null=True)),
                ('platform_case_id', fields.CharField(null=True, unique=True, max_length=64)),
                ('platform_seq', fields.IntField(default=0)),
                ('idempotency_key', fields.CharField(null=True, max_length=128)),
                ('bundle_no', fields.CharField(null=True, db_index=True, max_length=32)),
                ('row_version', fields.IntField(default=1)),
                ('submitted_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('updated_at', fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={'table': 'cases', 'app': 'models', 'unique_together': (('user', 'idempotency_key'),), 'pk_attr': 'id', 'table_description': 'A submitted application, keeping the item version and the form as submitted.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='CaseEvent',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('case', fields.ForeignKeyField('models.Case', source_field='case_id', db_constraint=True, to_field='id', related_name='events', on_delete=OnDelete.CASCADE)),
                ('at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('actor_type', fields.CharEnumField(description='CITIZEN: citizen\nOFFICIAL: official\nPLATFORM: platform\nSYSTEM: system', enum_type=ActorType, max_length=16)),
                ('actor_id', fields.CharField(null=True, max_length=64)),
                ('from_status', fields.CharField(null=True, max_length=32)),
                ('to_status', fields.CharField(max_length=32)),
                ('note', fields.TextField(default='', unique=False)),
                ('data', fields.JSONField(default=dict, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
            ],
            options={'table': 'case_events', 'app': 'models', 'indexes': [Index(fields=['case_id', 'at'])], 'pk_attr': 'id', 'table_description': 'One state change of a case: the timeline shown to the citizen and the audit trail.'},
            bases=['Model'],
        ),
    ]

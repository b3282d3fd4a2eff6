"""The citizen's correction (补正): exactly the fields and materials the platform asked for, all at once."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from tortoise.transactions import in_transaction

from core.errors import ValidationFailed
from core.kicks import Kicks
from handlers.cases.access import my_case
from handlers.cases.lifecycle import IllegalTransition, S, transition
from handlers.cases.views import correction_request, view_mine
from handlers.drafts import SNAPSHOT_COLUMN, Application, ReviewFailed, review, set_path
from handlers.forms.review import Problem
from handlers.materials.service import lock_for_case, review_attached
from storage.crypto import FieldCipher
from storage.models import ActorType, Case, CaseEvent, Outbox, User


async def resubmit(
    *, user: User, case_no: str, fields: dict, materials: dict, cipher: FieldCipher, kicks: Kicks
) -> dict:
    """The case as the citizen sees it after correcting exactly what the platform asked for, at once.

    Only the listed fields and materials may change, and every one of them must be given.
    The corrected form is checked like a submission; the case keeps its number."""
    case = await my_case(user=user, case_no=case_no)
    if case.status != S.CORRECTION_REQUESTED:
        raise IllegalTransition("办件当前不需要补正", code="not_in_correction", details={"status": case.status.value})
    asked = correction_request(await CaseEvent.filter(case_id=case.id).order_by("id"))
    errors: dict[str, str] = {}
    for path in fields:
        if path not in asked["fields"]:
            errors[f"fields.{path}"] = "该项不在补正要求之内，不能修改"
    for slot in materials:
        if slot not in asked["materials"]:
            errors[f"materials.{slot}"] = "该材料不在补正要求之内，不能更换"
    for path in asked["fields"]:
        if path not in fields:
            errors[f"fields.{path}"] = "请补正此项"
    for slot in asked["materials"]:
        ids = materials.get(slot)
        if slot in materials and (not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids)):
            errors[f"materials.{slot}"] = "应为已上传文件编号的列表"
        elif slot not in materials:
            errors[f"materials.{slot}"] = "请重新上传此材料"
    if errors:
        raise ValidationFailed(errors)
    data = json.loads(cipher.decrypt(case.form_snapshot_enc, column=SNAPSHOT_COLUMN))
    for path, value in fields.items():
        set_path(data, path, value)
    data.setdefault("materials", {})
    data["materials"].update(materials)
    application = Application(items=[case.service_item], bundle=None)
    problems = review(application, data, user)
    problems += [Problem(*p) for p in await review_attached(user.id, materials, application.materials)]
    if problems:
        raise ReviewFailed(problems, f"补正内容还有{len(problems)}处问题，请按提示修改")
    async with in_transaction():
        case = await transition(
            case.id,
            S.RESUBMITTED,
            actor_type=ActorType.CITIZEN,
            actor_id=user.id,
            note="已按要求补正并重新提交",
            data={"fields": sorted(fields), "materials": sorted(materials)},
        )
        await Case.filter(id=case.id).update(
            form_snapshot_enc=cipher.encrypt(json.dumps(data, ensure_ascii=False), column=SNAPSHOT_COLUMN),
            materials={**(case.materials or {}), **materials},
        )
        await lock_for_case(user.id, materials, application.materials)
        await Outbox.create(
            kind="resubmit_case",
            case_id=case.id,
            next_attempt_at=datetime.now(UTC),
            payload={
                "fields_enc": cipher.encrypt(json.dumps(fields, ensure_ascii=False), column="outbox.payload").hex(),
                "materials": materials,
            },
        )
    await kicks.relay()
    return await view_mine(user=user, case_no=case_no)

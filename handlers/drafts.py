"""Drafts, prefill, pre-review (一次性告知) and submission.

A draft belongs to one citizen and keeps the item versions it was started on. Its data is
sealed at rest (it holds names, ID numbers, phones, addresses). Pre-review lists every
problem at once: form fields, materials, identity level, region. Submission is idempotent:
the same `Idempotency-Key` returns the same cases, however many times it arrives.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from core.cn_ids import parse_id_number
from core.errors import Conflict, Gone, NotFound, Unprocessable
from core.kicks import Kicks
from handlers.auth import IDENTITY_LEVELS, LEVEL_NAMES
from handlers.cases.outbox import enqueue_delivery
from handlers.forms.definitions import FormDef
from handlers.forms.review import Problem, prefill_sources, review_form
from handlers.materials.service import lock_for_case, review_attached
from handlers.numbers import next_number
from storage.crypto import FieldCipher
from storage.models import (
    ActorType,
    Address,
    Case,
    CaseEvent,
    CaseStatus,
    CatalogueState,
    Draft,
    IdentityLevel,
    ServiceItem,
    Submission,
    User,
)

log = logging.getLogger("zhangban.drafts")
DATA_COLUMN = "drafts.data"
SNAPSHOT_COLUMN = "cases.form_snapshot"

PREFILL_LABELS = {
    "identity": "已从实名信息带出",
    "profile": "已从个人资料带出",
    "history": "已从您上次的申请带出",
}


# -- service: shapes and pure checks ---------------------------------------------------------------

_FORMS: dict[tuple[int, ...], FormDef | None] = {}


@dataclass(frozen=True)
class Application:
    """What a draft applies for: one item, or a bundle of items with a merged form."""

    items: list[ServiceItem]
    bundle: dict | None

    @property
    def form(self) -> FormDef | None:
        # Item versions are immutable, so the validated form of a set of versions never changes.
        key = tuple(i.id for i in self.items)
        if key not in _FORMS:
            forms = [i.content.get("form") for i in self.items if i.content.get("form")]
            if len(_FORMS) > 1000:
                _FORMS.clear()
            _FORMS[key] = (
                None if not forms else FormDef.model_validate(forms[0] if len(forms) == 1 else merge_forms(forms))
            )
        return _FORMS[key]

    @property
    def materials(self) -> list[dict]:
        seen: dict[str, dict] = {}
        for item in self.items:
            for material in item.content.get("materials", []):
                seen.setdefault(material["key"], material)
        return list(seen.values())

    @property
    def min_level(self) -> IdentityLevel:
        return max((IdentityLevel(i.content["min_identity_level"]) for i in self.items), key=IDENTITY_LEVELS.index)


def merge_forms(forms: list[dict]) -> dict:
    """One form from several: steps merged by key, a field asked once however many items need it."""
    steps: dict[str, dict] = {}
    checks: list[dict] = []
    for form in forms:
        for step in form.get("steps", []):
            if step["key"] not in steps:
                steps[step["key"]] = {**step, "fields": list(step.get("fields", []))}
                continue
            known = {f["key"] for f in steps[step["key"]]["fields"]}
            steps[step["key"]]["fields"] += [f for f in step.get("fields", []) if f["key"] not in known]
        for check in form.get("checks", []) or []:
            if check not in checks:
                checks.append(check)
    return {"steps": list(steps.values()), "checks": checks}


def deep_merge(base: dict, patch: dict) -> dict:
    """`patch` merged into `base`: objects merge, anything else replaces, null removes."""
    out = dict(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _get(data: dict, path: str):
    node = data
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def set_path(data: dict, path: str, value) -> None:
    parts = path.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def material_problems(application: Application, data: dict) -> list[Problem]:
    """Every required material the applicant has not attached (shared ones are never asked for)."""
    if "materials" in data and not isinstance(data["materials"], dict):
        return [Problem("materials", "invalid_type", "材料的填写格式不正确，请重新上传")]
    attached = data.get("materials") or {}
    problems = []
    for material in application.materials:
        if material["source"] != "applicant" or not material["required"]:
            continue
        # A value that is there but malformed is for `review_attached` to name.
        if not attached.get(material["key"]):
            problems.append(Problem(f"materials.{material['key']}", "material_missing", f"请上传“{material['name']}”"))
    return problems


def identity_problems(application: Application, user: User) -> list[Problem]:
    need = application.min_level
    if IDENTITY_LEVELS.index(user.identity_level) >= IDENTITY_LEVELS.index(need):
        return []
    return [Problem("identity", "identity_level_required", f"办理该事项需要先完成{LEVEL_NAMES[need]}（{need.value}）")]


def region_problems(application: Application, form: FormDef | None, data: dict) -> list[Problem]:
    """The applicant's region (a `region` field in a non-repeated step) must lie in each item's region."""
    if form is None:
        return []
    problems = []
    for step in form.steps:
        if step.repeat:
            continue
        for field in step.fields:
            if field.type != "region":
                continue
            value = _get(data, f"{step.key}.{field.key}")
            if not isinstance(value, str) or len(value) != 6:
                continue
            for item in application.items:
                prefix = _region_prefix(item.content["region"])
                if not value.startswith(prefix):
                    problems.append(
                        Problem(
                            f"{step.key}.{field.key}",
                            "region_unavailable",
                            f"“{item.content['name']}”仅受理本辖区（{item.content['region']}）的申请，请选择辖区内的地址或前往属地办理",
                        )
                    )
                    break
    return problems


def _region_prefix(code: str) -> str:
    if code.endswith("0000"):
        return code[:2]
    if code.endswith("00"):
        return code[:4]
    return code


def review(application: Application, data: dict, user: User, *, today: date | None = None) -> list[Problem]:
    """Every problem of the draft at once: form, materials, identity, region."""
    form = application.form
    problems: list[Problem] = []
    if form is not None:
        problems += review_form(form, data, today=today)
    problems += material_problems(application, data)
    problems += region_problems(application, form, data)
    problems += identity_problems(application, user)
    return problems


def material_slots(application: Application) -> list[dict]:
    """The material list of an application: what to upload, and what is fetched by data sharing."""
    return [
        {
            "key": m["key"],
            "name": m["name"],
            "required": m["required"],
            "condition": m.get("condition"),
            "kinds": m["kinds"],
            "source": m["source"],
            "issuer": m.get("issuer"),
            "fetched_by_sharing": m["source"] == "shared",
        }
        for m in application.materials
    ]


def problem_body(problems: list[Problem]) -> list[dict]:
    return [{"path": p.path, "code": p.code, "message": p.message} for p in problems]


class ReviewFailed(Unprocessable):
    """Pre-review found problems: every one of them at once (一次性告知), in `details.problems`."""

    code = "review_failed"

    def __init__(self, problems: list[Problem], message: str):
        super().__init__(message, details={"problems": problem_body(problems)})


# -- flows -------------------------------------------------------------------------------------------


class Drafts:
    """Draft use cases for the mini-program."""

    def __init__(self, *, cipher: FieldCipher, ttl_days: int, kicks: Kicks):
        self.cipher, self.ttl, self.kicks = cipher, timedelta(days=ttl_days), kicks

    def data_of(self, draft: Draft) -> dict:
        return json.loads(self.cipher.decrypt(draft.data_enc, column=DATA_COLUMN))

    def _seal(self, data: dict) -> bytes:
        return self.cipher.encrypt(json.dumps(data, ensure_ascii=False, separators=(",", ":")), column=DATA_COLUMN)

    async def application_for(self, *, service_code: str | None, bundle_code: str | None) -> Application:
        if bool(service_code) == bool(bundle_code):
            raise Unprocessable(
                "请提供 service_code 或 bundle_code 之一",
                code="validation_failed",
                details={"fields": {"service_code": "请选择要办理的事项"}},
            )
        if service_code:
            item = await ServiceItem.get_or_none(code=service_code, is_current=True)
            if item is None:
                raise NotFound("该事项不存在或已下线", code="service_not_found")
            return Application([item], None)
        state = await CatalogueState.get_or_none(id="catalogue")
        bundle = (
            next((b for b in (state.content.get("bundles") or []) if b["code"] == bundle_code), None) if state else None
        )
        if bundle is None:
            raise NotFound("该“一件事”不存在或已下线", code="bundle_not_found")
        items = [await ServiceItem.get_or_none(code=code, is_current=True) for code in bundle["items"]]
        if any(i is None for i in items):
            raise NotFound("该“一件事”包含的事项已下线", code="bundle_not_found")
        return Application(items, bundle)

    async def application_of(self, draft: Draft) -> Application:
        rows = {r.id: r for r in await ServiceItem.filter(id__in=draft.item_ids)}
        items = [rows[i] for i in draft.item_ids]
        bundle = None
        if draft.bundle_code:
            state = await CatalogueState.get_or_none(id="catalogue")
            bundle = (
                next((b for b in (state.content.get("bundles") or []) if b["code"] == draft.bundle_code), None)
                if state
                else None
            )
            bundle = bundle or {"code": draft.bundle_code, "name": draft.bundle_code, "items": [i.code for i in items]}
        return Application(items, bundle)

    async def prefill(self, user: User, application: Application) -> tuple[dict, dict]:
        """(data, {path: {"source", "label"}}) from identity, profile and the citizen's earlier cases."""
        form = application.form
        data: dict = {}
        sources: dict[str, dict] = {}
        if form is None:
            return data, sources
        identity: dict = {}
        if user.id_number_enc is not None and user.identity_level != IdentityLevel.L1:
            number = self.cipher.decrypt(user.id_number_enc, column="users.id_number")
            parsed = parse_id_number(number)
            identity = {
                "identity.name": self.cipher.decrypt(user.real_name_enc, column="users.real_name"),
                "identity.id_number": number,
                "identity.sex": parsed.sex,
                "identity.birth_date": parsed.birth_date.isoformat(),
            }
        profile: dict = {}
        if user.phone_enc is not None:
            profile["profile.phone"] = self.cipher.decrypt(user.phone_enc, column="users.phone")
        address = await Address.filter(user_id=user.id).order_by("-is_default", "id").first()
        if address is not None:
            profile["profile.address"] = {
                "region_code": address.region_code,
                "detail": self.cipher.decrypt(address.detail_enc, column="addresses.detail"),
            }
        history: dict = {}
        wanted = prefill_sources(form)
        if any(source == "history" for source in wanted.values()):
            codes = [i.code for i in application.items]
            last = await Case.filter(user_id=user.id, service_code__in=codes).order_by("-id").first()
            if last is not None and last.form_snapshot_enc is not None:
                history = json.loads(self.cipher.decrypt(last.form_snapshot_enc, column=SNAPSHOT_COLUMN))
        for path, source in wanted.items():
            if source in identity:
                value, kind = identity[source], "identity"
            elif source in profile:
                value, kind = profile[source], "profile"
            elif source == "history":
                value, kind = _get(history, path), "history"
            else:
                continue
            if value is None:
                continue
            set_path(data, path, value)
            sources[path] = {"source": kind, "label": PREFILL_LABELS[kind]}
        return data, sources

    async def create(
        self, *, user: User, service_code: str | None, bundle_code: str | None
    ) -> tuple[Draft, dict, dict, list[dict]]:
        """A new draft with everything we already know filled in, and its material list."""
        application = await self.application_for(service_code=service_code, bundle_code=bundle_code)
        data, sources = await self.prefill(user, application)
        draft = await Draft.create(
            id=secrets.token_hex(16),
            user=user,
            service_code=application.items[0].code if service_code else None,
            bundle_code=bundle_code,
            item_ids=[i.id for i in application.items],
            data_enc=self._seal(data),
            expires_at=datetime.now(UTC) + self.ttl,
        )
        return draft, data, sources, material_slots(application)

    async def get(self, *, user: User, draft_id: str) -> Draft:
        """The user's draft; anyone else's, or none, is the same 404."""
        draft = await Draft.get_or_none(id=draft_id, user_id=user.id)
        if draft is None:
            raise NotFound("草稿不存在", code="draft_not_found")
        if draft.status == "open" and draft.expires_at <= datetime.now(UTC):
            raise Gone("草稿已过期，请重新填写", code="draft_expired")
        return draft

    async def mine(self, *, user: User) -> list[Draft]:
        return await Draft.filter(user_id=user.id, status="open", expires_at__gt=datetime.now(UTC)).order_by(
            "-updated_at"
        )

    async def patch(self, *, user: User, draft_id: str, version: int, patch: dict) -> tuple[Draft, dict]:
        """Merges `patch` if `version` is current; else 409 version_conflict with the current state."""
        draft = await self.get(user=user, draft_id=draft_id)
        if draft.status != "open":
            raise Conflict("该申请已提交，不能再修改", code="draft_submitted")
        if draft.version != version:
            raise self._conflict(draft)
        data = deep_merge(self.data_of(draft), patch)
        sealed = self._seal(data)
        now = datetime.now(UTC)
        # Compare-and-set on the version: of two devices saving version n, one wins.
        won = await Draft.filter(id=draft.id, version=version, status="open").update(
            data_enc=sealed, version=version + 1, updated_at=now, expires_at=now + self.ttl
        )
        if not won:
            raise await self._lost_to(draft.id)
        draft.data_enc, draft.version = sealed, version + 1
        return draft, data

    async def _lost_to(self, draft_id: str) -> Conflict:
        """The 409 for a save or submission that lost the draft to a concurrent one."""
        current = await Draft.get(id=draft_id)
        if current.status != "open":
            return Conflict("该申请已提交", code="draft_submitted")
        return self._conflict(current)

    def _conflict(self, draft: Draft) -> Conflict:
        return Conflict(
            "草稿已在其他设备上更新，请刷新后再修改",
            code="version_conflict",
            details={"current_version": draft.version, "data": self.data_of(draft)},
        )

    async def review(self, *, user: User, draft_id: str) -> list[Problem]:
        draft = await self.get(user=user, draft_id=draft_id)
        return await self._review(await self.application_of(draft), self.data_of(draft), user)

    async def _review(self, application: Application, data: dict, user: User) -> list[Problem]:
        """Every problem: the form and slots (pure), then the attached files themselves (database)."""
        problems = review(application, data, user)
        attached = data.get("materials") if isinstance(data.get("materials"), dict) else {}
        found = await review_attached(user.id, attached, application.materials)
        return problems + [Problem(path, code, message) for path, code, message in found]

    async def submit(self, *, user: User, draft_id: str, idempotency_key: str, body: dict) -> list[Case]:
        """Cases for the draft (one per item), exactly once per idempotency key."""
        fingerprint = hashlib.sha256(
            json.dumps({"draft": draft_id, "body": body}, sort_keys=True, ensure_ascii=False).encode()
        ).hexdigest()
        replay = await self._replay(user, idempotency_key, fingerprint)
        if replay is not None:
            return replay
        draft = await self.get(user=user, draft_id=draft_id)
        if draft.status != "open":
            # A concurrent request with this key may have committed since we first looked.
            replay = await self._replay(user, idempotency_key, fingerprint)
            if replay is not None:
                return replay
            done = await Submission.filter(user_id=user.id, draft_id=draft.id).first()
            raise Conflict("该申请已提交", code="draft_submitted", details={"case_nos": done.case_nos if done else []})
        if "version" in body and body["version"] != draft.version:
            raise self._conflict(draft)
        application = await self.application_of(draft)
        data = self.data_of(draft)
        problems = await self._review(application, data, user)
        if problems:
            raise ReviewFailed(problems, f"申请材料还有{len(problems)}处需要完善，请按提示一次性修改")
        try:
            async with in_transaction():
                submission = await Submission.create(
                    user=user, idempotency_key=idempotency_key, fingerprint=fingerprint, draft_id=draft.id
                )
                # Only the version reviewed above: a save that landed since then is not in `data`.
                if not await Draft.filter(id=draft.id, status="open", version=draft.version).update(status="submitted"):
                    raise await self._lost_to(draft.id)
                cases = await self._create_cases(user, draft, application, data)
                attached = data.get("materials") if isinstance(data.get("materials"), dict) else {}
                await lock_for_case(user.id, attached, application.materials)
                submission.case_nos = [c.case_no for c in cases]
                await submission.save(update_fields=["case_nos"])
        except IntegrityError:
            # A concurrent request with the same key committed first: answer as it did.
            replay = await self._replay(user, idempotency_key, fingerprint)
            if replay is None:
                raise
            return replay
        await self.kicks.relay()  # the relay's schedule would, within seconds
        return cases

    async def _replay(self, user: User, key: str, fingerprint: str) -> list[Case] | None:
        done = await Submission.get_or_none(user_id=user.id, idempotency_key=key)
        if done is None:
            return None
        if done.fingerprint != fingerprint:
            raise Conflict("该幂等键已用于另一笔提交，请勿重复使用", code="idempotency_key_reused")
        rows = {c.case_no: c for c in await Case.filter(case_no__in=done.case_nos)}
        return [rows[n] for n in done.case_nos]

    async def _create_cases(self, user: User, draft: Draft, application: Application, data: dict) -> list[Case]:
        snapshot = self.cipher.encrypt(json.dumps(data, ensure_ascii=False), column=SNAPSHOT_COLUMN)
        attached = data.get("materials") if isinstance(data.get("materials"), dict) else {}
        cases = []
        bundle_no = None
        for item in application.items:
            case_no = await next_case_no()
            if application.bundle is not None and bundle_no is None:
                bundle_no = case_no
            keys = {m["key"] for m in item.content.get("materials", [])}
            fee = item.content["fee"]
            case = await Case.create(
                case_no=case_no,
                user=user,
                service_item=item,
                service_code=item.code,
                service_name=item.name,
                status=CaseStatus.SUBMITTED,
                form_snapshot_enc=snapshot,
                materials={k: v for k, v in attached.items() if k in keys},
                fee_fen=fee.get("amount_fen") if fee["kind"] == "fixed" else None,
                draft_id=draft.id,
                bundle_no=bundle_no,
            )
            await enqueue_delivery(case)  # commits with the case: the relay hands it to the platform
            await CaseEvent.create(
                case=case,
                actor_type=ActorType.CITIZEN,
                actor_id=str(user.id),
                from_status=None,
                to_status=CaseStatus.SUBMITTED.value,
                note="网上申请已提交",
                data={
                    "item_version": item.version,
                    "bundle": application.bundle["code"] if application.bundle else None,
                },
            )
            cases.append(case)
        return cases


async def next_case_no() -> str:
    """`ZB` + the China date + a 6-digit daily sequence, e.g. ZB20261122000017 (call inside a transaction)."""
    return await next_number("ZB")


async def purge_expired_drafts() -> int:
    """Deletes open drafts past their expiry; returns how many."""
    return await Draft.filter(status="open", expires_at__lte=datetime.now(UTC)).delete()

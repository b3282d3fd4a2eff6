"""Pre-review of a draft against its form (一次性告知: every problem at once).

`review_form` lists the problems in form order and then the checks, each with the dotted path of
the value in the draft (`applicant.phone`, `members.1.name`) and a Chinese message that names the
field. Each field type has its check in `FIELD_CHECKS`.

- a hidden step or field is neither required nor checked, and rules read its value as None;
- rules read number fields as numbers, even when the client sent "1500";
- a check is not evaluated while a value it reads has a problem of its own (missing,
  malformed): the citizen sees that problem first. Write `empty(x) or ...` for optional values.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

from core.cn_ids import PROVINCES, InvalidIdentifier, check_uscc, has_full_width_digits, parse_id_number
from handlers.forms.definitions import DEFAULT_MAX_LENGTH, FieldDef, FieldType, FormDef, StepDef
from handlers.forms.expressions import Evaluator, as_date, compile_expression, is_empty

PROBLEM_CODES = (
    "required",
    "too_short",
    "too_long",
    "out_of_range",
    "invalid_number",
    "invalid_date",
    "not_an_option",
    "invalid_id_number",
    "invalid_uscc",
    "invalid_phone",
    "invalid_region",
    "invalid_address",
    "too_few_entries",
    "too_many_entries",
    "invalid_type",
    "check_failed",
)
MAX_ENTRIES_REVIEWED = 100  # entries beyond this (already too many) are not reviewed one by one

_PHONE = re.compile(r"^1[3-9][0-9]{9}$")
_REGION = re.compile(r"^[0-9]{6}$")
_PLAIN_ID_LABELS = {"身份证号码", "身份证号", "公民身份号码", "居民身份证号码"}
_PLAIN_USCC_LABELS = {"统一社会信用代码"}
# The draft keeps what the citizen typed and goes to the platform as is: full-width digits are
# refused with this message rather than silently read as others.
_FULL_WIDTH_MESSAGE = "{label}请使用半角数字（0-9），不要使用全角数字"
_CHOSEN = frozenset({"select", "multiselect", "date", "region"})  # "请选择…" when missing, not "请填写…"

Finding = tuple[str, str]  # (code, message) of a Problem


@dataclass(frozen=True)
class Problem:
    """One thing the citizen must fix: where (dotted path in the draft), what (code), and how (message)."""

    path: str
    code: str
    message: str


def review_form(form: FormDef, data: dict, *, today: date | None = None) -> list[Problem]:
    """Every problem of `data` against `form` at once: fields in form order, then the checks."""
    review = _Review(form, data, today or date.today()).run()
    review.checks()
    return review.problems


def visible_paths(form: FormDef, data: dict, *, today: date | None = None) -> set[str]:
    """The visible step keys and field paths (`applicant`, `applicant.name`, `members.0.name`, material fields too)."""
    return _Review(form, data, today or date.today()).run().visible


def evaluate(text: str, data: dict, *, today: date | None = None) -> bool:
    """Whether the rule `text` holds for `data` (no visibility applied); false if it fails to evaluate."""
    return _Review(FormDef.model_construct(steps=[], checks=[]), data, today or date.today()).holds(text)


def prefill_sources(form: FormDef) -> dict[str, str]:
    """{path: source} of the prefilled fields of non-repeated steps, e.g. {"applicant.name": "identity.name"}."""
    return {
        f"{step.key}.{field.key}": field.prefill
        for step in form.steps
        if step.repeat is None
        for field in step.fields
        if field.prefill is not None
    }


class _Review:
    """One pass over a form and its data: visibility in form order, then field problems, then checks."""

    def __init__(self, form: FormDef, data: Any, today: date):
        self.form = form
        self.data = data if isinstance(data, dict) else {}
        self.today = today
        self.hidden: set[str] = set()
        self.visible: set[str] = set()
        self.problems: list[Problem] = []
        self.entry: str | None = None  # "members.1" while evaluating rules of that entry
        # Rules read number fields as numbers even when the client sent "1500".
        self.numbers = {(s.key, f.key) for s in form.steps for f in s.fields if f.type == "number"}
        self.rules = Evaluator(self._resolve, today)

    # rules

    def _concrete(self, path: str) -> str:
        if path.startswith("item.") and self.entry is not None:
            return f"{self.entry}.{path[5:]}"
        return path

    def _is_hidden(self, path: str) -> bool:
        parts = path.split(".")
        return any(".".join(parts[: i + 1]) in self.hidden for i in range(len(parts)))

    def _resolve(self, name: str) -> Any:
        path = self._concrete(name)
        if self._is_hidden(path):
            return None
        node: Any = self.data
        for part in path.split("."):
            if isinstance(node, dict):
                node = node.get(part)
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return None
        if isinstance(node, str):
            parts = path.split(".")
            if (len(parts) == 2 or (len(parts) == 3 and parts[1].isdigit())) and (parts[0], parts[-1]) in self.numbers:
                number = _number(node)
                return node if number is None else number
        return node

    def holds(self, text: str, *, entry: str | None = None) -> bool:
        """Whether the rule is true for this data, `item.` reading `entry` ("members.1") if given."""
        self.entry = entry
        try:
            return self.rules.holds(text)
        finally:
            self.entry = None

    # walk

    def run(self) -> _Review:
        for step in self.form.steps:
            if step.visible_if and not self.holds(step.visible_if):
                self.hidden.add(step.key)
                continue
            self.visible.add(step.key)
            raw = self.data.get(step.key)
            if step.repeat is None:
                if raw is None:
                    raw = {}
                if not isinstance(raw, dict):
                    self.add(step.key, "invalid_type", f"“{step.title}”的填写格式不正确，请重新填写")
                    continue
                self.fields(step, raw, step.key, None)
                continue
            if raw is None:
                raw = []
            if not isinstance(raw, list):
                self.add(step.key, "invalid_type", f"“{step.title}”的填写格式不正确，请重新填写")
                continue
            if len(raw) < step.repeat.min:
                self.add(
                    step.key, "too_few_entries", f"“{step.title}”至少需要填写{step.repeat.min}项，当前{len(raw)}项"
                )
            elif len(raw) > step.repeat.max:
                self.add(
                    step.key, "too_many_entries", f"“{step.title}”最多填写{step.repeat.max}项，您填写了{len(raw)}项"
                )
            for i, entry in enumerate(raw[:MAX_ENTRIES_REVIEWED]):
                prefix = f"{step.key}.{i}"
                if entry is None:
                    entry = {}
                if not isinstance(entry, dict):
                    self.add(prefix, "invalid_type", f"“{step.title}”第{i + 1}项的填写格式不正确，请重新填写")
                    continue
                self.fields(step, entry, prefix, prefix)
        return self

    def fields(self, step: StepDef, values: dict, prefix: str, entry: str | None) -> None:
        for field in step.fields:
            path = f"{prefix}.{field.key}"
            if field.visible_if and not self.holds(field.visible_if, entry=entry):
                self.hidden.add(path)
                continue
            self.visible.add(path)
            if field.type == "material":
                continue  # materials.<key> is reviewed with the materials
            required = field.required or bool(field.required_if and self.holds(field.required_if, entry=entry))
            where = "" if entry is None else f"{step.title}第{int(entry.rsplit('.', 1)[1]) + 1}项的"
            found = _field_problem(field, where, values.get(field.key), required, self.today)
            if found:
                self.add(path, *found)

    def checks(self) -> None:
        flagged = {p.path for p in self.problems}
        for check in self.form.checks:
            if self._is_hidden(check.path):
                continue
            reads = compile_expression(check.rule).paths
            if any(self._blocked(path, flagged) for path in reads):
                continue
            if not self.holds(check.rule):
                self.add(check.path, "check_failed", check.message)

    def _blocked(self, path: str, flagged: set[str]) -> bool:
        parts = path.split(".")
        return any(".".join(parts[: i + 1]) in flagged for i in range(len(parts)))

    def add(self, path: str, code: str, message: str) -> None:
        self.problems.append(Problem(path, code, message))


def _field_problem(field: FieldDef, where: str, value: Any, required: bool, today: date) -> Finding | None:
    """The one problem of this value, if any; `where` is "随迁人员第2项的" in a repeated step, else ""."""
    label = f"{where}“{field.label}”"  # the field as the citizen sees it named
    if is_empty(value):
        if not required:
            return None
        return "required", f"请{'选择' if field.type in _CHOSEN else '填写'}{label}"
    return FIELD_CHECKS[field.type](Answer(field, value, label, bool(where), today))


@dataclass(frozen=True, slots=True)
class Answer:
    """A non-empty value of one field, with what its check needs to word a problem."""

    field: FieldDef
    value: Any
    label: str  # “姓名”, or 随迁人员第2项的“姓名” in a repeated step
    repeated: bool  # in an entry of a repeated step
    today: date

    def wrong_type(self) -> Finding:
        return "invalid_type", f"{self.label}的填写格式不正确，请重新填写"


def _check_text(a: Answer) -> Finding | None:
    if not isinstance(a.value, str):
        return a.wrong_type()
    return _length_problem(a.label, a.value.strip(), a.field, "")


def _check_number(a: Answer) -> Finding | None:
    number, low, high = _number(a.value), a.field.min, a.field.max
    if number is None:
        return "invalid_number", f"{a.label}请填写数字"
    if low is not None and number < low:  # type: ignore[operator]
        return "out_of_range", f"{a.label}不能小于{_num(low)}"  # type: ignore[arg-type]
    if high is not None and number > high:  # type: ignore[operator]
        return "out_of_range", f"{a.label}不能大于{_num(high)}"  # type: ignore[arg-type]
    return None


def _check_date(a: Answer) -> Finding | None:
    day = as_date(a.value) if isinstance(a.value, str) else None
    if day is None:
        return "invalid_date", f"{a.label}不是有效的日期，请按“年-月-日”选择"
    field = a.field
    low, high = _date_bound(field.min, a.today), _date_bound(field.max, a.today)
    if low is not None and day < low:
        return "out_of_range", f"{a.label}不能早于{'今天' if field.min == 'today' else _cn_date(low)}"
    if high is not None and day > high:
        return "out_of_range", f"{a.label}不能晚于{'今天' if field.max == 'today' else _cn_date(high)}"
    return None


def _check_select(a: Answer) -> Finding | None:
    if not isinstance(a.value, str) or a.value not in {o.value for o in a.field.options or []}:
        return "not_an_option", f"{a.label}的选项无效，请重新选择"
    return None


def _check_multiselect(a: Answer) -> Finding | None:
    if not isinstance(a.value, list):
        return a.wrong_type()
    allowed = {o.value for o in a.field.options or []}
    if any(not isinstance(v, str) or v not in allowed for v in a.value):
        return "not_an_option", f"{a.label}中有无效的选项，请重新选择"
    return None


def _check_id_number(a: Answer) -> Finding | None:
    if not isinstance(a.value, str):
        return a.wrong_type()
    if has_full_width_digits(a.value):
        return "invalid_id_number", _FULL_WIDTH_MESSAGE.format(label=a.label)
    try:
        if not a.value.isascii():
            raise InvalidIdentifier("身份证号码前17位应为数字，最后一位为数字或X")
        parse_id_number(a.value, today=a.today)
    except InvalidIdentifier as exc:
        return "invalid_id_number", _identifier_message(a, exc, _PLAIN_ID_LABELS)
    return None


def _check_uscc(a: Answer) -> Finding | None:
    if not isinstance(a.value, str):
        return a.wrong_type()
    try:
        check_uscc(a.value)
    except InvalidIdentifier as exc:
        return "invalid_uscc", _identifier_message(a, exc, _PLAIN_USCC_LABELS)
    return None


def _check_phone(a: Answer) -> Finding | None:
    if not isinstance(a.value, str):
        return a.wrong_type()
    digits = a.value.strip()
    if has_full_width_digits(digits):
        return "invalid_phone", _FULL_WIDTH_MESSAGE.format(label=a.label)
    if not re.fullmatch(r"[0-9]+", digits):
        return "invalid_phone", f"{a.label}只能填写数字"
    if len(digits) != 11:
        return "invalid_phone", f"{a.label}应为11位手机号码，您输入了{len(digits)}位"
    if not _PHONE.fullmatch(digits):
        return "invalid_phone", f"{a.label}不是有效的手机号码，请核对"
    return None


def _check_region(a: Answer) -> Finding | None:
    if not isinstance(a.value, str):
        return a.wrong_type()
    return _region_problem(a.label, a.value, "")


def _check_address(a: Answer) -> Finding | None:
    if not isinstance(a.value, dict):
        return a.wrong_type()
    region, detail = a.value.get("region_code"), a.value.get("detail")
    if is_empty(region):
        return "invalid_address", f"请选择{a.label}的所在地区"
    if not isinstance(region, str):
        return a.wrong_type()
    found = _region_problem(a.label, region, "的所在地区")
    if found:
        return found
    if is_empty(detail):
        return "invalid_address", f"请填写{a.label}的详细地址（街道、门牌号）"
    if not isinstance(detail, str):
        return a.wrong_type()
    return _length_problem(a.label, detail.strip(), a.field, "的详细地址")


def _check_material(a: Answer) -> Finding | None:
    return None  # materials.<key> is reviewed with the materials (`_Review.fields` never gets here)


FIELD_CHECKS: dict[FieldType, Callable[[Answer], Finding | None]] = {
    "text": _check_text,
    "textarea": _check_text,
    "number": _check_number,
    "date": _check_date,
    "select": _check_select,
    "multiselect": _check_multiselect,
    "id_number": _check_id_number,
    "phone": _check_phone,
    "uscc": _check_uscc,
    "region": _check_region,
    "address": _check_address,
    "material": _check_material,
}


def _identifier_message(a: Answer, exc: InvalidIdentifier, plain_labels: set[str]) -> str:
    """The checker's message alone under a plain label like 身份证号码 (outside repeats), else after the label."""
    plain = not a.repeated and a.field.label in plain_labels
    return str(exc) if plain else f"{a.label}：{exc}"


def _length_problem(label: str, text: str, field: FieldDef, part: str) -> Finding | None:
    n = len(text)
    if field.min_length is not None and n < field.min_length:
        return "too_short", f"{label}{part}至少需要填写{field.min_length}个字"
    limit = field.max_length if field.max_length is not None else DEFAULT_MAX_LENGTH[field.type]
    if n > limit:
        return "too_long", f"{label}{part}最多{limit}个字，您填写了{n}个字"
    return None


def _region_problem(label: str, value: str, part: str) -> Finding | None:
    if has_full_width_digits(value):
        return "invalid_region", _FULL_WIDTH_MESSAGE.format(label=f"{label}{part}")
    if not _REGION.fullmatch(value):
        return "invalid_region", f"{label}{part}应为6位行政区划代码，请重新选择"
    if value[:2] not in PROVINCES:
        return "invalid_region", f"{label}{part}不存在，请重新选择"
    return None


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?[0-9]{1,15}(\.[0-9]{1,10})?\s*", value):
        value = float(value) if "." in value else int(value)
    if isinstance(value, (int, float)):
        try:
            return value if math.isfinite(value) else None
        except OverflowError:  # an int past any float (JSON allows 4,300 digits): not a quantity
            return None
    return None


def _num(value: float) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _date_bound(bound: Any, today: date) -> date | None:
    return today if bound == "today" else as_date(bound)


def _cn_date(value: date) -> str:
    return f"{value.year}年{value.month}月{value.day}日"

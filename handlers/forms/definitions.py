"""Form definitions: the `form:` key of a catalogue item, checked when the catalogue loads.

A form is a list of steps of fields (one of `FieldType`), plus cross-field checks. Every rule is
compiled here, and every dotted name it reads must exist in the form.
"""

from __future__ import annotations

import keyword
import math
from collections.abc import Iterator
from datetime import date, datetime
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from core.schema import Strict
from handlers.forms.expressions import ExpressionError, as_date, compile_expression

FieldType = Literal[
    "text",
    "textarea",
    "number",
    "date",
    "select",
    "multiselect",
    "id_number",
    "phone",
    "uscc",
    "region",
    "address",
    "material",
]
PrefillSource = Literal[
    "identity.name",
    "identity.id_number",
    "identity.sex",
    "identity.birth_date",
    "profile.phone",
    "profile.address",
    "history",
]

KEY_PATTERN = r"^[a-z][a-z0-9_]*$"
RESERVED_STEP_KEYS = frozenset({"item", "materials"})  # `item.x` in repeat rules; materials.<key> in drafts
MAX_ENTRIES = 50  # the largest `repeat.max` a catalogue may declare
DEFAULT_MAX_LENGTH = {"text": 200, "textarea": 2000, "address": 200}  # when the field sets none


def _key(value: str) -> str:
    if keyword.iskeyword(value):
        raise ValueError(f"'{value}' is a reserved word and cannot be a key")
    return value


def _expression(value: str | None) -> str | None:
    if value is not None:
        try:
            compile_expression(value)
        except ExpressionError as exc:
            raise ValueError(str(exc)) from None
    return value


class OptionDef(Strict):
    value: str = Field(min_length=1, max_length=64)
    label: str = Field(min_length=1, max_length=64)


class RepeatDef(Strict):
    min: int = Field(0, ge=0, le=MAX_ENTRIES)
    max: int = Field(ge=1, le=MAX_ENTRIES)

    @model_validator(mode="after")
    def _bounds(self) -> RepeatDef:
        if self.min > self.max:
            raise ValueError("repeat.min cannot exceed repeat.max")
        return self


_PREFILL_TYPES = {
    "identity.name": {"text"},
    "identity.id_number": {"id_number"},
    "identity.sex": {"select"},
    "identity.birth_date": {"date"},
    "profile.phone": {"phone"},
    "profile.address": {"address"},
}


class FieldDef(Strict):
    key: str = Field(pattern=KEY_PATTERN, max_length=40)
    label: str = Field(min_length=1, max_length=40)
    type: FieldType
    required: bool = False
    required_if: str | None = None
    visible_if: str | None = None
    prefill: PrefillSource | None = None
    min_length: int | None = Field(None, ge=0)
    max_length: int | None = Field(None, ge=1)
    min: int | float | str | None = None
    max: int | float | str | None = None
    options: list[OptionDef] | None = None
    material: str | None = Field(None, pattern=KEY_PATTERN)
    help: str | None = None

    @field_validator("key")
    @classmethod
    def _check_key(cls, value: str) -> str:
        return _key(value)

    @field_validator("required_if", "visible_if")
    @classmethod
    def _check_expressions(cls, value: str | None) -> str | None:
        return _expression(value)

    @field_validator("min", "max", mode="before")
    @classmethod
    def _yaml_dates(cls, value: Any) -> Any:
        # YAML reads an unquoted 2020-01-01 as a date; keep bounds as ISO strings.
        if isinstance(value, datetime):
            raise ValueError("a date bound must be a date (YYYY-MM-DD) or 'today', not a date and time")
        return value.isoformat() if isinstance(value, date) else value

    @model_validator(mode="after")
    def _consistent(self) -> FieldDef:
        t = self.type
        if self.options is not None and t not in ("select", "multiselect"):
            raise ValueError(f"options are only for select and multiselect fields, not {t}")
        if t in ("select", "multiselect"):
            if not self.options:
                raise ValueError(f"a {t} field needs options")
            values = [o.value for o in self.options]
            if len(values) != len(set(values)):
                raise ValueError("option values must be unique")
        if (self.material is not None) != (t == "material"):
            raise ValueError("a material field names its material (and only a material field does)")
        if (self.min_length is not None or self.max_length is not None) and t not in ("text", "textarea", "address"):
            raise ValueError(f"min_length/max_length are only for text, textarea and address fields, not {t}")
        if self.min_length is not None and self.max_length is not None and self.min_length > self.max_length:
            raise ValueError("min_length cannot exceed max_length")
        bounds = [b for b in (self.min, self.max) if b is not None]
        if bounds and t not in ("number", "date"):
            raise ValueError(f"min/max are only for number and date fields, not {t}")
        if t == "number":
            if any(isinstance(b, str) or not math.isfinite(b) for b in bounds):
                raise ValueError("min/max of a number field must be numbers")
            if len(bounds) == 2 and self.min > self.max:  # type: ignore[operator]
                raise ValueError("min cannot exceed max")
        if t == "date":
            for b in bounds:
                if not isinstance(b, str) or (b != "today" and as_date(b) is None):
                    raise ValueError("min/max of a date field must be 'today' or a date 'YYYY-MM-DD'")
            dates = [as_date(b) for b in bounds if b != "today"]
            if len(dates) == 2 and dates[0] > dates[1]:  # type: ignore[operator]
                raise ValueError("min cannot exceed max")
        if self.prefill is not None:
            if self.prefill in _PREFILL_TYPES and t not in _PREFILL_TYPES[self.prefill]:
                raise ValueError(f"prefill {self.prefill} does not fit a {t} field")
            if self.prefill == "history" and t == "material":
                raise ValueError("material fields are not prefilled")
            if self.prefill == "identity.sex" and not {"male", "female"} <= {o.value for o in self.options or []}:
                raise ValueError("prefill identity.sex needs options 'male' and 'female'")
        return self


class StepDef(Strict):
    key: str = Field(pattern=KEY_PATTERN, max_length=40)
    title: str = Field(min_length=1, max_length=40)
    repeat: RepeatDef | None = None
    visible_if: str | None = None
    fields: list[FieldDef] = Field(min_length=1, max_length=100)

    @field_validator("key")
    @classmethod
    def _check_key(cls, value: str) -> str:
        return _key(value)

    @field_validator("visible_if")
    @classmethod
    def _check_expression(cls, value: str | None) -> str | None:
        return _expression(value)


class CheckDef(Strict):
    rule: str
    path: str = Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
    message: str = Field(min_length=1, max_length=200)

    @field_validator("rule")
    @classmethod
    def _check_rule(cls, value: str) -> str:
        return _expression(value)  # type: ignore[return-value]


class FormDef(Strict):
    steps: list[StepDef] = Field(min_length=1, max_length=40)
    checks: list[CheckDef] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> FormDef:
        problems: list[str] = []
        steps: dict[str, StepDef] = {}
        for i, step in enumerate(self.steps):
            if step.key in steps:
                problems.append(f"steps.{i}.key: duplicate step key '{step.key}'")
            if step.key in RESERVED_STEP_KEYS:
                problems.append(f"steps.{i}.key: '{step.key}' is reserved")
            steps.setdefault(step.key, step)
            seen: set[str] = set()
            for j, field in enumerate(step.fields):
                if field.key in seen:
                    problems.append(f"steps.{i}.fields.{j}.key: duplicate field key '{field.key}' in step '{step.key}'")
                seen.add(field.key)
                if field.prefill is not None and step.repeat is not None:
                    problems.append(f"steps.{i}.fields.{j}.prefill: fields of a repeated step are not prefilled")
        materials = [f.material for s in self.steps for f in s.fields if f.material]
        for key in {m for m in materials if materials.count(m) > 1}:
            problems.append(f"steps: material '{key}' is named by more than one field")

        def refs(where: str, text: str | None, repeat_step: StepDef | None) -> None:
            if text is None:
                return
            for path in sorted(compile_expression(text).paths):
                error = _reference_problem(path, steps, repeat_step)
                if error:
                    problems.append(f"{where}: {error} in '{text}'")

        for i, step in enumerate(self.steps):
            refs(f"steps.{i}.visible_if", step.visible_if, None)
            for j, field in enumerate(step.fields):
                for attr in ("visible_if", "required_if"):
                    refs(f"steps.{i}.fields.{j}.{attr}", getattr(field, attr), step if step.repeat else None)
        for k, check in enumerate(self.checks):
            refs(f"checks.{k}.rule", check.rule, None)
            root, _, rest = check.path.partition(".")
            step = steps.get(root)
            if step is None or (rest and (step.repeat is not None or rest not in {f.key for f in step.fields})):
                problems.append(f"checks.{k}.path: '{check.path}' is not a step, nor a field of a non-repeated step")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def material_keys(self) -> list[str]:
        """Every material key the form mentions (material fields, then `materials.<key>` in rules), once each."""
        keys = [f.material for s in self.steps for f in s.fields if f.material]
        for text in self._expressions():
            keys += sorted(p.split(".")[1] for p in compile_expression(text).paths if p.startswith("materials."))
        return list(dict.fromkeys(keys))

    def field_count(self) -> int:
        return sum(len(s.fields) for s in self.steps)

    def _expressions(self) -> Iterator[str]:
        for step in self.steps:
            if step.visible_if:
                yield step.visible_if
            for field in step.fields:
                yield from (e for e in (field.visible_if, field.required_if) if e)
        yield from (c.rule for c in self.checks)


def _reference_problem(path: str, steps: dict[str, StepDef], repeat_step: StepDef | None) -> str | None:
    """Why `path` cannot be read by a rule in this form, or None if it can."""
    parts = path.split(".")
    root = parts[0]
    if root == "item":
        if repeat_step is None:
            return f"'{path}': item.<field> is only available in the fields of a repeated step"
        if len(parts) != 2 or parts[1] not in {f.key for f in repeat_step.fields}:
            return f"'{path}': step '{repeat_step.key}' has no field '{'.'.join(parts[1:])}'"
        return None
    if root == "materials":
        return None if len(parts) == 2 else f"'{path}': write materials.<material key>"
    step = steps.get(root)
    if step is None:
        return f"unknown name '{path}' (not a step of this form)"
    if len(parts) == 1:
        return None
    if step.repeat is not None:
        return f"'{path}': step '{root}' is repeated; rules can only use the whole list ('{root}')"
    field = next((f for f in step.fields if f.key == parts[1]), None)
    if field is None:
        return f"'{path}': step '{root}' has no field '{parts[1]}'"
    if len(parts) == 2 or (field.type == "address" and len(parts) == 3 and parts[2] in ("region_code", "detail")):
        return None
    return f"'{path}': field '{root}.{parts[1]}' has no part '{'.'.join(parts[2:])}'"

"""Application forms: their definition in the catalogue, the rule language, and pre-review.

A form (the `form:` key of a catalogue item) is a list of steps of fields, plus cross-field
checks. `review_form` lists every problem of a draft at once, in form order and then the
checks, each with the dotted path of the value in the draft (`applicant.phone`,
`members.1.name`) and a Chinese message that names the field.

Rules (`visible_if`, `required_if`, check rules) are strings in a tiny expression language:
dotted names read draft values (`applicant.marital == 'married'`; a missing value is None;
inside a repeated step `item.<field>` is the current entry), literals, `and or not`,
comparisons (`== != < <= > >= in not in`, `is None`), `+ - * / // %`, `x if c else y`, and
the functions of `FUNCTIONS`. Nothing else: attribute tricks, subscripts, lambdas,
comprehensions, `**` and unknown functions are refused by `compile_expression`, which the
catalogue runs at load time. Evaluation goes through simpleeval (never Python eval) over the
already-checked tree; an expression that fails at review time counts as false and is logged
(its text only, never draft values).

Conventions worth knowing when writing rules:
- a hidden step or field is neither required nor checked, and rules read its value as None;
- `<`, `<=`, `>`, `>=` with a missing (None) side are false; `x in None` is false;
- a check is not evaluated while a value it reads has a problem of its own (missing,
  malformed): the citizen sees that problem first. Write `empty(x) or ...` for optional values;
- `date_le(a, b)` is true when either side is empty (nothing to compare yet).
"""

from __future__ import annotations

import ast
import keyword
import logging
import math
import operator
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from typing import Any, Literal

import simpleeval
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.cn_ids import PROVINCES, InvalidIdentifier, check_uscc, parse_id_number

log = logging.getLogger("zhangban.forms")

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

KEY_PATTERN = r"^[a-z][a-z0-9_]*$"
RESERVED_STEP_KEYS = frozenset({"item", "materials"})  # `item.x` in repeat rules; materials.<key> in drafts
MAX_ENTRIES = 50  # the largest `repeat.max` a catalogue may declare
MAX_ENTRIES_REVIEWED = 100  # entries beyond this (already too many) are not reviewed one by one
DEFAULT_MAX_LENGTH = {"text": 200, "textarea": 2000, "address": 200}  # when the field sets none
MAX_EXPRESSION_LENGTH = 500
MAX_EXPRESSION_NODES = 200
MAX_LITERAL = 10**15

_ISO_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")  # ASCII only: Python's \d also matches "٣" and "３"
_PHONE = re.compile(r"^1[3-9][0-9]{9}$")
_REGION = re.compile(r"^[0-9]{6}$")
_PLAIN_ID_LABELS = {"身份证号码", "身份证号", "公民身份号码", "居民身份证号码"}
_PLAIN_USCC_LABELS = {"统一社会信用代码"}


# -- the expression language ---------------------------------------------------------------------


class ExpressionError(ValueError):
    """An expression is not valid in the form rule language; the message says why."""


# name → number of positional arguments
FUNCTIONS: dict[str, int] = {"age": 1, "today": 0, "date_le": 2, "len": 1, "empty": 1, "days_between": 2}

_ALLOWED_NODES = (
    ast.Expression,
    ast.BoolOp,
    ast.And,
    ast.Or,
    ast.UnaryOp,
    ast.Not,
    ast.USub,
    ast.UAdd,
    ast.BinOp,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.FloorDiv,
    ast.Mod,
    ast.Compare,
    ast.Eq,
    ast.NotEq,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
    ast.In,
    ast.NotIn,
    ast.Is,
    ast.IsNot,
    ast.IfExp,
    ast.Call,
    ast.Name,
    ast.Attribute,
    ast.Constant,
    ast.Tuple,
    ast.List,
    ast.Load,
)
_NAME_PART = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass(frozen=True, eq=False)
class Expression:
    """A checked expression: its text, the tree simpleeval evaluates, and what it refers to."""

    text: str
    node: ast.expr
    paths: frozenset[str]  # dotted names read, e.g. {"applicant.marital", "item.relation"}
    functions: frozenset[str]


def _dotted(node: ast.AST) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


class _Flatten(ast.NodeTransformer):
    """Turns each dotted chain `a.b.c` into one Name node `"a.b.c"`, so no getattr ever runs."""

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        return ast.copy_location(ast.Name(id=_dotted(node), ctx=ast.Load()), node)


@lru_cache(maxsize=4096)
def compile_expression(text: str) -> Expression:
    """The checked expression; raises ExpressionError naming what is not allowed."""
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError("expression is empty")
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise ExpressionError(f"expression is longer than {MAX_EXPRESSION_LENGTH} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"syntax error in '{text}': {exc.msg}") from None
    nodes = list(ast.walk(tree))
    if len(nodes) > MAX_EXPRESSION_NODES:
        raise ExpressionError(f"expression '{text}' is too complex")
    paths: set[str] = set()
    functions: set[str] = set()
    for node in nodes:
        if not isinstance(node, _ALLOWED_NODES):
            what = {ast.Pow: "the ** operator"}.get(type(node), type(node).__name__)
            raise ExpressionError(f"'{text}': {what} is not allowed")
        if isinstance(node, ast.Attribute):
            path = _dotted(node)
            if path is None:
                raise ExpressionError(f"'{text}': '.{node.attr}' is only allowed in dotted names like applicant.name")
        if isinstance(node, (ast.Name, ast.Attribute)):
            part = node.id if isinstance(node, ast.Name) else node.attr
            if not _NAME_PART.fullmatch(part):
                raise ExpressionError(f"'{text}': name '{part}' is not allowed")
        if isinstance(node, ast.Constant):
            value = node.value
            if not (value is None or isinstance(value, (bool, int, float, str))):
                raise ExpressionError(f"'{text}': literal {value!r} is not allowed")
            if isinstance(value, str) and len(value) > 200:
                raise ExpressionError(f"'{text}': string literal too long")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) > MAX_LITERAL:
                raise ExpressionError(f"'{text}': number {value} is too large")
        if isinstance(node, ast.Compare):
            for op, right in zip(node.ops, node.comparators, strict=True):
                is_none = isinstance(right, ast.Constant) and right.value is None
                if isinstance(op, (ast.Is, ast.IsNot)) and not is_none:
                    raise ExpressionError(f"'{text}': 'is' is only allowed as 'is None' / 'is not None'")
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                name = _dotted(node.func) or ast.unparse(node.func)
                raise ExpressionError(f"'{text}': function '{name}' is not available (allowed: {', '.join(FUNCTIONS)})")
            if node.keywords:
                raise ExpressionError(f"'{text}': keyword arguments are not allowed")
            if len(node.args) != FUNCTIONS[node.func.id]:
                raise ExpressionError(
                    f"'{text}': {node.func.id}() takes {FUNCTIONS[node.func.id]} argument(s), got {len(node.args)}"
                )
            functions.add(node.func.id)
    _collect_paths(tree.body, paths)
    flat = _Flatten().visit(tree)
    ast.fix_missing_locations(flat)
    return Expression(text=text, node=flat.body, paths=frozenset(paths), functions=frozenset(functions))


def _collect_paths(node: ast.AST, paths: set[str]) -> None:
    """The dotted names `node` reads from the draft (a called function's name is not one)."""
    if isinstance(node, (ast.Name, ast.Attribute)):
        paths.add(_dotted(node))  # type: ignore[arg-type]
        return
    children = node.args if isinstance(node, ast.Call) else ast.iter_child_nodes(node)
    for child in children:
        _collect_paths(child, paths)


def _as_date(value: Any) -> date | None:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str) and _ISO_DATE.fullmatch(value.strip()):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            return None
    return None


def _is_empty(value: Any, *, nested: bool = True) -> bool:
    """None, blank text, an empty list, or an object whose parts are all that (an unfilled address)."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, (list, tuple)):
        return len(value) == 0
    if isinstance(value, dict):  # one level only: client data may nest arbitrarily deep
        return all(_is_empty(v, nested=False) for v in value.values()) if nested else not value
    return False


def _functions(today: date) -> dict[str, Callable]:
    def age(value: Any) -> int | None:
        born = None
        if isinstance(value, str) and len(value.strip()) == 18:
            if not value.isascii():
                return None
            try:
                born = parse_id_number(value, today=today).birth_date
            except InvalidIdentifier:
                return None
        else:
            born = _as_date(value)
        if born is None or born > today:
            return None
        return today.year - born.year - ((today.month, today.day) < (born.month, born.day))

    def today_() -> str:
        return today.isoformat()

    def date_le(a: Any, b: Any) -> bool | None:
        if _is_empty(a) or _is_empty(b):
            return True
        da, db = _as_date(a), _as_date(b)
        if da is None or db is None:
            return None
        return da <= db

    def len_(value: Any) -> int | None:
        if value is None:
            return 0
        if isinstance(value, (str, list, tuple, dict)):
            return len(value)
        return None

    def days_between(a: Any, b: Any) -> int | None:
        da, db = _as_date(a), _as_date(b)
        if da is None or db is None:
            return None
        return (db - da).days

    def empty(value: Any) -> bool:
        return _is_empty(value)

    return {"age": age, "today": today_, "date_le": date_le, "len": len_, "empty": empty, "days_between": days_between}


def _ordered(fn: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def compare(a: Any, b: Any) -> bool:
        if a is None or b is None:
            return False
        return fn(a, b)

    return compare


def _numeric_mod(a: Any, b: Any) -> Any:
    if isinstance(a, str):  # no printf formatting: '%999999999d' % 1
        raise TypeError("% is for numbers only")
    return a % b


_OPERATORS = {
    ast.Add: simpleeval.safe_add,
    ast.Sub: operator.sub,
    ast.Mult: simpleeval.safe_mult,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: _numeric_mod,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
    ast.Not: operator.not_,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: _ordered(operator.lt),
    ast.LtE: _ordered(operator.le),
    ast.Gt: _ordered(operator.gt),
    ast.GtE: _ordered(operator.ge),
    ast.In: lambda x, y: y is not None and x in y,
    ast.NotIn: lambda x, y: y is None or x not in y,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
}


class _Names:
    """The names mapping simpleeval reads: every dotted name resolves, to None when missing."""

    __slots__ = ("resolve",)

    def __init__(self, resolve: Callable[[str], Any]):
        self.resolve = resolve

    def __getitem__(self, path: str) -> Any:
        return self.resolve(path)


# -- definitions -----------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


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


class OptionDef(_Strict):
    value: str = Field(min_length=1, max_length=64)
    label: str = Field(min_length=1, max_length=64)


class RepeatDef(_Strict):
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


class FieldDef(_Strict):
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
                if not isinstance(b, str) or (b != "today" and _as_date(b) is None):
                    raise ValueError("min/max of a date field must be 'today' or a date 'YYYY-MM-DD'")
            dates = [_as_date(b) for b in bounds if b != "today"]
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


class StepDef(_Strict):
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


class CheckDef(_Strict):
    rule: str
    path: str = Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
    message: str = Field(min_length=1, max_length=200)

    @field_validator("rule")
    @classmethod
    def _check_rule(cls, value: str) -> str:
        return _expression(value)  # type: ignore[return-value]


class FormDef(_Strict):
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


# -- review ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing the citizen must fix: where (dotted path in the draft), what (code), and how (message)."""

    path: str
    code: str
    message: str


def _num(value: float) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _date_bound(bound: Any, today: date) -> date | None:
    return today if bound == "today" else _as_date(bound)


def _cn_date(value: date) -> str:
    return f"{value.year}年{value.month}月{value.day}日"


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
        self.evaluator = evaluator = simpleeval.SimpleEval(
            operators=_OPERATORS, functions=_functions(today), names=_Names(self._resolve)
        )
        # Literal tuples and lists, for `x in ('a', 'b')` (compile_expression allows nothing else compound).
        evaluator.nodes[ast.Tuple] = lambda node: tuple(evaluator._eval(e) for e in node.elts)
        evaluator.nodes[ast.List] = lambda node: [evaluator._eval(e) for e in node.elts]

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
        """Whether the rule is true for this data; a rule that fails to evaluate is false (and logged)."""
        self.entry = entry
        try:
            expression = compile_expression(text)
            return bool(self.evaluator.eval(text, previously_parsed=expression.node))
        except Exception as exc:  # noqa: BLE001 - a bad rule must never break a review
            log.warning("form rule failed, counted as false: %r (%s)", text, type(exc).__name__)
            return False
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


def _field_problem(field: FieldDef, where: str, value: Any, required: bool, today: date) -> tuple[str, str] | None:
    """(code, message) of the one problem of this value, or None; `where` is "随迁人员第2项的" in repeats."""
    t = field.type
    label = f"{where}“{field.label}”"  # the field as the citizen sees it named
    if _is_empty(value):
        if not required:
            return None
        verb = "选择" if t in ("select", "multiselect", "date", "region") else "填写"
        return "required", f"请{verb}{label}"
    wrong_type = ("invalid_type", f"{label}的填写格式不正确，请重新填写")

    if t in ("text", "textarea"):
        if not isinstance(value, str):
            return wrong_type
        return _length_problem(label, value.strip(), field, t, "")

    if t == "number":
        number = _number(value)
        if number is None:
            return "invalid_number", f"{label}请填写数字"
        if field.min is not None and number < field.min:  # type: ignore[operator]
            return "out_of_range", f"{label}不能小于{_num(field.min)}"  # type: ignore[arg-type]
        if field.max is not None and number > field.max:  # type: ignore[operator]
            return "out_of_range", f"{label}不能大于{_num(field.max)}"  # type: ignore[arg-type]
        return None

    if t == "date":
        day = _as_date(value) if isinstance(value, str) else None
        if day is None:
            return "invalid_date", f"{label}不是有效的日期，请按“年-月-日”选择"
        low, high = _date_bound(field.min, today), _date_bound(field.max, today)
        if low is not None and day < low:
            return "out_of_range", f"{label}不能早于{'今天' if field.min == 'today' else _cn_date(low)}"
        if high is not None and day > high:
            return "out_of_range", f"{label}不能晚于{'今天' if field.max == 'today' else _cn_date(high)}"
        return None

    if t == "select":
        if not isinstance(value, str) or value not in {o.value for o in field.options or []}:
            return "not_an_option", f"{label}的选项无效，请重新选择"
        return None

    if t == "multiselect":
        if not isinstance(value, list):
            return wrong_type
        allowed = {o.value for o in field.options or []}
        if any(not isinstance(v, str) or v not in allowed for v in value):
            return "not_an_option", f"{label}中有无效的选项，请重新选择"
        return None

    if t == "id_number":
        if not isinstance(value, str):
            return wrong_type
        try:
            if not value.isascii():  # core.cn_ids reads any Unicode digit as a digit
                raise InvalidIdentifier("身份证号码前17位应为数字，最后一位为数字或X")
            parse_id_number(value, today=today)
        except InvalidIdentifier as exc:
            plain = not where and field.label in _PLAIN_ID_LABELS
            return "invalid_id_number", str(exc) if plain else f"{label}：{exc}"
        return None

    if t == "uscc":
        if not isinstance(value, str):
            return wrong_type
        try:
            check_uscc(value)
        except InvalidIdentifier as exc:
            plain = not where and field.label in _PLAIN_USCC_LABELS
            return "invalid_uscc", str(exc) if plain else f"{label}：{exc}"
        return None

    if t == "phone":
        if not isinstance(value, str):
            return wrong_type
        digits = value.strip()
        if not re.fullmatch(r"[0-9]+", digits):
            return "invalid_phone", f"{label}只能填写数字"
        if len(digits) != 11:
            return "invalid_phone", f"{label}应为11位手机号码，您输入了{len(digits)}位"
        if not _PHONE.fullmatch(digits):
            return "invalid_phone", f"{label}不是有效的手机号码，请核对"
        return None

    if t == "region":
        if not isinstance(value, str):
            return wrong_type
        return _region_problem(label, value, "")

    if t == "address":
        if not isinstance(value, dict):
            return wrong_type
        region, detail = value.get("region_code"), value.get("detail")
        if _is_empty(region):
            return "invalid_address", f"请选择{label}的所在地区"
        if not isinstance(region, str):
            return wrong_type
        found = _region_problem(label, region, "的所在地区")
        if found:
            return found
        if _is_empty(detail):
            return "invalid_address", f"请填写{label}的详细地址（街道、门牌号）"
        if not isinstance(detail, str):
            return wrong_type
        return _length_problem(label, detail.strip(), field, t, "的详细地址")

    return None  # material: reviewed elsewhere


def _length_problem(label: str, text: str, field: FieldDef, t: str, part: str) -> tuple[str, str] | None:
    n = len(text)
    if field.min_length is not None and n < field.min_length:
        return "too_short", f"{label}{part}至少需要填写{field.min_length}个字"
    limit = field.max_length if field.max_length is not None else DEFAULT_MAX_LENGTH[t]
    if n > limit:
        return "too_long", f"{label}{part}最多{limit}个字，您填写了{n}个字"
    return None


def _region_problem(label: str, value: str, part: str) -> tuple[str, str] | None:
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
    if isinstance(value, (int, float)) and math.isfinite(value):
        return value
    return None


def review_form(form: FormDef, data: dict, *, today: date | None = None) -> list[Problem]:
    """Every problem of `data` against `form` at once: fields in form order, then the checks."""
    review = _Review(form, data, today or date.today()).run()
    review.checks()
    return review.problems


def visible_paths(form: FormDef, data: dict, *, today: date | None = None) -> set[str]:
    """The visible step keys and field paths (`applicant`, `applicant.name`, `members.0.name`, material fields too)."""
    return _Review(form, data, today or date.today()).run().visible


def prefill_sources(form: FormDef) -> dict[str, str]:
    """{path: source} of the prefilled fields of non-repeated steps, e.g. {"applicant.name": "identity.name"}."""
    return {
        f"{step.key}.{field.key}": field.prefill
        for step in form.steps
        if step.repeat is None
        for field in step.fields
        if field.prefill is not None
    }


def evaluate(text: str, data: dict, *, today: date | None = None) -> bool:
    """Whether the rule `text` holds for `data` (no visibility applied); false if it fails to evaluate."""
    return _Review(FormDef.model_construct(steps=[], checks=[]), data, today or date.today()).holds(text)

"""The rule language of forms: `visible_if`, `required_if` and check rules.

A rule is a string: dotted names read draft values (`applicant.marital == 'married'`; a missing
value is None; inside a repeated step `item.<field>` is the current entry), literals,
`and or not`, comparisons (`== != < <= > >= in not in`, `is None`), `+ - * / // %`,
`x if c else y`, and the functions of `FUNCTIONS`. Nothing else: attribute tricks, subscripts,
lambdas, comprehensions, `**` and unknown functions are refused by `compile_expression`, which
the catalogue runs at load time. `Evaluator` runs the already-checked tree through simpleeval
(never Python eval); a rule that fails at review time counts as false and is logged (its text
only, never draft values).

`<`, `<=`, `>`, `>=` with a missing (None) side are false; `x in None` is false;
`date_le(a, b)` is true when either side is empty (nothing to compare yet).
"""

from __future__ import annotations

import ast
import logging
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from typing import Any

import simpleeval

from core.cn_ids import InvalidIdentifier, parse_id_number

log = logging.getLogger("zhangban.forms")

MAX_EXPRESSION_LENGTH = 500
MAX_EXPRESSION_NODES = 200
MAX_LITERAL = 10**15

_ISO_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")  # ASCII only: Python's \d also matches "٣" and "３"


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


def as_date(value: Any) -> date | None:
    """A date from a date, a datetime or an ISO "YYYY-MM-DD" string; None from anything else."""
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


def is_empty(value: Any, *, nested: bool = True) -> bool:
    """None, blank text, an empty list, or an object whose parts are all that (an unfilled address)."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, (list, tuple)):
        return len(value) == 0
    if isinstance(value, dict):  # one level only: client data may nest arbitrarily deep
        return all(is_empty(v, nested=False) for v in value.values()) if nested else not value
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
            born = as_date(value)
        if born is None or born > today:
            return None
        return today.year - born.year - ((today.month, today.day) < (born.month, born.day))

    def today_() -> str:
        return today.isoformat()

    def date_le(a: Any, b: Any) -> bool | None:
        if is_empty(a) or is_empty(b):
            return True
        da, db = as_date(a), as_date(b)
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
        da, db = as_date(a), as_date(b)
        if da is None or db is None:
            return None
        return (db - da).days

    def empty(value: Any) -> bool:
        return is_empty(value)

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


class Evaluator:
    """Evaluates rules against one draft: names are read through `resolve`, `today()` is `today`."""

    def __init__(self, resolve: Callable[[str], Any], today: date):
        self._simpleeval = evaluator = simpleeval.SimpleEval(
            operators=_OPERATORS, functions=_functions(today), names=_Names(resolve)
        )
        # Literal tuples and lists, for `x in ('a', 'b')` (compile_expression allows nothing else compound).
        evaluator.nodes[ast.Tuple] = lambda node: tuple(evaluator._eval(e) for e in node.elts)
        evaluator.nodes[ast.List] = lambda node: [evaluator._eval(e) for e in node.elts]

    def holds(self, text: str) -> bool:
        """Whether the rule is true; a rule that fails to evaluate is false (and logged)."""
        try:
            expression = compile_expression(text)
            return bool(self._simpleeval.eval(text, previously_parsed=expression.node))
        except Exception as exc:  # noqa: BLE001 - a bad rule must never break a review
            log.warning("form rule failed, counted as false: %r (%s)", text, type(exc).__name__)
            return False

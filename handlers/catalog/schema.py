"""The catalogue file format: its pydantic models, and parsing that lists every problem with its path.

A catalogue file (YAML) is validated whole before anything changes; every problem is reported
with its path (`items.3.fee.amount_fen: ...`), and references between items, departments,
themes and bundles are checked on the raw file so that they are reported alongside.
"""

from __future__ import annotations

import re
from typing import Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from core.errors import Unprocessable
from core.schema import Frozen
from handlers.forms.definitions import FormDef
from storage.models import IdentityLevel


class Named(Frozen):
    code: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=128)


class Region(Frozen):
    code: str = Field(pattern=r"^\d{6}$")
    name: str


class Fee(Frozen):
    kind: Literal["none", "fixed", "assessed"]
    amount_fen: int | None = Field(None, ge=1)
    basis: str | None = None

    @model_validator(mode="after")
    def _amount(self) -> Fee:
        if self.kind == "fixed" and self.amount_fen is None:
            raise ValueError("固定收费须填写 amount_fen（整数，单位为分）")
        if self.kind != "fixed" and self.amount_fen is not None:
            raise ValueError(f"收费类型为 {self.kind} 时不能填写 amount_fen")
        return self


class Flags(Frozen):
    fully_online: bool
    max_one_trip: bool
    visits_required: int = Field(ge=0, le=5)

    @model_validator(mode="after")
    def _consistent(self) -> Flags:
        if self.fully_online and self.visits_required:
            raise ValueError("全程网办的事项不能要求到现场（visits_required 应为 0）")
        if self.max_one_trip and self.visits_required > 1:
            raise ValueError("最多跑一次的事项 visits_required 不能大于 1")
        return self


class Step(Frozen):
    name: str = Field(min_length=1)
    description: str = ""


class Result(Frozen):
    name: str
    delivery: list[Literal["mail", "pickup", "electronic"]] = Field(min_length=1)


class Material(Frozen):
    key: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    name: str = Field(min_length=1)
    required: bool
    condition: str | None = None
    copies: int = Field(1, ge=0, le=10)
    original: bool
    kinds: list[Literal["jpg", "png", "webp", "heic", "pdf"]] = Field(min_length=1)
    sample: str | None = None
    source: Literal["applicant", "shared"]
    issuer: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Material:
        if not self.required and not self.condition:
            raise ValueError("非必需的材料须写明提交条件（condition）")
        if self.source == "shared" and not self.issuer:
            raise ValueError("共享获取的材料须写明出具单位（issuer）")
        return self


class Item(Frozen):
    code: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=128)
    sub_name: str | None = None
    item_type: Literal["行政许可", "行政确认", "行政给付", "公共服务", "其他行政权力"]
    basis: str = Field(min_length=1)
    department: str
    region: str = Field(pattern=r"^\d{6}$")
    themes: list[str] = Field(default_factory=list)
    aliases: list[str] = Field(default_factory=list)
    keywords: list[str] = Field(default_factory=list)
    summary: str = ""
    legal_days: int = Field(ge=0)
    promised_days: int = Field(ge=0)
    conditions: list[str] = Field(default_factory=list)
    fee: Fee
    flags: Flags
    min_identity_level: IdentityLevel
    steps: list[Step] = Field(min_length=1)
    result: Result | None = None
    materials: list[Material] = Field(default_factory=list)
    form: FormDef | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Item:
        if self.promised_days > self.legal_days:
            raise ValueError("承诺时限（promised_days）不能超过法定时限（legal_days）")
        keys = [m.key for m in self.materials]
        if len(keys) != len(set(keys)):
            raise ValueError("同一事项内材料的 key 不能重复")
        if self.form is not None:
            unknown = [k for k in self.form.material_keys() if k not in keys]
            if unknown:
                raise ValueError(f"表单引用了事项未列出的材料：{'、'.join(unknown)}")
        return self


class Bundle(Frozen):
    """一件事: several items applied for with one merged form and one material list."""

    code: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    name: str
    summary: str = ""
    items: list[str] = Field(min_length=2)


class Catalogue(Frozen):
    schema_: Literal[1] = Field(alias="schema")
    region: Region
    departments: list[Named] = Field(min_length=1)
    themes: list[Named] = Field(default_factory=list)
    synonyms: list[list[str]] = Field(default_factory=list)
    items: list[Item] = Field(min_length=1)
    bundles: list[Bundle] = Field(default_factory=list)


# Bounds on what a catalogue file may make the validator walk: its size, and its size once YAML
# aliases are expanded (an alias repeats a node without repeating its text: "billion laughs").
MAX_TEXT_BYTES = 2 * 1024 * 1024
MAX_EXPANDED_NODES = 500_000
MAX_DEPTH = 40

Loc = tuple[str | int, ...]


def format_path(loc: Loc) -> str:
    """`("items", 3, "materials", 1, "name")` as `items[3].materials[1].name` ("" for the whole file)."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def problem(loc: Loc, message: str, *, code: str, line: int | None = None, column: int | None = None) -> dict:
    """One problem of a catalogue file as the console and the CLI show it (line/column count from 1)."""
    return {"path": format_path(loc), "code": code, "message": message, "line": line, "column": column}


def problem_text(p: dict) -> str:
    """One problem as a line of text: `items[3].fee: ... (line 40)`."""
    where = f" (line {p['line']})" if p.get("line") else ""
    return f"{p['path'] or '(file)'}: {p['message']}{where}"


class CatalogueError(Unprocessable):
    """The catalogue file is invalid; `problems` lists every one as `{"path", "code", "message",
    "line", "column"}` in file order."""

    code, message = "catalogue_invalid", "目录文件有误，未做任何更改"

    def __init__(self, problems: list[dict]):
        super().__init__(details={"problems": problems})
        self.problems = problems

    def __reduce__(self):
        return type(self), (self.problems,)


# Pydantic's error types in Chinese, for the officials who read them; `ctx` fills the blanks.
_MESSAGES = {
    "missing": "缺少此项",
    "extra_forbidden": "不认识的字段（请检查拼写）",
    "string_type": "应为文本",
    "int_type": "应为整数",
    "int_parsing": "应为整数",
    "int_from_float": "应为整数",
    "bool_type": "应为 true 或 false",
    "bool_parsing": "应为 true 或 false",
    "float_type": "应为数字",
    "float_parsing": "应为数字",
    "list_type": "应为列表",
    "dict_type": "应为映射（键: 值）",
    "model_type": "应为映射（键: 值）",
    "model_attributes_type": "应为映射（键: 值）",
    "literal_error": "应为以下之一：{expected}",
    "enum": "应为以下之一：{expected}",
    "string_too_long": "最多 {max_length} 个字符",
    "too_short": "至少需要 {min_length} 项",
    "too_long": "最多 {max_length} 项",
    "string_pattern_mismatch": "格式不对，应匹配 {pattern}",
    "greater_than_equal": "应不小于 {ge}",
    "less_than_equal": "应不大于 {le}",
    "greater_than": "应大于 {gt}",
    "less_than": "应小于 {lt}",
    "union_tag_invalid": "类型应为以下之一：{expected_tags}",
    "union_tag_not_found": "缺少类型字段 {discriminator}",
    "date_type": "应为日期（YYYY-MM-DD）",
    "date_parsing": "应为日期（YYYY-MM-DD）",
    "date_from_datetime_parsing": "应为日期（YYYY-MM-DD）",
}


def _message(error: dict) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "string_too_short":
        return "不能为空" if ctx.get("min_length") == 1 else f"至少 {ctx.get('min_length')} 个字符"
    if kind == "value_error":
        return str(error["msg"]).removeprefix("Value error, ")
    template = _MESSAGES.get(kind)
    if template is None:
        return str(error["msg"])
    try:
        # pydantic lists choices as "'a', 'b' or 'c'"
        return template.format(**{k: str(v).replace(" or ", ", ") for k, v in ctx.items()})
    except (KeyError, IndexError):
        return str(error["msg"])


def _reference_problems(raw: dict) -> list[tuple[Loc, str, str]]:
    """Problems between items and the declared departments/themes, read from the raw file."""
    problems: list[tuple[Loc, str, str]] = []
    if not isinstance(raw, dict) or not isinstance(raw.get("items"), list):
        return problems
    declared = lambda key: {d.get("code") for d in raw.get(key) or [] if isinstance(d, dict)}  # noqa: E731
    departments, themes = declared("departments"), declared("themes")
    seen: dict[str, int] = {}
    for i, item in enumerate(raw["items"]):
        if not isinstance(item, dict):
            continue
        code = item.get("code")
        if isinstance(code, str):
            if code in seen:
                problems.append(
                    (("items", i, "code"), "duplicate_code", f"与 items[{seen[code]}] 的事项编码“{code}”重复")
                )
            seen.setdefault(code, i)
        department = item.get("department")
        if isinstance(department, str) and department not in departments:
            problems.append((("items", i, "department"), "unknown_department", f"departments 中没有部门“{department}”"))
        themes_of = item.get("themes")
        for j, theme in enumerate(themes_of if isinstance(themes_of, list) else []):
            if isinstance(theme, str) and theme not in themes:
                problems.append((("items", i, "themes", j), "unknown_theme", f"themes 中没有主题“{theme}”"))
    bundles = raw.get("bundles")
    for i, bundle in enumerate(bundles if isinstance(bundles, list) else []):
        members = bundle.get("items") if isinstance(bundle, dict) else None
        for j, code in enumerate(members if isinstance(members, list) else []):
            if not isinstance(code, str) or code not in seen:
                problems.append((("bundles", i, "items", j), "unknown_item", f"items 中没有事项“{code}”"))
    return problems


def _expanded_size(node: yaml.Node, limit: int) -> int:
    """How many nodes the document has once aliases are expanded (more than `limit`: stops counting)."""
    sizes: dict[int, int] = {}

    def size(n: yaml.Node, open_: frozenset[int]) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        if id(n) in open_:  # an alias inside its own anchor: endless
            return limit + 1
        total = 1
        if isinstance(n, yaml.MappingNode):
            children = [c for pair in n.value for c in pair]
        elif isinstance(n, yaml.SequenceNode):
            children = n.value
        else:
            children = []
        for child in children:
            total += size(child, open_ | {id(n)}) if isinstance(child, yaml.CollectionNode) else 1
            if total > limit:
                break
        sizes[id(n)] = total
        return total

    return size(node, frozenset())


def _locate(root: yaml.Node | None, loc: Loc) -> tuple[Loc, yaml.Node | None]:
    """The path as written in the file and the deepest node of it found: a key missing from the file
    stays in the path (a missing field), a union's tag that is not a key is dropped."""
    node, shown = root, []
    for n, part in enumerate(loc):
        child = None
        if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            child = node.value[part]
        elif isinstance(node, yaml.MappingNode) and isinstance(part, str):
            child = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == part), None)
            if child is None and n < len(loc) - 1 and isinstance(loc[n + 1], str):
                continue  # a tagged union's tag in the error's location, not a key of the file
        if child is None:
            return tuple(shown) + tuple(loc[n:]), node
        shown.append(part)
        node = child
    return tuple(shown), node


def _check_depth(text: str, loader_class) -> None:
    """Refuses nesting deeper than MAX_DEPTH before a node tree is built (libyaml's composer
    recurses in C: a document nested 100,000 deep would crash the process, not raise)."""
    depth = 0
    for event in yaml.parse(text, Loader=loader_class):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                mark = event.start_mark
                raise CatalogueError(
                    [
                        problem(
                            (),
                            f"嵌套超过 {MAX_DEPTH} 层，目录文件不会这样深",
                            code="too_deep",
                            line=mark.line + 1,
                            column=mark.column + 1,
                        )
                    ]
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _load(text: str) -> tuple[object, yaml.Node | None]:
    """The YAML document and its node tree (for line numbers); CatalogueError on a syntax error."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_TEXT_BYTES:
        raise CatalogueError(
            [
                problem(
                    (),
                    f"目录文件不能超过 {MAX_TEXT_BYTES // (1024 * 1024)} MB，请用 import-catalogue 命令导入",
                    code="too_large",
                )
            ]
        )
    loader_class = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    loader = loader_class(text)
    try:
        _check_depth(text, loader_class)
        root = loader.get_single_node()
        if root is not None and _expanded_size(root, MAX_EXPANDED_NODES) > MAX_EXPANDED_NODES:
            raise CatalogueError(
                [problem((), "文件中的锚点引用（&/*）展开后过大或自我引用，请直接写出内容", code="too_large")]
            )
        raw = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        detail = " ".join(str(x) for x in (getattr(exc, "context", None), getattr(exc, "problem", None)) if x)
        raise CatalogueError(
            [
                problem(
                    (),
                    f"YAML 语法错误：{detail or exc}",
                    code="yaml_syntax",
                    line=mark.line + 1 if mark else None,
                    column=mark.column + 1 if mark else None,
                )
            ]
        ) from None
    except (ValueError, RecursionError):  # a malformed scalar PyYAML constructs (a bad date), or nesting too deep
        raise CatalogueError([problem((), "YAML 内容无法解析（日期或嵌套有误）", code="yaml_syntax")]) from None
    finally:
        loader.dispose()
    return raw, root


_NESTED = re.compile(r"^((?:steps|checks)(?:\.[A-Za-z_0-9]+)*): (.+)$", re.S)


def _split(loc: Loc, code: str, message: str) -> list[tuple[Loc, str, str]]:
    """A form's own check reports several problems in one message (`steps.0.key: ...; checks.1.path:
    ...`): each becomes a problem of its own, at its full path."""
    if code != "value_error":
        return [(loc, code, message)]
    parts = re.split(r"; (?=(?:steps|checks)[.:])", message)
    matched = [_NESTED.match(part) for part in parts]
    if not all(matched):
        return [(loc, code, message)]
    return [
        (loc + tuple(int(x) if x.isdigit() else x for x in m.group(1).split(".")), code, m.group(2))
        for m in matched
        if m is not None
    ]


def parse_catalogue(text: str) -> Catalogue:
    """The validated catalogue in `text`; raises CatalogueError listing every problem at once, each
    with its path (`items[3].materials[1].name`) and the line it is on."""
    raw, root = _load(text)
    found: list[tuple[Loc, str, str]] = []
    catalogue = None
    try:
        catalogue = Catalogue.model_validate(raw)
    except ValidationError as exc:
        found = [
            split for e in exc.errors(include_url=False) for split in _split(tuple(e["loc"]), e["type"], _message(e))
        ]
    found += _reference_problems(raw)
    if found or catalogue is None:
        problems = []
        for loc, code, message in found:
            shown, node = _locate(root, loc)
            mark = node.start_mark if node is not None else None
            problems.append(
                problem(
                    shown,
                    message,
                    code=code,
                    line=mark.line + 1 if mark else None,
                    column=mark.column + 1 if mark else None,
                )
            )
        problems.sort(key=lambda p: (p["line"] or 0, p["column"] or 0))
        raise CatalogueError(problems)
    return catalogue


def item_content(catalogue: Catalogue, item: Item) -> dict:
    """The item as it is published and searched: its fields as JSON, plus its department's name."""
    departments = {d.code: d.name for d in catalogue.departments}
    content = item.model_dump(mode="json")
    content["department_name"] = departments[item.department]
    return content

"""The catalogue file format: its pydantic models, and parsing that lists every problem with its path.

A catalogue file (YAML) is validated whole before anything changes; every problem is reported
with its path (`items.3.fee.amount_fen: ...`), and references between items, departments,
themes and bundles are checked on the raw file so that they are reported alongside.
"""

from __future__ import annotations

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
            raise ValueError("fixed fee needs amount_fen (integer fen)")
        if self.kind != "fixed" and self.amount_fen is not None:
            raise ValueError(f"a '{self.kind}' fee must not set amount_fen")
        return self


class Flags(Frozen):
    fully_online: bool
    max_one_trip: bool
    visits_required: int = Field(ge=0, le=5)

    @model_validator(mode="after")
    def _consistent(self) -> Flags:
        if self.fully_online and self.visits_required:
            raise ValueError("a fully online item cannot require visits")
        if self.max_one_trip and self.visits_required > 1:
            raise ValueError("max_one_trip allows at most one visit")
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
            raise ValueError("a conditional material needs its condition")
        if self.source == "shared" and not self.issuer:
            raise ValueError("a shared material needs its issuer")
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
            raise ValueError("promised_days cannot exceed legal_days")
        keys = [m.key for m in self.materials]
        if len(keys) != len(set(keys)):
            raise ValueError("material keys must be unique within an item")
        if self.form is not None:
            unknown = [k for k in self.form.material_keys() if k not in keys]
            if unknown:
                raise ValueError(f"form names materials the item does not list: {', '.join(unknown)}")
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


class CatalogueError(Unprocessable):
    """The catalogue file is invalid; `problems` lists every one as `path: message`."""

    code, message = "catalogue_invalid", "目录文件有误，未做任何更改"

    def __init__(self, problems: list[str]):
        super().__init__(details={"problems": problems})
        self.problems = problems

    def __reduce__(self):
        return type(self), (self.problems,)


def _reference_problems(raw: dict) -> list[str]:
    """Problems between items and the declared departments/themes, read from the raw file."""
    problems: list[str] = []
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
                problems.append(f"items.{i}.code: duplicate of items.{seen[code]}.code '{code}'")
            seen.setdefault(code, i)
        department = item.get("department")
        if isinstance(department, str) and department not in departments:
            problems.append(f"items.{i}.department: unknown department '{department}'")
        for j, theme in enumerate(item.get("themes") or []):
            if isinstance(theme, str) and theme not in themes:
                problems.append(f"items.{i}.themes.{j}: unknown theme '{theme}'")
    for i, bundle in enumerate(raw.get("bundles") or []):
        if isinstance(bundle, dict):
            for j, code in enumerate(bundle.get("items") or []):
                if code not in seen:
                    problems.append(f"bundles.{i}.items.{j}: unknown item '{code}'")
    return problems


def parse_catalogue(text: str) -> Catalogue:
    """The validated catalogue in `text`; raises CatalogueError listing every problem at once."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogueError([f"yaml: {exc}"]) from None
    problems: list[str] = []
    catalogue = None
    try:
        catalogue = Catalogue.model_validate(raw)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors(include_url=False)
        ]
    problems += _reference_problems(raw)
    if problems or catalogue is None:
        raise CatalogueError(problems)
    return catalogue


def item_content(catalogue: Catalogue, item: Item) -> dict:
    """The item as it is published and searched: its fields as JSON, plus its department's name."""
    departments = {d.code: d.name for d in catalogue.departments}
    content = item.model_dump(mode="json")
    content["department_name"] = departments[item.department]
    return content

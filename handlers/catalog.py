"""The service catalogue: the file format, its validation, and publishing items from it.

A catalogue file (YAML) is validated whole before anything changes; every problem is
reported with its path (`items.3.fee.amount_fen: ...`). Publishing stores each item as a new
immutable `ServiceItem` version only when its content changed, so loading the same file
twice does nothing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from tortoise.transactions import in_transaction

from handlers.forms import FormDef
from storage.models import CatalogueState, IdentityLevel, ServiceItem

DEMO_CATALOGUE = Path(__file__).resolve().parent.parent / "data" / "catalogue.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Named(_Strict):
    code: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=128)


class Region(_Strict):
    code: str = Field(pattern=r"^\d{6}$")
    name: str


class Fee(_Strict):
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


class Flags(_Strict):
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


class Step(_Strict):
    name: str = Field(min_length=1)
    description: str = ""


class Result(_Strict):
    name: str
    delivery: list[Literal["mail", "pickup", "electronic"]] = Field(min_length=1)


class Material(_Strict):
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


class Item(_Strict):
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


class Bundle(_Strict):
    """一件事: several items applied for with one merged form and one material list."""

    code: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    name: str
    summary: str = ""
    items: list[str] = Field(min_length=2)


class Catalogue(_Strict):
    schema_: Literal[1] = Field(alias="schema")
    region: Region
    departments: list[Named] = Field(min_length=1)
    themes: list[Named] = Field(default_factory=list)
    synonyms: list[list[str]] = Field(default_factory=list)
    items: list[Item] = Field(min_length=1)
    bundles: list[Bundle] = Field(default_factory=list)


class CatalogueError(Exception):
    """The catalogue file is invalid; `problems` lists every one as `path: message`."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


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


def _item_content(catalogue: Catalogue, item: Item) -> dict:
    departments = {d.code: d.name for d in catalogue.departments}
    content = item.model_dump(mode="json")
    content["department_name"] = departments[item.department]
    return content


async def publish_catalogue(catalogue: Catalogue, *, redis=None, keys=None) -> dict[str, int]:
    """Publishes every changed item as a new version, all in one transaction; counts what happened."""
    counts = {"published": 0, "unchanged": 0}
    shared = catalogue.model_dump(
        mode="json", by_alias=True, include={"region", "departments", "themes", "synonyms", "bundles"}
    )
    async with in_transaction():
        state = await CatalogueState.get_or_none(id="catalogue")
        if state is None:
            state = await CatalogueState.create(id="catalogue", revision=0, content={})
        for item in catalogue.items:
            content = _item_content(catalogue, item)
            digest = hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
            current = await ServiceItem.filter(code=item.code, is_current=True).select_for_update().first()
            if current is not None and current.content_sha256 == digest:
                counts["unchanged"] += 1
                continue
            version = 1
            if current is not None:
                version = current.version + 1
                await ServiceItem.filter(id=current.id).update(is_current=False)
            await ServiceItem.create(
                code=item.code,
                version=version,
                name=item.name,
                department=content["department_name"],
                content=content,
                content_sha256=digest,
                is_current=True,
            )
            counts["published"] += 1
        if counts["published"] or state.content != shared:
            state.content = shared
            state.revision += 1
            await state.save()
    if redis is not None:  # readers re-check the revision at once instead of within REVISION_TTL_S
        await redis.delete(keys("catalog", "revision"))
    return counts


async def load_catalogue_file(path: Path, *, redis=None, keys=None) -> dict[str, int]:
    """Validates the whole file at `path`, then publishes it; raises CatalogueError first if bad."""
    return await publish_catalogue(parse_catalogue(path.read_text(encoding="utf-8")), redis=redis, keys=keys)


async def export_catalogue() -> str:
    """The current catalogue as YAML in the import format (round-trips through import)."""
    state = await CatalogueState.get_or_none(id="catalogue")
    shared = dict(state.content) if state else {}
    items = []
    for row in await ServiceItem.filter(is_current=True).order_by("code"):
        content = dict(row.content)
        content.pop("department_name", None)
        items.append(content)
    document = {
        "schema": 1,
        **{k: shared.get(k) for k in ("region", "departments", "themes", "synonyms")},
        "items": items,
    }
    if shared.get("bundles"):
        document["bundles"] = shared["bundles"]
    return yaml.safe_dump(document, allow_unicode=True, sort_keys=False, width=100)


# -- reading the published catalogue (cached) ---------------------------------------------------

REVISION_TTL_S = 30
CACHE_TTL_S = 3600


class CatalogueReader:
    """Reads the current catalogue through a Redis cache keyed by the catalogue revision.

    The revision lives in the database (bumped by every publish); Redis keeps it for
    REVISION_TTL_S, and a publish through this process deletes it at once. Item guides and
    the summary list are cached per revision, so a publish invalidates everything in one step.
    """

    def __init__(self, *, redis, keys):
        self.redis, self.keys = redis, keys
        self._search: tuple[int, object] | None = None

    async def revision(self) -> int:
        cached = await self.redis.get(self.keys("catalog", "revision"))
        if cached is not None:
            return int(cached)
        state = await CatalogueState.get_or_none(id="catalogue")
        revision = state.revision if state else 0
        await self.redis.set(self.keys("catalog", "revision"), revision, ex=REVISION_TTL_S)
        return revision

    async def _cached(self, name: str, load):
        revision = await self.revision()
        key = self.keys("catalog", revision, name)
        raw = await self.redis.get(key)
        if raw is not None:
            return json.loads(raw)
        value = await load()
        await self.redis.set(key, json.dumps(value, ensure_ascii=False), ex=CACHE_TTL_S)
        return value

    async def shared(self) -> dict:
        """Region, departments, themes, synonyms and bundles."""

        async def load():
            state = await CatalogueState.get_or_none(id="catalogue")
            return dict(state.content) if state else {}

        return await self._cached("shared", load)

    async def summaries(self) -> list[dict]:
        """Every current item in code order, as list entries."""

        async def load():
            rows = await ServiceItem.filter(is_current=True).order_by("code")
            return [summary(row.content) for row in rows]

        return await self._cached("summaries", load)

    async def guide(self, code: str) -> dict | None:
        """The full guide of the current version of `code`, or None."""

        async def load():
            row = await ServiceItem.get_or_none(code=code, is_current=True)
            return None if row is None else guide(row)

        return await self._cached(f"guide:{code}", load)

    async def search_index(self):
        """The search index of the current revision, built once per process per revision."""
        from handlers.search import SearchIndex

        revision = await self.revision()
        if self._search is None or self._search[0] != revision:
            rows = await ServiceItem.filter(is_current=True).order_by("code")
            shared = await self.shared()
            self._search = (revision, SearchIndex.build([r.content for r in rows], shared.get("synonyms") or []))
        return self._search[1]


def _fee(content: dict) -> dict:
    fee = content["fee"]
    out = {"kind": fee["kind"], "amount_fen": fee.get("amount_fen")}
    if fee.get("basis"):
        out["basis"] = fee["basis"]
    return out


def summary(content: dict) -> dict:
    """The list entry of an item."""
    return {
        "code": content["code"],
        "name": content["name"],
        "sub_name": content.get("sub_name"),
        "department": content.get("department_name") or content["department"],
        "department_code": content["department"],
        "themes": content.get("themes", []),
        "flags": content["flags"],
        "fee": _fee(content),
        "promised_days": content["promised_days"],
    }


def guide(row: ServiceItem) -> dict:
    """The full guide of an item version (六统一 elements, materials, form)."""
    c = row.content
    return {
        "code": c["code"],
        "version": row.version,
        "name": c["name"],
        "sub_name": c.get("sub_name"),
        "item_type": c["item_type"],
        "basis": c["basis"],
        "legal_days": c["legal_days"],
        "promised_days": c["promised_days"],
        "department": c.get("department_name") or c["department"],
        "region": c["region"],
        "fee": _fee(c),
        "flags": c["flags"],
        "min_identity_level": c["min_identity_level"],
        "summary": c.get("summary", ""),
        "conditions": c.get("conditions", []),
        "steps": c["steps"],
        "result": c.get("result"),
        "materials": [{**m, "fetched_by_sharing": m["source"] == "shared"} for m in c.get("materials", [])],
        "form": c.get("form"),
    }

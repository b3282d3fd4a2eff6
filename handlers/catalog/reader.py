"""Reading the published catalogue: the browse list, item guides and search, as routes and the bot see them.

Everything is cached in Redis per catalogue revision. The revision lives in the database (bumped by
every publish); Redis keeps it for REVISION_TTL_S, and a publish through this process forgets it at
once, so a publish invalidates every cached list and guide in one step.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from core.errors import NotFound, ValidationFailed
from handlers.catalog.schema import item_content, parse_catalogue
from handlers.catalog.search import Hit, SearchIndex
from storage.models import CatalogueState, ServiceItem

REVISION_TTL_S = 30
CACHE_TTL_S = 3600

# Browse filters over a list entry, by query parameter: (value asked for, entry) -> kept.
FILTERS = {
    "department": lambda code, entry: entry["department_code"] == code,
    "theme": lambda theme, entry: theme in entry["themes"],
    "flag": lambda flag, entry: bool(entry["flags"].get(flag)),
}
FLAGS = {"fully_online", "max_one_trip"}


def _revision_key(keys) -> str:
    return keys("catalog", "revision")


async def forget_revision(*, redis, keys) -> None:
    """Drops the cached revision, so readers re-check it at once instead of within REVISION_TTL_S."""
    await redis.delete(_revision_key(keys))


async def published_departments() -> list[dict]:
    """The published catalogue's departments, `{"code", "name"}` each; read from the database, not
    the cache, so a one-shot command sees what was just published."""
    state = await CatalogueState.get_or_none(id="catalogue")
    return list((state.content or {}).get("departments") or []) if state else []


class CatalogueReader:
    """Reads the current catalogue through a Redis cache keyed by the catalogue revision."""

    def __init__(self, *, redis, keys):
        self.redis, self.keys = redis, keys
        self._search: tuple[int, SearchIndex] | None = None

    async def revision(self) -> int:
        """The current catalogue revision, as Redis has kept it for at most REVISION_TTL_S."""
        cached = await self.redis.get(_revision_key(self.keys))
        if cached is not None:
            return int(cached)
        state = await CatalogueState.get_or_none(id="catalogue")
        revision = state.revision if state else 0
        await self.redis.set(_revision_key(self.keys), revision, ex=REVISION_TTL_S)
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

    async def browse(
        self,
        *,
        department: str | None = None,
        theme: str | None = None,
        flag: str | None = None,
        cursor: str | None = None,
        limit: int = 20,
    ) -> dict:
        """One page of list entries, `{"items", "next_cursor"}`, filtered and after `cursor` in code order."""
        if flag and flag not in FLAGS:
            raise ValidationFailed({"flag": "可选值为 fully_online 或 max_one_trip"})
        asked = {"department": department, "theme": theme, "flag": flag}
        items = [e for e in await self.summaries() if all(FILTERS[n](v, e) for n, v in asked.items() if v)]
        if cursor:
            after = _after(cursor)
            items = [entry for entry in items if entry["code"] > after]  # summaries are in code order
        page = items[:limit]
        return {"items": page, "next_cursor": _cursor(page[-1]["code"]) if len(items) > limit else None}

    async def guide(self, code: str) -> dict | None:
        """The full guide of the current version of `code`, or None."""

        async def load():
            row = await ServiceItem.get_or_none(code=code, is_current=True)
            return None if row is None else guide(row)

        return await self._cached(f"guide:{code}", load)

    async def require_guide(self, *, code: str) -> dict:
        """The full guide of the current version of `code`; NotFound when the item is not published."""
        found = await self.guide(code)
        if found is None:
            raise NotFound("该事项不存在或已下线", code="service_not_found")
        return found

    async def search_index(self) -> SearchIndex:
        """The search index of the current revision, built once per process per revision."""
        revision = await self.revision()
        if self._search is None or self._search[0] != revision:
            rows = await ServiceItem.filter(is_current=True).order_by("code")
            shared = await self.shared()
            self._search = (revision, SearchIndex.build([r.content for r in rows], shared.get("synonyms") or []))
        return self._search[1]

    async def search(self, *, query: str, limit: int) -> list[Hit]:
        """The items answering `query`, best first: hits scoring at least `SearchIndex.MIN_SCORE`."""
        index = await self.search_index()
        return [hit for hit in index.search(query, limit=limit) if hit.score >= index.MIN_SCORE]


def build_from_catalogue_file(path: str | Path) -> SearchIndex:
    """The search index of the catalogue YAML at `path` (validated whole), without publishing it."""
    catalogue = parse_catalogue(Path(path).read_text(encoding="utf-8"), trusted=True)
    return SearchIndex.build([item_content(catalogue, item) for item in catalogue.items], catalogue.synonyms)


def _cursor(code: str) -> str:
    return base64.urlsafe_b64encode(code.encode()).decode().rstrip("=")


def _after(cursor: str) -> str:
    """The item code a cursor points after; ValidationFailed when it is not one of ours."""
    try:
        after = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        after = ""
    if not after:
        raise ValidationFailed({"cursor": "分页参数无效，请从第一页重新加载"})
    return after


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

"""Reading the published catalogue: the browse list, item guides and search, as routes and the bot see them.

The revision lives in the database (bumped by every publish) and, for at most REVISION_TTL_S,
in Redis, where a publish writes the new one at once. A serving process watches it: it looks the
revision up every REVISION_POLL_S in the background (Redis in production; the database on the
embedded default, whose fakeredis the CLI cannot reach), so a publish reaches every worker of
every node within a second and no request looks it up. Everything read for a revision (shared
parts, list entries, guides, the search index, searches, and whatever a transport derives from
them, such as rendered responses) is kept in this process until the revision changes; list
entries and guides are also kept in Redis per revision, so the workers of a node load them from
the database once. Values handed out are shared: callers read them and never modify them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import unicodedata
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from pathlib import Path
from typing import Any

from core.errors import NotFound, ValidationFailed
from handlers.catalog.schema import item_content, parse_catalogue
from handlers.catalog.search import Hit, SearchIndex
from storage.models import CatalogueState, ServiceItem

log = logging.getLogger("zhangban.catalogue")

REVISION_TTL_S = 30
REVISION_POLL_S = 0.25
CACHE_TTL_S = 3600
# Answers derived per revision and kept in a bounded LRU: searches by normalised query, and the
# transports' rendered responses (list pages by filters, guides, searches).
ANSWERS_KEPT = 2048

# Browse filters over a list entry, by query parameter: (value asked for, entry) -> kept.
FILTERS = {
    "department": lambda code, entry: entry["department_code"] == code,
    "theme": lambda theme, entry: theme in entry["themes"],
    "flag": lambda flag, entry: bool(entry["flags"].get(flag)),
}
FLAGS = {"fully_online", "max_one_trip"}

# Sets the shared revision unless Redis already holds the same or a later one, so two publishes
# finishing in either order, or a reader filling the key from an older read, never move it back.
_ANNOUNCE = """
local current = redis.call('GET', KEYS[1])
if current and tonumber(current) >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""


def _revision_key(keys) -> str:
    return keys("catalog", "revision")


async def announce_revision(*, redis, keys, revision: int) -> None:
    """Writes a just-published `revision` to Redis, where every watching process sees it within
    REVISION_POLL_S (never moving the shared revision backwards)."""
    await redis.eval(_ANNOUNCE, 1, _revision_key(keys), revision, REVISION_TTL_S)


async def stored_revision() -> int:
    """The revision in the database (0 before the first publish)."""
    found = await CatalogueState.filter(id="catalogue").values_list("revision", flat=True)
    return found[0] if found else 0


def normalise_query(query: str) -> str:
    """A search query as the index reads it (NFKC, lower case, trimmed): the key of its cached answer."""
    return unicodedata.normalize("NFKC", query or "").lower().strip()


async def published_departments() -> list[dict]:
    """The published catalogue's departments, `{"code", "name"}` each; read from the database, not
    the cache, so a one-shot command sees what was just published."""
    state = await CatalogueState.get_or_none(id="catalogue")
    return list((state.content or {}).get("departments") or []) if state else []


class _Revision:
    """What this process derived from one catalogue revision.

    `values` holds what the catalogue bounds (shared parts, list entries, guides, the index);
    `answers` what a caller's input picks (searches, rendered responses), least recently used
    first and at most ANSWERS_KEPT. Concurrent requests for a value not yet there wait for one
    build of it instead of each building it.
    """

    def __init__(self, number: int):
        self.number = number
        self.values: dict[Hashable, Any] = {}
        self.answers: OrderedDict[Hashable, Any] = OrderedDict()
        self.building: dict[Hashable, asyncio.Future] = {}

    async def remember(self, key: Hashable, build: Callable[[], Awaitable[Any]], *, bounded: bool = False) -> Any:
        store = self.answers if bounded else self.values
        if key in store:
            if bounded:
                store.move_to_end(key)
            return store[key]
        future = self.building.get(key)
        if future is None:
            future = asyncio.ensure_future(build())
            self.building[key] = future
            future.add_done_callback(lambda done: self._built(key, store, bounded, done))
        return await asyncio.shield(future)

    def _built(self, key: Hashable, store: dict, bounded: bool, future: asyncio.Future) -> None:
        self.building.pop(key, None)
        if future.cancelled() or future.exception() is not None:  # retrieved: a waiter raises it
            return
        store[key] = future.result()
        if bounded and len(store) > ANSWERS_KEPT:
            store.popitem(last=False)


class CatalogueReader:
    """Reads the current catalogue: from this process's memory, else Redis, else the database.

    `shared_redis` is False where Redis is this process's own fakeredis (the embedded default):
    the revision is then read from the database, which the CLI publishes to.
    """

    def __init__(self, *, redis, keys, shared_redis: bool = True):
        self.redis, self.keys, self.shared_redis = redis, keys, shared_redis
        self._watched: int | None = None
        self._memo = _Revision(-1)

    # -- the revision ----------------------------------------------------------------------

    async def revision(self) -> int:
        """The current catalogue revision: the watched one, else looked up now."""
        if self._watched is not None:
            return self._watched
        return await self.current_revision()

    async def current_revision(self) -> int:
        """The revision as Redis keeps it (at most REVISION_TTL_S behind a publish that could not
        write it there), else as the database has it."""
        if not self.shared_redis:
            return await stored_revision()
        cached = await self.redis.get(_revision_key(self.keys))
        if cached is not None:
            return int(cached)
        revision = await stored_revision()
        # NX: a publish that wrote its newer revision since our read keeps it.
        await self.redis.set(_revision_key(self.keys), revision, ex=REVISION_TTL_S, nx=True)
        return revision

    async def watch(self, every: float = REVISION_POLL_S) -> None:
        """Looks the revision up every `every` seconds, for ever, so requests never do; while it
        cannot be read (Redis or the database down), the last one read is served."""
        failing = False
        while True:
            await asyncio.sleep(every)
            try:
                self._watched = await self.current_revision()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    log.warning("catalogue revision unreadable, serving revision %s: %r", self._watched, exc)
                failing = True
            else:
                if failing:
                    log.info("catalogue revision readable again: %s", self._watched)
                failing = False

    async def start_watching(self) -> asyncio.Task:
        """Reads the revision now (if it can), then watches it in a task the caller cancels."""
        try:
            self._watched = await self.current_revision()
        except Exception as exc:  # requests look it up themselves until the watch reads it
            log.warning("catalogue revision unreadable at start: %r", exc)
        return asyncio.get_running_loop().create_task(self.watch())

    def saw(self, revision: int) -> None:
        """A publish made in this process committed `revision`: serve it from now on here (other
        processes see it within REVISION_POLL_S), never moving the watched revision backwards."""
        if self._watched is not None and revision > self._watched:
            self._watched = revision

    def stop_watching(self) -> None:
        """Back to looking the revision up on each call (the watch task is the caller's to cancel)."""
        self._watched = None

    async def _current(self) -> _Revision:
        revision = await self.revision()
        if self._memo.number != revision:
            self._memo = _Revision(revision)
        return self._memo

    async def remember(self, key: Hashable, build: Callable[[], Awaitable[Any]]) -> Any:
        """`build()`'s value for `key` in the current revision, built once per revision and kept
        among the ANSWERS_KEPT most recently used (a transport's rendered responses)."""
        memo = await self._current()
        return await memo.remember(("answer", key), build, bounded=True)

    # -- values of the revision ------------------------------------------------------------

    async def _kept(self, name: str, load):
        """The value `name` of the current revision: from memory, else Redis, else `load()`."""
        memo = await self._current()
        return await memo.remember(name, lambda: self._through_redis(memo.number, name, load))

    async def _through_redis(self, revision: int, name: str, load):
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

        return await self._kept("shared", load)

    async def summaries(self) -> list[dict]:
        """Every current item in code order, as list entries."""

        async def load():
            rows = await ServiceItem.filter(is_current=True).order_by("code")
            return [summary(row.content) for row in rows]

        return await self._kept("summaries", load)

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
        """The full guide of the current version of `code`, or None (a code not in the list
        entries costs no query, so unknown codes fill no cache)."""
        memo = await self._current()
        codes = await memo.remember("codes", self._codes)
        if code not in codes:
            return None

        async def load():
            row = await ServiceItem.get_or_none(code=code, is_current=True)
            return None if row is None else guide(row)

        return await memo.remember(("guide", code), lambda: self._through_redis(memo.number, f"guide:{code}", load))

    async def _codes(self) -> frozenset[str]:
        return frozenset(entry["code"] for entry in await self.summaries())

    async def require_guide(self, *, code: str) -> dict:
        """The full guide of the current version of `code`; NotFound when the item is not published."""
        found = await self.guide(code)
        if found is None:
            raise NotFound("该事项不存在或已下线", code="service_not_found")
        return found

    async def search_index(self) -> SearchIndex:
        """The search index of the current revision, built once per process per revision, in a
        thread: a city's catalogue of 5,000 items takes seconds to index, and the event loop goes
        on answering the guide, the list and everything else meanwhile."""
        memo = await self._current()

        async def build():
            rows = await ServiceItem.filter(is_current=True).order_by("code")
            shared = await self.shared()
            return await asyncio.to_thread(SearchIndex.build, [r.content for r in rows], shared.get("synonyms") or [])

        return await memo.remember("index", build)

    async def search(self, *, query: str, limit: int) -> list[Hit]:
        """The items answering `query`, best first: hits scoring at least `SearchIndex.MIN_SCORE`;
        kept per normalised query and limit for the revision."""
        memo = await self._current()

        async def run():
            index = await self.search_index()
            return [hit for hit in index.search(query, limit=limit) if hit.score >= index.MIN_SCORE]

        return await memo.remember(("search", normalise_query(query), limit), run, bounded=True)


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

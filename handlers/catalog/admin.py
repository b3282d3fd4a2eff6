"""The catalogue as officials with the `admin` role manage it in the console: check a file (every
problem with its path and line, nothing published), publish it (all or nothing, audited), and read
the current items and every version of one. Other officials are refused (`403 role_required`).

Publishing goes through the same `publish_catalogue` as `server.py import-catalogue`.
"""

from __future__ import annotations

import asyncio
import hashlib

from core.errors import NotFound
from handlers import audit
from handlers.catalog.publish import export_catalogue, pending_changes, publish_catalogue
from handlers.catalog.reader import CatalogueReader
from handlers.catalog.schema import Catalogue, CatalogueError, parse_catalogue
from handlers.scoping import ADMIN, require_role
from storage.models import ActorType, Official, ServiceItem

ITEM_FIELDS = ("code", "name", "version", "department", "status", "published_at")


async def _parse(text: str) -> Catalogue:
    """The validated catalogue; parsing a large file is CPU work, done off the event loop."""
    return await asyncio.to_thread(parse_catalogue, text)


async def check(*, official: Official, text: str) -> dict:
    """Every problem of the file (none: `valid`), and which items publishing it now would change."""
    require_role(official, ADMIN)
    try:
        catalogue = await _parse(text)
    except CatalogueError as exc:
        return {"valid": False, "problems": exc.problems, "items": 0, "changed": []}
    return {
        "valid": True,
        "problems": [],
        "items": len(catalogue.items),
        "changed": await pending_changes(catalogue),
    }


async def publish(
    *, official: Official, text: str, redis, keys, ip: str, request_id: str, reader: CatalogueReader | None = None
) -> dict:
    """Validates the whole file, then publishes every changed item as a new version, and audits it.
    An invalid file raises CatalogueError (every problem listed) and publishes nothing; the refusal
    is audited as well."""
    require_role(official, ADMIN)
    sha256 = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    try:
        catalogue = await _parse(text)
    except CatalogueError as exc:
        await audit.record(
            actor_type=ActorType.OFFICIAL,
            actor_id=official.id,
            action="catalogue.publish_refused",
            target_type="catalogue",
            target_id=sha256[:16],
            request_id=request_id,
            ip=ip,
            detail={"sha256": sha256, "problems": len(exc.problems)},
        )
        raise

    async def audited(result: dict) -> None:
        await audit.record(
            actor_type=ActorType.OFFICIAL,
            actor_id=official.id,
            action="catalogue.publish",
            target_type="catalogue",
            target_id=result["revision"],
            request_id=request_id,
            ip=ip,
            detail={
                "sha256": sha256,
                "published": result["published"],
                "unchanged": result["unchanged"],
                "changed": [f"{c['code']}@{c['version']}" for c in result["changed"][:500]],
            },
        )

    return await publish_catalogue(catalogue=catalogue, redis=redis, keys=keys, on_publish=audited, reader=reader)


def _item(row: ServiceItem) -> dict:
    return {
        "code": row.code,
        "name": row.name,
        "version": row.version,
        "department": row.department,
        "status": row.status.value,
        "published_at": row.published_at.isoformat() if row.published_at else None,
    }


async def current_items(
    *, official: Official, department: str | None = None, after: str | None = None, limit: int = 100
) -> dict:
    """The current version of every item, in code order, one keyset page after the code `after`."""
    require_role(official, ADMIN)
    query = ServiceItem.filter(is_current=True)
    if department:
        query = query.filter(department=department)
    if after:
        query = query.filter(code__gt=after)
    rows = await query.order_by("code").limit(limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return {"items": [_item(r) for r in rows], "next_cursor": rows[-1].code if more else None}


async def versions(*, official: Official, code: str) -> dict:
    """Every published version of one item, newest first; an unknown code is `404 service_not_found`."""
    require_role(official, ADMIN)
    # Codes are at most 64 characters: a longer one is simply not found.
    rows = await ServiceItem.filter(code=code).order_by("-version").limit(1000) if len(code) <= 64 else []
    if not rows:
        raise NotFound("事项不存在", code="service_not_found")
    return {
        "code": code,
        "items": [{**_item(r), "is_current": r.is_current, "content_sha256": r.content_sha256} for r in rows],
    }


async def export(*, official: Official) -> str:
    """The published catalogue as a file in the import format, to edit and upload again."""
    require_role(official, ADMIN)
    return await export_catalogue()

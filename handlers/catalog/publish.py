"""Publishing a catalogue file, and exporting the published catalogue back to the file format.

Publishing stores each item as a new immutable `ServiceItem` version only when its content
changed, so loading the same file twice does nothing; any change bumps the catalogue revision,
which is what readers key their caches by, and writes it to Redis, where every serving process
sees it within a second.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml
from tortoise.transactions import in_transaction

from handlers.catalog.reader import CatalogueReader, announce_revision
from handlers.catalog.schema import Catalogue, item_content, parse_catalogue
from storage.models import CatalogueState, ServiceItem

DEMO_CATALOGUE = Path(__file__).resolve().parents[2] / "data" / "catalogue.yaml"
SHARED_PARTS = {"region", "departments", "themes", "synonyms", "bundles"}


def content_digest(content: dict) -> str:
    """What tells one published version of an item from another."""
    return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


async def pending_changes(catalogue: Catalogue) -> list[str]:
    """The codes of the items that publishing `catalogue` now would make a new version of."""
    # Every current item's digest (two short columns): no IN list as long as the catalogue.
    current = dict(await ServiceItem.filter(is_current=True).values_list("code", "content_sha256"))
    return [i.code for i in catalogue.items if current.get(i.code) != content_digest(item_content(catalogue, i))]


async def publish_catalogue(
    *, catalogue: Catalogue, redis=None, keys=None, on_publish=None, reader: CatalogueReader | None = None
) -> dict:
    """Publishes every changed item as a new version, all in one transaction; answers what happened:
    `published` and `unchanged` counts, the `changed` items (`code`, `name`, `version`) and the
    catalogue `revision` after it. `on_publish(result)` runs inside the transaction (the audit row);
    `reader`, this process's catalogue reader, serves the new revision as soon as it is committed.

    Publishes are serialised on the catalogue's state row, so two at once cannot both make the same
    item's next version."""
    counts = {"published": 0, "unchanged": 0}
    changed: list[dict] = []
    shared = catalogue.model_dump(mode="json", by_alias=True, include=SHARED_PARTS)
    await CatalogueState.get_or_create(id="catalogue", defaults={"revision": 0, "content": {}})
    async with in_transaction():
        state = await CatalogueState.filter(id="catalogue").select_for_update().get()
        for item in catalogue.items:
            content = item_content(catalogue, item)
            digest = content_digest(content)
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
            changed.append({"code": item.code, "name": item.name, "version": version})
        if counts["published"] or state.content != shared:
            state.content = shared
            state.revision += 1
            await state.save()
        result = {**counts, "changed": changed, "revision": state.revision}
        if on_publish is not None:
            await on_publish(result)
    if reader is not None:
        reader.saw(state.revision)
    if redis is not None:
        await announce_revision(redis=redis, keys=keys, revision=state.revision)
    return result


async def load_catalogue_file(path: Path, *, redis=None, keys=None) -> dict:
    """Validates the whole file at `path`, then publishes it; raises CatalogueError first if bad."""
    catalogue = parse_catalogue(path.read_text(encoding="utf-8"), trusted=True)
    return await publish_catalogue(catalogue=catalogue, redis=redis, keys=keys)


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

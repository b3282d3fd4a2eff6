"""Who a notice goes to: the audience spec, its size (one COUNT query) and its recipients in
keyset pages after a cursor (never the whole audience in memory).

Specs (validated at the edge, checked against the catalogue by `notices.Notices`):

    {"kind": "followers"}                                        every follower of the official account
    {"kind": "service", "service_code": "...", "statuses": [...]}  citizens with cases of a service
    {"kind": "theme", "theme": "identity"}                        citizens subscribed to a catalogue theme
    {"kind": "region", "region_code": "5105"}                     citizens with an address in a region

A recipient's key is `f:<oa_openid>` for a follower, `u:<user id>` for a citizen; the cursor is the
last key's sort value (the openid, or the user id), so a page is `... WHERE key > cursor ORDER BY key`.
"""

from __future__ import annotations

from dataclasses import dataclass

from tortoise.functions import Count

from storage.models import Address, Case, Follower, ThemeSubscription

KINDS = ("followers", "service", "theme", "region")


@dataclass(frozen=True)
class Recipient:
    key: str  # unique within a notice: f:<oa_openid> or u:<user id>
    cursor: str  # the sort value the next page starts after
    user_id: int | None
    oa_openid: str | None


def _user_query(audience: dict):
    """(model, filters) of a citizen audience; every such model has a `user_id` column."""
    kind = audience["kind"]
    if kind == "service":
        filters = {"service_code": audience["service_code"]}
        if audience.get("statuses"):
            filters["status__in"] = list(audience["statuses"])
        return Case, filters
    if kind == "theme":
        return ThemeSubscription, {"theme": audience["theme"]}
    if kind == "region":
        return Address, {"region_code__startswith": audience["region_code"]}
    raise ValueError(f"unknown audience kind {kind!r}")


async def count(audience: dict) -> int:
    """How many recipients the audience has now."""
    if audience["kind"] == "followers":
        return await Follower.filter(subscribed=True).count()
    model, filters = _user_query(audience)
    rows = await model.filter(**filters).annotate(n=Count("user_id", distinct=True)).values("n")
    return int(rows[0]["n"]) if rows else 0


async def page(audience: dict, cursor: str | None, limit: int) -> list[Recipient]:
    """The next `limit` recipients after `cursor`, in key order."""
    if audience["kind"] == "followers":
        query = Follower.filter(subscribed=True)
        if cursor is not None:
            query = query.filter(oa_openid__gt=cursor)
        rows = await query.order_by("oa_openid").limit(limit).values_list("oa_openid", "user_id")
        return [Recipient(f"f:{openid}", openid, user_id, openid) for openid, user_id in rows]
    model, filters = _user_query(audience)
    query = model.filter(**filters)
    if cursor is not None:
        query = query.filter(user_id__gt=int(cursor))
    ids = await query.distinct().order_by("user_id").limit(limit).values_list("user_id", flat=True)
    return [Recipient(f"u:{user_id}", str(user_id), user_id, None) for user_id in ids]

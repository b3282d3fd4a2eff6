"""Which exceptions mean a part of ours (Redis, the database) is down: one line in the log and a
`503` with `Retry-After` for a request, one line for a job, never a traceback."""

from __future__ import annotations

OUTAGE_RETRY_AFTER_S = 5
# Exception classes that mean a part of ours (Redis, the database) cannot be reached, and its
# name; the storage layer registers its drivers' classes, so core imports no driver.
_OUTAGES: dict[type[BaseException], str] = {}


def register_outage(part: str, *classes: type[BaseException]) -> None:
    """Makes `classes` (raised anywhere in a request) a `503 not_ready` naming `part` in the log."""
    for cls in classes:
        _OUTAGES[cls] = part


def outage_of(exc: BaseException) -> str | None:
    """The part that is down if `exc`, or an exception it was raised from, is a registered outage."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for cls, part in _OUTAGES.items():
            if isinstance(current, cls):
                return part
        current = current.__cause__ or current.__context__
    return None

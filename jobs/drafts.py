"""Draft jobs: the nightly purge of expired drafts."""

from __future__ import annotations

import logging

from handlers.drafts import purge_expired_drafts
from jobs.broker import broker

log = logging.getLogger("zhangban.jobs")


@broker.task(task_name="zb.purge_drafts", schedule=[{"cron": "17 3 * * *", "cron_offset": "Asia/Shanghai"}])
async def purge_drafts() -> int:
    """Deletes drafts past their expiry (nightly)."""
    count = await purge_expired_drafts()
    log.info("expired drafts purged", extra={"count": count})
    return count

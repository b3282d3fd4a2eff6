"""The job broker and scheduler.

Embedded default: taskiq's in-memory broker runs jobs inside the Sanic worker and the
scheduler loop runs there too. Production (`TASK_BROKER=redis`): a Redis stream broker with
acknowledgements (a job killed mid-way is redelivered to another worker), separate
`python server.py worker` and `python server.py scheduler` processes.

taskiq's worker imports the broker by path, so it is built at import from the process's
installed settings.
"""

from __future__ import annotations

from redis.asyncio import Redis
from taskiq import AsyncBroker, InMemoryBroker, TaskiqScheduler
from taskiq.schedule_sources import LabelScheduleSource
from taskiq_redis import RedisStreamBroker

from core.settings import Settings, installed


class StreamBroker(RedisStreamBroker):
    """taskiq-redis's stream broker, kicking and acknowledging through one Redis client.

    The library builds a new client for every message it queues or acknowledges, which
    costs more than the XADD itself (about a third of a platform callback's time)."""

    _client: Redis | None = None

    def _redis(self) -> Redis:
        if self._client is None:
            self._client = Redis(connection_pool=self.connection_pool)
        return self._client

    async def kick(self, message) -> None:
        queue_name = message.labels.get("queue_name") or self.queue_name
        await self._redis().xadd(
            queue_name, {b"data": message.message}, maxlen=self.maxlen, approximate=self.approximate
        )

    def _ack_generator(self, id: str, queue_name: str):
        async def _ack() -> None:
            await self._redis().xack(queue_name, self.consumer_group_name, id)

        return _ack


def create_broker(settings: Settings) -> AsyncBroker:
    """The broker for these settings: in-memory, or a Redis stream with acknowledgements."""
    if settings.TASK_BROKER == "redis":
        return StreamBroker(
            url=settings.REDIS_URL,
            queue_name=f"{settings.REDIS_KEY_PREFIX}jobs",
            consumer_group_name=f"{settings.REDIS_KEY_PREFIX}workers",
            # Start the group at the stream's beginning: jobs queued before the first
            # worker ever started are still done.
            consumer_id="0",
            # Redeliver a job a dead worker had taken after 5 minutes without an ack.
            idle_timeout=300_000,
            unacknowledged_lock_timeout=30,
            maxlen=100_000,
        )
    return InMemoryBroker(await_inplace=False)


settings = installed()
broker = create_broker(settings)
scheduler = TaskiqScheduler(broker, sources=[LabelScheduleSource(broker)])

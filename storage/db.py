"""The database: Tortoise configuration from settings, start/stop, and migrations.

The schema is owned by Tortoise's built-in migrations in `storage/migrations/`; nothing
calls `generate_schemas`. `migrate()` applies whatever is pending and is a no-op when the
database is current.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from asyncpg import Connection
from asyncpg import exceptions as pg
from tortoise import Tortoise, connections
from tortoise.backends.base.config_generator import expand_db_url
from tortoise.exceptions import DBConnectionError
from tortoise.migrations.api import migrate as _tortoise_migrate

from core.outages import register_outage
from core.settings import Settings, load_settings

APP_LABEL = "models"
MODELS_MODULE = "storage.models"
MIGRATIONS_MODULE = "storage.migrations"

# The database restarting or unreachable (the pool reconnects by itself once it is back): a
# request meeting it is a 503 with Retry-After and one log line. A refused or reset socket is
# the pool reconnecting; Redis's own failures come wrapped in redis's classes.
DATABASE_OUTAGES = (
    pg.PostgresConnectionError,  # class 08, and a connection dropped mid-query
    pg.AdminShutdownError,
    pg.CrashShutdownError,
    pg.CannotConnectNowError,
    DBConnectionError,
    ConnectionRefusedError,
    ConnectionResetError,
)
register_outage("database", *DATABASE_OUTAGES)


class _NoTraceForOutages(logging.Filter):
    """The pool's own reconnection attempts while the database is down, as one line each,
    without the trace: the outage is expected and already answered with 503s."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and isinstance(exc, DATABASE_OUTAGES):
            record.msg = f"{record.getMessage()} ({type(exc).__name__})"
            record.args = None
            record.exc_info = record.exc_text = None
        return True


logging.getLogger("asyncpg.pool").addFilter(_NoTraceForOutages())


class PooledConnection(Connection):
    """An asyncpg connection handed back to the pool without a reset query.

    asyncpg resets a connection on every release (advisory locks, cursors, LISTEN, session
    settings): a round trip after each statement outside a transaction. Nothing here holds any
    of these past a statement or transaction; an open transaction is still rolled back."""

    def get_reset_query(self) -> str:
        return ""


def database_url(settings: Settings) -> str:
    """The Tortoise DB URL for `settings.DATABASE_URL`, with SQLite folders made and pragmas set."""
    url = settings.DATABASE_URL
    parts = urlsplit(url)
    if parts.scheme == "postgresql":
        return urlunsplit(("postgres", *parts[1:]))
    if parts.scheme == "sqlite":
        # sqlite:///abs/path and sqlite://rel/path both name a file; make its folder.
        path = url[len("sqlite://") :].split("?", 1)[0]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        if "busy_timeout" not in url:
            # Tortoise already turns on WAL; a writer waits for the lock instead of failing.
            url += ("&" if "?" in url else "?") + "busy_timeout=5000"
    return url


def tortoise_config(settings: Settings) -> dict[str, Any]:
    """The Tortoise ORM config dict for these settings."""
    url = database_url(settings)
    connection: str | dict[str, Any] = url
    if url.startswith("postgres://"):
        connection = expand_db_url(url)
        connection["credentials"]["connection_class"] = PooledConnection
    return {
        "connections": {"default": connection},
        "apps": {
            APP_LABEL: {
                "models": [MODELS_MODULE],
                "default_connection": "default",
                "migrations": MIGRATIONS_MODULE,
            }
        },
        "use_tz": True,
        # UTC in the database: SQLite compares datetimes as text, so one zone for every value.
        "timezone": "UTC",
    }


def __getattr__(name: str) -> Any:
    # `tortoise -c storage.db.TORTOISE_ORM makemigrations` resolves the config lazily
    # from the environment, like the server does.
    if name == "TORTOISE_ORM":
        return tortoise_config(load_settings())
    raise AttributeError(name)


_initialised = False


async def init_db(settings: Settings) -> bool:
    """Sets up the ORM for this process (once); True if this call did it."""
    global _initialised
    if _initialised:
        return False
    # Global fallback: request tasks do not inherit the listener's context.
    await Tortoise.init(config=tortoise_config(settings), _enable_global_fallback=True)
    _initialised = True
    return True


async def close_db() -> None:
    """Closes every connection pool (graceful shutdown)."""
    global _initialised
    if _initialised:
        await Tortoise.close_connections()
        _initialised = False


async def migrate(settings: Settings, *, progress=None) -> None:
    """Applies every pending migration; does nothing when the schema is current."""
    try:
        await _tortoise_migrate(config=tortoise_config(settings), progress=progress)
    finally:
        # An open SQLite connection's thread would keep the process from exiting.
        await connections.close_all()


async def ping() -> None:
    """Raises if the database does not answer a trivial query."""
    await connections.get("default").execute_query("SELECT 1")

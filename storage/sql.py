"""Hand-written SQL through the ORM's connection, for the few hot paths where Tortoise's query
builder costs more than the statement (platform callbacks, the outbox relay's claim).

Statements are written once with `?` placeholders and numbered for PostgreSQL (`$1`, `$2`, ...)
by `numbered`, cached per text; values are given as the database takes them (`db_json` for
JSON columns), so a row written here reads back through the models like any other.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from tortoise import connections
from tortoise.backends.base.client import BaseDBAsyncClient

from storage.models import CaseEvent

_PLACEHOLDER = re.compile(r"\?")
# The encoder of the models' JSON columns, so hand-written rows are stored like the ORM's.
_JSON_FIELD = CaseEvent._meta.fields_map["data"]


def connection() -> BaseDBAsyncClient:
    """The default connection (the current transaction's inside `in_transaction()`)."""
    return connections.get("default")


def is_postgres(conn: BaseDBAsyncClient) -> bool:
    return conn.capabilities.dialect == "postgres"


@lru_cache(maxsize=256)
def _numbered(sql: str) -> str:
    numbers = iter(range(1, 100_000))
    return _PLACEHOLDER.sub(lambda _: f"${next(numbers)}", sql)


def numbered(conn: BaseDBAsyncClient, sql: str) -> str:
    """`sql` written with `?` placeholders, in the placeholder style of `conn`'s database."""
    return _numbered(sql) if is_postgres(conn) else sql


async def rows(conn: BaseDBAsyncClient, sql: str, values: list[Any]) -> list[dict]:
    """The rows `sql` answers (a statement with RETURNING included)."""
    return await conn.execute_query_dict(numbered(conn, sql), values)


def db_json(value: Any) -> str:
    """`value` as a JSON column stores it."""
    return _JSON_FIELD.to_db_value(value, None)

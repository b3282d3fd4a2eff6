"""CSV exports streamed row by row: what a console table downloads, never built whole in memory.

Cells that a spreadsheet would run as a formula (starting with `=`, `+`, `-`, `@`, a tab or a
carriage return) are prefixed with an apostrophe; the file starts with a UTF-8 byte order mark
so that spreadsheet programs read the Chinese text right.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from urllib.parse import quote

from sanic import Request

from core.china_time import CHINA

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
ROWS_PER_CHUNK = 200


def cell(value: object) -> str:
    """One CSV cell: JSON for structures, empty for None, formula starts defused."""
    if value is None:
        text = ""
    elif isinstance(value, dict | list):
        text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    elif isinstance(value, bool):
        text = "是" if value else "否"
    else:
        text = str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def _line(values: Sequence[object]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow([cell(v) for v in values])
    return out.getvalue()


def disposition(stem: str) -> str:
    """`attachment` with the file name `<stem>-<China date and time>.csv`."""
    name = f"{stem}-{datetime.now(CHINA):%Y%m%d-%H%M%S}.csv"
    return f"attachment; filename=\"{name}\"; filename*=UTF-8''{quote(name, safe='')}"


async def stream_csv(
    request: Request,
    *,
    stem: str,
    columns: Sequence[tuple[str, str]],
    rows: AsyncIterator[dict],
    convert: Callable[[dict], dict] | None = None,
) -> None:
    """Streams `rows` as CSV: `columns` are (key, Chinese header) pairs; `convert` prepares a row."""
    response = await request.respond(
        content_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": disposition(stem), "Cache-Control": "no-store"},
    )
    chunk = ["\ufeff", _line([title for _, title in columns])]
    async for row in rows:
        row = convert(row) if convert else row
        chunk.append(_line([row.get(key) for key, _ in columns]))
        if len(chunk) >= ROWS_PER_CHUNK:
            await response.send("".join(chunk))
            chunk = []
    await response.send("".join(chunk))
    await response.eof()

"""Request export (§A3): the §R columns as CSV or JSON Lines, streamed page by page.

The store builds each page's lines (see ``Store.export_pages``); this module picks the columns,
writes the header and moves pages from a worker thread to the response, one page ahead, so
memory stays at a few pages whatever the size of the export and the event loop never waits
on the database."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import AsyncIterator

from gatewatch.records import COLUMNS
from gatewatch.store import RequestQuery, Scope, Store
from gatewatch.usage import Currency

__all__ = [
    "EXPORT_PARAMS",
    "FORMATS",
    "export_columns",
    "filename",
    "header",
    "stream",
]

FORMATS = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}
# Query parameters of the export that are not record filters.
EXPORT_PARAMS = ("format", "bodies", "currency", "q")


def export_columns(bodies: bool) -> tuple[str, ...]:
    """The §R columns with ``cost`` and ``currency`` after ``cost_usd``; the two body columns
    only when asked for (they are most of an export's size)."""
    out: list[str] = []
    for name in COLUMNS:
        if name in ("request_body", "response_body") and not bodies:
            continue
        out.append(name)
        if name == "cost_usd":
            out += ["cost", "currency"]
    return tuple(out)


def header(columns: tuple[str, ...], fmt: str) -> bytes:
    if fmt != "csv":
        return b""
    buf = io.StringIO()
    csv.writer(buf).writerow(columns)
    return buf.getvalue().encode()


def filename(fmt: str, now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    return f"gatewatch-requests-{stamp}.{fmt}"


async def stream(
    store: Store,
    scope: Scope,
    query: RequestQuery,
    columns: tuple[str, ...],
    fmt: str,
    currency: Currency,
    page_size: int = 5000,
) -> AsyncIterator[bytes]:
    """The header, then each page as the store builds it. Each page is read in a worker thread
    while the previous one is being sent."""
    first = header(columns, fmt)
    if first:
        yield first
    pages = store.export_pages(
        scope, query, columns, fmt, page_size, usd_rate=currency.rate, currency=currency.code
    )
    pending = asyncio.ensure_future(asyncio.to_thread(next, pages, b""))
    try:
        while True:
            page = await pending
            if not page:
                return
            pending = asyncio.ensure_future(asyncio.to_thread(next, pages, b""))
            yield page
    finally:
        # the client went away: the page being read finishes in its thread and is dropped (the
        # store's generator holds nothing open between pages, so it needs no closing)
        pending.add_done_callback(_retrieve)


def _retrieve(task: asyncio.Future[bytes]) -> None:
    if not task.cancelled():
        task.exception()  # a failed read-ahead of an abandoned export is nobody's error

"""Which index a page of the request list (§A1) or an export (§A3) is read from, and its count.

A page is read newest first from one index in id order, the *driver*: the index of one
filter's column for its value (``provider``, ``status``, …), the facet table for one tag, model
or ``meta.*`` value, or the scope's own index (an organization's or a user's records); the other
filters are checked on each entry (see ``RequestQuery.keyset``). Its cost is the entries it reads
before it has a page, and above all the records it fetches to check what the entry cannot
answer. SQLite, without statistics (no ``ANALYZE``), cannot tell a rare value from a common
one, and a fixed rule (a one-value model filter drives) read about 30 times more entries than
needed for a rare status with a common model.

So each candidate index is probed: its newest ``_PROBE`` entries before the page (an index-only
read, about a tenth of a millisecond) give how many entries it holds per second of time, and how
many of them are in the caller's scope (each of those costs a fetch). Pages walk back through
time at the pace of the query's matches, the same for every candidate, so the index with the
fewest entries per second (fetches weighted by ``_FETCH``) reads the least. Local densities
rather than totals: a model used heavily last quarter and rarely since is a poor driver now.

The list's ``count`` (``count_requests``) sums the usage rollups over the whole hours of the
range and counts the records of the partial hours at either end through the same driver.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ulid import ULID

from gatewatch.records import parse_ts
from gatewatch.store import rollups
from gatewatch.store.query import Driver, RequestQuery, Scope

__all__ = ["choose_driver", "count_requests"]

_PROBE = 256  # index entries read per candidate
_FETCH = 8.0  # one record fetched by its id costs about as much as this many entries read
# Filters that name one user, key or organization by id or name → the requests column and the
# table that resolves the name.
_RESOLVED = {
    "initiator": ("user_id", "users"),
    "api_key": ("api_key_id", "keys"),
    "org": ("org_id", "orgs"),
}


def _seconds(ulid: str) -> float:
    return float(ULID.from_str(ulid).timestamp)


def _resolved(db: Any, scope: Scope, query: RequestQuery) -> list[Driver]:
    """Drivers for initiator/api_key/org filters that name exactly one row (the filter itself
    still applies, so a name given to a second row meanwhile changes nothing)."""
    out = []
    for name, (column, table) in _RESOLVED.items():
        values = query.filters.get(name)
        if values is None or len(values) != 1:
            continue
        if name == "org" and scope.role == "member":
            continue  # the org index does not carry user_id: the user's own index is better
        if name == "initiator" and values[0] == "me":
            out.append(Driver("requests", column, scope.user_id))
            continue
        ids = db.execute(
            f"SELECT id FROM {table} WHERE id = ? OR name = ? LIMIT 2", (values[0], values[0])
        ).fetchall()
        if len(ids) == 1:
            out.append(Driver("requests", column, ids[0][0]))
    return out


def choose_driver(
    db: Any, scope: Scope, query: RequestQuery, after_id: str | None = None
) -> Driver | None:
    """The candidate index that reads least for a page of ``query`` starting at ``after_id``
    (None: no one-value filter and the owner's scope, so the primary key, as SQLite plans)."""
    candidates = list(dict.fromkeys([*query.drivers(scope), *_resolved(db, scope, query)]))
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    lo_id, hi_id = query.id_range()
    if after_id is not None and (hi_id is None or after_id < hi_id):
        hi_id = after_id
    # two statements: SQLite reads one end of the primary key for a lone min() or max() only
    (newest,) = db.execute("SELECT max(id) FROM requests").fetchone()
    (oldest,) = db.execute("SELECT min(id) FROM requests").fetchone()
    if newest is None:
        return candidates[0]
    hi = _seconds(min(newest, hi_id) if hi_id else newest)
    lo = _seconds(max(oldest, lo_id) if lo_id else oldest)
    column = {"admin": "org_id", "member": "user_id"}.get(scope.role)
    scope_id = scope.org_id if scope.role == "admin" else scope.user_id
    best: tuple[float, Driver] | None = None
    for driver in candidates:
        cond, params = driver.condition()
        did = driver.id_column
        where = [cond]
        if lo_id:
            where.append(f"{did} >= ?")
            params.append(lo_id)
        if hi_id:
            where.append(f"{did} < ?")
            params.append(hi_id)
        # in scope: the entries whose record is fetched (all, when the index cannot tell)
        picks, in_scope, outer = f"{did} AS id", "count(*)", []
        if column is not None and driver.carries(column):
            picks += f", d.{column} AS scope_id"
            in_scope, outer = "sum(CASE WHEN x.scope_id = ? THEN 1 ELSE 0 END)", [scope_id]
        n, first, scoped = db.execute(
            f"SELECT count(*), min(x.id), {in_scope} FROM (SELECT {picks} FROM {driver.table} d"
            f" WHERE {' AND '.join(where)} ORDER BY {did} DESC LIMIT ?) AS x",
            [*outer, *params, _PROBE],
        ).fetchone()
        span = (hi - _seconds(first) if n >= _PROBE else hi - lo) if n else 1.0
        cost = (n + _FETCH * int(scoped or 0)) / max(span, 0.001)
        if best is None or cost < best[0]:
            best = (cost, driver)
    return best[1] if best else None


def count_requests(db: Any, scope: Scope, query: RequestQuery, driver: Driver | None) -> int:
    """§A1's ``count``: the whole hours of the range from the usage rollups where they can
    answer, the rest from the records, read through ``driver``'s index."""

    def records(lo_id: str | None, hi_id: str | None) -> int:
        source, params, _ = query.keyset(scope, driver, row=False, lo_id=lo_id, hi_id=hi_id)
        return int(db.execute(f"SELECT count(*) FROM {source}", params).fetchone()[0])

    total = _rollup_count(db, scope, query, records)
    if total is not None:
        return total
    facets = query.facet_count(scope)
    if facets is not None:
        return int(db.execute(*facets).fetchone()[0])
    return records(None, None)


_FAR = 253402300800  # 10000-01-01: a range with no end


def _rollup_count(
    db: Any,
    scope: Scope,
    query: RequestQuery,
    records: Callable[[str | None, str | None], int],
) -> int | None:
    """A list's ``count`` (§A1): the whole hours of its range from the rollups (a few thousand
    pre-summed rows instead of every matching record), the partial hours at either end from the
    records (``records(lo_id, hi_id)``: how many of the list's records have lo_id <= id < hi_id,
    None for no bound); None when the rollups cannot answer exactly (a filter they do not keep,
    several tags, a range that lies before ``rollups_exact_from``, the hour the retention purge
    has reached)."""
    tags = query.filters.get("tag")
    if tags is not None and len(tags) > 1:  # a record with two of them is one record
        return None
    planned = rollups.plan(scope, rollups.UsageSpec(0, 3600, (0, 3600), (), query))
    if planned is None:
        return None
    cuboid, (rwhere, rparams) = planned
    lo_ts, hi_ts = (
        max(parse_ts(v[0]), 0.0) if (v := query.filters.get(name)) else None
        for name in ("started_after", "started_before")
    )
    row = db.execute("SELECT value FROM upkeep WHERE name = 'rollups_exact_from'").fetchone()
    (oldest,) = db.execute("SELECT min(bucket) FROM rollup_user WHERE grain = 'h'").fetchone()
    (newest,) = db.execute("SELECT max(bucket) FROM rollup_user WHERE grain = 'h'").fetchone()
    if row is None or oldest is None:
        return None
    a = max(-(-int(lo_ts or 0) // 3600) * 3600, int(row[0]), int(oldest))
    # (past the newest hour with rollups, the records: none, or those of a moment ago)
    b = min(int(hi_ts) // 3600 * 3600 if hi_ts is not None else _FAR, int(newest) + 3600)
    if b - a < 2 * 3600:  # an hour or two: the records themselves are as quick
        return None
    total = 0
    for grain, x, y in rollups._grains(a, b):
        sql, params = rollups._scan(
            cuboid, scope, "coalesce(sum(r.requests), 0)", rwhere, grain, x, y
        )
        total += db.execute(sql, [*params, *rparams]).fetchone()[0]
    # the records outside the whole hours: [start of range, a) and [b, end of range)
    total += records(None, rollups.ulid_floor(a))
    if b < _FAR:
        total += records(rollups.ulid_floor(b), None)
    return int(total)

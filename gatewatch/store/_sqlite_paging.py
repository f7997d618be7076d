"""Which index a page of the request list (§A1) or an export (§A3) is read from, and its count.

A page is read newest first from one index in id order, the *driver*: the index of one
filter's column for its value (``provider``, ``status``, …), the facet table for one tag, model
or ``meta.*`` value, or the scope's own index (an organization's or a user's records); the other
filters are checked on each entry (see ``RequestQuery.keyset``). Its cost is the entries it reads
before it has a page, and above all the records it fetches to check what the entry cannot
answer. SQLite, without statistics, picks among equal-looking indexes by their order in the
schema, and a one-value filter on a rare status behind a common model read about 30 times more
entries than needed.

So each candidate index is probed: its newest ``_PROBE`` entries before the page (an index-only
read, about a tenth of a millisecond) give how many entries it holds per second of time, and how
many of them are in the caller's scope (each of those costs a fetch). Pages walk back through
time at the pace of the query's matches, the same for every candidate, so the index with the
fewest entries per second (fetches weighted by ``_FETCH``) reads the least. Local densities
rather than totals: a model used heavily last quarter and rarely since is a poor driver now.
"""

from __future__ import annotations

from typing import Any

from ulid import ULID

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

    total = rollups.count(db, scope, query, records)
    if total is not None:
        return total
    facets = query.facet_count(scope)
    if facets is not None:
        return int(db.execute(*facets).fetchone()[0])
    return records(None, None)

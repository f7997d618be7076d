"""What a caller may see (Scope) and what it asked for (RequestQuery), as parameterised SQL.

Filters are a declarative table: each §A1 filter name maps to a function producing one SQL
condition for a list of values (several values of one filter are OR-ed, different filters are
AND-ed). Every read path over request records builds its WHERE clause here, scope first.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from ulid import ULID

from gatewatch.records import parse_ts

__all__ = [
    "FILTER_NAMES",
    "Driver",
    "FilterError",
    "RequestQuery",
    "Scope",
    "and_where",
    "parse_filters",
]

Role = Literal["member", "admin", "owner"]


class FilterError(ValueError):
    """A bad query parameter; ``param`` names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


@dataclass(frozen=True, slots=True)
class Scope:
    """The records a key may see: member → its user's, admin → its org's, owner → all."""

    role: Role
    org_id: str
    user_id: str

    def clause(self, alias: str = "r", checked: bool = False) -> tuple[str, list[object]]:
        """The scope as a condition. ``checked``: another filter's index drives the query and
        carries the scope columns, so SQLite is told (unary ``+``) not to drive by the scope."""
        plus = "+" if checked else ""
        if self.role == "owner":
            return "", []
        if self.role == "admin":
            return f"{plus}{alias}.org_id = ?", [self.org_id]
        return f"{plus}{alias}.user_id = ?", [self.user_id]


Condition = tuple[str, list[object]]


def _in(column: str) -> Callable[[list[str], Scope], Condition]:
    def build(values: list[str], scope: Scope) -> Condition:
        marks = ",".join("?" * len(values))
        return f"r.{column} IN ({marks})", [*values]

    return build


def _facet(name: str, values: list[str]) -> Condition:
    marks = ",".join("?" * len(values))
    return (
        f"r.id IN (SELECT request_id FROM request_facets WHERE name = ? AND value IN ({marks}))",
        [name, *values],
    )


def _facet_probe(name: str, values: list[str], id_column: str) -> Condition:
    """The facet filter as a look-up of (name, value, id) in the facet table's primary key for
    each candidate row, where ``IN (SELECT …)`` would first collect every matching id."""
    marks = ",".join("?" * len(values))
    return (
        f"EXISTS (SELECT 1 FROM request_facets f WHERE f.name = ? AND f.value IN ({marks})"
        f" AND f.request_id = {id_column})",
        [name, *values],
    )


def _model(values: list[str], scope: Scope) -> Condition:
    """The model asked for or the model that answered (a dated snapshot of it, say)."""
    return _facet("model", values)


def _initiator(values: list[str], scope: Scope) -> Condition:
    ids = [scope.user_id for v in values if v == "me"]
    names = [v for v in values if v != "me"]
    parts: list[str] = []
    params: list[object] = []
    if ids:
        parts.append("r.user_id = ?")
        params.append(ids[0])
    if names:
        marks = ",".join("?" * len(names))
        parts.append(
            f"r.user_id IN (SELECT id FROM users WHERE id IN ({marks}) OR name IN ({marks}))"
        )
        params.extend([*names, *names])
    return "(" + " OR ".join(parts) + ")", params


def _by_id_or_name(column: str, table: str) -> Callable[[list[str], Scope], Condition]:
    def build(values: list[str], scope: Scope) -> Condition:
        marks = ",".join("?" * len(values))
        sql = f"r.{column} IN (SELECT id FROM {table} WHERE id IN ({marks}) OR name IN ({marks}))"
        return sql, [*values, *values]

    return build


def _tag(values: list[str], scope: Scope) -> Condition:
    return _facet("tag", values)


def _status(values: list[str], scope: Scope) -> Condition:
    for v in values:
        if v not in ("ok", "error", "client_closed"):
            raise FilterError("status", f"{v!r} is not one of ok, error, client_closed")
    return _in("status")(values, scope)


def _status_code(values: list[str], scope: Scope) -> Condition:
    for v in values:
        if not v.isdigit() or not 100 <= int(v) <= 599:
            raise FilterError("status_code", f"{v!r} is not an HTTP status code")
    marks = ",".join("?" * len(values))
    return f"r.status_code IN ({marks})", [int(v) for v in values]


def _time_bound(param: str, op: str) -> Callable[[list[str], Scope], Condition]:
    def build(values: list[str], scope: Scope) -> Condition:
        if len(values) != 1:
            raise FilterError(param, "give it once")
        try:
            ts = parse_ts(values[0])
        except ValueError:
            raise FilterError(param, f"{values[0]!r} is not an RFC 3339 time") from None
        # ids are ULIDs that start with the request's start time: a range on the primary key
        # (a time before 1970, which ULIDs cannot hold, is the same bound as 1970 itself).
        edge = str(ULID.from_bytes(ULID.from_timestamp(max(ts, 0.0)).bytes[:6] + b"\x00" * 10))
        return (f"r.id {op} ?", [edge])

    return build


_FILTERS: dict[str, Callable[[list[str], Scope], Condition]] = {
    "initiator": _initiator,
    "org": _by_id_or_name("org_id", "orgs"),
    "api_key": _by_id_or_name("api_key_id", "keys"),
    "provider": _in("provider"),
    "model": _model,
    "status": _status,
    "status_code": _status_code,
    "client": _in("client"),
    "workflow": _in("workflow"),
    "session": _in("session"),
    "tag": _tag,
    "end_user": _in("end_user"),
    "started_after": _time_bound("started_after", ">="),
    "started_before": _time_bound("started_before", "<"),
}
FILTER_NAMES: tuple[str, ...] = (*_FILTERS, "meta.<name>")
# Filters whose index carries org_id and user_id (see the m002 migration).
_INDEXED = {
    "api_key",
    "provider",
    "status",
    "status_code",
    "client",
    "workflow",
    "session",
    "end_user",
    "initiator",
}


# Filters stored in a column of requests with an index of its own, (column, id, org_id, user_id):
# a page can be read from that index in id order.
_INDEXED_COLUMNS = (
    "provider", "status", "status_code", "client", "workflow", "session", "end_user"
)  # fmt: skip
# The scope columns each index of requests carries beside its own column and id (m002); a facet
# row carries both.
_CARRIED = {"org_id": ("org_id",), "user_id": ("user_id", "org_id")}


_TIME_BOUNDS = ("started_after", "started_before")


def _is_facet(name: str) -> bool:
    return name in ("tag", "model") or name.startswith("meta.")


@dataclass(frozen=True, slots=True)
class Driver:
    """The index a page of records is read from, newest first: the index of one column of
    ``requests`` for one value (``provider``, …, ``org_id``, ``user_id``, ``api_key_id``), or
    the facet table for one (name, value). ``source`` is the filter it stands for, if any."""

    table: Literal["requests", "request_facets"]
    column: str  # a column of requests, or a facet name
    value: object
    source: str | None = None

    @property
    def id_column(self) -> str:
        return "d.request_id" if self.table == "request_facets" else "d.id"

    def carries(self, column: str) -> bool:
        """Whether ``column`` (org_id or user_id) is read with the index entry itself."""
        if self.table == "request_facets":
            return True
        return column == self.column or column in _CARRIED.get(self.column, ("org_id", "user_id"))

    def condition(self) -> Condition:
        if self.table == "request_facets":
            return "d.name = ? AND d.value = ?", [self.column, self.value]
        return f"d.{self.column} = ?", [self.value]


@dataclass(slots=True)
class RequestQuery:
    """Filters by name → values (meta filters as ``meta.<name>``)."""

    filters: dict[str, list[str]] = field(default_factory=dict)

    def facet_count(self, scope: Scope) -> tuple[str, list[object]] | None:
        """A count that reads only the facet index, when that is the whole question (one
        tag/meta/model filter, unscoped): the general count would visit every matching row."""
        if len(self.filters) != 1:
            return None
        ((name, values),) = self.filters.items()
        if name not in ("tag", "model") and not name.startswith("meta."):
            return None
        marks = ",".join("?" * len(values))
        what = "count(*)" if len(values) == 1 else "count(DISTINCT request_id)"
        scope_sql, scope_params = scope.clause("request_facets")
        return (
            f"SELECT {what} FROM request_facets WHERE name = ? AND value IN ({marks})"
            + (f" AND {scope_sql}" if scope_sql else ""),
            [name, *values, *scope_params],
        )

    def default_driver(self, scope: Scope) -> Driver | None:
        """The driver to use without a look at the data: a one-value tag/meta/model filter
        (its index read in id order rather than every matching id collected first)."""
        for d in self.drivers(scope):
            if d.table == "request_facets":
                return d
        return None

    def id_range(self) -> tuple[str | None, str | None]:
        """The time bounds as ids: the smallest a match may have, the one every match is below."""
        lo = self.filters.get("started_after")
        hi = self.filters.get("started_before")
        owner = Scope("owner", "", "")
        return (
            str(_FILTERS["started_after"](lo, owner)[1][0]) if lo else None,
            str(_FILTERS["started_before"](hi, owner)[1][0]) if hi else None,
        )

    def drivers(self, scope: Scope) -> list[Driver]:
        """The indexes a page of this query could be read from (see ``keyset``): each
        one-value filter with an index of its own, and the scope's own index. Filters that
        name users, keys or organizations (by id or name) are left to the caller to resolve."""
        out: list[Driver] = []
        for name, values in self.filters.items():
            if len(values) != 1:
                continue
            if name in _INDEXED_COLUMNS:
                value: object = int(values[0]) if name == "status_code" else values[0]
                out.append(Driver("requests", name, value, name))
            elif _is_facet(name):
                out.append(Driver("request_facets", name, values[0], name))
        if scope.role == "admin":
            out.append(Driver("requests", "org_id", scope.org_id))
        elif scope.role == "member":
            out.append(Driver("requests", "user_id", scope.user_id))
        return out

    def keyset(
        self,
        scope: Scope,
        driver: Driver | None,
        join: str = "",
        row: bool = True,
        lo_id: str | None = None,
        hi_id: str | None = None,
    ) -> tuple[str, list[object], str]:
        """``FROM`` text (``requests r``, ``join`` after it), its parameters and the id column
        to page on (``ORDER BY`` it ``DESC``), for the records with ``lo_id <= id < hi_id``
        (None: no bound; the next page: ``hi_id`` the last id seen) within the time bounds.
        The bounds are merged into one of each kind: SQLite ranges an index on one lower and
        one upper bound and checks any other row by row (an export of the last week of a
        month-long ``started_after`` read the whole month).

        With a driver, the driver's index is read newest first as ``d`` and joined to the
        record ``r`` by its id (``CROSS JOIN``: SQLite keeps that order). What the index entry
        itself can answer (the scope, the time bounds, facet filters as look-ups) is checked on
        ``d``, before the record is fetched: SQLite fetches a record for every entry of an index
        on a WITHOUT ROWID table before it checks the entry's other columns. ``row=False``
        (counting): no record is fetched when no condition needs one."""
        own_lo, own_hi = self.id_range()
        lo = max((b for b in (own_lo, lo_id) if b is not None), default=None)
        hi = min((b for b in (own_hi, hi_id) if b is not None), default=None)
        bounds = [(">=", lo)] if lo is not None else []
        bounds += [("<", hi)] if hi is not None else []
        if driver is None:
            timeless = {n: v for n, v in self.filters.items() if n not in _TIME_BOUNDS}
            where, params = RequestQuery(timeless).where(scope)
            parts = [where] if where else []
            parts += [f"r.id {op} ?" for op, _ in bounds]
            params = [*params, *(b for _, b in bounds)]
            return f"requests r{join}{and_where(' AND '.join(parts))}", params, "r.id"
        did = driver.id_column
        d_sql, d_params = driver.condition()
        d_parts, r_parts = [d_sql, *(f"{did} {op} ?" for op, _ in bounds)], []
        params, r_params = [*d_params, *(b for _, b in bounds)], []
        scope_sql, scope_params = scope.clause("d", checked=True)
        scope_column, scope_id = {
            "admin": ("org_id", scope.org_id), "member": ("user_id", scope.user_id)
        }.get(scope.role, (None, None))  # fmt: skip
        if scope_column is None or (driver.column, driver.value) == (scope_column, scope_id):
            pass  # owner, or the driver is the scope's own index
        elif driver.carries(scope_column):
            d_parts.append(scope_sql)
            params.extend(scope_params)
        else:
            r_sql, r_scope = scope.clause("r")
            r_parts.append(r_sql)
            r_params.extend(r_scope)
        for name, values in self.filters.items():
            if name == driver.source:
                continue
            cond: Condition
            if name in _TIME_BOUNDS:
                continue  # see bounds
            if _is_facet(name):
                cond = _facet_probe(name, values, did)
                d_parts.append(cond[0])
                params.extend(cond[1])
                continue
            cond = _FILTERS[name](values, scope)
            r_parts.append(cond[0])
            r_params.extend(cond[1])
        if r_parts or row:
            sql = (
                f"{driver.table} d CROSS JOIN requests r{join}"
                f" WHERE {' AND '.join(d_parts)} AND r.id = {did}"
                f"{and_where(' AND '.join(r_parts), 'AND')}"
            )
            return sql, [*params, *r_params], did
        return f"{driver.table} d WHERE {' AND '.join(d_parts)}", params, did

    def where(self, scope: Scope, skip: str | None = None) -> tuple[str, list[object]]:
        driven = any(n != skip and n in _INDEXED for n in self.filters) or skip is not None
        sql, params = scope.clause(checked=driven)
        parts, all_params = ([sql] if sql else []), list(params)
        for name, values in self.filters.items():
            if name == skip:
                continue
            cond: Condition
            if name.startswith("meta."):
                cond = _facet(name, values)
            else:
                cond = _FILTERS[name](values, scope)
            parts.append(cond[0])
            all_params.extend(cond[1])
        return " AND ".join(parts), all_params


# §A1 filters a usage rollup can answer → the dimension it needs (see store/rollups.py).
ROLLUP_FILTERS = {
    "initiator": "user",
    "org": "org",
    "api_key": "api_key",
    "provider": "provider",
    "model": "model",
    "status": "status",
    "client": "client",
    "workflow": "workflow",
    "end_user": "end_user",
    "tag": "tag",
}


def rollup_where(query: RequestQuery, scope: Scope) -> tuple[str, list[object]] | None:
    """The query's filters and the scope as a condition on a rollup table (alias r), or None
    when a filter is one no rollup keeps (session, status_code, meta.*; time bounds are the
    caller's start and end). Rollup columns carry the records' names, so the record filters
    apply unchanged; model (asked for or answered) and tag are columns there, not facets."""
    sql, params = scope.clause()
    parts, all_params = ([sql] if sql else []), list(params)
    for name, values in query.filters.items():
        if name in ("started_after", "started_before"):
            continue
        if name not in ROLLUP_FILTERS:
            return None
        marks = ",".join("?" * len(values))
        cond: Condition
        if name == "model":
            cond = f"(r.model IN ({marks}) OR r.model_requested IN ({marks}))", [*values, *values]
        elif name == "tag":
            cond = f"r.tag IN ({marks})", [*values]
        else:
            cond = _FILTERS[name](values, scope)
        parts.append(cond[0])
        all_params.extend(cond[1])
    return " AND ".join(parts), all_params


def and_where(sql: str, keyword: str = "WHERE") -> str:
    """`` WHERE <sql>`` (or `` AND <sql>``), or nothing for no condition: a constant condition
    such as ``1=1`` would keep SQLite from counting rows from its smallest index."""
    return f" {keyword} {sql}" if sql else ""


def parse_filters(
    params: Iterable[tuple[str, str]], ignore: Iterable[str] = (), q: str | None = None
) -> RequestQuery:
    """Query parameters (name, value) and an optional ``q=key:value …`` string → RequestQuery.

    Raises FilterError naming the first bad parameter."""
    skip = set(ignore)
    filters: dict[str, list[str]] = {}

    def add(name: str, value: str, origin: str) -> None:
        if name not in _FILTERS and not (name.startswith("meta.") and len(name) > 5):
            raise FilterError(origin, f"unknown filter {name!r}; known: {', '.join(FILTER_NAMES)}")
        if value == "":
            raise FilterError(origin, "empty value")
        filters.setdefault(name, []).append(value)

    for name, value in params:
        if name in skip or name == "q":
            continue
        add(name, value, name)
    if q:
        try:
            terms = shlex.split(q)
        except ValueError as exc:
            raise FilterError("q", f"cannot parse: {exc}") from None
        for term in terms:
            name, sep, value = term.partition(":")
            if not sep:
                raise FilterError("q", f"{term!r} is not key:value")
            add(name, value, "q")
    query = RequestQuery(filters)
    # validate values now (status, status_code, times) so errors surface as 400
    query.where(Scope("owner", "", ""))
    return query

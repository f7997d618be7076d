"""The SQLite engine: one file, WAL, one write connection behind a lock, a read connection per
thread."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import orjson
from ulid import ULID

from gatewatch.records import COLUMNS, Record, format_ts, new_id
from gatewatch.store import rollups
from gatewatch.store._sqlite_alerts import AlertsMixin
from gatewatch.store._sqlite_export import export_select
from gatewatch.store._sqlite_paging import choose_driver, count_requests
from gatewatch.store._sqlite_upkeep import UpkeepMixin
from gatewatch.store.base import (
    Identity,
    Page,
    ScopeLimits,
    Store,
    StoreError,
    StoreUnavailable,
    without_nul,
)  # fmt: skip
from gatewatch.store.migrations import apply_migrations
from gatewatch.store.query import Driver, RequestQuery, Scope, and_where
from gatewatch.store.rollups import ulid_floor as _ulid_floor

__all__ = ["SQLiteStore"]

_LIST_COLUMNS = [c for c in COLUMNS if c not in ("request_body", "response_body")]
_SELECT = ", ".join(f"r.{c}" for c in _LIST_COLUMNS)
_JSON_COLUMNS = {"tags", "meta", "tool_calls", "attempts"}
_BODIES = {"request_body", "response_body"}
_EXPORT_PAGE_BYTES = 8 << 20
_RECORD_COLUMNS = (
    "id", "started_at", "ended_at", "duration_ms", "ttft_ms", "org_id", "org", "user_id", "user",
    "api_key_id", "api_key_name", "end_user", "session", "workflow", "client", "user_agent",
    "source_ip", "correlation_id", "endpoint", "provider", "model_requested", "model", "stream",
    "status_code", "status", "error_type", "error_message", "input_tokens", "output_tokens",
    "cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "cost_usd", "tags", "meta",
    "last_user_prompt", "tool_calls", "attempts",
)  # fmt: skip


def _from_json_rows(table: str, columns: Sequence[str]) -> str:
    """One statement that inserts a whole batch given as one JSON array of rows. SQLite reads
    the rows itself, so the writer thread holds Python's GIL a handful of times per batch
    instead of once per row (which starves it while the event loop is busy)."""
    picks = ", ".join(f"value ->> {i}" for i in range(len(columns)))
    return f"INSERT OR IGNORE INTO {table} ({', '.join(columns)}) SELECT {picks} FROM json_each(?)"


_RECORD_LIST = ", ".join(_RECORD_COLUMNS)
_INSERT_REQUESTS = _from_json_rows("requests", _RECORD_COLUMNS)
_INSERT_FACETS = _from_json_rows(
    "request_facets", ("name", "value", "request_id", "org_id", "user_id")
)
_INSERT_BODIES = _from_json_rows("request_bodies", ("request_id", "request_body", "response_body"))

# A stored record's rollup facts (see _facts): what rebuild_rollups reads.
_ENTITY_TABLES = {"keys": "keys", "users": "users", "orgs": "orgs"}
_ID_PREFIX = {"keys": "key_", "users": "usr_", "orgs": "org_"}
_UPDATABLE = {
    "keys": {"name", "role", "budget_usd", "budget_period", "rpm", "tpm"},
    "users": {"budget_usd", "budget_period", "rpm", "tpm"},
    "orgs": {"budget_usd", "budget_period", "rpm", "tpm"},
}
_ENTITY_SELECT = {
    "keys": (
        "SELECT k.id, k.name, k.key_prefix, u.name AS user, k.user_id, o.name AS org, k.org_id,"
        " k.role, k.budget_usd, k.budget_period, k.rpm, k.tpm, k.created_at, k.revoked_at"
        " FROM keys k JOIN users u ON u.id = k.user_id JOIN orgs o ON o.id = k.org_id"
    ),
    "users": (
        "SELECT u.id, u.name, o.name AS org, u.org_id, u.budget_usd, u.budget_period, u.rpm,"
        " u.tpm, u.created_at, u.revoked_at FROM users u JOIN orgs o ON o.id = u.org_id"
    ),
    "orgs": (
        "SELECT o.id, o.name, o.budget_usd, o.budget_period, o.rpm, o.tpm, o.created_at,"
        " o.revoked_at FROM orgs o"
    ),
}
# Which rows of each kind a scope sees: owner all, admin its org, member its own user.
_ENTITY_SCOPE = {
    "keys": ("k.org_id = ?", "k.user_id = ?"),
    "users": ("u.org_id = ?", "u.id = ?"),
    "orgs": ("o.id = ?", "o.id = ?"),
}
_ALIAS = {"keys": "k", "users": "u", "orgs": "o"}


def _now() -> str:
    import time

    return format_ts(time.time())


def _json(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    return orjson.dumps(value).decode()


def _record_row(r: Record) -> tuple[Any, ...]:
    return (
        r.id,
        format_ts(r.started),
        format_ts(r.ended),
        r.duration_ms,
        r.ttft_ms,
        r.org_id,
        r.org,
        r.user_id,
        r.user,
        r.api_key_id,
        r.api_key_name,
        r.end_user,
        r.session,
        r.workflow,
        r.client,
        r.user_agent,
        r.source_ip,
        r.correlation_id,
        r.endpoint,
        r.provider,
        r.model_requested,
        r.model,
        int(r.stream),
        r.status_code,
        r.status,
        r.error_type,
        r.error_message,
        r.input_tokens,
        r.output_tokens,
        r.cache_read_tokens,
        r.cache_write_tokens,
        r.reasoning_tokens,
        r.cost_usd,
        orjson.dumps(r.tags).decode() if r.tags else "[]",
        orjson.dumps(r.meta).decode() if r.meta else "{}",
        r.last_user_prompt,
        orjson.dumps(
            [{"name": t.name, "call_id": t.call_id, "arguments": t.arguments} for t in r.tool_calls]
        ).decode()
        if r.tool_calls
        else "[]",
        orjson.dumps(
            [
                {
                    "provider": a.provider,
                    "model": a.model,
                    "status_code": a.status_code,
                    "reason": a.reason,
                    "duration_ms": a.duration_ms,
                }
                for a in r.attempts
            ]
        ).decode(),
    )


def _facts(r: Record) -> rollups.Facts:
    return rollups.facts(
        r.started, r.duration_ms, r.ttft_ms, r.org_id, r.user_id, r.api_key_id, r.provider,
        r.model_requested, r.model, r.status, r.client, r.workflow, r.end_user, r.tags,
        (r.input_tokens, r.output_tokens, r.cache_read_tokens, r.cache_write_tokens,
         r.reasoning_tokens),
        r.cost_usd,
    )  # fmt: skip


# (row, facet rows, body row) as JSON text, and what the record adds to the usage rollups
_Prepared = tuple[bytes, bytes | None, bytes | None, rollups.Facts, str]


def _to_dict(columns: Sequence[str], row: Sequence[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in zip(columns, row, strict=True):
        if name in _JSON_COLUMNS and value is not None:
            value = orjson.loads(value)
        elif name == "stream":
            value = bool(value)
        out[name] = value
    return out


def _keyset_source(
    scope: Scope,
    query: RequestQuery,
    join: str = "",
    driver: Driver | None = None,
    hi_id: str | None = None,
) -> tuple[str, list[object], str]:
    """``FROM`` text, its parameters and the id column to page on (``ORDER BY`` it ``DESC``)
    for the records below ``hi_id`` (None: from the newest), read through ``driver``
    (default: ``query.default_driver``; see ``RequestQuery.keyset``). ``join`` goes before the
    ``WHERE``."""
    return query.keyset(scope, driver or query.default_driver(scope), join, hi_id=hi_id)


def _newest_first(ids: list[str]) -> bool:
    return ids == sorted(ids, reverse=True)


def _body(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


class SQLiteStore(AlertsMixin, UpkeepMixin, Store):
    def __init__(self, path: str) -> None:
        self.path = path
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._write_lock = threading.Lock()
        self._writer = self._connect()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=10000")
        db.execute("PRAGMA foreign_keys=ON")
        rollups.register(db)
        return db

    def _reader(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = self._connect()
            db.execute("PRAGMA query_only=ON")
            self._local.db = db
            with self._readers_lock:
                self._readers.append(db)
        return db

    def migrate(self) -> list[str]:
        with self._write_lock:
            applied = apply_migrations(self._writer)
        if (
            "m004_rollups" in applied
            and self._reader().execute("SELECT 1 FROM requests LIMIT 1").fetchone()
        ):
            self.rebuild_rollups()
        return applied

    def close(self) -> None:
        with self._readers_lock:
            for db in self._readers:
                db.close()
            self._readers.clear()
        with self._write_lock:
            self._writer.close()

    # ---- request records -------------------------------------------------------------------

    def prepare(self, record: Record) -> _Prepared:
        """The record as JSON fragments of the batch statements' arrays, serialised here (on
        the request path, a few microseconds) so the writer thread barely needs the GIL."""
        rid, org, user = record.id, record.org_id, record.user_id
        facets = [("tag", t, rid, org, user) for t in record.tags]
        facets.extend((f"meta.{k}", v, rid, org, user) for k, v in record.meta.items())
        if record.model_requested:
            facets.append(("model", record.model_requested, rid, org, user))
        if record.model and record.model != record.model_requested:
            facets.append(("model", record.model, rid, org, user))
        body = None
        if record.request_body is not None or record.response_body is not None:
            body = orjson.dumps((rid, _json(record.request_body), _json(record.response_body)))
        return (
            without_nul(orjson.dumps(_record_row(record))),
            without_nul(orjson.dumps(facets)[1:-1]) if facets else None,
            body,
            _facts(record),
            rid,
        )

    def spool_encode(self, prepared: object) -> bytes:
        row, facets, body, facts, rid = cast(_Prepared, prepared)
        return orjson.dumps(
            [row.decode(), facets and facets.decode(), body and body.decode(), facts, rid]
        )

    def spool_decode(self, payload: bytes) -> _Prepared:
        row, facets, body, (key, scalars, lb, tb, end_user, tags), rid = orjson.loads(payload)
        facts = (tuple(key), tuple(scalars), lb, tb, end_user, tuple(tags))
        return row.encode(), facets and facets.encode(), body and body.encode(), facts, rid

    def insert_prepared(self, batch: Sequence[object]) -> None:
        prepared: Sequence[_Prepared] = batch  # type: ignore[assignment]
        # bound as text: SQLite 3.45+ would read a BLOB argument as binary JSONB
        rows = (b"[" + b",".join([p[0] for p in prepared]) + b"]").decode()
        facets = (b"[" + b",".join([p[1] for p in prepared if p[1]]) + b"]").decode()
        bodies = [p[2] for p in prepared if p[2] is not None]
        with self._write_lock:
            db = self._writer
            db.execute("BEGIN")
            try:
                # a record stored twice (a retried batch, say) must not count twice
                stored = {
                    row[0]
                    for row in db.execute(
                        "SELECT id FROM requests WHERE id IN (SELECT value FROM json_each(?))",
                        (orjson.dumps([p[4] for p in prepared]).decode(),),
                    )
                }
                fresh = {p[4]: p[3] for p in prepared if p[4] not in stored}
                db.execute(_INSERT_REQUESTS, (rows,))
                rollups.write(db, list(fresh.values()))
                db.execute(_INSERT_FACETS, (facets,))
                if bodies:
                    db.execute(_INSERT_BODIES, ((b"[" + b",".join(bodies) + b"]").decode(),))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def list_requests(
        self, scope: Scope, query: RequestQuery, limit: int, after_id: str | None
    ) -> Page:
        db = self._reader()
        driver = choose_driver(db, scope, query, after_id)
        count = count_requests(db, scope, query, driver)
        source, page_params, order = _keyset_source(scope, query, driver=driver, hi_id=after_id)
        rows = db.execute(
            f"SELECT {_SELECT} FROM {source} ORDER BY {order} DESC LIMIT ?",
            [*page_params, limit + 1],
        ).fetchall()
        results = [_to_dict(_LIST_COLUMNS, row) for row in rows[:limit]]
        next_id = results[-1]["id"] if len(rows) > limit else None
        return Page(count, results, next_id)

    def get_request(self, scope: Scope, request_id: str) -> dict[str, Any] | None:
        where, params = scope.clause()
        row = (
            self._reader()
            .execute(
                f"SELECT {_SELECT}, b.request_body, b.response_body FROM requests r"
                f" LEFT JOIN request_bodies b ON b.request_id = r.id WHERE r.id = ?"
                f"{and_where(where, 'AND')}",
                [request_id, *params],
            )
            .fetchone()
        )
        if row is None:
            return None
        out = _to_dict(_LIST_COLUMNS, row[:-2])
        out["request_body"] = _body(row[-2])
        out["response_body"] = _body(row[-1])
        return out

    def iter_requests(
        self, scope: Scope, query: RequestQuery, page_size: int = 1000
    ) -> Iterator[dict[str, Any]]:
        where, params = query.where(scope)
        db = self._reader()
        after: str | None = None
        while True:
            clause, args = where, list(params)
            if after is not None:
                clause = f"{clause} AND r.id < ?" if clause else "r.id < ?"
                args.append(after)
            rows = db.execute(
                f"SELECT {_SELECT}, b.request_body, b.response_body FROM requests r"
                f" LEFT JOIN request_bodies b ON b.request_id = r.id"
                f"{and_where(clause)} ORDER BY r.id DESC LIMIT ?",
                [*args, page_size],
            ).fetchall()
            for row in rows:
                out = _to_dict(_LIST_COLUMNS, row[:-2])
                out["request_body"] = _body(row[-2])
                out["response_body"] = _body(row[-1])
                yield out
            if len(rows) < page_size:
                return
            after = rows[-1][0]

    def export_pages(
        self,
        scope: Scope,
        query: RequestQuery,
        columns: Sequence[str],
        fmt: str,
        page_size: int = 5000,
        *,
        usd_rate: float = 1.0,
        currency: str = "USD",
    ) -> Iterator[bytes]:
        line, line_params, finish = export_select(columns, fmt, usd_rate, currency)
        bodies = bool(_BODIES & {*columns})
        join = " LEFT JOIN request_bodies b ON b.request_id = r.id" if bodies else ""
        driver = choose_driver(self._reader(), scope, query)
        # a small first page (rows can be large: long prompts, bodies), then pages sized from
        # the bytes seen so far to about _EXPORT_PAGE_BYTES
        size, after = min(page_size, 20 if bodies else 500), None
        while True:
            source, params, order = _keyset_source(scope, query, join, driver, after)
            page = (
                f"SELECT {order} AS id, {line} AS line FROM {source} ORDER BY {order} DESC LIMIT ?"
            )
            args = [*line_params, *params, size]
            # the reader of the thread running this step: each page may run on another thread
            db = self._reader()
            # the page as one value: SQLite builds it without holding the GIL, and Python
            # handles one object per page instead of one per record (a third faster)
            count, ids, chunk = db.execute(
                "SELECT count(*), group_concat(id, ','), CAST(group_concat(line, '') AS BLOB)"
                f" FROM ({page})",
                args,
            ).fetchone()
            if not count:
                return
            got = ids.split(",")
            if not _newest_first(got):  # SQLite does not promise group_concat's order
                rows = db.execute(f"SELECT line FROM ({page}) ORDER BY id DESC", args)
                chunk = "".join([row[0] for row in rows]).encode()
            yield finish(chunk) if finish else chunk
            if count < size:
                return
            after = min(got)
            size = max(1, min(page_size, count * _EXPORT_PAGE_BYTES // len(chunk)))

    # ---- identities --------------------------------------------------------------------------

    def identity_for_hash(self, key_hash: str) -> Identity | None:
        row = (
            self._reader()
            .execute(
                "SELECT k.id, k.name, u.id, u.name, o.id, o.name, k.role,"
                " k.revoked_at IS NOT NULL OR u.revoked_at IS NOT NULL OR o.revoked_at IS NOT NULL,"
                " k.budget_usd, k.budget_period, k.rpm, k.tpm,"
                " u.budget_usd, u.budget_period, u.rpm, u.tpm,"
                " o.budget_usd, o.budget_period, o.rpm, o.tpm"
                " FROM keys k JOIN users u ON u.id = k.user_id JOIN orgs o ON o.id = k.org_id"
                " WHERE k.key_hash = ?",
                (key_hash,),
            )
            .fetchone()
        )
        if row is None:
            return None
        key_id, key_name, user_id, user_name, org_id, org_name, role, revoked = row[:8]
        limits = tuple(
            ScopeLimits(scope, sid, name, *row[i : i + 4])
            for scope, sid, name, i in (
                ("key", key_id, key_name, 8),
                ("user", user_id, user_name, 12),
                ("org", org_id, org_name, 16),
            )
            if any(v is not None for v in (row[i], row[i + 2], row[i + 3]))
        )
        return Identity(
            key_id, key_name, user_id, user_name, org_id, org_name, role, bool(revoked), limits
        )

    # ---- billing ---------------------------------------------------------------------------

    _SPEND_COLUMN = {"key": "api_key_id", "user": "user_id", "org": "org_id"}

    def spend(
        self, scope: str, scope_id: str, start: float, end: float, through_id: str | None = None
    ) -> float:
        column = self._SPEND_COLUMN[scope]
        end = min(end, 253402300799.0)
        until = " AND id <= ?" if through_id else ""
        extra = (through_id,) if through_id else ()
        db = self._reader()
        rolled = 0.0
        records_from = start
        # Records older than the oldest one kept may have been purged (§T1); their cost lives on
        # in the usage rollups, which are read for the hours up to the oldest kept record's.
        first = db.execute(f"SELECT min(id) FROM requests WHERE {column} = ?", (scope_id,))
        first_id = first.fetchone()[0]
        cut = end if first_id is None else (ULID.from_str(first_id).timestamp // 3600 + 1) * 3600
        if cut > start and (through_id is None or through_id >= _ulid_floor(min(cut, end))):
            records_from = min(cut, end)
            table = "rollup_base" if scope == "key" else "rollup_user"
            nano = db.execute(
                f"SELECT COALESCE(SUM(cost_nusd), 0) FROM {table} WHERE grain = 'h'"
                f" AND bucket >= ? AND bucket < ? AND {column} = ?",
                (start, records_from, scope_id),
            ).fetchone()[0]
            rolled = int(nano) / 1e9
        lo, hi = _ulid_floor(records_from), _ulid_floor(end)
        charged = db.execute(
            f"SELECT COALESCE(SUM(cost_usd), 0) FROM requests"
            f" WHERE {column} = ? AND id >= ? AND id < ?{until}",
            (scope_id, lo, hi, *extra),
        ).fetchone()[0]
        adjusted = db.execute(
            "SELECT COALESCE(SUM(amount_usd), 0) FROM billing_adjustments"
            f" WHERE scope = ? AND scope_id = ? AND id >= ? AND id < ?{until}",
            (scope, scope_id, _ulid_floor(start), hi, *extra),
        ).fetchone()[0]
        return rolled + float(charged) + float(adjusted)

    def add_adjustment(
        self, scope: str, scope_id: str, org_id: str, amount_usd: float, reason: str, by: str
    ) -> dict[str, Any]:
        adj_id = new_id()
        row = (adj_id, scope, scope_id, org_id, amount_usd, reason, _now(), by)
        with self._transaction() as db:
            db.execute("INSERT INTO billing_adjustments VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
        keys = ("id", "scope", "scope_id", "org_id", "amount_usd", "reason", "created_at", "by")
        return dict(zip(keys, row, strict=True))

    def list_transactions(
        self, scope: Scope, filters: dict[str, str], limit: int, after_id: str | None
    ) -> Page:
        """Charges (requests with a cost) and adjustments, newest first, in the caller's scope;
        ``filters`` may narrow to one ``scope`` (key | user | org) and ``scope_id``."""
        where, params = scope.clause()
        conds = [where] if where else []
        adj_conds: list[str] = []
        adj_params: list[object] = []
        if scope.role == "admin":
            adj_conds.append("a.org_id = ?")
            adj_params.append(scope.org_id)
        elif scope.role == "member":
            adj_conds.append(
                "(a.scope = 'key' AND a.scope_id IN (SELECT id FROM keys WHERE user_id = ?))"
                " OR (a.scope = 'user' AND a.scope_id = ?)"
            )
            adj_params.extend([scope.user_id, scope.user_id])
        if filters.get("scope"):
            conds.append(f"r.{self._SPEND_COLUMN[filters['scope']]} = ?")
            params = [*params, filters["scope_id"]]
            adj_conds.append("a.scope = ? AND a.scope_id = ?")
            adj_params.extend([filters["scope"], filters["scope_id"]])
        if after_id:
            conds.append("r.id < ?")
            params = [*params, after_id]
            adj_conds.append("a.id < ?")
            adj_params.append(after_id)
        charge_where = " AND ".join(["r.cost_usd IS NOT NULL", "r.cost_usd != 0", *conds])
        adj_where = " AND ".join(f"({c})" for c in adj_conds) or "1=1"
        rows = (
            self._reader()
            .execute(
                "SELECT * FROM ("
                " SELECT r.id AS id, 'charge' AS type, r.id AS request_id, r.started_at AS at,"
                " r.cost_usd AS amount_usd, r.api_key_id, r.user_id, r.org_id, r.model,"
                " NULL AS reason"
                f" FROM requests r WHERE {charge_where}"
                " UNION ALL"
                " SELECT a.id, 'adjustment', NULL, a.created_at, a.amount_usd,"
                " CASE a.scope WHEN 'key' THEN a.scope_id END,"
                " CASE a.scope WHEN 'user' THEN a.scope_id END, a.org_id, NULL, a.reason"
                f" FROM billing_adjustments a WHERE {adj_where}"
                ") AS t ORDER BY id DESC LIMIT ?",
                [*params, *adj_params, limit + 1],
            )
            .fetchall()
        )
        keys = ("id", "type", "request_id", "at", "amount_usd", "api_key_id", "user_id",
                "org_id", "model", "reason")  # fmt: skip
        results = [dict(zip(keys, row, strict=True)) for row in rows[:limit]]
        return Page(len(results), results, results[-1]["id"] if len(rows) > limit else None)

    def keys_version(self) -> int:
        row = (
            self._reader()
            .execute("SELECT version FROM settings_version WHERE name = 'keys'")
            .fetchone()
        )
        return int(row[0]) if row else 0

    def _bump(self, db: sqlite3.Connection) -> None:
        db.execute("UPDATE settings_version SET version = version + 1 WHERE name = 'keys'")

    def _ensure_org(self, db: sqlite3.Connection, name: str) -> str:
        row = db.execute("SELECT id FROM orgs WHERE name = ?", (name,)).fetchone()
        if row:
            return str(row[0])
        # another node may make it at the same moment (PostgreSQL): theirs wins, ours is dropped
        db.execute(
            "INSERT INTO orgs (id, name, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            ("org_" + new_id(), name, _now()),
        )
        return str(db.execute("SELECT id FROM orgs WHERE name = ?", (name,)).fetchone()[0])

    def _ensure_user(self, db: sqlite3.Connection, org_id: str, name: str) -> str:
        row = db.execute(
            "SELECT id FROM users WHERE org_id = ? AND name = ?", (org_id, name)
        ).fetchone()
        if row:
            return str(row[0])
        db.execute(
            "INSERT INTO users (id, org_id, name, created_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            ("usr_" + new_id(), org_id, name, _now()),
        )
        sql = "SELECT id FROM users WHERE org_id = ? AND name = ?"
        return str(db.execute(sql, (org_id, name)).fetchone()[0])

    def _transaction(self) -> _Tx:
        return _Tx(self)

    def ensure_key(
        self, *, key_id: str, name: str, key_hash: str, user: str, org: str, role: str
    ) -> None:
        with self._transaction() as db:
            org_id = self._ensure_org(db, org)
            user_id = self._ensure_user(db, org_id, user)
            db.execute(
                "INSERT INTO keys (id, name, key_hash, key_prefix, user_id, org_id, role,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
                " key_hash = excluded.key_hash, role = excluded.role, revoked_at = NULL",
                (key_id, name, key_hash, "gw-…", user_id, org_id, role, _now()),
            )
            self._bump(db)

    def create_key(self, fields: dict[str, Any], key_hash: str, key_prefix: str) -> dict[str, Any]:
        key_id = "key_" + new_id()
        with self._transaction() as db:
            org_id = self._ensure_org(db, fields["org"])
            user_id = self._ensure_user(db, org_id, fields["user"])
            revoked = db.execute(
                "SELECT o.revoked_at IS NOT NULL, u.revoked_at IS NOT NULL FROM users u"
                " JOIN orgs o ON o.id = u.org_id WHERE u.id = ?",
                (user_id,),
            ).fetchone()
            if revoked[0] or revoked[1]:
                which = "organization" if revoked[0] else "user"
                raise StoreError(f"that {which} is revoked; a key for it could never be used")
            db.execute(
                "INSERT INTO keys (id, name, key_hash, key_prefix, user_id, org_id, role,"
                " budget_usd, budget_period, rpm, tpm, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key_id,
                    fields.get("name") or fields["user"],
                    key_hash,
                    key_prefix,
                    user_id,
                    org_id,
                    fields.get("role") or "member",
                    fields.get("budget_usd"),
                    fields.get("budget_period") or "month",
                    fields.get("rpm"),
                    fields.get("tpm"),
                    _now(),
                ),
            )
            self._bump(db)
            return self._entity(db, "keys", key_id)

    def create_entity(self, kind: str, fields: dict[str, Any]) -> dict[str, Any]:
        with self._transaction() as db:
            if kind == "orgs":
                if db.execute("SELECT 1 FROM orgs WHERE name = ?", (fields["name"],)).fetchone():
                    raise StoreError(f"an organization named {fields['name']!r} exists")
                entity_id = self._ensure_org(db, fields["name"])
            elif kind == "users":
                org_id = self._ensure_org(db, fields["org"])
                if db.execute(
                    "SELECT 1 FROM users WHERE org_id = ? AND name = ?", (org_id, fields["name"])
                ).fetchone():
                    raise StoreError(f"a user named {fields['name']!r} exists in that org")
                entity_id = self._ensure_user(db, org_id, fields["name"])
            else:
                raise StoreError(f"cannot create {kind} this way")
            updates = {k: v for k, v in fields.items() if k in _UPDATABLE[kind] and v is not None}
            self._update(db, kind, entity_id, updates)
            self._bump(db)
            return self._entity(db, kind, entity_id)

    def _entity(self, db: sqlite3.Connection, kind: str, entity_id: str) -> dict[str, Any]:
        cur = db.execute(f"{_ENTITY_SELECT[kind]} WHERE {_ALIAS[kind]}.id = ?", (entity_id,))
        row = cur.fetchone()
        if row is None:
            raise StoreError(f"{kind} {entity_id} not found")
        return self._entity_dict(cur, row)

    @staticmethod
    def _entity_dict(cur: sqlite3.Cursor, row: Sequence[Any]) -> dict[str, Any]:
        out = {d[0]: v for d, v in zip(cur.description, row, strict=True)}
        out["revoked"] = out["revoked_at"] is not None
        return out

    def _scope_clause(self, kind: str, scope: Scope) -> tuple[str, list[object]]:
        if scope.role == "owner":
            return "1=1", []
        by_org, by_user = _ENTITY_SCOPE[kind]
        if scope.role == "admin":
            return by_org, [scope.org_id]
        return by_user, [scope.user_id if kind != "orgs" else scope.org_id]

    def list_entities(self, kind: str, scope: Scope, limit: int, after_id: str | None) -> Page:
        where, params = self._scope_clause(kind, scope)
        alias = _ALIAS[kind]
        db = self._reader()
        count = db.execute(
            f"SELECT count(*) FROM ({_ENTITY_SELECT[kind]} WHERE {where}) AS e", params
        ).fetchone()[0]
        if after_id:
            where += f" AND {alias}.id < ?"
            params = [*params, after_id]
        cur = db.execute(
            f"{_ENTITY_SELECT[kind]} WHERE {where} ORDER BY {alias}.id DESC LIMIT ?",
            [*params, limit + 1],
        )
        rows = cur.fetchall()
        results = [self._entity_dict(cur, row) for row in rows[:limit]]
        return Page(count, results, results[-1]["id"] if len(rows) > limit else None)

    def get_entity(self, kind: str, scope: Scope, entity_id: str) -> dict[str, Any] | None:
        where, params = self._scope_clause(kind, scope)
        cur = self._reader().execute(
            f"{_ENTITY_SELECT[kind]} WHERE {_ALIAS[kind]}.id = ? AND {where}",
            [entity_id, *params],
        )
        row = cur.fetchone()
        return None if row is None else self._entity_dict(cur, row)

    def _update(
        self, db: sqlite3.Connection, kind: str, entity_id: str, fields: dict[str, Any]
    ) -> None:
        bad = set(fields) - _UPDATABLE[kind]
        if bad:
            raise StoreError(f"cannot change {', '.join(sorted(bad))} of {kind}")
        if fields:
            sets = ", ".join(f"{k} = ?" for k in fields)
            db.execute(
                f"UPDATE {_ENTITY_TABLES[kind]} SET {sets} WHERE id = ?",
                [*fields.values(), entity_id],
            )

    def update_entity(
        self, kind: str, scope: Scope, entity_id: str, fields: dict[str, Any]
    ) -> dict[str, Any] | None:
        if self.get_entity(kind, scope, entity_id) is None:
            return None
        with self._transaction() as db:
            self._update(db, kind, entity_id, fields)
            self._bump(db)
            return self._entity(db, kind, entity_id)

    def revoke_entity(self, kind: str, scope: Scope, entity_id: str) -> dict[str, Any] | None:
        if self.get_entity(kind, scope, entity_id) is None:
            return None
        with self._transaction() as db:
            db.execute(
                f"UPDATE {_ENTITY_TABLES[kind]} SET revoked_at = ? WHERE id = ?"
                " AND revoked_at IS NULL",
                (_now(), entity_id),
            )
            self._bump(db)
            return self._entity(db, kind, entity_id)


class _Tx:
    """``with store._transaction() as db:`` — the write connection, in one transaction."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store

    def __enter__(self) -> sqlite3.Connection:
        self.store._write_lock.acquire()
        try:
            self.store._writer.execute("BEGIN IMMEDIATE")
        except BaseException as exc:
            self.store._write_lock.release()
            if isinstance(exc, sqlite3.OperationalError):
                raise StoreUnavailable(f"the database is not available: {exc}") from exc
            raise
        return self.store._writer

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        db = self.store._writer
        try:
            if exc_type is None:
                try:
                    db.execute("COMMIT")
                except sqlite3.OperationalError as err:
                    db.execute("ROLLBACK")
                    raise StoreUnavailable(f"the database is not available: {err}") from err
            else:
                db.execute("ROLLBACK")
        finally:
            self.store._write_lock.release()

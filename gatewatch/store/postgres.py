"""The PostgreSQL engine: for teams and for several gateway nodes sharing one database.

It runs the SQLite engine's queries (translated, see ``_pg.py``) on PostgreSQL, so both answer
every question the same way and pass the same conformance tests. What differs is what a server
database does better or needs:

* connections: reads borrow one from a pool (``database_pool_size``) per statement; writes go
  through one connection per process, in explicit transactions;
* batched inserts: a batch of records is one ``INSERT … SELECT`` over a JSON array (PostgreSQL
  parses it, as SQLite does), with the same prepared records and spool format as SQLite;
* the request tables are partitioned by month of the id (a ULID, so by start time); the
  retention purge drops the months that are wholly expired instead of deleting their rows;
* migrations run under an advisory lock, so nodes that start at once apply each one once;
* ``?schema=name`` in the URL keeps gatewatch's tables in their own schema (made if missing).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import psycopg
from psycopg_pool import ConnectionPool

from gatewatch.store import rollups
from gatewatch.store._pg import FUNCTIONS, PARTITIONED, Conn, PooledReader
from gatewatch.store._sqlite_export import _JSON, _PLAIN_TEXT, EXPORT_COLUMNS
from gatewatch.store.base import StoreUnavailable
from gatewatch.store.migrations import apply_migrations
from gatewatch.store.query import RequestQuery, Scope
from gatewatch.store.rollups import ulid_floor
from gatewatch.store.sqlite import _BODIES, _EXPORT_PAGE_BYTES, SQLiteStore, _keyset_source

__all__ = ["PostgresStore"]

_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_CASTS = {"double precision": "::float8", "bigint": "::int8"}
_BATCH_COLUMNS = {
    "requests": None,  # the record's columns, in the prepared row's order (sqlite._RECORD_COLUMNS)
    "request_facets": ("name", "value", "request_id", "org_id", "user_id"),
    "request_bodies": ("request_id", "request_body", "response_body"),
}


def split_url(url: str) -> tuple[str, str | None]:
    """The libpq connection URL and the schema named by ``?schema=`` (None: the default)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), None)
    if schema is not None and not _SCHEMA.match(schema):
        raise ValueError(f"schema {schema!r} is not a plain lower-case SQL name")
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    return urlunsplit(parts._replace(query=rest)), schema


def _month(ts: float) -> tuple[int, int]:
    d = datetime.fromtimestamp(ts, UTC)
    return d.year, d.month


def _month_bounds(year: int, month: int) -> tuple[float, float]:
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return start.timestamp(), end.timestamp()


def _sqlite_real(x: float) -> str:
    """A REAL as SQLite writes it (15 significant digits, always with a point): exports read
    the same from either engine."""
    s = f"{x:.15g}"
    if "e" in s:
        mantissa, exp = s.split("e")
        return f"{mantissa if '.' in mantissa else mantissa + '.0'}e{exp}"
    return s if "." in s or "n" in s else s + ".0"


class PostgresStore(SQLiteStore):
    """``database: postgresql://user@host/db[?schema=name]``."""

    _CONFLICT = (psycopg.IntegrityError,)

    def __init__(self, url: str, pool_size: int = 10) -> None:  # no SQLite file: no super()
        self.conninfo, self.schema = split_url(url)
        options = {"options": f"-c search_path={self.schema}"} if self.schema else {}
        self._connect_kwargs: dict[str, Any] = {
            "autocommit": True,
            "application_name": f"gatewatch:{self.schema or 'public'}",  # for the DBA
            **options,
        }
        self._write_lock = threading.Lock()
        self._writer_conn: Conn | None = None
        self._months: set[tuple[int, int]] = set()  # months whose partitions exist
        self._new_months: set[tuple[int, int]] = set()  # made in the open transaction
        self._insert_sql: dict[str, str] = {}
        if self.schema:
            try:
                with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=10) as conn:
                    conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            except psycopg.OperationalError as exc:
                raise StoreUnavailable(f"the database is not available: {exc}") from exc
        self._pool: ConnectionPool[Any] = ConnectionPool(
            self.conninfo,
            min_size=1,
            max_size=max(1, pool_size),
            kwargs=self._connect_kwargs,
            open=True,
            name="gatewatch-reads",
        )
        self._reads = PooledReader(self._pool)

    # ---- connections -------------------------------------------------------------------------

    def _reader(self) -> Any:
        return self._reads

    def _write_conn(self) -> Conn:
        if self._writer_conn is None or self._writer_conn.broken:
            try:
                conn = psycopg.connect(self.conninfo, **self._connect_kwargs)
            except psycopg.OperationalError as exc:
                raise StoreUnavailable(f"the database is not available: {exc}") from exc
            self._writer_conn = Conn(conn)
        return self._writer_conn

    def _transaction(self) -> Any:
        return _PgTx(self)

    def migrate(self) -> list[str]:
        with self._write_lock:
            db = self._write_conn()
            key = f"gatewatch-migrate:{self.schema or ''}"
            db.execute("SELECT pg_advisory_lock(hashtext(?))", (key,))
            try:
                db.execute("BEGIN")
                db.conn.execute(FUNCTIONS.encode())
                db.execute("COMMIT")
                applied = apply_migrations(cast(Any, db), explicit=True)
            except BaseException:
                if db.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    db.execute("ROLLBACK")
                raise
            finally:
                db.execute("SELECT pg_advisory_unlock(hashtext(?))", (key,))
        now = datetime.now(UTC).timestamp()
        with self._transaction() as tx:  # this month's and next month's partitions, ready
            if tx.execute("SELECT to_regclass('requests')").fetchone()[0] is not None:
                self._ensure_partitions(tx, now, now + 32 * 86400)
        if (
            "m004_rollups" in applied
            and self._reads.execute("SELECT 1 FROM requests LIMIT 1").fetchone()
        ):
            self.rebuild_rollups()
        return applied

    def close(self) -> None:
        self._pool.close()
        with self._write_lock:
            if self._writer_conn is not None:
                self._writer_conn.close()
                self._writer_conn = None

    # ---- request records ---------------------------------------------------------------------

    def _batch_insert(self, db: Conn, table: str) -> str:
        """``INSERT … SELECT`` of a table's rows from one JSON array of arrays, cast to the
        columns' types (read from the catalog once)."""
        sql = self._insert_sql.get(table)
        if sql is None:
            from gatewatch.store.sqlite import _RECORD_COLUMNS

            columns = _BATCH_COLUMNS[table] or _RECORD_COLUMNS
            types = dict(
                db.execute(
                    "SELECT column_name, data_type FROM information_schema.columns"
                    " WHERE table_schema = current_schema() AND table_name = ?",
                    (table,),
                ).fetchall()
            )
            picks = ", ".join(
                f"(value ->> {i}){_CASTS.get(types[c], '')}" for i, c in enumerate(columns)
            )
            names = ", ".join(f'"{c}"' for c in columns)
            sql = self._insert_sql[table] = (
                f"INSERT INTO {table} ({names}) SELECT {picks}"
                " FROM jsonb_array_elements(?::jsonb) ON CONFLICT DO NOTHING"
            )
        return sql

    def _ensure_partitions(self, db: Conn, lo: float, hi: float) -> None:
        """Monthly partitions of the request tables for records started in [lo, hi]."""
        year, month = _month(lo)
        wanted = []
        while (year, month) <= _month(hi):
            if (year, month) not in self._months:
                wanted.append((year, month))
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        if not wanted:
            return
        db.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (f"gatewatch-parts:{self.schema}",))
        for year, month in wanted:
            start, end = _month_bounds(year, month)
            for table in PARTITIONED:
                try:
                    with db.conn.transaction():  # a savepoint: a clash leaves the batch whole
                        db.conn.execute(
                            f"CREATE TABLE IF NOT EXISTS {table}_{year:04d}{month:02d}"
                            f" PARTITION OF {table} FOR VALUES FROM ('{ulid_floor(start)}')"
                            f" TO ('{ulid_floor(end)}')"
                        )
                except psycopg.errors.CheckViolation:
                    pass  # rows of that month already sit in the default partition: they stay
            self._new_months.add((year, month))  # known once the transaction commits

    def insert_prepared(self, batch: Sequence[object]) -> None:
        prepared: Sequence[Any] = batch
        ids = [p[4] for p in prepared]
        rows = (b"[" + b",".join([p[0] for p in prepared]) + b"]").decode()
        facets = [p[1] for p in prepared if p[1]]
        bodies = [p[2] for p in prepared if p[2] is not None]
        hours = [p[3][0][0] for p in prepared]  # each record's start hour (rollups.facts)
        with self._transaction() as db:
            # as SQLite's synchronous=NORMAL: the commit does not wait for the disk; a crash
            # of the database server may lose the last few hundred milliseconds of records
            db.execute("SET LOCAL synchronous_commit TO OFF")
            self._ensure_partitions(db, min(hours), max(hours))
            stored = {
                row[0] for row in db.execute("SELECT id FROM requests WHERE id = ANY(?)", (ids,))
            }
            fresh = [p[3] for p in prepared if p[4] not in stored]
            db.execute(self._batch_insert(db, "requests"), (rows,))
            rollups.write(cast(Any, db), fresh)
            if facets:
                text = (b"[" + b",".join(facets) + b"]").decode()
                db.execute(self._batch_insert(db, "request_facets"), (text,))
            if bodies:
                text = (b"[" + b",".join(bodies) + b"]").decode()
                db.execute(self._batch_insert(db, "request_bodies"), (text,))

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
        """Pages as the SQLite engine writes them, the lines built in Python."""
        unknown = [c for c in columns if c not in EXPORT_COLUMNS]
        if unknown:
            raise ValueError(f"unknown export columns: {', '.join(unknown)}")
        if fmt not in ("csv", "jsonl"):
            raise ValueError(f"unknown export format {fmt!r}")
        stored = [c for c in columns if c not in ("cost", "currency")]
        picks = ", ".join(["r.cost_usd"] + [f"b.{c}" if c in _BODIES else f"r.{c}" for c in stored])
        join = " LEFT JOIN request_bodies b ON b.request_id = r.id" if _BODIES & {*columns} else ""
        source, params, order = _keyset_source(scope, query, join)
        paged = f"{source} {'AND' if ' WHERE ' in source else 'WHERE'} {order} < ?"
        line = _csv_line if fmt == "csv" else _json_line
        # a small first page, then pages sized to about _EXPORT_PAGE_BYTES, as on SQLite
        size, after = min(page_size, 20 if join else 500), None
        while True:
            rows = self._reads.execute(
                f"SELECT {order}, {picks} FROM {paged if after else source}"
                f" ORDER BY {order} DESC LIMIT ?",
                [*params, *([after] if after else []), size],
            ).fetchall()
            if not rows:
                return
            out = []
            for row in rows:
                values = dict(zip(stored, row[2:], strict=True))
                if "cost" in columns:
                    values["cost"] = None if row[1] is None else round(row[1] * usd_rate, 10)
                values["currency"] = currency
                out.append(line(columns, values))
            chunk = "".join(out).encode()
            yield chunk
            if len(rows) < size:
                return
            after = rows[-1][0]
            size = max(1, min(page_size, len(rows) * _EXPORT_PAGE_BYTES // len(chunk)))

    # ---- retention (§T1) ---------------------------------------------------------------------

    def purge_batch(
        self,
        kind: str,
        before: float,
        limit: int,
        org_id: str | None = None,
        exclude: Sequence[str] = (),
        after: str | None = None,
    ) -> tuple[int, str | None]:
        """Whole months that have expired go at once (their partitions dropped); the rest of
        the way, and any purge that keeps some organization's records, row by row."""
        dropped, last = 0, None
        if kind == "records" and org_id is None and not exclude:
            dropped, last = self._drop_expired_months(before)
        n, nxt = super().purge_batch(kind, before, limit, org_id, exclude, after or last)
        return dropped + n, nxt if n else last

    def _drop_expired_months(self, before: float) -> tuple[int, str | None]:
        rows = self._reads.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " JOIN pg_class p ON p.oid = i.inhparent"
            " WHERE p.relname = 'requests' AND p.relnamespace = current_schema()::regnamespace"
            " ORDER BY c.relname"
        ).fetchall()
        total, last = 0, None
        for (name,) in rows:
            m = re.fullmatch(r"requests_(\d{4})(\d{2})", name)
            if m is None:
                continue
            year, month = int(m.group(1)), int(m.group(2))
            if _month_bounds(year, month)[1] > before:
                break
            with self._transaction() as db:
                n, hi = db.execute(f"SELECT count(*), max(id) FROM {name}").fetchone()
                db.execute(
                    "UPDATE upkeep SET value = max(value, ?) WHERE name = 'rollups_exact_from'",
                    (-(-int(before) // 3600) * 3600,),
                )
                for table in PARTITIONED:
                    db.execute(f"DROP TABLE IF EXISTS {table}_{year:04d}{month:02d}")
            self._months.discard((year, month))
            total += int(n)
            last = hi or last
        return total, last


def _csv_cell(name: str, value: Any) -> str:
    if value is None:
        return ""
    if name == "stream":
        return "true" if value else "false"
    if isinstance(value, float):
        return _sqlite_real(value)
    if isinstance(value, int) or name in _PLAIN_TEXT:
        return str(value)
    return '"' + str(value).replace('"', '""') + '"'


def _csv_line(columns: Sequence[str], values: dict[str, Any]) -> str:
    return ",".join([_csv_cell(c, values[c]) for c in columns]) + "\r\n"


def _json_value(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name == "stream":
        return bool(value)
    if name in _JSON:
        return orjson.Fragment(value)
    if name in _BODIES:
        try:
            orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
        return orjson.Fragment(value)
    return value


def _json_line(columns: Sequence[str], values: dict[str, Any]) -> str:
    return orjson.dumps({c: _json_value(c, values[c]) for c in columns}).decode() + "\n"


class _PgTx:
    """``with store._transaction() as db:`` — the process's write connection, in one
    transaction; a lost or refused connection is ``StoreUnavailable`` (the next one reconnects)."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store
        self.db: Conn | None = None

    def __enter__(self) -> Conn:
        self.store._write_lock.acquire()
        self.store._new_months.clear()
        try:
            self.db = self.store._write_conn()
            self.db.execute("BEGIN")
        except BaseException as exc:
            self.store._write_lock.release()
            if isinstance(exc, psycopg.OperationalError):
                raise StoreUnavailable(f"the database is not available: {exc}") from exc
            raise
        return self.db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        db = cast(Conn, self.db)
        try:
            if exc_type is None:
                try:
                    db.execute("COMMIT")
                except psycopg.OperationalError as err:
                    raise StoreUnavailable(f"the database is not available: {err}") from err
                self.store._months |= self.store._new_months
                return
            if not db.broken:
                try:
                    db.execute("ROLLBACK")
                except psycopg.Error:
                    db.close()
            if isinstance(exc, psycopg.OperationalError):
                raise StoreUnavailable(f"the database is not available: {exc}") from exc
        finally:
            self.store._write_lock.release()

"""``gatewatch migrate --from URL --to URL``: copy a gatewatch database into another one, of
either engine (SQLite → PostgreSQL is the move teams make), and check the copy.

Every table is copied as stored, in primary-key order, a batch per transaction: identities with
their key hashes, records with their facets and bodies, billing adjustments, the usage rollups
(they outlive purged records, so they are copied, not rebuilt), alerts. ``settings_version`` and
``upkeep`` keep the larger value of each name; leases and ``_migrations`` belong to the target.

Inserts skip rows the target has (``ON CONFLICT DO NOTHING``) and each table starts after the
largest key the target holds, so a run that was stopped (Ctrl-C, a kill) continues where it
left off. The source must not change meanwhile: stop the gateway first.
"""

from __future__ import annotations

import math
import re
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ulid import ULID

from gatewatch.store.base import StoreUnavailable
from gatewatch.store.rollups import CUBOIDS
from gatewatch.store.sqlite import SQLiteStore

__all__ = ["NEW_TARGET", "Check", "Database", "MigrateError", "Table", "copy_tables", "errors",
           "open_database", "prepare", "redact", "verify"]  # fmt: skip

_SKIP = {"leases", "_migrations"}
_MERGED = {"settings_version": "version", "upkeep": "value"}  # per name, the larger value wins
_FIRST = ("orgs", "users", "keys")  # what foreign keys point at goes first
_SUMS: dict[str, tuple[str, ...]] = {
    "requests": ("cost_usd", "input_tokens", "output_tokens"),
    "billing_adjustments": ("amount_usd",),
    **{c.table: ("requests", "cost_nusd") for c in CUBOIDS},
}
_BATCH_BYTES = 16 << 20  # a batch of large rows (bodies) is cut to about this much
_ULID = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$")
_CATALOG = {  # the tables, a table's columns, its primary key's columns
    "sqlite": (
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        "SELECT name FROM pragma_table_info(?) ORDER BY cid",
        "SELECT name FROM pragma_table_info(?) WHERE pk > 0 ORDER BY pk",
    ),
    "postgresql": (
        "SELECT relname FROM pg_class WHERE relnamespace = current_schema()::regnamespace"
        " AND relkind IN ('r', 'p') AND NOT relispartition",
        "SELECT column_name FROM information_schema.columns WHERE table_schema ="
        " current_schema() AND table_name = ? ORDER BY ordinal_position",
        "SELECT a.attname FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid"
        " CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)"
        " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum WHERE i.indisprimary"
        " AND c.relname = ? AND c.relnamespace = current_schema()::regnamespace ORDER BY k.n",
    ),
}
NEW_TARGET = "the target must be a new database (or schema), or one an earlier run filled"


class MigrateError(Exception):
    """What went wrong, worded for the user."""


def redact(text: str, *urls: str) -> str:
    """``text`` without a database password: ``user:password@`` and ``password=`` in URLs,
    and the passwords of ``urls`` wherever they appear."""
    for url in urls:
        try:
            password = urlsplit(url).password
        except ValueError:
            password = None
        for secret in {password, unquote(password or "")} - {None, ""}:
            text = text.replace(str(secret), "***")
    text = re.sub(r"://([^:/@\s]*):[^@\s]*@", r"://\1:***@", text)
    return re.sub(r"(password=)[^&\s]*", r"\1***", text)


def errors() -> tuple[type[Exception], ...]:
    """What opening or copying a database raises that the user should read as a message."""
    out: list[type[Exception]] = [MigrateError, StoreUnavailable, sqlite3.Error, OSError]
    try:
        import psycopg

        out.append(psycopg.Error)
    except ImportError:
        pass
    return tuple(out)


@dataclass
class Database:
    """One side of the move: its store (the engine's connections) and what the copy needs."""

    url: str  # redacted: safe to print
    engine: str  # sqlite | postgresql
    store: SQLiteStore  # a PostgresStore is one too
    ident: object  # equal for two URLs that name the same database
    partitioned: dict[str, str] = field(default_factory=dict)  # table → partition key column
    ensure_partitions: Callable[[Any, float, float], None] | None = None

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(self.store._reader().execute(sql, params).fetchall())

    def tables(self) -> list[str]:
        return sorted(row[0] for row in self.read(_CATALOG[self.engine][0]))

    def columns(self, table: str, key: bool = False) -> list[str]:
        """The table's columns, or (``key``) those of its primary key, in order."""
        return [row[0] for row in self.read(_CATALOG[self.engine][1 + key], (table,))]

    def close(self) -> None:
        self.store.close()


def open_database(url: str, option: str) -> Database:
    """The database ``url`` names; ``option`` (``--from`` or ``--to``) words the errors. The
    source must hold a gatewatch database; the target is made if missing."""
    shown = redact(url, url)
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if not path or path == ":memory:":
            raise MigrateError(f"{option}: {shown} names no file (sqlite:///path/to/file.db)")
        if option == "--from" and not Path(path).is_file():
            raise MigrateError(f"{option}: {path} does not exist")
        try:
            db = Database(shown, "sqlite", SQLiteStore(path), Path(path).resolve())
        except sqlite3.Error as exc:
            raise MigrateError(f"{option}: {path}: {exc}") from exc
        if option == "--from" and not db.read(
            "SELECT 1 FROM sqlite_master WHERE name = '_migrations'"
        ):
            db.close()
            raise MigrateError(f"{option}: {path} is not a gatewatch database")
        return db
    if not url.startswith(("postgresql://", "postgres://")):
        raise MigrateError(
            f"{option}: unsupported database URL {shown!r} (use sqlite:///path/to/file.db"
            " or postgresql://user@host:5432/db[?schema=name])"
        )
    try:
        import psycopg

        from gatewatch.store._pg import PARTITIONED
        from gatewatch.store.postgres import PostgresStore, split_url
    except ImportError as exc:
        raise MigrateError(
            "PostgreSQL needs psycopg: pip install 'psycopg[binary]' psycopg-pool"
        ) from exc
    try:
        conninfo, schema = split_url(url)
        # connect once first: a clear error now, not a pool that waits; and a source schema
        # that does not exist must not be made (PostgresStore makes the schema it is given)
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
            name = f'"{schema}"._migrations' if schema else "_migrations"
            found = conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()
    except (ValueError, psycopg.Error) as exc:
        message = str(exc).strip().splitlines()[0]
        raise MigrateError(f"{option}: cannot open {shown}: {redact(message, url)}") from exc
    if option == "--from" and (found is None or found[0] is None):
        raise MigrateError(f"{option}: {shown} holds no gatewatch database")
    store = PostgresStore(url, pool_size=2)
    ident = (conninfo, schema)
    return Database(shown, "postgresql", store, ident, dict(PARTITIONED), store._ensure_partitions)


@dataclass
class Table:
    name: str
    key: list[str]
    columns: list[str]
    total: int  # rows in the source
    done: int  # rows in the target before this run
    merged: str | None = None  # the value column of a table merged by name (larger wins)


def prepare(source: Database, target: Database) -> tuple[list[str], list[Table]]:
    """Bring both schemas up to date, then list what to copy: (the source's migrations applied
    now, the tables in copying order with their row counts)."""
    if source.ident == target.ident:
        raise MigrateError("--from and --to name the same database")
    applied = source.store.migrate()
    target.store.migrate()
    theirs = set(target.tables())
    names = [t for t in source.tables() if t not in _SKIP]
    names.sort(key=lambda t: (_FIRST.index(t) if t in _FIRST else len(_FIRST), t))
    out = []
    for name in names:
        columns, key = source.columns(name), source.columns(name, key=True)
        if name not in theirs or set(columns) - set(target.columns(name)):
            raise MigrateError(f"{name}: the target's schema differs; is it a newer gatewatch's?")
        if not key:
            raise MigrateError(f"{name}: the table has no primary key to copy it in order")
        (total,) = source.read(f"SELECT count(*) FROM {name}")[0]
        (done,) = target.read(f"SELECT count(*) FROM {name}")[0]
        out.append(Table(name, key, columns, int(total), int(done), _MERGED.get(name)))
    return applied, out


def copy_tables(
    source: Database, target: Database, tables: Sequence[Table], batch: int,
    progress: Callable[[Table, int, bool], None],
) -> int:  # fmt: skip
    """Copy what the target lacks of every table, and return how many rows that was;
    ``progress(table, rows, finished)`` after each batch and once a table is done."""
    total = 0
    for table in tables:
        if table.merged:
            total += _merge(source, target, table)
        else:
            total += _copy(source, target, table, batch, progress)
        progress(table, 0, True)
    return total


def _merge(source: Database, target: Database, table: Table) -> int:
    name, value = f'"{table.key[0]}"', f'"{table.merged}"'
    changed = 0
    with target.store._transaction() as db:
        have = dict(db.execute(f"SELECT {name}, {value} FROM {table.name}").fetchall())
        for key, v in source.read(f"SELECT {name}, {value} FROM {table.name}"):
            if key not in have:
                db.execute(f"INSERT INTO {table.name} ({name}, {value}) VALUES (?, ?)", (key, v))
            elif v > have[key]:
                db.execute(f"UPDATE {table.name} SET {value} = ? WHERE {name} = ?", (v, key))
            changed += key not in have or v > have[key]
    return changed


def _copy(
    source: Database, target: Database, table: Table, batch: int,
    progress: Callable[[Table, int, bool], None],
) -> int:  # fmt: skip
    t, cols = table.name, ", ".join(f'"{c}"' for c in table.columns)
    keys = ", ".join(f'"{c}"' for c in table.key)
    row_key, marks = keys, "?"
    if len(table.key) > 1:
        row_key, marks = f"({keys})", f"({', '.join('?' * len(table.key))})"
    insert = f"INSERT INTO {t} ({cols}) VALUES ({', '.join('?' * len(table.columns))})"
    insert += " ON CONFLICT DO NOTHING"
    at = [table.columns.index(c) for c in table.key]
    part = target.partitioned.get(t)
    part_at = table.columns.index(part) if part else -1
    newest = keys.replace(",", " DESC,")
    last = target.read(f"SELECT {keys} FROM {t} ORDER BY {newest} DESC LIMIT 1")
    after: tuple[Any, ...] | None = tuple(last[0]) if last else None
    if after is not None and not source.read(f"SELECT 1 FROM {t} WHERE {row_key} = {marks}", after):
        raise MigrateError(f"{t}: the target holds rows the source does not; {NEW_TARGET}")
    size, copied = min(batch, 100), 0
    while True:
        where = f" WHERE {row_key} > {marks}" if after is not None else ""
        rows = source.read(
            f"SELECT {cols} FROM {t}{where} ORDER BY {keys} LIMIT ?", [*(after or ()), size]
        )
        if not rows:
            return copied
        _insert(target, insert, rows, part_at)
        copied += len(rows)
        progress(table, len(rows), False)
        if len(rows) < size:
            return copied
        after = tuple(rows[-1][i] for i in at)
        size = max(1, min(batch, len(rows) * 2, len(rows) * _BATCH_BYTES // _bytes(rows)))


def _insert(target: Database, sql: str, rows: list[Any], part_at: int) -> None:
    with target.store._transaction() as db:
        if part_at >= 0 and target.ensure_partitions is not None:  # the months' partitions first
            ids = [r[part_at] for r in rows if _ULID.match(r[part_at] or "")]
            if ids:
                lo, hi = ULID.from_str(min(ids)), ULID.from_str(max(ids))
                target.ensure_partitions(db, lo.timestamp, hi.timestamp)
        db.executemany(sql, rows)  # (PostgreSQL's Conn stores a NUL character as U+FFFD)


def _bytes(rows: Sequence[Sequence[Any]]) -> int:
    """About how many bytes ``rows`` hold (from a sample of them)."""
    sample = rows[:: max(1, len(rows) // 50)]
    size = sum(len(v) if isinstance(v, str | bytes) else 8 for r in sample for v in r)
    return max(1, size * len(rows) // len(sample))


@dataclass(frozen=True)
class Check:
    table: str
    what: str  # rows | sum(column)
    source: int | float
    target: int | float

    @property
    def ok(self) -> bool:
        if isinstance(self.source, float) or isinstance(self.target, float):
            return math.isclose(self.source, self.target, rel_tol=1e-9, abs_tol=1e-9)
        return self.source == self.target


def verify(source: Database, target: Database, tables: Sequence[Table]) -> list[Check]:
    """Row counts of every table and the sums that matter (cost, tokens, requests) on both
    sides."""
    out = []
    for table in tables:
        sums = [c for c in _SUMS.get(table.name, ()) if c in table.columns]
        sql = f"SELECT {', '.join(['count(*)', *(f'sum({c})' for c in sums)])} FROM {table.name}"
        mine, theirs = source.read(sql)[0], target.read(sql)[0]
        for i, what in enumerate(["rows", *(f"sum({c})" for c in sums)]):
            out.append(Check(table.name, what, _number(mine[i]), _number(theirs[i])))
    return out


def _number(value: Any) -> int | float:
    if value is None:
        return 0
    if isinstance(value, Decimal):  # PostgreSQL's sum of bigint
        return int(value) if value == value.to_integral_value() else float(value)
    return value if isinstance(value, int | float) else float(value)

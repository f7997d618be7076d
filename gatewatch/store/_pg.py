"""PostgreSQL plumbing for ``PostgresStore``: the store's SQL (written for SQLite, the reference
engine) translated to PostgreSQL, connections that take it, and the server-side functions the
usage rollups need.

One schema, one set of queries: the migrations' DDL and every statement go through ``ddl`` and
``translate``, a short, explicit list of spelling differences (placeholders, a few functions,
column types), so the two engines cannot drift apart. Each translation is cached.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from gatewatch.store.rollups import EDGES, HIST_BINS, NBINS

__all__ = ["FUNCTIONS", "PARTITIONED", "Conn", "PooledReader", "ddl", "translate"]

# SQLite spellings with no PostgreSQL equivalent → PostgreSQL's, applied verbatim.
_SPELLINGS = (
    (
        "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
        "to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')",
    ),
    ("SET value = max(value, ?)", "SET value = greatest(value, ?)"),
    ("SELECT value FROM json_each(?)", "SELECT value FROM json_array_elements_text(?::json)"),
    # SQLite's round() is half away from zero; PostgreSQL's on a double is half to even
    ("CAST(round(", "CAST(gw_round("),
    (" AS INTEGER)", " AS BIGINT)"),
    # a usage read sums the histograms in Python (numpy), as it does on SQLite
    ("gw_hist_sum(r.hist)", "array_agg(r.hist)"),
)
# ``+r.org_id = ?``: SQLite's "do not use an index for this" mark; PostgreSQL plans on its own
_UNARY_PLUS = re.compile(r"(^|[\s(])\+(\w+\.(?:org_id|user_id) = )")


@functools.lru_cache(maxsize=4096)
def translate(sql: str) -> str:
    """A statement of the store (SQLite dialect, ``?`` placeholders) in PostgreSQL's."""
    if sql.lstrip().startswith("CREATE "):
        sql = ddl(sql)
    for old, new in _SPELLINGS:
        sql = sql.replace(old, new)
    sql = _UNARY_PLUS.sub(r"\1\2", sql)
    return sql.replace("%", "%%").replace("?", "%s")


# Request tables partitioned by month of their id (ids are ULIDs, which start with the time):
# the retention purge drops a whole month at once instead of deleting its rows.
PARTITIONED = {"requests": "id", "request_facets": "request_id", "request_bodies": "request_id"}
_TABLE = re.compile(r"CREATE TABLE (\w+) \((.*?)\n\s*\);", re.S)


def _partition(m: re.Match[str]) -> str:
    name = m.group(1)
    if name not in PARTITIONED:
        return m.group(0)
    return (
        f"{m.group(0)[:-1]} PARTITION BY RANGE ({PARTITIONED[name]});\n"
        f"CREATE TABLE {name}_default PARTITION OF {name} DEFAULT;"
    )


def ddl(script: str) -> str:
    """A migration's SQLite DDL in PostgreSQL's: 8-byte numbers, byte-order text (SQLite's
    BINARY collation: ids, names and keyset pages sort the same on both), request tables
    partitioned by month."""
    s = script.replace(" WITHOUT ROWID", "")
    s = re.sub(r"\bREAL\b", "DOUBLE PRECISION", s)
    s = re.sub(r"\bINTEGER\b", "BIGINT", s)
    s = re.sub(r"\bBLOB\b", "BYTEA", s)
    s = re.sub(r"\bTEXT\b", 'TEXT COLLATE "C"', s)
    s = re.sub(r"(?<![\w.\"])user TEXT", '"user" TEXT', s)
    return _TABLE.sub(_partition, s)


_EDGES = "ARRAY[" + ",".join(repr(e) for e in EDGES) + "]::float8[]"
_DENSE = HIST_BINS * 4
# The rollup histograms are stored as on SQLite (see rollups.py: sparse, a byte per bin and a
# little-endian uint32 per count, or dense, a uint32 per bin); these functions merge them in the
# server, as SQLite's Python functions do.
FUNCTIONS = f"""
CREATE OR REPLACE FUNCTION unixepoch(t text) RETURNS bigint LANGUAGE sql IMMUTABLE AS
  $$ SELECT floor(extract(epoch FROM t::timestamptz))::bigint $$;
CREATE OR REPLACE FUNCTION gw_round(x double precision) RETURNS numeric LANGUAGE sql IMMUTABLE AS
  $$ SELECT round(x::numeric) $$;
CREATE OR REPLACE FUNCTION gw_u32(h bytea, at int) RETURNS bigint LANGUAGE sql IMMUTABLE AS
  $$ SELECT get_byte(h, at)::bigint | (get_byte(h, at + 1)::bigint << 8)
            | (get_byte(h, at + 2)::bigint << 16) | (get_byte(h, at + 3)::bigint << 24) $$;
CREATE OR REPLACE FUNCTION gw_hist_dense(s bigint[], h bytea) RETURNS bigint[]
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE m int; b int;
BEGIN
  IF s IS NULL THEN s := array_fill(0::bigint, ARRAY[{HIST_BINS}]); END IF;
  IF h IS NULL OR length(h) = 0 THEN RETURN s; END IF;
  IF length(h) = {_DENSE} THEN
    FOR i IN 0..{HIST_BINS - 1} LOOP s[i + 1] := s[i + 1] + gw_u32(h, 4 * i); END LOOP;
  ELSE
    m := length(h) / 5;
    FOR i IN 0..m - 1 LOOP
      b := get_byte(h, i) + 1;
      s[b] := s[b] + gw_u32(h, m + 4 * i);
    END LOOP;
  END IF;
  RETURN s;
END $$;
CREATE OR REPLACE FUNCTION gw_u32le(c bigint) RETURNS bytea LANGUAGE sql IMMUTABLE AS
  $$ SELECT set_byte(set_byte(set_byte(set_byte('\\x00000000'::bytea, 0, (c & 255)::int),
            1, ((c >> 8) & 255)::int), 2, ((c >> 16) & 255)::int), 3, ((c >> 24) & 255)::int) $$;
CREATE OR REPLACE FUNCTION gw_hist_encode(s bigint[]) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE bins bytea := ''; counts bytea := ''; nz int := 0;
BEGIN
  IF s IS NULL THEN RETURN NULL; END IF;
  FOR i IN 1..{HIST_BINS} LOOP IF s[i] <> 0 THEN nz := nz + 1; END IF; END LOOP;
  IF nz * 5 < {_DENSE} THEN
    FOR i IN 1..{HIST_BINS} LOOP
      IF s[i] <> 0 THEN
        bins := bins || set_byte('\\x00'::bytea, 0, i - 1);
        counts := counts || gw_u32le(s[i]);
      END IF;
    END LOOP;
    RETURN bins || counts;
  END IF;
  FOR i IN 1..{HIST_BINS} LOOP counts := counts || gw_u32le(s[i]); END LOOP;
  RETURN counts;
END $$;
CREATE OR REPLACE FUNCTION gw_hist_add(a bytea, b bytea) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN a IS NULL OR length(a) = 0 THEN b WHEN b IS NULL OR length(b) = 0 THEN a
              ELSE gw_hist_encode(gw_hist_dense(gw_hist_dense(NULL, a), b)) END $$;
CREATE OR REPLACE AGGREGATE gw_hist_sum(bytea) (
  SFUNC = gw_hist_dense, STYPE = bigint[], FINALFUNC = gw_hist_encode);
CREATE OR REPLACE FUNCTION gw_hist_raw_step(s bigint[], d double precision,
                                            t double precision) RETURNS bigint[]
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE b int;
BEGIN
  IF s IS NULL THEN s := array_fill(0::bigint, ARRAY[{HIST_BINS}]); END IF;
  b := width_bucket(d, {_EDGES}) + 1;
  s[b] := s[b] + 1;
  IF t IS NOT NULL THEN
    b := {NBINS} + width_bucket(t, {_EDGES}) + 1;
    s[b] := s[b] + 1;
  END IF;
  RETURN s;
END $$;
CREATE OR REPLACE AGGREGATE gw_hist_raw(double precision, double precision) (
  SFUNC = gw_hist_raw_step, STYPE = bigint[], FINALFUNC = gw_hist_encode);
"""


def _params(params: Sequence[Any] | None) -> Sequence[Any]:
    """Parameters as PostgreSQL takes them: its text cannot hold U+0000, stored (and so
    searched for) as U+FFFD."""
    if not params:
        return ()
    if any(isinstance(p, str) and "\x00" in p for p in params):
        return [p.replace("\x00", "\ufffd") if isinstance(p, str) else p for p in params]
    return params


class Conn:
    """A psycopg connection (autocommit: transactions are explicit ``BEGIN``/``COMMIT``) that
    takes the store's statements as written for SQLite."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> psycopg.Cursor[Any]:
        return self.conn.execute(translate(sql), _params(params))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> psycopg.Cursor[Any]:
        cur = self.conn.cursor()
        cur.executemany(translate(sql), [_params(row) for row in rows])
        return cur

    def executescript(self, script: str) -> None:
        self.conn.execute(ddl(script).encode())

    def commit(self) -> None:
        """Migrations call this after each one; they run inside the migrate transaction."""

    @property
    def broken(self) -> bool:
        return self.conn.closed or self.conn.broken

    def close(self) -> None:
        self.conn.close()


class Result:
    """A statement's rows, fetched whole (the connection went back to the pool)."""

    __slots__ = ("_rows", "description", "rowcount")

    def __init__(self, rows: list[Any], description: Any, rowcount: int) -> None:
        self._rows = rows
        self.description = description
        self.rowcount = rowcount

    def fetchone(self) -> Any:
        return self._rows.pop(0) if self._rows else None

    def fetchall(self) -> list[Any]:
        rows, self._rows = self._rows, []
        return rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())


class PooledReader:
    """Reads for any thread: each statement borrows a connection from the pool (autocommit) for
    as long as it runs, so a process holds at most ``database_pool_size`` connections however
    many threads read."""

    def __init__(self, pool: ConnectionPool[Any]) -> None:
        self.pool = pool

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> Result:
        try:
            return self._execute(translate(sql), _params(params))
        except psycopg.OperationalError:
            # a pooled connection the server ended (a restart, a failover): the pool drops it
            # on its return; the idle ones are checked now and the read runs once more (rather
            # than a check round trip before every read)
            self.pool.check()
            return self._execute(translate(sql), _params(params))

    def _execute(self, sql: str, params: Sequence[Any]) -> Result:
        with self.pool.connection() as conn:
            cur = conn.execute(sql, params)
            rows = cur.fetchall() if cur.description is not None else []
            return Result(rows, cur.description, cur.rowcount)

"""Upkeep of the SQLite store: the usage rollups' rebuild and reads (§A4) and the retention
purge (§T1), as a mixin of ``SQLiteStore`` (which supplies the connections)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import orjson

from gatewatch.records import parse_ts
from gatewatch.store import rollups
from gatewatch.store.query import Scope
from gatewatch.store.rollups import UsageRows, UsageSpec
from gatewatch.store.rollups import ulid_floor as _ulid_floor

__all__ = ["UpkeepMixin"]

_REBUILD_SELECT = (
    "SELECT unixepoch(started_at) + CAST(substr(started_at, 21, 3) AS INTEGER) / 1000.0,"
    " duration_ms, ttft_ms, org_id, user_id, api_key_id, provider, model_requested, model,"
    " status, client, workflow, end_user, tags, input_tokens, output_tokens, cache_read_tokens,"
    " cache_write_tokens, reasoning_tokens, cost_usd FROM requests WHERE id >= ? AND id < ?"
)


def _row_facts(row: Sequence[Any]) -> rollups.Facts:
    (started, duration, ttft, org, user, key, provider, model_requested, model, status, client,
     workflow, end_user, tags) = row[:14]  # fmt: skip
    return rollups.facts(
        started, duration, ttft, org, user, key, provider, model_requested, model, status,
        client, workflow, end_user, orjson.loads(tags or "[]"), row[14:19], row[19],
    )  # fmt: skip


class UpkeepMixin:
    """Rollups and retention for ``SQLiteStore``."""

    def _reader(self) -> sqlite3.Connection:
        raise NotImplementedError

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    # ---- usage rollups (§A4) ---------------------------------------------------------------

    def rebuild_rollups(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Recompute the usage rollups from the stored records, one UTC day per transaction (so
        the gateway's writer never waits long); days older than the oldest record keep their
        rollups (they outlive raw records, §T1). Returns the number of records read."""
        db = self._reader()
        first_id = db.execute("SELECT min(id) FROM requests").fetchone()[0]
        if first_id is None:
            return 0
        first, last = (
            int(parse_ts(row[0]))
            for row in db.execute(
                "SELECT started_at FROM requests WHERE id = ? UNION ALL"
                " SELECT started_at FROM (SELECT started_at FROM requests ORDER BY id DESC"
                " LIMIT 1) AS last",
                (first_id,),
            ).fetchall()
        )
        day = first // 86400 * 86400
        older = db.execute(
            "SELECT 1 FROM rollup_user WHERE grain = 'd' AND bucket < ? LIMIT 1", (day,)
        ).fetchone()
        if older and first > day:  # that day's earliest records were purged: keep its rollups
            day += 86400
        total = db.execute(
            "SELECT count(*) FROM requests WHERE id >= ?", (_ulid_floor(day),)
        ).fetchone()[0]
        done = 0
        end = last // 86400 * 86400 + 86400
        for start in range(day, end, 86400):
            with self._transaction() as w:
                for c in rollups.CUBOIDS:
                    w.execute(
                        f"DELETE FROM {c.table} WHERE (grain = 'h' AND bucket >= ? AND bucket < ?)"
                        " OR (grain = 'd' AND bucket = ?)",
                        (start, start + 86400, start),
                    )
                for hour in range(start, start + 86400, 3600):
                    rows = w.execute(
                        _REBUILD_SELECT, (_ulid_floor(hour), _ulid_floor(hour + 3600))
                    ).fetchall()
                    rollups.write(w, [_row_facts(row) for row in rows])
                    done += len(rows)
            if progress is not None:
                progress(done, total)
        with self._transaction() as w:  # rollups of records that are gone after the last one
            for c in rollups.CUBOIDS:
                w.execute(f"DELETE FROM {c.table} WHERE bucket >= ?", (end,))
            # the rebuilt days count exactly the records: list counts may read them
            w.execute("UPDATE upkeep SET value = ? WHERE name = 'rollups_exact_from'", (day,))
        return done

    def usage_rows(self, scope: Scope, spec: UsageSpec) -> UsageRows:
        return rollups.query(self._reader(), scope, spec)

    def facet_values(
        self, scope: Scope, dim: str, lo: int, hi: int, limit: int
    ) -> list[tuple[str, int]]:
        return rollups.facet_values(self._reader(), scope, dim, lo, hi, limit)

    def display_names(self, dim: str, ids: Sequence[str]) -> dict[str, str]:
        table = {"org": "orgs", "user": "users", "api_key": "keys"}.get(dim)
        if table is None or not ids:
            return {}
        out: dict[str, str] = {}
        db = self._reader()
        for i in range(0, len(ids), 500):
            chunk = list(ids[i : i + 500])
            marks = ",".join("?" * len(chunk))
            out.update(
                db.execute(f"SELECT id, name FROM {table} WHERE id IN ({marks})", chunk).fetchall()
            )
        return out

    # ---- retention (§T1) ---------------------------------------------------------------------

    @staticmethod
    def _org_condition(org_id: str | None, exclude: Sequence[str]) -> tuple[str, list[object]]:
        if org_id is not None:
            return " AND r.org_id = ?", [org_id]
        if exclude:
            marks = ",".join("?" * len(exclude))
            return f" AND (r.org_id IS NULL OR r.org_id NOT IN ({marks}))", [*exclude]
        return "", []

    def purge_batch(
        self,
        kind: str,
        before: float,
        limit: int,
        org_id: str | None = None,
        exclude: Sequence[str] = (),
        after: str | None = None,
    ) -> tuple[int, str | None]:
        """Remove up to ``limit`` of the oldest records (kind ``records``: the whole record with
        its facets and body) or their content (``content``: bodies, prompt, tool arguments)
        started before ``before`` and after the id ``after``, in one short transaction. Returns
        how many, and the id to pass as ``after`` to the next batch (None when none was left).

        The batch never comes back to Python: one statement finds its last id, then one per
        table removes the rows up to it. So the thread lets go of Python's GIL a handful of
        times per batch, not once per row: a busy event loop in the same process neither slows
        the purge to a crawl nor is slowed by it. The cursor keeps a batch from scanning again
        the old records the purge keeps (an organization that keeps its records longer)."""
        cond, params = self._org_condition(org_id, exclude)
        if kind == "records":
            source, col = "requests r", "r.id"
        else:
            source, col = "request_bodies b JOIN requests r ON r.id = b.request_id", "b.request_id"
        lo = after or ""
        with self._transaction() as db:
            n, hi = db.execute(
                f"SELECT count(*), max(id) FROM (SELECT {col} AS id FROM {source}"
                f" WHERE {col} > ? AND {col} < ?{cond} ORDER BY {col} LIMIT ?) AS b",
                [lo, _ulid_floor(before), *params, limit],
            ).fetchone()
            if not n:
                return 0, None
            batch = f"SELECT {col} FROM {source} WHERE {col} > ? AND {col} <= ?{cond}"
            args = [lo, hi, *params]
            if kind == "records":
                # from here on a list count reads the records for the hours this purge touches
                # (the usage rollups keep counting what it removes)
                db.execute(
                    "UPDATE upkeep SET value = max(value, ?) WHERE name = 'rollups_exact_from'",
                    (-(-int(before) // 3600) * 3600,),
                )
                db.execute(f"DELETE FROM request_bodies WHERE request_id IN ({batch})", args)
                db.execute(f"DELETE FROM request_facets WHERE request_id IN ({batch})", args)
                db.execute(f"DELETE FROM requests AS r WHERE r.id > ? AND r.id <= ?{cond}", args)
            else:
                db.execute(
                    "UPDATE requests SET last_user_prompt = NULL, tool_calls = (SELECT"
                    " json_group_array(json_set(t.value, '$.arguments', '')) FROM"
                    f" json_each(requests.tool_calls) t) WHERE id IN ({batch})",
                    args,
                )
                db.execute(f"DELETE FROM request_bodies WHERE request_id IN ({batch})", args)
            return int(n), str(hi)

    def count_purgeable(
        self,
        kind: str,
        before: float,
        org_id: str | None = None,
        exclude: Sequence[str] = (),
        keep_after: float | None = None,
    ) -> int:
        cond, params = self._org_condition(org_id, exclude)
        if keep_after is not None:  # content of records that stay (older ones go whole)
            cond += " AND r.id >= ?"
            params.append(_ulid_floor(keep_after))
        if kind == "records":
            sql = f"SELECT count(*) FROM requests r WHERE r.id < ?{cond}"
        else:
            sql = (
                "SELECT count(*) FROM request_bodies b JOIN requests r ON r.id = b.request_id"
                f" WHERE b.request_id < ?{cond}"
            )
        return int(self._reader().execute(sql, [_ulid_floor(before), *params]).fetchone()[0])

    def purge_rollups(self, before: int, dry_run: bool = False) -> int:
        """Remove usage rollup rows of buckets before ``before``, a day per transaction."""
        db = self._reader()
        oldest = min(
            (
                row[0]
                for c in rollups.CUBOIDS
                for row in db.execute(f"SELECT min(bucket) FROM {c.table}")
                if row[0] is not None
            ),
            default=None,
        )
        if oldest is None or oldest >= before:
            return 0
        if dry_run:
            return sum(
                int(db.execute(f"SELECT count(*) FROM {c.table} WHERE bucket < ?", (before,))
                    .fetchone()[0])
                for c in rollups.CUBOIDS
            )  # fmt: skip
        removed = 0
        for day in range(int(oldest) // 86400 * 86400, before, 86400):
            with self._transaction() as w:
                for c in rollups.CUBOIDS:
                    for grain in ("h", "d"):
                        removed += w.execute(
                            f"DELETE FROM {c.table} WHERE grain = ? AND bucket < ?",
                            (grain, min(day + 86400, before)),
                        ).rowcount
        return removed

    def org_ids(self, names: Sequence[str]) -> dict[str, str]:
        if not names:
            return {}
        marks = ",".join("?" * len(names))
        rows = self._reader().execute(
            f"SELECT name, id FROM orgs WHERE name IN ({marks})", list(names)
        )
        return {str(name): str(oid) for name, oid in rows}

    def acquire_lease(self, name: str, holder: str, seconds: float) -> bool:
        """Take or renew the lease ``name`` for ``seconds`` unless another holder has it."""
        import time

        now = time.time()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO leases VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
                " holder = excluded.holder, until = excluded.until"
                " WHERE leases.until < ? OR leases.holder = excluded.holder",
                (name, holder, now + seconds, now),
            )
            row = db.execute("SELECT holder FROM leases WHERE name = ?", (name,)).fetchone()
        return bool(row and row[0] == holder)

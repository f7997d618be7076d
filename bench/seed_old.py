"""Seed a new SQLite file with many old request records, fast, to measure the retention purge.

    .venv/bin/python bench/seed_old.py /tmp/gw-old.db [--records 1000000] [--days-ago 90]
        [--span-days 10] [--purge] [--batch 5000]

The records go in by SQL (``INSERT … SELECT`` over a recursive CTE, no Python per row), a
million in well under a minute instead of the many minutes of the record writer's path. Each
has the whole row of §R (an organization, user and key that exist; provider, model asked for
and answered; streams, errors, tokens, cost, client, user agent, workflow, end user, session,
tags, ``meta``, the last user prompt, tool calls on one in ten, attempts), its facet rows (tag,
``meta.*``, model) and a request and response body (about 650 bytes together), in the store's
own schema and indexes. Their usage rollups are computed in SQL with the store's raw-record sums
and come out identical to what ``rebuild_rollups`` makes. The records span ``--span-days``
days ending ``--days-ago`` days ago.

``--purge`` then purges them with the gateway's ``Retention`` (no gateway, no load) and prints
records/s. ``tests/test_retention_load.py`` imports :func:`seed_old` to measure the purge
under load through a real gateway.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gatewatch.auth import hash_key
from gatewatch.store import SQLiteStore, rollups

__all__ = ["Seeded", "seed_old"]

DAY = 86400
ORGS = 4
USERS_PER_ORG = 8
# (provider, endpoint, requested, answered, USD per million input tokens, per million output)
MODELS = (
    ("openai", "/v1/chat/completions", "gpt-4o-mini", "gpt-4o-mini-2024-07-18", 0.15, 0.6),
    ("openai", "/v1/chat/completions", "gpt-4o", "gpt-4o-2024-08-06", 2.5, 10.0),
    ("openai", "/v1/responses", "gpt-5-mini", "gpt-5-mini-2025-08-07", 0.25, 2.0),
    ("anthropic", "/v1/messages", "claude-sonnet-4-5", "claude-sonnet-4-5-20250929", 3.0, 15.0),
    ("anthropic", "/v1/messages", "claude-haiku-4-5", "claude-haiku-4-5-20251001", 1.0, 5.0),
)
CLIENTS = (
    ("claude-code", "claude-cli/2.0.14 (external, cli)"),
    ("codex", "codex_cli_rs/0.46.0 (Mac OS 15.1.0; arm64)"),
    ("openai-python", "OpenAI/Python 1.109.1"),
    ("anthropic-python", "Anthropic/Python 0.69.0"),
    (None, "acme-etl/1.4"),
)
WORKFLOWS = ("support-bot", "rag-search", "pr-review", None)
TAGS = ('["prod"]', '["prod","batch"]', "[]", '["eval"]')
# A short system prompt in every request body.
FILLER = ("You are a careful assistant for the support team. Answer briefly, cite the "
          "knowledge-base article you used and never invent an order number.")  # fmt: skip

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


@dataclass(frozen=True)
class Seeded:
    records: int
    first_id: str  # the oldest record's id
    last_id: str  # the newest one's
    first_started: float  # Unix seconds of the oldest record
    last_started: float  # of the newest
    seconds: float  # seeding time, rollups included
    rollups_seconds: float


def _ulid_sql(ms: str, seq: str) -> str:
    """SQL for a ULID (26 Crockford base-32 characters) of the millisecond ``ms``: 48 time bits,
    then ``SEED`` and ``seq`` in 12 decimal digits (valid base-32 characters) where real ULIDs
    are random. They sort by time like the gateway's own ids and never collide with each other."""
    time_chars = [f"substr('{_CROCKFORD}', ({ms} >> {45 - 5 * k}) % 32 + 1, 1)" for k in range(10)]
    return " || ".join([*time_chars, f"'SEED' || printf('%012d', {seq})"])


def _population(store: SQLiteStore) -> list[tuple[str, ...]]:
    """Organizations, users and a key per user, made the store's own way; returns per key
    (key id, key name, user id, user name, org id, org name)."""
    out = []
    for o in range(ORGS):
        for u in range(USERS_PER_ORG):
            secret = f"gw-seed-{o}-{u}-0123456789abcdef"
            k = store.create_key(
                {"name": f"seed-key-{o}-{u}", "user": f"seed-user-{o}-{u}", "org": f"seed-org-{o}"},
                hash_key(secret),
                secret[:8],
            )
            out.append((k["id"], k["name"], k["user_id"], k["user"], k["org_id"], k["org"]))
    return out


def _insert_sql(n_keys: int) -> tuple[str, tuple[str, str, str]]:
    """The statements of one chunk: the first fills ``temp.seed_gen`` with the sequence numbers
    [?1, ?2) and what is drawn for each (``?3``: the first record's time in Unix ms, ``?4``: the
    spacing in ms); the three others insert the requests, their facets and their bodies."""
    gen = (
        "INSERT INTO seed_gen WITH RECURSIVE seq(n) AS (SELECT ?1 UNION ALL SELECT n + 1 FROM seq"
        " WHERE n + 1 < ?2), base AS (SELECT n, CAST(?3 + n * ?4 AS INTEGER) AS ms,"
        " (n * 2654435761) % 4294967296 AS h FROM seq)"
        f" SELECT n, ms, h, {_ulid_sql('ms', 'n')},"
        # each user has a main client and two models it uses, as people do
        f" n % {n_keys}, (n % {n_keys} + (h >> 3) % 2) % {len(MODELS)},"
        f" n % {n_keys} % {len(CLIENTS)},"
        f" (h >> 11) % 100, (h >> 18) % {len(TAGS)} FROM base"
    )
    requests = (
        "INSERT INTO requests (id, started_at, ended_at, duration_ms, ttft_ms, org_id, org,"
        " user_id, user, api_key_id, api_key_name, end_user, session, workflow, client,"
        " user_agent, source_ip, correlation_id, endpoint, provider, model_requested, model,"
        " stream, status_code, status, error_type, error_message, input_tokens, output_tokens,"
        " cache_read_tokens, cache_write_tokens, reasoning_tokens, cost_usd, tags, meta,"
        " last_user_prompt, tool_calls, attempts) SELECT g.id,"
        " strftime('%Y-%m-%dT%H:%M:%fZ', g.ms / 1000.0, 'unixepoch'),"
        " strftime('%Y-%m-%dT%H:%M:%fZ', (g.ms + 150 + (g.h >> 5) % 4000) / 1000.0, 'unixepoch'),"
        " 150 + (g.h >> 5) % 4000,"  # duration_ms
        " CASE WHEN (g.h >> 9) % 10 < 4 THEN 80 + (g.h >> 13) % 600 END,"  # ttft_ms: streams
        " k.org_id, k.org, k.user_id, k.user, k.key_id, k.key_name,"
        " CASE WHEN g.c = 2 THEN 'customer-' || (g.h >> 20) % 40 END,"  # end_user
        " CASE WHEN g.c < 2 THEN 'sess-' || (g.n / 40) END,"  # session
        " w.workflow, c.client, c.user_agent, '10.0.' || (g.k % 4) || '.' || g.k,"
        " CASE WHEN g.roll < 25 THEN 'req_' || g.n END,"  # correlation_id
        " m.endpoint, m.provider, m.requested, CASE WHEN g.roll >= 3 THEN m.answered END,"
        " (g.h >> 9) % 10 < 4,"  # stream
        " CASE WHEN g.roll < 2 THEN 429 WHEN g.roll < 3 THEN 502 ELSE 200 END,"
        " CASE WHEN g.roll < 3 THEN 'error' ELSE 'ok' END,"
        " CASE WHEN g.roll < 2 THEN 'rate_limit_error' WHEN g.roll < 3 THEN 'upstream_error' END,"
        " CASE WHEN g.roll < 2 THEN 'Rate limit reached for requests per min (RPM)'"
        " WHEN g.roll < 3 THEN m.provider || ': connection reset by peer' END,"
        " 200 + (g.h >> 14) % 6000,"  # input_tokens
        " CASE WHEN g.roll >= 3 THEN 20 + (g.h >> 16) % 800 END,"  # output_tokens
        " CASE WHEN g.roll % 4 = 0 THEN 1000 ELSE 0 END, 0, 0,"  # cache read/write, reasoning
        " round(((200 + (g.h >> 14) % 6000) * m.price_in"
        " + CASE WHEN g.roll >= 3 THEN (20 + (g.h >> 16) % 800) * m.price_out ELSE 0 END) / 1e6,"
        " 9),"  # cost_usd
        " t.tags, json_object('team', 'team-' || (g.k % 6), 'env', CASE WHEN g.roll < 80"
        " THEN 'prod' ELSE 'staging' END),"
        " 'Summarize support ticket #' || g.n || ' for the customer',"
        " CASE WHEN g.n % 10 = 0 AND g.roll >= 3 THEN json_array(json_object('name',"
        " 'lookup_order', 'call_id', 'call_' || g.n, 'arguments', '{\"order\": \"' || g.n"
        " || '\"}')) ELSE '[]' END,"
        " json_array(json_object('provider', m.provider, 'model', m.requested, 'status_code',"
        " CASE WHEN g.roll < 2 THEN 429 WHEN g.roll < 3 THEN 502 ELSE 200 END, 'reason',"
        " CASE WHEN g.roll < 2 THEN 'rate_limited' WHEN g.roll < 3 THEN 'connect_error'"
        " ELSE 'ok' END, 'duration_ms', 150 + (g.h >> 5) % 4000))"
        " FROM seed_gen g JOIN seed_keys k ON k.k = g.k JOIN seed_models m ON m.m = g.m"
        " JOIN seed_clients c ON c.c = g.c JOIN seed_workflows w ON w.w = g.k % 4"
        " JOIN seed_tags t ON t.t = g.t"
    )
    facets = (
        "INSERT INTO request_facets (name, value, request_id, org_id, user_id)"
        " SELECT f.name, f.value, f.id, k.org_id, k.user_id FROM ("
        " SELECT 'tag' AS name, j.value AS value, g.id AS id, g.k AS k FROM seed_gen g"
        " JOIN seed_tags t ON t.t = g.t, json_each(t.tags) j UNION ALL"
        " SELECT CASE x.x WHEN 0 THEN 'meta.team' WHEN 1 THEN 'meta.env' ELSE 'model' END,"
        " CASE x.x WHEN 0 THEN 'team-' || (g.k % 6) WHEN 1 THEN CASE WHEN g.roll < 80"
        " THEN 'prod' ELSE 'staging' END WHEN 2 THEN m.requested ELSE m.answered END, g.id, g.k"
        " FROM seed_gen g JOIN seed_models m ON m.m = g.m JOIN (SELECT 0 AS x UNION ALL SELECT 1"
        " UNION ALL SELECT 2 UNION ALL SELECT 3) x WHERE x.x < 3 OR g.roll >= 3"
        ") f JOIN seed_keys k ON k.k = f.k"
    )
    bodies = (
        "INSERT INTO request_bodies (request_id, request_body, response_body) SELECT g.id,"
        " json_object('model', m.requested, 'messages', json_array(json_object('role', 'system',"
        " 'content', :filler), json_object('role', 'user', 'content',"
        " 'Summarize support ticket #' || g.n || ' for the customer'))),"
        " CASE WHEN g.roll >= 3 THEN json_object('id', 'chatcmpl-' || g.n, 'model', m.answered,"
        " 'choices', json_array(json_object('index', 0, 'message', json_object('role',"
        " 'assistant', 'content', 'The customer asked about order ' || g.n || '; it shipped"
        " yesterday and arrives on Friday. Article KB-1142 covers the delivery times.'),"
        " 'finish_reason', 'stop'))) ELSE json_object('error', json_object('type',"
        " 'rate_limit_error', 'message', 'Rate limit reached')) END"
        " FROM seed_gen g JOIN seed_models m ON m.m = g.m"
    )
    return gen, (requests, facets, bodies)


def _rollup_sql() -> list[str]:
    """The statements that fill the rollup tables from the stored records, exactly as the
    store's ``rebuild_rollups`` would (and faster: no Python per record). Hourly rows of the
    base cuboid, of tags and of end users come from the records with the store's own raw-record
    sums (``rollups.raw_sums``: what the usage API computes when no rollup answers); the other
    cuboids' hourly rows are sums of the base cuboid's (as ``rollups.aggregate`` derives them),
    and every daily row the sum of its hours."""
    out = []
    sums = ", ".join(f"sum({m})" for m in rollups.SCALARS)
    base = next(c for c in rollups.CUBOIDS if c.table == "rollup_base")
    for cuboid in sorted(rollups.CUBOIDS, key=lambda c: c is not base):  # the base one first
        cols = ", ".join(("grain", "bucket", *cuboid.columns, *rollups.SCALARS, "hist"))
        groups = ", ".join(str(i + 2) for i in range(len(cuboid.columns) + 1))
        if cuboid is base or "tag" in cuboid.columns or "end_user" in cuboid.columns:
            dims = [
                "f.value" if col == "tag"
                else "coalesce(r.model, r.model_requested, '')" if col == "model"
                else f"coalesce(r.{col}, '')"
                for col in cuboid.columns
            ]  # fmt: skip
            source = "requests r"
            if "tag" in cuboid.columns:
                source += " JOIN request_facets f ON f.request_id = r.id AND f.name = 'tag'"
            if "end_user" in cuboid.columns:  # requests made for an end user only
                source += " WHERE r.end_user IS NOT NULL AND r.end_user != ''"
            out.append(
                f"INSERT INTO {cuboid.table} ({cols}) SELECT 'h',"
                f" unixepoch(r.started_at) / 3600 * 3600, {', '.join(dims)},"
                f" {rollups.raw_sums()} FROM {source} GROUP BY {groups}"
            )
        else:
            out.append(
                f"INSERT INTO {cuboid.table} ({cols}) SELECT 'h', bucket,"
                f" {', '.join(cuboid.columns)}, {sums}, gw_hist_sum(hist) FROM rollup_base"
                f" WHERE grain = 'h' GROUP BY {groups}"
            )
        out.append(
            f"INSERT INTO {cuboid.table} ({cols}) SELECT 'd', bucket / 86400 * 86400,"
            f" {', '.join(cuboid.columns)}, {sums}, gw_hist_sum(hist) FROM {cuboid.table}"
            f" WHERE grain = 'h' GROUP BY {groups}"
        )
    return out


def seed_old(
    path: str,
    records: int = 1_000_000,
    *,
    days_ago: float = 90,
    span_days: float = 10,
    chunk: int = 100_000,
    now: float | None = None,
) -> Seeded:
    """Seed the new SQLite file ``path`` with ``records`` records spread evenly over
    ``span_days`` days that end ``days_ago`` days before ``now``, and their usage rollups.

    The schema is the store's (``SQLiteStore.migrate``); organizations, users and keys are made
    with ``create_key``. Then, on a connection of its own without a journal (a crash leaves a
    broken file: it is a new one anyway), the records go in by ``INSERT … SELECT``, the
    secondary indexes are made afterwards (sorted, faster than row by row, from the CREATE
    statements the migrations wrote), and the rollups are computed in SQL. Refuses a file that
    already holds records."""
    started = time.perf_counter()
    store = SQLiteStore(path)
    try:
        store.migrate()
        if store._reader().execute("SELECT 1 FROM requests LIMIT 1").fetchone():
            raise ValueError(f"{path} already holds records; seed a new file")
        keys = _population(store)
    finally:
        store.close()
    now = time.time() if now is None else now
    first_ms = int((now - (days_ago + span_days) * DAY) * 1000)
    step_ms = span_days * DAY * 1000 / records
    db = sqlite3.connect(path, isolation_level=None)
    try:
        rollups.register(db)
        db.execute("PRAGMA journal_mode = OFF")
        db.execute("PRAGMA synchronous = OFF")
        db.execute("PRAGMA cache_size = -262144")
        db.execute("PRAGMA temp_store = MEMORY")
        db.execute("PRAGMA threads = 2")  # CREATE INDEX sorts with a helper thread
        _temp_tables(db, keys)
        gen, inserts = _insert_sql(len(keys))
        indexes = [
            str(sql)
            for (sql,) in db.execute(
                "SELECT sql FROM sqlite_schema WHERE type = 'index' AND sql IS NOT NULL"
                " AND tbl_name IN ('requests', 'request_facets', 'request_bodies')"
            )
        ]
        for sql in indexes:
            db.execute(f"DROP INDEX {sql.split()[2]}")
        for lo in range(0, records, chunk):
            db.execute("BEGIN")
            db.execute("DELETE FROM seed_gen")
            db.execute(gen, (lo, min(records, lo + chunk), first_ms, step_ms))
            for sql in inserts:
                db.execute(sql, {"filler": FILLER})
            db.execute("COMMIT")
        for sql in indexes:
            db.execute(sql)
        t_rollups = time.perf_counter()
        db.execute("BEGIN")
        for sql in _rollup_sql():
            db.execute(sql)
        db.execute("COMMIT")
        rollups_seconds = time.perf_counter() - t_rollups
        first_id, last_id = db.execute("SELECT min(id), max(id) FROM requests").fetchone()
        db.execute("PRAGMA journal_mode = WAL")
    finally:
        db.close()
    # Written without fsync: flush it now (about a second), or the kernel writes gigabytes back
    # later, in the middle of whatever is measured next.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return Seeded(
        records,
        first_id,
        last_id,
        first_ms / 1000,
        (first_ms + (records - 1) * step_ms) / 1000,
        time.perf_counter() - started,
        rollups_seconds,
    )


def _temp_tables(db: sqlite3.Connection, keys: list[tuple[str, ...]]) -> None:
    """What the seeding statements draw from, in temporary tables of the connection."""
    db.execute("CREATE TEMP TABLE seed_gen (n INTEGER PRIMARY KEY, ms, h, id, k, m, c, roll, t)")
    for name, columns, rows in (
        ("seed_keys", "k, key_id, key_name, user_id, user, org_id, org", keys),
        ("seed_models", "m, provider, endpoint, requested, answered, price_in, price_out", MODELS),
        ("seed_clients", "c, client, user_agent", CLIENTS),
        ("seed_workflows", "w, workflow", [(w,) for w in WORKFLOWS]),
        ("seed_tags", "t, tags", [(t,) for t in TAGS]),
    ):
        first, rest = columns.split(", ", 1)
        db.execute(f"CREATE TEMP TABLE {name} ({first} INTEGER PRIMARY KEY, {rest})")
        marks = ", ".join("?" * (rest.count(",") + 2))
        db.executemany(
            f"INSERT INTO {name} VALUES ({marks})", [(i, *row) for i, row in enumerate(rows)]
        )


def purge(path: str, days: int, batch: int) -> None:
    """Purge the records older than ``days`` days with the gateway's own ``Retention`` (its
    default pause between batches), with nothing else running; print the rate."""
    from gatewatch.retention import Retention
    from gatewatch.settings import RetentionSettings

    store = SQLiteStore(path)
    try:
        settings = RetentionSettings(days=days, content_days=0, aggregate_days=0, batch=batch)
        started, cpu = time.perf_counter(), time.thread_time()
        n = Retention(store, settings).run_once().get("records", 0)
        seconds, cpu = time.perf_counter() - started, time.thread_time() - cpu
    finally:
        store.close()
    print(
        f"purged {n:,} records in {seconds:.1f} s ({n / seconds:,.0f} records/s, batches of"
        f" {batch:,}; {cpu / max(n, 1) * 1e6:.1f} µs of CPU per record)"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("db", help="SQLite file to create, e.g. /tmp/gw-old.db")
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--days-ago", type=float, default=90, help="the newest record's age")
    p.add_argument("--span-days", type=float, default=10, help="days the records span")
    p.add_argument("--purge", action="store_true", help="then purge them, and time it")
    p.add_argument("--batch", type=int, default=5000, help="records per purge transaction")
    args = p.parse_args(argv)
    if args.records < 1 or args.days_ago < 1 or args.span_days <= 0:
        p.error("--records and --days-ago must be >= 1, --span-days > 0")
    seeded = seed_old(args.db, args.records, days_ago=args.days_ago, span_days=args.span_days)
    print(
        f"seeded {seeded.records:,} records in {seeded.seconds:.1f} s"
        f" ({seeded.records / seeded.seconds:,.0f}/s; rollups {seeded.rollups_seconds:.1f} s)"
    )
    if args.purge:
        purge(args.db, int(args.days_ago) - 1 or 1, args.batch)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What only the PostgreSQL engine does: its server-side rollup functions, monthly partitions that
retention drops whole, migrations from several nodes at once, and a database that goes away.
(Everything both engines do is in tests/test_store.py, run on each.)"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from conftest import postgres_url

from gatewatch.records import Record, new_id
from gatewatch.store import Scope, StoreUnavailable, parse_filters, rollups
from gatewatch.store import migrations as migrations_module
from gatewatch.store.postgres import PostgresStore, split_url
from gatewatch.store.rollups import NS, UsageSpec, sum_hist

OWNER = Scope("owner", "", "")


@pytest.fixture
def store() -> Iterator[PostgresStore]:
    s = PostgresStore(postgres_url())
    s.migrate()
    yield s
    s.close()


def _sql(store: PostgresStore) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(store.conninfo, autocommit=True,
                           options=f"-c search_path={store.schema}")  # fmt: skip


def test_histogram_functions_agree_with_pythons(store: PostgresStore) -> None:
    """The rollups' latency histograms are merged in the server on PostgreSQL and in Python on
    SQLite: the same blobs must come out (so percentiles agree between engines)."""
    rng = random.Random(7)
    with _sql(store) as conn:
        for _ in range(100):
            a = {
                rng.randrange(150): rng.randrange(1, 2**31) for _ in range(rng.choice([1, 9, 140]))
            }
            b = {rng.randrange(150): rng.randrange(1, 2**20) for _ in range(rng.choice([1, 130]))}
            ea, eb = rollups.encode(a), rollups.encode(b)
            (merged,) = conn.execute("SELECT gw_hist_add(%s, %s)", (ea, eb)).fetchone()  # type: ignore[misc]
            assert rollups.sum_hist([merged]) == rollups.sum_hist([ea, eb])
            (summed,) = conn.execute(  # type: ignore[misc]
                "SELECT gw_hist_sum(h) FROM unnest(ARRAY[%s, %s]::bytea[]) h", (ea, eb)
            ).fetchone()
            assert rollups.sum_hist([summed]) == rollups.sum_hist([ea, eb])
        pairs = [(rng.lognormvariate(5, 2), rng.choice([None, rng.lognormvariate(4, 2)]))
                 for _ in range(500)] + [(1.2, None), (0.0, 1.0), (1e9, 1e9)]  # fmt: skip
        (raw,) = conn.execute(  # type: ignore[misc]
            "SELECT gw_hist_raw(d, t) FROM unnest(%s::float8[], %s::float8[]) AS u(d, t)",
            ([d for d, _ in pairs], [t for _, t in pairs]),
        ).fetchone()
    want: dict[int, int] = {}
    for d, t in pairs:
        lb, tb = rollups.hist_bins(d, t)
        want[lb] = want.get(lb, 0) + 1
        if tb >= 0:
            want[tb] = want.get(tb, 0) + 1
    assert rollups.sum_hist([raw]) == rollups.sum_hist([rollups.encode(want)])


def _month_start(year: int, month: int) -> float:
    return datetime(year, month, 1, tzinfo=UTC).timestamp()


def _partitions(store: PostgresStore) -> list[str]:
    with _sql(store) as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'requests'"
            " AND p.relnamespace = current_schema()::regnamespace ORDER BY 1"
        ).fetchall()
    return [str(r[0]) for r in rows]


def test_retention_drops_whole_expired_months(store: PostgresStore) -> None:
    """Records of three months: a purge up to the third month's start drops the first two
    months' partitions (no row-by-row delete), counts what went, and usage keeps them."""
    months = [(2026, 6), (2026, 7), (2026, 8)]
    records = []
    for year, month in months:
        start = _month_start(year, month) + 86400
        for i in range(30):
            t = start + i * 3600
            records.append(Record(id=new_id(t), started=t, ended=t + 0.5, endpoint="/v1/x",
                                  status_code=200, model="m", cost_usd=0.001,
                                  request_body={"q": i}, tags=["t"]))  # fmt: skip
    store.insert_records(records)
    assert {"requests_202606", "requests_202607", "requests_202608"} <= set(_partitions(store))
    lo, hi = int(_month_start(2026, 6)), int(_month_start(2026, 9))
    spec = UsageSpec(lo, hi, (lo, hi), (), parse_filters([]))

    def usage() -> dict[object, list[object]]:
        return {k: [*v[:NS], sum_hist(v[NS])] for k, v in store.usage_rows(OWNER, spec)[1].items()}

    before = usage()

    n, after = store.purge_batch("records", _month_start(2026, 8) + 86400 + 3 * 3600 + 1, 1000)
    assert n == 60 + 4  # two whole months dropped, then the first 4 hours of August row by row
    assert after is not None
    left = set(_partitions(store))
    assert "requests_202606" not in left and "requests_202607" not in left
    assert "requests_202608" in left
    page = store.list_requests(OWNER, parse_filters([]), 100, None)
    assert page.count == 26 and {r["id"] for r in page.results} == {r.id for r in records[64:]}
    assert store.list_requests(OWNER, parse_filters([("tag", "t")]), 1, None).count == 26
    assert usage() == before  # aggregates outlive raw records
    # new records of a dropped month still find a home
    t = _month_start(2026, 7) + 5
    store.insert_records([Record(id=new_id(t), started=t, ended=t + 1, endpoint="/v1/x",
                                 status_code=200)])  # fmt: skip
    assert "requests_202607" in _partitions(store)


def test_nodes_starting_at_once_migrate_once() -> None:
    url = postgres_url()
    stores = [PostgresStore(url) for _ in range(3)]
    applied: list[list[str]] = []
    go = threading.Barrier(len(stores))

    def start(s: PostgresStore) -> None:
        go.wait()
        applied.append(s.migrate())

    threads = [threading.Thread(target=start, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    names = [name for name, _ in migrations_module.MIGRATIONS]
    assert sorted(applied, key=len) == [[], [], names]
    key = stores[0].create_key({"user": "a", "org": "o"}, "h1", "gw-…")
    assert stores[2].identity_for_hash("h1").key_id == key["id"]  # type: ignore[union-attr]
    for s in stores:
        s.close()


def test_a_nul_character_does_not_lose_the_batch(store: PostgresStore) -> None:
    """PostgreSQL text cannot hold U+0000 (SQLite can): in a text field it is stored as U+FFFD
    (bodies keep it: they are stored as JSON text, where it is an escape), and the records
    around it are stored too."""
    now = time.time()
    recs = [Record(id=new_id(now + i), started=now + i, ended=now + i + 1, endpoint="/v1/x",
                   status_code=200, last_user_prompt=p, request_body={"p": p}, tags=[p])
            for i, p in enumerate(["ok", "bad\x00byte", "back\\u0000slash"])]  # fmt: skip
    store.insert_records(recs)
    got = [store.get_request(OWNER, r.id) for r in recs]
    assert [g["last_user_prompt"] for g in got if g] == ["ok", "bad\ufffdbyte", "back\\u0000slash"]
    assert got[1]["request_body"] == {"p": "bad\x00byte"}  # type: ignore[index]
    assert got[1]["tags"] == ["bad\x00byte"]  # type: ignore[index]
    # searched for as it is stored; names too
    assert store.list_requests(OWNER, parse_filters([("tag", "bad\x00byte")]), 9, None).count == 1
    user = store.create_entity("users", {"name": "nul\x00name", "org": "o"})
    assert user["name"] == "nul\ufffdname"


def test_a_lost_or_unreachable_database_is_store_unavailable(store: PostgresStore) -> None:
    """A write on a connection the server ended (a restart, a failover) or to a server that
    cannot be reached raises StoreUnavailable (the record writer spools, the API answers 503);
    the next write once it is back reconnects. Reads recover by themselves."""
    store.create_key({"user": "a", "org": "o"}, "h1", "gw-…")
    _end_backends(store)
    with pytest.raises(StoreUnavailable):
        store.create_key({"user": "a", "org": "o"}, "h2", "gw-…")
    store.create_key({"user": "a", "org": "o"}, "h2", "gw-…")
    assert store.identity_for_hash("h2") is not None  # the read pool's connection was ended too

    conninfo, store.conninfo = store.conninfo, "postgresql://postgres@127.0.0.1:1/test"
    _end_backends(store, conninfo)
    with pytest.raises(StoreUnavailable):
        store.create_key({"user": "a", "org": "o"}, "h3", "gw-…")
    store.conninfo = conninfo
    store.create_key({"user": "a", "org": "o"}, "h3", "gw-…")
    assert store.identity_for_hash("h3") is not None


def _end_backends(store: PostgresStore, conninfo: str | None = None) -> None:
    """End every server connection of the store's schema, as a database restart would."""
    with psycopg.connect(conninfo or store.conninfo, autocommit=True) as admin:
        ended = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = %s",
            (f"gatewatch:{store.schema}",),
        ).fetchone()
    assert ended is not None and ended[0] >= 2  # the writer and a reader at least


def test_schema_name_is_checked() -> None:
    assert split_url("postgresql://u@h/db?schema=team_a&sslmode=disable") == (
        "postgresql://u@h/db?sslmode=disable",
        "team_a",
    )
    with pytest.raises(ValueError, match="schema"):
        split_url("postgresql://u@h/db?schema=x;drop")


def test_nodes_making_the_same_org_and_user_at_once_agree() -> None:
    """Two nodes that start together each make the bootstrap admin key's org and user, and two
    API calls may make the same new org at once: neither fails, and both get the same ids."""
    url = postgres_url()
    stores = [PostgresStore(url) for _ in range(2)]
    stores[0].migrate()
    errors: list[BaseException] = []

    def make(s: PostgresStore, i: int, round_: int, go: threading.Barrier,
             made: list[dict[str, object]]) -> None:  # fmt: skip
        go.wait()
        try:
            s.ensure_key(key_id="key_boot", name="admin", key_hash="boot", user="admin",
                         org=f"default-{round_}", role="owner")  # fmt: skip
            made.append(s.create_key({"user": f"u{round_}", "org": f"new-{round_}"},
                                     f"h{round_}-{i}", "gw-…"))  # fmt: skip
        except BaseException as exc:
            errors.append(exc)

    for round_ in range(10):
        go = threading.Barrier(len(stores))
        made: list[dict[str, object]] = []
        threads = [threading.Thread(target=make, args=(s, i, round_, go, made))
                   for i, s in enumerate(stores)]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
        assert len({k["user_id"] for k in made}) == 1 and len({k["org_id"] for k in made}) == 1
    for s in stores:
        s.close()


def test_serve_with_an_unreachable_database_says_so(tmp_path: Path) -> None:
    """`gatewatch serve` on a PostgreSQL that cannot be reached: a one-line reason, exit 1, no
    traceback, and the URL's password hidden."""
    config = tmp_path / "gatewatch.yaml"
    config.write_text('database: "postgresql://gw:s3cret@127.0.0.1:1/test?schema=x"\n')
    exe = Path(sys.executable).with_name("gatewatch")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWATCH_")}
    done = subprocess.run([str(exe), "serve", "--config", str(config), "--port", "1"],
                          capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert done.returncode == 1
    assert "the database is not available" in done.stderr and "Traceback" not in done.stderr
    assert "s3cret" not in done.stderr and "gw:***@127.0.0.1:1" in done.stderr

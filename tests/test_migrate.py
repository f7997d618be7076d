"""``gatewatch migrate``: a SQLite database moved to PostgreSQL (and back) answers every question
as it did, and a run that was stopped (Ctrl-C, a kill) goes on where it stopped."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import PG_URL, postgres_url
from typer.testing import CliRunner

from gatewatch.records import Attempt, Record, ToolCall, new_id
from gatewatch.store import RequestQuery, Scope, SQLiteStore, Store, parse_filters
from gatewatch.store.postgres import PostgresStore
from gatewatch.store.rollups import NS, UsageSpec, sum_hist

GATEWATCH = str(Path(sys.executable).with_name("gatewatch"))
OWNER = Scope("owner", "", "")
DAY = 86400
T0 = 1_733_011_200  # 2024-12-01 UTC: the records span five months (five partitions)
SPAN = 130 * DAY
N = 1500


@dataclass
class Source:
    url: str
    store: SQLiteStore
    key_hashes: dict[str, str]  # key id → its hash


def _records(keys: dict[str, tuple[str, str, str]]) -> list[Record]:
    """Records as the proxy writes them: three keys, several providers and models, errors,
    tags and meta, bodies on some, one every ~2 h over 130 days."""
    out = []
    owners = list(keys.items())
    for i in range(N):
        started = T0 + i * (SPAN / N) + (i % 7) * 0.123
        key_id, (org_id, user_id, name) = owners[i % len(owners)]
        failed = i % 11 == 0
        r = Record(
            id=new_id(started), started=started, ended=started + 0.4 + (i % 13) / 10,
            endpoint="/v1/chat/completions" if i % 3 else "/v1/messages",
            org_id=org_id, org=name.split("@")[1], user_id=user_id, user=name.split("@")[0],
            api_key_id=key_id, api_key_name=name, end_user=f"customer-{i % 5}",
            session=f"s-{i // 20}", workflow=("triage", "search", None)[i % 3],
            client=("claude-code", "cursor", None)[i % 3], provider=("openai", "anthropic")[i % 2],
            model_requested=("fast", "smart")[i % 2],
            model=("gpt-4o-mini", "claude-sonnet-4-5")[i % 2], stream=bool(i % 2),
            status_code=502 if failed else 200, status="error" if failed else "ok",
            error_type="bad_gateway" if failed else None,
            input_tokens=100 + i, output_tokens=20 + i % 50, cache_read_tokens=i % 3 * 10,
            reasoning_tokens=0, cost_usd=None if i % 17 == 0 else round(0.0001 * (1 + i % 37), 7),
            ttft_ms=80.0 + i % 90, tags=["batch"] if i % 4 else ["batch", "nightly"],
            meta={"team": ("search", "ads")[i % 2], "ticket": f"T-{i % 9}"},
            last_user_prompt=f"question {i} ☀",
            tool_calls=[ToolCall("get_weather", f"call_{i}", '{"city":"Paris"}')] if i % 5 == 0
            else [],
            attempts=[Attempt(("openai", "anthropic")[i % 2], "m", 200, "ok", 400.0)],
            request_body={"messages": [{"role": "user", "content": f"question {i}"}]}
            if i % 3 == 0 else None,
            response_body={"answer": i, "text": "x" * (i % 200)} if i % 3 == 0 else None,
        )  # fmt: skip
        out.append(r)
    return out


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    """A SQLite database filled through the store's write path, with its oldest records purged
    (their usage and spend live on in the rollups only)."""
    path = tmp_path_factory.mktemp("migrate") / "old.db"
    store = SQLiteStore(str(path))
    store.migrate()
    hashes, who = {}, {}
    for name in ("alice@acme", "bob@acme", "carol@globex"):
        user, org = name.split("@")
        key = store.create_key({"user": user, "org": org, "name": name, "budget_usd": 50.0},
                               f"hash-{name}", "gw-…")  # fmt: skip
        hashes[key["id"]] = f"hash-{name}"
        who[key["id"]] = (key["org_id"], key["user_id"], name)
    records = _records(who)
    for i in range(0, N, 400):
        store.insert_records(records[i : i + 400])
    org_id = who[next(iter(who))][0]
    store.add_adjustment("org", org_id, org_id, -5.0, "credit", "admin")
    store.add_adjustment("key", next(iter(who)), org_id, 1.25, "setup fee", "admin")
    spec = {"name": "spend", "type": "spend", "threshold_usd": 10.0, "window": "1d"}
    rule = store.add_alert_rule(None, spec, "admin", T0 + SPAN)
    event = {"rule_id": rule["id"], "rule": "spend", "type": "spend", "org_id": org_id,
             "subject_key": org_id, "subject": "acme", "state": "firing", "value": 12.0,
             "threshold": 10.0, "started_at": T0 + SPAN, "message": "acme spent $12"}  # fmt: skip
    fired = store.add_alert_event(event, [("ops", "slack"), ("pager", "json")], T0 + SPAN)
    store.update_alert_delivery(fired["deliveries"][0]["id"], status="delivered", attempts=1,
                                at=T0 + SPAN + 1, status_code=200)  # fmt: skip
    purged, _ = store.purge_batch("records", T0 + 20 * DAY, 100_000)
    assert purged > 100
    yield Source(f"sqlite:///{path}", store, hashes)
    store.close()


def migrate(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWATCH_")}
    return subprocess.run([GATEWATCH, "migrate", *args], capture_output=True, text=True,
                          timeout=60, env={**env, "COLUMNS": "200"}, **kw)  # fmt: skip


def _plain(value: Any) -> Any:
    """Numbers rounded where two engines may add them up in another order; arrays as lists."""
    if isinstance(value, float):
        return round(value, 9)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    return value


def _usage(metrics: list[Any]) -> list[Any]:
    """A usage row's sums and its merged latency histogram (as counts: the engines may hand
    back the histograms in different forms)."""
    return [*metrics[:NS], sum_hist(metrics[NS])]


def answers(store: Store, key_hashes: dict[str, str]) -> dict[str, Any]:
    """What the API and the dashboard would show: pages, counts, records with bodies, usage,
    spend, transactions, identities, alerts."""
    out: dict[str, Any] = {}
    everything = parse_filters([])
    ids, after = [], None
    while True:
        page = store.list_requests(OWNER, everything, 400, after)
        ids += [r["id"] for r in page.results]
        out.setdefault("count", page.count)
        if page.next_after_id is None:
            break
        after = page.next_after_id
    out["ids"] = ids
    out["first page"] = store.list_requests(OWNER, everything, 50, None).results
    for name, value in (("tag", "nightly"), ("meta.team", "ads"), ("model", "smart"),
                        ("status", "error"), ("provider", "openai")):  # fmt: skip
        out[f"count {name}"] = store.list_requests(OWNER, parse_filters([(name, value)]), 5, None)
    out["records"] = [store.get_request(OWNER, rid) for rid in ids[::97]]
    days = tuple(range(T0, T0 + SPAN + DAY, DAY))
    for by in ((), ("model",), ("user",), ("tag",)):
        spec = UsageSpec(T0, T0 + SPAN, days, by, RequestQuery({}))
        source, rows = store.usage_rows(OWNER, spec)
        out[f"usage {by}"] = source, {k: _usage(v) for k, v in rows.items()}
    out["transactions"] = store.list_transactions(OWNER, {}, 1000, None)
    for key_id, key_hash in key_hashes.items():
        identity = store.identity_for_hash(key_hash)
        assert identity is not None and identity.key_id == key_id
        out[key_id] = identity
        out[f"spend {key_id}"] = [
            store.spend(scope, sid, T0, T0 + SPAN + DAY)
            for scope, sid in (("key", key_id), ("user", identity.user_id),
                               ("org", identity.org_id))
        ]  # fmt: skip
    for kind in ("orgs", "users", "keys"):
        out[kind] = store.list_entities(kind, OWNER, 100, None)
    out["keys version"] = store.keys_version()
    out["alert rules"] = store.alert_rules()
    out["alert events"] = store.list_alert_events(OWNER, {}, 100, None)
    out["unsent"] = store.unsent_alert_deliveries(0)
    return _plain(out)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def migrated(source: Source) -> tuple[str, subprocess.CompletedProcess[str]]:
    url = postgres_url()
    return url, migrate("--from", source.url, "--to", url)


def test_sqlite_to_postgresql_answers_as_before(
    source: Source, migrated: tuple[str, subprocess.CompletedProcess[str]]
) -> None:
    url, run = migrated
    assert run.returncode == 0, run.stderr
    target = PostgresStore(url)
    try:
        want, got = answers(source.store, source.key_hashes), answers(target, source.key_hashes)
        assert want["count"] == len(want["ids"]) > 1000
        assert any(r["response_body"] for r in want["records"])
        assert got == want
        months = target._reader().execute(
            "SELECT count(*) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent"
            " WHERE p.relname = 'requests' AND p.relnamespace = current_schema()::regnamespace"
        )
        assert months.fetchone()[0] >= 5  # a partition per month of records (and the default)
    finally:
        target.close()


def test_the_copy_is_checked_and_a_second_run_changes_nothing(
    source: Source, migrated: tuple[str, subprocess.CompletedProcess[str]]
) -> None:
    url, run = migrated
    lines = [" ".join(line.replace("│", " ").split()) for line in run.stdout.splitlines()]
    rows = source.store._reader().execute("SELECT count(*) FROM requests").fetchone()[0]
    assert f"requests rows {rows:,} {rows:,} same" in lines
    for check in ("requests sum(cost_usd)", "requests sum(output_tokens)",
                  "rollup_base sum(cost_nusd)", "rollup_user sum(requests)",
                  "billing_adjustments sum(amount_usd)", "keys rows 3 3 same",
                  "alert_deliveries rows 2 2 same"):  # fmt: skip
        assert any(line.startswith(check) and line.endswith("same") for line in lines), check
    assert "DIFFERS" not in run.stdout and "Traceback" not in run.stderr
    assert "leases" not in run.stdout and "_migrations" not in run.stdout
    again = migrate("--from", source.url, "--to", url)
    assert again.returncode == 0, again.stderr
    assert again.stdout == run.stdout


def test_postgresql_back_to_sqlite_and_a_difference_is_named(
    source: Source, migrated: tuple[str, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    url, run = migrated
    assert run.returncode == 0, run.stderr
    back = tmp_path / "back.db"
    done = migrate("--from", url, "--to", f"sqlite:///{back}", "--batch", "700")
    assert done.returncode == 0, done.stderr
    copy = SQLiteStore(str(back))
    try:
        assert answers(copy, source.key_hashes) == answers(source.store, source.key_hashes)
    finally:
        copy.close()
    db = sqlite3.connect(back)
    db.execute(
        "UPDATE requests SET cost_usd = cost_usd + 1 WHERE id = (SELECT max(id) FROM requests)"
    )
    db.commit()
    db.close()
    differs = migrate("--from", url, "--to", f"sqlite:///{back}")
    assert differs.returncode == 1
    message = " ".join(differs.stderr.split())
    assert "the copy differs from the source: requests: sum(cost_usd)" in message
    assert "Traceback" not in differs.stderr


def _count(url: str, table: str, conn: psycopg.Connection[Any] | None = None) -> int:
    """Rows in a table of the target (0 while it does not exist yet)."""
    if conn is None:
        conninfo, schema = url.split("?schema=")
        with psycopg.connect(conninfo, options=f"-c search_path={schema}") as conn:
            return _count(url, table, conn)
    if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone() == (None,):
        return 0
    return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[index]


def _stop(args: list[str], url: str, table: str, rows: int, how: signal.Signals) -> str:
    """Start a copy and stop it with ``how`` once ``table`` has ``rows`` rows in the target;
    returns what it wrote to stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWATCH_")}
    conninfo, schema = url.split("?schema=")
    with psycopg.connect(conninfo, autocommit=True, options=f"-c search_path={schema}") as conn:
        proc = subprocess.Popen([GATEWATCH, "migrate", *args], env=env, text=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while _count(url, table, conn) < rows:
                assert proc.poll() is None, "the copy ended before it could be stopped"
                assert time.monotonic() < deadline
                time.sleep(0.002)
        finally:
            proc.send_signal(how)
            _, err = proc.communicate(timeout=20)
    assert proc.returncode == (130 if how == signal.SIGINT else -how), err
    return err


def test_a_stopped_run_goes_on_where_it_stopped(source: Source) -> None:
    url = postgres_url()
    args = ["--from", source.url, "--to", url]
    reader = source.store._reader()
    facets, requests = (reader.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                        for t in ("request_facets", "requests"))  # fmt: skip
    # Ctrl-C in the middle of the facets (copied in key order: name, value, request)
    err = _stop([*args, "--batch", "50"], url, "request_facets", 500, signal.SIGINT)
    assert "interrupted" in err and "run the same command again" in err
    assert "Traceback" not in err and "error ignored" not in err
    assert 500 <= _count(url, "request_facets") < facets
    assert _count(url, "requests") == 0  # tables go in name order: not reached yet
    # then a kill in the middle of the records
    _stop([*args, "--batch", "25"], url, "requests", 200, signal.SIGKILL)
    assert _count(url, "request_facets") == facets
    assert 200 <= _count(url, "requests") < requests
    resumed = migrate(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert "DIFFERS" not in resumed.stdout
    target = PostgresStore(url)
    try:
        assert answers(target, source.key_hashes) == answers(source.store, source.key_hashes)
    finally:
        target.close()


def test_bad_urls_are_named_without_a_password(source: Source, tmp_path: Path) -> None:
    import gatewatch.cli_admin  # noqa: F401  (registers the command)
    from gatewatch.cli import app

    cases = [
        (["--from", "mysql://root:hunter2@db/gw", "--to", source.url], "unsupported database URL"),
        (["--from", f"sqlite:///{tmp_path}/missing.db", "--to", source.url], "does not exist"),
        (["--from", source.url, "--to", "postgresql://gw:hunter2@127.0.0.1:1/gw"],
         "--to: cannot open postgresql://gw:***@127.0.0.1:1/gw"),
        (["--from", f"{PG_URL}?schema=no_such_schema",
          "--to", f"sqlite:///{tmp_path}/x.db"], "holds no gatewatch database"),
        (["--from", source.url, "--to", source.url], "name the same database"),
    ]  # fmt: skip
    runner = CliRunner()
    for args, message in cases:
        run = runner.invoke(app, ["migrate", *args])
        assert run.exit_code == 1, (args, run.output)
        assert message in " ".join(run.stderr.split()), (args, run.stderr)
        assert "hunter2" not in run.output
        assert isinstance(run.exception, SystemExit)  # a message, not a traceback

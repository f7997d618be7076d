"""Retention (§T1): old records, old content and old rollups are purged; the rollups outlive
the records; organizations can keep theirs longer; a dry run counts without removing."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import RunningGateway

from gatewatch.records import Record, ToolCall, new_id
from gatewatch.retention import Retention
from gatewatch.settings import RetentionSettings
from gatewatch.store import Scope, SQLiteStore
from gatewatch.store.rollups import UsageSpec

DAY = 86400
OWNER = Scope("owner", "", "")


def _record(started: float, org_id: str, n: int) -> Record:
    r = Record(
        id=new_id(started), started=started, endpoint="/v1/chat/completions", org_id=org_id,
        user_id=f"usr_{org_id}", provider="openai", model="gpt-4o-mini", status_code=200,
        input_tokens=10, output_tokens=5, cost_usd=0.001, tags=["t"], meta={"team": "a"},
        last_user_prompt=f"secret prompt {n}",
        tool_calls=[ToolCall("get_weather", f"call_{n}", '{"city": "Paris"}')],
        request_body={"messages": [{"role": "user", "content": f"secret prompt {n}"}]},
        response_body={"choices": [{"message": {"content": "sunny"}}]},
    )  # fmt: skip
    r.ended = started + 0.5
    return r


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    s = SQLiteStore(str(tmp_path / "r.db"))
    s.migrate()
    with s._transaction() as db:
        for org in ("acme", "keep", "brief"):
            db.execute("INSERT INTO orgs (id, name, created_at) VALUES (?, ?, 'x')", (org, org))
    return s


NOW = 1_790_000_000.0
AGES = {"old": 100, "middle": 45, "recent": 10}


def _seed(store: SQLiteStore) -> dict[tuple[str, str], str]:
    ids: dict[tuple[str, str], str] = {}
    records = []
    for org in ("acme", "keep", "brief"):
        for i, (label, days) in enumerate(AGES.items()):
            r = _record(NOW - days * DAY + i, org, len(records))
            ids[(org, label)] = r.id
            records.append(r)
    store.insert_records(sorted(records, key=lambda r: r.id))
    return ids


def _usage_requests(store: SQLiteStore, org: str) -> int:
    lo = int(NOW - 200 * DAY) // DAY * DAY
    spec = UsageSpec(lo, lo + 200 * DAY, (lo, lo + 200 * DAY), (), _org(org))
    source, rows = store.usage_rows(OWNER, spec)
    assert source == "rollups"
    return sum(v[0] for v in rows.values())


def _org(org: str) -> Any:
    from gatewatch.store import RequestQuery

    return RequestQuery({"org": [org]})


@pytest.mark.parametrize("batch", [1, 1000])  # 1: batches step over the records kept
def test_records_content_and_rollups_each_have_their_own_age(
    store: SQLiteStore, batch: int
) -> None:
    ids = _seed(store)
    settings = RetentionSettings(
        days=60, content_days=30, aggregate_days=400, batch=batch,
        orgs={"keep": {"days": 0, "content_days": 0}, "brief": {"days": 5}},
    )  # fmt: skip
    retention = Retention(store, settings, pause=0)
    planned = retention.run_once(now=NOW, dry_run=True)
    assert store.get_request(OWNER, ids[("acme", "old")]) is not None  # a dry run removes nothing
    done = retention.run_once(now=NOW)
    assert {k: v for k, v in done.items() if k != "rollups"} == {
        k: v for k, v in planned.items() if k != "rollups"
    }
    get = lambda org, label: store.get_request(OWNER, ids[(org, label)])  # noqa: E731
    # acme follows the defaults: the old record is gone, the middle one lost its content only
    assert get("acme", "old") is None
    middle = get("acme", "middle")
    assert middle is not None and middle["request_body"] is None
    assert middle["response_body"] is None and middle["last_user_prompt"] is None
    assert middle["tool_calls"] == [{"name": "get_weather", "call_id": "call_1", "arguments": ""}]
    assert middle["input_tokens"] == 10 and middle["tags"] == ["t"]
    recent = get("acme", "recent")
    assert recent is not None and recent["last_user_prompt"] == "secret prompt 2"
    assert recent["request_body"]["messages"][0]["content"] == "secret prompt 2"
    # keep (0 = forever) keeps everything; brief keeps records 5 days (content the default 30)
    assert all(get("keep", label)["request_body"] is not None for label in AGES)  # type: ignore[index]
    assert all(get("brief", label) is None for label in AGES)
    # the facet rows of purged records are gone too (a tag filter finds only what is left)
    from gatewatch.store import RequestQuery

    page = store.list_requests(OWNER, RequestQuery({"tag": ["t"]}), 100, None)
    assert page.count == len(page.results) == 5
    # the rollups outlive the records: usage still counts every request
    assert _usage_requests(store, "acme") == 3 and _usage_requests(store, "brief") == 3
    # nothing left to do
    assert not any(retention.run_once(now=NOW).values())


def test_rollups_go_after_aggregate_days_and_rebuild_keeps_older_days(store: SQLiteStore) -> None:
    _seed(store)
    Retention(store, RetentionSettings(days=60, content_days=0, aggregate_days=0)).run_once(NOW)
    assert _usage_requests(store, "acme") == 3
    store.rebuild_rollups()  # the old day has no records any more: its rollups are kept
    assert _usage_requests(store, "acme") == 3
    counts = Retention(
        store, RetentionSettings(days=0, content_days=0, aggregate_days=50)
    ).run_once(NOW)
    assert counts["rollups"] > 0
    assert _usage_requests(store, "acme") == 2  # the 100-day-old request's rollups are gone


def test_one_purger_at_a_time(store: SQLiteStore) -> None:
    assert store.acquire_lease("retention", "a", 60)
    assert not store.acquire_lease("retention", "b", 60)
    assert store.acquire_lease("retention", "a", 60)  # renewal
    with store._transaction() as db:
        db.execute("UPDATE leases SET until = 0")  # a's lease ran out
    assert store.acquire_lease("retention", "b", 60)


def _old_records(store: SQLiteStore, n: int) -> list[str]:
    records = [_record(time.time() - 40 * DAY + i, "acme", i) for i in range(n)]
    store.insert_records(records)
    return [r.id for r in records]


def _wait_for(cond: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_long_purge_keeps_its_lease_and_stops_with_the_loop(store: SQLiteStore) -> None:
    """A purge that outlasts its lease renews it (no second process starts purging the same
    records), and stopping the gateway stops it after the current batch instead of waiting
    for the whole backlog."""
    ids = _old_records(store, 60)
    settings = RetentionSettings(days=30, content_days=0, interval=0.05, batch=1)
    retention = Retention(store, settings, pause=0.05)  # ~3 s for 60 records; lease: 0.15 s

    async def run() -> None:
        task = asyncio.create_task(retention.loop())
        started = lambda: store.get_request(OWNER, ids[0]) is None  # noqa: E731
        await asyncio.to_thread(_wait_for, started)
        await asyncio.sleep(0.5)  # more than three leases
        assert not store.acquire_lease("retention", "another-process", 60)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(run())
    left = sum(store.get_request(OWNER, i) is not None for i in ids)
    time.sleep(0.3)
    assert 0 < left == sum(store.get_request(OWNER, i) is not None for i in ids)


def test_cli_dry_run_then_run(tmp_path: Path, store: SQLiteStore) -> None:
    ids = _seed(store)
    now_ids = [new_id(time.time() - d * DAY) for d in (100, 10)]
    records = [_record(time.time() - d * DAY, "acme", i) for i, d in enumerate((100, 10))]
    store.insert_records(records)
    del now_ids, ids
    config = tmp_path / "gw.yaml"
    config.write_text(
        f"database: sqlite:///{store.path}\nretention: {{days: 60, content_days: 30}}\n"
    )
    exe = str(Path(sys.executable).with_name("gatewatch"))
    dry = subprocess.run([exe, "retention", "run", "--dry-run", "--config", str(config)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert "would go" in dry.stdout and "records" in dry.stdout
    assert store.get_request(OWNER, records[0].id) is not None
    run = subprocess.run([exe, "retention", "run", "--config", str(config)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert store.get_request(OWNER, records[0].id) is None
    assert store.get_request(OWNER, records[1].id) is not None


def test_gateway_purges_in_the_background(start_gateway: Callable[..., RunningGateway]) -> None:
    gw = start_gateway(retention={"days": 30, "interval": 0.2})
    old = _record(time.time() - 40 * DAY, gw.gateway.store.org_ids(["default"])["default"], 0)
    gw.gateway.store.insert_records([old])
    deadline = time.monotonic() + 10
    while gw.gateway.store.get_request(OWNER, old.id) is not None:
        assert time.monotonic() < deadline, "the purge did not run"
        time.sleep(0.05)
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert 'gatewatch_retention_purged_total{kind="records"} 1.0' in metrics


def test_budget_spend_survives_the_purge_of_old_records(store: SQLiteStore) -> None:
    _seed(store)
    before = {
        (scope, sid): store.spend(scope, sid, 0, NOW + DAY)
        for scope, sid in (("org", "acme"), ("user", "usr_acme"), ("org", "brief"))
    }
    month = store.spend("org", "acme", NOW - 50 * DAY, NOW + DAY)
    Retention(store, RetentionSettings(days=30, content_days=0)).run_once(now=NOW)
    assert store.get_request(OWNER, _ids_of(store, "acme")[0]) is not None  # one record is left
    for (scope, sid), spent in before.items():
        # a total budget still counts the purged records' cost, from the usage rollups
        assert store.spend(scope, sid, 0, NOW + DAY) == pytest.approx(spent, abs=1e-9)
    assert spent == pytest.approx(0.003)
    assert store.spend("org", "acme", NOW - 50 * DAY, NOW + DAY) == pytest.approx(month)


def _ids_of(store: SQLiteStore, org: str) -> list[str]:
    from gatewatch.store import RequestQuery

    return [
        r["id"] for r in store.list_requests(OWNER, RequestQuery({"org": [org]}), 10, None).results
    ]

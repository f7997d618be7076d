"""The durable spool (§S): records wait on disk while the database is slow, locked or down,
and are stored once, in order, when it is back."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from conftest import ADMIN_KEY, RunningGateway

from gatewatch.records import Record, ToolCall, new_id
from gatewatch.store import RecordWriter, Scope, SQLiteStore, Store, parse_filters
from gatewatch.store.spool import Spool, frame

OWNER = Scope("owner", "", "")


def _rec(i: int = 0, **fields: Any) -> Record:
    now = time.time()
    return Record(
        id=new_id(now), started=now, ended=now + 0.01, endpoint="/v1/chat/completions",
        status_code=200, provider="openai", model="gpt-4o-mini", input_tokens=i,
        output_tokens=2 * i, cost_usd=i * 1e-6, tags=[f"t{i % 3}"], meta={"n": str(i)},
        request_body={"messages": [{"role": "user", "content": f"prompt {i}"}]},
        **fields,
    )  # fmt: skip


def _stored(store: Store) -> list[str]:
    ids: list[str] = []
    after = None
    while True:
        page = store.list_requests(OWNER, parse_filters([]), 1000, after)
        ids.extend(r["id"] for r in page.results)
        if page.next_after_id is None:
            return ids
        after = page.next_after_id


def _usage_requests(store: SQLiteStore) -> int:
    """What the usage rollups count: a record stored twice would count twice here."""
    db = sqlite3.connect(store.path)
    try:
        (n,) = db.execute(
            "SELECT coalesce(sum(requests), 0) FROM rollup_base WHERE grain = 'h'"
        ).fetchone()
    finally:
        db.close()
    return int(n)


class _FlakyStore:
    """A real store behind a switch: while ``down`` is set, inserts fail like a database that
    went away; while ``hold`` is set, they wait (a database that stopped answering)."""

    def __init__(self, inner: SQLiteStore) -> None:
        self.inner = inner
        self.down = threading.Event()
        self.hold = threading.Event()
        self.calls = 0

    def prepare(self, record: Record) -> object:
        return self.inner.prepare(record)

    def spool_encode(self, prepared: object) -> bytes:
        return self.inner.spool_encode(prepared)

    def spool_decode(self, payload: bytes) -> object:
        return self.inner.spool_decode(payload)

    def insert_prepared(self, batch: Sequence[object]) -> None:
        self.calls += 1
        while self.hold.is_set():
            time.sleep(0.01)
        if self.down.is_set():
            raise sqlite3.OperationalError("unable to open database file")
        self.inner.insert_prepared(batch)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(str(tmp_path / "gw.db"))
    s.migrate()
    yield s
    s.close()


def _writer(store: Any, spool_dir: Path, **kw: Any) -> RecordWriter:
    kw.setdefault("max_bytes", 1 << 26)
    spool = Spool(spool_dir, kw.pop("max_bytes"))
    kw.setdefault("spill_after", 0.3)
    return RecordWriter(store, max_pending=10_000, batch_size=50, spool=spool, **kw)


def _wait(cond: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# ---- the spool file ---------------------------------------------------------------------------


def test_spool_lines_are_checksummed_and_a_torn_tail_is_skipped(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 30)
    spool.append([b'{"a":1}', b'{"a":2}'])
    spool.append([b"x" * 5_000_000])  # longer than a read block
    spool.sync()
    path = spool.segments[0].path
    spool.close()
    with path.open("ab") as f:  # a writer killed in the middle of a line
        f.write(frame(b'{"a":3}')[:7])
    damaged = path.read_bytes().replace(b'{"a":2}', b'{"a":9}')  # and one flipped byte
    path.write_bytes(damaged)

    again = Spool(tmp_path, 1 << 30)
    assert again.adopt_orphans() == 4
    seg = again.segments[0]
    payloads, end, lines = again.read(seg, 100)
    assert payloads == [b'{"a":1}', b"x" * 5_000_000]
    assert (end, lines) == (seg.size, 4) and again.damaged == 2
    again.mark_done(seg, end, lines)
    assert again.records == 0 and not again.segments and not list(tmp_path.iterdir())


def test_a_live_writer_s_segments_are_not_adopted(tmp_path: Path) -> None:
    mine = Spool(tmp_path, 1 << 20)
    mine.append([b"{}"])
    other = Spool(tmp_path, 1 << 20)
    assert other.adopt_orphans() == 0  # flock held by `mine`
    mine.close()
    assert other.adopt_orphans() == 1


# ---- the writer -------------------------------------------------------------------------------


def test_database_down_records_spool_then_replay_in_order_once(
    store: SQLiteStore, tmp_path: Path
) -> None:
    flaky = _FlakyStore(store)
    writer = _writer(flaky, tmp_path / "spool")
    writer.start()
    try:
        first = [_rec(i) for i in range(20)]
        for r in first:
            writer.submit(r)
        _wait(lambda: writer.pending == 0)
        flaky.down.set()
        down = [_rec(i) for i in range(20, 320)]
        for r in down:
            writer.submit(r)
        _wait(lambda: writer.spooling and writer.spool is not None and writer.spool.records >= 300)
        assert writer.pending == 300  # counted while on disk
        assert writer.state()["state"] == "spooling" and writer.last_error
        assert len(_stored(store)) == 20
        flaky.down.clear()
        _wait(lambda: writer.pending == 0 and not writer.spooling)
        assert writer.last_error is None
    finally:
        writer.close(10)
    ids = _stored(store)
    assert sorted(ids) == sorted(r.id for r in first + down)
    assert _usage_requests(store) == 320
    assert writer.replayed >= 300 and writer.dropped == 0
    assert not list((tmp_path / "spool").glob("*.spool"))  # replayed segments are deleted


def test_a_database_that_stops_answering_spills_the_batch_in_flight(
    store: SQLiteStore, tmp_path: Path
) -> None:
    flaky = _FlakyStore(store)
    writer = _writer(flaky, tmp_path / "spool", spill_after=0.2)
    writer.start()
    try:
        flaky.hold.set()
        records = [_rec(i) for i in range(40)]
        for r in records[:10]:
            writer.submit(r)
        # the writer is stuck on the first batch: after spill_after it is on disk
        _wait(lambda: writer.spool is not None and writer.spool.records >= 10)
        for r in records[10:]:
            writer.submit(r)
        _wait(lambda: writer.spool is not None and writer.spool.records >= 40)
        flaky.hold.clear()
        _wait(lambda: writer.pending == 0)
    finally:
        writer.close(10)
    # the first batch was stored by the stuck call and replayed from the spool: counted once
    assert sorted(_stored(store)) == sorted(r.id for r in records)
    assert _usage_requests(store) == 40


def test_close_with_the_database_down_leaves_records_for_the_next_start(
    store: SQLiteStore, tmp_path: Path
) -> None:
    flaky = _FlakyStore(store)
    flaky.down.set()
    writer = _writer(flaky, tmp_path / "spool")
    writer.start()
    records = [_rec(i) for i in range(75)]
    for r in records:
        writer.submit(r)
    writer.close(1.0)
    assert writer.left_in_spool == 75 and _stored(store) == []

    later = _writer(store, tmp_path / "spool")  # the next start: adopts and replays
    later.start()
    try:
        _wait(lambda: later.pending == 0)
    finally:
        later.close(10)
    assert sorted(_stored(store)) == sorted(r.id for r in records)
    assert _usage_requests(store) == 75


def test_full_spool_drops_oldest_and_counts(store: SQLiteStore, tmp_path: Path) -> None:
    flaky = _FlakyStore(store)
    flaky.down.set()
    drops: list[int] = []
    writer = _writer(flaky, tmp_path / "spool", max_bytes=60_000, on_drop=drops.append)
    writer.start()
    try:
        for i in range(400):
            writer.submit(_rec(i))
            if i % 50 == 49:
                time.sleep(0.15)
        _wait(lambda: writer._queue.unfinished_tasks == 0)
        spool = writer.spool
        assert spool is not None
        assert writer.dropped > 0 and sum(drops) == writer.dropped
        assert spool.size <= 60_000 + 20_000  # the limit, give or take one batch
        kept = spool.records
        assert kept + writer.dropped == 400
        flaky.down.clear()
        _wait(lambda: writer.pending == 0)
    finally:
        writer.close(10)
    # what survives is the newest: the oldest went first
    stored = sorted(_stored(store))
    assert len(stored) == kept and stored[-1] == max(stored)


# ---- the gateway ------------------------------------------------------------------------------


class _Locker:
    """Another process that holds SQLite's write lock on the gateway's database file."""

    def __init__(self, path: str) -> None:
        code = (
            "import sqlite3, sys\n"
            "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "db.execute('PRAGMA busy_timeout=10000')\n"
            "db.execute('BEGIN EXCLUSIVE')\n"
            "print('locked', flush=True)\n"
            "sys.stdin.readline()\n"
            "db.execute('ROLLBACK')\n"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "locked"

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        self.proc.wait(10)


def _load(url: str, n: int, workers: int = 16, body: Callable[[int], dict[str, Any]] | None = None,
          ) -> list[tuple[int, str]]:  # fmt: skip
    def one(i: int, client: httpx.Client) -> tuple[int, str]:
        payload = (
            body(i)
            if body
            else {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": f"request {i}"}],
                "stream": i % 3 == 0,
            }
        )
        with client.stream("POST", "/v1/chat/completions", json=payload) as resp:
            resp.read()
            return resp.status_code, resp.headers.get("x-gatewatch-request-id", "")

    limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
    with (
        httpx.Client(base_url=url, timeout=30, limits=limits,
                     headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as client,
        ThreadPoolExecutor(workers) as pool,
    ):  # fmt: skip
        return list(pool.map(lambda i: one(i, client), range(n)))


def test_locked_database_under_load_loses_nothing(
    start_gateway: Callable[..., RunningGateway],
) -> None:
    gw = start_gateway(spool={"spill_after": 0.2})
    assert httpx.get(f"{gw.url}/readyz").json()["status"] == "ready"
    before = _load(gw.url, 50)
    gw.wait_records()
    locker = _Locker(gw.gateway.settings.sqlite_path)
    try:
        during = _load(gw.url, 600)
        _wait(lambda: gw.gateway.writer.spooling)
        ready = httpx.get(f"{gw.url}/readyz")
        assert ready.status_code == 200
        body = ready.json()
        assert body["status"] == "degraded" and "store" in body["degraded"]
        assert body["checks"]["store"]["state"] == "spooling"
        assert body["checks"]["spool"]["records"] > 0
    finally:
        locker.release()
    after = _load(gw.url, 50)
    sent = before + during + after
    assert {status for status, _ in sent} == {200}  # every request answered throughout
    gw.wait_records(30)
    ids = {rid for _, rid in sent}
    records = gw.records(limit=1000)
    with gw.api() as c:
        count = c.get("/api/v1/requests", params={"limit": 1}).json()["count"]
        start = time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime(time.time() - 7200))
        usage = c.get("/api/v1/usage", params={"start": start, "bucket": "hour"}).json()
    assert count == len(sent) == 700
    assert {r["id"] for r in records} == ids  # each answered request's record, once
    assert usage["totals"]["requests"] == 700, usage  # the rollups counted each record once
    assert gw.gateway.writer.replayed > 0 and gw.gateway.writer.dropped == 0
    assert httpx.get(f"{gw.url}/readyz").json()["status"] == "ready"
    print(f"\nlocked database: {len(sent)} requests sent, {count} records stored, "
          f"{gw.gateway.writer.replayed} of them through the spool")  # fmt: skip


def test_full_spool_with_refuse_answers_503_in_the_family_shape(
    start_gateway: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    gw = start_gateway(spool={"max_bytes": 2000, "on_full": "refuse", "spill_after": 0.1})
    locker = _Locker(gw.gateway.settings.sqlite_path)
    try:
        statuses = [s for s, _ in _load(gw.url, 40, workers=4)]
        _wait(lambda: gw.gateway.writer.refusing)
        r = httpx.post(
            f"{gw.url}/v1/messages",
            headers={"x-api-key": ADMIN_KEY},
            json={"model": "claude-haiku-4-5", "max_tokens": 5,
                  "messages": [{"role": "user", "content": "hi"}]},
        )  # fmt: skip
        assert r.status_code == 503
        assert r.json()["type"] == "error" and "spool full" in r.json()["error"]["message"]
        ready = httpx.get(f"{gw.url}/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["spool"]["full"] is True
    finally:
        locker.release()
    _wait(lambda: not gw.gateway.writer.refusing)
    assert httpx.get(f"{gw.url}/readyz").status_code == 200
    gw.wait_records(30)
    with gw.api() as c:
        count = c.get("/api/v1/requests", params={"limit": 1, "status": "ok"}).json()["count"]
    # the spool fills within the first requests: from then on requests are turned away (503)
    # rather than served without a record; every request that was served is recorded
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 1
    assert count == statuses.count(200)


def test_metadata_only_keeps_prompts_out_of_every_file(
    start_gateway: Callable[..., RunningGateway], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    data = tmp_path / "data"
    gw = start_gateway(
        content="metadata_only",
        database=f"sqlite:///{data / 'gw.db'}",
        spool={"spill_after": 0.1},
    )
    secret_words = [f"zebra-cobalt-{i}-prompt" for i in range(6)]

    def body(i: int) -> dict[str, Any]:
        word = secret_words[i % len(secret_words)]
        payload: dict[str, Any] = {
            "model": "gpt-4o-mini" if i % 5 else "no-such-model-for-an-error",
            "messages": [{"role": "user", "content": f"please {word} and {word}"}],
            "stream": i % 2 == 0,
        }
        if i % 3 == 0:
            payload["tools"] = [{"type": "function", "function": {
                "name": "lookup", "parameters": {"type": "object"}}}]  # fmt: skip
            payload["messages"][0]["content"] += " use the tool"
        return payload

    _load(gw.url, 30, body=body)
    locker = _Locker(gw.gateway.settings.sqlite_path)  # some records go through the spool
    try:
        _load(gw.url, 60, body=body)
        _wait(lambda: gw.gateway.writer.spool is not None and gw.gateway.writer.spool.records > 0)
        spool_files = list((data / "gw.db-spool").glob("*.spool"))
        assert spool_files
        spooled = b"".join(p.read_bytes() for p in spool_files)
    finally:
        locker.release()
    gw.wait_records(30)
    assert len(gw.records()) == 90
    found = [
        (path, word)
        for path in data.rglob("*")
        if path.is_file()
        for word in secret_words
        if word.encode() in path.read_bytes()
    ]
    assert found == []
    assert not any(word.encode() in spooled for word in secret_words)
    assert "zebra-cobalt" not in caplog.text and "spool" in caplog.text  # logs were captured


def test_redaction_patterns_apply_to_stored_bodies_prompts_and_tool_arguments(
    tmp_path: Path, store: SQLiteStore
) -> None:
    writer = RecordWriter(
        store, max_pending=10, batch_size=10,
        redact=[r"[\w.+-]+@[\w-]+\.[\w.]+", r"\b(?:\d[ -]?){13,16}\b"],
    )  # fmt: skip
    writer.start()
    text = "mail ann.lee@example.com, card 4111 1111 1111 1111, order 42"
    rec = _rec(1)
    rec.request_body = orjson.dumps({"messages": [{"role": "user", "content": text}]})
    rec.response_body = {"content": [{"type": "text", "text": text}]}
    rec.last_user_prompt = text
    rec.tool_calls = [ToolCall("pay", "c1", orjson.dumps({"card": "4111111111111111"}).decode())]
    writer.submit(rec)
    writer.close(10)
    stored = store.get_request(OWNER, rec.id)
    assert stored is not None
    flat = orjson.dumps(stored).decode()
    assert "example.com" not in flat and "4111" not in flat
    expected = "mail [REDACTED], card [REDACTED], order 42"
    assert stored["last_user_prompt"] == expected
    assert stored["request_body"]["messages"][0]["content"] == expected  # still valid JSON
    assert stored["response_body"]["content"][0]["text"] == expected
    assert orjson.loads(stored["tool_calls"][0]["arguments"]) == {"card": "[REDACTED]"}


def test_a_bad_redaction_pattern_is_a_config_error() -> None:
    from gatewatch.settings import ConfigError, load_settings

    with pytest.raises(ConfigError, match=r"redact.*not a regular expression"):
        load_settings(env={}, overrides={"redact": ["(unclosed"]}, path=os.devnull)


def test_management_writes_answer_503_while_the_database_is_locked(
    start_gateway: Callable[..., RunningGateway],
) -> None:
    """A key created while another process holds the write lock: 503 with Retry-After once the
    database's busy timeout runs out (not a 500), and the gateway's writes work again after."""
    gw = start_gateway()
    locker = _Locker(gw.gateway.settings.sqlite_path)
    try:
        with gw.api() as c:
            r = c.post("/api/v1/keys", json={"user": "locked-out"})
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1" and "not available" in r.json()["error"]["message"]
    finally:
        locker.release()
    created = gw.create_key(user="after-the-lock")
    assert created["key"].startswith("gw-")
    assert [s for s, _ in _load(gw.url, 10, workers=2)] == [200] * 10
    gw.wait_records(10)

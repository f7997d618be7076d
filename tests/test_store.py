"""Store conformance: every engine passes these (add an engine to ENGINES to run them on it)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import postgres_url

from gatewatch.records import COLUMNS, Attempt, Record, ToolCall, format_ts, new_id
from gatewatch.store import FilterError, RecordWriter, Scope, SQLiteStore, Store, parse_filters
from gatewatch.store import migrations as migrations_module
from gatewatch.store.postgres import PostgresStore

ENGINES = ["sqlite", "postgresql"]


def _open(engine: str, tmp_path: Path, url: str | None) -> Store:
    if engine == "sqlite":
        return SQLiteStore(str(tmp_path / "x.db"))
    if engine == "postgresql":
        return PostgresStore(url or postgres_url())
    raise AssertionError(engine)


def raw_sql(store: Store, sql: str, params: Sequence[object] = ()) -> None:
    """Run a statement on the store's database behind its back (SQLite or PostgreSQL)."""
    if isinstance(store, PostgresStore):
        import psycopg

        with psycopg.connect(store.conninfo, autocommit=True,
                             options=f"-c search_path={store.schema}") as conn:  # fmt: skip
            conn.execute(sql.replace("?", "%s"), params)  # type: ignore[arg-type]
        return
    db = sqlite3.connect(store.path)  # type: ignore[attr-defined]
    db.execute(sql, params)
    db.commit()
    db.close()


@pytest.fixture(params=ENGINES)
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    """A blank, unmigrated database of the engine (each call: the same database)."""
    opened: list[Store] = []
    url = postgres_url() if request.param == "postgresql" else None

    def make() -> Store:
        s = _open(request.param, tmp_path, url)
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()


@pytest.fixture
def store(new_store: Callable[[], Store]) -> Store:
    s = new_store()
    s.migrate()
    return s


# ---- migrations ---------------------------------------------------------------------------------


def _exercise(s: Store) -> None:
    """Touch every part of the schema through the interface: fails on any missing table."""
    owner = Scope("owner", "", "")
    key = s.create_key({"user": "alice", "org": "acme", "name": "k"}, "hash-new", "gw-new…")
    s.ensure_key(key_id="key_boot", name="admin", key_hash="hash-boot", user="admin",
                 org="default", role="owner")  # fmt: skip
    assert s.identity_for_hash("hash-new").key_id == key["id"]  # type: ignore[union-attr]
    assert s.keys_version() >= 2
    org = s.create_entity("orgs", {"name": "globex", "budget_usd": 5.0})
    user = s.create_entity("users", {"name": "carol", "org": "globex"})
    assert s.update_entity("users", owner, user["id"], {"rpm": 10})["rpm"] == 10  # type: ignore[index]
    assert s.revoke_entity("orgs", owner, org["id"])["revoked"]  # type: ignore[index]
    assert s.list_entities("keys", owner, 10, None).count == 2
    now = time.time()
    rec = Record(id=new_id(now), started=now, ended=now, endpoint="/v1/chat/completions",
                 status_code=200, model="m", tags=["t"], meta={"k": "v"},
                 request_body={"q": 1}, response_body={"a": 2})  # fmt: skip
    s.insert_records([rec])
    for name, value in (("tag", "t"), ("meta.k", "v"), ("model", "m")):
        assert s.list_requests(owner, parse_filters([(name, value)]), 10, None).count == 1
    got = s.get_request(owner, rec.id)
    assert got is not None and got["response_body"] == {"a": 2}
    assert [r["id"] for r in s.iter_requests(owner, parse_filters([]))] == [rec.id]


def test_migrate_blank_database_creates_every_table(new_store: Callable[[], Store]) -> None:
    s = new_store()
    applied = s.migrate()
    assert applied == [name for name, _ in migrations_module.MIGRATIONS]
    _exercise(s)
    assert s.migrate() == []  # a second start changes nothing and keeps the data
    assert s.list_entities("keys", Scope("owner", "", ""), 10, None).count == 2


@pytest.mark.parametrize("done", range(1, len(migrations_module.MIGRATIONS)))
def test_migrate_from_every_older_schema(
    new_store: Callable[[], Store], monkeypatch: pytest.MonkeyPatch, done: int
) -> None:
    """A database left by an older release is brought up to date."""
    everything = list(migrations_module.MIGRATIONS)
    s = new_store()
    monkeypatch.setattr(migrations_module, "MIGRATIONS", everything[:done])
    assert s.migrate() == [name for name, _ in everything[:done]]
    monkeypatch.setattr(migrations_module, "MIGRATIONS", everything)
    assert s.migrate() == [name for name, _ in everything[done:]]
    _exercise(s)


# ---- records round-trip ------------------------------------------------------------------------


def test_every_record_field_round_trips(store: Store) -> None:
    started = 1_760_000_000.25
    rec = Record(
        id=new_id(started), started=started, ended=started + 1.5, endpoint="/v1/chat/completions",
        org_id="org_1", org="acme", user_id="usr_1", user="alice", api_key_id="key_1",
        api_key_name="alice-laptop", end_user="customer-42", session="sess-7", workflow="triage",
        client="claude-code", user_agent="claude-cli/1.0.3 (external, cli)", source_ip="10.0.0.8",
        correlation_id="corr-abc", provider="anthropic", model_requested="smart",
        model="claude-sonnet-4-5-20250929", stream=True, status_code=200, status="ok",
        error_type=None, error_message=None, input_tokens=1320, output_tokens=88,
        cache_read_tokens=1000, cache_write_tokens=200, reasoning_tokens=0, cost_usd=0.001234,
        ttft_ms=312.5, tags=["batch", "a b"], meta={"team": "search", "ticket": "T-1"},
        last_user_prompt="What's the weather in Paris? ☀",
        tool_calls=[ToolCall("get_weather", "toolu_1", '{"city":"Paris"}')],
        attempts=[
            Attempt("openai", "gpt-4o", 429, "rate_limited", 12.5),
            Attempt("anthropic", "claude-sonnet-4-5", 200, "ok", 1480.0),
        ],
        request_body={"model": "smart", "messages": [{"role": "user", "content": "weather ☀"}]},
        response_body={"id": "msg_1", "content": [{"type": "text", "text": "Sunny."}]},
    )  # fmt: skip
    store.insert_records([rec])
    got = store.get_request(Scope("owner", "", ""), rec.id)
    assert got is not None
    assert set(COLUMNS) <= set(got)
    expected = {
        "id": rec.id, "started_at": format_ts(started), "ended_at": format_ts(started + 1.5),
        "duration_ms": 1500.0, "ttft_ms": 312.5, "org": "acme", "user": "alice",
        "api_key_id": "key_1", "api_key_name": "alice-laptop", "end_user": "customer-42",
        "session": "sess-7", "workflow": "triage", "client": "claude-code",
        "user_agent": "claude-cli/1.0.3 (external, cli)", "source_ip": "10.0.0.8",
        "correlation_id": "corr-abc", "endpoint": "/v1/chat/completions", "provider": "anthropic",
        "model_requested": "smart", "model": "claude-sonnet-4-5-20250929", "stream": True,
        "status_code": 200, "status": "ok", "error_type": None, "error_message": None,
        "input_tokens": 1320, "output_tokens": 88, "cache_read_tokens": 1000,
        "cache_write_tokens": 200, "reasoning_tokens": 0, "cost_usd": 0.001234,
        "tags": ["batch", "a b"], "meta": {"team": "search", "ticket": "T-1"},
        "last_user_prompt": "What's the weather in Paris? ☀",
        "tool_calls": [{"name": "get_weather", "call_id": "toolu_1",
                        "arguments": '{"city":"Paris"}'}],
        "attempts": [
            {"provider": "openai", "model": "gpt-4o", "status_code": 429,
             "reason": "rate_limited", "duration_ms": 12.5},
            {"provider": "anthropic", "model": "claude-sonnet-4-5", "status_code": 200,
             "reason": "ok", "duration_ms": 1480.0},
        ],
        "request_body": rec.request_body, "response_body": rec.response_body,
    }  # fmt: skip
    assert {k: got[k] for k in COLUMNS} == expected


def test_error_record_and_empty_lists_round_trip(store: Store) -> None:
    rec = Record(id=new_id(), started=time.time(), ended=time.time(), endpoint="/v1/messages",
                 provider="anthropic", model_requested="claude-x", status_code=502,
                 status="error", error_type="upstream_error", error_message="upstream broke",
                 attempts=[Attempt("anthropic", "claude-x", None, "connect_error", 3.0)],
                 )  # fmt: skip
    store.insert_records([rec])
    got = store.get_request(Scope("owner", "", ""), rec.id)
    assert got is not None
    assert (got["status"], got["status_code"], got["error_message"]) == (
        "error",
        502,
        "upstream broke",
    )
    assert got["tags"] == [] and got["meta"] == {} and got["tool_calls"] == []
    assert got["attempts"][0]["status_code"] is None
    assert got["request_body"] is None and got["input_tokens"] is None and got["cost_usd"] is None


def test_storing_a_record_twice_is_harmless(store: Store) -> None:
    rec = Record(id=new_id(), started=time.time(), ended=time.time(), endpoint="/v1/messages",
                 status_code=200, tags=["x"], meta={"k": "v"}, request_body={"a": 1})  # fmt: skip
    store.insert_records([rec])
    store.insert_records([rec])
    page = store.list_requests(Scope("owner", "", ""), parse_filters([("tag", "x")]), 10, None)
    assert page.count == 1


# ---- a populated store -------------------------------------------------------------------------


@dataclass
class World:
    store: Store
    keys: dict[str, dict[str, Any]]  # alice, bob (acme), carol (globex)
    records: list[Record]

    def ids(self, pred: Callable[[Record], bool]) -> set[str]:
        return {r.id for r in self.records if pred(r)}


BASE = 1_760_000_000.0


def _populate(store: Store, n: int) -> World:
    keys = {
        "alice": store.create_key({"user": "alice", "org": "acme", "name": "alice-laptop"}, "h-a",
                                  "gw-a…"),
        "bob": store.create_key({"user": "bob", "org": "acme", "name": "bob-ci"}, "h-b", "gw-b…"),
        "carol": store.create_key({"user": "carol", "org": "globex", "name": "carol-prod",
                                   "role": "admin"}, "h-c", "gw-c…"),
    }  # fmt: skip
    owners = list(keys.values())
    records = []
    for i in range(n):
        k = owners[i % 3]
        openai = (i // 3) % 2 == 0
        code = 500 if i % 7 == 0 else 429 if i % 11 == 0 else 200
        status = "client_closed" if i % 13 == 5 else ("ok" if code == 200 else "error")
        started = BASE + i * 60
        records.append(Record(
            id=new_id(started), started=started, ended=started + 0.8,
            endpoint="/v1/chat/completions" if openai else "/v1/messages",
            org_id=k["org_id"], org=k["org"], user_id=k["user_id"], user=k["user"],
            api_key_id=k["id"], api_key_name=k["name"],
            end_user=f"cust-{i % 4}", session=f"sess-{i % 5}",
            workflow=["triage", "summarize", None][i % 3 if i % 2 else 2],
            client=["claude-code", "codex", None][(i // 2) % 3],
            provider="openai" if openai else "anthropic",
            model_requested="gpt-4o-mini" if openai else "smart",
            model="gpt-4o-mini-2024-07-18" if openai else "claude-sonnet-4-5",
            status_code=code, status=status, input_tokens=10 + i, output_tokens=5,
            tags=["a b", "interactive"] if i % 2 else ["batch"],
            meta={"team": "search" if i % 3 == 0 else "ads"} if i % 4 else {},
        ))  # fmt: skip
    store.insert_records(records)
    return World(store, keys, records)


@pytest.fixture
def world(store: Store) -> World:
    return _populate(store, 60)


OWNER = Scope("owner", "", "")


def _select(w: World, params: Sequence[tuple[str, str]] = (), q: str | None = None,
            scope: Scope = OWNER) -> set[str]:  # fmt: skip
    page = w.store.list_requests(scope, parse_filters(params, q=q), 1000, None)
    assert page.count == len(page.results)
    return {r["id"] for r in page.results}


def test_list_is_newest_first_with_keyset_pagination(store: Store) -> None:
    w = _populate(store, 250)
    seen: list[str] = []
    after = None
    pages = 0
    while True:
        page = store.list_requests(OWNER, parse_filters([]), 100, after)
        assert page.count == 250
        seen += [r["id"] for r in page.results]
        pages += 1
        after = page.next_after_id
        if after is None:
            break
    assert pages == 3
    assert seen == [r.id for r in sorted(w.records, key=lambda r: r.started, reverse=True)]
    # with a filter: count is the total matching, not the page size
    page = store.list_requests(OWNER, parse_filters([("provider", "openai")]), 10, None)
    assert page.count == len(w.ids(lambda r: r.provider == "openai"))
    assert len(page.results) == 10 and page.next_after_id == page.results[-1]["id"]
    # an exact last page has no next cursor
    page = store.list_requests(OWNER, parse_filters([]), 250, None)
    assert len(page.results) == 250 and page.next_after_id is None
    # list rows leave the bodies out
    assert "request_body" not in page.results[0]


def test_filters_select_exactly_the_matching_records(world: World) -> None:
    w = world
    alice, carol = w.keys["alice"], w.keys["carol"]
    t20 = w.records[20]
    cases: list[tuple[list[tuple[str, str]], Callable[[Record], bool]]] = [
        ([("initiator", alice["user_id"])], lambda r: r.user == "alice"),
        ([("initiator", "alice")], lambda r: r.user == "alice"),
        ([("initiator", "alice"), ("initiator", "bob")], lambda r: r.user in ("alice", "bob")),
        ([("org", "globex")], lambda r: r.org == "globex"),
        ([("org", carol["org_id"])], lambda r: r.org == "globex"),
        ([("api_key", alice["id"])], lambda r: r.api_key_id == alice["id"]),
        ([("api_key", "bob-ci")], lambda r: r.api_key_name == "bob-ci"),
        ([("provider", "anthropic")], lambda r: r.provider == "anthropic"),
        ([("model", "smart")], lambda r: r.model_requested == "smart"),
        ([("model", "gpt-4o-mini-2024-07-18")], lambda r: r.provider == "openai"),
        ([("model", "gpt-4o-mini")], lambda r: r.provider == "openai"),
        ([("status", "error")], lambda r: r.status == "error"),
        ([("status", "client_closed")], lambda r: r.status == "client_closed"),
        ([("status_code", "429")], lambda r: r.status_code == 429),
        ([("status_code", "429"), ("status_code", "500")], lambda r: r.status_code in (429, 500)),
        ([("client", "claude-code")], lambda r: r.client == "claude-code"),
        ([("workflow", "summarize")], lambda r: r.workflow == "summarize"),
        ([("session", "sess-3")], lambda r: r.session == "sess-3"),
        ([("tag", "a b")], lambda r: "a b" in r.tags),
        ([("tag", "batch")], lambda r: "batch" in r.tags),
        ([("meta.team", "search")], lambda r: r.meta.get("team") == "search"),
        ([("end_user", "cust-2")], lambda r: r.end_user == "cust-2"),
        ([("started_after", format_ts(t20.started))], lambda r: r.started >= t20.started),
        ([("started_before", format_ts(t20.started))], lambda r: r.started < t20.started),
        ([("started_after", format_ts(BASE + 130).replace("Z", "+00:00")),
          ("started_before", format_ts(t20.started))],
         lambda r: BASE + 130 <= r.started < t20.started),
        ([("started_after", format_ts(t20.started - 30))], lambda r: r.started >= t20.started),
        ([("provider", "openai"), ("status", "ok"), ("initiator", "bob")],
         lambda r: r.provider == "openai" and r.status == "ok" and r.user == "bob"),
    ]  # fmt: skip
    for params, pred in cases:
        expected = w.ids(pred)
        assert expected, f"{params}: the fixture should have matching records"
        assert expected != w.ids(lambda r: True), f"{params}: should leave some records out"
        assert _select(w, params) == expected, params


def test_initiator_me_is_the_callers_user(world: World) -> None:
    bob = world.keys["bob"]
    scope = Scope("admin", bob["org_id"], bob["user_id"])
    assert _select(world, [("initiator", "me")], scope=scope) == world.ids(
        lambda r: r.user == "bob"
    )


def test_q_search_string(world: World) -> None:
    got = _select(world, q='provider:openai tag:"a b"')
    assert got == world.ids(lambda r: r.provider == "openai" and "a b" in r.tags)
    # q and query parameters combine
    got = _select(world, [("status", "ok")], q="provider:anthropic meta.team:ads")
    assert got == world.ids(
        lambda r: r.status == "ok" and r.provider == "anthropic" and r.meta.get("team") == "ads"
    )


def test_parse_filters_accepts_q_syntax() -> None:
    query = parse_filters([], q='provider:openai tag:"a b"')
    assert query.filters == {"provider": ["openai"], "tag": ["a b"]}


@pytest.mark.parametrize(
    ("params", "q", "param"),
    [
        ([("colour", "red")], None, "colour"),
        ([("status", "bogus")], None, "status"),
        ([("status_code", "abc")], None, "status_code"),
        ([("status_code", "9999")], None, "status_code"),
        ([("started_after", "notatime")], None, "started_after"),
        ([("started_before", "yesterday-ish")], None, "started_before"),
        ([("provider", "")], None, "provider"),
        ([], "provider openai", "q"),
        ([], 'tag:"unterminated', "q"),
        ([], "colour:red", "q"),
    ],
)
def test_parse_filters_rejects_bad_values_naming_the_parameter(
    params: list[tuple[str, str]], q: str | None, param: str
) -> None:
    with pytest.raises(FilterError) as info:
        parse_filters(params, q=q)
    assert info.value.param == param
    assert param in str(info.value)


def test_parse_filters_skips_paging_parameters() -> None:
    query = parse_filters([("limit", "5"), ("after_id", "x"), ("model", "m")],
                          ignore=("limit", "after_id"))  # fmt: skip
    assert query.filters == {"model": ["m"]}


# ---- scope ---------------------------------------------------------------------------------------


def test_scope_member_admin_owner(world: World) -> None:
    alice, bob, carol = world.keys["alice"], world.keys["bob"], world.keys["carol"]
    member = Scope("member", alice["org_id"], alice["user_id"])
    admin = Scope("admin", carol["org_id"], carol["user_id"])
    assert _select(world, scope=member) == world.ids(lambda r: r.user == "alice")
    assert _select(world, scope=admin) == world.ids(lambda r: r.org == "globex")
    assert _select(world, scope=OWNER) == world.ids(lambda r: True)
    # filters never widen the scope
    assert _select(world, [("initiator", "bob")], scope=member) == set()
    assert _select(world, [("org", "acme")], scope=admin) == set()

    bobs = next(r for r in world.records if r.user == "bob")
    assert world.store.get_request(member, bobs.id) is None
    assert world.store.get_request(admin, bobs.id) is None
    assert world.store.get_request(Scope("admin", bob["org_id"], bob["user_id"]), bobs.id)
    assert world.store.get_request(OWNER, bobs.id) is not None
    assert world.store.get_request(OWNER, new_id()) is None


# ---- the record writer ---------------------------------------------------------------------------


def _rec(**fields: Any) -> Record:
    now = time.time()
    return Record(id=new_id(now), started=now, ended=now, endpoint="/v1/chat/completions",
                  status_code=200, **fields)  # fmt: skip


def test_writer_stores_everything_submitted_by_close(store: Store) -> None:
    writer = RecordWriter(store, max_pending=10_000, batch_size=16)
    writer.start()
    records = [_rec(request_body={"i": i}) for i in range(300)]
    for r in records:
        writer.submit(r)
    writer.close(timeout=10)
    page = store.list_requests(OWNER, parse_filters([]), 1000, None)
    assert {r["id"] for r in page.results} == {r.id for r in records}
    assert (writer.stored, writer.dropped, writer.pending) == (300, 0, 0)


class _BlockingStore:
    """A store whose inserts wait until released (a database that stopped answering)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.entered = threading.Event()
        self.release = threading.Event()

    def prepare(self, record: Record) -> object:
        return self.inner.prepare(record)

    def insert_prepared(self, batch: Sequence[object]) -> None:
        self.entered.set()
        assert self.release.wait(10)
        self.inner.insert_prepared(batch)


def test_writer_drops_and_counts_when_the_queue_is_full(store: Store) -> None:
    slow = _BlockingStore(store)
    drops: list[int] = []
    writer = RecordWriter(
        slow,  # type: ignore[arg-type]
        max_pending=1,
        batch_size=16,
        on_drop=drops.append,
    )
    writer.start()
    first, second, third, fourth = (_rec() for _ in range(4))
    try:
        writer.submit(first)
        assert slow.entered.wait(5)  # the writer is stuck storing `first`
        writer.submit(second)  # fills the queue
        writer.submit(third)  # dropped
        writer.submit(fourth)  # dropped
        assert writer.dropped == 2 and drops == [1, 1]
        assert writer.pending == 2
    finally:
        slow.release.set()
        writer.close(timeout=10)
    stored = {r["id"] for r in store.list_requests(OWNER, parse_filters([]), 10, None).results}
    assert stored == {first.id, second.id}
    assert writer.stored == 2


PROVIDER_SECRET = "sk-upstream-openai-secret-123456"
GATEWAY_KEY = "gw-Zq8vT1mN0pLx4RcYb7Hs2Kd9WfEj3Ua6"


def _write_one(store: Store, rec: Record) -> dict[str, Any]:
    writer = RecordWriter(store, max_pending=100, batch_size=16, secrets=[PROVIDER_SECRET])
    writer.start()
    writer.submit(rec)
    writer.close(timeout=10)
    got = store.get_request(OWNER, rec.id)
    assert got is not None
    return got


def test_writer_redacts_secrets_from_stored_bodies(store: Store) -> None:
    got = _write_one(store, _rec(
        request_body={
            "model": "gpt-4o-mini", "api_key": PROVIDER_SECRET,
            "messages": [{"role": "user", "content": f"why does {GATEWAY_KEY} fail?"}],
        },
        response_body={"choices": [{"message": {"content": f"key {PROVIDER_SECRET} is bad"}}]},
    ))  # fmt: skip
    assert got["request_body"]["model"] == "gpt-4o-mini"  # still readable JSON
    assert got["request_body"]["messages"][0]["content"].startswith("why does ")
    for field in ("request_body", "response_body"):
        text = orjson.dumps(got[field]).decode()
        assert PROVIDER_SECRET not in text, field
        assert GATEWAY_KEY not in text, field


def test_writer_redacts_secrets_from_the_stored_prompt(store: Store) -> None:
    """The prompt shown in the log is a copy of the request body's text: same rule."""
    prompt = f"my keys are {PROVIDER_SECRET} and {GATEWAY_KEY}, why do they fail?"
    got = _write_one(store, _rec(
        request_body={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]},
        last_user_prompt=prompt,
    ))  # fmt: skip
    everything = orjson.dumps(got).decode()
    assert PROVIDER_SECRET not in everything
    assert GATEWAY_KEY not in everything
    assert got["last_user_prompt"].startswith("my keys are ")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def test_list_count_read_from_the_rollups_agrees_with_the_records(store: Store) -> None:
    """A list's count over whole hours comes from the usage rollups, the partial hours at its
    ends from the records: always the number of matching records, before and after a purge."""
    w = _populate(store, 1200)  # 20 hours, a record a minute
    acme = w.keys["alice"]["org_id"]
    alice = w.keys["alice"]["user_id"]
    cases: list[tuple[list[tuple[str, str]], Callable[[Record], bool]]] = [
        ([], lambda r: True),
        ([("provider", "openai")], lambda r: r.provider == "openai"),
        ([("status", "error"), ("model", "smart")],
         lambda r: r.status == "error" and r.model_requested == "smart"),
        ([("client", "codex")], lambda r: r.client == "codex"),
        ([("tag", "batch")], lambda r: "batch" in r.tags),
        ([("tag", "batch"), ("tag", "interactive")],  # several tags: counted from the records
         lambda r: bool({"batch", "interactive"} & set(r.tags))),
        ([("session", "sess-1")], lambda r: r.session == "sess-1"),  # no rollup keeps sessions
    ]  # fmt: skip
    scopes = [(OWNER, lambda r: True), (Scope("admin", acme, ""), lambda r: r.org_id == acme),
              (Scope("member", acme, alice), lambda r: r.user_id == alice)]  # fmt: skip
    ranges = [(None, None), (BASE + 1234, BASE + 9 * 3600 + 77), (BASE + 7205, None),
              (None, BASE + 15 * 3600 + 1), (BASE + 100, BASE + 3000)]  # fmt: skip

    def check() -> None:
        kept = [r for r in w.records if store.get_request(OWNER, r.id) is not None]
        for params, pred in cases:
            for scope, in_scope in scopes:
                for lo, hi in ranges:
                    bounds = [("started_after", _iso(lo))] if lo else []
                    bounds += [("started_before", _iso(hi))] if hi else []
                    page = store.list_requests(scope, parse_filters([*params, *bounds]), 1, None)
                    want = sum(1 for r in kept if pred(r) and in_scope(r)
                               and (lo is None or r.started >= lo)
                               and (hi is None or r.started < hi))  # fmt: skip
                    assert page.count == want, (params, scope.role, lo, hi)

    check()
    # it is the rollups that answer: a rollup row changed behind the store's back shows
    hour = int(BASE) // 3600 * 3600 + 5 * 3600
    one_row = "WHERE grain = 'h' AND bucket = ? AND user_id = ?"
    raw_sql(store, f"UPDATE rollup_user SET requests = requests + 1000 {one_row}", (hour, alice))
    member = Scope("member", acme, alice)
    alices = sum(1 for r in w.records if r.user_id == alice)
    assert store.list_requests(member, parse_filters([]), 1, None).count == alices + 1000
    raw_sql(store, f"UPDATE rollup_user SET requests = requests - 1000 {one_row}", (hour, alice))
    # a purge of the first 8 hours: the rollups keep them, the counts must not
    removed = 0
    after = None
    while True:
        n, after = store.purge_batch("records", BASE + 8 * 3600 + 30, 500, after=after)
        removed += n
        if after is None:
            break
    assert removed == 8 * 60 + 1
    check()


def test_a_nul_character_is_stored_as_a_replacement_character(store: Store) -> None:
    """U+0000 in a text field: SQLite's JSON functions would cut the text at it and PostgreSQL
    cannot hold it, so every engine stores U+FFFD (bodies keep it: they are JSON text)."""
    now = time.time()
    recs = [Record(id=new_id(now + i), started=now + i, ended=now + i + 1, endpoint="/v1/x",
                   status_code=200, last_user_prompt=p, request_body={"p": p}, tags=["t"])
            for i, p in enumerate(["ok", "bad\x00byte", "back\\u0000slash"])]  # fmt: skip
    store.insert_records(recs)
    got = [store.get_request(OWNER, r.id) for r in recs]
    assert [g["last_user_prompt"] for g in got if g] == ["ok", "bad\ufffdbyte", "back\\u0000slash"]
    assert got[1]["request_body"] == {"p": "bad\x00byte"}  # type: ignore[index]


# ---- which index a page is read from -------------------------------------------------------------


def _matches(r: Record, filters: dict[str, list[str]], scope: Scope) -> bool:
    """§A1's filters, evaluated on a record in Python: the oracle for the store's SQL."""
    for name, values in filters.items():
        if name == "model":
            ok = r.model_requested in values or r.model in values
        elif name == "tag":
            ok = bool(set(values) & set(r.tags))
        elif name.startswith("meta."):
            ok = r.meta.get(name[5:]) in values
        elif name == "status_code":
            ok = str(r.status_code) in values
        elif name == "initiator":
            ok = any(v in (r.user, r.user_id) or (v == "me" and r.user_id == scope.user_id)
                     for v in values)  # fmt: skip
        elif name == "api_key":
            ok = r.api_key_id in values or r.api_key_name in values
        elif name == "org":
            ok = r.org_id in values or r.org in values
        elif name == "started_after":
            ok = r.started >= datetime.fromisoformat(values[0]).timestamp()
        elif name == "started_before":
            ok = r.started < datetime.fromisoformat(values[0]).timestamp()
        else:
            ok = getattr(r, name) in values
        if not ok:
            return False
    if scope.role == "admin":
        return r.org_id == scope.org_id
    return scope.role == "owner" or r.user_id == scope.user_id


PAGING_CASES: list[list[tuple[str, str]]] = [
    [],
    [("provider", "anthropic")],
    [("status", "error")],
    [("provider", "openai"), ("status", "ok")],
    [("provider", "anthropic"), ("status", "error"), ("model", "smart")],
    [("model", "gpt-4o-mini"), ("tag", "batch")],
    [("tag", "a b"), ("meta.team", "search")],
    [("meta.team", "ads"), ("status", "ok"), ("client", "codex")],
    [("client", "codex"), ("workflow", "summarize")],
    [("session", "sess-2"), ("status_code", "500")],
    [("end_user", "cust-1"), ("tag", "interactive"), ("provider", "openai")],
    [("initiator", "alice"), ("status", "ok")],
    [("initiator", "me"), ("tag", "batch")],
    [("api_key", "bob-ci"), ("model", "gpt-4o-mini")],
    [("org", "acme"), ("provider", "anthropic")],
    [("org", "globex"), ("status", "error"), ("tag", "batch")],
    [("provider", "openai"), ("provider", "anthropic"), ("status", "error")],
    [("tag", "batch"), ("tag", "a b"), ("status", "ok")],
    [("model", "smart"), ("model", "gpt-4o-mini"), ("client", "claude-code")],
    [("started_after", "2025-10-09T09:00:00+00:00"), ("started_before", "2025-10-09T13:30:00Z"),
     ("status", "ok"), ("model", "smart")],
    [("started_after", "2025-10-09T10:00:00Z"), ("tag", "interactive")],
]  # fmt: skip


def _paging_world(store: Store) -> tuple[World, list[Scope]]:
    w = _populate(store, 400)  # 400 minutes from 2025-10-09T08:53:20Z
    alice, carol = w.keys["alice"], w.keys["carol"]
    scopes = [OWNER, Scope("admin", alice["org_id"], carol["user_id"]),
              Scope("member", alice["org_id"], alice["user_id"])]  # fmt: skip
    return w, scopes


def test_list_pages_and_counts_agree_with_the_records_for_filter_combinations(
    store: Store,
) -> None:
    """Whichever index the store reads a page from, walking the pages gives exactly the
    matching records, newest first, and every page's count is their number."""
    w, scopes = _paging_world(store)
    newest_first = sorted(w.records, key=lambda r: r.id, reverse=True)
    for params in PAGING_CASES:
        query = parse_filters(params)
        for scope in scopes:
            want = [r.id for r in newest_first if _matches(r, query.filters, scope)]
            got: list[str] = []
            after = None
            while True:
                page = store.list_requests(scope, query, 7, after)
                assert page.count == len(want), (params, scope.role)
                got += [r["id"] for r in page.results]
                after = page.next_after_id
                if after is None:
                    break
            assert got == want, (params, scope.role)


def test_every_index_a_page_may_be_read_from_gives_the_same_records(store: Store) -> None:
    """Each candidate driver of a query (one-value filters, resolved names, the scope), and
    none, reads the same records in the same order; counting through it gives their number."""
    from gatewatch.store._sqlite_paging import _resolved
    from gatewatch.store.sqlite import _keyset_source

    w, scopes = _paging_world(store)
    db: Any = store._reader()  # type: ignore[attr-defined]
    newest_first = sorted(w.records, key=lambda r: r.id, reverse=True)
    tried = set()
    for params in PAGING_CASES:
        query = parse_filters(params)
        for scope in scopes:
            want = [r.id for r in newest_first if _matches(r, query.filters, scope)]
            drivers = [None, *query.drivers(scope), *_resolved(db, scope, query)]
            for driver in drivers:
                source, args, order = _keyset_source(scope, query, driver=driver)
                rows = db.execute(f"SELECT r.id FROM {source} ORDER BY {order} DESC", args)
                assert [row[0] for row in rows] == want, (params, scope.role, driver)
                if driver is not None:
                    source, args, _ = query.keyset(scope, driver, row=False)
                    (n,) = db.execute(f"SELECT count(*) FROM {source}", args).fetchone()
                    assert n == len(want), (params, scope.role, driver)
                    tried.add((driver.table, driver.column))
    assert len(tried) == 13  # 7 indexed columns, 3 facets, users, keys, organizations


def test_a_page_is_read_from_the_index_with_the_fewest_entries(store: Store) -> None:
    """A rare status with a common model is read from the status index, a rare model with a
    common status from the model's facets, and a member's filter that most records meet from
    the member's own records (each candidate index is probed, not taken in a fixed order)."""
    from gatewatch.store._sqlite_paging import choose_driver

    alice = store.create_key({"user": "alice", "org": "acme"}, "h-a", "gw-a…")
    bob = store.create_key({"user": "bob", "org": "acme"}, "h-b", "gw-b…")
    records = []
    for i in range(1200):
        k = alice if i % 40 == 0 else bob
        started = BASE + i * 10
        records.append(Record(
            id=new_id(started), started=started, ended=started + 1, endpoint="/v1/messages",
            org_id=k["org_id"], org="acme", user_id=k["user_id"], user=k["user"],
            api_key_id=k["id"], provider="anthropic",
            model_requested="rare" if i % 50 == 0 else "common",
            status_code=500 if i % 30 == 0 else 200, status="error" if i % 30 == 0 else "ok",
        ))  # fmt: skip
    store.insert_records(records)
    db: Any = store._reader()  # type: ignore[attr-defined]
    member = Scope("member", alice["org_id"], alice["user_id"])

    def driver(scope: Scope, params: list[tuple[str, str]]) -> tuple[str, object]:
        d = choose_driver(db, scope, parse_filters(params))
        assert d is not None
        return d.column, d.value

    assert driver(OWNER, [("model", "common"), ("status", "error")]) == ("status", "error")
    assert driver(OWNER, [("model", "rare"), ("status", "ok")]) == ("model", "rare")
    assert driver(OWNER, [("status", "ok"), ("provider", "anthropic")]) in (
        ("status", "ok"), ("provider", "anthropic"))  # fmt: skip
    assert driver(member, [("provider", "anthropic")]) == ("user_id", alice["user_id"])
    # 24 "rare" facets, 6 of them alice's, against alice's 30 records each to be fetched
    assert driver(member, [("model", "rare")]) == ("model", "rare")

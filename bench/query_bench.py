"""Read-path benchmark: the first page of every single-filter query over N stored records.

    .venv/bin/python bench/query_bench.py [--records 1000000] [--db /tmp/gw-query-bench.db]

Fills a SQLite store with N varied records (reused on later runs if the file has them), then
times ``list_requests`` (count + first page of 100, newest first) for each §A1 filter, as an
owner and as an admin scoped to one organization. Target: every query under 50 ms."""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gatewatch.records import Attempt, Record, ToolCall, format_ts, new_id
from gatewatch.store import SQLiteStore, parse_filters
from gatewatch.store.query import Scope

MODELS = [
    ("openai", "gpt-4o-mini"),
    ("openai", "gpt-4o"),
    ("openai", "o3-mini"),
    ("anthropic", "claude-sonnet-4-5"),
    ("anthropic", "claude-haiku-4-5"),
    ("openai-eu", "gpt-4o"),
    ("openai", "text-embedding-3-small"),
    ("anthropic", "claude-opus-4-1"),
]
CLIENTS = ["claude-code", "codex", "cursor", "openai-python", "anthropic-python", None]


def fill(store: SQLiteStore, n: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    orgs = [(f"org_{i}", f"org-{i}") for i in range(5)]
    users = [(f"usr_{i}", f"user-{i}", orgs[i % 5]) for i in range(50)]
    with store._transaction() as db:
        for oid, oname in orgs:
            db.execute(
                "INSERT OR IGNORE INTO orgs (id, name, created_at) VALUES (?, ?, '')", (oid, oname)
            )
        for uid, uname, (oid, _) in users:
            db.execute(
                "INSERT OR IGNORE INTO users (id, org_id, name, created_at) VALUES (?, ?, ?, '')",
                (uid, oid, uname),
            )
            for k in range(2):
                db.execute(
                    "INSERT OR IGNORE INTO keys (id, name, key_hash, key_prefix, user_id,"
                    " org_id, role, created_at) VALUES (?, 'laptop', ?, 'gw-', ?, ?,"
                    " 'member', '')",
                    (f"key_{uid}_{k}", f"h{uid}{k}", uid, oid),
                )
    start = time.time() - 30 * 86400
    step = 30 * 86400 / n
    batch: list[Record] = []
    t0 = time.perf_counter()
    for i in range(n):
        uid, uname, (oid, oname) = rng.choice(users)
        provider, model = rng.choice(MODELS)
        roll = rng.random()
        status, code = (
            ("ok", 200)
            if roll < 0.9
            else (("error", 500) if roll < 0.99 else ("client_closed", 499))
        )
        ts = start + i * step
        rec = Record(
            id=new_id(ts),
            started=ts,
            endpoint="/v1/chat/completions",
            org_id=oid,
            org=oname,
            user_id=uid,
            user=uname,
            api_key_id=f"key_{uid}_{i % 2}",
            api_key_name="laptop",
            end_user=f"customer-{rng.randrange(1000)}",
            session=f"s-{rng.randrange(100000)}",
            workflow=rng.choice(["chat", "review", "triage", "eval", None]),
            client=rng.choice(CLIENTS),
            user_agent="bench",
            source_ip="127.0.0.1",
            provider=provider,
            model_requested=model,
            model=model + "-2024",
            stream=roll < 0.4,
            status_code=code,
            status=status,
            input_tokens=rng.randrange(10, 5000),
            output_tokens=rng.randrange(1, 800),
            cache_read_tokens=0,
            cache_write_tokens=0,
            reasoning_tokens=0,
            cost_usd=rng.random() / 100,
            ended=ts + 0.5,
            ttft_ms=120.0,
            tags=rng.choice([["prod"], ["prod", "beta"], ["eval"], []]),
            meta={"team": rng.choice(["search", "payments", "infra"])},
            last_user_prompt="hello " * 10,
            tool_calls=[ToolCall("get_weather", "call_1", '{"city":"Paris"}')]
            if roll < 0.1
            else [],
            attempts=[Attempt(provider, model, code, "ok", 480.0)],
            request_body=b'{"model":"x","messages":[]}',
            response_body=b'{"ok":true}',
        )
        batch.append(rec)
        if len(batch) == 5000:
            store.insert_records(batch)
            batch.clear()
            if i % 100_000 < 5000:
                print(f"  {i + 1:,} records ({time.perf_counter() - t0:.0f}s)", flush=True)
    if batch:
        store.insert_records(batch)


QUERIES = {
    "(none)": [],
    "initiator=user-7": [("initiator", "user-7")],
    "org=org-3": [("org", "org-3")],
    "api_key=key_usr_7_1": [("api_key", "key_usr_7_1")],
    "provider=anthropic": [("provider", "anthropic")],
    "model=gpt-4o": [("model", "gpt-4o")],
    "status=error": [("status", "error")],
    "status=client_closed": [("status", "client_closed")],
    "status_code=499": [("status_code", "499")],
    "client=cursor": [("client", "cursor")],
    "workflow=triage": [("workflow", "triage")],
    "session=s-4242": [("session", "s-4242")],
    "tag=beta": [("tag", "beta")],
    "meta.team=infra": [("meta.team", "infra")],
    "end_user=customer-42": [("end_user", "customer-42")],
    "started_after=-1d": [("started_after", format_ts(time.time() - 86400))],
    "started_before=-29d": [("started_before", format_ts(time.time() - 29 * 86400))],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--db", default="/tmp/gw-query-bench.db")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    store = SQLiteStore(args.db)
    store.migrate()
    have = store._reader().execute("SELECT count(*) FROM requests").fetchone()[0]
    if have < args.records:
        print(f"filling {args.db} with {args.records - have:,} records …")
        fill(store, args.records - have, seed=have + 1)
    print(f"{max(have, args.records):,} records\n")
    scopes = {"owner": Scope("owner", "", ""), "admin(org-3)": Scope("admin", "org_3", "")}
    worst = 0.0
    print(f"{'query':28} {'scope':13} {'count':>9} {'median ms':>10} {'max ms':>8}")
    for name, params in QUERIES.items():
        query = parse_filters(params)
        for sname, scope in scopes.items():
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                page = store.list_requests(scope, query, 100, None)
                times.append((time.perf_counter() - t0) * 1000)
            med = statistics.median(times)
            worst = max(worst, med)
            flag = "" if med < 50 else "  <-- over 50 ms"
            print(f"{name:28} {sname:13} {page.count:>9,} {med:>10.1f} {max(times):>8.1f}{flag}")
    print(f"\nslowest median: {worst:.1f} ms (target < 50 ms)")
    store.close()


if __name__ == "__main__":
    main()

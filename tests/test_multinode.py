"""Several gateway nodes sharing one PostgreSQL and one Redis behave as one gateway (§S, §C).

Real `gatewatch serve` processes, each on its own port with its own spool, share a fresh
PostgreSQL schema and Redis DB 12; clients (the official `openai` SDK, or httpx) spread their
requests over the nodes. Budgets and rate limits hold exactly across the nodes, a key revoked on
one node is refused by the others within a second, every request is stored once whichever node
served it, and the alert engine evaluates on one node at a time (one webhook delivery per
firing, however many nodes).

Without PostgreSQL or Redis these tests are skipped, or fail when ``CI=true``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import openai
import pytest

from gatewatch.store.migrations import MIGRATIONS
from tests.conftest import (
    ADMIN_KEY,
    PG_URL,
    Upstream,
    flushed_redis,
    free_port,
    postgres_url,
)

REDIS_URL = os.environ.get("GATEWATCH_TEST_REDIS_NODES", "redis://127.0.0.1:6379/12")
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
MESSAGES = [{"role": "user", "content": "hello from one of the nodes"}]
# gpt-4o-mini at whole dollars per million tokens: every request costs a whole number of
# micro-dollars, so these tests are about sharing, not about rounding (see
# test_budget_counts_requests_cheaper_than_a_micro_dollar for that)
PRICES = "prices: {openai/gpt-4o-mini: {input: 1, output: 2}}\n"


@dataclass
class Node:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Reply:
    """One request as its client saw it (monotonic seconds)."""

    node: str
    status: int
    headers: Mapping[str, str]  # case-insensitive (httpx)
    body: dict[str, Any]
    sent: float
    received: float


@dataclass
class Webhook:
    """A loopback alert receiver: the JSON bodies POSTed to it."""

    url: str
    bodies: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture(scope="module")
def redis_url() -> str:
    return flushed_redis(REDIS_URL)


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    hook = Webhook("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            hook.bodies.append(json.loads(self.rfile.read(length)))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hook.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    yield hook
    server.shutdown()
    server.server_close()


def launch(name: str, tmp: Path, database: str, redis: str, extra: str) -> Node:
    """Start one node (`gatewatch serve`) with its own port, spool and log; not waited for."""
    config = tmp / f"node-{name}.yaml"
    config.write_text(
        f"admin_key: {ADMIN_KEY}\n"
        f"database: '{database}'\n"
        f"redis: {redis}\n"
        f"spool: {{path: '{tmp / f'spool-{name}'}'}}\n" + extra
    )
    exe = Path(sys.executable).with_name("gatewatch")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWATCH_")}
    port = free_port()
    log = tmp / f"node-{name}.log"
    with log.open("ab") as stderr:
        proc = subprocess.Popen(
            [str(exe), "serve", "--config", str(config), "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    return Node(name, proc, port, log)


def wait_up(nodes: list[Node], timeout: float = 40) -> list[Node]:
    """Wait until every node answers /healthz; the nodes that exited instead."""
    deadline = time.monotonic() + timeout
    exited = []
    for node in nodes:
        while True:
            try:
                if httpx.get(f"{node.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if node.proc.poll() is not None:
                exited.append(node)
                break
            if time.monotonic() > deadline:
                stop_nodes(nodes)
                pytest.fail(f"node {node.name} did not start:\n{node.stderr()[-3000:]}")
            time.sleep(0.05)
    return exited


def stop_nodes(nodes: list[Node]) -> None:
    """SIGTERM (a clean shutdown: each node stores its pending records), then wait."""
    for node in nodes:
        if node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
    for node in nodes:
        try:
            node.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait()


def logged_errors(log: str) -> list[str]:
    """The exception line of every traceback in a node's log, and its other ERROR lines."""
    lines = log.splitlines()
    errors = []
    for i, line in enumerate(lines):
        if line.startswith("Traceback"):
            errors += [x for x in lines[i + 1 :] if not x.startswith(" ")][:1]
        elif "ERROR" in line.split(":")[0] or " ERROR " in line:
            errors.append(line)
    return errors


def assert_no_errors_logged(nodes: list[Node]) -> None:
    for node in nodes:
        log = node.stderr()
        unexpected = logged_errors(log)
        assert not unexpected, f"node {node.name}: {unexpected}\n{log[-5000:]}"


def provider(upstream: Upstream) -> str:
    return (
        "providers:\n"
        f"  - {{name: openai, type: openai, base_url: '{upstream.url}/v1', api_key: sk-x}}\n"
    )


def schema_of(database: str) -> str:
    return parse_qs(urlsplit(database).query)["schema"][0]


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, upstream: Upstream, redis_url: str, webhook: Webhook
) -> Iterator[tuple[list[Node], str]]:
    """Three nodes on one fresh schema and Redis DB; (nodes, database URL).
    Alert rules are evaluated and purges tried every 0.5 s, so a lease that let several nodes
    run them would show within seconds."""
    database = postgres_url()
    alerts = (
        "alerts:\n"
        "  interval: 0.5s\n"
        f"  webhooks: [{{name: hook, url: '{webhook.url}', format: json}}]\n"
        "  rules: [{name: key-budget-80, type: budget, scope: key, threshold: 0.8,"
        " notify: [hook]}]\n"
        "retention: {interval: 0.5s}\n"
    )
    tmp = tmp_path_factory.mktemp("cluster")
    extra = provider(upstream) + PRICES + alerts
    nodes = [launch(name, tmp, database, redis_url, extra) for name in "ABC"]  # all at once
    for node in wait_up(nodes):
        stop_nodes(nodes)
        pytest.fail(f"node {node.name} did not start:\n{node.stderr()[-3000:]}")
    yield nodes, database
    stop_nodes(nodes)
    assert_no_errors_logged(nodes)


@pytest.fixture
def nodes(cluster: tuple[list[Node], str]) -> list[Node]:
    return cluster[0]


def create_key(node: Node, **fields: Any) -> dict[str, Any]:
    r = httpx.post(f"{node.url}/api/v1/keys", json=fields, headers=ADMIN, timeout=10)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def chat(client: openai.OpenAI, node: Node) -> Reply:
    """One chat completion through the official SDK (no retries: a 429 must reach us)."""
    sent = time.monotonic()
    try:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=MESSAGES,  # type: ignore[arg-type]
        )
        status, headers, body = raw.status_code, raw.headers, json.loads(raw.text)
    except openai.APIStatusError as exc:
        status, headers, body = exc.status_code, exc.response.headers, exc.response.json()
    return Reply(node.name, status, headers, body, sent, time.monotonic())


def sdk(node: Node, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{node.url}/v1", api_key=secret, max_retries=0, timeout=20.0)


def burst(nodes: list[Node], secret: str, total: int, threads: int) -> list[Reply]:
    """``total`` requests from ``threads`` concurrent clients, round robin over the nodes."""
    clients = [sdk(node, secret) for node in nodes]
    try:
        with ThreadPoolExecutor(threads) as pool:
            return list(
                pool.map(lambda i: chat(clients[i % len(nodes)], nodes[i % len(nodes)]),
                         range(total))
            )  # fmt: skip
    finally:
        for c in clients:
            c.close()


def assert_openai_error(reply: Reply, status: int, code: str) -> None:
    assert reply.status == status, (reply.status, reply.body)
    error = reply.body["error"]
    assert error["code"] == code and error["type"] and error["message"], reply.body


def assert_stored_once(nodes: list[Node], key: dict[str, Any], replies: list[Reply]) -> None:
    """Every request is one record, whichever node served it and whichever node is asked, and
    the usage totals agree with what the clients were told."""
    sent_ids = [r.headers["x-gatewatch-request-id"] for r in replies]
    assert len(set(sent_ids)) == len(sent_ids)
    params = {"api_key": key["id"], "limit": 1000}
    deadline = time.monotonic() + 10
    while True:  # records are written off the request path, by each node: wait for the last
        r = httpx.get(f"{nodes[-1].url}/api/v1/requests", params=params, headers=ADMIN, timeout=10)
        assert r.status_code == 200, r.text
        if r.json()["count"] >= len(replies) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    ok = [r for r in replies if r.status == 200]
    cost = sum(float(r.headers["x-gatewatch-cost-usd"]) for r in ok)
    tokens = sum(r.body["usage"]["total_tokens"] for r in ok)
    for node in nodes:
        r = httpx.get(f"{node.url}/api/v1/requests", params=params, headers=ADMIN, timeout=10)
        page = r.json()
        assert page["count"] == len(replies), (node.name, page["count"], len(replies))
        assert sorted(rec["id"] for rec in page["results"]) == sorted(sent_ids), node.name
        by_id = {rec["id"]: rec for rec in page["results"]}
        for reply in replies:
            assert by_id[reply.headers["x-gatewatch-request-id"]]["status_code"] == reply.status

        r = httpx.get(
            f"{node.url}/api/v1/usage",
            params={"api_key": key["id"], "bucket": "day"},
            headers=ADMIN,
            timeout=10,
        )
        assert r.status_code == 200, r.text
        totals = r.json()["totals"]
        assert totals["requests"] == len(replies), (node.name, totals)
        assert totals["errors"] == len(replies) - len(ok), (node.name, totals)
        assert totals["input_tokens"] + totals["output_tokens"] == tokens, (node.name, totals)
        assert totals["cost_usd"] == pytest.approx(cost, rel=1e-9, abs=1e-12), (node.name, totals)


# -- budgets --------------------------------------------------------------------------------------


def test_budget_holds_exactly_across_three_nodes(nodes: list[Node]) -> None:
    """§C1: a key with a budget of N requests, 12 concurrent clients over 3 nodes. Once N
    responses have ended, their cost is charged, so every request sent after that is refused
    (402, OpenAI error shape); the overshoot is at most the requests in flight at that moment.
    A caller going on one request at a time is served exactly N in all."""
    with sdk(nodes[0], create_key(nodes[0], user="probe")["key"]) as probe_client:
        probe = chat(probe_client, nodes[0])
    assert probe.status == 200, probe.body
    cost = float(probe.headers["x-gatewatch-cost-usd"])
    assert cost > 0
    n = 8
    key = create_key(nodes[1], user="budgeted", budget_usd=n * cost)
    replies = burst(nodes, key["key"], total=48, threads=12)

    served = sorted((r for r in replies if r.status == 200), key=lambda r: r.received)
    for r in replies:
        if r.status != 200:
            assert_openai_error(r, 402, "budget_exceeded")
    if len(served) >= n:
        capped = served[n - 1].received  # by then N responses had ended: the cap was reached
        late = [r for r in replies if r.sent > capped]
        assert all(r.status == 402 for r in late)  # (none may be left to send by then)
        in_flight = [r for r in replies if r.sent < capped < r.received]
        assert len(served) <= n + len(in_flight), (len(served), len(in_flight))
    # one request at a time from here on: exactly N are ever served
    followed = []
    with sdk(nodes[2], key["key"]) as client:
        for _ in range(n + 1):
            followed.append(chat(client, nodes[2]))
            if followed[-1].status != 200:
                break
    assert_openai_error(followed[-1], 402, "budget_exceeded")
    assert len(served) + len(followed) - 1 == max(n, len(served)), (len(served), len(followed))
    first_refusal = min((r for r in replies if r.status == 402), key=lambda r: r.sent)
    print(f"\nbudget of {n} requests: {len(served)} served of {len(replies)} in the burst, "
          f"{len(followed) - 1} more one at a time; first 402: "
          f"{first_refusal.body['error']['message']}")  # fmt: skip
    assert_stored_once(nodes, key, replies + followed)


def test_budget_counts_requests_cheaper_than_a_micro_dollar(nodes: list[Node]) -> None:
    """A budget of 10 small embedding requests (list prices) lets exactly 10 through."""

    def embed(node: Node, secret: str) -> httpx.Response:
        return httpx.post(
            f"{node.url}/v1/embeddings",
            json={"model": "text-embedding-3-small", "input": "hi"},
            headers={"Authorization": f"Bearer {secret}"},
            timeout=10,
        )

    probe = embed(nodes[0], create_key(nodes[0], user="probe")["key"])
    cost = float(probe.headers["x-gatewatch-cost-usd"])
    if not 0 < cost < 0.000001:
        pytest.skip(f"an embedding costs ${cost} at list price: not under a micro-dollar")
    key = create_key(nodes[0], user="embedder", budget_usd=10 * cost)
    codes = [embed(nodes[i % 3], key["key"]).status_code for i in range(15)]
    assert codes == [200] * 10 + [402] * 5, codes


# -- rate limits ----------------------------------------------------------------------------------


def test_rpm_limit_holds_exactly_across_three_nodes(nodes: list[Node]) -> None:
    """§C2: rpm=R shared through Redis: R requests served across the three nodes within the
    minute (plus one per 60/R s that passed, as the limit refills), the rest 429 with
    Retry-After, in the OpenAI error shape."""
    rpm = 12
    key = create_key(nodes[0], user="limited", rpm=rpm)
    t0 = time.monotonic()
    replies = burst(nodes, key["key"], total=3 * rpm, threads=12)
    elapsed = time.monotonic() - t0
    served = [r for r in replies if r.status == 200]
    refused = [r for r in replies if r.status != 200]
    refilled = int(elapsed // (60 / rpm))
    print(f"\nrpm={rpm}: {len(served)} served of {len(replies)} in {elapsed:.1f}s")
    assert rpm <= len(served) <= rpm + refilled, (len(served), elapsed)
    assert {r.node for r in served} == {"A", "B", "C"}
    for r in refused:
        assert_openai_error(r, 429, "rate_limit_exceeded")
        assert 1 <= int(r.headers["retry-after"]) <= 60 / rpm + 1
    assert_stored_once(nodes, key, replies)


# -- revocation -----------------------------------------------------------------------------------


def test_revoked_key_is_refused_by_every_node_within_a_second(nodes: list[Node]) -> None:
    """A key revoked through node A's API answers 401 on B and C within a second, although
    both had it cached (they had just served it)."""
    a, others = nodes[0], nodes[1:]
    key = create_key(a, user="leaving")
    clients = {node.name: sdk(node, key["key"]) for node in nodes}
    try:
        for node in nodes:  # every node has the key in its cache
            assert chat(clients[node.name], node).status == 200

        def first_refusal(node: Node, since: float) -> float:
            while time.monotonic() - since < 5:
                reply = chat(clients[node.name], node)
                if reply.status != 200:
                    assert_openai_error(reply, 401, "invalid_api_key")
                    return reply.received - since
                time.sleep(0.01)
            raise AssertionError(f"node {node.name} still serves the revoked key after 5 s")

        with ThreadPoolExecutor(len(others)) as pool:
            revoked = time.monotonic()
            r = httpx.delete(f"{a.url}/api/v1/keys/{key['id']}", headers=ADMIN, timeout=10)
            assert r.status_code == 200, r.text
            latencies = list(pool.map(lambda n: first_refusal(n, revoked), others))
        print(f"\nrevocation seen after {', '.join(f'{x:.3f}s' for x in latencies)} on B, C")
        assert max(latencies) < 1.0, latencies
        for node in nodes:  # and it stays refused, on the revoking node too
            assert chat(clients[node.name], node).status == 401
    finally:
        for c in clients.values():
            c.close()


# -- one node at a time: alerts and the retention purge -------------------------------------------


def test_alerts_and_purge_run_on_one_node_at_a_time(
    cluster: tuple[list[Node], str], webhook: Webhook
) -> None:
    """Three nodes evaluate alert rules every 0.5 s, but a key crossing 80 % of its budget is
    one firing: one webhook delivery and one entry in the alert history, on every node. The
    leases table names one process of the cluster for alerts and one for the purge."""
    import psycopg

    nodes, database = cluster
    key = create_key(nodes[0], user="spender", name="spender-key", budget_usd=1.0)
    with sdk(nodes[0], create_key(nodes[0], user="probe")["key"]) as probe_client:
        cost = float(chat(probe_client, nodes[0]).headers["x-gatewatch-cost-usd"])
    r = httpx.patch(
        f"{nodes[0].url}/api/v1/keys/{key['id']}",
        json={"budget_usd": 2 * cost},
        headers=ADMIN,
        timeout=10,
    )
    assert r.status_code == 200, r.text
    for node in nodes[1:]:  # 2 of 2 requests: 100 % of the budget, spent on two nodes
        with sdk(node, key["key"]) as client:
            assert chat(client, node).status == 200

    def firings() -> list[dict[str, Any]]:
        return [
            b for b in webhook.bodies
            if b["rule"] == "key-budget-80" and "spender-key" in b["subject"]
            and b["state"] == "firing"
        ]  # fmt: skip

    deadline = time.monotonic() + 10
    while not firings():
        assert time.monotonic() < deadline, webhook.bodies
        time.sleep(0.1)
    time.sleep(2.5)  # five more evaluation intervals: room for a second node to fire it again
    assert len(firings()) == 1, firings()
    for node in nodes:
        r = httpx.get(f"{node.url}/api/v1/alerts", headers=ADMIN, timeout=10)
        assert r.status_code == 200, r.text
        mine = [a for a in r.json()["results"] if a["subject_id"] == key["id"]]
        assert [a["state"] for a in mine] == ["firing"], (node.name, mine)

    pids = {str(node.proc.pid) for node in nodes}
    schema = schema_of(database)
    seen: dict[str, set[str]] = {"alerts": set(), "retention": set()}
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        for _ in range(5):
            rows = conn.execute(f'SELECT name, holder FROM "{schema}".leases').fetchall()
            for name, holder in rows:
                seen.setdefault(name, set()).add(holder)
            time.sleep(0.3)
    for name, holders in seen.items():
        assert len(holders) == 1, (name, holders)
        (holder,) = holders
        assert holder.split(":")[1] in pids, (name, holder, pids)


# -- keys for a new user and organization, created on several nodes at once -----------------------


def test_keys_for_a_new_user_created_on_three_nodes_at_once(nodes: list[Node]) -> None:
    """Provisioning scripts talking to different nodes create keys for the same new user and
    organization at the same moment: every one gets its key (201), all under one user."""

    def create(node: Node, org: str, barrier: threading.Barrier) -> tuple[int, str]:
        barrier.wait()  # the three requests leave together
        r = httpx.post(f"{node.url}/api/v1/keys", json={"user": "founder", "org": org},
                       headers=ADMIN, timeout=10)  # fmt: skip
        return r.status_code, r.text

    codes: list[tuple[int, str]] = []
    for org in ("newco-0", "newco-1", "newco-2"):
        barrier = threading.Barrier(len(nodes))
        with ThreadPoolExecutor(len(nodes)) as pool:
            codes += pool.map(create, nodes, [org] * len(nodes), [barrier] * len(nodes))
    assert [code for code, _ in codes] == [201] * len(codes), codes
    for i in range(0, len(codes), len(nodes)):  # one user per organization, not one per node
        users = {json.loads(text)["user_id"] for _, text in codes[i : i + len(nodes)]}
        assert len(users) == 1, codes


# -- two nodes on a blank schema: started together, every request stored once ---------------------


def test_two_nodes_started_together_on_a_blank_schema(
    tmp_path: Path, upstream: Upstream, redis_url: str
) -> None:
    """Two nodes started at the same moment on a blank schema both come up (each migration
    applied once); traffic to both, then node A stopped cleanly: B lists every request exactly
    once, A's included, with usage totals to match."""
    import psycopg

    database = postgres_url()
    extra = provider(upstream) + PRICES
    nodes = [launch(name, tmp_path, database, redis_url, extra) for name in "AB"]
    try:
        for node in wait_up(nodes):
            pytest.fail(f"node {node.name} did not start:\n{node.stderr()[-3000:]}")
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            rows = conn.execute(f'SELECT name FROM "{schema_of(database)}"._migrations')
            assert sorted(name for (name,) in rows) == sorted(name for name, _ in MIGRATIONS)
        key = create_key(nodes[0], user="both")
        replies = burst(nodes, key["key"], total=20, threads=4)
        assert [r.status for r in replies] == [200] * 20
        stop_nodes(nodes[:1])  # A stops while B serves on: nothing A served may be lost
        assert "Application shutdown complete" in nodes[0].stderr()
        assert_stored_once(nodes[1:], key, replies)
    finally:
        stop_nodes(nodes)
    assert_no_errors_logged(nodes)

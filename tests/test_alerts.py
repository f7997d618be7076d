"""Alerts (§N, §A7): rules evaluated from the budget counters and the usage rollups, with an
injected clock; deliveries to a real webhook receiver on a loopback port (retries after a 500,
one firing per rule and subject until it resolves, then one resolution); the history and rules
endpoints and their organization scoping; a hanging receiver never slows the proxy."""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import RunningGateway

from gatewatch.alerts.windows import ERRORS, REQUESTS, WindowReader
from gatewatch.records import Record, new_id
from gatewatch.settings import ConfigError, load_settings
from gatewatch.store import Scope, SQLiteStore

Start = Callable[..., RunningGateway]


# ---- a webhook receiver on loopback -------------------------------------------------------------


@dataclass
class Received:
    path: str
    body: dict[str, Any]
    at: float  # time.monotonic()


@dataclass
class Receiver:
    """``/ok`` answers 200; ``/flaky`` 500 for its first ``fail_first`` requests, then 200;
    ``/hang`` holds the request until the test ends."""

    fail_first: int = 1
    received: list[Received] = field(default_factory=list)
    hanging: int = 0
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def bodies(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r.body for r in self.received if r.path == path]

    def wait(self, path: str, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.bodies(path)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{path}: {len(self.bodies(path))} of {count} deliveries")
            time.sleep(0.02)
        return self.bodies(path)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            with rec.lock:
                rec.received.append(Received(self.path, body, time.monotonic()))
                flaky_seen = sum(1 for r in rec.received if r.path == "/flaky")
            status = 200
            if self.path == "/flaky" and flaky_seen <= rec.fail_first:
                status = 500
            elif self.path == "/hang":
                with rec.lock:
                    rec.hanging += 1
                rec.release.wait(60)
            self.send_response(status)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    rec.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.server.daemon_threads = True
    thread = threading.Thread(target=rec.server.serve_forever, daemon=True)
    thread.start()
    yield rec
    rec.release.set()
    rec.server.shutdown()
    rec.server.server_close()


# ---- helpers ------------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def alerts_config(receiver: Receiver, rules: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "interval": "1h",  # the tests evaluate by hand
        "backoff": "0.2s",
        "base_url": "https://gw.example.com",
        "webhooks": [
            {"name": "ops", "url": f"{receiver.url}/flaky", "format": "json"},
            {"name": "chat", "url": f"{receiver.url}/ok", "format": "slack"},
            {"name": "stuck", "url": f"{receiver.url}/hang", "format": "json", "timeout": 60},
        ],
        "rules": rules,
        **extra,
    }


def start(start_gateway: Start, receiver: Receiver, rules: list[dict[str, Any]]) -> RunningGateway:
    return start_gateway(
        alerts=alerts_config(receiver, rules),
        circuit_breaker={"failure_threshold": 1000},  # failing targets stay in use
    )


def evaluate(gw: RunningGateway, clock: Clock | None = None) -> list[dict[str, Any]]:
    """One evaluation on the gateway's event loop (as its background loop would run it)."""
    alerts = gw.gateway.alerts
    if clock is not None:
        alerts.clock = clock
    assert alerts.loop is not None
    return asyncio.run_coroutine_threadsafe(alerts.run_once(), alerts.loop).result(30)


def chat(
    gw: RunningGateway, model: str, n: int = 1, key: str | None = None
) -> list[httpx.Response]:
    out = []
    with httpx.Client(base_url=gw.url, timeout=30) as c:
        for _ in range(n):
            out.append(c.post(
                "/v1/chat/completions",
                headers={"Authorization": f"Bearer {key or gw.admin_key}"},
                json={"model": model, "messages": [{"role": "user", "content": "hello there"}]},
            ))  # fmt: skip
    gw.wait_records()
    return out


def history(gw: RunningGateway, key: str | None = None, **params: Any) -> dict[str, Any]:
    with gw.api(key) as c:
        r = c.get("/api/v1/alerts", params=params)
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]


def metric(gw: RunningGateway, name: str, **labels: str) -> float:
    value = gw.gateway.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def wait_deliveries(gw: RunningGateway, alert_id: str, timeout: float = 15.0) -> dict[str, Any]:
    """The alert once none of its deliveries is pending or retrying."""
    deadline = time.monotonic() + timeout
    while True:
        with gw.api() as c:
            r = c.get(f"/api/v1/alerts/{alert_id}")
            assert r.status_code == 200, r.text
            event = r.json()
        if all(d["status"] not in ("pending", "retrying") for d in event["deliveries"]):
            return event  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise AssertionError(event)
        time.sleep(0.05)


# ---- error rate: firing, retry, dedup, resolution, history --------------------------------------


def test_error_rate_fires_once_retries_after_a_500_and_resolves(
    start_gateway: Start, receiver: Receiver
) -> None:
    rule = {"name": "openai-errors", "type": "error_rate", "window": "5m", "threshold": 0.5,
            "min_requests": 5, "filter": {"provider": "openai"},
            "notify": ["ops", "chat"]}  # fmt: skip
    gw = start(start_gateway, receiver, [rule])
    t0 = time.time()
    clock = Clock(t0)
    assert evaluate(gw, clock) == []  # no traffic yet

    failed = chat(gw, "gpt-4o-error-500", 6)
    assert all(r.status_code >= 500 for r in failed)
    chat(gw, "gpt-4o-mini", 2)
    clock.now = t0 + 60
    (firing,) = evaluate(gw)
    assert firing["state"] == "firing" and firing["subject"] == "provider=openai"
    assert firing["value"] == pytest.approx(0.75)

    # the json webhook answered 500 first: retried after the backoff, then delivered
    first, second = receiver.wait("/flaky", 2)
    assert first == second
    times = [r.at for r in receiver.received if r.path == "/flaky"]
    assert times[1] - times[0] >= 0.2 * 0.9
    body = second
    for key in ("rule", "type", "state", "subject", "value", "threshold", "started_at", "url"):
        assert key in body, key
    assert body["rule"] == "openai-errors" and body["type"] == "error_rate"
    assert body["state"] == "firing" and body["threshold"] == 0.5
    assert body["value"] == pytest.approx(0.75)
    assert body["url"] == f"https://gw.example.com/api/v1/alerts/{firing['id']}"
    assert body["details"]["requests"] == 8 and body["details"]["errors"] == 6
    (slack,) = receiver.wait("/ok", 1)
    assert set(slack) == {"text"}
    assert "FIRING" in slack["text"] and "openai-errors" in slack["text"]
    assert "75.0%" in slack["text"] and "provider=openai" in slack["text"]
    stored = wait_deliveries(gw, firing["id"])
    by_hook = {d["webhook"]: d for d in stored["deliveries"]}
    assert by_hook["ops"]["status"] == "delivered" and by_hook["ops"]["attempts"] == 2
    assert by_hook["ops"]["last_status_code"] == 200
    assert by_hook["chat"]["attempts"] == 1

    # still over the threshold: no second firing
    clock.now = t0 + 120
    assert evaluate(gw) == []
    assert len(receiver.bodies("/flaky")) == 2 and len(receiver.bodies("/ok")) == 1
    assert metric(gw, "gatewatch_alerts_firing") == 1

    # the errors leave the window: one resolution, to both webhooks
    clock.now = t0 + 60 + 300 + 10
    (resolved,) = evaluate(gw)
    assert resolved["state"] == "resolved" and resolved["firing_id"] == firing["id"]
    flaky = receiver.wait("/flaky", 3)
    assert flaky[2]["state"] == "resolved" and flaky[2]["resolved_at"]
    assert flaky[2]["started_at"] == body["started_at"]
    slack_resolved = receiver.wait("/ok", 2)[1]["text"]
    assert "RESOLVED" in slack_resolved and "openai-errors" in slack_resolved
    clock.now = t0 + 500
    assert evaluate(gw) == []  # resolved once

    # the history: newest first, each with its deliveries
    wait_deliveries(gw, resolved["id"])
    page = history(gw)
    assert page["count"] == 2
    assert [e["id"] for e in page["results"]] == [resolved["id"], firing["id"]]
    assert all(len(e["deliveries"]) == 2 for e in page["results"])
    assert page["results"][1]["resolved_at"] == page["results"][0]["resolved_at"]
    assert [e["id"] for e in history(gw, state="firing")["results"]] == [firing["id"]]
    assert history(gw, active="true")["count"] == 0
    assert history(gw, rule="openai-errors")["count"] == 2
    assert history(gw, rule="other")["count"] == 0
    one = history(gw, limit=1)
    assert one["next_after_id"] == resolved["id"]
    assert history(gw, limit=1, after_id=one["next_after_id"])["results"][0]["id"] == firing["id"]
    with gw.api() as c:
        assert c.get("/api/v1/alerts", params={"limit": 0}).json()["error"]["param"] == "limit"
        assert c.get("/api/v1/alerts", params={"state": "x"}).json()["error"]["param"] == "state"

    assert metric(gw, "gatewatch_alerts_firing") == 0
    assert metric(gw, "gatewatch_alert_deliveries_total", outcome="delivered") == 4
    assert metric(gw, "gatewatch_alert_deliveries_total", outcome="retried") == 1


# ---- budget: live counters, dedup across a restart ----------------------------------------------


def test_budget_rule_fires_at_80_percent_of_a_key_budget(
    start_gateway: Start, receiver: Receiver
) -> None:
    rule = {"name": "key-budget-80", "type": "budget", "scope": "key", "threshold": 0.8,
            "notify": ["chat", "ops"]}  # fmt: skip
    receiver.fail_first = 0
    gw = start(start_gateway, receiver, [rule])
    (probe,) = chat(gw, "gpt-4o-mini")
    cost = float(probe.headers["x-gatewatch-cost-usd"])
    assert cost > 0
    key = gw.create_key(name="ci-bot", user="ci", budget_usd=cost * 10, budget_period="month")
    clock = Clock(time.time())

    chat(gw, "gpt-4o-mini", 7, key=key["key"])
    assert evaluate(gw, clock) == []  # 70 %
    chat(gw, "gpt-4o-mini", 2, key=key["key"])  # 90 %, charged as each response ends
    (firing,) = evaluate(gw)
    assert firing["subject"] == "key ci-bot" and firing["subject_id"] == key["id"]
    assert firing["value"] == pytest.approx(0.9, abs=0.01) and firing["threshold"] == 0.8
    assert "90%" in firing["message"]
    body = receiver.wait("/flaky", 1)[0]
    assert body["type"] == "budget" and body["subject_id"] == key["id"]
    assert body["details"]["budget_usd"] == pytest.approx(cost * 10)
    assert body["details"]["spent_usd"] == pytest.approx(cost * 9, rel=0.01)
    assert "90%" in receiver.wait("/ok", 1)[0]["text"]

    # a restarted gateway reads the open firing back: no second firing
    gw.server.stop()
    gw = start(start_gateway, receiver, [rule])
    assert evaluate(gw, clock) == []
    assert metric(gw, "gatewatch_alerts_firing") == 1

    # a larger budget brings the key back under 80 %: resolved
    with gw.api() as c:
        r = c.patch(f"/api/v1/keys/{key['id']}", json={"budget_usd": cost * 100})
        assert r.status_code == 200, r.text
    (resolved,) = evaluate(gw)
    assert resolved["state"] == "resolved" and resolved["firing_id"] == firing["id"]
    assert resolved["value"] == pytest.approx(0.09, abs=0.005)
    assert receiver.wait("/flaky", 2)[1]["state"] == "resolved"
    assert len(receiver.bodies("/flaky")) == 2


def test_a_delivery_cut_short_by_a_shutdown_is_sent_after_the_restart(
    start_gateway: Start, receiver: Receiver
) -> None:
    rule = {"name": "silence", "type": "no_traffic", "window": "1m", "notify": ["stuck"]}
    gw = start(start_gateway, receiver, [rule])
    t0 = time.time()
    assert evaluate(gw, Clock(t0)) == []
    (firing,) = evaluate(gw, Clock(t0 + 61))
    deadline = time.monotonic() + 15
    while receiver.hanging < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    gw.server.stop()  # the receiver never answered: the delivery is still pending
    receiver.release.set()  # from now on it answers at once

    gw = start(start_gateway, receiver, [rule])
    assert evaluate(gw, Clock(t0 + 62)) == []  # still firing: not fired again
    bodies = receiver.wait("/hang", 2)
    assert bodies[0] == bodies[1] and bodies[1]["id"] == firing["id"]
    (delivery,) = wait_deliveries(gw, firing["id"])["deliveries"]
    assert delivery["status"] == "delivered" and delivery["attempts"] == 1


# ---- spend, latency, silence --------------------------------------------------------------------


def test_spend_rate_and_latency_fire_from_the_rollups_and_resolve_when_the_window_moves_on(
    start_gateway: Start, receiver: Receiver
) -> None:
    rules = [
        {"name": "spend-spike", "type": "spend_rate", "window": "10m", "threshold_usd": 1e-9,
         "notify": ["chat"]},
        {"name": "sla", "type": "latency_p95", "window": "10m", "threshold_ms": 0.001,
         "min_requests": 3, "per": ["model"], "notify": ["chat"]},
    ]  # fmt: skip
    gw = start(start_gateway, receiver, rules)
    t0 = time.time()
    clock = Clock(t0)
    assert evaluate(gw, clock) == []
    cost = sum(float(r.headers["x-gatewatch-cost-usd"]) for r in chat(gw, "gpt-4o-mini", 3))
    clock.now = t0 + 60
    fired = {e["rule"]: e for e in evaluate(gw)}
    assert set(fired) == {"spend-spike", "sla"}
    assert fired["spend-spike"]["value"] == pytest.approx(cost, rel=0.001)
    assert fired["spend-spike"]["subject"] == "all traffic"
    assert fired["sla"]["subject"].startswith("model=gpt-4o-mini")
    assert fired["sla"]["value"] > 0.001
    texts = [b["text"] for b in receiver.wait("/ok", 2)]
    assert any("spent in the last 10m" in t for t in texts)
    assert any("p95 latency" in t for t in texts)

    clock.now = t0 + 60 + 600 + 10  # the window has moved past those requests
    resolved = {e["rule"]: e for e in evaluate(gw)}
    assert set(resolved) == {"spend-spike", "sla"}
    assert resolved["spend-spike"]["value"] == 0
    assert all(e["state"] == "resolved" for e in resolved.values())


def test_no_traffic_fires_after_a_silent_window_and_resolves_with_traffic(
    start_gateway: Start, receiver: Receiver
) -> None:
    rule = {"name": "silence", "type": "no_traffic", "window": "10m", "notify": ["chat"]}
    gw = start(start_gateway, receiver, [rule])
    t0 = time.time()
    clock = Clock(t0)
    assert evaluate(gw, clock) == []  # watched for less than a window
    clock.now = t0 + 300
    assert evaluate(gw) == []
    clock.now = t0 + 601
    (firing,) = evaluate(gw)
    assert firing["type"] == "no_traffic" and firing["value"] == 0
    assert "no requests in the last 10m" in receiver.wait("/ok", 1)[0]["text"]
    clock.now = t0 + 601.5
    assert evaluate(gw) == []

    chat(gw, "gpt-4o-mini")
    clock.now = t0 + 602
    (resolved,) = evaluate(gw)
    assert resolved["state"] == "resolved" and resolved["value"] == 1
    assert "RESOLVED" in receiver.wait("/ok", 2)[1]["text"]


# ---- the API: rules, validation, organization scoping -------------------------------------------


def test_rules_api_and_org_scoping(start_gateway: Start, receiver: Receiver) -> None:
    config_rules = [
        {"name": "global-errors", "type": "error_rate", "threshold": 0.2, "min_requests": 1},
        {"name": "key-budget", "type": "budget", "scope": "key", "threshold": 0.8},
    ]
    gw = start(start_gateway, receiver, config_rules)
    acme_admin = gw.create_key(user="ann", org="acme", role="admin")["key"]
    acme_member = gw.create_key(user="amy", org="acme")["key"]
    globex_admin = gw.create_key(user="gina", org="globex", role="admin")["key"]

    def call(key: str, method: str, path: str, **kw: Any) -> httpx.Response:
        with gw.api(key) as c:
            return c.request(method, path, **kw)

    rule = {"name": "acme-errors", "type": "error_rate", "threshold": 0.5, "min_requests": 1,
            "window": "5m", "notify": ["chat"]}  # fmt: skip
    # members may not read or manage alerts
    assert call(acme_member, "GET", "/api/v1/alerts").status_code == 403
    assert call(acme_member, "GET", "/api/v1/alerts/rules").status_code == 403
    assert call(acme_member, "POST", "/api/v1/alerts/rules", json=rule).status_code == 403
    # an admin's rules are its organization's
    r = call(acme_admin, "POST", "/api/v1/alerts/rules", json={**rule, "org": "globex"})
    assert r.status_code == 403
    r = call(acme_admin, "POST", "/api/v1/alerts/rules", json=rule)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["source"] == "api" and created["org"] == "acme"
    assert created["window"] == 300 and created["id"].startswith("alr_")
    assert call(acme_admin, "POST", "/api/v1/alerts/rules", json=rule).status_code == 409

    # validation errors name the field
    for body, param in (
        ({"name": "x", "type": "latency_p95"}, "threshold_ms"),
        ({"name": "x", "type": "budget", "scope": "key", "threshold": 0.8, "window": "5m"},
         "window"),
        ({**rule, "name": "y", "notify": ["pager"]}, "notify"),
        ({**rule, "name": "y", "colour": "red"}, "colour"),
        ({**rule, "name": "y", "type": "meltdown"}, "type"),
        ({**rule, "name": "y", "window": "soon"}, "window"),
        ({**rule, "name": "y", "threshold": 2}, "threshold"),
        ({**rule, "name": "y", "filter": {"session": "s"}}, "filter.session"),
    ):  # fmt: skip
        r = call(acme_admin, "POST", "/api/v1/alerts/rules", json=body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["param"] == param, (body, r.json())
    r = call(acme_admin, "POST", "/api/v1/alerts/rules", content=b"{not json")
    assert r.status_code == 400
    r = call(gw.admin_key, "POST", "/api/v1/alerts/rules",
             json={**rule, "name": "global-errors"})  # fmt: skip
    assert r.status_code == 409  # a configured rule's name

    # who sees which rules
    def rule_ids(key: str) -> set[str]:
        r = call(key, "GET", "/api/v1/alerts/rules")
        assert r.status_code == 200, r.text
        return {x["id"] for x in r.json()["results"]}

    assert rule_ids(gw.admin_key) == {created["id"], "config:global-errors", "config:key-budget"}
    assert rule_ids(acme_admin) == {created["id"], "config:key-budget"}
    assert rule_ids(globex_admin) == {"config:key-budget"}
    assert call(globex_admin, "GET", f"/api/v1/alerts/rules/{created['id']}").status_code == 404
    assert call(globex_admin, "DELETE", f"/api/v1/alerts/rules/{created['id']}").status_code == 404
    r = call(gw.admin_key, "DELETE", "/api/v1/alerts/rules/config:key-budget")
    assert r.status_code == 409

    # traffic of both organizations: the acme rule counts acme's only
    clock = Clock(time.time())
    assert evaluate(gw, clock) == []
    chat(gw, "gpt-4o-error-500", 2, key=acme_member)
    chat(gw, "gpt-4o-mini", 6, key=globex_admin)
    clock.now += 30
    fired = {e["rule"]: e for e in evaluate(gw)}
    assert set(fired) == {"global-errors", "acme-errors"}
    acme = fired["acme-errors"]
    assert acme["subject"] == "org=acme" and acme["value"] == 1.0
    assert acme["details"]["requests"] == 2
    assert fired["global-errors"]["value"] == pytest.approx(0.25)

    def seen(key: str) -> set[str]:
        return {e["rule"] for e in history(gw, key)["results"]}

    assert seen(gw.admin_key) == {"global-errors", "acme-errors"}
    assert seen(acme_admin) == {"acme-errors"}
    assert seen(globex_admin) == set()
    assert [e["rule"] for e in history(gw, org="acme")["results"]] == ["acme-errors"]
    assert history(gw, globex_admin, org="acme")["count"] == 0
    assert call(globex_admin, "GET", f"/api/v1/alerts/{acme['id']}").status_code == 404
    assert call(acme_admin, "GET", f"/api/v1/alerts/{acme['id']}").status_code == 200
    gid = fired["global-errors"]["id"]
    assert call(acme_admin, "GET", f"/api/v1/alerts/{gid}").status_code == 404

    # deleting a rule resolves its firing at the next evaluation
    r = call(acme_admin, "DELETE", f"/api/v1/alerts/rules/{created['id']}")
    assert r.status_code == 200 and r.json()["id"] == created["id"]
    clock.now += 30
    (gone,) = evaluate(gw)
    assert gone["rule"] == "acme-errors" and gone["state"] == "resolved"
    assert "rule was removed" in gone["message"]
    assert seen(acme_admin) == {"acme-errors"} and history(gw, acme_admin)["count"] == 2


def test_alert_settings_errors_name_the_field(tmp_path: Path) -> None:
    def error(alerts: dict[str, Any]) -> str:
        with pytest.raises(ConfigError) as info:
            load_settings(path=None, env={}, overrides={"alerts": alerts})
        return str(info.value)

    hook = {"name": "ops", "url": "https://hooks.example.com/x", "format": "slack"}
    assert "alerts.rules[0].notify: no webhook named 'pager'" in error(
        {"webhooks": [hook], "rules": [{"name": "a", "type": "no_traffic", "notify": ["pager"]}]}
    )
    assert "alerts.rules[0].threshold_usd: needed by spend_rate rules" in error(
        {"rules": [{"name": "a", "type": "spend_rate"}]}
    )
    assert "alerts.rules[0].scope" in error({"rules": [{"name": "a", "type": "budget",
                                                        "threshold": 0.8}]})  # fmt: skip
    assert "alerts.webhooks[0].format" in error({"webhooks": [{**hook, "format": "teams"}]})
    assert "alerts.interval" in error({"interval": "often"})
    assert "alerts.rules[1].name" in error({"rules": [{"name": "a", "type": "no_traffic"}] * 2})
    ok = load_settings(path=None, env={}, overrides={"alerts": {
        "interval": "30s", "webhooks": [hook],
        "rules": [{"name": "silence", "type": "no_traffic", "window": "30m", "notify": ["ops"]}],
    }})  # fmt: skip
    assert ok.alerts.interval == 30 and ok.alerts.rules[0].window == 1800
    assert "hooks.example.com" not in repr(ok.alerts)  # a webhook URL is a secret


# ---- a hanging receiver never slows the proxy ---------------------------------------------------


def test_proxy_keeps_its_speed_while_the_webhook_receiver_hangs(
    start_gateway: Start, receiver: Receiver
) -> None:
    rules = [
        {"name": f"spend-{i}", "type": "spend_rate", "window": "10m", "threshold_usd": 1e-9,
         "per": ["api_key"], "notify": ["stuck"]}
        for i in range(3)
    ]  # fmt: skip
    gw = start(start_gateway, receiver, rules)
    keys = [gw.create_key(user=f"u{i}")["key"] for i in range(4)]

    def median_latency(n: int = 50) -> float:
        took = []
        with httpx.Client(base_url=gw.url, timeout=30) as c:
            for i in range(n):
                t = time.perf_counter()
                r = c.post("/v1/chat/completions",
                           headers={"Authorization": f"Bearer {keys[i % len(keys)]}"},
                           json={"model": "gpt-4o-mini",
                                 "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
                took.append(time.perf_counter() - t)
                assert r.status_code == 200
        return statistics.median(took)

    clock = Clock(time.time())
    assert evaluate(gw, clock) == []
    median_latency(10)  # warm up
    before = median_latency()
    gw.wait_records()
    clock.now += 30
    started = time.monotonic()
    fired = evaluate(gw)
    assert time.monotonic() - started < 10  # evaluation does not wait for deliveries
    assert len(fired) == 12  # 3 rules x 4 keys, each delivered to the hanging receiver
    deadline = time.monotonic() + 15
    while receiver.hanging < 8:  # every delivery slot is held by the receiver
        assert time.monotonic() < deadline, receiver.hanging
        time.sleep(0.02)
    during = median_latency()
    assert gw.gateway.alerts.deliverer.busy >= 8  # still hanging while we measured
    assert during < before * 3 + 0.05, (before, during)


# ---- windows from the rollups -------------------------------------------------------------------


def test_windows_are_exact_to_an_evaluation_across_an_hour_boundary(tmp_path: Path) -> None:
    """Evaluated every minute, a 5-minute window holds exactly the records stored in the last
    five minutes, also while the window straddles two hourly rollup rows."""
    store = SQLiteStore(str(tmp_path / "w.db"))
    store.migrate()
    reader = WindowReader({"provider": ["openai"]}, ())
    owner = Scope("owner", "", "")
    base = (int(time.time()) // 3600 - 5) * 3600 + 50 * 60  # ten minutes before an hour ends

    def record(ts: float, provider: str = "openai", error: bool = False) -> Record:
        return Record(
            id=new_id(ts), started=ts, ended=ts + 0.5, endpoint="/v1/chat/completions",
            org_id="o", user_id="u", provider=provider, model="m",
            status_code=500 if error else 200, status="error" if error else "ok", cost_usd=0.001,
        )  # fmt: skip

    stored: list[tuple[float, int]] = []  # (when, errors) of each batch of two openai records
    for minute in range(25):
        now = base + 60 * minute
        errors = 1 if 8 <= minute < 13 else 0
        batch = [record(now - 1, error=i < errors) for i in range(2)]
        store.insert_records([*batch, record(now - 1, provider="anthropic", error=True)])
        stored.append((now, errors))
        got = reader.totals(store, owner, now, 300)[()]
        if minute >= 5:  # a snapshot taken one window ago exists from here on
            inside = [e for t, e in stored if now - 300 < t <= now]
            assert got[REQUESTS] == 2 * len(inside) == 10, minute
            assert got[ERRORS] == sum(inside), minute
    store.close()

"""End-to-end: spend and traffic controls as a user of the gateway meets them.

Budgets (§C1, 402 before the provider is called, charged when each response ends, exact under
concurrency), the billing API (§A5: balance, ledger, adjustments; §A6 budgets and limits on keys,
users and orgs), rate limits (§C2, 429 with Retry-After and ``x-ratelimit-*``), and the circuit
breaker seen through failover, metrics and ``/api/v1/providers`` (§C3, §P6), with every refusal in
the calling API family's error shape (§P7) and recorded.

Prices: ``openai/sim-priced`` and ``anthropic/claude-sim-priced`` cost $1 per token, so budget
arithmetic is exact in binary floating point; the cost of one request is measured first."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from itertools import product
from typing import Any
from zoneinfo import ZoneInfo

import anthropic
import httpx
import openai
import pytest
from conftest import RunningGateway, Upstream
from prometheus_client.parser import text_string_to_metric_families

HI = [{"role": "user", "content": "hi"}]
ONE_DOLLAR_PER_TOKEN = {"input": 1_000_000, "output": 1_000_000}
PRICES = {
    "openai/sim-priced": ONE_DOLLAR_PER_TOKEN,
    "anthropic/claude-sim-priced": ONE_DOLLAR_PER_TOKEN,
}
MODEL = {"openai": "sim-priced", "anthropic": "claude-sim-priced"}
FAMILIES_AND_STREAMING = list(product(("openai", "anthropic"), (False, True)))
# Concurrency: how many requests past the cap a gateway with reservations may let through.
IN_FLIGHT_SLACK = 2

StartGateway = Callable[..., RunningGateway]
SDKError = openai.APIStatusError | anthropic.APIStatusError


# ---- helpers ----------------------------------------------------------------------------------


def oai(gw: RunningGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0, timeout=20)


def ant(gw: RunningGateway, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0, timeout=20)


def ask(
    gw: RunningGateway,
    key: str,
    family: str = "openai",
    stream: bool = False,
    model: str | None = None,
    **kw: Any,
) -> httpx.Headers:
    """One request through the official SDK, read to its end; the response headers."""
    model = model or MODEL[family]
    if family == "openai":
        client = oai(gw, key)
        if stream:
            s = client.chat.completions.create(model=model, messages=HI, stream=True, **kw)
            chunks = list(s)
            assert chunks
            return s.response.headers
        raw = client.chat.completions.with_raw_response.create(model=model, messages=HI, **kw)
        assert raw.parse().choices[0].message.content
        return raw.headers
    aclient = ant(gw, key)
    kw.setdefault("max_tokens", 100)
    if stream:
        st = aclient.messages.create(model=model, messages=HI, stream=True, **kw)
        events = [e.type for e in st]
        assert events[-1] == "message_stop"
        return st.response.headers
    araw = aclient.messages.with_raw_response.create(model=model, messages=HI, **kw)
    assert araw.parse().content
    return araw.headers


def refused(
    gw: RunningGateway,
    key: str,
    family: str = "openai",
    stream: bool = False,
    model: str | None = None,
    **kw: Any,
) -> SDKError:
    """A request the gateway must refuse; the SDK's exception (of that family's SDK)."""
    sdk_error = openai.APIStatusError if family == "openai" else anthropic.APIStatusError
    with pytest.raises(sdk_error) as info:
        ask(gw, key, family, stream, model, **kw)
    return info.value


def error_message(family: str, response: httpx.Response) -> str:
    """Check the body is the family's error shape (§P7); its message."""
    body = response.json()
    if family == "openai":
        assert set(body) == {"error"}, body
        err = body["error"]
        assert {"message", "type", "code"} <= set(err), body
        assert isinstance(err["type"], str) and err["type"]
    else:
        assert body["type"] == "error", body
        assert set(body["error"]) >= {"type", "message"}, body
        err = body["error"]
        assert isinstance(err["type"], str) and err["type"]
    assert isinstance(err["message"], str) and err["message"]
    return str(err["message"])


def metric(gw: RunningGateway, sample: str, **labels: str) -> float:
    text = httpx.get(f"{gw.url}/metrics", timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def sent_upstream(upstream: Upstream, model: str | None = None) -> int:
    return sum(
        1
        for r in list(upstream.received)
        if model is None or (isinstance(r["body"], dict) and r["body"].get("model") == model)
    )


def balance(gw: RunningGateway, key: str) -> dict[str, dict[str, Any]]:
    with gw.api(key) as c:
        r = c.get("/api/v1/billing/balance")
        assert r.status_code == 200, r.text
        return {b["scope"]: b for b in r.json()["budgets"]}


def transactions(gw: RunningGateway, key: str | None = None) -> list[dict[str, Any]]:
    gw.wait_records()
    with gw.api(key) as c:
        r = c.get("/api/v1/billing/transactions", params={"limit": 1000})
        assert r.status_code == 200, r.text
        return r.json()["results"]  # type: ignore[no-any-return]


def patch(gw: RunningGateway, path: str, **fields: Any) -> dict[str, Any]:
    with gw.api() as c:
        r = c.patch(path, json=fields)
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]


def cost_of_one(gw: RunningGateway, family: str = "openai", stream: bool = False) -> float:
    """What one priced request costs, measured with the (unlimited) admin key."""
    rid = ask(gw, gw.admin_key, family, stream)["x-gatewatch-request-id"]
    cost = gw.record(rid)["cost_usd"]
    assert cost and cost > 0
    return float(cost)


def parse_ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def month_bounds(now: datetime) -> tuple[datetime, datetime]:
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return start, (start + timedelta(days=32)).replace(day=1)


@contextmanager
def database_held(gw: RunningGateway) -> Iterator[threading.Event]:
    """Hold the record writer (a slow database, §S): records queue but are not stored until the
    block ends. Controls must not depend on records being stored (§C1)."""
    store = gw.gateway.store
    original = store.insert_prepared
    release = threading.Event()

    def slow_insert(batch: Any) -> None:
        release.wait(30)
        original(batch)

    store.insert_prepared = slow_insert  # type: ignore[method-assign]
    try:
        yield release
    finally:
        release.set()
        gw.wait_records()
        store.insert_prepared = original  # type: ignore[method-assign]


# ---- §C1 budgets: 402 before the provider ------------------------------------------------------


@pytest.mark.parametrize("scope", ["key", "user", "org"])
def test_exhausted_budget_is_refused_with_402_before_the_provider(
    start_gateway: StartGateway, upstream: Upstream, scope: str
) -> None:
    gw = start_gateway(prices=PRICES)
    org, user = f"acme-{scope}", f"ann-{scope}"
    own_budget = {"budget_usd": 30} if scope == "key" else {}
    spender = gw.create_key(name=f"spender-{scope}", user=user, org=org, **own_budget)
    if scope == "key":
        caller, scope_name = spender, spender["name"]
    elif scope == "user":  # another key of the same user
        patch(gw, f"/api/v1/users/{spender['user_id']}", budget_usd=30)
        caller, scope_name = gw.create_key(name="second", user=user, org=org), user
    else:  # another user of the same organization
        patch(gw, f"/api/v1/orgs/{spender['org_id']}", budget_usd=30)
        caller, scope_name = gw.create_key(name="colleague", user=f"bob-{scope}", org=org), org

    # Nothing spent yet: the first request goes through, and costs more than the whole cap.
    first = ask(gw, spender["key"])
    assert float(first["x-gatewatch-cost-usd"]) > 30

    rejections = metric(gw, "gatewatch_budget_rejections_total")
    calls_before = sent_upstream(upstream)
    ids = []
    for family, stream in FAMILIES_AND_STREAMING:
        exc = refused(gw, caller["key"], family, stream)
        assert exc.status_code == 402
        message = error_message(family, exc.response)
        body = exc.response.json()
        if family == "openai":
            assert body["error"]["code"] == "budget_exceeded"
        else:
            assert body["error"]["type"] == "billing_error"  # Anthropic's own 402 type
        # The message names the scope, the limit and when the budget resets.
        words = r"org|organi[sz]ation" if scope == "org" else scope
        assert re.search(rf"\b({words})\b", message, re.I), message
        assert scope_name in message, message
        assert re.search(r"\$30(\.0+)?\b", message), message
        _, next_month = month_bounds(datetime.now(UTC))
        assert "reset" in message.lower() and next_month.strftime("%Y-%m-%d") in message, message
        ids.append(exc.response.headers["x-gatewatch-request-id"])

    assert sent_upstream(upstream) == calls_before, "a refused request reached the provider"
    assert metric(gw, "gatewatch_budget_rejections_total") == rejections + 4
    for rid, (_family, stream) in zip(ids, FAMILIES_AND_STREAMING, strict=True):
        rec = gw.record(rid)
        assert (rec["status"], rec["status_code"], rec["error_type"]) == (
            "error", 402, "budget_exceeded",
        )  # fmt: skip
        assert rec["api_key_id"] == caller["id"]
        assert rec["stream"] is stream
        assert not rec["attempts"]
        assert rec["cost_usd"] in (None, 0)
    # The one who spent it is refused too (key: the same key; user/org: the shared cap).
    assert refused(gw, spender["key"]).status_code == 402


def test_spend_is_charged_when_each_response_ends_streams_included(
    start_gateway: StartGateway,
) -> None:
    gw = start_gateway(prices=PRICES)
    oai_cost = cost_of_one(gw, "openai")
    ant_cost = cost_of_one(gw, "anthropic", stream=True)
    plan = [("openai", True), ("anthropic", True), ("openai", False)]
    budget = 2 * oai_cost + ant_cost  # exactly these three requests
    key = gw.create_key(name="dora-key", user="dora", budget_usd=budget)

    # With the database held, nothing is stored: what is charged comes from the responses.
    with database_held(gw):
        spent = []
        ids = []
        for family, stream in plan:
            ids.append(ask(gw, key["key"], family, stream)["x-gatewatch-request-id"])
            spent.append(balance(gw, key["key"])["key"]["spent_usd"])
        assert spent == pytest.approx([oai_cost, oai_cost + ant_cost, budget], abs=1e-9)
        assert balance(gw, key["key"])["key"]["remaining_usd"] == pytest.approx(0, abs=1e-9)
        assert refused(gw, key["key"], "openai", stream=True).status_code == 402
        assert refused(gw, key["key"], "anthropic").status_code == 402
        assert gw.gateway.writer.pending >= 3, "expected the records to be still queued"

    costs = [gw.record(rid)["cost_usd"] for rid in ids]
    assert costs == pytest.approx([oai_cost, ant_cost, oai_cost], abs=1e-9)
    # After the records are stored the numbers are the same.
    assert balance(gw, key["key"])["key"]["spent_usd"] == pytest.approx(budget, abs=1e-9)


def test_concurrent_requests_overshoot_the_budget_by_at_most_what_is_in_flight(
    start_gateway: StartGateway,
) -> None:
    # Output tokens only are priced, $1 each; max_tokens = the simulator's output, so the
    # reservation a request makes equals exactly what it will cost.
    gw = start_gateway(prices={"openai/sim-priced-out": {"input": 0, "output": 1_000_000}})
    raw = oai(gw, gw.admin_key).chat.completions.with_raw_response.create(
        model="sim-priced-out", messages=HI
    )
    out_tokens = raw.parse().usage.completion_tokens  # type: ignore[union-attr]
    cost = float(raw.headers["x-gatewatch-cost-usd"])
    assert cost == out_tokens
    key = gw.create_key(name="eve-key", user="eve", budget_usd=10 * cost)

    client = oai(gw, key["key"])
    n = 50
    barrier = threading.Barrier(n)

    def one(_: int) -> int:
        barrier.wait(10)
        try:
            client.chat.completions.create(
                model="sim-priced-out", messages=HI, max_tokens=out_tokens
            )
        except openai.APIStatusError as exc:
            return exc.status_code
        return 200

    with ThreadPoolExecutor(n) as pool:
        codes = list(pool.map(one, range(n)))
    admitted = codes.count(200)
    assert codes.count(402) == n - admitted, codes
    assert 10 <= admitted <= 10 + IN_FLIGHT_SLACK, f"{admitted} admitted for a budget of 10"

    recs = [r for r in gw.records() if r["api_key_id"] == key["id"]]
    ok = [r for r in recs if r["status"] == "ok"]
    assert len(ok) == admitted and len(recs) == n
    spent = balance(gw, key["key"])["key"]["spent_usd"]
    assert sum(r["cost_usd"] for r in ok) == pytest.approx(spent, abs=1e-9)
    assert spent == pytest.approx(admitted * cost, abs=1e-9)
    # And from now on, nothing more.
    assert refused(gw, key["key"]).status_code == 402


# ---- §A5 balance -------------------------------------------------------------------------------


def test_balance_lists_key_user_and_org_budgets_of_this_month(start_gateway: StartGateway) -> None:
    gw = start_gateway(prices=PRICES)
    key = gw.create_key(name="fin-key", user="fay", org="finance", budget_usd=100)
    patch(gw, f"/api/v1/users/{key['user_id']}", budget_usd=200)
    patch(gw, f"/api/v1/orgs/{key['org_id']}", budget_usd=300)
    cost = float(ask(gw, key["key"])["x-gatewatch-cost-usd"])
    assert 0 < cost < 100

    budgets = balance(gw, key["key"])
    assert set(budgets) == {"key", "user", "org"}
    start, end = month_bounds(datetime.now(UTC))
    for scope, scope_id, limit in (
        ("key", key["id"], 100), ("user", key["user_id"], 200), ("org", key["org_id"], 300),
    ):  # fmt: skip
        b = budgets[scope]
        assert b["scope_id"] == scope_id
        assert b["period"] == "month"
        assert b["limit_usd"] == limit
        assert b["spent_usd"] == pytest.approx(cost, abs=1e-9)
        assert b["remaining_usd"] == pytest.approx(limit - cost, abs=1e-9)
        assert parse_ts(b["period_start"]) == start
        assert parse_ts(b["period_end"]) == end

    # Another key of the same user shares the user and org spend, not the key's.
    sibling = gw.create_key(name="fin-key-2", user="fay", org="finance")
    shared = balance(gw, sibling["key"])
    assert set(shared) == {"user", "org"}
    assert shared["user"]["spent_usd"] == pytest.approx(cost, abs=1e-9)


def test_balance_of_day_and_week_budgets(start_gateway: StartGateway) -> None:
    gw = start_gateway(prices=PRICES)
    key = gw.create_key(name="daily", user="gus", org="ops", budget_usd=50, budget_period="day")
    patch(gw, f"/api/v1/users/{key['user_id']}", budget_usd=70, budget_period="week")
    budgets = balance(gw, key["key"])
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    day = budgets["key"]
    assert day["period"] == "day"
    assert parse_ts(day["period_start"]) == today
    assert parse_ts(day["period_end"]) == today + timedelta(days=1)
    week = budgets["user"]
    monday = today - timedelta(days=today.weekday())
    assert week["period"] == "week"
    assert parse_ts(week["period_start"]) == monday
    assert parse_ts(week["period_end"]) == monday + timedelta(days=7)


def test_budget_periods_follow_the_configured_time_zone(start_gateway: StartGateway) -> None:
    gw = start_gateway(prices=PRICES, budgets={"timezone": "Europe/Paris"})
    key = gw.create_key(name="paris", user="hugo", budget_usd=1, budget_period="day")
    paris = ZoneInfo("Europe/Paris")
    midnight = datetime.now(paris).replace(hour=0, minute=0, second=0, microsecond=0)
    day = balance(gw, key["key"])["key"]
    assert parse_ts(day["period_start"]) == midnight
    assert parse_ts(day["period_end"]) == (midnight + timedelta(days=1, hours=2)).replace(hour=0)


# ---- §A5 ledger and adjustments ---------------------------------------------------------------


def test_ledger_charges_adjustments_and_reset(start_gateway: StartGateway) -> None:
    gw = start_gateway(prices=PRICES)
    cost = cost_of_one(gw)
    key = gw.create_key(name="gil-key", user="gil", org="acme", budget_usd=cost)  # one request
    rid = ask(gw, key["key"])["x-gatewatch-request-id"]
    assert refused(gw, key["key"]).status_code == 402

    ledger = transactions(gw, key["key"])
    charges = [t for t in ledger if t["type"] == "charge"]
    assert len(charges) == 1, ledger  # the refused request charges nothing
    assert charges[0]["request_id"] == rid
    assert charges[0]["amount_usd"] == pytest.approx(gw.record(rid)["cost_usd"], abs=1e-9)
    assert charges[0]["api_key_id"] == key["id"]

    adjustment = {"scope": "key", "scope_id": key["id"], "amount_usd": -0.5, "reason": "refund"}
    # A member key may not adjust budgets; an admin of another organization does not see the key.
    with gw.api(key["key"]) as member:
        r = member.post("/api/v1/billing/adjustments", json=adjustment)
        assert r.status_code == 403, r.text
    stranger = gw.create_key(name="globex-admin", user="olga", org="globex", role="admin")
    with gw.api(stranger["key"]) as other:
        r = other.post("/api/v1/billing/adjustments", json=adjustment)
        assert r.status_code == 404, r.text
    assert not [t for t in transactions(gw, stranger["key"]) if t["api_key_id"] == key["id"]]
    assert balance(gw, key["key"])["key"]["spent_usd"] == pytest.approx(cost, abs=1e-9)

    with gw.api() as admin:
        r = admin.post("/api/v1/billing/adjustments", json=adjustment)
        assert r.status_code == 201, r.text
    ledger = transactions(gw, key["key"])
    credits = [t for t in ledger if t["type"] == "adjustment"]
    assert len(credits) == 1, ledger
    assert credits[0]["amount_usd"] == -0.5 and credits[0]["reason"] == "refund"
    b = balance(gw, key["key"])["key"]
    assert b["spent_usd"] == pytest.approx(cost - 0.5, abs=1e-9)
    assert b["remaining_usd"] == pytest.approx(0.5, abs=1e-9)

    # The credit lets the 402'd key send again; then it is over the cap again.
    ask(gw, key["key"])
    assert refused(gw, key["key"], "anthropic").status_code == 402

    gw.wait_records()
    with gw.api() as admin:
        r = admin.post(
            "/api/v1/billing/adjustments",
            json={"scope": "key", "scope_id": key["id"], "reset": True, "reason": "new contract"},
        )
        assert r.status_code == 201, r.text
    b = balance(gw, key["key"])["key"]
    assert b["spent_usd"] == pytest.approx(0, abs=1e-9)
    assert b["remaining_usd"] == pytest.approx(cost, abs=1e-9)
    ask(gw, key["key"], "anthropic", stream=True)
    assert len([t for t in transactions(gw, key["key"]) if t["type"] == "charge"]) == 3


def test_a_credit_keeps_the_charges_of_records_not_yet_stored(start_gateway: StartGateway) -> None:
    """A manual adjustment while the database lags behind (records queued, §S) must not lose
    the spend of the requests whose records are still queued (§C1: charged when the response
    ends, not when the record is stored)."""
    gw = start_gateway(prices=PRICES)
    cost = cost_of_one(gw)
    key = gw.create_key(name="ida-key", user="ida", budget_usd=cost)
    with database_held(gw), gw.api() as admin:
        ask(gw, key["key"])
        assert balance(gw, key["key"])["key"]["spent_usd"] == pytest.approx(cost, abs=1e-9)
        r = admin.post(
            "/api/v1/billing/adjustments",
            json={"scope": "key", "scope_id": key["id"], "amount_usd": -0.5, "reason": "goodwill"},
        )
        assert r.status_code == 201, r.text
        assert balance(gw, key["key"])["key"]["spent_usd"] == pytest.approx(cost - 0.5, abs=1e-9)
        ask(gw, key["key"])  # the credit allows one more request …
        assert refused(gw, key["key"]).status_code == 402  # … and only one
    assert balance(gw, key["key"])["key"]["spent_usd"] == pytest.approx(2 * cost - 0.5, abs=1e-9)
    ledger = transactions(gw, key["key"])
    assert sum(t["amount_usd"] for t in ledger) == pytest.approx(2 * cost - 0.5, abs=1e-9)


def test_a_reset_with_records_not_yet_stored_brings_spend_to_zero(
    start_gateway: StartGateway,
) -> None:
    gw = start_gateway(prices=PRICES)
    cost = cost_of_one(gw)
    key = gw.create_key(name="jan-key", user="jan", budget_usd=cost)
    with database_held(gw), gw.api() as admin:
        ask(gw, key["key"])
        r = admin.post(
            "/api/v1/billing/adjustments",
            json={"scope": "key", "scope_id": key["id"], "reset": True, "reason": "new month"},
        )
        assert r.status_code == 201, r.text
    # Once the queued record is stored, the period's spend is still zero, in the balance and in
    # the durable ledger (charge + reset adjustment).
    assert balance(gw, key["key"])["key"]["spent_usd"] == pytest.approx(0, abs=1e-9)
    ledger = transactions(gw, key["key"])
    assert sum(t["amount_usd"] for t in ledger) == pytest.approx(0, abs=1e-9), ledger
    ask(gw, key["key"])


# ---- §C2 rate limits ---------------------------------------------------------------------------


def test_requests_per_minute_limit_answers_429_with_retry_after(
    start_gateway: StartGateway, upstream: Upstream
) -> None:
    gw = start_gateway(prices=PRICES)
    key = gw.create_key(name="kai-key", user="kai", rpm=3)
    remaining = []
    for _ in range(3):
        h = ask(gw, key["key"])
        assert h["x-ratelimit-limit-requests"] == "3"
        remaining.append(int(h["x-ratelimit-remaining-requests"]))
    assert remaining == [2, 1, 0]

    limited = metric(gw, "gatewatch_rate_limited_total")
    calls_before = sent_upstream(upstream)
    ids = []
    for family, stream, sdk_class in (
        ("openai", False, openai.RateLimitError),
        ("openai", True, openai.RateLimitError),
        ("anthropic", False, anthropic.RateLimitError),
        ("anthropic", True, anthropic.RateLimitError),
    ):
        exc = refused(gw, key["key"], family, stream)
        assert isinstance(exc, sdk_class)
        assert exc.status_code == 429
        h = exc.response.headers
        assert 1 <= int(h["retry-after"]) <= 60
        assert h["x-ratelimit-limit-requests"] == "3"
        assert h["x-ratelimit-remaining-requests"] == "0"
        assert "x-ratelimit-reset-requests" in h
        message = error_message(family, exc.response)
        assert "3" in message and "minute" in message, message
        body = exc.response.json()
        if family == "openai":
            assert body["error"]["code"] == "rate_limit_exceeded"
        else:
            assert body["error"]["type"] == "rate_limit_error"
        ids.append(h["x-gatewatch-request-id"])
    assert sent_upstream(upstream) == calls_before
    assert metric(gw, "gatewatch_rate_limited_total") == limited + 4
    for rid in ids:
        rec = gw.record(rid)
        assert (rec["status"], rec["status_code"], rec["error_type"]) == (
            "error", 429, "rate_limit_exceeded",
        )  # fmt: skip
    # Another key is not limited by this one's allowance.
    ask(gw, gw.create_key(name="lea-key", user="lea", rpm=3)["key"])


def test_tokens_per_minute_limit_counts_the_tokens_actually_used(
    start_gateway: StartGateway, upstream: Upstream
) -> None:
    # Short model names keep the request bodies (the admission estimate) small.
    gw = start_gateway(models={"m": ["openai/gpt-4o-mini"], "c": ["anthropic/claude-haiku-4-5"]})
    key = gw.create_key(name="max-key", user="max", tpm=30)
    client = oai(gw, key["key"])
    first = client.chat.completions.with_raw_response.create(model="m", messages=HI)
    used = first.parse().usage.total_tokens  # type: ignore[union-attr]
    assert used > 30  # the request's estimate (its small body) fit; what it used does not
    assert first.headers["x-ratelimit-limit-tokens"] == "30"

    calls_before = sent_upstream(upstream)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="m", messages=HI)
    h = info.value.response.headers
    assert int(h["retry-after"]) >= 1
    assert h["x-ratelimit-limit-tokens"] == "30"
    assert "token" in error_message("openai", info.value.response)
    with pytest.raises(anthropic.RateLimitError):  # the key's limit, whatever the model
        ant(gw, key["key"]).messages.create(model="c", max_tokens=5, messages=HI)
    assert sent_upstream(upstream) == calls_before
    recs = [r for r in gw.records() if r["api_key_id"] == key["id"]]
    assert sorted(r["status_code"] for r in recs) == [200, 429, 429]


def test_model_limits_apply_to_each_key_on_that_model_only(start_gateway: StartGateway) -> None:
    gw = start_gateway(model_limits={"gpt-4o-mini": {"rpm": 2}})
    a = gw.create_key(name="nia-key", user="nia")
    b = gw.create_key(name="oto-key", user="oto")
    limited = metric(gw, "gatewatch_rate_limited_total")
    for _ in range(2):
        ask(gw, a["key"], model="gpt-4o-mini")
    exc = refused(gw, a["key"], model="gpt-4o-mini")
    assert isinstance(exc, openai.RateLimitError)
    assert int(exc.response.headers["retry-after"]) >= 1
    assert "gpt-4o-mini" in error_message("openai", exc.response)
    for _ in range(3):  # another model is not limited
        ask(gw, a["key"], model="gpt-4o")
    for _ in range(2):  # each key has its own allowance on the model
        ask(gw, b["key"], model="gpt-4o-mini")
    assert refused(gw, b["key"], model="gpt-4o-mini", stream=True).status_code == 429
    assert metric(gw, "gatewatch_rate_limited_total") == limited + 2
    codes = sorted(r["status_code"] for r in gw.records() if r["api_key_id"] in (a["id"], b["id"]))
    assert codes == [200] * 7 + [429] * 2


# ---- §C3 circuit breaker ----------------------------------------------------------------------


def attempts_of(gw: RunningGateway, headers: httpx.Headers) -> list[tuple[str, str | None]]:
    rec = gw.record(headers["x-gatewatch-request-id"])
    return [(a["model"], a["reason"]) for a in rec["attempts"]]


def test_circuit_breaker_skips_a_failing_target_then_tries_it_again(
    start_gateway: StartGateway, upstream: Upstream
) -> None:
    broken = "gpt-4o-error-500"
    gw = start_gateway(
        models={"smart": [f"openai/{broken}", "openai/gpt-4o-mini"]},
        circuit_breaker={"failure_threshold": 2, "cooldown": 3},
    )
    key = gw.create_key(name="pia-key", user="pia")["key"]

    for _ in range(2):  # both targets tried, failover answers
        h = ask(gw, key, model="smart")
        assert h["x-gatewatch-attempts"] == "2"
        assert attempts_of(gw, h) == [(broken, "upstream_5xx"), ("gpt-4o-mini", "ok")]

    opened = time.monotonic()
    broken_calls = sent_upstream(upstream, broken)
    h = ask(gw, key, model="smart")
    assert attempts_of(gw, h) == [(broken, "circuit_open"), ("gpt-4o-mini", "ok")]
    h = ask(gw, key, model="smart", stream=True)
    assert attempts_of(gw, h)[0] == (broken, "circuit_open")
    assert sent_upstream(upstream, broken) == broken_calls, "an open target was called"

    assert metric(gw, "gatewatch_circuit_state", provider="openai", model=broken) == 2
    assert metric(gw, "gatewatch_circuit_state", provider="openai", model="gpt-4o-mini") == 0
    with gw.api(key) as c:
        r = c.get("/api/v1/providers")
        assert r.status_code == 200, r.text
        targets = {t["target"]: t for t in r.json()["targets"]}
    bad = targets[f"openai/{broken}"]
    assert bad["state"] == "open"
    assert bad["error_rate"] == 1.0
    assert bad["consecutive_failures"] == 2
    good = targets["openai/gpt-4o-mini"]
    assert good["state"] == "closed" and good["error_rate"] == 0.0

    # After the cooldown one trial goes to the broken target again; it fails, so it reopens.
    time.sleep(max(0.0, 3.1 - (time.monotonic() - opened)))
    h = ask(gw, key, model="smart")
    assert attempts_of(gw, h) == [(broken, "upstream_5xx"), ("gpt-4o-mini", "ok")]
    assert sent_upstream(upstream, broken) == broken_calls + 1
    h = ask(gw, key, model="smart")
    assert attempts_of(gw, h)[0] == (broken, "circuit_open")
    assert sent_upstream(upstream, broken) == broken_calls + 1
    assert metric(gw, "gatewatch_circuit_state", provider="openai", model=broken) == 2


@pytest.mark.parametrize("family", ["openai", "anthropic"])
def test_all_targets_open_answers_503_with_retry_after(
    start_gateway: StartGateway, upstream: Upstream, family: str
) -> None:
    broken = "gpt-4o-error-500" if family == "openai" else "claude-error-500"
    provider = "openai" if family == "openai" else "anthropic"
    gw = start_gateway(
        models={"only": [f"{provider}/{broken}"]},
        circuit_breaker={"failure_threshold": 1, "cooldown": 5},
    )
    key = gw.create_key(name="quin-key", user="quin")["key"]

    first = refused(gw, key, family, model="only")
    assert first.status_code == 500  # the provider's own failure, relayed

    calls = sent_upstream(upstream, broken)
    for stream in (False, True):
        exc = refused(gw, key, family, stream, model="only")
        assert exc.status_code == 503
        assert 1 <= int(exc.response.headers["retry-after"]) <= 5
        message = error_message(family, exc.response)
        assert "only" in message, message
        rec = gw.record(exc.response.headers["x-gatewatch-request-id"])
        assert (rec["status"], rec["status_code"]) == ("error", 503)
        assert [(a["model"], a["reason"]) for a in rec["attempts"]] == [(broken, "circuit_open")]
    assert sent_upstream(upstream, broken) == calls
    assert metric(gw, "gatewatch_circuit_state", provider=provider, model=broken) == 2

"""The spend ledger (§A5): one charge per priced request and the adjustments, with the running
total of the scope's budget period on each row."""

from __future__ import annotations

import openai
import pytest


def test_ledger_running_total_per_period(start_gateway) -> None:
    gw = start_gateway(prices={"openai/sim-ledger": {"input": 1.0, "output": 2.0}})
    key = gw.create_key(user="lea", org="ledger", budget_usd=10, budget_period="day")
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key["key"], max_retries=0)
    costs = []
    for words in ("one", "one two", "one two three"):
        raw = client.chat.completions.with_raw_response.create(
            model="sim-ledger", messages=[{"role": "user", "content": words}]
        )
        costs.append(float(raw.headers["x-gatewatch-cost-usd"]))
    gw.wait_records()
    with gw.api() as admin:
        adj = admin.post(
            "/api/v1/billing/adjustments",
            json={"scope": "key", "scope_id": key["id"], "amount_usd": -0.000001, "reason": "x"},
        )
        assert adj.status_code == 201, adj.text
        ledger = admin.get(
            "/api/v1/billing/transactions", params={"scope": "key", "scope_id": key["id"]}
        ).json()["results"]
    assert [r["type"] for r in ledger] == ["adjustment", "charge", "charge", "charge"]
    assert [r["amount_usd"] for r in ledger[1:]] == pytest.approx(costs[::-1], abs=1e-12)
    # newest first: each row's running total is everything charged in the day up to it
    expected = sum(costs) - 0.000001
    for row in ledger:
        assert row["period"] == "day"
        assert row["period_total_usd"] == pytest.approx(expected, abs=1e-9)
        expected -= row["amount_usd"]
    with gw.api(key["key"]) as mine:
        balance = mine.get("/api/v1/billing/balance").json()["budgets"]
    (budget,) = balance
    assert budget["spent_usd"] == pytest.approx(sum(costs) - 0.000001, abs=1e-9)
    assert budget["remaining_usd"] == pytest.approx(10 - budget["spent_usd"], abs=1e-9)

"""A real Prometheus server scrapes the gateway (§O1) while known traffic goes through it; the
counters it stored must match the traffic, and every PromQL expression of the Grafana dashboard
(§O3, deploy/grafana/gatewatch.json) must return data from it.

Needs Debian's ``prometheus`` package (``make test`` installs it). Without it the test is skipped
with the reason, except in CI (``CI=true``), where it fails."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import RunningGateway, free_port
from test_metrics import EXPECTED_STATUSES, PRICES, Sent, send_traffic

DASHBOARD = Path(__file__).parent.parent / "deploy" / "grafana" / "gatewatch.json"
TOKEN = "prometheus-scrape-token-42"
# What Grafana puts in for its own variables when it runs a panel's query.
GRAFANA_BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}
SPEC_METRICS = (
    "gatewatch_requests_total",
    "gatewatch_request_duration_seconds",
    "gatewatch_ttft_seconds",
    "gatewatch_overhead_seconds",
    "gatewatch_tokens_total",
    "gatewatch_cost_usd_total",
    "gatewatch_inflight_requests",
    "gatewatch_budget_rejections_total",
    "gatewatch_rate_limited_total",
    "gatewatch_records_pending",
    "gatewatch_records_dropped_total",
)


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", (expr, body)
        return body["data"]["result"]  # type: ignore[no-any-return]

    def value(self, expr: str) -> float:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else math.nan

    def by(self, expr: str, label: str) -> dict[str, float]:
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(expr)}

    def label_values(self, label: str, match: str) -> list[str]:
        r = httpx.get(
            f"{self.url}/api/v1/label/{label}/values", params={"match[]": match}, timeout=10
        )
        assert r.status_code == 200, r.text
        return r.json()["data"]  # type: ignore[no-any-return]

    def wait_for(self, check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, f"Prometheus: {what} within {timeout}s"
            time.sleep(0.25)


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Callable[[RunningGateway], Prometheus]]:
    exe = shutil.which("prometheus")
    if exe is None:
        reason = "Debian's prometheus package is not installed (`make test` installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    procs: list[subprocess.Popen[bytes]] = []

    def start(gw: RunningGateway) -> Prometheus:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: gatewatch\n"
            "    scrape_interval: 1s\n"
            "    scrape_timeout: 1s\n"
            f"    authorization: {{type: Bearer, credentials: {TOKEN}}}\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{gw.server.port}']}}]\n"
        )
        log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(
            [exe, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        procs.append(proc)
        prom = Prometheus(f"http://127.0.0.1:{port}")

        def ready() -> bool:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
            try:
                return httpx.get(f"{prom.url}/-/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        prom.wait_for(ready, "ready")
        prom.wait_for(lambda: prom.value('up{job="gatewatch"}') == 1, "scraping the gateway")
        return prom

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel, rows' inner panels included."""
    out = []
    panels = list(dashboard["panels"])
    while panels:
        panel = panels.pop(0)
        panels.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    return out


def _substitute(expr: str, variables: set[str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name in GRAFANA_BUILTINS:
            return GRAFANA_BUILTINS[name]
        assert name in variables, f"unknown variable ${name} in {expr}"
        return ".*"  # the "All" value of every template variable (allValue)

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, expr)


def test_dashboard_is_an_importable_grafana_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "gatewatch" and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 30
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("provider", "model", "org"):
        v = variables[name]
        assert v["type"] == "query" and v["includeAll"] and v["allValue"] == ".*"
        assert v["query"]["query"].startswith("label_values(")
    ids = []
    for panel in dashboard["panels"]:
        ids.append(panel["id"])
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"] and panel["description"]
    assert len(ids) == len(set(ids))
    text = " ".join(expr for _, expr in _expressions(dashboard))
    for metric in SPEC_METRICS:
        assert metric in text, f"no panel shows {metric}"


def test_prometheus_scrapes_the_gateway_and_every_dashboard_query_returns_data(
    start_gateway: Callable[..., RunningGateway],
    prometheus_for: Callable[[RunningGateway], Prometheus],
) -> None:
    gw = start_gateway(prices=PRICES, metrics={"token": TOKEN})
    prom = prometheus_for(gw)

    # Two rounds of traffic with a scrape between them, as in steady operation: rates over the
    # last minute then see the second round's increase of every series the first one created.
    sent = Sent()
    for round_ in ("one", "two"):
        sent += send_traffic(gw, round_)
        gw.wait_records()
        n = sum(sent.statuses.values())
        prom.wait_for(lambda n=n: prom.value("sum(gatewatch_requests_total)") == n, "the counts")
    assert sent.statuses == Counter({k: 2 * v for k, v in EXPECTED_STATUSES.items()})

    # The counters Prometheus stored match the traffic sent.
    by_status = prom.by("sum by (status_code) (gatewatch_requests_total)", "status_code")
    assert {int(k): v for k, v in by_status.items()} == sent.statuses
    n = sum(sent.statuses.values())
    assert prom.value("sum(gatewatch_request_duration_seconds_count)") == n
    assert prom.value("sum(gatewatch_overhead_seconds_count)") == n
    assert prom.value("sum(gatewatch_ttft_seconds_count)") == sent.streams
    assert prom.value('sum(gatewatch_budget_rejections_total{org="acme"})') == 2
    assert prom.value('sum(gatewatch_rate_limited_total{kind="requests"})') == 2
    assert prom.value("sum(gatewatch_budget_warnings_total)") == sent.budget_warnings
    assert prom.value("sum(gatewatch_records_dropped_total)") == 0
    records = gw.records()
    for kind in ("input", "output"):
        want = sum(r[f"{kind}_tokens"] or 0 for r in records)
        assert prom.value(f'sum(gatewatch_tokens_total{{type="{kind}"}})') == want
    want_cost = sum(r["cost_usd"] or 0 for r in records)
    assert prom.value("sum(gatewatch_cost_usd_total)") == pytest.approx(want_cost, rel=1e-6)

    # The dashboard's template variables find their values.
    dashboard = json.loads(DASHBOARD.read_text())
    assert {"openai", "anthropic"} <= set(prom.label_values("provider", "gatewatch_requests_total"))
    assert "acme" in prom.label_values("org", "gatewatch_requests_total")
    assert "gpt-4o-mini-2024-07-18" in prom.label_values("model", "gatewatch_requests_total")

    # Every PromQL expression of every panel returns data (a number, not only NaN).
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    empty = []
    for title, expr in _expressions(dashboard):
        result = prom.query(_substitute(expr, variables))
        values = [float(r["value"][1]) for r in result]
        if not any(math.isfinite(v) for v in values):
            empty.append(f"{title}: {expr} → {result}")
    assert not empty, "\n".join(empty)

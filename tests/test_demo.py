"""``gatewatch demo`` as a new user meets it: started as a subprocess, its banner read, and the
questions of a first look answered through the API (and the dashboard) of the running demo —
which model cost the most this week, which user spent the most, when errors spiked, and what the
failing request said."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import free_port

GATEWATCH = str(Path(sys.executable).with_name("gatewatch"))
CHROMIUM = "/usr/bin/chromium"


@dataclass
class Demo:
    url: str
    key: str
    banner: str
    spike_start: datetime  # as the banner names it
    spike_end: datetime
    week_start: str  # the start of "the last 7 days" when the demo was up

    def get(self, path: str, **params: Any) -> Any:
        r = httpx.get(
            f"{self.url}{path}",
            params=params,
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    port = free_port()
    db = tmp_path_factory.mktemp("demo") / "demo.db"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GATEWATCH_") and k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")
    }
    env.update(TZ="UTC", PYTHONUNBUFFERED="1")  # TZ: the banner's times are the machine's
    proc = subprocess.Popen(
        [GATEWATCH, "demo", "--port", str(port), "--requests", "40",
         "--database", f"sqlite:///{db}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    errors: list[str] = []
    threading.Thread(target=lambda: errors.extend(proc.stderr), daemon=True).start()  # type: ignore[arg-type]
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if "Ctrl-C stops the demo" in line:
                break
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(90), "the demo did not print its banner in 90 s:\n" + "".join(lines)
        banner = "".join(lines)
        key = re.search(r"admin key \(owner\): (gw-demo-\S+)", banner)
        assert key, banner + "".join(errors)
        assert f"in the dashboard: http://127.0.0.1:{port}/ui" in banner, banner
        m = re.search(
            r"a week of history is loaded: look for the error spike on \w{3} "
            r"(\d{4}-\d{2}-\d{2}) (\d{2}:\d{2})-(\d{2}:\d{2}) UTC",
            banner,
        )
        assert m, banner
        day, start, end = m.groups()
        week_start = datetime.now(UTC) - timedelta(days=7)
        yield Demo(
            url=f"http://127.0.0.1:{port}",
            key=key.group(1),
            banner=banner,
            spike_start=datetime.fromisoformat(f"{day}T{start}:00+00:00"),
            spike_end=datetime.fromisoformat(f"{day}T{end}:00+00:00"),
            week_start=week_start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert "Traceback" not in "".join(errors), "".join(errors)


def _board(demo: Demo, dimension: str) -> list[dict[str, Any]]:
    answer = demo.get(
        "/api/v1/usage/top", dimension=dimension, metric="cost_usd", start=demo.week_start
    )
    return answer["results"]  # type: ignore[no-any-return]


def test_banner_says_what_was_loaded(demo: Demo) -> None:
    m = re.search(r"([\d,]+) records of the last 7 days stored in ([\d.]+) s", demo.banner)
    assert m, demo.banner
    assert 5_000 <= int(m.group(1).replace(",", "")) <= 20_000
    # the whole week is there, in the rollups the dashboard reads, with a daily rhythm
    usage = demo.get("/api/v1/usage", bucket="hour", start=demo.week_start)
    assert usage["source"] == "rollups"
    assert usage["totals"]["requests"] >= 5_000
    points = usage["series"][0]["points"]
    days = {p["bucket"][:10] for p in points if p["requests"]}
    assert len(days) >= 7, days
    by_hour = [0] * 24
    for p in points:
        by_hour[int(p["bucket"][11:13])] += p["requests"]
    working, small_hours = sum(by_hour[9:17]) / 8, sum(by_hour[4:6]) / 2
    assert working > 3 * small_hours, by_hour


def test_one_model_clearly_cost_the_most_this_week(demo: Demo) -> None:
    models = _board(demo, "model")
    first, second = models[0], models[1]
    assert first["model"] == "claude-sonnet-4-5"
    assert first["cost_usd"] > 2 * second["cost_usd"], models[:3]
    assert first["share"] > 0.5
    providers = {row["model"] for row in models}
    assert {"gpt-4o-2024-07-18", "claude-haiku-4-5", "text-embedding-3-small"} <= providers


def test_one_user_clearly_spent_the_most_this_week(demo: Demo) -> None:
    users = _board(demo, "user")
    assert [u["user"] for u in users[:1]] == ["alice"]
    assert users[0]["cost_usd"] > 2 * users[1]["cost_usd"], users[:3]
    assert len(users) == 8
    # clients and workflows are there to be broken down by
    assert {c["client"] for c in _board(demo, "client")} >= {"claude-code", "codex", "cursor"}
    assert {w["workflow"] for w in _board(demo, "workflow")} >= {"coding", "support-bot"}


def test_errors_spike_in_the_hour_the_banner_names(demo: Demo) -> None:
    usage = demo.get("/api/v1/usage", bucket="hour", start=demo.week_start)
    points = usage["series"][0]["points"]
    worst = max(points, key=lambda p: p["errors"])
    spike_hour = demo.spike_start.replace(minute=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert worst["bucket"] == spike_hour
    others = [p for p in points if p["bucket"] != spike_hour]
    assert worst["errors"] >= 3 * max(p["errors"] for p in others), worst
    rate = worst["errors"] / worst["requests"]
    busy = [p["errors"] / p["requests"] for p in others if p["requests"] >= 20]
    assert rate > 0.3 and rate > 5 * max(busy), (rate, max(busy))


def test_a_failing_request_from_the_spike_says_what_went_wrong(demo: Demo) -> None:
    window = {
        "started_after": demo.spike_start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "started_before": demo.spike_end.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    failed = demo.get("/api/v1/requests", status="error", limit=200, **window)
    assert failed["count"] >= 50
    upstream = [r for r in failed["results"] if r["error_type"] != "circuit_open"]
    assert upstream and {r["provider"] for r in upstream} == {"openai"}
    detail = demo.get(f"/api/v1/requests/{upstream[0]['id']}")
    assert detail["status_code"] in (500, 503)
    assert "The server" in detail["error_message"]
    assert detail["last_user_prompt"]
    sent = str(detail["request_body"])
    assert detail["last_user_prompt"] in sent
    assert detail["response_body"]["error"]["message"] == detail["error_message"]
    assert detail["attempts"][-1]["reason"] == "upstream_5xx"

    # the circuit breaker opened, and the `smart` alias failed over to openai-eu
    assert any(r["error_type"] == "circuit_open" for r in failed["results"])
    saved = demo.get("/api/v1/requests", model="smart", provider="openai-eu", **window)
    assert saved["count"] >= 1
    rescued = demo.get(f"/api/v1/requests/{saved['results'][0]['id']}")
    assert rescued["status"] == "ok"
    assert [a["provider"] for a in rescued["attempts"]] == ["openai", "openai-eu"]
    assert rescued["attempts"][0]["reason"] in ("upstream_5xx", "circuit_open")


# ---- in the browser ---------------------------------------------------------------------------


def test_overview_shows_the_winners_and_the_spike(demo: Demo) -> None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - the test extra installs it
        sync_playwright = None  # type: ignore[assignment]
    if sync_playwright is None or not Path(CHROMIUM).exists():
        if os.environ.get("CI") == "true":
            pytest.fail("the dashboard test needs playwright and chromium in CI")
        pytest.skip("playwright or chromium is missing")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM)
        ctx = browser.new_context(viewport={"width": 1280, "height": 860}, timezone_id="UTC")
        page = ctx.new_page()
        page.goto(f"{demo.url}/ui")
        page.fill("#key", demo.key)
        page.click("button[type=submit]")
        page.wait_for_url(lambda url: "/ui/login" not in url)
        page.wait_for_function("() => document.body.dataset.loaded")
        # requests and errors per day: the spike's day has by far the most errors
        chart = page.evaluate("document.getElementById('chart-requests').chartData")
        errors = next(s for s in chart["series"] if s["name"] == "errors")["values"]
        worst = max(range(len(errors)), key=lambda i: errors[i])
        assert chart["labels"][worst].startswith(demo.spike_start.strftime("%Y-%m-%d"))
        assert errors[worst] > 2 * max(v for i, v in enumerate(errors) if i != worst), errors
        # the leaderboards: alice on top of the users, claude-sonnet-4-5 of the models
        page.locator("#leaderboard").scroll_into_view_if_needed()
        page.wait_for_function(
            "() => document.body.dataset.boards === document.body.dataset.loaded"
        )
        users = page.locator("#leaderboard tbody tr td:nth-child(2) a").all_inner_texts()
        assert users[0] == "alice"
        models = page.locator("#top-models tbody tr td:first-child a").all_inner_texts()
        assert models[0] == "claude-sonnet-4-5"
        browser.close()

"""The dashboard (/ui) in a real headless Chromium: sign in, known traffic through the proxy,
and what the pages show checked against the records the API lists.

Chromium is Debian's ``chromium`` (``make test`` installs it), driven by Playwright. Without it
these tests skip locally and fail in CI (``CI=true``). Screenshots of the pages, light and dark,
land in ``.artifacts/ui/``."""

from __future__ import annotations

import csv
import io
import os
import re
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from conftest import RunningGateway, ServerThread, Upstream, gateway_settings

from gatewatch.app import Gateway
from gatewatch.settings import Settings
from gatewatch.ui.session import SessionSigner

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / ".artifacts" / "ui"

try:
    from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright
except ImportError:  # pragma: no cover - the test extra installs it
    sync_playwright = None  # type: ignore[assignment]


# ---- the browser ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    missing = (
        "playwright is not installed"
        if sync_playwright is None
        else f"{CHROMIUM} not found (apt-get install chromium)"
        if not Path(CHROMIUM).exists()
        else None
    )
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"dashboard tests need a browser in CI: {missing}")
        pytest.skip(missing)
    pw = sync_playwright().start()
    b = pw.chromium.launch(executable_path=CHROMIUM)
    yield b
    b.close()
    pw.stop()


# ---- a gateway with known traffic ----------------------------------------------------------


@dataclass
class Traffic:
    gw: RunningGateway
    keys: dict[str, dict[str, Any]]  # user → created key (with its secret in "key")
    records: list[dict[str, Any]]  # every record, as the owner's API lists them

    def secret(self, user: str) -> str:
        return str(self.keys[user]["key"])

    def org_id(self, name: str) -> str:
        return next(r["org_id"] for r in self.keys.values() if r["org"] == name)

    def of(self, **match: Any) -> list[dict[str, Any]]:
        return [r for r in self.records if all(r.get(k) == v for k, v in match.items())]


def _send(gw: RunningGateway, keys: dict[str, dict[str, Any]]) -> None:
    def oa(user: str, **headers: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=keys[user]["key"],
                             default_headers=headers, max_retries=0)  # fmt: skip

    alice = oa("alice", **{"x-gatewatch-workflow": "review", "x-gatewatch-tags": "prod"})
    for i in range(3):
        alice.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": f"Review change number {i}"}]
        )
    claude = anthropic.Anthropic(base_url=gw.url, api_key=keys["alice"]["key"], max_retries=0)
    with claude.messages.stream(
        model="claude-sonnet-4-5", max_tokens=200,
        messages=[{"role": "user", "content": "Write a haiku about gateways"}],
    ) as stream:  # fmt: skip
        stream.get_final_message()

    bob = oa("bob", **{"x-gatewatch-workflow": "chat"})
    bob.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hello to the team"}]
    )
    bob.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "What's the weather in Paris tomorrow?"}],
        tools=[{"type": "function", "function": {
            "name": "get_weather", "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
    )  # fmt: skip
    chunks = bob.chat.completions.create(
        model="gpt-4o-mini", stream=True,
        messages=[{"role": "user", "content": "Stream me a short story about lighthouses"}],
    )  # fmt: skip
    for _ in chunks:
        pass
    with pytest.raises(openai.InternalServerError):
        bob.chat.completions.create(
            model="gpt-4o-mini-error-500",
            messages=[{"role": "user", "content": "This one is going to fail badly"}],
        )

    dave = oa("dave", **{"x-gatewatch-workflow": "triage"})
    for _ in range(2):
        dave.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Triage this ticket"}]
        )


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Traffic]:
    gateway = Gateway(gateway_settings(tmp_path_factory.mktemp("ui"), upstream.url))
    gw = RunningGateway(ServerThread(gateway).start(), gateway)
    keys = {
        "alice": gw.create_key(user="alice", org="acme", role="admin"),
        "bob": gw.create_key(user="bob", org="acme", role="member"),
        "dave": gw.create_key(user="dave", org="globex", role="member"),
    }
    _send(gw, keys)
    records = gw.records()
    assert len(records) == 10
    yield Traffic(gw, keys, records)
    gw.server.stop()


# ---- helpers ---------------------------------------------------------------------------------


def _context(browser: Browser) -> BrowserContext:
    return browser.new_context(
        viewport={"width": 1280, "height": 860}, color_scheme="light", timezone_id="UTC",
        accept_downloads=True,
    )  # fmt: skip


def _sign_in(ctx: BrowserContext, gw: RunningGateway, key: str, path: str = "/ui") -> Page:
    page = ctx.new_page()
    page.goto(gw.url + path)
    assert "/ui/login" in page.url
    page.fill("#key", key)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/ui/login" not in url)
    return page


def _loaded(page: Page, after: str | None = None) -> str:
    """Wait until the page's data has been drawn (after a reload: a newer generation)."""
    page.wait_for_function(
        "prev => document.body.dataset.loaded && document.body.dataset.loaded !== prev",
        arg=after or "",
    )
    return str(page.evaluate("document.body.dataset.loaded"))


def _boards(page: Page) -> None:
    """Scroll to the overview's leaderboards (asked for when they come near the screen) and
    wait until they are drawn."""
    page.locator("#leaderboard").scroll_into_view_if_needed()
    page.wait_for_function("() => document.body.dataset.boards === document.body.dataset.loaded")


def _shot(page: Page, name: str) -> None:
    """Screenshots of the page as it is, light and dark, for a person to look at."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    if page.locator("#leaderboard").count():
        _boards(page)
    page.mouse.move(0, 0)
    page.evaluate("window.scrollTo(0, 0)")
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        page.screenshot(path=str(ARTIFACTS / f"{name}-{scheme}.png"), full_page=True)
    page.emulate_media(color_scheme="light")


def _kpi(page: Page, name: str) -> tuple[str, float]:
    card = page.locator(f'[data-kpi="{name}"]')
    return card.locator(".kpi-value").inner_text(), float(card.get_attribute("data-value") or 0)


def _cost(records: list[dict[str, Any]]) -> float:
    return sum(r["cost_usd"] or 0.0 for r in records)


def _spend_by(records: list[dict[str, Any]], field: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for r in records:
        out[r[field] or r.get(f"{field}_requested") or "(none)"] += r["cost_usd"] or 0.0
    return out


# ---- sign-in and sessions --------------------------------------------------------------------


def test_sign_in_keeps_the_key_out_of_the_browser(browser: Browser, traffic: Traffic) -> None:
    gw = traffic.gw
    ctx = _context(browser)
    page = ctx.new_page()
    page.goto(gw.url + "/ui/requests?model=gpt-4o")
    assert page.url.startswith(gw.url + "/ui/login")
    page.fill("#key", "gw-not-a-real-key")
    page.click("button[type=submit]")
    assert page.locator(".error-box").inner_text() == "Unknown or revoked gateway key."
    page.fill("#key", gw.admin_key)
    page.click("button[type=submit]")
    page.wait_for_url(gw.url + "/ui/requests?model=gpt-4o")  # back where the user was going

    (cookie,) = [c for c in ctx.cookies() if c["name"] == "gatewatch_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert gw.admin_key not in cookie["value"]
    assert page.evaluate("document.cookie") == ""  # scripts cannot read the session
    stored = page.evaluate("JSON.stringify([localStorage, sessionStorage])")
    assert gw.admin_key not in stored and "gw-" not in stored
    html = page.content()
    assert gw.admin_key not in html
    ctx.close()


def test_changes_made_with_the_cookie_need_the_csrf_token(
    browser: Browser, traffic: Traffic
) -> None:
    gw = traffic.gw
    ctx = _context(browser)
    page = _sign_in(ctx, gw, gw.admin_key)
    _loaded(page)
    api = page.request  # shares the browser's cookies
    assert api.get(gw.url + "/api/v1/me").json()["role"] == "owner"
    body = {"user": "csrf-probe", "org": "acme"}
    refused = api.post(gw.url + "/api/v1/keys", data=body)
    assert refused.status == 403 and "x-gatewatch-csrf" in refused.json()["error"]["message"]
    token = page.get_attribute('meta[name="gw-csrf"]', "content")
    wrong = api.post(gw.url + "/api/v1/keys", data=body, headers={"x-gatewatch-csrf": "nope"})
    assert wrong.status == 403
    made = api.post(gw.url + "/api/v1/keys", data=body, headers={"x-gatewatch-csrf": token or ""})
    assert made.status == 201
    revoked = api.delete(
        f"{gw.url}/api/v1/keys/{made.json()['id']}", headers={"x-gatewatch-csrf": token or ""}
    )
    assert revoked.status == 200
    ctx.close()


def test_sign_in_form_refuses_a_post_from_elsewhere(traffic: Traffic) -> None:
    gw = traffic.gw
    with httpx.Client(base_url=gw.url) as c:
        # no pre-session cookie and token: what a cross-site form would send
        r = c.post("/ui/login", data={"key": gw.admin_key, "next": "/ui"})
        assert r.status_code == 400 and "gatewatch_session" not in r.cookies
        form = c.get("/ui/login")
        token = form.text.split('name="csrf" value="')[1].split('"')[0]
        evil = c.post(
            "/ui/login",
            data={"key": gw.admin_key, "csrf": token},
            headers={"Origin": "https://evil.example"},
        )
        assert evil.status_code == 400
        form = c.get("/ui/login")  # each form shown has its own token
        token = form.text.split('name="csrf" value="')[1].split('"')[0]
        ok = c.post("/ui/login", data={"key": gw.admin_key, "csrf": token, "next": "//evil"})
        assert ok.status_code == 303 and ok.headers["location"] == "/ui"  # not another site
        assert c.get("/api/v1/me").json()["role"] == "owner"  # the cookie works on the API


def test_sessions_are_signed_and_expire() -> None:
    signer = SessionSigner.from_settings(
        Settings.model_validate({"admin_key": "gw-" + "k" * 40, "database": "sqlite:///x.db"})
    )
    cookie, session = signer.issue("ab" * 32, now=1000.0)
    assert signer.read(cookie, now=1001.0) == session
    assert signer.read(cookie, now=1000.0 + signer.seconds) is None  # expired
    payload, sig = cookie.split(".")
    assert signer.read(f"{payload}.{sig[:-2]}AA", now=1001.0) is None  # tampered
    other = SessionSigner.from_settings(
        Settings.model_validate(
            {"admin_key": "gw-" + "k" * 40, "session_secret": "s3cret", "database": "sqlite:///x"}
        )
    )
    assert other.read(cookie, now=1001.0) is None  # another secret: another signature
    again = SessionSigner.from_settings(
        Settings.model_validate({"admin_key": "gw-" + "k" * 40, "database": "sqlite:///y.db"})
    )
    assert again.read(cookie, now=1001.0) == session  # same config (another worker, a restart)


def test_sign_out(browser: Browser, traffic: Traffic) -> None:
    gw = traffic.gw
    ctx = _context(browser)
    page = _sign_in(ctx, gw, gw.admin_key)
    _loaded(page)
    page.click("#sign-out")
    page.wait_for_url(gw.url + "/ui/login")
    assert not [c for c in ctx.cookies() if c["name"] == "gatewatch_session"]
    page.goto(gw.url + "/ui/requests")
    assert "/ui/login" in page.url
    assert page.request.get(gw.url + "/api/v1/me").status == 401
    ctx.close()


# ---- overview --------------------------------------------------------------------------------


def test_overview_shows_exactly_the_traffic(browser: Browser, traffic: Traffic) -> None:
    gw, records = traffic.gw, traffic.records
    ctx = _context(browser)
    seen: list[str] = []
    ctx.on("request", lambda req: seen.append(req.url))
    page = _sign_in(ctx, gw, gw.admin_key)
    _loaded(page)

    text, value = _kpi(page, "requests")
    assert (text, value) == (str(len(records)), len(records))
    text, value = _kpi(page, "cost")
    assert value == pytest.approx(_cost(records), abs=1e-8)
    assert re.fullmatch(r"\$\d[\d,]*\.\d+", text), text
    errors = [r for r in records if r["status"] == "error"]
    assert _kpi(page, "error_rate")[1] == pytest.approx(len(errors) / len(records))
    tokens = sum((r["input_tokens"] or 0) + (r["output_tokens"] or 0) for r in records)
    assert _kpi(page, "tokens") == (f"{tokens:,} tokens", tokens)

    # charts: requests and errors over time, spend stacked by model
    chart = page.evaluate("document.getElementById('chart-requests').chartData")
    ok, failed = (sum(s["values"]) for s in chart["series"])
    assert (ok, failed) == (len(records) - len(errors), len(errors))
    spend = page.evaluate("document.getElementById('chart-spend').chartData")
    got = {s["name"]: sum(s["values"]) for s in spend["series"]}
    want = _spend_by(records, "model")
    assert got.keys() == want.keys()
    for model, usd in want.items():
        assert got[model] == pytest.approx(usd, abs=1e-8)

    # leaderboard: users by spend, most first
    _boards(page)
    by_user = _spend_by(records, "user")
    board = page.locator("#leaderboard tbody tr td:nth-child(2) a").all_inner_texts()
    assert board == sorted(by_user, key=lambda u: -by_user[u])
    _shot(page, "overview")

    # hovering a bar shows its values
    overlay = page.locator("#chart-requests .overlay")
    box = overlay.bounding_box()
    assert box is not None
    overlay.hover(position={"x": box["width"] - 3, "y": box["height"] / 2})  # the last bucket
    tip = page.locator("#tooltip")
    assert tip.is_visible() and "errors" in tip.inner_text()

    # everything came from the gateway itself: nothing from the internet
    assert seen and all(url.startswith(gw.url) for url in seen), seen
    ctx.close()


def test_the_errors_bar_leads_to_what_the_failing_request_said(
    browser: Browser, traffic: Traffic
) -> None:
    gw = traffic.gw
    ctx = _context(browser)
    page = _sign_in(ctx, gw, gw.admin_key, "/ui?range=24h")
    _loaded(page)
    red = page.locator('#chart-requests rect[fill="#e15759"]')
    assert red.count() == 1  # one bucket with failures
    box = red.bounding_box()
    assert box is not None
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_url("**/ui/requests?**status=error**")
    _loaded(page)
    (failed,) = traffic.of(status="error")
    rows = page.locator("#log tbody tr")
    assert rows.count() == 1 and rows.first.get_attribute("data-id") == failed["id"]
    rows.first.click()
    page.wait_for_url(f"**/ui/requests/{failed['id']}")
    _loaded(page)
    assert "This one is going to fail badly" in page.locator("#prompt").inner_text()
    ctx.close()


def test_org_switcher_scopes_everything(browser: Browser, traffic: Traffic) -> None:
    gw = traffic.gw
    ctx = _context(browser)
    page = _sign_in(ctx, gw, gw.admin_key)
    _loaded(page)
    page.select_option("#org-switch", label="globex")
    page.wait_for_url(lambda url: "org=" in url)
    _loaded(page)
    globex = traffic.of(org="globex")
    assert _kpi(page, "requests")[1] == len(globex) == 2
    assert _kpi(page, "cost")[1] == pytest.approx(_cost(globex), abs=1e-8)
    _boards(page)
    assert page.locator("#leaderboard tbody tr td:nth-child(2) a").all_inner_texts() == ["dave"]

    page.click("nav >> text=Requests")  # the choice follows the navigation
    page.wait_for_url("**/ui/requests?**")
    _loaded(page)
    assert f"org={traffic.org_id('globex')}" in page.url
    users = set(page.locator("#log tbody tr td:nth-child(2)").all_inner_texts())
    assert users == {"dave"}
    assert page.locator("#log-count").inner_text().startswith("2 requests")
    ctx.close()


# ---- request log and detail ------------------------------------------------------------------


def test_request_log_filters_and_detail(browser: Browser, traffic: Traffic) -> None:
    gw = traffic.gw
    ctx = _context(browser)
    page = _sign_in(ctx, gw, gw.admin_key, "/ui/requests")
    gen = _loaded(page)
    assert page.locator("#log tbody tr").count() == len(traffic.records)
    failed_rows = page.locator("#log tbody tr.row-error")
    assert failed_rows.count() == len(traffic.of(status="error")) == 1
    assert "500" in failed_rows.locator(".badge").inner_text()
    _shot(page, "requests")

    page.select_option("select[name=initiator]", label="bob")
    gen = _loaded(page, gen)
    bobs = traffic.of(user="bob")
    ids = page.locator("#log tbody tr").evaluate_all("rows => rows.map(r => r.dataset.id)")
    assert ids == [r["id"] for r in bobs]  # newest first, exactly bob's
    assert "initiator=" in page.url

    # the tool call: prompt, tool name and arguments, attempts, attribution, raw JSON
    tool = next(r for r in bobs if r["tool_calls"])
    page.click(f'#log tbody tr[data-id="{tool["id"]}"] a')
    page.wait_for_url(f"**/ui/requests/{tool['id']}")
    _loaded(page)
    prompt = page.locator("#prompt").inner_text()
    assert "What's the weather in Paris tomorrow?" in prompt and "get_weather" in prompt
    answer = page.locator("#response").inner_text()
    assert "get_weather" in answer and '"city": "Paris"' in answer
    assert "openai/gpt-4o-mini" in page.locator("#attempts").inner_text()
    assert "chat" in page.locator("#attribution").inner_text()  # the workflow
    page.click("summary")
    assert tool["id"] in page.locator("#raw-json").inner_text()
    _shot(page, "detail")

    # a streamed answer, reassembled
    streamed = next(r for r in bobs if r["stream"] and r["status"] == "ok")
    page.goto(f"{gw.url}/ui/requests/{streamed['id']}")
    _loaded(page)
    stored = traffic.gw.record(streamed["id"])["response_body"]
    text = stored["choices"][0]["message"]["content"]
    assert text and text in page.locator("#response").inner_text()

    # the failed request: what it said and why it failed
    failed = traffic.of(status="error")[0]
    page.goto(f"{gw.url}/ui/requests/{failed['id']}")
    _loaded(page)
    assert "This one is going to fail badly" in page.locator("#prompt").inner_text()
    assert "500" in page.locator("#response .msg.error").inner_text()
    _shot(page, "detail-error")
    ctx.close()


def test_paging_older_and_newer(browser: Browser, traffic: Traffic) -> None:
    gw = traffic.gw
    ctx = _context(browser)
    page = _sign_in(ctx, gw, gw.admin_key)
    page.goto(gw.url + "/ui/requests")
    _loaded(page)
    assert page.locator("#page-older").is_disabled()  # 10 records: one page of 50
    ids = [r["id"] for r in traffic.records]
    # the cursor of a later page, as "Older" on a smaller page would have put it in the URL
    page.goto(f"{gw.url}/ui/requests?after_id={ids[4]}&prev=0")
    gen = _loaded(page)
    shown = page.locator("#log tbody tr").evaluate_all("rows => rows.map(r => r.dataset.id)")
    assert shown == ids[5:]
    page.click("#page-newer")
    gen = _loaded(page, gen)
    shown = page.locator("#log tbody tr").evaluate_all("rows => rows.map(r => r.dataset.id)")
    assert shown == ids and "after_id" not in page.url
    ctx.close()


def test_csv_download_matches_the_filter(browser: Browser, traffic: Traffic) -> None:
    gw = traffic.gw
    ctx = _context(browser)
    page = _sign_in(ctx, gw, gw.admin_key, "/ui/requests?workflow=review&status=ok")
    _loaded(page)
    with page.expect_download() as info:
        page.click("#csv-link")
    rows = list(csv.DictReader(io.StringIO(Path(info.value.path()).read_text())))
    want = traffic.of(workflow="review", status="ok")
    assert [r["id"] for r in rows] == [r["id"] for r in want] and len(want) == 3
    shown = page.locator("#log tbody tr").evaluate_all("rows => rows.map(r => r.dataset.id)")
    assert shown == [r["id"] for r in want]
    ctx.close()


# ---- roles -----------------------------------------------------------------------------------


def test_member_sees_only_its_own(browser: Browser, traffic: Traffic) -> None:
    gw = traffic.gw
    ctx = _context(browser)
    page = _sign_in(ctx, gw, traffic.secret("bob"), "/ui/requests")
    _loaded(page)
    users = set(page.locator("#log tbody tr td:nth-child(2)").all_inner_texts())
    assert users == {"bob"}
    assert page.locator("#org-switch").count() == 0  # no switcher: its own org only
    assert page.locator("nav >> text=Keys").count() == 0

    alices = traffic.of(user="alice")[0]["id"]
    resp = page.goto(f"{gw.url}/ui/requests/{alices}")
    assert resp is not None and resp.status == 404
    assert "Request not found" in page.inner_text("h1")
    assert page.request.get(f"{gw.url}/api/v1/requests/{alices}").status == 404
    resp = page.goto(f"{gw.url}/ui/keys")
    assert resp is not None and resp.status == 403

    page.goto(gw.url + "/ui")
    _loaded(page)
    assert _kpi(page, "requests")[1] == len(traffic.of(user="bob"))
    ctx.close()


def test_keys_page_creates_budgets_and_revokes(browser: Browser, traffic: Traffic) -> None:
    gw = traffic.gw
    ctx = _context(browser)
    page = _sign_in(ctx, gw, traffic.secret("alice"), "/ui/keys")  # an admin of acme
    gen = _loaded(page)
    names = set(page.locator("#keys-table tbody tr strong").all_inner_texts())
    assert names == {"alice", "bob"}  # its organization's keys only

    page.fill("#create-key [name=user]", "carol")
    page.fill("#create-key [name=budget_usd]", "0.5")
    page.click("#create-key button[type=submit]")
    page.wait_for_selector("#new-secret:not([hidden])")
    secret = page.inner_text("#new-secret-value")
    assert secret.startswith("gw-")
    gen = _loaded(page, gen)
    row = page.locator('#keys-table tbody tr:has(strong:text-is("carol"))')
    assert "$0.00 / $0.50 per month" in row.locator(".budget").inner_text()

    # the new key works at once; its spend fills the bar
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=secret, max_retries=0)
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    gw.wait_records()
    page.reload()
    gen = _loaded(page)
    spent = gw.records(initiator="carol")[0]["cost_usd"]
    assert spent > 0
    row = page.locator('#keys-table tbody tr:has(strong:text-is("carol"))')
    shown = page.evaluate(f"GW.money({spent})")
    assert f"{shown} / $0.50" in row.locator(".budget").inner_text()

    # limits and revocation
    row.locator("text=Limits…").click()
    page.fill("#limits-form [name=rpm]", "30")
    page.click("#limits-save")
    gen = _loaded(page, gen)
    assert row.locator("td:nth-child(6)").inner_text() == "30"
    page.once("dialog", lambda d: d.accept())
    row.locator("text=Revoke").click()
    _loaded(page, gen)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    ctx.close()


def test_alerts_page_says_alerts_are_not_configured(browser: Browser, traffic: Traffic) -> None:
    gw = traffic.gw
    ctx = _context(browser)
    page = _sign_in(ctx, gw, gw.admin_key, "/ui/alerts")
    _loaded(page)
    assert "Alerts are not configured" in page.inner_text("#alerts")
    ctx.close()


def test_alert_history_shows_a_firing(browser: Browser, start_gateway: Any) -> None:
    rule = {"name": "key-budget-50", "type": "budget", "scope": "key", "threshold": 0.5}
    gw = start_gateway(alerts={"interval": "0.2s", "rules": [rule]})
    key = gw.create_key(user="erin", org="acme", budget_usd=0.000001)
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key["key"], max_retries=0)
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    ctx = _context(browser)
    page = _sign_in(ctx, gw, gw.admin_key, "/ui/alerts")
    _loaded(page)
    deadline = time.monotonic() + 15
    while "key-budget-50" not in page.inner_text("#alerts") and time.monotonic() < deadline:
        page.reload()
        _loaded(page)
    row = page.locator("#alerts-table tbody tr").first
    assert "key-budget-50" in row.inner_text() and "firing" in row.inner_text()
    assert "erin" in row.inner_text()  # the subject: the key
    assert "key-budget-50" in page.inner_text("#rules-table")
    _shot(page, "alerts")
    ctx.close()


def test_empty_overview_says_what_to_do(browser: Browser, start_gateway: Any) -> None:
    gw = start_gateway()
    ctx = _context(browser)
    page = _sign_in(ctx, gw, gw.admin_key)
    _loaded(page)
    empty = page.locator("#overview-empty")
    assert empty.is_visible() and "Send a request through the gateway" in empty.inner_text()
    assert _kpi(page, "requests")[0] == "0"
    _shot(page, "overview-empty")
    page.goto(gw.url + "/ui/requests")
    _loaded(page)
    assert page.locator("#log-empty").is_visible()
    ctx.close()

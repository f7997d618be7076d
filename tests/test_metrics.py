"""``GET /metrics`` (§O1) as a Prometheus server and an operator see it: every named metric, the
labels, counters that match the traffic sent (and the request records), ``metrics.token``, the
opt-in user and key labels, and the sum over the workers of ``gatewatch serve --workers 2``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest
from conftest import ADMIN_KEY, RunningGateway, Upstream, free_port
from prometheus_client.parser import text_string_to_metric_families

from gatewatch.metrics import Metrics
from gatewatch.records import Record

StartGateway = Callable[..., RunningGateway]
HI = [{"role": "user", "content": "hi"}]
PRICES = {"openai/sim-priced": {"input": 1.0, "output": 2.0}}
NAMED_IN_SPEC = (
    "gatewatch_requests_total",
    "gatewatch_request_duration_seconds_bucket",
    "gatewatch_ttft_seconds_bucket",
    "gatewatch_overhead_seconds_bucket",
    "gatewatch_tokens_total",
    "gatewatch_cost_usd_total",
    "gatewatch_inflight_requests",
    "gatewatch_budget_rejections_total",
    "gatewatch_rate_limited_total",
    "gatewatch_records_pending",
    "gatewatch_records_dropped_total",
)


# ---- traffic of known shape (also sent by test_prometheus.py) ---------------------------------


@dataclass
class Sent:
    """What was sent: per status code, and the streams among the answered requests."""

    statuses: Counter[int] = field(default_factory=Counter)
    streams: int = 0
    budget_rejections: int = 0
    budget_warnings: int = 0
    rate_limited: int = 0

    def __iadd__(self, other: Sent) -> Sent:
        self.statuses += other.statuses
        self.streams += other.streams
        self.budget_rejections += other.budget_rejections
        self.budget_warnings += other.budget_warnings
        self.rate_limited += other.rate_limited
        return self


def _status(call: Callable[[], Any]) -> int:
    try:
        call()
    except (openai.APIStatusError, anthropic.APIStatusError) as exc:
        return exc.status_code
    return 200


def send_traffic(gw: RunningGateway, tag: str) -> Sent:
    """Successes (blocking and streamed, both API families, two organizations), a provider error
    (500), an unknown gateway key (401), a budget refusal (402, after a request past the soft
    limit) and a rate-limit refusal (429), all through the official SDKs."""
    sent = Sent()
    alice = gw.create_key(name=f"alice-{tag}", user="alice", org="acme")["key"]
    oai = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=alice, max_retries=0, timeout=20)
    ant = anthropic.Anthropic(base_url=gw.url, api_key=alice, max_retries=0, timeout=20)

    def chat(client: openai.OpenAI, model: str, stream: bool = False) -> None:
        if stream:
            assert list(client.chat.completions.create(model=model, messages=HI, stream=True))
        else:
            client.chat.completions.create(model=model, messages=HI)  # type: ignore[arg-type]

    for _ in range(3):
        sent.statuses[_status(lambda: chat(oai, "gpt-4o-mini"))] += 1
    for _ in range(2):
        sent.statuses[_status(lambda: chat(oai, "gpt-4o-mini", stream=True))] += 1
        sent.streams += 1
    sent.statuses[
        _status(lambda: ant.messages.create(model="claude-haiku-4-5", max_tokens=50, messages=HI))  # type: ignore[arg-type]
    ] += 1
    admin = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=ADMIN_KEY, max_retries=0, timeout=20)
    sent.statuses[_status(lambda: chat(admin, "sim-priced"))] += 1  # org "default"
    sent.statuses[_status(lambda: chat(oai, "gpt-error-500"))] += 1
    nobody = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="gw-unknown", max_retries=0)
    sent.statuses[_status(lambda: chat(nobody, "gpt-4o-mini"))] += 1

    # A budget of 1.2 requests: the first passes, the second passes past the 80 % soft limit,
    # the third is refused with 402.
    cost = gw.record(
        admin.chat.completions.with_raw_response.create(
            model="sim-priced",
            messages=HI,  # type: ignore[arg-type]
        ).headers["x-gatewatch-request-id"]
    )["cost_usd"]
    sent.statuses[200] += 1
    bob = gw.create_key(name=f"bob-{tag}", user="bob", org="acme", budget_usd=1.2 * cost)["key"]
    bob_client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=bob, max_retries=0, timeout=20)
    for _ in range(3):
        sent.statuses[_status(lambda: chat(bob_client, "sim-priced"))] += 1
    sent.budget_warnings += 1
    sent.budget_rejections += 1

    carol = gw.create_key(name=f"carol-{tag}", user="carol", org="acme", rpm=1)["key"]
    carol_client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=carol, max_retries=0)
    for _ in range(2):
        sent.statuses[_status(lambda: chat(carol_client, "gpt-4o-mini"))] += 1
    sent.rate_limited += 1
    return sent


EXPECTED_STATUSES = Counter({200: 11, 500: 1, 401: 1, 402: 1, 429: 1})


# ---- reading /metrics -------------------------------------------------------------------------


Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(url: str, token: str | None = None) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = httpx.get(f"{url}/metrics", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def total(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    return sum(
        v for lab, v in samples.get(name, []) if all(lab.get(k) == w for k, w in labels.items())
    )


# ---- tests ------------------------------------------------------------------------------------


def test_counters_match_the_traffic_and_the_records(start_gateway: StartGateway) -> None:
    gw = start_gateway(prices=PRICES)
    sent = send_traffic(gw, "a")
    assert sent.statuses == EXPECTED_STATUSES
    records = gw.records()
    m = scrape(gw.url)

    for name in NAMED_IN_SPEC:
        assert name in m, f"{name} is missing from /metrics"
    # Per status code, exactly what was sent; per full label set, exactly the records.
    by_status = Counter[int]()
    for labels, v in m["gatewatch_requests_total"]:
        by_status[int(labels["status_code"])] += int(v)
    assert by_status == sent.statuses
    expected: Counter[tuple[str, ...]] = Counter(
        (
            r["provider"] or "",
            r["model"] or r["model_requested"] or "",
            str(r["status_code"]),
            r["endpoint"],
            "true" if r["stream"] else "false",
            r["org"] or "",
        )
        for r in records
    )
    seen: Counter[tuple[str, ...]] = Counter()
    for labels, v in m["gatewatch_requests_total"]:
        assert set(labels) == {"provider", "model", "status_code", "endpoint", "stream", "org"}
        key = tuple(labels[k] for k in ("provider", "model", "status_code", "endpoint"))
        seen[(*key, labels["stream"], labels["org"])] += int(v)
    assert seen == expected
    assert ("", "", "401", "/v1/chat/completions", "false", "") in seen  # unknown key: no org
    assert (
        "openai",
        "gpt-4o-mini-2024-07-18",
        "200",
        "/v1/chat/completions",
        "true",
        "acme",
    ) in seen
    assert ("anthropic", "claude-haiku-4-5", "200", "/v1/messages", "false", "acme") in seen
    assert ("", "sim-priced", "402", "/v1/chat/completions", "false", "acme") in seen

    # Tokens and cost per provider and model are the sums of the records.
    for r in records:
        assert r["input_tokens"] is None or r["input_tokens"] >= 0
    for provider, model in {(r["provider"], r["model"]) for r in records if r["input_tokens"]}:
        mine = [r for r in records if (r["provider"], r["model"]) == (provider, model)]
        for kind in ("input", "output"):
            want = sum(r[f"{kind}_tokens"] or 0 for r in mine)
            got = total(m, "gatewatch_tokens_total", provider=provider, model=model, type=kind)
            assert got == want, (provider, model, kind)
        want_cost = sum(r["cost_usd"] or 0 for r in mine)
        got_cost = total(m, "gatewatch_cost_usd_total", provider=provider, model=model)
        assert got_cost == pytest.approx(want_cost, rel=1e-9, abs=1e-12)
    assert total(m, "gatewatch_cost_usd_total", model="sim-priced", org="acme") > 0

    # Histograms: one duration and overhead observation per request, one TTFT per stream.
    assert total(m, "gatewatch_request_duration_seconds_count") == sum(sent.statuses.values())
    assert total(m, "gatewatch_overhead_seconds_count") == sum(sent.statuses.values())
    assert total(m, "gatewatch_ttft_seconds_count") == sent.streams
    assert total(m, "gatewatch_ttft_seconds_count", model="gpt-4o-mini-2024-07-18") == 2
    les = {lab["le"] for lab, _ in m["gatewatch_overhead_seconds_bucket"]}
    assert "5e-05" in les  # the overhead histogram starts at 50 µs
    les = {lab["le"] for lab, _ in m["gatewatch_request_duration_seconds_bucket"]}
    assert {"300.0", "600.0"} <= les  # and request durations go to minutes

    # Refusals, by scope and organization.
    assert total(m, "gatewatch_budget_rejections_total", scope="key", org="acme") == 1
    assert total(m, "gatewatch_rate_limited_total", scope="key", kind="requests", org="acme") == 1
    assert total(m, "gatewatch_budget_warnings_total", scope="key") == sent.budget_warnings
    # Nothing in flight, nothing pending, nothing dropped.
    assert total(m, "gatewatch_inflight_requests") == 0
    assert total(m, "gatewatch_records_pending") == 0
    assert total(m, "gatewatch_records_dropped_total") == 0
    # No user or key labels unless asked for.
    assert all("user" not in lab and "key" not in lab for lab, _ in m["gatewatch_tokens_total"])


def test_user_and_key_labels_only_when_configured(start_gateway: StartGateway) -> None:
    gw = start_gateway(metrics={"per_user": True, "per_key": True, "org": False})
    key = gw.create_key(name="dana-laptop", user="dana", org="acme")["key"]
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=HI)  # type: ignore[arg-type]
    m = scrape(gw.url)
    (labels, value), *_ = [
        (lab, v) for lab, v in m["gatewatch_requests_total"] if lab.get("user") == "dana"
    ]
    assert value == 1 and labels["key"] == "dana-laptop" and "org" not in labels
    assert total(m, "gatewatch_tokens_total", user="dana", key="dana-laptop", type="input") > 0
    assert total(m, "gatewatch_cost_usd_total", user="dana") > 0


def test_metrics_token_guards_the_endpoint(start_gateway: StartGateway) -> None:
    gw = start_gateway(metrics={"token": "scrape-secret-123"})
    assert httpx.get(f"{gw.url}/metrics").status_code == 401
    wrong = httpx.get(f"{gw.url}/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"].startswith("Bearer")
    assert "gatewatch_" not in wrong.text
    assert "gatewatch_inflight_requests" in scrape(gw.url, token="scrape-secret-123")
    # the proxy and the API are not affected
    assert httpx.get(f"{gw.url}/healthz").status_code == 200


def test_model_names_from_clients_cannot_grow_the_series_without_bound() -> None:
    metrics = Metrics(max_series=50)
    for i in range(500):
        rec = Record(id=str(i), started=0.0, endpoint="/v1/chat/completions")
        rec.provider, rec.model_requested, rec.status_code, rec.org = "openai", f"m{i}", 404, "acme"
        metrics.observe_request(rec, 0.01, 0.001)
    samples = [
        s
        for f in metrics.registry.collect()
        if f.name == "gatewatch_requests"
        for s in f.samples
        if s.name.endswith("_total")
    ]
    assert len(samples) == 51
    assert sum(s.value for s in samples) == 500
    assert [s.value for s in samples if s.labels["model"] == "other"] == [450]
    assert {s.labels["org"] for s in samples} == {"acme"}


# ---- several workers ---------------------------------------------------------------------------


def _metrics_dir(pid: int) -> Path:
    """The directory ``gatewatch serve --workers N`` (pid) gave its workers."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for child in children:
        with open(f"/proc/{child}/environ", "rb") as f:
            for item in f.read().split(b"\0"):
                if item.startswith(b"GATEWATCH_METRICS_DIR="):
                    return Path(item.split(b"=", 1)[1].decode())
    raise AssertionError("no worker has GATEWATCH_METRICS_DIR")


def _served_per_worker(directory: Path) -> dict[int, float]:
    out = {}
    for path in directory.glob("*.json"):
        for name, _kind, _, _, samples in orjson.loads(path.read_bytes()):
            if name == "gatewatch_requests":
                out[int(path.stem)] = sum(v for s, _, v in samples if s.endswith("_total"))
    return out


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_two_workers_report_the_sum_of_their_counters(tmp_path: Path, upstream: Upstream) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = tmp_path / "gatewatch.yaml"
    config.write_text(
        f"admin_key: {ADMIN_KEY}\n"
        f"database: sqlite:///{tmp_path / 'gw.db'}\n"
        "providers:\n"
        f"  - {{name: openai, type: openai, base_url: '{upstream.url}/v1', api_key: sk-x}}\n"
    )
    exe = Path(sys.executable).with_name("gatewatch")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWATCH_")}
    proc = subprocess.Popen(
        [str(exe), "serve", "--config", str(config), "--port", str(port), "--workers", "2"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.1)
        directory = _metrics_dir(proc.pid)
        body = {"model": "gpt-4o-mini", "messages": HI}

        def call(_: int) -> int:  # a fresh connection each time: the workers share them
            r = httpx.post(
                f"{base}/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                timeout=10,
            )
            return r.status_code

        sent = 0
        with ThreadPoolExecutor(8) as pool:
            while True:  # until both workers have served some (almost always the first batch)
                codes = list(pool.map(call, range(40)))
                assert codes == [200] * 40
                sent += 40
                scrape(base)  # the workers write their snapshots for a scrape
                served = _served_per_worker(directory)
                if len([n for n in served.values() if n > 0]) >= 2 or sent >= 400:
                    break
        assert len([n for n in served.values() if n > 0]) == 2, served

        def totals() -> list[float]:  # several scrapes: each reaches either worker
            return [total(scrape(base), "gatewatch_requests_total") for _ in range(6)]

        deadline = time.monotonic() + 10
        while totals() != [sent] * 6:
            assert time.monotonic() < deadline, (totals(), sent)
            time.sleep(0.3)
        m = scrape(base)
        assert total(m, "gatewatch_request_duration_seconds_count") == sent
        assert total(m, "gatewatch_tokens_total", type="input") > 0
        assert total(m, "gatewatch_inflight_requests") == 0
        assert total(m, "gatewatch_records_pending") == 0  # gauges of live workers, summed
        assert total(m, "gatewatch_records_dropped_total") == 0

        # A worker that dies keeps its counts: the totals never go back.
        victim = max(served, key=lambda pid: served[pid])
        # every worker writes its snapshot when it sees a scrape; on a loaded machine its poll
        # may lag the scrapes above, so give it a moment and scrape again before killing one
        time.sleep(1.0)
        assert totals() == [sent] * 6
        time.sleep(0.5)
        os.kill(victim, signal.SIGKILL)
        time.sleep(1)
        assert totals() == [sent] * 6
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    assert not directory.exists()  # the shared directory goes with the gateway

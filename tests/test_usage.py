"""Usage analytics (§A4): time series, leaderboards and facets, checked against totals computed
independently from the seeded records."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import openai
import pytest
from conftest import RunningGateway

from gatewatch.records import Record, new_id
from gatewatch.store.rollups import CUBOIDS, NS, RELATIVE_ERROR, sum_hist

DAY = 86400
# 2026-10-30 00:00 UTC: five days that include the end of US daylight saving (Nov 1)
T0 = int(datetime(2026, 10, 30, tzinfo=UTC).timestamp())
MODELS = ["gpt-4o-mini", "gpt-4.1", "claude-haiku-4-5", "o3"]


def _exact_percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered) - 1e-9)) - 1]


def _close(got: float | None, want: float) -> bool:
    return got is not None and abs(got - want) <= want * RELATIVE_ERROR + 0.6


class Seeded:
    def __init__(self, gw: RunningGateway, users: dict[str, dict[str, Any]]) -> None:
        self.gw, self.users, self.records = gw, users, []  # type: ignore[var-annotated]

    def api(self, path: str, key: str | None = None, **params: Any) -> httpx.Response:
        with self.gw.api(key) as c:
            return c.get(path, params=params)

    def usage(self, key: str | None = None, **params: Any) -> dict[str, Any]:
        r = self.api("/api/v1/usage", key, **params)
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]


def _seed(gw: RunningGateway, n: int = 3000, seed: int = 7) -> Seeded:
    users = {
        name: gw.create_key(user=name, org="acme", role="member") for name in ("ann", "bob", "cy")
    }
    rnd = random.Random(seed)
    records: list[Record] = []
    for i in range(n):
        t = T0 + rnd.random() * 5 * DAY
        who = users[rnd.choices(["ann", "bob", "cy"], weights=[6, 3, 1])[0]]
        model = rnd.choices(MODELS, weights=[5, 3, 2, 1])[0]
        status = rnd.choices(["ok", "error", "client_closed"], weights=[90, 7, 3])[0]
        r = Record(
            id=new_id(t), started=t, endpoint="/v1/chat/completions",
            org_id=who["org_id"], org="acme", user_id=who["user_id"], user=who["user"],
            api_key_id=who["id"], api_key_name=who["name"],
            provider="anthropic" if model.startswith("claude") else "openai",
            model_requested=model, model=None if status == "error" else model + "-2026",
            status=status, status_code={"ok": 200, "error": 502, "client_closed": 499}[status],
            input_tokens=rnd.randrange(10, 2000), output_tokens=rnd.randrange(1, 800),
            cache_read_tokens=rnd.choice([0, 0, 128]), reasoning_tokens=64 if model == "o3" else 0,
            cost_usd=None if model == "o3" else round(rnd.random() / 100, 9),
            ttft_ms=rnd.lognormvariate(5.5, 0.6) if i % 2 else None,
            client=rnd.choice(["claude-code", "codex", None]),
            workflow=rnd.choice(["triage", "summarise"]),
            end_user=rnd.choice(["e1", "e2", None]),
            tags=rnd.sample(["batch", "prod", "eval"], rnd.randrange(0, 3)),
            session=f"s{i % 7}",
        )  # fmt: skip
        r.ended = t + rnd.lognormvariate(6.5, 0.9) / 1000
        records.append(r)
    records.sort(key=lambda r: r.id)
    store = gw.gateway.store
    for i in range(0, len(records), 250):
        store.insert_records(records[i : i + 250])
    s = Seeded(gw, users)
    s.records = records
    return s


@pytest.fixture
def seeded(gateway: RunningGateway) -> Seeded:
    return _seed(gateway)


def _expected(records: Iterable[Record], key: Callable[[Record], Any]) -> dict[Any, dict[str, Any]]:
    out: dict[Any, dict[str, Any]] = defaultdict(
        lambda: {"requests": 0, "errors": 0, "input_tokens": 0, "output_tokens": 0,
                 "cache_read_tokens": 0, "reasoning_tokens": 0, "cost_usd": 0.0,
                 "unpriced": 0, "durations": [], "ttfts": []}
    )  # fmt: skip
    for r in records:
        e = out[key(r)]
        e["requests"] += 1
        e["errors"] += r.status == "error"
        e["input_tokens"] += r.input_tokens or 0
        e["output_tokens"] += r.output_tokens or 0
        e["cache_read_tokens"] += r.cache_read_tokens or 0
        e["reasoning_tokens"] += r.reasoning_tokens or 0
        e["cost_usd"] += r.cost_usd or 0
        e["unpriced"] += r.cost_usd is None
        e["durations"].append(r.duration_ms)
        if r.ttft_ms is not None:
            e["ttfts"].append(r.ttft_ms)
    return out


def _check(got: dict[str, Any], want: dict[str, Any]) -> None:
    for name in ("requests", "errors", "input_tokens", "output_tokens", "cache_read_tokens",
                 "reasoning_tokens"):  # fmt: skip
        assert got[name] == want[name], name
    assert got["cost_usd"] == pytest.approx(want["cost_usd"], abs=1e-8)
    assert got["unpriced_requests"] == want["unpriced"]
    for q, name in ((0.5, "latency_p50_ms"), (0.95, "latency_p95_ms"), (0.99, "latency_p99_ms")):
        exact = _exact_percentile(want["durations"], q)
        assert _close(got[name], exact), (name, got[name], exact)
    if want["ttfts"]:
        exact = _exact_percentile(want["ttfts"], 0.95)
        assert _close(got["ttft_p95_ms"], exact), (got["ttft_p95_ms"], exact)
    else:
        assert got["ttft_p95_ms"] is None


def _utc_day(r: Record) -> str:
    return datetime.fromtimestamp(r.started // DAY * DAY, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_daily_series_per_model_matches_the_records(seeded: Seeded) -> None:
    body = seeded.usage(start="2026-10-30T00:00:00Z", end="2026-11-04T00:00:00Z",
                        bucket="day", group_by="model")  # fmt: skip
    assert body["source"] == "rollups"
    assert body["buckets"] == [f"2026-{d}T00:00:00Z" for d in
                               ("10-30", "10-31", "11-01", "11-02", "11-03")]  # fmt: skip
    want = _expected(seeded.records, lambda r: (_utc_day(r), r.model or r.model_requested))
    in_range = [r for r in seeded.records if r.started < T0 + 5 * DAY]
    seen = 0
    for series in body["series"]:
        model = series["group"]["model"]
        for point in series["points"]:
            key = (point["bucket"], model)
            if key not in want:
                assert point["requests"] == 0 and point["latency_p50_ms"] is None  # zero-filled
                continue
            _check(point, want[key])
            seen += point["requests"]
    assert seen == len(in_range)
    _check(body["totals"], _expected(in_range, lambda r: 0)[0])
    # series are ordered by spend, and the failed requests appear under the model asked for
    costs = [s["totals"]["cost_usd"] for s in body["series"]]
    assert costs == sorted(costs, reverse=True)
    assert {s["group"]["model"] for s in body["series"]} >= {"gpt-4o-mini", "gpt-4o-mini-2026"}


def test_two_dimensions_filters_and_the_raw_record_path_agree(seeded: Seeded) -> None:
    params = {"start": "2026-10-30T00:00:00Z", "end": "2026-11-04T00:00:00Z", "bucket": "week"}
    by_user_model = seeded.usage(group_by="user,model", provider="openai", **params)
    assert by_user_model["source"] == "rollups"
    want = _expected(
        [r for r in seeded.records if r.provider == "openai"],
        lambda r: (r.user, r.model or r.model_requested),
    )
    got = {(s["group"]["user"], s["group"]["model"]): s["totals"] for s in by_user_model["series"]}
    assert set(got) == set(want)
    for key, totals in got.items():
        _check(totals, want[key])
    # a filter no rollup keeps (session) is answered from the records, with the same numbers
    raw = seeded.usage(group_by="workflow", session="s3", **params)
    assert raw["source"] == "records"
    want = _expected([r for r in seeded.records if r.session == "s3"], lambda r: r.workflow)
    assert {s["group"]["workflow"]: s["totals"]["requests"] for s in raw["series"]} == {
        k: v["requests"] for k, v in want.items()
    }
    for s in raw["series"]:
        _check(s["totals"], want[s["group"]["workflow"]])


def test_tags_end_users_and_q_filters(seeded: Seeded) -> None:
    params = {"start": "2026-10-30T00:00:00Z", "end": "2026-11-04T00:00:00Z", "bucket": "month"}
    tags = seeded.usage(group_by="tag", **params)
    want = defaultdict(int)
    for r in seeded.records:
        for t in r.tags:
            want[t] += 1
    assert {s["group"]["tag"]: s["totals"]["requests"] for s in tags["series"]} == want
    eu = seeded.usage(group_by="end_user", q="tag:prod initiator:ann", **params)
    expected = defaultdict(int)
    for r in seeded.records:
        if "prod" in r.tags and r.user == "ann" and r.end_user:
            expected[r.end_user] += 1
    got = {s["group"]["end_user"]: s["totals"]["requests"] for s in eu["series"]}
    assert {k: v for k, v in got.items() if k} == expected


def test_day_buckets_follow_the_time_zone_across_a_dst_change(seeded: Seeded) -> None:
    ny = ZoneInfo("America/New_York")
    body = seeded.usage(start="2026-10-30T04:00:00Z", end="2026-11-03T05:00:00Z", bucket="day",
                        tz="America/New_York")  # fmt: skip
    assert body["buckets"] == [
        "2026-10-30T00:00:00-04:00", "2026-10-31T00:00:00-04:00", "2026-11-01T00:00:00-04:00",
        "2026-11-02T00:00:00-05:00",
    ]  # fmt: skip
    lo = datetime(2026, 10, 30, tzinfo=ny).timestamp()
    hi = datetime(2026, 11, 3, tzinfo=ny).timestamp()
    want: dict[str, int] = defaultdict(int)
    for r in seeded.records:
        if lo <= r.started < hi:
            local = datetime.fromtimestamp(r.started, ny)
            want[local.replace(hour=0, minute=0, second=0, microsecond=0).isoformat()] += 1
    got = (
        {p["bucket"]: p["requests"] for p in body["series"][0]["points"]} if body["series"] else {}
    )
    assert got == want
    assert body["totals"]["requests"] == sum(want.values())
    # the day the clocks go back has 25 hours: its bucket holds records from 25 UTC hours
    nov1 = datetime(2026, 11, 1, tzinfo=ny)
    nov2 = datetime(2026, 11, 2, tzinfo=ny)
    assert nov2.timestamp() - nov1.timestamp() == timedelta(hours=25).total_seconds()
    assert want[nov1.isoformat()] == sum(
        1 for r in seeded.records if nov1.timestamp() <= r.started < nov2.timestamp()
    )


def test_half_hour_zone_is_answered_from_records(seeded: Seeded) -> None:
    body = seeded.usage(start="2026-10-30T00:00:00Z", end="2026-11-02T00:00:00Z", bucket="day",
                        tz="Asia/Kolkata")  # fmt: skip
    assert body["source"] == "records"
    kolkata = ZoneInfo("Asia/Kolkata")
    lo, hi = T0, T0 + 3 * DAY
    want: dict[str, int] = defaultdict(int)
    for r in seeded.records:
        if lo <= r.started < hi:
            local = datetime.fromtimestamp(r.started, kolkata)
            want[local.replace(hour=0, minute=0, second=0, microsecond=0).isoformat()] += 1
    assert {p["bucket"]: p["requests"] for p in body["series"][0]["points"]} == want


def test_top_folds_the_rest_into_other(seeded: Seeded) -> None:
    full = seeded.usage(start="2026-10-30T00:00:00Z", end="2026-11-04T00:00:00Z", bucket="day",
                        group_by="model")  # fmt: skip
    top2 = seeded.usage(start="2026-10-30T00:00:00Z", end="2026-11-04T00:00:00Z", bucket="day",
                        group_by="model", top=2)  # fmt: skip
    assert [s["group"] for s in top2["series"][:2]] == [s["group"] for s in full["series"][:2]]
    other = top2["series"][2]
    assert other["other"] is True and other["group"] == {"model": "other"}
    rest = full["series"][2:]
    assert other["totals"]["requests"] == sum(s["totals"]["requests"] for s in rest)
    assert other["totals"]["cost_usd"] == pytest.approx(sum(s["totals"]["cost_usd"] for s in rest))
    for i, point in enumerate(other["points"]):
        assert point["requests"] == sum(s["points"][i]["requests"] for s in rest)


def test_top_of_two_dimensions_and_its_other_match_the_records(seeded: Seeded) -> None:
    """top=N of model and user (ranked on a few users' groups at a time, see usage._top_groups)
    and of tag and model: the N biggest groups by spend, then everything else as ``other``,
    per day, percentiles included, against the records."""
    params = {"start": "2026-10-30T00:00:00Z", "end": "2026-11-04T00:00:00Z", "bucket": "day"}
    keys: dict[str, Callable[[Record], list[tuple[str, ...]]]] = {
        "model,user": lambda r: [(r.model or r.model_requested or "", r.user or "")],
        "user,model": lambda r: [(r.user or "", r.model or r.model_requested or "")],
        "tag,model": lambda r: [(t, r.model or r.model_requested or "") for t in r.tags],
    }

    def expected(
        pairs: list[tuple[tuple[str, ...], Record]],
        key: Callable[[tuple[tuple[str, ...], Record]], Any],
    ) -> dict[Any, Any]:
        """_expected of records that count once per group they are in."""
        keyed = iter(pairs)
        return _expected([r for _, r in pairs], lambda r: key(next(keyed)))  # fmt: skip

    for group_by, key in keys.items():
        totals = expected([(k, r) for r in seeded.records for k in key(r)], lambda kr: kr[0])
        ranked = sorted(totals, key=lambda k: (-round(totals[k]["cost_usd"], 9),
                                               -totals[k]["requests"], k))  # fmt: skip
        for n in (1, 2, 3, 5):
            body = seeded.usage(group_by=group_by, top=n, **params)
            dims = group_by.split(",")
            shown = [tuple(str(s["group"][d]) for d in dims) for s in body["series"][:n]]
            assert shown == ranked[:n], (group_by, n)
            other = body["series"][n]
            assert other["other"] is True and len(body["series"]) == n + 1
            rest = [(k, r) for r in seeded.records for k in key(r) if k not in ranked[:n]]
            want = expected(rest, lambda kr: _utc_day(kr[1]))
            for point in other["points"]:
                _check(point, want[point["bucket"]])
            _check(other["totals"], expected(rest, lambda kr: 0)[0])


def test_leaderboard_and_facets(seeded: Seeded) -> None:
    r = seeded.api("/api/v1/usage/top", dimension="user", metric="cost_usd",
                   start="2026-10-29T00:00:00Z", end="2026-11-05T00:00:00Z", limit=2)  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    spend = _expected(seeded.records, lambda rec: rec.user)
    ranked = sorted(spend, key=lambda u: -spend[u]["cost_usd"])
    assert [row["user"] for row in body["results"]] == ranked[:2]
    first = body["results"][0]
    assert first["rank"] == 1 and first["user_id"] == seeded.users[ranked[0]]["user_id"]
    assert first["cost_usd"] == pytest.approx(spend[ranked[0]]["cost_usd"], abs=1e-8)
    total = sum(v["cost_usd"] for v in spend.values())
    assert first["share"] == pytest.approx(spend[ranked[0]]["cost_usd"] / total, abs=1e-5)
    for row in body["results"]:  # percentiles of each shown group: its own records, all of them
        _check(row, spend[row["user"]])
    bare = seeded.api("/api/v1/usage/top", dimension="user", metric="cost_usd", limit=2,
                      percentiles="false", start="2026-10-29T00:00:00Z",
                      end="2026-11-05T00:00:00Z").json()  # fmt: skip
    assert [row["user"] for row in bare["results"]] == ranked[:2]
    assert "latency_p95_ms" not in bare["results"][0]
    assert bare["results"][0]["cost_usd"] == first["cost_usd"]
    bad = seeded.api("/api/v1/usage/top", dimension="user", percentiles="maybe")
    assert bad.status_code == 400 and "percentiles" in bad.json()["error"]["message"]
    week = {"start": "2026-10-29T00:00:00Z", "end": "2026-11-05T00:00:00Z"}
    tokens = seeded.api("/api/v1/usage/top", dimension="model", metric="tokens", **week).json()
    per_model = _expected(seeded.records, lambda rec: rec.model or rec.model_requested)
    best = max(
        per_model, key=lambda m: per_model[m]["input_tokens"] + per_model[m]["output_tokens"]
    )
    assert tokens["results"][0]["model"] == best
    facets = seeded.api("/api/v1/requests/facets", field="model", **week).json()
    assert {v["value"]: v["count"] for v in facets["values"]} == {
        m: v["requests"] for m, v in per_model.items()
    }
    users = seeded.api("/api/v1/requests/facets", field="user",
                       start="2026-10-29T00:00:00Z", end="2026-11-05T00:00:00Z").json()  # fmt: skip
    assert {v["name"] for v in users["values"]} == {"ann", "bob", "cy"}


def test_member_sees_only_its_own_usage(seeded: Seeded) -> None:
    bob = seeded.users["bob"]
    body = seeded.usage(bob["key"], start="2026-10-30T00:00:00Z", end="2026-11-04T00:00:00Z",
                        bucket="day", group_by="user")  # fmt: skip
    assert [s["group"]["user"] for s in body["series"]] == ["bob"]
    assert body["totals"]["requests"] == sum(1 for r in seeded.records if r.user == "bob")
    leak = seeded.usage(bob["key"], start="2026-10-30T00:00:00Z", end="2026-11-04T00:00:00Z",
                        initiator="ann")  # fmt: skip
    assert leak["totals"]["requests"] == 0


def test_display_currency(start_gateway: Callable[..., RunningGateway]) -> None:
    gw = start_gateway(currency={"code": "INR", "usd_rate": 84.0})
    s = _seed(gw, n=200)
    body = s.usage(start="2026-10-30T00:00:00Z", end="2026-11-04T00:00:00Z", bucket="month")
    assert body["currency"] == "INR" and body["usd_rate"] == 84.0
    assert body["totals"]["cost"] == pytest.approx(body["totals"]["cost_usd"] * 84.0, abs=1e-6)
    usd = s.usage(start="2026-10-30T00:00:00Z", end="2026-11-04T00:00:00Z", currency="USD")
    assert usd["currency"] == "USD" and usd["totals"]["cost"] == usd["totals"]["cost_usd"]
    r = s.api("/api/v1/usage", currency="EUR")
    assert r.status_code == 400 and r.json()["error"]["param"] == "currency"


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"bucket": "year"}, "bucket"),
        ({"group_by": "colour"}, "group_by"),
        ({"group_by": "model,user,org"}, "group_by"),
        ({"tz": "Mars/Olympus"}, "tz"),
        ({"start": "yesterday"}, "start"),
        ({"start": "2026-11-02T00:00:00Z", "end": "2026-11-01T00:00:00Z"}, "start"),
        ({"top": "0"}, "top"),
        ({"status": "maybe"}, "status"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_parameters_name_the_parameter(
    gateway: RunningGateway, params: dict[str, str], param: str
) -> None:
    with gateway.api() as c:
        r = c.get("/api/v1/usage", params=params)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_rebuild_gives_back_the_same_rollups(seeded: Seeded) -> None:
    store = seeded.gw.gateway.store
    db = store._reader()  # type: ignore[attr-defined]

    def snapshot() -> dict[str, list[Any]]:
        return {c.table: sorted(db.execute(f"SELECT * FROM {c.table}").fetchall())
                for c in CUBOIDS}  # fmt: skip

    before = snapshot()
    assert sum(len(v) for v in before.values()) > 0
    store_ = seeded.gw.gateway.store
    with store_._transaction() as db_w:  # type: ignore[attr-defined]
        db_w.execute("UPDATE rollup_model SET requests = requests + 5")  # damage them
    assert snapshot() != before
    done = store_.rebuild_rollups()
    assert done == len(seeded.records)
    assert snapshot() == before


def test_proxied_traffic_shows_up_in_usage(gateway: RunningGateway) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.admin_key)
    for _ in range(3):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    for _ in stream:
        pass
    records = gateway.records()
    with gateway.api() as c:
        body = c.get("/api/v1/usage", params={"bucket": "hour", "group_by": "provider"}).json()
    assert body["totals"]["requests"] == len(records) == 4
    assert body["totals"]["output_tokens"] == sum(r["output_tokens"] for r in records)
    assert body["totals"]["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in records))
    assert body["totals"]["ttft_p50_ms"] is not None  # the stream's first token was timed
    assert [s["group"]["provider"] for s in body["series"]] == ["openai"]


def test_cli_gives_finance_a_csv_of_spend_by_user_and_model(seeded: Seeded) -> None:
    import csv
    import io
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    exe = shutil.which("gatewatch") or str(Path(sys.executable).with_name("gatewatch"))
    base = [exe, "usage", "--url", seeded.gw.url, "--token", seeded.gw.admin_key,
            "--start", "2026-10-01T00:00:00Z", "--end", "2026-11-30T00:00:00Z"]  # fmt: skip
    proc = subprocess.run([*base, "--bucket", "month", "--by", "user,model", "--format", "csv"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    want = _expected(
        seeded.records,
        lambda r: (datetime.fromtimestamp(r.started, UTC).strftime("%Y-%m-01T00:00:00Z"),
                   r.user, r.model or r.model_requested),
    )  # fmt: skip
    got = {(row["bucket"], row["user"], row["model"]): row for row in rows}
    assert set(got) == set(want)
    for key, row in got.items():
        assert int(row["requests"]) == want[key]["requests"]
        assert float(row["cost_usd"]) == pytest.approx(want[key]["cost_usd"], abs=1e-8)
        assert row["currency"] == "USD"
    table = subprocess.run([*base, "--bucket", "day", "--by", "model"],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert "gpt-4o-mini" in table.stdout and "spend per day:" in table.stdout
    assert any(ch in table.stdout for ch in "▁▂▃▄▅▆▇█")
    bad = subprocess.run([*base, "--bucket", "year"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "bucket" in bad.stderr


def test_an_existing_database_gets_its_rollups_at_upgrade(tmp_path: Any) -> None:
    from gatewatch.store import RequestQuery, Scope, SQLiteStore
    from gatewatch.store.rollups import UsageSpec

    path = str(tmp_path / "old.db")
    store = SQLiteStore(path)
    store.migrate()
    records = []
    for i in range(300):
        r = Record(id=new_id(T0 + i * 60), started=T0 + i * 60, endpoint="/v1/chat/completions",
                   org_id="o", user_id="u", provider="openai", model="m", status_code=200,
                   cost_usd=0.01)  # fmt: skip
        r.ended = r.started + 1
        records.append(r)
    store.insert_records(records)
    # as a database from before the rollups existed: no rollup tables, m004 not applied
    w = store._writer  # type: ignore[attr-defined]
    for c in CUBOIDS:
        w.execute(f"DROP TABLE {c.table}")
    w.execute("DROP TABLE leases")
    w.execute(
        "DELETE FROM _migrations"
        " WHERE name IN ('m004_rollups', 'm005_leases', 'm007_rollup_client')"
    )
    store.close()
    store = SQLiteStore(path)
    assert "m004_rollups" in store.migrate()
    spec = UsageSpec(T0, T0 + DAY, (T0, T0 + DAY), (), RequestQuery({}))
    source, rows = store.usage_rows(Scope("owner", "", ""), spec)
    assert source == "rollups"
    assert rows[(0, ())][0] == 300 and rows[(0, ())][7] == 3_000_000_000


def test_the_client_rollup_is_filled_from_the_base_one_at_upgrade(tmp_path: Any) -> None:
    from gatewatch.store import RequestQuery, Scope, SQLiteStore
    from gatewatch.store.rollups import UsageSpec

    path = str(tmp_path / "old.db")
    store = SQLiteStore(path)
    store.migrate()
    records = []
    for i in range(240):
        r = Record(id=new_id(T0 + i * 60), started=T0 + i * 60, endpoint="/v1/chat/completions",
                   org_id="o", user_id="u", provider="openai", model="m", status_code=200,
                   client=("cursor", "codex", None)[i % 3], cost_usd=0.01)  # fmt: skip
        r.ended = r.started + 0.2 + (i % 7)
        records.append(r)
    store.insert_records(records)
    spec = UsageSpec(T0, T0 + DAY, (T0, T0 + DAY), ("client",), RequestQuery({}))
    before = store.usage_rows(Scope("owner", "", ""), spec)
    w = store._writer  # type: ignore[attr-defined]
    w.execute("DROP TABLE rollup_client")  # as a database from before m007
    w.execute("DELETE FROM _migrations WHERE name = 'm007_rollup_client'")
    store.close()
    store = SQLiteStore(path)
    assert store.migrate() == ["m007_rollup_client"]
    after = store.usage_rows(Scope("owner", "", ""), spec)
    assert after[0] == "rollups" and after[1].keys() == before[1].keys()
    for key, v in after[1].items():
        assert v[:NS] == before[1][key][:NS] and v[:NS][0] == 80
        assert sum_hist(v[NS]) == sum_hist(before[1][key][NS])

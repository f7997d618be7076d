"""Analytics benchmark: usage series, leaderboard, list pages, facets and export over HTTP.

    .venv/bin/python bench/analytics_bench.py /tmp/gw10m.db [--runs 10] [--json FILE]

Runs against a database built by ``bench/gen_records.py``. Starts ``gatewatch serve`` on that
file (owner key in the config, like ``bench/run.py``), creates an org-admin key and a member key
through ``POST /api/v1/keys``, then times each query over one keep-alive connection: one warm-up,
then ``--runs`` timed requests (median and p95 reported). The export is timed once per format over
a time range that holds about ``--export-rows`` records, with the gateway's RSS sampled every
50 ms. An endpoint that answers 404/405 is reported as "n/a (endpoint missing)".
Progress goes to stderr, the report to stdout. Exit code 0: every target met; 1: a target
missed; 2: the harness could not run; 130: interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _measure import HOST, BenchError, RssSampler, free_port, log, rss_mb, stop_process, tail
from run import ADMIN_KEY, find_gatewatch, sigterm_as_interrupt, start_gateway

TARGET_USAGE_MS = 200.0
TARGET_TOP_MS = 200.0
TARGET_LIST_MS = 50.0
TARGET_EXPORT_ROWS_S = 100_000.0
TARGET_EXPORT_GROWTH_MB = 50.0  # "flat memory": peak RSS during the export - RSS before
MISSING = "n/a (endpoint missing)"


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def q(path: str, **params: Any) -> str:
    return path + "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})


# --------------------------------------------------------------------------- the database


@dataclass
class DataInfo:
    records: int
    newest: str
    oldest: str
    org: str  # the busiest organization of the recent records (its admin is timed)
    org_share: float
    user: str  # that org's busiest user (a member key of this user is timed)
    model: str  # the busiest model of --provider (for the three-filter list)
    export_after: str  # started_at of the --export-rows-th newest record


def inspect_db(path: Path, provider: str, export_rows: int) -> DataInfo:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        t0 = time.perf_counter()
        records = con.execute("SELECT count(*) FROM requests").fetchone()[0]
        if not records:
            raise BenchError(f"{path} holds no records: run bench/gen_records.py first")
        newest = con.execute("SELECT started_at FROM requests ORDER BY id DESC LIMIT 1").fetchone()
        oldest = con.execute("SELECT started_at FROM requests ORDER BY id LIMIT 1").fetchone()
        sample = con.execute(
            "SELECT org, user, provider, model_requested FROM requests"
            " ORDER BY id DESC LIMIT 200000"
        ).fetchall()
        orgs: dict[str, int] = {}
        users: dict[tuple[str, str], int] = {}
        models: dict[str, int] = {}
        for org, user, prov, model in sample:
            orgs[org] = orgs.get(org, 0) + 1
            users[(org, user)] = users.get((org, user), 0) + 1
            if prov == provider and model:
                models[model] = models.get(model, 0) + 1
        org = max(orgs, key=orgs.__getitem__)
        user = max((u for u in users if u[0] == org), key=users.__getitem__)[1]
        if not models:
            raise BenchError(f"no records of provider {provider!r} among the newest 200,000")
        model = max(models, key=models.__getitem__)
        offset = min(export_rows, records) - 1
        export_after = con.execute(
            "SELECT started_at FROM requests ORDER BY id DESC LIMIT 1 OFFSET ?", (offset,)
        ).fetchone()[0]
        log(f"inspected {path} in {time.perf_counter() - t0:.1f}s: {records:,} records")
        return DataInfo(
            records, newest[0], oldest[0], org, orgs[org] / len(sample), user, model, export_after
        )
    finally:
        con.close()


# --------------------------------------------------------------------------- HTTP


class Client:
    """One keep-alive connection; reconnects when the server closes it."""

    def __init__(self, port: int, timeout: float) -> None:
        self.port = port
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def request(
        self, method: str, path: str, key: str, body: Any = None
    ) -> http.client.HTTPResponse:
        headers = {"Authorization": f"Bearer {key}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, path, body=data, headers=headers)
                return conn.getresponse()
            except (ConnectionError, http.client.HTTPException):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def call(self, method: str, path: str, key: str, body: Any = None) -> tuple[int, bytes, float]:
        """(status, body, milliseconds until the whole body was read)."""
        t0 = time.perf_counter()
        resp = self.request(method, path, key, body)
        data = resp.read()
        ms = (time.perf_counter() - t0) * 1000
        if resp.getheader("connection", "").lower() == "close":
            self.close()
        return resp.status, data, ms


def wait_ready(proc: subprocess.Popen[bytes], client: Client, logfile: Path, limit: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if proc.poll() is not None:
            raise BenchError(f"gateway exited with {proc.returncode} at start:\n{tail(logfile)}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if client.call("GET", "/api/v1/me", ADMIN_KEY)[0] == 200:
                return time.monotonic() - t0
        client.close()
        time.sleep(0.5)
    raise BenchError(f"gateway not ready within {limit:.0f}s:\n{tail(logfile)}")


def error_text(status: int, body: bytes) -> str:
    try:
        msg = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        msg = body[:200].decode(errors="replace")
    return f"HTTP {status}: {msg}"


# --------------------------------------------------------------------------- timed queries


@dataclass
class Case:
    name: str
    scope: str  # owner | admin(org) | member(user)
    path: str
    target_ms: float | None
    new_endpoint: bool = False  # being built: 404/405 means "not there yet"


@dataclass
class Timing:
    name: str
    scope: str
    path: str
    target_ms: float | None
    status: str  # ok | missing | error
    note: str = ""
    median_ms: float | None = None
    p95_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    runs_ms: list[float] = field(default_factory=list)
    response_bytes: int = 0
    rss_peak_mb: float = 0.0  # the gateway's, sampled every 0.1 s during this query
    warmup_ms: float | None = None

    @property
    def verdict(self) -> str:
        if self.status != "ok":
            return "—"
        if self.target_ms is None or self.median_ms is None:
            return "—"
        return "PASS" if self.median_ms < self.target_ms else "FAIL"


def summarize(path: str, data: Any) -> str:
    """A few words about the answer, so the table shows what was measured."""
    if not isinstance(data, dict):
        return ""
    if "series" in data:
        series = data.get("series") or []
        buckets = data.get("buckets") or []
        total = (data.get("totals") or {}).get("requests")
        extra = f", source {data['source']}" if "source" in data else ""
        return f"{len(series)} series x {len(buckets)} buckets, {total} requests{extra}"
    if "results" in data and "count" in data:
        return f"count {data['count']:,}, page {len(data['results'])}"
    if "results" in data:
        return f"{len(data['results'])} rows"
    if "values" in data:
        return f"{len(data['values'])} values"
    return ""


def p95(values: list[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=20, method="inclusive")[18]


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_idle(pid: int, limit: float) -> float:
    """After a request timed out the gateway is still computing it: wait (up to ``limit``
    seconds) until it uses under 0.2 cores over a second, so the next figures are not skewed."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        before = _cpu_s(pid)
        time.sleep(1.0)
        if _cpu_s(pid) - before < 0.2:
            break
    return time.monotonic() - t0


def time_case(client: Client, case: Case, key: str, args: argparse.Namespace, pid: int) -> Timing:
    t = Timing(case.name, case.scope, case.path, case.target_ms, "ok")
    with RssSampler(pid, interval=0.1) as sampler:
        sampler.sample()
        try:
            _timed(client, case, key, args, t)
        except TimeoutError:
            client.close()
            t.status, t.note = "error", f"no answer within {args.timeout:.0f} s"
            log(f"{case.name} [{case.scope}]: {t.note}; waiting for the gateway to finish it")
            log(f"gateway idle again after {wait_idle(pid, 3600):.0f} s")
        t.rss_peak_mb = round(sampler.max_mb, 1)
    return t


def _timed(client: Client, case: Case, key: str, args: argparse.Namespace, t: Timing) -> None:
    status, body, warm_ms = client.call("GET", case.path, key)  # warm-up
    if status != 200:
        if case.new_endpoint and status in (404, 405):
            t.status, t.note = "missing", MISSING
        else:
            t.status, t.note = "error", error_text(status, body)
        log(f"{case.name} [{case.scope}]: {t.note}")
        return
    with contextlib.suppress(ValueError):
        t.note = summarize(case.path, json.loads(body))
    t.response_bytes = len(body)
    t.warmup_ms = round(warm_ms, 2)
    runs = args.runs
    if warm_ms > args.slow * 1000:  # tens of seconds per request: fewer runs
        runs = min(runs, args.slow_runs)
        t.note = f"{runs} runs: warm-up {warm_ms / 1000:.1f} s > --slow; {t.note}"
    for _ in range(runs):
        status, body, ms = client.call("GET", case.path, key)
        if status != 200:
            t.status, t.note = "error", error_text(status, body)
            return
        t.runs_ms.append(round(ms, 2))
    t.median_ms = round(statistics.median(t.runs_ms), 2)
    t.p95_ms = round(p95(t.runs_ms), 2)
    t.min_ms, t.max_ms = min(t.runs_ms), max(t.runs_ms)
    log(f"{case.name} [{case.scope}]: median {t.median_ms} ms, p95 {t.p95_ms} ms ({t.note})")


def build_cases(info: DataInfo, now: float, provider: str) -> dict[str, list[Case]]:
    start, end = iso(now - 30 * 86400), iso(now)
    hour = int(now // 3600 * 3600)
    a_start, a_end = iso(hour - 30 * 86400), iso(hour)
    usage = "/api/v1/usage"
    day_model = q(usage, start=start, end=end, bucket="day", group_by="model")
    top_users = q(
        "/api/v1/usage/top", dimension="user", metric="cost_usd", start=start, end=end, limit=20
    )
    one = q("/api/v1/requests", provider=provider)
    three = q("/api/v1/requests", provider=provider, status="error", model=info.model)
    owner = [
        Case("usage 30d, day x model", "owner", day_model, TARGET_USAGE_MS, True),
        Case(
            "usage 30d, day x model (hour-aligned)",
            "owner",
            q(usage, start=a_start, end=a_end, bucket="day", group_by="model"),
            TARGET_USAGE_MS,
            True,
        ),
        Case(
            "usage 30d, day x model,user top=10",
            "owner",
            q(usage, start=start, end=end, bucket="day", group_by="model,user", top=10),
            TARGET_USAGE_MS,
            True,
        ),
        Case(
            "usage 30d, day x model, tz=New_York",
            "owner",
            q(usage, start=start, end=end, bucket="day", group_by="model", tz="America/New_York"),
            TARGET_USAGE_MS,
            True,
        ),
        Case("top 20 users by cost, 30d", "owner", top_users, TARGET_TOP_MS, True),
        Case("list, no filter", "owner", "/api/v1/requests", TARGET_LIST_MS),
        Case(f"list provider={provider}", "owner", one, TARGET_LIST_MS),
        Case(f"list provider+status=error+model={info.model}", "owner", three, TARGET_LIST_MS),
        Case(
            "facets field=model", "owner", q("/api/v1/requests/facets", field="model"), None, True
        ),
    ]
    admin_scope = f"admin({info.org})"
    admin = [
        Case("usage 30d, day x model", admin_scope, day_model, TARGET_USAGE_MS, True),
        Case("top 20 users by cost, 30d", admin_scope, top_users, TARGET_TOP_MS, True),
        Case(f"list provider={provider}", admin_scope, one, TARGET_LIST_MS),
        Case(f"list provider+status=error+model={info.model}", admin_scope, three, TARGET_LIST_MS),
        Case(
            "facets field=model",
            admin_scope,
            q("/api/v1/requests/facets", field="model"),
            None,
            True,
        ),
    ]
    member_scope = f"member({info.user})"
    member = [
        Case("usage 30d, day x model", member_scope, day_model, TARGET_USAGE_MS, True),
        Case(f"list provider={provider}", member_scope, one, TARGET_LIST_MS),
        Case(f"list provider+status=error+model={info.model}", member_scope, three, TARGET_LIST_MS),
    ]
    return {"owner": owner, "admin": admin, "member": member}


# --------------------------------------------------------------------------- export


@dataclass
class Export:
    format: str
    status: str  # ok | missing | error
    note: str = ""
    rows: int = 0
    total_count_header: str | None = None
    bytes: int = 0
    first_byte_s: float | None = None
    seconds: float | None = None
    rows_per_s: float | None = None
    rss_before_mb: float = 0.0
    rss_peak_mb: float = 0.0
    rss_after_mb: float = 0.0
    rss_after_2s_mb: float = 0.0

    @property
    def growth_mb(self) -> float:
        return self.rss_peak_mb - self.rss_before_mb

    @property
    def verdict(self) -> str:
        if self.status != "ok" or self.rows_per_s is None:
            return "—"
        ok = self.rows_per_s >= TARGET_EXPORT_ROWS_S and self.growth_mb < TARGET_EXPORT_GROWTH_MB
        return "PASS" if ok else "FAIL"


def time_export(client: Client, pid: int, fmt: str, after: str) -> Export:
    out = Export(fmt, "ok")
    path = q("/api/v1/requests/export", format=fmt, started_after=after)
    client.close()  # a fresh connection: the stream may end it
    time.sleep(1.0)
    out.rss_before_mb = rss_mb(pid)
    with RssSampler(pid, interval=0.05) as sampler:
        sampler.sample()
        t0 = time.perf_counter()
        resp = client.request("GET", path, ADMIN_KEY)
        out.first_byte_s = time.perf_counter() - t0
        if resp.status != 200:
            body = resp.read()
            client.close()
            if resp.status in (404, 405):
                out.status, out.note = "missing", MISSING
            else:
                out.status, out.note = "error", error_text(resp.status, body)
            log(f"export {fmt}: {out.note}")
            return out
        out.total_count_header = resp.getheader("X-Total-Count")
        lines = 0
        size = 0
        next_log = 200_000
        while chunk := resp.read(1 << 16):
            size += len(chunk)
            lines += chunk.count(b"\n")
            if lines >= next_log:
                next_log += 200_000
                el = time.perf_counter() - t0
                log(f"export {fmt}: {lines:,} lines, {el:.1f}s, RSS {sampler.sample():.1f} MB")
        out.seconds = time.perf_counter() - t0
        out.rss_after_mb = sampler.sample()
        out.rss_peak_mb = sampler.max_mb
    client.close()
    time.sleep(2.0)
    out.rss_after_2s_mb = rss_mb(pid)
    out.rows = lines - 1 if fmt == "csv" else lines
    out.bytes = size
    out.rows_per_s = out.rows / out.seconds if out.seconds else None
    log(
        f"export {fmt}: {out.rows:,} rows in {out.seconds:.1f}s"
        f" = {out.rows_per_s or 0:,.0f} rows/s;"
        f" RSS before {out.rss_before_mb:.1f}, peak {out.rss_peak_mb:.1f},"
        f" after {out.rss_after_mb:.1f} MB"
    )
    return out


# --------------------------------------------------------------------------- report


def fmt_ms(v: float | None) -> str:
    return "—" if v is None else f"{v:,.1f}"


def print_report(info: DataInfo, timings: list[Timing], exports: list[Export], runs: int) -> None:
    print(
        f"\n## {info.records:,} records, {info.oldest[:10]} … {info.newest[:16]}Z;"
        f" admin of {info.org} ({info.org_share:.0%} of recent records),"
        f" member {info.user}\n"
    )
    print(
        f"Queries: one warm-up, then {runs} timed requests (ms over HTTP, whole body read; after"
        " a warm-up slower than --slow, --slow-runs); RSS MB: the gateway's peak during it\n"
    )
    head = (
        "query",
        "scope",
        "median",
        "p95",
        "min",
        "max",
        "warm-up",
        "target",
        "verdict",
        "RSS MB",
        "answer",
    )
    rows = []
    for t in timings:
        target = "—" if t.target_ms is None else f"< {t.target_ms:.0f}"
        if t.status != "ok":
            rows.append((t.name, t.scope, t.note, "", "", "", "", target, "—", t.rss_peak_mb, ""))
            continue
        rows.append(
            (
                t.name,
                t.scope,
                fmt_ms(t.median_ms),
                fmt_ms(t.p95_ms),
                fmt_ms(t.min_ms),
                fmt_ms(t.max_ms),
                fmt_ms(t.warmup_ms),
                target,
                t.verdict,
                f"{t.rss_peak_mb:.0f}",
                t.note,
            )
        )
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
    print(f"\nExport (owner, started_after={info.export_after}):\n")
    for e in exports:
        if e.status != "ok":
            print(f"- {e.format}: {e.note}")
            continue
        print(
            f"- {e.format}: {e.rows:,} rows (X-Total-Count {e.total_count_header}),"
            f" {e.bytes / 2**20:,.0f} MiB in {e.seconds:.1f} s = {e.rows_per_s or 0:,.0f} rows/s"
            f" (target ≥ {TARGET_EXPORT_ROWS_S:,.0f}); first byte after {e.first_byte_s:.3f} s;"
            f" gateway RSS before {e.rss_before_mb:.1f} MB, peak {e.rss_peak_mb:.1f} MB"
            f" (+{e.growth_mb:.1f}, target < +{TARGET_EXPORT_GROWTH_MB:.0f}),"
            f" after {e.rss_after_mb:.1f} MB, 2 s later {e.rss_after_2s_mb:.1f} MB: {e.verdict}"
        )
    failed = [f"{t.name} [{t.scope}]" for t in timings if t.verdict == "FAIL"]
    failed += [f"export {e.format}" for e in exports if e.verdict == "FAIL"]
    missing = [f"{t.name} [{t.scope}]" for t in timings if t.status == "missing"]
    missing += [f"export {e.format}" for e in exports if e.status == "missing"]
    errors = [f"{t.name} [{t.scope}]" for t in timings if t.status == "error"]
    errors += [f"export {e.format}" for e in exports if e.status == "error"]
    print()
    if missing:
        print("not measured (endpoint missing): " + "; ".join(missing))
    if errors:
        print("errors: " + "; ".join(errors))
    print(
        "OVERALL: "
        + ("PASS" if not failed and not errors else "FAIL (" + "; ".join(failed + errors) + ")")
    )


# --------------------------------------------------------------------------- main


def create_key(client: Client, body: dict[str, Any]) -> dict[str, Any]:
    status, data, _ = client.call("POST", "/api/v1/keys", ADMIN_KEY, body)
    if status != 201:
        raise BenchError(f"POST /api/v1/keys {body}: {error_text(status, data)}")
    return dict(json.loads(data))


def bench(args: argparse.Namespace, tmp: Path) -> int:
    db = Path(args.db).resolve()
    if not db.exists():
        raise BenchError(f"{db} does not exist: build it with bench/gen_records.py")
    info = inspect_db(db, args.provider, args.export_rows)
    log(
        f"data {info.oldest} … {info.newest}; admin org {info.org}, member {info.user},"
        f" model {info.model}, export from {info.export_after}"
    )
    exe = find_gatewatch(args.gatewatch)
    port = free_port()
    cfg = tmp / "gatewatch.yaml"
    # retention off: the default (60 days of records) would purge half of a 120-day database
    cfg.write_text(
        f"admin_key: {ADMIN_KEY}\ndatabase: {args.database or f'sqlite:///{db}'}\n"
        f"log_level: {args.log_level}\n"
        "retention: {days: 0, content_days: 0, aggregate_days: 0}\n"
    )
    gw_log = tmp / "gateway.log"
    gateway = start_gateway(exe, cfg, port, gw_log)
    client = Client(port, args.timeout)
    keys: list[str] = []
    try:
        took = wait_ready(gateway, client, gw_log, args.ready_timeout)
        log(f"gateway ready on {HOST}:{port} (pid {gateway.pid}) after {took:.1f}s")
        rss_start = rss_mb(gateway.pid)
        admin = create_key(
            client,
            {"name": "analytics-bench", "user": "analytics-bench-admin", "org": info.org,
             "role": "admin"},
        )  # fmt: skip
        member = create_key(client, {"name": "analytics-bench", "user": info.user, "org": info.org})
        keys = [admin["id"], member["id"]]
        secrets = {"owner": ADMIN_KEY, "admin": admin["key"], "member": member["key"]}
        now = time.time()
        timings: list[Timing] = []
        for role, cases in build_cases(info, now, args.provider).items():
            for case in cases:
                timings.append(time_case(client, case, secrets[role], args, gateway.pid))
        exports: list[Export] = []
        if not args.no_export:
            for fmt in ("csv", "jsonl"):
                for _ in range(args.export_runs):
                    exports.append(time_export(client, gateway.pid, fmt, info.export_after))
        rss_end = rss_mb(gateway.pid)
        print_report(info, timings, exports, args.runs)
        print(f"gateway RSS: {rss_start:.1f} MB after start, {rss_end:.1f} MB at the end")
        if args.json:
            payload = {
                "config": vars(args),
                "data": asdict(info),
                "now": iso(now),
                "queries": [{**asdict(t), "verdict": t.verdict} for t in timings],
                "exports": [
                    {**asdict(e), "growth_mb": e.growth_mb, "verdict": e.verdict} for e in exports
                ],
                "rss_mb": {"start": rss_start, "end": rss_end},
            }
            Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
            log(f"wrote {args.json}")
        failed = any(t.verdict == "FAIL" or t.status == "error" for t in timings) or any(
            e.verdict == "FAIL" or e.status == "error" for e in exports
        )
        return 1 if failed else 0
    except BaseException:
        log(f"gateway log tail ({gw_log}):\n{tail(gw_log)}")
        raise
    finally:
        for key_id in keys:  # leave the database as we found it (but for two revoked keys)
            with contextlib.suppress(Exception):
                client.call("DELETE", f"/api/v1/keys/{key_id}", ADMIN_KEY)
        client.close()
        stop_process(gateway, "gateway", 30)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("db", nargs="?", default="/tmp/gw10m.db", help="database from gen_records.py")
    p.add_argument(
        "--database",
        metavar="URL",
        help="serve this database instead (postgresql://…): a copy of db made with"
        " `gatewatch migrate`, so that both engines answer the same questions",
    )
    p.add_argument(
        "--runs", type=int, default=10, help="timed requests per query (after 1 warm-up)"
    )
    p.add_argument(
        "--slow", type=float, default=20.0, help="seconds: after a slower warm-up, --slow-runs"
    )
    p.add_argument("--slow-runs", type=int, default=2, help="timed runs of a slow query")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per request")
    p.add_argument("--provider", default="anthropic", help="provider of the filtered list pages")
    p.add_argument("--export-rows", type=int, default=1_000_000, help="records in the export range")
    p.add_argument("--export-runs", type=int, default=1, help="exports per format")
    p.add_argument("--no-export", action="store_true", help="skip the export measurements")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--gatewatch", metavar="EXE", help="gatewatch executable (.venv/bin/gatewatch)")
    p.add_argument("--ready-timeout", type=float, default=1800.0, help="seconds to wait for start")
    p.add_argument("--log-level", default="warning", help="the gateway's log level")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (config, gateway.log)")
    args = p.parse_args(argv)
    if args.runs < 1 or args.export_rows < 1 or args.export_runs < 1:
        p.error("--runs, --export-rows and --export-runs must be ≥ 1")
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    tmp = Path(tempfile.mkdtemp(prefix="gatewatch-analytics-"))
    try:
        with sigterm_as_interrupt():
            return bench(args, tmp)
    except BenchError as exc:
        log(f"ERROR: {exc}")
        return 2
    except KeyboardInterrupt:
        log("interrupted; gateway stopped")
        return 130
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

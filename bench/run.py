"""Benchmark harness for gatewatch: throughput, added latency, record completeness, memory.

    .venv/bin/python bench/run.py [--duration 10] [--runs 3] [--connections 32] [--json FILE]
                                  [--otel sink|down]

Starts ``bench/mock_upstream.py`` and ``gatewatch serve`` on free loopback ports, drives them
with ``wrk`` (all traffic to 127.0.0.1, every run time-limited), then checks that every request
was stored and prints a PASS/FAIL table against the targets.  See ``bench/README.md``.

Standard library only (plus the gateway and uvloop, which run as subprocesses).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from _measure import (  # bench/_measure.py: the script's directory is on sys.path
    HOST,
    BenchError,
    CpuProbe,
    RssSampler,
    WrkResult,
    descendants,
    free_port,
    log,
    proc_status_kb,
    run_wrk,
    stop_process,
    tail,
)

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
ADMIN_KEY = "gw-bench-admin-key-0123456789"
CHAT_LUA = BENCH_DIR / "chat.lua"
STREAM_LUA = BENCH_DIR / "chat_stream.lua"

# Targets (2 cores; wrk, mock upstream and gateway on the same machine).
TARGET_RPS_32 = 2000.0
TARGET_ADDED_P50_MS = 0.5
TARGET_ADDED_P99_MS = 2.0
TARGET_RSS_MB = 200.0

READY_TIMEOUT = 30.0
FLUSH_TIMEOUT = 30.0
SHUTDOWN_TIMEOUT = 30.0
NOISY_CORES = 0.25  # CPU used by unrelated processes above which the report warns


def start_upstream(
    port: int, logfile: Path, script: str = "mock_upstream.py", what: str = "mock upstream"
) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, str(BENCH_DIR / script), "--host", HOST, "--port", str(port)]
    with logfile.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=out,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches us only; we stop children ourselves.
        )
    stdout = proc.stdout
    assert stdout is not None
    ready: list[bytes] = []
    reader = threading.Thread(target=lambda: ready.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(10.0)
    if not ready or b"ready" not in ready[0]:
        stop_process(proc, what, 5)
        raise BenchError(f"{what} did not print 'ready' within 10 s:\n{tail(logfile)}")
    return proc


def write_config(tmp: Path, upstream_port: int, redis: str | None, database: str) -> Path:
    cfg = tmp / "gatewatch.yaml"
    cfg.write_text(
        f"admin_key: {ADMIN_KEY}\n"
        f"database: {database}\n"
        f"spool: {{path: {tmp / 'spool'}}}\n"
        "content: full\n" + (f"redis: {redis}\n" if redis else "") + "providers:\n"
        f'  - {{name: openai, type: openai, base_url: "http://{HOST}:{upstream_port}/v1",'
        " api_key: sk-bench}\n"
    )
    return cfg


def limited_key(base_url: str) -> str:
    """A key with a budget and rate limits that never bind, so every request pays for the
    budget reservation and the rate-limit checks (``--limited``)."""
    body = json.dumps(
        {"user": "bench", "org": "bench", "budget_usd": 1e9, "rpm": 10_000_000, "tpm": 10**12}
    ).encode()
    req = urllib.request.Request(
        base_url + "/api/v1/keys",
        data=body,
        headers={"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return str(json.loads(resp.read())["key"])


def scripts_for_key(tmp: Path, key: str) -> tuple[Path, Path]:
    out = []
    for script in (CHAT_LUA, STREAM_LUA):
        copy = tmp / script.name
        copy.write_text(script.read_text().replace(ADMIN_KEY, key))
        out.append(copy)
    return out[0], out[1]


def start_gateway(
    exe: str,
    cfg: Path,
    port: int,
    logfile: Path,
    workers: int = 1,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    cmd = [exe, "serve", "--config", str(cfg), "--host", HOST, "--port", str(port)]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    log("starting gateway: " + " ".join(cmd))
    with logfile.open("wb") as out:
        return subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            start_new_session=True,
            env=env,
        )


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def wait_ready(proc: subprocess.Popen[bytes], metrics_url: str, logfile: Path) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < READY_TIMEOUT:
        if proc.poll() is not None:
            raise BenchError(f"gateway exited with {proc.returncode} at start:\n{tail(logfile)}")
        with contextlib.suppress(OSError):
            if http_get(metrics_url, timeout=2.0)[0] == 200:
                return time.monotonic() - t0
        time.sleep(0.1)
    raise BenchError(f"GET {metrics_url} not 200 within {READY_TIMEOUT:.0f}s:\n{tail(logfile)}")


# --------------------------------------------------------------------------- metrics / RSS


def metric_value(text: str, name: str) -> float | None:
    """Sum of all samples of ``name`` (any labels) in a Prometheus text exposition."""
    total: float | None = None
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        rest = line[len(name) :]
        if rest.startswith("{"):
            end = rest.find("}")
            if end < 0:
                continue
            rest = rest[end + 1 :]
        elif not rest.startswith(" "):
            continue  # a longer name with this prefix (e.g. …_created)
        parts = rest.split()
        if not parts:
            continue
        try:
            total = (total or 0.0) + float(parts[0])
        except ValueError:
            continue
    return total


def fresh_postgres_schema(url: str) -> str:
    """A new schema in the PostgreSQL at ``url`` for one run; its URL."""
    import uuid

    import psycopg

    name = f"gwbench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    return f"{url}{'&' if '?' in url else '?'}schema={name}"


def drop_postgres_schema(url: str) -> None:
    import psycopg

    from gatewatch.store.postgres import split_url

    conninfo, schema = split_url(url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def count_rows(db: Path | str) -> int | None:
    if isinstance(db, str):  # a PostgreSQL URL
        import psycopg

        from gatewatch.store.postgres import split_url

        conninfo, schema = split_url(db)
        try:
            with psycopg.connect(conninfo, options=f"-c search_path={schema or 'public'}") as c:
                row = c.execute("SELECT count(*) FROM requests").fetchone()
                return int(row[0]) if row else None
        except psycopg.Error as exc:
            log(f"cannot count rows in {schema}: {exc}")
            return None
    if not db.exists():
        return None
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            return int(con.execute("SELECT count(*) FROM requests").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error as exc:
        log(f"cannot count rows in {db}: {exc}")
        return None


def wait_flushed(metrics_url: str, db: Path | str) -> tuple[str, float | None]:
    """Wait until ``gatewatch_records_pending`` is 0 and the row count settles.
    Returns the last /metrics text and the pending value seen last."""
    t0 = time.monotonic()
    text = ""
    pending: float | None = None
    while time.monotonic() - t0 < FLUSH_TIMEOUT:
        try:
            status, text = http_get(metrics_url)
        except OSError as exc:
            log(f"GET /metrics failed: {exc}")
            status = 0
        if status == 200:
            pending = metric_value(text, "gatewatch_records_pending")
            if pending is None:
                log("gatewatch_records_pending is not in /metrics; waiting for the row count")
                break
            if pending == 0:
                break
        time.sleep(0.2)
    else:
        log(f"records still pending after {FLUSH_TIMEOUT:.0f}s: {pending}")
    # A batch may be between "dequeued" and "committed": wait until the count stops moving.
    last = count_rows(db)
    while time.monotonic() - t0 < FLUSH_TIMEOUT:
        time.sleep(0.5)
        now = count_rows(db)
        if now == last:
            break
        last = now
    return text, pending


# --------------------------------------------------------------------------- report


@dataclass
class RunResult:
    direct_1: WrkResult
    gateway_1: WrkResult
    gateway_n: WrkResult
    direct_n: WrkResult
    stream: WrkResult
    rss_mb: float

    @property
    def other_cores(self) -> float | None:
        """Most CPU used by unrelated processes during any measurement of this run."""
        vals = [w.cpu_cores["other"] for w in self.all if "other" in w.cpu_cores]
        return max(vals) if vals else None

    @property
    def all(self) -> list[WrkResult]:
        return [self.direct_1, self.gateway_1, self.gateway_n, self.direct_n, self.stream]

    @property
    def added_p50_ms(self) -> float:
        return (self.gateway_1.p50_us - self.direct_1.p50_us) / 1000.0

    @property
    def added_p99_ms(self) -> float:
        return (self.gateway_1.p99_us - self.direct_1.p99_us) / 1000.0


@dataclass
class Check:
    name: str
    value: str
    target: str
    ok: bool | None  # None = informational
    runs: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return "—" if self.ok is None else ("PASS" if self.ok else "FAIL")


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def build_checks(
    runs: list[RunResult],
    nconn: int,
    sconn: int,
    sent_ok: int,
    non2xx: int,
    socket_errors: int,
    inflight_bound: int,
    stored: int | None,
    dropped: float | None,
    max_rss: float,
) -> list[Check]:
    def fig(get: Callable[[RunResult], float], fmt: str) -> tuple[float, list[str]]:
        vals = [get(r) for r in runs]
        return median(vals), [format(v, fmt) for v in vals]

    checks: list[Check] = []
    v, each = fig(lambda r: r.direct_1.rps, ",.0f")
    checks.append(Check("direct rps @1 (ceiling)", f"{v:,.0f}", "—", None, each))
    v, each = fig(lambda r: r.gateway_1.rps, ",.0f")
    checks.append(Check("gateway rps @1", f"{v:,.0f}", "—", None, each))
    v, each = fig(lambda r: r.added_p50_ms, ".3f")
    checks.append(
        Check(
            "added p50 ms @1",
            f"{v:.3f}",
            f"≤ {TARGET_ADDED_P50_MS}",
            v <= TARGET_ADDED_P50_MS,
            each,
        )
    )
    v, each = fig(lambda r: r.added_p99_ms, ".3f")
    checks.append(
        Check(
            "added p99 ms @1",
            f"{v:.3f}",
            f"≤ {TARGET_ADDED_P99_MS}",
            v <= TARGET_ADDED_P99_MS,
            each,
        )
    )
    v, each = fig(lambda r: r.gateway_n.rps, ",.0f")
    checks.append(
        Check(
            f"gateway rps @{nconn}",
            f"{v:,.0f}",
            f"≥ {TARGET_RPS_32:,.0f}",
            v >= TARGET_RPS_32,
            each,
        )
    )
    v, each = fig(lambda r: r.direct_n.rps, ",.0f")
    checks.append(Check(f"direct rps @{nconn} (ceiling)", f"{v:,.0f}", "—", None, each))
    v, each = fig(lambda r: r.stream.rps, ",.0f")
    checks.append(Check(f"gateway stream rps @{sconn}", f"{v:,.0f}", "—", None, each))
    if all(r.gateway_n.gateway_cpu_us_per_req is not None for r in runs):
        v, each = fig(lambda r: r.gateway_n.gateway_cpu_us_per_req or 0.0, ".0f")
        checks.append(Check(f"gateway CPU µs/request @{nconn}", f"{v:.0f}", "—", None, each))
    if all(r.other_cores is not None for r in runs):
        v, each = fig(lambda r: r.other_cores or 0.0, ".2f")
        checks.append(Check("other load on machine, cores", f"{v:.2f}", "—", None, each))
    checks.append(
        Check(
            "non-2xx / socket errors",
            f"{non2xx} / {socket_errors}",
            "0 / 0",
            non2xx == 0 and socket_errors == 0,
        )
    )
    if stored is None:
        rec_ok, rec_val = False, f"{sent_ok:,} sent / ? stored"
    else:
        # wrk abandons up to one in-flight request per connection when a run ends; the gateway
        # still completes (and may record) those, so stored may exceed sent by that much.
        rec_ok = sent_ok <= stored <= sent_ok + non2xx + inflight_bound
        rec_val = f"{sent_ok:,} sent / {stored:,} stored"
    checks.append(
        Check(
            "records sent vs stored",
            rec_val,
            f"stored ≥ sent (≤ +{inflight_bound} in flight)",
            rec_ok,
        )
    )
    checks.append(
        Check(
            "records dropped", "missing" if dropped is None else f"{dropped:.0f}", "0", dropped == 0
        )
    )
    checks.append(
        Check(
            "max gateway RSS MB",
            f"{max_rss:.1f}",
            f"< {TARGET_RSS_MB:.0f}",
            0 < max_rss < TARGET_RSS_MB,
            [f"{r.rss_mb:.1f}" for r in runs],
        )
    )
    return checks


def _fmt(v: float | None, spec: str) -> str:
    return "?" if v is None else format(v, spec)


def print_report(runs: list[RunResult], checks: list[Check], notes: list[str], alarm: str) -> None:
    if alarm:
        print("\n" + alarm)
    print()
    print("## Individual runs")
    print()
    head = (
        "run",
        "direct rps@1",
        "gw rps@1",
        "direct p50/p99 µs@1",
        "gw p50/p99 µs@1",
        "added p50/p99 ms",
        "gw rps@N",
        "direct rps@N",
        "gw p99 ms@N",
        "gw CPU µs/req@N",
        "stream rps",
        "RSS MB",
        "other cores",
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for i, r in enumerate(runs, 1):
        row = (
            str(i),
            f"{r.direct_1.rps:,.0f}",
            f"{r.gateway_1.rps:,.0f}",
            f"{r.direct_1.p50_us:.0f} / {r.direct_1.p99_us:.0f}",
            f"{r.gateway_1.p50_us:.0f} / {r.gateway_1.p99_us:.0f}",
            f"{r.added_p50_ms:.3f} / {r.added_p99_ms:.3f}",
            f"{r.gateway_n.rps:,.0f}",
            f"{r.direct_n.rps:,.0f}",
            f"{r.gateway_n.p99_us / 1000:.2f}",
            _fmt(r.gateway_n.gateway_cpu_us_per_req, ".0f"),
            f"{r.stream.rps:,.0f}",
            f"{r.rss_mb:.1f}",
            _fmt(r.other_cores, ".2f"),
        )
        print("| " + " | ".join(row) + " |")
    print()
    print(f"## Result (median of {len(runs)} runs)")
    print()
    w = max(len(c.name) for c in checks)
    wv = max(len(c.value) for c in checks)
    wt = max(len(c.target) for c in checks)
    print(f"| {'figure':<{w}} | {'value':>{wv}} | {'target':<{wt}} | verdict | runs")
    print(f"|{'-' * (w + 2)}|{'-' * (wv + 2)}|{'-' * (wt + 2)}|---------|-----")
    for c in checks:
        print(
            f"| {c.name:<{w}} | {c.value:>{wv}} | {c.target:<{wt}} | {c.verdict:<7} | "
            + ", ".join(c.runs)
        )
    print()
    for line in notes:
        print(line)
    if alarm:
        print("\n" + alarm)
    failed = [c.name for c in checks if c.ok is False]
    print()
    print("OVERALL: " + ("PASS" if not failed else "FAIL (" + "; ".join(failed) + ")"))


# --------------------------------------------------------------------------- main


def find_gatewatch(arg: str | None) -> str:
    if arg:
        return arg
    for cand in (REPO / ".venv" / "bin" / "gatewatch", Path(sys.executable).parent / "gatewatch"):
        if cand.exists():
            return str(cand)
    found = shutil.which("gatewatch")
    if not found:
        raise BenchError("no gatewatch executable (.venv/bin/gatewatch); pip install -e . first")
    return found


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def bench(args: argparse.Namespace, tmp: Path) -> int:
    wrk = args.wrk or shutil.which("wrk") or "/usr/bin/wrk"
    exe = find_gatewatch(args.gatewatch)
    up_port, gw_port = free_port(), free_port()
    while gw_port == up_port:
        gw_port = free_port()
    direct_url = f"http://{HOST}:{up_port}{args.path}"
    gw_url = f"http://{HOST}:{gw_port}{args.path}"
    metrics_url = f"http://{HOST}:{gw_port}/metrics"
    db: Path | str = tmp / "bench.db"
    database = f"sqlite:///{db}"
    if args.database:
        db = database = args.made_schema = fresh_postgres_schema(args.database)
    gw_log = tmp / "gateway.log"
    upstream: subprocess.Popen[bytes] | None = None
    sink: subprocess.Popen[bytes] | None = None
    gateway: subprocess.Popen[bytes] | None = None
    gateway_exit: int | None = None
    try:
        upstream = start_upstream(up_port, tmp / "upstream.log")
        log(f"mock upstream ready on {HOST}:{up_port} (pid {upstream.pid})")
        cfg = write_config(tmp, up_port, args.redis, database)
        env: dict[str, str] | None = None
        if args.otel:  # OpenTelemetry export on: to a sink that answers 200, or a closed port
            otel_port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://{HOST}:{otel_port}"
            env["OTEL_SERVICE_NAME"] = "gatewatch-bench"
            if args.otel == "sink":
                sink = start_upstream(otel_port, tmp / "otlp_sink.log", "otlp_sink.py", "OTLP sink")
                log(f"OTLP sink ready on {HOST}:{otel_port} (pid {sink.pid})")
            else:
                log(f"--otel down: OTLP endpoint {HOST}:{otel_port} refuses connections")
        gateway = start_gateway(exe, cfg, gw_port, gw_log, args.workers, env)
        took = wait_ready(gateway, metrics_url, gw_log)
        log(f"gateway ready on {HOST}:{gw_port} (pid {gateway.pid}) after {took:.1f}s")
        chat_lua, stream_lua = CHAT_LUA, STREAM_LUA
        if args.limited:
            chat_lua, stream_lua = scripts_for_key(tmp, limited_key(f"http://{HOST}:{gw_port}"))
            log("--limited: requests use a key with a budget and rpm/tpm limits")

        gw_results: list[WrkResult] = []
        runs: list[RunResult] = []
        n, s, d = args.connections, args.stream_connections, args.duration
        probe = CpuProbe(gateway.pid, upstream.pid)

        def measure(label: str, url: str, script: Path, conns: int, secs: int) -> WrkResult:
            return run_wrk(wrk, label, url, script, conns, secs, probe)

        with RssSampler(gateway.pid) as sampler:
            if args.warmup > 0:
                gw_results.append(measure("warm-up", gw_url, chat_lua, n, args.warmup))
            for i in range(1, args.runs + 1):
                log(f"=== run {i}/{args.runs}")
                direct_1 = measure(f"run {i} direct @1", direct_url, CHAT_LUA, 1, d)
                gateway_1 = measure(f"run {i} gateway @1", gw_url, chat_lua, 1, d)
                gateway_n = measure(f"run {i} gateway @{n}", gw_url, chat_lua, n, d)
                run_rss = sampler.sample()
                direct_n = measure(f"run {i} direct @{n}", direct_url, CHAT_LUA, n, d)
                stream = measure(f"run {i} gateway stream @{s}", gw_url, stream_lua, s, d)
                run_rss = max(run_rss, sampler.sample())
                gw_results += [gateway_1, gateway_n, stream]
                runs.append(RunResult(direct_1, gateway_1, gateway_n, direct_n, stream, run_rss))
                log(f"run {i}: gateway RSS {run_rss:.1f} MB")
                if gateway.poll() is not None:
                    raise BenchError(f"gateway died (exit {gateway.returncode}):\n{tail(gw_log)}")

            log("load done; waiting for the gateway to store every record")
            metrics_text, pending = wait_flushed(metrics_url, db)
            sampler.sample()
        dropped = metric_value(metrics_text, "gatewatch_records_dropped_total")
        stored_live = count_rows(db)
        peak_hwm = (
            sum(proc_status_kb(p, "VmHWM") for p in [gateway.pid, *descendants(gateway.pid)])
            / 1024.0
        )
        max_rss = sampler.max_mb
        log(f"stored while running: {stored_live}; pending {pending}; dropped {dropped}")

        log("stopping the gateway (SIGTERM; it flushes on the way out)")
        gateway_exit = stop_process(gateway, "gateway", SHUTDOWN_TIMEOUT)
        stored = count_rows(db)
        if stored is None:
            stored = stored_live

        sent_ok = sum(r.ok for r in gw_results)
        everything = gw_results + [r.direct_1 for r in runs] + [r.direct_n for r in runs]
        non2xx = sum(r.non2xx for r in everything)
        socket_errors = sum(sum(r.socket_errors.values()) for r in everything)
        inflight = sum(r.connections for r in gw_results)
        checks = build_checks(
            runs, n, s, sent_ok, non2xx, socket_errors, inflight, stored, dropped, max_rss
        )
        notes = [
            f"records: {sent_ok:,} successful gateway requests reported by wrk "
            f"({len(gw_results)} gateway wrk runs{' incl. warm-up' if args.warmup else ''}); "
            f"{stored if stored is not None else '?'}"
            f" rows in `requests` after shutdown ({stored_live} before SIGTERM); "
            f"gatewatch_records_dropped_total = {dropped}; gatewatch_records_pending = {pending}",
            f"gateway: peak RSS (VmHWM) {peak_hwm:.1f} MB; after SIGTERM: "
            + (
                f"ended by {signal.Signals(-gateway_exit).name} (uvicorn re-raises it when done)"
                if gateway_exit is not None and gateway_exit < 0
                else f"exit code {gateway_exit}"
            ),
            f"wrk: -t1, {d}s per measurement; stream runs use {STREAM_LUA.name} "
            f"(include_usage); {os.cpu_count()} CPUs",
        ]
        if args.otel:
            exported = [ln for ln in tail(gw_log, 200).splitlines() if "OpenTelemetry:" in ln]
            notes.append(f"otel ({args.otel}): " + (exported[-1] if exported else "no summary"))
            if sink is not None:
                stop_process(sink, "OTLP sink", 5)
                got = [ln for ln in tail(tmp / "otlp_sink.log").splitlines() if "requests" in ln]
                notes.append("OTLP sink received: " + (got[-1] if got else "?"))
        busiest = max((r.other_cores or 0.0 for r in runs), default=0.0)
        if busiest > NOISY_CORES:
            notes.append(
                f"NOTE: other processes used up to {busiest:.2f} cores during a measurement: "
                "the machine was not quiet, so the figures (p99 most of all) are noisy."
            )
        alarm = ""
        if non2xx:
            alarm = (
                f"!!! {non2xx} NON-2xx RESPONSES: the figures are NOT valid (errors are cheap)."
                f"\n--- gateway log (tail) ---\n{tail(gw_log)}\n---"
            )
        print_report(runs, checks, notes, alarm)

        if args.json:
            payload = {
                "config": {k: v for k, v in vars(args).items() if k != "json"},
                "runs": [
                    {
                        **{k: asdict(v) for k, v in vars(r).items() if isinstance(v, WrkResult)},
                        "rss_mb": r.rss_mb,
                        "added_p50_ms": r.added_p50_ms,
                        "added_p99_ms": r.added_p99_ms,
                        "other_cores_max": r.other_cores,
                    }
                    for r in runs
                ],
                "warmup": asdict(gw_results[0]) if args.warmup > 0 else None,
                "checks": [{**asdict(c), "verdict": c.verdict} for c in checks],
                "records": {
                    "sent_ok": sent_ok,
                    "stored": stored,
                    "stored_before_sigterm": stored_live,
                    "dropped": dropped,
                    "pending": pending,
                    "inflight_bound": inflight,
                },
                "non2xx": non2xx,
                "socket_errors": socket_errors,
                "max_rss_mb": max_rss,
                "peak_hwm_mb": peak_hwm,
                "gateway_exit": gateway_exit,
                "pass": all(c.ok is not False for c in checks),
            }
            Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
            log(f"wrote {args.json}")
        if non2xx:
            return 3
        return 0 if all(c.ok is not False for c in checks) else 1
    except BaseException:
        if gateway is not None and gateway.poll() is None:  # else the error shows the tail
            log(f"gateway log tail ({gw_log}):\n{tail(gw_log)}")
        raise
    finally:
        if gateway is not None and gateway.poll() is None:
            stop_process(gateway, "gateway", SHUTDOWN_TIMEOUT)
        stop_process(upstream, "mock upstream", 5)
        stop_process(sink, "OTLP sink", 5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk measurement")
    p.add_argument("--runs", type=int, default=3, help="repetitions; medians are reported")
    p.add_argument("--connections", type=int, default=32, help="connections for the load runs")
    p.add_argument("--stream-connections", type=int, default=8, help="connections, stream runs")
    p.add_argument("--warmup", type=int, default=2, help="seconds of gateway warm-up (0 = off)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--gatewatch", metavar="EXE", help="gatewatch executable (.venv/bin/gatewatch)")
    p.add_argument("--wrk", metavar="EXE", help="wrk executable (default: wrk on PATH)")
    p.add_argument("--path", default="/v1/chat/completions", help="request path on both servers")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (config, db, logs)")
    p.add_argument(
        "--limited", action="store_true", help="send with a budget- and rate-limited key"
    )
    p.add_argument("--workers", type=int, default=1, help="gateway worker processes")
    p.add_argument("--redis", metavar="URL", help="redis URL for shared counters")
    p.add_argument(
        "--database",
        metavar="URL",
        help="postgresql://… to store records in PostgreSQL (a fresh schema per run, dropped"
        " after) instead of SQLite",
    )
    p.add_argument(
        "--otel",
        choices=("sink", "down"),
        help="OpenTelemetry export on: to bench/otlp_sink.py, or to a closed port",
    )
    args = p.parse_args(argv)
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    if not (0 < args.duration <= 600 and 0 <= args.warmup <= 600):
        p.error("need 0 < --duration ≤ 600 and 0 ≤ --warmup ≤ 600")
    if args.runs < 1 or args.connections < 1 or args.stream_connections < 1:
        p.error("need --runs, --connections and --stream-connections ≥ 1")
    for script in (CHAT_LUA, STREAM_LUA):
        if not script.exists():
            p.error(f"missing {script}")

    tmp = Path(tempfile.mkdtemp(prefix="gatewatch-bench-"))
    log(f"temp dir {tmp}")
    try:
        with sigterm_as_interrupt():
            return bench(args, tmp)
    except BenchError as exc:
        log(f"ERROR: {exc}")
        return 2
    except KeyboardInterrupt:
        log("interrupted; subprocesses stopped")
        return 130
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
            if getattr(args, "made_schema", None):
                drop_postgres_schema(args.made_schema)


if __name__ == "__main__":
    sys.exit(main())

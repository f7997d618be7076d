"""Export benchmark: GET /api/v1/requests/export over HTTP against N stored records.

    .venv/bin/python bench/export_bench.py [--records 1000000] [--db /tmp/gw-query-bench.db]
                                           [--formats csv,jsonl] [--bodies] [--repeat 1]
                                           [--in-process]

Fills a SQLite store with N varied records (the same records as bench/query_bench.py, reused
when the file has them), starts ``gatewatch serve`` on it, and downloads the whole export of
each format with curl (to /dev/null) as the owner. Reports rows/s, MB/s, the gateway's RSS
before, at most during and after each export (sampled from /proc every 0.2 s), and the CPU the
gateway and everything else used meanwhile: on a busy machine rows/s falls, rows per gateway
CPU-second much less. Target: 100,000 rows/s and a flat RSS.

``--in-process`` also times, on the first 200k records and without HTTP, the store's export
pages against fetching the same columns as tuples and writing them with ``csv.writer`` (the
design this one replaced), in rows per CPU-second."""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import CpuProbe, RssSampler, free_port, log, rss_mb, stop_process
from query_bench import fill

from gatewatch.export import export_columns
from gatewatch.store import SQLiteStore, parse_filters
from gatewatch.store.query import Scope

ADMIN_KEY = "gw-bench-export-admin-key-0123456789"
OWNER = Scope("owner", "", "")


def start_gateway(db: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    config = workdir / "gatewatch.yaml"
    config.write_text(f"admin_key: {ADMIN_KEY}\ndatabase: sqlite:///{db}\nlog_level: warning\n")
    port = free_port()
    exe = str(Path(sys.executable).with_name("gatewatch"))
    logf = open(workdir / "gateway.log", "wb")  # noqa: SIM115  (outlives this function)
    proc = subprocess.Popen(
        [exe, "serve", "--config", str(config), "--port", str(port)],
        stdout=logf, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600  # the first start may migrate a large database
    while time.monotonic() < deadline:
        ok = subprocess.run(["curl", "-sf", "-o", "/dev/null", f"{url}/healthz"], check=False)
        if ok.returncode == 0:
            return proc, url
        if proc.poll() is not None:
            raise SystemExit(f"the gateway exited: see {workdir / 'gateway.log'}")
        time.sleep(0.5)
    raise SystemExit("the gateway did not start")


def export_over_http(url: str, pid: int, fmt: str, bodies: bool) -> dict[str, float]:
    rss_before = rss_mb(pid)
    probe = CpuProbe(pid, os.getpid())
    before = probe.snapshot()
    with RssSampler(pid, interval=0.2) as sampler:
        t0 = time.perf_counter()
        out = subprocess.run(
            ["curl", "-sS", "-o", "/dev/null", "-D", "-", "-w", "BYTES %{size_download}\n",
             "-H", f"Authorization: Bearer {ADMIN_KEY}",
             f"{url}/api/v1/requests/export?format={fmt}&bodies={str(bodies).lower()}"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        seconds = time.perf_counter() - t0
    cores = probe.cores(before, probe.snapshot())
    headers = {
        k.strip().lower(): v.strip()
        for k, _, v in (line.partition(":") for line in out.splitlines() if ":" in line)
    }
    assert out.startswith("HTTP/1.1 200"), out
    rows = int(headers["x-total-count"])
    size = int(out.rsplit("BYTES ", 1)[1])
    return {
        "rows": rows,
        "seconds": seconds,
        "rows_per_s": rows / seconds,
        "mb_per_s": size / seconds / 1e6,
        "bytes_per_row": size / max(rows, 1),
        "rss_before": rss_before,
        "rss_max": sampler.max_mb,
        "rss_after": rss_mb(pid),
        "gateway_cores": cores["gateway"],
        "other_cores": cores["other"] + cores["wrk"],
    }


def in_process(store: SQLiteStore, n: int) -> None:
    columns = export_columns(False)
    db = store._reader()
    cols = []
    for c in columns:
        cols.append(
            "iif(r.stream, 'true', 'false')" if c == "stream"
            else "round(r.cost_usd * 1.0, 10)" if c == "cost"
            else "'USD'" if c == "currency"
            else f"r.{c}"
        )  # fmt: skip

    def baseline() -> int:
        after, done = None, 0
        while done < n:
            where = "WHERE r.id < ?" if after else ""
            rows = db.execute(
                f"SELECT {', '.join(cols)} FROM requests r {where} ORDER BY r.id DESC LIMIT 5000",
                [after] if after else [],
            ).fetchall()
            if not rows:
                break
            buf = io.StringIO()
            csv.writer(buf).writerows(rows)
            buf.getvalue().encode()
            after, done = rows[-1][0], done + len(rows)
        return done

    def pages(fmt: str) -> int:
        done = 0
        for page in store.export_pages(OWNER, parse_filters([]), columns, fmt):
            done += page.count(b"\n")
            if done >= n:
                break
        return done

    for name, fn in (("csv.writer on tuples", baseline), ("export_pages csv", lambda: pages("csv")),
                     ("export_pages jsonl", lambda: pages("jsonl"))):  # fmt: skip
        c0, t0 = time.process_time(), time.perf_counter()
        rows = fn()
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        print(f"  in-process {name:22s} {rows / cpu:>10,.0f} rows/CPU-s   "
              f"{rows / wall:>10,.0f} rows/s wall")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--db", default="/tmp/gw-query-bench.db")
    ap.add_argument("--formats", default="csv,jsonl")
    ap.add_argument("--bodies", action="store_true")
    ap.add_argument("--repeat", type=int, default=1, help="Exports of each format (RSS stays?)")
    ap.add_argument("--in-process", action="store_true")
    args = ap.parse_args()
    if shutil.which("curl") is None:
        raise SystemExit("curl is needed on PATH")

    store = SQLiteStore(args.db)
    store.migrate()
    have = store._reader().execute("SELECT count(*) FROM requests").fetchone()[0]
    if have < args.records:
        log(f"filling {args.db}: {have:,} → {args.records:,} records")
        fill(store, args.records - have, seed=have + 1)
    if args.in_process:
        in_process(store, min(200_000, args.records))
    store.close()

    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_gateway(args.db, Path(tmp))
        try:
            print(f"export of {args.db} over HTTP (curl to /dev/null), load "
                  f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")  # fmt: skip
            for fmt in [f for f in args.formats.split(",") for _ in range(args.repeat)]:
                r = export_over_http(url, proc.pid, fmt, args.bodies)
                print(
                    f"  {fmt:5s} {r['rows']:>9,.0f} rows in {r['seconds']:6.1f} s:"
                    f" {r['rows_per_s']:>8,.0f} rows/s, {r['mb_per_s']:5.1f} MB/s"
                    f" ({r['bytes_per_row']:.0f} B/row); gateway"
                    f" {r['rows'] / max(r['gateway_cores'] * r['seconds'], 1e-9):>8,.0f}"
                    f" rows/CPU-s ({r['gateway_cores']:.2f} cores, others"
                    f" {r['other_cores']:.2f}); RSS {r['rss_before']:.0f} MB before,"
                    f" {r['rss_max']:.0f} max, {r['rss_after']:.0f} after",
                    flush=True,
                )
        finally:
            stop_process(proc, "gateway", 30)


if __name__ == "__main__":
    main()

"""CPU cost of the gateway's Prometheus metrics, measured in process (no network, no load
generator, so it holds up on a busy machine better than bench/run.py).

    .venv/bin/python bench/metrics_bench.py [--requests 50000] [--repeat 15]

1. Per request: ``Metrics.observe_request`` (the labelled counter, duration, overhead and TTFT
   histograms, tokens and cost) for a blocking and a streamed request, with the default labels
   and with ``per_user`` + ``per_key``. CPU time of the thread (``time.thread_time``), so time
   the process spends descheduled does not count; min and median over ``--repeat`` runs.
2. Per scrape: ``/metrics`` of one process (``generate_latest``), and under ``--workers N`` one
   worker's snapshot and the merge + render of two workers' snapshots, for a small and a large
   registry.

Compare the per-request figure with the gateway's CPU per request in bench/run.py's report
(``gateway CPU µs/request @32``) to get the share of throughput the metrics cost."""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from prometheus_client import CollectorRegistry, generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gatewatch.metrics import Metrics
from gatewatch.metrics_endpoint import (
    WorkerSnapshots,
    _Merged,
    merge_snapshots,
    snapshot,
)
from gatewatch.records import Record


def record(stream: bool, model: str = "gpt-4o-mini-2024-07-18", org: str = "acme") -> Record:
    rec = Record(id="01J", started=0.0, endpoint="/v1/chat/completions")
    rec.provider, rec.model, rec.model_requested = "openai", model, "gpt-4o-mini"
    rec.status_code, rec.stream = 200, stream
    rec.org, rec.user, rec.api_key_name = org, "alice", "alice-laptop"
    rec.input_tokens, rec.output_tokens, rec.cost_usd = 120, 300, 0.000198
    rec.ttft_ms = 180.0 if stream else None
    return rec


def cpu_us(fn: Callable[[], None], n: int, repeat: int) -> tuple[float, float]:
    runs = []
    for _ in range(repeat):
        t = time.thread_time()
        for _ in range(n):
            fn()
        runs.append((time.thread_time() - t) / n * 1e6)
    return min(runs), statistics.median(runs)


def cpu_ms(fn: Callable[[], object], repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        t = time.thread_time()
        fn()
        runs.append((time.thread_time() - t) * 1e3)
    return statistics.median(runs)


def populated(models: int) -> Metrics:
    """A registry after traffic over ``models`` models, 5 orgs, 3 statuses, streamed or not."""
    m = Metrics()
    for i in range(models):
        for org in range(5):
            for status in (200, 429, 500):
                for stream in (False, True):
                    rec = record(stream, f"model-{i}", f"org-{org}")
                    rec.status_code = status
                    m.observe_request(rec, 0.8, 0.0004)
    return m


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--requests", type=int, default=50_000, help="observations per run")
    p.add_argument("--repeat", type=int, default=15, help="runs; min and median reported")
    args = p.parse_args()

    print("## Per request: Metrics.observe_request, CPU µs (min / median)\n")
    print("| labels | blocking | streamed |")
    print("|---|---|---|")
    for name, kw in (
        ("default (org)", {}),
        ("per_user + per_key", {"per_user": True, "per_key": True}),
    ):
        cells = []
        for stream in (False, True):
            m, rec = Metrics(**kw), record(stream)
            mn, med = cpu_us(
                lambda m=m, rec=rec: m.observe_request(rec, 0.8, 0.0004), args.requests, args.repeat
            )
            cells.append(f"{mn:.2f} / {med:.2f}")
        print(f"| {name} | {cells[0]} | {cells[1]} |")

    print("\n## Per scrape, CPU ms (median of 5)\n")
    print(
        "| label sets | samples | one process | one worker's snapshot | merge + render, 2 workers |"
    )
    print("|---|---|---|---|---|")
    for models in (2, 25):
        m = populated(models)
        samples = sum(len(f.samples) for f in m.registry.collect())
        with tempfile.TemporaryDirectory() as tmp:
            snaps = WorkerSnapshots(tmp, m.registry)
            one = cpu_ms(lambda m=m: generate_latest(m.registry), 5)
            write = cpu_ms(snaps.write, 5)
            other = orjson.loads(snaps.path.read_bytes())

            def merged(m: Metrics = m, other: list[object] = other) -> bytes:
                reg = CollectorRegistry(auto_describe=False)
                reg.register(
                    _Merged(merge_snapshots([(snapshot(m.registry), True), (other, True)]))
                )
                return generate_latest(reg)

            merge = cpu_ms(merged, 5)
        print(f"| {models * 30} | {samples} | {one:.1f} | {write:.1f} | {merge:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

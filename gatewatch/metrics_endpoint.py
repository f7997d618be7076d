"""``GET /metrics`` (§O1): the Prometheus text of this process or, under
``gatewatch serve --workers N``, of all worker processes added up.

Several workers share one listening socket, so a scrape reaches one of them at random. The
worker that answers asks the others, through a shared directory, for a snapshot of their
registries (``<dir>/<pid>.json``, also written at start and at shutdown), and merges them with
its own live registry: counters and histograms summed over every worker that ever wrote one (a
worker that died keeps its counts, so totals never go back), gauges over the live workers only,
summed or maximum per :data:`gatewatch.metrics.GAUGE_MERGE`. docs/monitoring.md weighs this
against prometheus_client's multiprocess mode."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from gatewatch.controls.breaker import STATE_VALUES, CircuitBreakers
from gatewatch.metrics import GAUGE_MERGE, Metrics
from gatewatch.settings import MetricsSettings

__all__ = ["MetricsEndpoint", "WorkerSnapshots", "merge_snapshots"]

log = logging.getLogger("gatewatch.metrics")

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
# one metric family: name, type, help, unit, [[sample name, labels, value], …]
Family = list[Any]

POLL_INTERVAL = 0.1  # seconds between a worker's looks at the scrape request
SNAPSHOT_WAIT = 1.0  # seconds a scrape waits for the other workers' snapshots at most


def snapshot(registry: CollectorRegistry) -> list[Family]:
    """The registry's samples as plain data (``_created`` timestamps left out: per process)."""
    out: list[Family] = []
    for metric in registry.collect():
        samples = [
            [s.name, s.labels, s.value] for s in metric.samples if not s.name.endswith("_created")
        ]
        out.append([metric.name, metric.type, metric.documentation, metric.unit, samples])
    return out


def merge_snapshots(snapshots: Iterable[tuple[list[Family], bool]]) -> list[Metric]:
    """Merge ``(families, alive)`` of every worker: counters, histograms and summaries summed;
    gauges of live workers summed, or their maximum for the names in ``GAUGE_MERGE``."""
    merged: dict[str, tuple[Metric, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}
    for families, alive in snapshots:
        for name, kind, doc, unit, samples in families:
            entry = merged.get(name)
            if entry is None:
                entry = merged[name] = (Metric(name, doc, kind, unit), {})
            values = entry[1]
            if kind == "gauge":
                if not alive:
                    continue
                take_max = GAUGE_MERGE.get(name) == "max"
                for sname, labels, value in samples:
                    k = (sname, tuple(labels.items()))
                    old = values.get(k)
                    if old is None:
                        values[k] = value
                    else:
                        values[k] = max(old, value) if take_max else old + value
            else:
                for sname, labels, value in samples:
                    k = (sname, tuple(labels.items()))
                    values[k] = values.get(k, 0.0) + value
    out = []
    for metric, values in merged.values():
        for (sname, labels), value in values.items():
            metric.add_sample(sname, dict(labels), value)
        out.append(metric)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Merged(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self.metrics


class WorkerSnapshots:
    """This worker's snapshot file in the shared directory, and the merge of all of them.

    Snapshots are taken on demand: the worker answering a scrape touches ``<dir>/scrape``; every
    worker looks at that file's time ten times a second (one ``stat``) and writes a snapshot when
    it changed; the answering worker waits (up to ``wait`` seconds) until each live worker's
    snapshot is newer than its request, then merges. So a scrape sees every worker as of the
    scrape, and a gateway nobody scrapes writes nothing."""

    def __init__(self, directory: str | os.PathLike[str], registry: CollectorRegistry) -> None:
        self.directory = Path(directory)
        self.registry = registry
        self.request = self.directory / "scrape"
        self._answered = 0  # the scrape request this worker last wrote a snapshot for

    @property
    def path(self) -> Path:
        return self.directory / f"{os.getpid()}.json"

    def write(self) -> None:
        data = orjson.dumps(snapshot(self.registry))
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, self.path)  # readers never see half a file

    def _requested(self) -> int:
        try:
            return os.stat(self.request).st_mtime_ns
        except FileNotFoundError:
            return 0

    async def loop(self, poll: float = POLL_INTERVAL) -> None:
        self._answered = self._requested()
        while True:
            await asyncio.sleep(poll)
            requested = self._requested()
            if requested == self._answered:
                continue
            self._answered = requested
            try:
                await asyncio.to_thread(self.write)
            except OSError as exc:  # metrics must never take the worker down
                log.warning("could not write the metrics snapshot %s: %s", self.path, exc)

    def _others(self) -> list[tuple[Path, int]]:
        own = os.getpid()
        out = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                pid = int(path.stem)
            except ValueError:
                continue
            if pid != own:
                out.append((path, pid))
        return out

    def render(self, wait: float = SNAPSHOT_WAIT) -> bytes:
        """The exposition of every worker: this one live, the others from snapshots they write
        for this scrape (or their last one, from a worker that is gone or too slow to answer)."""
        self.request.touch()
        requested = self._answered = self._requested()  # this worker answers live
        deadline = time.monotonic() + wait
        others = self._others()
        pending = [(path, pid) for path, pid in others if _alive(pid)]
        while pending and time.monotonic() < deadline:
            time.sleep(0.01)
            pending = [
                (path, pid) for path, pid in pending if _alive(pid) and _mtime(path) < requested
            ]
        snapshots: list[tuple[list[Family], bool]] = [(snapshot(self.registry), True)]
        for path, pid in others:
            try:
                families = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError):  # gone or replaced under us: skip it
                continue
            snapshots.append((families, _alive(pid)))
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Merged(merge_snapshots(snapshots)))
        return generate_latest(registry)


def _mtime(path: Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return 0


class MetricsEndpoint:
    """The ASGI answer to ``GET /metrics``: bearer check, circuit states, the exposition."""

    def __init__(
        self,
        metrics: Metrics,
        settings: MetricsSettings,
        breakers: CircuitBreakers,
        workers_dir: str | None = None,
    ) -> None:
        self.metrics = metrics
        self.breakers = breakers
        token = settings.token.get_secret_value() if settings.token else None
        self._expected = f"Bearer {token}".encode() if token else None
        self.workers = WorkerSnapshots(workers_dir, metrics.registry) if workers_dir else None

    async def start(self) -> asyncio.Task[None] | None:
        """Under several workers: the task that answers scrapes with this worker's snapshot."""
        if self.workers is None:
            return None
        self.workers.directory.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.workers.write)
        return asyncio.create_task(self.workers.loop())

    def close(self) -> None:
        """The last snapshot, so the counts of a worker that stops are kept."""
        if self.workers is not None:
            with contextlib.suppress(OSError):
                self.workers.write()

    def authorized(self, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        if self._expected is None:
            return True
        for name, value in headers:
            if name == b"authorization":
                return hmac.compare_digest(value.strip(), self._expected)
        return False

    async def __call__(self, scope: Message, send: Send) -> None:
        if not self.authorized(scope["headers"]):
            body = b"/metrics needs 'Authorization: Bearer <metrics.token>'\n"
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"www-authenticate", b'Bearer realm="gatewatch metrics"'),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        for row in self.breakers.snapshot():
            provider, _, model = row["target"].partition("/")
            self.metrics.circuit_state.labels(provider, model).set(STATE_VALUES[row["state"]])
        if self.workers is None:
            body = generate_latest(self.metrics.registry)
        else:
            body = await asyncio.to_thread(self.workers.render)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", CONTENT_TYPE_LATEST.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

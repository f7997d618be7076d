"""``GET /metrics`` (§O1): the Prometheus text of this process or, under
``gatewatch serve --workers N``, of all worker processes added up.

Several workers share one listening socket, so a scrape reaches one of them at random. Each
worker writes a snapshot of its own registry to ``<dir>/<pid>.json`` every second (and at
shutdown); the worker that answers a scrape merges its live registry with the other workers'
snapshots: counters and histograms summed over every worker that ever wrote one (a worker that
died keeps its counts, so totals never go back), gauges over the live workers only, summed or
maximum per :data:`gatewatch.metrics.GAUGE_MERGE`. docs/monitoring.md weighs this against
prometheus_client's multiprocess mode."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
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

SNAPSHOT_INTERVAL = 1.0  # seconds: how far behind another worker's figures may be


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
                    k = (sname, tuple(sorted(labels.items())))
                    old = values.get(k)
                    if old is None:
                        values[k] = value
                    else:
                        values[k] = max(old, value) if take_max else old + value
            else:
                for sname, labels, value in samples:
                    k = (sname, tuple(sorted(labels.items())))
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
    """This worker's snapshot file in the shared directory, and the merge of all of them."""

    def __init__(self, directory: str | os.PathLike[str], registry: CollectorRegistry) -> None:
        self.directory = Path(directory)
        self.registry = registry

    @property
    def path(self) -> Path:
        return self.directory / f"{os.getpid()}.json"

    def write(self) -> None:
        data = orjson.dumps(snapshot(self.registry))
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, self.path)  # readers never see half a file

    async def loop(self, interval: float = SNAPSHOT_INTERVAL) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self.write)
            except OSError as exc:  # metrics must never take the worker down
                log.warning("could not write the metrics snapshot %s: %s", self.path, exc)

    def render(self) -> bytes:
        """The exposition of every worker: this one live, the others from their snapshots."""
        own = os.getpid()
        snapshots: list[tuple[list[Family], bool]] = [(snapshot(self.registry), True)]
        for path in sorted(self.directory.glob("*.json")):
            try:
                pid = int(path.stem)
            except ValueError:
                continue
            if pid == own:
                continue
            try:
                families = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError):  # gone or replaced under us: skip it
                continue
            snapshots.append((families, _alive(pid)))
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Merged(merge_snapshots(snapshots)))
        return generate_latest(registry)


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
        """Under several workers: the task that keeps this worker's snapshot fresh."""
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

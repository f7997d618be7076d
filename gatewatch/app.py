"""``create_app(settings)``: the gateway as one ASGI app. Proxy paths go straight to the proxy
handler (no framework on the hot path); everything else to the management API."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os

import orjson

from gatewatch.alerts import Alerts
from gatewatch.api import create_api
from gatewatch.auth import ADMIN_KEY_ID, KeyCache, hash_key
from gatewatch.controls import Controls
from gatewatch.controls.breaker import CircuitBreakers
from gatewatch.metrics import Metrics
from gatewatch.metrics_endpoint import MetricsEndpoint
from gatewatch.pricing import PriceBook, warm_price_table
from gatewatch.proxy.disconnect import Message, Receive, Send
from gatewatch.proxy.handler import ASGIScope, ProxyHandler
from gatewatch.proxy.routing import match_proxy_path
from gatewatch.retention import Retention
from gatewatch.settings import Settings
from gatewatch.store import RecordWriter, Scope, Store, open_store
from gatewatch.store.spool import Spool
from gatewatch.tracing import Tracing

__all__ = ["Gateway", "app_from_environment", "create_app"]

log = logging.getLogger("gatewatch")


class Gateway:
    def __init__(
        self, settings: Settings, store: Store | None = None, metrics_dir: str | None = None
    ) -> None:
        self.settings = settings
        self.store = store or open_store(settings.database, settings.database_pool_size)
        m = settings.metrics
        self.metrics = Metrics(org=m.org, per_user=m.per_user, per_key=m.per_key)
        self.keys = KeyCache(self.store)
        secrets = [p.api_key.get_secret_value() for p in settings.providers if p.api_key]
        if settings.admin_key is not None:
            secrets.append(settings.admin_key.get_secret_value())
        spool_path = settings.spool_path
        self.writer = RecordWriter(
            self.store,
            max_pending=settings.record_queue_size,
            batch_size=settings.record_batch_size,
            secrets=secrets,
            redact=settings.redact,
            on_drop=self.metrics.records_dropped.inc,
            keep_bodies=settings.content == "full",
            spool=Spool(spool_path, settings.spool.max_bytes) if spool_path else None,
            spill_after=settings.spool.spill_after,
            on_full=settings.spool.on_full,
        )
        writer = self.writer
        self.metrics.records_pending.set_function(lambda: writer.pending)
        if writer.spool is not None:
            spool = writer.spool
            self.metrics.spool_records.set_function(lambda: spool.records)
            self.metrics.spool_bytes.set_function(lambda: spool.size)
        self.metrics.spool_full.set_function(lambda: int(writer.spool_full))
        self.controls = Controls(settings, self.store, self.metrics)
        self.breakers = CircuitBreakers.from_settings(settings.circuit_breaker)
        for targets in (settings.models or {}).values():
            self.breakers.register(targets)
        self.tracing = Tracing.from_environment(settings)  # None without OTEL_* endpoint
        self.proxy = ProxyHandler(
            settings, self.keys, self.writer, self.metrics, PriceBook(settings.prices),
            self.controls, self.breakers, self.tracing,
        )  # fmt: skip
        self.metrics_endpoint = MetricsEndpoint(self.metrics, m, self.breakers, metrics_dir)
        self.api = create_api(self.store, self.keys, self.controls, self.breakers, settings)
        self.retention = Retention(
            self.store,
            settings.retention,
            on_purged=lambda kind, n: self.metrics.retention_purged.labels(kind).inc(n),
        )
        self.alerts = Alerts(settings, self.store, self.controls, self.metrics)
        self._tasks: list[asyncio.Task[None]] = []
        self.started = False

    async def startup(self) -> None:
        await asyncio.to_thread(self.store.migrate)
        if self.settings.admin_key is not None:
            await asyncio.to_thread(
                self.store.ensure_key,
                key_id=ADMIN_KEY_ID,
                name="admin",
                key_hash=hash_key(self.settings.admin_key.get_secret_value()),
                user="admin",
                org="default",
                role="owner",
            )
        else:  # the bootstrap key was taken out of the configuration: it stops working
            await asyncio.to_thread(
                self.store.revoke_entity, "keys", Scope("owner", "", ""), ADMIN_KEY_ID
            )
        await asyncio.to_thread(warm_price_table)
        if self.settings.redis:
            self.controls.use_redis(self.settings.redis)
            await self.breakers.use_redis(self.settings.redis)
        self.writer.start()
        await self.proxy.start()
        if self.tracing is not None:
            await self.tracing.start()
        self._tasks.append(asyncio.create_task(self.keys.watch()))
        self._tasks.append(asyncio.create_task(self.retention.loop()))
        await self.alerts.start()
        snapshots = await self.metrics_endpoint.start()
        if snapshots is not None:
            self._tasks.append(snapshots)
        self.started = True
        # Everything built so far lives as long as the process: keep it out of the collector's
        # generations so collections stay short (long GC pauses show up as p99 latency).
        gc.collect()
        gc.freeze()
        log.info(
            "gatewatch ready: %d provider(s), database %s",
            len(self.settings.providers),
            self.settings.database,
        )

    async def shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.alerts.close()
        await self.proxy.close()
        if self.tracing is not None:
            await self.tracing.close()
        await self.controls.close()
        await self.breakers.close()
        pending = self.writer.pending
        await asyncio.to_thread(self.writer.close, self.settings.shutdown_timeout)
        if self.writer.spool is None and self.writer.pending:
            log.error(
                "the database did not take %d record(s) within %.0fs of shutdown; they are lost",
                self.writer.pending,
                self.settings.shutdown_timeout,
            )
        else:
            log.info(
                "stored %d pending record(s) before exit",
                max(pending - self.writer.left_in_spool, 0),
            )
        await asyncio.to_thread(self.store.close)
        self.metrics_endpoint.close()

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path: str = scope["path"]
            matched = match_proxy_path(path)
            if matched is not None:
                await self.proxy(scope, receive, send, *matched)
                return
            if path == "/metrics":
                await self.metrics_endpoint(scope, send)
                return
            if path == "/readyz":
                await self._readyz(send)
                return
            await self.api(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:  # websocket: not served
            await self.api(scope, receive, send)

    def readiness(self) -> tuple[int, dict[str, object]]:
        """``GET /readyz``: 200 while the gateway serves and keeps every record (stored, or
        spooled while the database is away: "degraded"), 503 before it is started or while it
        turns traffic away (spool full with ``on_full: refuse``)."""
        writer = self.writer.state()
        session = self.proxy.session
        checks: dict[str, dict[str, object]] = {
            "config": {"ok": True, "providers": len(self.settings.providers)},
            "store": {
                "ok": writer["state"] == "ok",
                "state": writer["state"],  # ok | spooling
                "last_error": writer["last_error"],
                "queued": writer["queued"],
            },
            "spool": {
                "ok": not writer["spool_full"],
                "enabled": self.writer.spool is not None,
                "records": writer["spool_records"],
                "bytes": writer["spool_bytes"],
                "max_bytes": writer["spool_max_bytes"],
                "full": writer["spool_full"],
                "on_full": self.settings.spool.on_full,
            },
            "records": {"ok": not writer["dropped"], "dropped": writer["dropped"]},
            "upstream": {"ok": session is not None and not session.closed},
        }
        degraded = [name for name, check in checks.items() if not check["ok"]]
        if not self.started or not checks["upstream"]["ok"] or self.writer.refusing:
            status, code = "unavailable", 503
        else:
            status, code = ("degraded" if degraded else "ready"), 200
        return code, {"status": status, "degraded": degraded, "checks": checks}

    async def _readyz(self, send: Send) -> None:
        code, body = self.readiness()
        payload = orjson.dumps(body)
        await send(
            {
                "type": "http.response.start",
                "status": code,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message: Message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("gatewatch failed to start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.shutdown()
                finally:
                    await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(settings: Settings, metrics_dir: str | None = None) -> Gateway:
    """``metrics_dir``: the directory the workers of ``serve --workers N`` share their metrics
    through (gatewatch/metrics_endpoint.py)."""
    return Gateway(settings, metrics_dir=metrics_dir)


def app_from_environment() -> Gateway:
    """The factory ``gatewatch serve --workers N`` gives each worker process."""
    from gatewatch.settings import load_settings

    return create_app(load_settings(), os.environ.get("GATEWATCH_METRICS_DIR"))

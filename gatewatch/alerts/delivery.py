"""Webhook delivery of alert firings and resolutions: the bodies (Slack-compatible or plain
JSON) and a sender with its own asyncio task, a bounded queue, a per-attempt timeout, a few
deliveries at a time, and retries with exponential backoff. Nothing here runs on the request
path: a webhook receiver that hangs or fails only delays its own deliveries."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from gatewatch.metrics import Metrics
from gatewatch.settings import AlertSettings, AlertWebhook
from gatewatch.store import Store

__all__ = ["CONCURRENCY", "Deliverer", "Job", "json_body", "slack_body"]

log = logging.getLogger("gatewatch.alerts")

CONCURRENCY = 8  # deliveries in progress at once (a hanging receiver holds one each)
_RETRY_STATUS = {408, 425, 429}  # besides every 5xx; other 4xx answers are not retried


def _url(event: dict[str, Any], base_url: str | None) -> str:
    return f"{(base_url or '').rstrip('/')}/api/v1/alerts/{event['id']}"


def json_body(event: dict[str, Any], base_url: str | None) -> dict[str, Any]:
    """The plain JSON body: the event's facts."""
    return {
        "id": event["id"],
        "rule": event["rule"],
        "rule_id": event["rule_id"],
        "type": event["type"],
        "state": event["state"],
        "subject": event["subject"],
        "subject_id": event.get("subject_id"),
        "org_id": event.get("org_id"),
        "value": event["value"],
        "threshold": event["threshold"],
        "started_at": event["started_at"],
        "resolved_at": event.get("resolved_at"),
        "firing_id": event.get("firing_id"),
        "message": event["message"],
        "details": event.get("details") or {},
        "url": _url(event, base_url),
    }


def slack_body(event: dict[str, Any], base_url: str | None) -> dict[str, Any]:
    """``{"text": …}`` (Slack incoming webhooks, Mattermost, Discord's /slack endpoint, …)."""
    firing = event["state"] == "firing"
    head = ":rotating_light: *FIRING*" if firing else ":white_check_mark: *RESOLVED*"
    since = f"since {event['started_at']}"
    if not firing:
        since = f"fired {event['started_at']}, resolved {event.get('resolved_at')}"
    text = (
        f"{head} `{event['rule']}` ({event['type']}) — {event['subject']}\n"
        f"{event['message']}\n"
        f"value {event['value']}, threshold {event['threshold']}; {since}\n"
        f"{_url(event, base_url)}"
    )
    return {"text": text}


@dataclass(slots=True)
class Job:
    delivery_id: str
    webhook: AlertWebhook
    event: dict[str, Any]
    attempts: int = 0  # already made (a delivery resumed after a restart)


class Deliverer:
    """Sends jobs from a bounded queue; each delivery's progress is stored on its row."""

    def __init__(
        self,
        settings: AlertSettings,
        store: Store,
        metrics: Metrics,
        clock: Callable[[], float],
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.transport = transport
        self.sleep = sleep
        self.queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=settings.queue_size)
        self.client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(CONCURRENCY)

    def start(self) -> None:
        self.client = httpx.AsyncClient(transport=self.transport, follow_redirects=False)
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._running) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    @property
    def busy(self) -> int:
        """Deliveries queued or in progress."""
        return self.queue.qsize() + len(self._running)

    def submit(self, job: Job) -> bool:
        """Queue a delivery without waiting; a full queue drops it (stored as ``dropped``)."""
        try:
            self.queue.put_nowait(job)
            return True
        except asyncio.QueueFull:
            self.metrics.alert_deliveries.labels("dropped").inc()
            log.warning("alert delivery queue full: dropped a delivery to %s", job.webhook.name)
            self._spawn(self._store(job, "dropped", job.attempts, None, "delivery queue full"))
            return False

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self) -> None:
        while True:
            job = await self.queue.get()
            await self._slots.acquire()
            task = asyncio.create_task(self._deliver(job))
            self._running.add(task)

            def done(t: asyncio.Task[None]) -> None:
                self._running.discard(t)
                self._slots.release()

            task.add_done_callback(done)

    async def _store(
        self, job: Job, status: str, attempts: int, code: int | None, error: str | None
    ) -> None:
        try:
            await asyncio.to_thread(
                self.store.update_alert_delivery, job.delivery_id, status=status,
                attempts=attempts, at=self.clock(), status_code=code, error=error,
            )  # fmt: skip
        except Exception:
            log.exception("could not store the progress of an alert delivery")

    async def _attempt(self, job: Job) -> tuple[bool, int | None, str | None]:
        """One POST: (retry worth it, status code, error or None when delivered)."""
        assert self.client is not None
        hook = job.webhook
        make = slack_body if hook.format == "slack" else json_body
        body = orjson.dumps(make(job.event, self.settings.base_url))
        headers = {"content-type": "application/json", "user-agent": "gatewatch-alerts"}
        headers.update({k: v.get_secret_value() for k, v in hook.headers.items()})
        try:
            async with asyncio.timeout(hook.timeout + 1):  # the client's timeout, with a guard
                r = await self.client.post(
                    hook.url.get_secret_value(), content=body, headers=headers,
                    timeout=hook.timeout,
                )  # fmt: skip
        except (httpx.HTTPError, TimeoutError, OSError) as exc:
            return True, None, f"{type(exc).__name__}: {exc}".rstrip(": ")
        if 200 <= r.status_code < 300:
            return False, r.status_code, None
        retry = r.status_code >= 500 or r.status_code in _RETRY_STATUS
        return retry, r.status_code, f"HTTP {r.status_code}: {r.text[:200]}"

    async def _deliver(self, job: Job) -> None:
        s = self.settings
        attempt = job.attempts
        while True:
            attempt += 1
            retry, code, error = await self._attempt(job)
            if error is None:
                self.metrics.alert_deliveries.labels("delivered").inc()
                await self._store(job, "delivered", attempt, code, None)
                return
            if not retry or attempt >= s.max_attempts:
                self.metrics.alert_deliveries.labels("failed").inc()
                log.warning(
                    "alert delivery to webhook %s failed after %d attempt(s): %s",
                    job.webhook.name, attempt, error,
                )  # fmt: skip
                await self._store(job, "failed", attempt, code, error)
                return
            self.metrics.alert_deliveries.labels("retried").inc()
            await self._store(job, "retrying", attempt, code, error)
            await self.sleep(min(s.backoff * 2 ** (attempt - 1), s.max_backoff))

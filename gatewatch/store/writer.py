"""The record pipeline: the request path enqueues, one thread stores batches in transactions."""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable

import orjson

from gatewatch.records import Record
from gatewatch.store.base import Store

__all__ = ["RecordWriter"]

log = logging.getLogger("gatewatch.records")
_STOP = object()
_GATEWAY_KEY = re.compile(rb"gw-[A-Za-z0-9_\-]{16,}")


class _Redactor:
    """Removes configured provider keys and gateway keys from what is stored (§T2)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = [s.encode() for s in secrets if s and len(s) >= 8]

    def _scrub(self, raw: bytes) -> bytes:
        if b"gw-" in raw:
            raw = _GATEWAY_KEY.sub(b"[REDACTED]", raw)
        for secret in self.secrets:
            if secret in raw:
                raw = raw.replace(secret, b"[REDACTED]")
        return raw

    def __call__(self, body: object) -> bytes | None:
        """A body (raw bytes, or a reassembled message) → bytes safe to store."""
        if body is None:
            return None
        return self._scrub(body if isinstance(body, bytes) else orjson.dumps(body))

    def text(self, value: str | None) -> str | None:
        if not value:
            return value
        raw = value.encode()
        cleaned = self._scrub(raw)
        return value if cleaned is raw else cleaned.decode("utf-8", "replace")


class RecordWriter:
    """A bounded queue in front of ``store.insert_records``.

    ``submit`` never blocks: when the queue is full the record is dropped, logged and counted.
    ``close`` stores everything still queued before it returns."""

    def __init__(
        self,
        store: Store,
        *,
        max_pending: int,
        batch_size: int,
        secrets: Iterable[str] = (),
        on_drop: Callable[[], None] = lambda: None,
        keep_bodies: bool = True,
        linger: float = 0.1,
    ) -> None:
        self.store = store
        self.batch_size = batch_size
        self.linger = linger
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_pending)
        self._on_drop = on_drop
        self._redact = _Redactor(secrets)
        self._keep_bodies = keep_bodies
        self._last_drop_log = 0.0
        self.dropped = 0
        self.stored = 0
        self._thread = threading.Thread(target=self._run, name="gatewatch-writer", daemon=True)
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    @property
    def pending(self) -> int:
        """Records submitted and not yet stored: queued or in the batch being written (the
        queue counts them from put to task_done, under its own lock, so no record is ever
        between two counts)."""
        return self._queue.unfinished_tasks

    def submit(self, record: Record) -> None:
        redact = self._redact
        if self._keep_bodies:
            record.request_body = redact(record.request_body)
            record.response_body = redact(record.response_body)
            record.last_user_prompt = redact.text(record.last_user_prompt)
            for call in record.tool_calls:
                call.arguments = redact.text(call.arguments) or ""
        else:  # metadata_only: no prompt, no response, no tool arguments
            record.request_body = record.response_body = record.last_user_prompt = None
            for call in record.tool_calls:
                call.arguments = ""
        record.error_message = redact.text(record.error_message)
        try:
            self._queue.put_nowait(self.store.prepare(record))
        except queue.Full:
            self.dropped += 1
            self._on_drop()
            now = time.monotonic()
            if now - self._last_drop_log > 5:
                self._last_drop_log = now
                log.error(
                    "record queue full (%d pending): dropped request record %s "
                    "(%d dropped so far); the database is not keeping up",
                    self._queue.qsize(),
                    record.id,
                    self.dropped,
                )

    def close(self, timeout: float | None = None) -> None:
        """Store every queued record, then stop the thread."""
        if not self._started:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            batch: list[object] = []
            if item is _STOP:
                stopping = True
                self._queue.task_done()
            else:
                batch.append(item)
            # Linger briefly so that one transaction carries many records: fewer commits means
            # less work per record and no commit stall behind every single request.
            deadline = time.monotonic() + self.linger
            while len(batch) < self.batch_size and not stopping:
                remaining = deadline - time.monotonic()
                try:
                    item = (
                        self._queue.get(timeout=remaining)
                        if remaining > 0
                        else self._queue.get_nowait()
                    )
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    self._queue.task_done()
                else:
                    batch.append(item)
            if batch:
                self._store(batch)
                for _ in batch:
                    self._queue.task_done()
        # drain whatever raced in behind the stop marker
        rest = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                self._queue.task_done()
            else:
                rest.append(item)
        if rest:
            self._store(rest)
            for _ in rest:
                self._queue.task_done()

    def _store(self, batch: list[object]) -> None:
        delay = 0.05
        while True:
            try:
                self.store.insert_prepared(batch)
                self.stored += len(batch)
                return
            except Exception:
                log.exception("storing %d records failed; retrying in %.1fs", len(batch), delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

"""The record pipeline: the request path enqueues, one thread stores batches in transactions."""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import orjson

from gatewatch.records import Record
from gatewatch.store.base import Store
from gatewatch.store.spool import Spool

__all__ = ["RecordWriter"]

log = logging.getLogger("gatewatch.records")
_STOP = object()
_GATEWAY_KEY = re.compile(rb"gw-[A-Za-z0-9_\-]{16,}")


class _Redactor:
    """Removes configured provider keys and gateway keys from what is stored (§T2), and what
    the ``redact`` patterns match (emails, card numbers…) from bodies, prompts and tool
    arguments. Patterns apply to the text of JSON strings, never to the JSON around them, so
    a stored body stays valid JSON whatever a pattern matches."""

    def __init__(self, secrets: Iterable[str], patterns: Sequence[str] = ()) -> None:
        self.secrets = [s.encode() for s in secrets if s and len(s) >= 8]
        self.patterns = [re.compile(p) for p in patterns]

    def _scrub(self, raw: bytes) -> bytes:
        if b"gw-" in raw:
            raw = _GATEWAY_KEY.sub(b"[REDACTED]", raw)
        for secret in self.secrets:
            if secret in raw:
                raw = raw.replace(secret, b"[REDACTED]")
        return raw

    def _sub(self, text: str) -> str:
        for pattern in self.patterns:
            text = pattern.sub("[REDACTED]", text)
        return text

    def _walk(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._sub(value)
        if isinstance(value, list):
            return [self._walk(v) for v in value]
        if isinstance(value, dict):
            return {k: self._walk(v) for k, v in value.items()}
        return value

    def __call__(self, body: object) -> bytes | None:
        """A body (raw bytes, or a reassembled message) → bytes safe to store."""
        if body is None:
            return None
        raw = body if isinstance(body, bytes) else None
        if self.patterns:
            value = body
            if isinstance(body, bytes):
                try:
                    value = orjson.loads(body)
                except orjson.JSONDecodeError:  # not JSON: the patterns apply to the text
                    return self._scrub(self._sub(body.decode("utf-8", "replace")).encode())
            raw = orjson.dumps(self._walk(value))
        return self._scrub(raw if raw is not None else orjson.dumps(body))

    def text(self, value: str | None) -> str | None:
        if not value:
            return value
        if self.patterns:
            value = self._sub(value)
        raw = value.encode()
        cleaned = self._scrub(raw)
        return value if cleaned is raw else cleaned.decode("utf-8", "replace")


class RecordWriter:
    """A bounded queue in front of ``store.insert_prepared``, and a durable spool behind it.

    ``submit`` never blocks: it queues the record (when even the queue is full, the record is
    dropped, logged and counted). One thread stores batches in transactions. When a batch
    fails, or the database takes longer than ``spill_after`` seconds over one, or the queue
    backs up, records go to the spool on disk instead (``Spool``) and the writer replays the
    spool, in order, until the database takes everything again; then it goes back to the
    queue. A guard thread does the spilling and fsyncs the spool several times a second, so a
    killed process loses at most the records of its last ``spill_after`` + a fraction of a
    second. ``close`` stores everything still queued, or spools what the database will not
    take in time; the next start replays it."""

    def __init__(
        self,
        store: Store,
        *,
        max_pending: int,
        batch_size: int,
        secrets: Iterable[str] = (),
        redact: Sequence[str] = (),
        on_drop: Callable[[int], object] = lambda n: None,
        keep_bodies: bool = True,
        linger: float = 0.1,
        spool: Spool | None = None,
        spill_after: float = 0.5,
        on_full: Literal["drop_oldest", "refuse"] = "drop_oldest",
    ) -> None:
        self.store = store
        self.batch_size = batch_size
        self.linger = linger
        self.spool = spool
        self.spill_after = spill_after
        self.on_full = on_full
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_pending)
        self._on_drop = on_drop
        self._redact = _Redactor(secrets, redact)
        self._keep_bodies = keep_bodies
        self._last_drop_log = 0.0
        self.dropped = 0
        self.stored = 0
        self.spooled = 0  # records written to the spool, ever
        self.replayed = 0  # records stored from the spool
        self.last_error: str | None = None
        self.spool_full = False
        self.left_in_spool = 0  # records close() left in the spool for the next start
        # _lock guards the spool and the state below; the database is never called under it
        self._lock = threading.Lock()
        self._spooling = False
        self._inflight: list[object] | None = None
        self._inflight_since = 0.0
        self._inflight_spooled = False
        self._stop_seen = False
        self._closed = False
        self._deadline = float("inf")
        self._guard_stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gatewatch-writer", daemon=True)
        self._guard = threading.Thread(target=self._watch, name="gatewatch-spool", daemon=True)
        self._started = False

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        if self.spool is not None:
            with self._lock:
                if self.spool.adopt_orphans():
                    self._spooling = True
            self._guard.start()
        self._thread.start()

    @property
    def pending(self) -> int:
        """Records submitted and not yet stored: queued, in the batch being written, or in the
        spool (the queue counts them from put to task_done under its own lock, and a record
        is counted in the spool before it leaves the queue, so none is ever between counts)."""
        spooled = self.spool.records if self.spool is not None else 0
        return self._queue.unfinished_tasks + spooled

    @property
    def spooling(self) -> bool:
        return self._spooling

    @property
    def refusing(self) -> bool:
        """True while the spool is full and ``on_full: refuse`` turns traffic away."""
        return self.spool_full and self.on_full == "refuse"

    def state(self) -> dict[str, object]:
        """For /readyz and the metrics."""
        spool = self.spool
        return {
            "state": "spooling" if self._spooling else "ok",
            "queued": self._queue.qsize(),
            "spool_records": spool.records if spool is not None else 0,
            "spool_bytes": spool.size if spool is not None else 0,
            "spool_max_bytes": spool.max_bytes if spool is not None else 0,
            "spool_full": self.spool_full,
            "dropped": self.dropped,
            "last_error": self.last_error,
        }

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
            self._drop(1, f"record queue full: dropped request record {record.id}")

    def _drop(self, count: int, why: str) -> None:
        self.dropped += count
        self._on_drop(count)
        now = time.monotonic()
        if now - self._last_drop_log > 5:
            self._last_drop_log = now
            log.error("%s (%d dropped so far); the database is not keeping up", why, self.dropped)

    def close(self, timeout: float | None = None) -> None:
        """Store every queued record; what the database does not take within ``timeout``
        seconds stays in the spool for the next start. Then stop the threads."""
        if not self._started:
            return
        wait = 30.0 if timeout is None else timeout
        self._deadline = time.monotonic() + wait
        self._queue.put(_STOP)
        self._thread.join(wait + 1.0)
        if self.spool is None:
            return
        self._guard_stop.set()
        self._guard.join(5.0)
        with self._lock:
            left = 0
            if self._inflight is not None and not self._inflight_spooled:
                self._spill(self._inflight, force=True)
                self._inflight_spooled = True
            left = self._drain_to_spool(force=True)
            self._closed = True
            waiting = self.left_in_spool = self.spool.records
            self.spool.close()
        if waiting:
            log.warning(
                "%d record(s) wait in the spool (%s) for the database; the next start stores"
                " them%s",
                waiting,
                self.spool.dir,
                f" ({left} spooled at shutdown)" if left else "",
            )

    # ---- the writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        while not self._closed:
            if self._spooling:
                if self._stop_seen and time.monotonic() > self._deadline:
                    return
                self._replay_some()
                continue
            batch, stop = self._collect()
            if batch:
                self._store(batch)
            if stop and not self._spooling:
                # drain whatever raced in behind the stop marker
                rest = self._collect_now()
                if rest:
                    self._store(rest)
                if not self._spooling:
                    return

    def _collect(self) -> tuple[list[object], bool]:
        """A batch from the queue: wait for a first record, then linger briefly so that one
        transaction carries many records (fewer commits, no commit stall behind each request)."""
        try:
            item = self._queue.get(timeout=0.25)
        except queue.Empty:
            return [], self._stop_seen
        batch: list[object] = []
        if item is _STOP:
            self._stop_seen = True
            self._queue.task_done()
            return batch, True
        batch.append(item)
        deadline = time.monotonic() + self.linger
        while len(batch) < self.batch_size:
            remaining = deadline - time.monotonic()
            try:
                if remaining > 0:
                    item = self._queue.get(timeout=remaining)
                else:
                    item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                self._stop_seen = True
                self._queue.task_done()
                return batch, True
            batch.append(item)
        return batch, self._stop_seen

    def _collect_now(self) -> list[object]:
        """Everything queued now, without waiting (a stop marker among it is noted)."""
        rest: list[object] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return rest
            if item is _STOP:
                self._stop_seen = True
                self._queue.task_done()
            else:
                rest.append(item)

    def _store(self, batch: list[object]) -> None:
        """Store a batch from the queue; on failure it goes to the spool (or, with no spool,
        is retried here until it is stored)."""
        with self._lock:
            self._inflight, self._inflight_since = batch, time.monotonic()
            self._inflight_spooled = False
        error: Exception | None = None
        try:
            self.store.insert_prepared(batch)
        except Exception as exc:
            error = exc
        with self._lock:
            self._inflight = None
            if error is None:
                self.stored += len(batch)
            elif self.spool is not None and not self._closed:
                self._failed(error)
                if not self._inflight_spooled:
                    self._spill(batch, force=True)
                self._spooling = True
        if error is not None and self.spool is None:
            self._retry(batch, error)
        for _ in batch:
            self._queue.task_done()

    def _retry(self, batch: list[object], error: Exception) -> None:
        delay = 0.05
        while True:
            log.error("storing %d records failed (%s); retrying in %.1fs", len(batch), error, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
            try:
                self.store.insert_prepared(batch)
            except Exception as exc:
                error = exc
                continue
            self.stored += len(batch)
            return

    def _failed(self, error: Exception) -> None:
        first = self.last_error is None
        self.last_error = f"{type(error).__name__}: {error}"
        if first:
            log.error("storing records failed (%s); records go to the spool", self.last_error)

    def _replay_some(self) -> None:
        """Store the oldest batch of the spool; back to the queue once it is all stored."""
        spool = self.spool
        assert spool is not None
        with self._lock:
            if self._closed:
                return
            seg = spool.segments[0] if spool.segments else None
            if seg is None or (seg is spool.segments[-1] and seg.done_bytes >= seg.size):
                spool.reset_active()
                self._spooling = False
                self.spool_full = False
                if self.last_error is not None or self.replayed:
                    log.warning(
                        "the database takes records again: %d stored from the spool",
                        self.replayed,
                    )
                self.last_error = None
                return
            payloads, end, lines = spool.read(seg, self.batch_size)
        batch: list[object] = []
        for payload in payloads:
            try:
                batch.append(self.store.spool_decode(payload))
            except Exception:
                log.exception("spool %s: a record could not be read; skipped", seg.name)
        try:
            if batch:
                self.store.insert_prepared(batch)
        except Exception as exc:
            with self._lock:
                self._failed(exc)
            self._guard_stop.wait(self._backoff())
            return
        self._backoff_s = 0.0
        with self._lock:
            spool.mark_done(seg, end, lines)
            self.stored += len(batch)
            self.replayed += len(batch)
            self.spool_full = spool.size >= spool.max_bytes

    _backoff_s = 0.0

    def _backoff(self) -> float:
        self._backoff_s = min(max(self._backoff_s * 2, 0.1), 2.0)
        return self._backoff_s

    # ---- the guard thread ------------------------------------------------------------------

    def _watch(self) -> None:
        spool = self.spool
        assert spool is not None
        last_sync = last_adopt = time.monotonic()
        while not self._guard_stop.wait(0.1):
            with self._lock:
                if self._closed:
                    return
                now = time.monotonic()
                inflight = self._inflight
                if (
                    inflight is not None
                    and not self._inflight_spooled
                    and now - self._inflight_since > self.spill_after
                ):
                    log.warning(
                        "the database has not stored a batch of %d records in %.1fs: spooling",
                        len(inflight),
                        now - self._inflight_since,
                    )
                    self._spill(inflight, force=True)
                    self._inflight_spooled = True
                    self._spooling = True
                elif not self._spooling and self._queue.qsize() > 2 * self.batch_size:
                    log.warning(
                        "%d records queued: the database is not keeping up; spooling",
                        self._queue.qsize(),
                    )
                    self._spooling = True
                if self._spooling:
                    self._drain_to_spool()
                if spool.dirty and now - last_sync >= 0.2:
                    spool.sync()
                    last_sync = now
                if now - last_adopt >= 30.0:
                    last_adopt = now
                    if spool.adopt_orphans():
                        self._spooling = True

    def _drain_to_spool(self, force: bool = False) -> int:
        """Move what is queued to the spool (under ``_lock``); the count moved."""
        if self.refusing and not force:
            return 0  # full: records wait in memory (and the proxy turns traffic away)
        items = self._collect_now()
        if items:
            self._spill(items, force=force)
            for _ in items:
                self._queue.task_done()
        return len(items)

    def _spill(self, items: Sequence[object], force: bool = False) -> None:
        """Append records to the spool (under ``_lock``), making room by the configured policy."""
        spool = self.spool
        assert spool is not None
        payloads = [self.store.spool_encode(item) for item in items]
        size = sum(len(p) + 10 for p in payloads)
        if not spool.room(size):
            if self.on_full == "drop_oldest":
                while spool.segments and not spool.room(size):
                    oldest = spool.segments[0]
                    lost = oldest.waiting
                    spool.remove(oldest)
                    self._drop(lost, f"spool full ({spool.max_bytes} bytes): dropped the oldest"
                               f" {lost} spooled records")  # fmt: skip
            if not spool.room(size):
                if not self.spool_full:
                    log.error(
                        "the spool is full (%d bytes, limit %d)%s",
                        spool.size,
                        spool.max_bytes,
                        ": refusing new requests until the database takes records again"
                        if self.on_full == "refuse"
                        else "",
                    )
                self.spool_full = True
        spool.append(payloads)
        self.spooled += len(payloads)
        if self.on_full == "refuse" and not spool.room(0):
            self.spool_full = True

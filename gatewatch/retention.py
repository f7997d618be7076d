"""Retention (§T1): the background purge of old records, old content and old usage rollups.

Records older than ``retention.days`` go (with their facets and bodies); bodies, prompts and tool
arguments older than ``retention.content_days`` go while the metadata row stays; usage rollups
older than ``retention.aggregate_days`` go, so the rollups outlive the records they summarise.
Organizations may keep theirs longer or shorter (``retention.orgs``). The purge deletes in small
batches, each its own short transaction with a pause after it, so the record writer and the
proxy never wait long; one process at a time runs it (a lease in the database)."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gatewatch.settings import RetentionSettings
from gatewatch.store import Store

__all__ = ["Retention", "Step"]

log = logging.getLogger("gatewatch.retention")
DAY = 86400


@dataclass(frozen=True, slots=True)
class Step:
    kind: str  # records | content | rollups
    before: float
    org: str | None = None  # an organization with its own setting (its name)
    org_id: str | None = None
    exclude: tuple[str, ...] = ()  # org ids with their own setting (the default step skips them)
    keep_after: float | None = None  # content: only of records the records step keeps

    @property
    def label(self) -> str:
        return f"{self.kind}{f' of {self.org}' if self.org else ''}"


class Retention:
    """The purge. Between two batches it rests ``pause`` seconds, or ``rest`` times as long as
    the batch took if that is longer: the record writer (and another process's writer) gets
    the database, and a long backlog takes at most about 1 / (1 + rest) of a core."""

    def __init__(
        self,
        store: Store,
        settings: RetentionSettings,
        on_purged: Callable[[str, int], None] = lambda kind, n: None,
        pause: float = 0.02,
        rest: float = 0.25,
    ) -> None:
        self.store = store
        self.settings = settings
        self.on_purged = on_purged
        self.pause = pause
        self.rest = rest
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._stopping = threading.Event()  # set when the loop ends: a purge under way stops

    def plan(self, now: float | None = None) -> list[Step]:
        """What a purge at ``now`` removes, as steps: the defaults for every organization
        without its own setting, then each organization that has one."""
        now = time.time() if now is None else now
        s = self.settings
        ids = self.store.org_ids(sorted(s.orgs))
        steps: list[Step] = []

        def scope(days: int, content_days: int, **where: Any) -> None:
            records_before = now - days * DAY if days else None
            if records_before is not None:
                steps.append(Step("records", records_before, **where))
            if content_days:
                steps.append(Step("content", now - content_days * DAY,
                                  keep_after=records_before, **where))  # fmt: skip

        scope(s.days, s.content_days, exclude=tuple(sorted(ids.values())))
        for name in sorted(ids):
            own = s.orgs[name]
            days = s.days if own.days is None else own.days
            content = s.content_days if own.content_days is None else own.content_days
            scope(days, content, org=name, org_id=ids[name])
        if s.aggregate_days:
            steps.append(Step("rollups", (now - s.aggregate_days * DAY) // DAY * DAY))
        return steps

    def run_once(
        self,
        now: float | None = None,
        dry_run: bool = False,
        keep_lease: Callable[[], bool] = lambda: True,
    ) -> dict[str, int]:
        """Purge (or, ``dry_run``, count) everything due now; returns counts per step label.
        ``keep_lease`` is asked between batches whether this process may go on (it renews the
        lease); a purge stops early when it says no or when the loop is stopped."""
        counts: dict[str, int] = {}
        for step in self.plan(now):
            if self._stopping.is_set():
                break
            if step.kind == "rollups":
                n = self.store.purge_rollups(int(step.before), dry_run=dry_run)
            elif dry_run:
                n = self.store.count_purgeable(
                    step.kind, step.before, step.org_id, step.exclude, step.keep_after
                )
            else:
                n = self._purge(step, keep_lease)
            counts[step.label] = counts.get(step.label, 0) + n
            if n and not dry_run:
                self.on_purged(step.kind, n)
        return counts

    def _purge(self, step: Step, keep_lease: Callable[[], bool]) -> int:
        """One step's batches, oldest first, each its own short transaction."""
        n = 0
        after: str | None = None
        while True:
            started = time.monotonic()
            done, after = self.store.purge_batch(
                step.kind, step.before, self.settings.batch, step.org_id, step.exclude, after
            )
            n += done
            if done < self.settings.batch:
                return n
            took = time.monotonic() - started
            if self._stopping.wait(max(self.pause, took * self.rest)) or not keep_lease():
                return n

    async def loop(self) -> None:
        """Purge every ``retention.interval`` seconds (jittered by ±20 %, so the processes and
        nodes sharing a database do not all try at once), when this process holds the purge
        lease. The purge runs in a worker thread: the event loop never waits on it. The lease
        is renewed while a long purge runs; cancelling the loop stops the purge after its
        current batch."""
        interval = self.settings.interval
        lease = interval * 3
        renewed = 0.0

        def keep_lease() -> bool:
            nonlocal renewed
            if time.monotonic() - renewed < interval:
                return True
            renewed = time.monotonic()
            return self.store.acquire_lease("retention", self.holder, lease)

        try:
            while True:
                await asyncio.sleep(interval * random.uniform(0.8, 1.2))
                try:
                    held = await asyncio.to_thread(
                        self.store.acquire_lease, "retention", self.holder, lease
                    )
                    if not held:
                        continue
                    renewed = started = time.monotonic()
                    counts = await asyncio.to_thread(self.run_once, keep_lease=keep_lease)
                    if any(counts.values()):
                        log.info(
                            "retention purge removed %s in %.1fs",
                            ", ".join(f"{n} {label}" for label, n in counts.items() if n),
                            time.monotonic() - started,
                        )
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("retention purge failed; retrying at the next interval")
        finally:
            self._stopping.set()

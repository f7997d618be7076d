"""The store interface every engine implements (SQLite is the reference)."""

from __future__ import annotations

import abc
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from gatewatch.records import Record
from gatewatch.store.query import RequestQuery, Scope
from gatewatch.store.rollups import UsageRows, UsageSpec

__all__ = [
    "Identity",
    "Page",
    "ScopeLimits",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "without_nul",
]

# a JSON string's NUL character, not an escaped backslash followed by "u0000"
_NUL = re.compile(rb"(?<!\\)((?:\\\\)*)\\u0000")


def without_nul(json_text: bytes) -> bytes:
    """JSON text with every U+0000 in its strings made U+FFFD: SQLite's JSON functions cut a
    string at it and PostgreSQL's text cannot hold it, so both engines store U+FFFD. (A body is
    stored as JSON text inside the record's JSON, so its own escapes are kept.)"""
    return _NUL.sub(rb"\1\\ufffd", json_text) if b"\\u0000" in json_text else json_text


class StoreError(Exception):
    """A store operation that cannot be done (conflict, not found); the message says why."""


class StoreUnavailable(Exception):
    """The database cannot take a write now (locked by another process, down, out of disk):
    worth trying again later."""


@dataclass(frozen=True, slots=True)
class ScopeLimits:
    """The budget and rate limits set on one of a key's scopes (its key, user or org)."""

    scope: str  # key | user | org
    scope_id: str
    name: str
    budget_usd: float | None
    budget_period: str
    rpm: int | None
    tpm: int | None


@dataclass(frozen=True, slots=True)
class Identity:
    """Everything the proxy needs to know about a presented key, cached in memory."""

    key_id: str
    key_name: str
    user_id: str
    user_name: str
    org_id: str
    org_name: str
    role: str
    revoked: bool = False
    limits: tuple[ScopeLimits, ...] = ()

    @property
    def scope(self) -> Scope:
        role = self.role if self.role in ("member", "admin", "owner") else "member"
        return Scope(role, self.org_id, self.user_id)  # type: ignore[arg-type]


@dataclass(slots=True)
class Page:
    count: int
    results: list[dict[str, Any]]
    next_after_id: str | None


class Store(abc.ABC):
    """Methods are synchronous and thread-safe; callers on an event loop run them in a thread."""

    @abc.abstractmethod
    def migrate(self) -> list[str]: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    # request records
    @abc.abstractmethod
    def prepare(self, record: Record) -> object:
        """Turn a record into what ``insert_prepared`` stores (cheap; runs on the request path,
        so the writer thread spends its time in the database, not in Python)."""

    @abc.abstractmethod
    def insert_prepared(self, batch: Sequence[object]) -> None:
        """Store prepared records in one transaction; storing one twice is harmless."""

    @abc.abstractmethod
    def spool_encode(self, prepared: object) -> bytes:
        """A prepared record as one line of JSON for the durable spool (no newline in it)."""

    @abc.abstractmethod
    def spool_decode(self, payload: bytes) -> object:
        """The prepared record back from ``spool_encode``'s bytes."""

    def insert_records(self, records: Sequence[Record]) -> None:
        self.insert_prepared([self.prepare(r) for r in records])

    @abc.abstractmethod
    def list_requests(
        self, scope: Scope, query: RequestQuery, limit: int, after_id: str | None
    ) -> Page: ...

    @abc.abstractmethod
    def get_request(self, scope: Scope, request_id: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    def iter_requests(
        self, scope: Scope, query: RequestQuery, page_size: int = 1000
    ) -> Iterator[dict[str, Any]]: ...

    @abc.abstractmethod
    def export_pages(
        self,
        scope: Scope,
        query: RequestQuery,
        columns: Sequence[str],
        fmt: str,
        page_size: int = 5000,
        *,
        usd_rate: float = 1.0,
        currency: str = "USD",
    ) -> Iterator[bytes]:
        """The records a list with the same scope and query would give, newest first, as
        export pages: each one chunk of complete UTF-8 lines of at most ``page_size`` records
        (fewer when rows are large, so that a page stays a few MB), without a header.

        ``columns`` are §R column names (``request_body``/``response_body`` included only when
        asked for) and the derived ``cost`` (``cost_usd`` times ``usd_rate``) and ``currency``.
        ``fmt`` is ``csv`` (RFC 4180 lines: null → empty cell, booleans ``true``/``false``,
        nested fields as JSON text) or ``jsonl`` (one JSON object per line, nested fields as
        JSON). Pages are read by keyset on the id, so each call to ``next`` is one cheap query
        and may run on any thread."""

    # usage rollups (§A4)
    @abc.abstractmethod
    def rebuild_rollups(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Recompute the usage rollups from the stored records; returns how many were read."""

    @abc.abstractmethod
    def usage_rows(self, scope: Scope, spec: UsageSpec) -> UsageRows: ...

    @abc.abstractmethod
    def facet_values(
        self, scope: Scope, dim: str, lo: int, hi: int, limit: int
    ) -> list[tuple[str, int]]:
        """Distinct values of a usage dimension seen in [lo, hi), most used first."""

    @abc.abstractmethod
    def display_names(self, dim: str, ids: Sequence[str]) -> dict[str, str]:
        """Names of org, user or api_key ids."""

    # retention (§T1)
    @abc.abstractmethod
    def purge_batch(
        self,
        kind: str,
        before: float,
        limit: int,
        org_id: str | None = None,
        exclude: Sequence[str] = (),
        after: str | None = None,
    ) -> tuple[int, str | None]:
        """Remove up to ``limit`` old records (``records``) or their content (``content``) with
        ids after ``after``, in one short transaction; returns how many and the ``after`` of the
        next batch (None when nothing was left)."""

    @abc.abstractmethod
    def count_purgeable(
        self,
        kind: str,
        before: float,
        org_id: str | None = None,
        exclude: Sequence[str] = (),
        keep_after: float | None = None,
    ) -> int: ...

    @abc.abstractmethod
    def purge_rollups(self, before: int, dry_run: bool = False) -> int: ...

    @abc.abstractmethod
    def org_ids(self, names: Sequence[str]) -> dict[str, str]: ...

    @abc.abstractmethod
    def acquire_lease(self, name: str, holder: str, seconds: float) -> bool: ...

    # billing
    @abc.abstractmethod
    def spend(
        self, scope: str, scope_id: str, start: float, end: float, through_id: str | None = None
    ) -> float:
        """USD charged to a key, user or org in [start, end) (and up to the record or
        adjustment ``through_id``, inclusive): request costs plus adjustments."""

    @abc.abstractmethod
    def add_adjustment(
        self, scope: str, scope_id: str, org_id: str, amount_usd: float, reason: str, by: str
    ) -> dict[str, Any]: ...

    @abc.abstractmethod
    def list_transactions(
        self, scope: Scope, filters: dict[str, str], limit: int, after_id: str | None
    ) -> Page: ...

    # alerts (§N)
    @abc.abstractmethod
    def budget_holders(self, org_id: str | None = None) -> list[dict[str, Any]]:
        """Every key, user and org in force with a budget (of one org, when given): scope, id,
        name, org_id, budget_usd, budget_period."""

    @abc.abstractmethod
    def alert_rules(self) -> list[dict[str, Any]]:
        """Rules made through the API: id, org_id, name, type, spec (the rule's fields)."""

    @abc.abstractmethod
    def add_alert_rule(
        self, org_id: str | None, spec: dict[str, Any], created_by: str, at: float
    ) -> dict[str, Any]:
        """Raises StoreError when the org (or, org_id None, the global set) has that name."""

    @abc.abstractmethod
    def delete_alert_rule(self, rule_id: str) -> bool: ...

    @abc.abstractmethod
    def open_alert_events(self) -> list[dict[str, Any]]:
        """Firings not resolved yet (with their ``subject_key`` and deliveries)."""

    @abc.abstractmethod
    def add_alert_event(
        self, event: dict[str, Any], webhooks: Sequence[tuple[str, str]], at: float
    ) -> dict[str, Any]: ...

    @abc.abstractmethod
    def update_alert_delivery(
        self,
        delivery_id: str,
        *,
        status: str,
        attempts: int,
        at: float,
        status_code: int | None = None,
        error: str | None = None,
    ) -> None: ...

    @abc.abstractmethod
    def unsent_alert_deliveries(self, since: float) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    def list_alert_events(
        self, scope: Scope, filters: dict[str, str], limit: int, after_id: str | None
    ) -> Page: ...

    @abc.abstractmethod
    def get_alert_event(self, scope: Scope, event_id: str) -> dict[str, Any] | None: ...

    # identities
    @abc.abstractmethod
    def identity_for_hash(self, key_hash: str) -> Identity | None: ...

    @abc.abstractmethod
    def keys_version(self) -> int: ...

    @abc.abstractmethod
    def ensure_key(
        self, *, key_id: str, name: str, key_hash: str, user: str, org: str, role: str
    ) -> None: ...

    @abc.abstractmethod
    def create_key(
        self, fields: dict[str, Any], key_hash: str, key_prefix: str
    ) -> dict[str, Any]: ...

    @abc.abstractmethod
    def list_entities(self, kind: str, scope: Scope, limit: int, after_id: str | None) -> Page: ...

    @abc.abstractmethod
    def get_entity(self, kind: str, scope: Scope, entity_id: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    def update_entity(
        self, kind: str, scope: Scope, entity_id: str, fields: dict[str, Any]
    ) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    def create_entity(self, kind: str, fields: dict[str, Any]) -> dict[str, Any]: ...

    @abc.abstractmethod
    def revoke_entity(self, kind: str, scope: Scope, entity_id: str) -> dict[str, Any] | None: ...

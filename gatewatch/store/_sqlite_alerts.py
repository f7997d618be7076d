"""The SQLite engine's alert tables (§N): rules made through the API, firings and resolutions,
webhook deliveries; and the budget holders budget rules watch. Mixed into ``SQLiteStore``."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import orjson

from gatewatch.records import format_ts, new_id
from gatewatch.store.base import Page, StoreError
from gatewatch.store.query import Scope

__all__ = ["AlertsMixin"]

_EVENT_COLUMNS = ("id", "rule_id", "rule", "type", "org_id", "subject_key", "subject",
                  "subject_id", "state", "value", "threshold", "started_at", "resolved_at",
                  "firing_id", "message", "details")  # fmt: skip
_DELIVERY_COLUMNS = ("id", "event_id", "webhook", "format", "status", "attempts",
                     "last_status_code", "last_error", "created_at", "updated_at",
                     "delivered_at")  # fmt: skip
_RULE_COLUMNS = ("id", "org_id", "name", "type", "spec", "created_at", "created_by")
_BUDGET_HOLDERS = (
    "SELECT 'key', k.id, k.name, k.org_id, k.budget_usd, k.budget_period FROM keys k"
    " JOIN users u ON u.id = k.user_id JOIN orgs o ON o.id = k.org_id"
    " WHERE k.budget_usd IS NOT NULL AND k.revoked_at IS NULL AND u.revoked_at IS NULL"
    " AND o.revoked_at IS NULL{key_org}"
    " UNION ALL SELECT 'user', u.id, u.name, u.org_id, u.budget_usd, u.budget_period FROM users u"
    " JOIN orgs o ON o.id = u.org_id WHERE u.budget_usd IS NOT NULL AND u.revoked_at IS NULL"
    " AND o.revoked_at IS NULL{user_org}"
    " UNION ALL SELECT 'org', o.id, o.name, o.id, o.budget_usd, o.budget_period FROM orgs o"
    " WHERE o.budget_usd IS NOT NULL AND o.revoked_at IS NULL{org_org}"
)


def _event(row: Sequence[Any]) -> dict[str, Any]:
    out = dict(zip(_EVENT_COLUMNS, row, strict=True))
    out.pop("subject_key")
    out["details"] = orjson.loads(out["details"]) if out["details"] else {}
    return out


def _events_scope(scope: Scope) -> tuple[str, list[object]]:
    """Owner: every event; admin: its organization's; member: none (the API refuses it)."""
    if scope.role == "owner":
        return "1=1", []
    if scope.role == "admin":
        return "e.org_id = ?", [scope.org_id]
    return "1=0", []


class AlertsMixin:
    """Alert storage for ``SQLiteStore`` (which supplies the connections)."""

    # what the engine raises for a row that breaks a unique constraint
    _CONFLICT: tuple[type[Exception], ...] = (sqlite3.IntegrityError,)

    def _reader(self) -> sqlite3.Connection:
        raise NotImplementedError

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    # ---- budget holders -------------------------------------------------------------------------

    def budget_holders(self, org_id: str | None = None) -> list[dict[str, Any]]:
        if org_id is None:
            sql, params = _BUDGET_HOLDERS.format(key_org="", user_org="", org_org=""), []
        else:
            sql = _BUDGET_HOLDERS.format(
                key_org=" AND k.org_id = ?", user_org=" AND u.org_id = ?", org_org=" AND o.id = ?"
            )
            params = [org_id, org_id, org_id]
        keys = ("scope", "id", "name", "org_id", "budget_usd", "budget_period")
        return [dict(zip(keys, row, strict=True)) for row in self._reader().execute(sql, params)]

    # ---- rules ----------------------------------------------------------------------------------

    def alert_rules(self) -> list[dict[str, Any]]:
        rows = self._reader().execute(
            f"SELECT {', '.join(_RULE_COLUMNS)} FROM alert_rules ORDER BY id"
        )
        out = []
        for row in rows:
            rule = dict(zip(_RULE_COLUMNS, row, strict=True))
            rule["spec"] = orjson.loads(rule["spec"])
            out.append(rule)
        return out

    def add_alert_rule(
        self, org_id: str | None, spec: dict[str, Any], created_by: str, at: float
    ) -> dict[str, Any]:
        rule_id = "alr_" + new_id(at)
        row = (rule_id, org_id, spec["name"], spec["type"], orjson.dumps(spec).decode(),
               format_ts(at), created_by)  # fmt: skip
        with self._transaction() as db:
            try:
                db.execute("INSERT INTO alert_rules VALUES (?, ?, ?, ?, ?, ?, ?)", row)
            except self._CONFLICT:
                raise StoreError(f"an alert rule named {spec['name']!r} exists") from None
        rule = dict(zip(_RULE_COLUMNS, row, strict=True))
        rule["spec"] = spec
        return rule

    def delete_alert_rule(self, rule_id: str) -> bool:
        with self._transaction() as db:
            return db.execute("DELETE FROM alert_rules WHERE id = ?", (rule_id,)).rowcount > 0

    # ---- events and deliveries ------------------------------------------------------------------

    def open_alert_events(self) -> list[dict[str, Any]]:
        rows = self._reader().execute(
            f"SELECT {', '.join(_EVENT_COLUMNS)} FROM alert_events"
            " WHERE state = 'firing' AND resolved_at IS NULL ORDER BY id"
        )
        return self._with_deliveries([{**_event(row), "subject_key": row[5]} for row in rows])

    def add_alert_event(
        self, event: dict[str, Any], webhooks: Sequence[tuple[str, str]], at: float
    ) -> dict[str, Any]:
        """Store a firing or a resolution (which also closes its firing) with one pending
        delivery per (webhook name, format); returns the event with its deliveries."""
        event_id = new_id(at)
        values = {**event, "id": event_id}
        values["started_at"] = format_ts(event["started_at"])
        if event.get("resolved_at") is not None:
            values["resolved_at"] = format_ts(event["resolved_at"])
        values["details"] = orjson.dumps(event.get("details") or {}).decode()
        row = tuple(values.get(c) for c in _EVENT_COLUMNS)
        now = format_ts(at)
        deliveries = [
            (new_id(at), event_id, name, fmt, "pending", 0, None, None, now, now, None)
            for name, fmt in webhooks
        ]
        with self._transaction() as db:
            db.execute(f"INSERT INTO alert_events VALUES ({', '.join('?' * len(row))})", row)
            if event["state"] == "resolved" and event.get("firing_id"):
                db.execute(
                    "UPDATE alert_events SET resolved_at = ? WHERE id = ?",
                    (values["resolved_at"], event["firing_id"]),
                )
            db.executemany(
                f"INSERT INTO alert_deliveries VALUES ({', '.join('?' * 11)})", deliveries
            )
        out = _event(row)
        out["deliveries"] = [self._delivery(d) for d in deliveries]
        return out

    @staticmethod
    def _delivery(row: Sequence[Any]) -> dict[str, Any]:
        out = dict(zip(_DELIVERY_COLUMNS, row, strict=True))
        out.pop("event_id")
        return out

    def update_alert_delivery(
        self,
        delivery_id: str,
        *,
        status: str,
        attempts: int,
        at: float,
        status_code: int | None = None,
        error: str | None = None,
    ) -> None:
        now = format_ts(at)
        with self._transaction() as db:
            db.execute(
                "UPDATE alert_deliveries SET status = ?, attempts = ?, last_status_code = ?,"
                " last_error = ?, updated_at = ?,"
                " delivered_at = CASE WHEN ? = 'delivered' THEN ? ELSE delivered_at END"
                " WHERE id = ?",
                (status, attempts, status_code, error, now, status, now, delivery_id),
            )

    def unsent_alert_deliveries(self, since: float) -> list[dict[str, Any]]:
        """Deliveries still pending or retrying, created at ``since`` or later, with their
        event (under ``event``): what a restarted engine sends again."""
        db = self._reader()
        rows = db.execute(
            f"SELECT {', '.join('d.' + c for c in _DELIVERY_COLUMNS)},"
            f" {', '.join('e.' + c for c in _EVENT_COLUMNS)}"
            " FROM alert_deliveries d JOIN alert_events e ON e.id = d.event_id"
            " WHERE d.status IN ('pending', 'retrying') AND d.id >= ? ORDER BY d.id",
            (new_id(since)[:10] + "0" * 16,),
        ).fetchall()
        n = len(_DELIVERY_COLUMNS)
        return [{**dict(zip(_DELIVERY_COLUMNS, r[:n], strict=True)), "event": _event(r[n:])}
                for r in rows]  # fmt: skip

    def _with_deliveries(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not events:
            return events
        by_id = {e["id"]: e for e in events}
        for e in events:
            e["deliveries"] = []
        rows = self._reader().execute(
            f"SELECT {', '.join(_DELIVERY_COLUMNS)} FROM alert_deliveries"
            " WHERE event_id IN (SELECT value FROM json_each(?)) ORDER BY id",
            (orjson.dumps(list(by_id)).decode(),),
        )
        for row in rows:
            by_id[row[1]]["deliveries"].append(self._delivery(row))
        return events

    def list_alert_events(
        self, scope: Scope, filters: dict[str, str], limit: int, after_id: str | None
    ) -> Page:
        """Firings and resolutions the scope may see, newest first, with their deliveries;
        ``filters``: ``rule`` (a name or a rule id), ``org`` (an id or name), ``state`` (firing |
        resolved), ``active`` ("true": firings not resolved yet)."""
        where, params = _events_scope(scope)
        conds = [where]
        if filters.get("rule"):
            conds.append("(e.rule = ? OR e.rule_id = ?)")
            params += [filters["rule"], filters["rule"]]
        if filters.get("org"):
            conds.append("e.org_id IN (SELECT id FROM orgs WHERE id = ? OR name = ?)")
            params += [filters["org"], filters["org"]]
        if filters.get("state"):
            conds.append("e.state = ?")
            params.append(filters["state"])
        if filters.get("active") == "true":
            conds.append("e.state = 'firing' AND e.resolved_at IS NULL")
        db = self._reader()
        count = db.execute(
            f"SELECT count(*) FROM alert_events e WHERE {' AND '.join(conds)}", params
        ).fetchone()[0]
        if after_id:
            conds.append("e.id < ?")
            params.append(after_id)
        rows = db.execute(
            f"SELECT {', '.join('e.' + c for c in _EVENT_COLUMNS)} FROM alert_events e"
            f" WHERE {' AND '.join(conds)} ORDER BY e.id DESC LIMIT ?",
            [*params, limit + 1],
        ).fetchall()
        results = self._with_deliveries([_event(row) for row in rows[:limit]])
        return Page(int(count), results, results[-1]["id"] if len(rows) > limit else None)

    def get_alert_event(self, scope: Scope, event_id: str) -> dict[str, Any] | None:
        where, params = _events_scope(scope)
        row = (
            self._reader()
            .execute(
                f"SELECT {', '.join('e.' + c for c in _EVENT_COLUMNS)} FROM alert_events e"
                f" WHERE e.id = ? AND {where}",
                [event_id, *params],
            )
            .fetchone()
        )
        return None if row is None else self._with_deliveries([_event(row)])[0]

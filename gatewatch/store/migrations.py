"""Named, ordered schema migrations, recorded in ``_migrations`` and applied at start.

Each migration is a small function taking a DB-API connection; add new ones at the end and never
edit one that has shipped.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import datetime

__all__ = ["MIGRATIONS", "apply_migrations"]

Migration = Callable[[sqlite3.Connection], None]


def m001_identities(db: sqlite3.Connection) -> None:
    db.executescript(
        """
        CREATE TABLE orgs (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            budget_usd REAL, budget_period TEXT NOT NULL DEFAULT 'month',
            rpm INTEGER, tpm INTEGER,
            created_at TEXT NOT NULL, revoked_at TEXT
        );
        CREATE TABLE users (
            id TEXT PRIMARY KEY,
            org_id TEXT NOT NULL REFERENCES orgs(id),
            name TEXT NOT NULL,
            budget_usd REAL, budget_period TEXT NOT NULL DEFAULT 'month',
            rpm INTEGER, tpm INTEGER,
            created_at TEXT NOT NULL, revoked_at TEXT,
            UNIQUE (org_id, name)
        );
        CREATE INDEX users_name ON users(name);
        CREATE TABLE keys (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            key_hash TEXT NOT NULL UNIQUE,
            key_prefix TEXT NOT NULL,
            user_id TEXT NOT NULL REFERENCES users(id),
            org_id TEXT NOT NULL REFERENCES orgs(id),
            role TEXT NOT NULL,
            budget_usd REAL, budget_period TEXT NOT NULL DEFAULT 'month',
            rpm INTEGER, tpm INTEGER,
            created_at TEXT NOT NULL, revoked_at TEXT
        );
        CREATE INDEX keys_user ON keys(user_id);
        CREATE INDEX keys_org ON keys(org_id);
        CREATE INDEX keys_name ON keys(name);
        CREATE TABLE settings_version (name TEXT PRIMARY KEY, version INTEGER NOT NULL);
        INSERT INTO settings_version VALUES ('keys', 0);
        """
    )


def m002_requests(db: sqlite3.Connection) -> None:
    db.executescript(
        """
        CREATE TABLE requests (
            id TEXT PRIMARY KEY,
            started_at TEXT NOT NULL, ended_at TEXT NOT NULL,
            duration_ms REAL NOT NULL, ttft_ms REAL,
            org_id TEXT, org TEXT, user_id TEXT, user TEXT,
            api_key_id TEXT, api_key_name TEXT,
            end_user TEXT, session TEXT, workflow TEXT, client TEXT, user_agent TEXT,
            source_ip TEXT, correlation_id TEXT, endpoint TEXT NOT NULL,
            provider TEXT, model_requested TEXT, model TEXT, stream INTEGER NOT NULL,
            status_code INTEGER NOT NULL, status TEXT NOT NULL,
            error_type TEXT, error_message TEXT,
            input_tokens INTEGER, output_tokens INTEGER,
            cache_read_tokens INTEGER, cache_write_tokens INTEGER, reasoning_tokens INTEGER,
            cost_usd REAL,
            tags TEXT, meta TEXT, last_user_prompt TEXT, tool_calls TEXT, attempts TEXT
        ) WITHOUT ROWID;
        -- One index per filter, in id order, carrying the scope columns (org_id, user_id) so a
        -- scoped count or page never has to visit the table to check the scope.
        -- The scope indexes also carry cost_usd: a budget's spend in a period is a range scan.
        CREATE INDEX requests_org ON requests(org_id, id, cost_usd);
        CREATE INDEX requests_user ON requests(user_id, id, org_id, cost_usd);
        CREATE INDEX requests_key ON requests(api_key_id, id, org_id, user_id, cost_usd);
        CREATE INDEX requests_provider ON requests(provider, id, org_id, user_id);
        CREATE INDEX requests_status ON requests(status, id, org_id, user_id);
        CREATE INDEX requests_status_code ON requests(status_code, id, org_id, user_id);
        CREATE INDEX requests_client ON requests(client, id, org_id, user_id);
        CREATE INDEX requests_workflow ON requests(workflow, id, org_id, user_id);
        CREATE INDEX requests_session ON requests(session, id, org_id, user_id);
        CREATE INDEX requests_end_user ON requests(end_user, id, org_id, user_id);
        -- Many-valued filters (tag, meta.<name>, model = requested or answered) as one row per
        -- (filter, value, request): counting and paging them is an index range scan.
        CREATE TABLE request_facets (
            name TEXT NOT NULL, value TEXT NOT NULL, request_id TEXT NOT NULL,
            org_id TEXT, user_id TEXT,
            PRIMARY KEY (name, value, request_id)
        ) WITHOUT ROWID;
        CREATE INDEX request_facets_request ON request_facets(request_id);
        CREATE TABLE request_bodies (
            request_id TEXT PRIMARY KEY,
            request_body TEXT, response_body TEXT
        ) WITHOUT ROWID;
        """
    )


def m003_billing(db: sqlite3.Connection) -> None:
    db.executescript(
        """
        -- Manual credits and charges (§A5); charges for requests are the records' cost_usd.
        CREATE TABLE billing_adjustments (
            id TEXT PRIMARY KEY,
            scope TEXT NOT NULL, scope_id TEXT NOT NULL,
            org_id TEXT NOT NULL,
            amount_usd REAL NOT NULL,
            reason TEXT NOT NULL,
            created_at TEXT NOT NULL,
            created_by TEXT NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX billing_adjustments_scope ON billing_adjustments(scope, scope_id, id);
        CREATE INDEX billing_adjustments_org ON billing_adjustments(org_id, id);
        """
    )


def m004_rollups(db: sqlite3.Connection) -> None:
    """Usage rollups per hour and per UTC day (§A4), built from the records already stored."""
    from gatewatch.store import rollups

    db.executescript(
        rollups.schema(
            ("rollup_user", "rollup_model", "rollup_tag", "rollup_end_user", "rollup_base")
        )
    )


def m005_leases(db: sqlite3.Connection) -> None:
    """Leases: which process runs a background job (the retention purge) right now."""
    db.executescript(
        "CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, until REAL NOT NULL)"
        " WITHOUT ROWID;"
    )


def m006_alerts(db: sqlite3.Connection) -> None:
    """Alerts (§N): rules made through the API, firings and resolutions, webhook deliveries."""
    db.executescript(
        """
        CREATE TABLE alert_rules (
            id TEXT PRIMARY KEY,
            org_id TEXT,                       -- NULL: a rule over every organization
            name TEXT NOT NULL, type TEXT NOT NULL,
            spec TEXT NOT NULL,                -- the rule as JSON (settings.AlertRule)
            created_at TEXT NOT NULL, created_by TEXT
        ) WITHOUT ROWID;
        CREATE UNIQUE INDEX alert_rules_name ON alert_rules(coalesce(org_id, ''), name);
        -- One row per firing and one per resolution (firing_id: the firing it ends).
        CREATE TABLE alert_events (
            id TEXT PRIMARY KEY,
            rule_id TEXT NOT NULL, rule TEXT NOT NULL, type TEXT NOT NULL,
            org_id TEXT,                       -- whose history it is; NULL: owners only
            subject_key TEXT NOT NULL, subject TEXT NOT NULL, subject_id TEXT,
            state TEXT NOT NULL,               -- firing | resolved
            value REAL, threshold REAL,
            started_at TEXT NOT NULL, resolved_at TEXT,
            firing_id TEXT, message TEXT NOT NULL, details TEXT
        ) WITHOUT ROWID;
        CREATE INDEX alert_events_open ON alert_events(rule_id, subject_key)
            WHERE state = 'firing' AND resolved_at IS NULL;
        CREATE INDEX alert_events_org ON alert_events(org_id, id);
        CREATE INDEX alert_events_rule ON alert_events(rule, id);
        CREATE TABLE alert_deliveries (
            id TEXT PRIMARY KEY,
            event_id TEXT NOT NULL, webhook TEXT NOT NULL, format TEXT NOT NULL,
            status TEXT NOT NULL,              -- pending | retrying | delivered | failed | dropped
            attempts INTEGER NOT NULL DEFAULT 0,
            last_status_code INTEGER, last_error TEXT,
            created_at TEXT NOT NULL, updated_at TEXT NOT NULL, delivered_at TEXT
        ) WITHOUT ROWID;
        CREATE INDEX alert_deliveries_event ON alert_deliveries(event_id);
        CREATE INDEX alert_deliveries_unsent ON alert_deliveries(id)
            WHERE status IN ('pending', 'retrying');
        """
    )


def m007_rollup_client(db: sqlite3.Connection) -> None:
    """A small rollup per organization, provider, client and status (the client leaderboard
    read the largest one), filled from the base rollup, which has every dimension."""
    from gatewatch.store import rollups

    db.executescript(rollups.schema(("rollup_client",)))
    sums = ", ".join(f"sum({m})" for m in rollups.SCALARS)
    db.execute(
        f"INSERT INTO rollup_client SELECT grain, bucket, org_id, provider, client, status,"
        f" {sums}, gw_hist_sum(hist) FROM rollup_base"
        " GROUP BY grain, bucket, org_id, provider, client, status"
    )


def m008_upkeep(db: sqlite3.Connection) -> None:
    """Watermarks of background upkeep. ``rollups_exact_from``: from this Unix time (a whole
    hour) on, the usage rollups count exactly the stored records, so a list's ``count`` may be
    read from them (before it, they also count records the retention purge removed). The purge
    moves it forward; ``gatewatch rollups rebuild`` sets it to the rebuilt range. A database
    that already holds records may have had records purged: exact from the next hour on."""
    db.execute("CREATE TABLE upkeep (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID")
    (last,) = db.execute("SELECT max(started_at) FROM requests").fetchone()
    start = 0
    if last is not None:
        start = int(datetime.fromisoformat(last.replace("Z", "+00:00")).timestamp())
        start = start // 3600 * 3600 + 3600
    db.execute("INSERT INTO upkeep (name, value) VALUES ('rollups_exact_from', ?)", (start,))


MIGRATIONS: list[tuple[str, Migration]] = [
    ("m001_identities", m001_identities),
    ("m002_requests", m002_requests),
    ("m003_billing", m003_billing),
    ("m004_rollups", m004_rollups),
    ("m005_leases", m005_leases),
    ("m006_alerts", m006_alerts),
    ("m007_rollup_client", m007_rollup_client),
    ("m008_upkeep", m008_upkeep),
]


def apply_migrations(db: sqlite3.Connection, *, explicit: bool = False) -> list[str]:
    """Apply every migration not yet recorded; returns the names applied now. ``explicit``:
    each migration in its own ``BEGIN``/``COMMIT`` (a server database's DDL is transactional)."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
    )
    done = {row[0] for row in db.execute("SELECT name FROM _migrations")}
    applied = []
    for name, fn in MIGRATIONS:
        if name in done:
            continue
        if explicit:
            db.execute("BEGIN")
        fn(db)
        db.execute(
            "INSERT INTO _migrations VALUES (?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))", (name,)
        )
        if explicit:
            db.execute("COMMIT")
        else:
            db.commit()
        applied.append(name)
    return applied

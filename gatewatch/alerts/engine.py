"""The alert engine (§N): evaluates every rule in the background, keeps one firing per rule and
subject until it resolves, stores firings and resolutions, and hands their deliveries to the
webhook sender.

Rules come from the configuration (``alerts.rules``, ids ``config:<name>``) and from the API
(table ``alert_rules``, ids ``alr_…``), re-read at every evaluation. Sources:

- ``budget``: the live budget counters (``Controls.settled``, what the proxy charges as each
  response ends) of every key, user or org with a budget;
- ``error_rate``, ``latency_p95``, ``spend_rate``, ``no_traffic``: the usage rollups, over the
  rule's window (gatewatch/alerts/windows.py).

One process evaluates at a time (a lease in the database, like the retention purge); firings not
yet resolved are read back from the database when a process takes the lease, so a restart never
fires the same alert twice."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import numpy as np
from pydantic import ValidationError

from gatewatch.alerts.delivery import Deliverer, Job
from gatewatch.alerts.windows import COST_NUSD, ERRORS, REQUESTS, WindowReader, latency_p95
from gatewatch.controls import Controls
from gatewatch.metrics import Metrics
from gatewatch.records import format_ts, parse_ts
from gatewatch.settings import AlertRule, Settings
from gatewatch.store import Scope, Store
from gatewatch.store.rollups import NBINS

__all__ = ["ActiveRule", "Alerts", "Observation", "rule_threshold"]

log = logging.getLogger("gatewatch.alerts")

_NAMED = ("org", "user", "api_key")  # dimensions held as ids, shown by name
_RESUME_WITHIN = 86400.0  # deliveries left unsent by a stopped process are resent for a day


def rule_threshold(rule: AlertRule) -> float:
    if rule.type == "latency_p95":
        return float(rule.threshold_ms or 0)
    if rule.type == "spend_rate":
        return float(rule.threshold_usd or 0)
    if rule.type == "no_traffic":
        return 0.0
    return float(rule.threshold or 0)


@dataclass(frozen=True, slots=True)
class ActiveRule:
    id: str  # config:<name> | alr_…
    source: Literal["config", "api"]
    spec: AlertRule
    org_id: str | None  # None: every organization
    org: str | None  # its name

    @property
    def scope(self) -> Scope:
        if self.org_id is None:
            return Scope("owner", "", "")
        return Scope("admin", self.org_id, "")


@dataclass(slots=True)
class Observation:
    """One subject of a rule, as measured now."""

    subject_key: str
    subject: str
    subject_id: str | None
    org_id: str | None
    value: float | None
    breached: bool
    details: dict[str, Any] = field(default_factory=dict)


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _money(v: float) -> str:
    if v >= 1 or v == 0:
        return f"${v:,.2f}"
    return "$" + f"{v:.6f}".rstrip("0").rstrip(".")


def _message(
    state: str, rule: AlertRule, subject: str, value: float | None, details: dict[str, Any]
) -> str:
    """The facts of a firing or resolution in words (the Slack text and the JSON message)."""
    firing = state == "firing"
    if details.get("note"):
        return f"{subject}: {details['note']}"
    w = _duration(rule.window or 0)
    n = details.get("requests", 0)
    if rule.type == "budget":
        spent, budget, period = details["spent_usd"], details["budget_usd"], details["period"]
        used = f"{value or 0:.0%} of its {period} budget ({_money(spent)} of {_money(budget)})"
        if firing:
            return f"{subject} has used {used}; alert at {rule.threshold:.0%}"
        return f"{subject} is back under {rule.threshold:.0%}: it has used {used}"
    if rule.type == "error_rate":
        rate = f"{value or 0:.1%} ({details.get('errors', 0)} of {n} requests)"
        if firing:
            return f"error rate {rate} over the last {w} for {subject}; alert above " + (
                f"{rule.threshold:.1%}"
            )
        return f"error rate back to {rate} over the last {w} for {subject}"
    if rule.type == "latency_p95":
        p95 = "no requests" if value is None else f"{value:,.0f} ms"
        if firing:
            return (f"p95 latency {p95} over the last {w} for {subject} ({n} requests); alert"
                    f" above {rule.threshold_ms:,.0f} ms")  # fmt: skip
        return f"p95 latency back to {p95} over the last {w} for {subject} ({n} requests)"
    if rule.type == "spend_rate":
        spent = _money(value or 0)
        if firing:
            return (f"{spent} spent in the last {w} by {subject}; alert above"
                    f" {_money(rule.threshold_usd or 0)}")  # fmt: skip
        return f"spend back to {spent} in the last {w} for {subject}"
    if firing:
        return f"no requests in the last {w} for {subject}"
    return f"traffic again for {subject}: {n} request(s) in the last {w}"


class Alerts:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        controls: Controls,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings.alerts
        self.store = store
        self.controls = controls
        self.metrics = metrics
        self.clock = clock
        self.webhooks = {w.name: w for w in self.settings.webhooks}
        self.deliverer = Deliverer(self.settings, store, metrics, lambda: self.clock(), transport)
        # (rule id, subject key) → the firing event not resolved yet
        self.open: dict[tuple[str, str], dict[str, Any]] = {}
        self._loaded = False
        self._resumed = False
        self._since: float | None = None  # the first evaluation: no_traffic waits a window
        self._readers: dict[str, tuple[AlertRule, WindowReader]] = {}
        self._warned: set[str] = set()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.loop: asyncio.AbstractEventLoop | None = None

    # ---- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.deliverer.start()
        self._task = asyncio.create_task(self._loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.deliverer.close()
        if self._loaded:  # hand the lease over at once (a restarted process takes it back)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.store.acquire_lease, "alerts", self.holder, 0)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.interval)
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("alert evaluation failed; retrying at the next interval")

    async def run_once(self) -> list[dict[str, Any]]:
        """Evaluate every rule if this process holds (or takes) the alerts lease; returns the
        firings and resolutions stored."""
        held = await asyncio.to_thread(
            self.store.acquire_lease, "alerts", self.holder, self.settings.interval * 3
        )
        if not held:
            if self._loaded:  # another process evaluates now; read its state if we return
                self.open.clear()
                self._loaded = False
                self._since = None
                self.metrics.alerts_firing.set(0)
            return []
        return await self.evaluate()

    # ---- evaluation ---------------------------------------------------------------------------

    def rules(self) -> list[ActiveRule]:
        """Configured rules and API rules (blocking: call in a thread)."""
        out: list[ActiveRule] = []
        orgs = sorted({r.org for r in self.settings.rules if r.org})
        ids = self.store.org_ids(orgs) if orgs else {}
        for rule in self.settings.rules:
            if rule.org and rule.org not in ids:
                self._warn_once(f"org:{rule.org}", "alert rule %s: no organization named %r",
                                rule.name, rule.org)  # fmt: skip
                continue
            org_id = ids[rule.org] if rule.org else None
            out.append(ActiveRule(f"config:{rule.name}", "config", rule, org_id, rule.org))
        for row in self.store.alert_rules():
            try:
                spec = AlertRule.model_validate(row["spec"])
            except ValidationError as exc:
                self._warn_once(row["id"], "alert rule %s is not valid: %s", row["id"], exc)
                continue
            out.append(ActiveRule(row["id"], "api", spec, row["org_id"], spec.org))
        return out

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    async def evaluate(self) -> list[dict[str, Any]]:
        """Evaluate every rule now (without the lease: ``run_once`` takes it first)."""
        async with self._lock:
            now = self.clock()
            if not self._loaded:
                await self._load(now)
            if self._since is None:
                self._since = now
            rules = await asyncio.to_thread(self.rules)
            events: list[dict[str, Any]] = []
            for rule in rules:
                try:
                    observed: list[Observation] | None
                    if rule.spec.type == "budget":
                        observed = await self._observe_budgets(rule)
                    else:
                        observed = await asyncio.to_thread(self._observe_window, rule, now)
                    if observed is not None:
                        await self._apply(rule, observed, now, events)
                except Exception:
                    log.exception("alert rule %s could not be evaluated", rule.spec.name)
            known = {r.id for r in rules}
            for key, firing in list(self.open.items()):
                if key[0] not in known:  # the rule was deleted or taken out of the config
                    gone = Observation(key[1], firing["subject"], firing["subject_id"],
                                       firing["org_id"], None, False,
                                       {"note": "the rule was removed"})  # fmt: skip
                    await self._resolve(None, firing, gone, now, events)
            for rule_id in set(self._readers) - known:
                del self._readers[rule_id]
            self.metrics.alerts_firing.set(len(self.open))
            return events

    async def _load(self, now: float) -> None:
        """The firings left open by any process, and (once per process) the deliveries a
        stopped process left unsent."""
        opened = await asyncio.to_thread(self.store.open_alert_events)
        self.open = {(e["rule_id"], e["subject_key"]): e for e in opened}
        self._loaded = True
        if self._resumed:
            return
        self._resumed = True
        unsent = await asyncio.to_thread(self.store.unsent_alert_deliveries, now - _RESUME_WITHIN)
        for d in unsent:
            hook = self.webhooks.get(d["webhook"])
            if hook is not None:
                self.deliverer.submit(Job(d["id"], hook, d["event"], d["attempts"]))

    async def _observe_budgets(self, rule: ActiveRule) -> list[Observation]:
        spec = rule.spec
        holders = await asyncio.to_thread(self.store.budget_holders, rule.org_id)
        out = []
        for h in holders:
            if h["scope"] != spec.scope:
                continue
            period = h["budget_period"] or "month"
            spent = await self.controls.settled(h["scope"], h["id"], h["name"], period)
            budget = float(h["budget_usd"])
            share = spent / budget if budget > 0 else 1.0
            window = self.controls.window(period)
            details = {
                "scope": h["scope"], "spent_usd": round(spent, 10), "budget_usd": budget,
                "period": period,
                "period_end": None if period == "total" else format_ts(window.end),
            }  # fmt: skip
            out.append(Observation(
                f"{h['scope']}:{h['id']}", f"{h['scope']} {h['name']}", h["id"],
                rule.org_id or h["org_id"], round(share, 6), share >= (spec.threshold or 0),
                details,
            ))  # fmt: skip
        return out

    def _reader(self, rule: ActiveRule) -> WindowReader:
        have = self._readers.get(rule.id)
        if have is None or have[0] != rule.spec:
            spec = rule.spec
            reader = WindowReader(spec.filter, tuple(spec.per), spec.type == "latency_p95")
            self._readers[rule.id] = have = (spec, reader)
        return have[1]

    def _observe_window(self, rule: ActiveRule, now: float) -> list[Observation] | None:
        """Blocking (rollup reads): call in a thread. None: the rule cannot be judged now."""
        spec = rule.spec
        window = float(spec.window or 0)
        reader = self._reader(rule)
        if not reader.answerable(rule.scope):
            self._warn_once(rule.id, "alert rule %s needs raw records; skipped", spec.name)
            return None
        totals = reader.totals(self.store, rule.scope, now, window)  # and a snapshot
        if spec.type == "no_traffic" and self._since is not None and now - self._since < window:
            return None  # watched for less than a window: a silence is not established yet
        if not spec.per:
            size = 3 + (NBINS if reader.latency else 0)
            totals.setdefault((), np.zeros(size, dtype=np.float64))
        names = {d: self.store.display_names(d, sorted({g[i] for g in totals if g[i]}))
                 for i, d in enumerate(spec.per) if d in _NAMED}  # fmt: skip
        base = [f"org={rule.org}"] if rule.org else []
        base += [f"{d}={','.join(v)}" for d, v in spec.filter.items()]
        out = []
        for group, vec in totals.items():
            parts = [f"{d}={names.get(d, {}).get(v, v) or '(none)'}"
                     for d, v in zip(spec.per, group, strict=True)]  # fmt: skip
            requests = float(vec[REQUESTS])
            n = round(requests)
            details: dict[str, Any] = {"window_seconds": window, "requests": n}
            value: float | None
            if spec.type == "error_rate":
                errors = float(vec[ERRORS])
                value = round(errors / requests, 6) if requests > 0 else 0.0
                details["errors"] = round(errors)
                breached = requests >= (spec.min_requests or 1) and value > (spec.threshold or 0)
            elif spec.type == "latency_p95":
                value = latency_p95(vec)
                breached = (requests >= (spec.min_requests or 1) and value is not None
                            and value > (spec.threshold_ms or 0))  # fmt: skip
            elif spec.type == "spend_rate":
                value = round(float(vec[COST_NUSD]) / 1e9, 9)
                details["spend_usd"] = value
                breached = value > (spec.threshold_usd or 0)
            else:
                value = float(n)
                breached = requests < 0.5
            if spec.min_requests is not None:
                details["min_requests"] = spec.min_requests
            org_id = rule.org_id
            if org_id is None and "org" in spec.per:
                org_id = group[spec.per.index("org")] or None
            subject_id = group[0] if len(spec.per) == 1 and spec.per[0] in _NAMED else None
            out.append(Observation("|".join(group) or "*", " ".join(base + parts) or "all traffic",
                                   subject_id, org_id, value, breached, details))  # fmt: skip
        return out

    # ---- firing and resolving -----------------------------------------------------------------

    async def _apply(
        self, rule: ActiveRule, observed: list[Observation], now: float, events: list[Any]
    ) -> None:
        current = {o.subject_key: o for o in observed}
        for o in observed:
            firing = self.open.get((rule.id, o.subject_key))
            if o.breached and firing is None:
                await self._fire(rule, o, now, events)
            elif not o.breached and firing is not None:
                await self._resolve(rule, firing, o, now, events)
        for (rule_id, subject_key), firing in list(self.open.items()):
            if rule_id == rule.id and subject_key not in current:  # no traffic left to judge
                o = Observation(subject_key, firing["subject"], firing["subject_id"],
                                firing["org_id"], None, False, {"requests": 0})  # fmt: skip
                await self._resolve(rule, firing, o, now, events)

    async def _fire(self, rule: ActiveRule, o: Observation, now: float, events: list[Any]) -> None:
        spec = rule.spec
        event = {
            "rule_id": rule.id, "rule": spec.name, "type": spec.type, "org_id": o.org_id,
            "subject_key": o.subject_key, "subject": o.subject, "subject_id": o.subject_id,
            "state": "firing", "value": o.value, "threshold": rule_threshold(spec),
            "started_at": now, "resolved_at": None, "firing_id": None,
            "message": _message("firing", spec, o.subject, o.value, o.details),
            "details": o.details,
        }  # fmt: skip
        hooks = [(n, self.webhooks[n].format) for n in spec.notify if n in self.webhooks]
        stored = await asyncio.to_thread(self.store.add_alert_event, event, hooks, now)
        self.open[(rule.id, o.subject_key)] = {**stored, "subject_key": o.subject_key}
        log.warning("alert firing: %s: %s", spec.name, stored["message"])
        self._send(stored)
        events.append(stored)

    async def _resolve(
        self,
        rule: ActiveRule | None,
        firing: dict[str, Any],
        o: Observation,
        now: float,
        events: list[Any],
    ) -> None:
        if rule is not None:
            message = _message("resolved", rule.spec, firing["subject"], o.value, o.details)
        else:
            message = f"{firing['subject']}: {o.details.get('note', 'resolved')}"
        event = {
            **{k: firing[k] for k in ("rule_id", "rule", "type", "org_id", "subject_key",
                                      "subject", "subject_id", "threshold")},
            "state": "resolved", "value": o.value, "started_at": parse_ts(firing["started_at"]),
            "resolved_at": now, "firing_id": firing["id"], "message": message,
            "details": o.details,
        }  # fmt: skip
        # the resolution goes where the firing went (the rule may be gone)
        sent = [d["webhook"] for d in firing.get("deliveries", [])]
        hooks = [(n, self.webhooks[n].format) for n in sent if n in self.webhooks]
        stored = await asyncio.to_thread(self.store.add_alert_event, event, hooks, now)
        del self.open[(firing["rule_id"], firing["subject_key"])]
        log.info("alert resolved: %s: %s", firing["rule"], stored["message"])
        self._send(stored)
        events.append(stored)

    def _send(self, event: dict[str, Any]) -> None:
        for d in event["deliveries"]:
            self.deliverer.submit(Job(d["id"], self.webhooks[d["webhook"]], event))

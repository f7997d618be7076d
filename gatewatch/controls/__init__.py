"""Spend and traffic controls (§C): budgets (402), rate limits (429), shared counters.

``Controls.admit`` runs on the request path before anything is sent upstream; ``settle`` runs
when the response has ended, before the record is stored, so a caller's next request already
sees what the last one cost."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from gatewatch.controls.counters import (
    BudgetCheck,
    BudgetRefusal,
    CounterBackend,
    InProcessCounters,
    RateCheck,
    RateRefusal,
    RateState,
    Reservation,
)
from gatewatch.controls.periods import Window, window
from gatewatch.metrics import Metrics
from gatewatch.pricing import Rates
from gatewatch.proxy.errors import GatewayError
from gatewatch.settings import Settings
from gatewatch.store.base import Identity, Store

__all__ = ["Controls", "Ticket"]

# (valid until, budget checks, rate checks, the identity they were built for)
_Plan = tuple[float, tuple["BudgetCheck", ...], tuple["RateCheck", ...], Identity]

log = logging.getLogger("gatewatch.controls")

_MAX_TOKENS_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_LIMIT_HEADER = {k: f"x-ratelimit-limit-{k}".encode() for k in ("requests", "tokens")}
_REMAINING_HEADER = {k: f"x-ratelimit-remaining-{k}".encode() for k in ("requests", "tokens")}
_RESET_HEADER = {k: f"x-ratelimit-reset-{k}".encode() for k in ("requests", "tokens")}


class Ticket:
    """What admission took for a request, given back at settlement."""

    __slots__ = ("backend", "rate_checks", "rate_state", "reservation", "tokens_estimate",
                 "warnings")  # fmt: skip

    def __init__(
        self, rate_checks: tuple[RateCheck, ...], tokens_estimate: int, backend: CounterBackend
    ) -> None:
        self.reservation: Reservation | None = None
        self.rate_checks = rate_checks
        self.tokens_estimate = tokens_estimate
        self.rate_state = RateState()
        self.backend = backend
        self.warnings: list[str] = []

    def headers(self) -> list[tuple[bytes, bytes]]:
        """``x-ratelimit-*`` headers in the style providers use (the tightest limit of each
        kind), and ``x-gatewatch-budget-warning`` past a soft limit."""
        out = [(b"x-gatewatch-budget-warning", w.encode("utf-8", "replace")) for w in self.warnings]
        tightest: dict[str, tuple[RateCheck, int, float]] = {}
        for entry in self.rate_state.remaining:
            kind = entry[0].kind
            if kind not in tightest or entry[1] < tightest[kind][1]:
                tightest[kind] = entry
        for kind, (check, rem, reset) in tightest.items():
            out += (
                (_LIMIT_HEADER[kind], check.limit_bytes),
                (_REMAINING_HEADER[kind], b"%d" % rem),
                (_RESET_HEADER[kind], b"%.3fs" % (reset if reset > 0 else 0.0)),
            )
        return out


def _money(v: float) -> str:
    if v >= 1 or v == 0:
        return f"${v:,.2f}"
    return "$" + f"{v:.8f}".rstrip("0").rstrip(".")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Controls:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        metrics: Metrics,
        backend: CounterBackend | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings.budgets
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.tz = ZoneInfo(self.settings.timezone)
        self.local = InProcessCounters(self._load_spend, clock)
        self.backend: CounterBackend = backend or self.local
        self.model_limits = settings.model_limits
        self._windows: dict[str, Window] = {}
        # per identity (a frozen object the key cache keeps): its checks, rebuilt when a
        # budget period rolls over or the identity changes
        self._plans: dict[tuple[int, str], _Plan] = {}
        self._last_warning = 0.0
        self._warned: set[str] = set()

    async def _load_spend(self, scope: str, scope_id: str, start: float, end: float) -> float:
        return await asyncio.to_thread(self.store.spend, scope, scope_id, start, end)

    def window(self, period: str) -> Window:
        now = self.clock()
        w = self._windows.get(period)
        if w is None or not (w.start <= now < w.end):
            w = window(period, now, self.tz)
            self._windows[period] = w
        return w

    def budget_checks(self, ident: Identity) -> tuple[BudgetCheck, ...]:
        checks = []
        for lim in ident.limits:
            if lim.budget_usd is not None:
                w = self.window(lim.budget_period)
                checks.append(
                    BudgetCheck(lim.scope, lim.scope_id, lim.name, lim.budget_usd,
                                lim.budget_period, w.start, w.end)
                )  # fmt: skip
        return tuple(checks)

    def _rate_checks(self, ident: Identity, model: str) -> tuple[RateCheck, ...]:
        checks = []
        for lim in ident.limits:
            if lim.rpm:
                checks.append(RateCheck(lim.scope, lim.scope_id, lim.name, "requests", lim.rpm))
            if lim.tpm:
                checks.append(RateCheck(lim.scope, lim.scope_id, lim.name, "tokens", lim.tpm))
        per_model = self.model_limits.get(model)
        if per_model is not None:
            sid = f"{ident.key_id}:{model}"
            name = f"{ident.key_name} on {model}"
            if per_model.rpm:
                checks.append(RateCheck("model", sid, name, "requests", per_model.rpm))
            if per_model.tpm:
                checks.append(RateCheck("model", sid, name, "tokens", per_model.tpm))
        return tuple(checks)

    def _estimate(
        self, payload: dict[str, Any], body_len: int, rates: Rates | None
    ) -> tuple[int, float]:
        """(input-token estimate, cost to reserve). Input ≈ body bytes / 4; output = the
        request's max tokens, else ``budgets.default_output_tokens``."""
        input_tokens = body_len // 4
        out_tokens = self.settings.default_output_tokens
        for name in _MAX_TOKENS_FIELDS:
            v = payload.get(name)
            if isinstance(v, int) and v >= 0:
                out_tokens = v
                break
        if rates is None:
            return input_tokens, self.settings.unknown_price_reservation_usd
        cost = input_tokens * rates.input.at(input_tokens) + out_tokens * rates.output.at(
            input_tokens
        )
        return input_tokens, cost

    async def admit(
        self,
        ident: Identity,
        model: str,
        payload: dict[str, Any],
        body_len: int,
        rates_of_target: Callable[[], Rates | None],
    ) -> Ticket | None:
        """Refuse (GatewayError 429 / 402) or admit; ``None`` when nothing limits this caller."""
        if not ident.limits and model not in self.model_limits:
            return None
        now = self.clock()
        plan_key = (id(ident), model)
        plan = self._plans.get(plan_key)
        if plan is None or now >= plan[0]:
            budgets = self.budget_checks(ident)
            rate_checks = self._rate_checks(ident, model)
            valid_until = min((b.end for b in budgets), default=now + 3600.0)
            if len(self._plans) > 50_000:
                self._plans.clear()
            # the entry holds ident itself so that id(ident) cannot be reused while cached
            self._plans[plan_key] = plan = (valid_until, budgets, rate_checks, ident)
        _, budgets, rate_checks, _ = plan
        if not budgets and not rate_checks:
            return None
        tokens, amount = self._estimate(payload, body_len, rates_of_target())
        # one request larger than a tokens-per-minute limit still passes once the bucket is full
        tpm = [c.limit for c in rate_checks if c.kind == "tokens"]
        if tpm:
            tokens = min(tokens, min(tpm))
        ticket = Ticket(rate_checks=rate_checks, tokens_estimate=tokens, backend=self.backend)
        # budgets first (a request refused for money keeps its rate allowance), then rate
        # limits (a refused request reserves nothing): one step in either backend
        result: Reservation | BudgetRefusal | RateRefusal | None = None
        if ticket.backend is self.local:  # in process: no await on the hot path
            result = self.local.admit_now(budgets, amount, rate_checks, tokens, ticket.rate_state)
        if result is None:
            result = await self._call(
                ticket, "admit", budgets, amount, rate_checks, tokens, ticket.rate_state
            )
        if isinstance(result, BudgetRefusal):
            self.metrics.budget_rejected(
                result.check.scope, ident.org_name, ident.user_name, ident.key_name
            )
            raise self._budget_error(result)
        if isinstance(result, RateRefusal):
            check = result.check
            self.metrics.rate_limit_refused(
                check.scope, check.kind, ident.org_name, ident.user_name, ident.key_name
            )
            raise self._rate_error(result)
        if budgets:
            ticket.reservation = result
            self._soft_limits(ticket, result)
        return ticket

    def _soft_limits(self, ticket: Ticket, reservation: Reservation) -> None:
        """Past ``budgets.warn_at`` of a budget: a warning header, a metric, a log line once
        per budget and period. The request still goes through (a soft limit)."""
        warn_at = self.settings.warn_at
        if warn_at is None:
            return
        for check, used in zip(reservation.checks, reservation.used, strict=False):
            if used >= warn_at * check.limit_usd:  # rare: the loop is all the cost otherwise
                share = used / check.limit_usd if check.limit_usd else 1.0
                ticket.warnings.append(
                    f"{check.scope} {check.name!r} has used {share:.0%} of its"
                    f" {_money(check.limit_usd)} {check.period} budget"
                )
                self.metrics.budget_warnings.labels(check.scope).inc()
                if check.key not in self._warned:
                    if len(self._warned) > 100_000:
                        self._warned.clear()
                    self._warned.add(check.key)
                    log.warning("soft limit: %s", ticket.warnings[-1])

    def settle_now(self, ticket: Ticket, cost: float | None, tokens: int) -> bool:
        """Settle without awaiting when the ticket's counters are this process's; False when
        ``settle`` must be awaited instead."""
        if ticket.backend is not self.local:
            return False
        extra_tokens = tokens - ticket.tokens_estimate if ticket.rate_checks else 0
        self.local.finish_now(ticket.reservation, cost or 0.0, ticket.rate_checks, extra_tokens)
        return True

    async def settle(self, ticket: Ticket, cost: float | None, tokens: int) -> None:
        if self.settle_now(ticket, cost, tokens):
            return
        backend = ticket.backend or self.backend
        extra_tokens = tokens - ticket.tokens_estimate if ticket.rate_checks else 0
        try:
            await backend.finish(ticket.reservation, cost or 0.0, ticket.rate_checks, extra_tokens)
        except ConnectionError:
            self._warn("could not settle a request's spend in the shared counters")

    async def _call(self, ticket: Ticket, method: str, *args: Any) -> Any:
        """Call the ticket's backend; if the shared one is unreachable, fail open (this
        process's counters, for the rest of this request too) or closed (503)."""
        backend = ticket.backend or self.backend
        try:
            return await getattr(backend, method)(*args)
        except ConnectionError as exc:
            if backend is self.local or self.settings.redis_failure == "closed":
                if backend is not self.local:
                    self.metrics.counters_unavailable.inc()
                    self._warn(f"shared counters unavailable ({exc}); refusing (fail-closed)")
                raise GatewayError(
                    503, f"spend and rate counters are unavailable: {exc}", "counters_unavailable"
                ) from None
            self.metrics.counters_unavailable.inc()
            self._warn(f"shared counters unavailable ({exc}); using this process's counters")
            ticket.backend = self.local
            return await getattr(self.local, method)(*args)

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning > 10:
            self._last_warning = now
            log.warning(message)

    def _budget_error(self, refusal: BudgetRefusal) -> GatewayError:
        c = refusal.check
        period = "total" if c.period == "total" else f"{c.period}ly".replace("dayly", "daily")
        resets = "never resets" if c.period == "total" else f"resets at {_iso(c.end)}"
        return GatewayError(
            402,
            f"budget exhausted: {c.scope} {c.name!r} has used {_money(refusal.spent)} (spent,"
            f" and reserved by its requests in flight) of its {period} budget of"
            f" {_money(c.limit_usd)}; it {resets}",
            "budget_exceeded",
        )

    @staticmethod
    def _rate_error(refusal: RateRefusal) -> GatewayError:
        c = refusal.check
        retry = max(1, int(refusal.retry_after + 0.999))
        what = "requests" if c.kind == "requests" else "tokens"
        return GatewayError(
            429,
            f"rate limit: {c.scope} {c.name!r} may send {c.limit} {what} per minute; "
            f"retry in {retry}s",
            "rate_limit_exceeded",
            headers=[
                (b"retry-after", str(retry).encode()),
                (f"x-ratelimit-limit-{what}".encode(), str(c.limit).encode()),
                (f"x-ratelimit-remaining-{what}".encode(), b"0"),
                (f"x-ratelimit-reset-{what}".encode(), f"{refusal.retry_after:.3f}s".encode()),
            ],
        )

    async def spent(self, check: BudgetCheck) -> float:
        """Spent plus reserved, from the shared counters or, while they are unreachable, this
        process's."""
        try:
            return await self.backend.spent(check)
        except ConnectionError:
            return await self.local.spent(check)

    async def adjust(self, scope: str, scope_id: str, amount: float) -> None:
        """Apply a stored manual adjustment to the live counters (not a reload from the
        database: records still queued for it would be lost from the spend)."""
        await self.local.adjust(scope, scope_id, amount)
        if self.backend is not self.local:
            try:
                await self.backend.adjust(scope, scope_id, amount)
            except ConnectionError:
                self._warn("could not apply an adjustment to the shared counters")

    async def settled(self, scope: str, scope_id: str, name: str, period: str) -> float:
        """What a scope has been charged this period, as the counters see it."""
        w = self.window(period)
        check = BudgetCheck(scope, scope_id, name, 0.0, period, w.start, w.end)
        try:
            return await self.backend.settled(check)
        except ConnectionError:
            return await self.local.settled(check)

    def use_redis(self, url: str) -> None:
        """Share counters through Redis (call on the running event loop: the connection pool
        belongs to it)."""
        from gatewatch.controls.redis_backend import RedisCounters

        self.backend = RedisCounters(url, self._load_spend, clock=self.clock)

    async def close(self) -> None:
        if self.backend is not self.local:
            await self.backend.close()

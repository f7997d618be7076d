"""Budget and rate-limit counters: what a backend must do, and the in-process backend.

A backend answers two questions atomically: may this request spend (check every budget that
applies, and reserve an estimate on all of them at once), and may it go now (GCRA rate limits).
The in-process backend is exact for one worker: the event loop runs each call to completion.
The Redis backend (``redis_backend``) does the same in Lua scripts, for several workers/nodes."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "BudgetCheck",
    "BudgetRefusal",
    "CounterBackend",
    "InProcessCounters",
    "RateCheck",
    "RateRefusal",
    "Reservation",
]

# Loads what a scope has spent in [start, end) from the database (the durable ledger).
SpendLoader = Callable[[str, str, float, float], Awaitable[float]]


@dataclass(frozen=True, slots=True)
class BudgetCheck:
    scope: str  # key | user | org
    scope_id: str
    name: str
    limit_usd: float
    period: str
    start: float
    end: float
    key: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        key = f"{self.scope}:{self.scope_id}:{self.period}:{int(self.start)}"
        object.__setattr__(self, "key", key)


@dataclass(frozen=True, slots=True)
class BudgetRefusal:
    check: BudgetCheck
    spent: float  # settled + reserved when refused


@dataclass(slots=True)
class Reservation:
    checks: tuple[BudgetCheck, ...]
    amount: float
    used: tuple[float, ...] = ()  # per check, spent + reserved before this reservation


@dataclass(frozen=True, slots=True)
class RateCheck:
    scope: str  # key | user | org | model (a model within a key)
    scope_id: str
    name: str
    kind: str  # requests | tokens
    limit: int  # per minute
    key: str = field(init=False, compare=False, repr=False)
    limit_bytes: bytes = field(init=False, compare=False, repr=False)  # for headers

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.scope}:{self.scope_id}:{self.kind}")
        object.__setattr__(self, "limit_bytes", b"%d" % self.limit)


@dataclass(frozen=True, slots=True)
class RateRefusal:
    check: RateCheck
    retry_after: float  # seconds


@dataclass(slots=True)
class RateState:
    """Per check: (check, remaining, seconds to reset), for the ``x-ratelimit-*`` headers."""

    remaining: list[tuple[RateCheck, int, float]] = field(default_factory=list)

    def of(self, check: RateCheck) -> tuple[int, float]:
        """(remaining, seconds to reset) last seen for ``check``."""
        for seen, remaining, reset in reversed(self.remaining):
            if seen.key == check.key:
                return remaining, reset
        raise KeyError(check.key)


class CounterBackend(Protocol):
    async def reserve(
        self, checks: tuple[BudgetCheck, ...], amount: float
    ) -> Reservation | BudgetRefusal: ...

    async def settle(self, reservation: Reservation, actual: float) -> None: ...

    async def spent(self, check: BudgetCheck) -> float: ...

    async def hit(
        self, checks: tuple[RateCheck, ...], tokens: int, state: RateState
    ) -> RateRefusal | None: ...

    async def add_tokens(self, checks: tuple[RateCheck, ...], tokens: int) -> None: ...

    async def admit(
        self,
        budgets: tuple[BudgetCheck, ...],
        amount: float,
        rates: tuple[RateCheck, ...],
        tokens: int,
        state: RateState,
    ) -> Reservation | BudgetRefusal | RateRefusal:
        """``reserve`` then ``hit`` in one atomic step: every budget is checked (a refusal
        changes nothing), then every rate limit (a refusal reserves nothing and changes no rate
        state), then ``amount`` is reserved on every budget and every rate limit is counted.
        ``state`` is filled as ``hit`` fills it. Without budgets, the reservation has no
        checks."""

    async def finish(
        self,
        reservation: Reservation | None,
        actual: float,
        rates: tuple[RateCheck, ...],
        extra_tokens: int,
    ) -> None:
        """``settle(reservation, actual)`` (when there is one) and
        ``add_tokens(rates, extra_tokens)`` in one step."""

    async def settled(self, check: BudgetCheck) -> float:
        """Settled spend only (no reservations)."""

    async def adjust(self, scope: str, scope_id: str, amount: float) -> None:
        """Add a manual adjustment to the scope's loaded spend (every cached period)."""

    async def forget(self, scope: str, scope_id: str) -> None:
        """Drop cached spend for a scope (the next use reloads it from the database)."""

    async def close(self) -> None: ...


_WINDOW = 60.0  # rate limits are per minute


def gcra(tat: float, now: float, limit: int, cost: float) -> tuple[float, float, int]:
    """Generic cell rate algorithm for ``limit`` per minute with a burst of ``limit``.

    Returns (new theoretical arrival time, retry-after seconds (0 = allowed), remaining)."""
    interval = _WINDOW / limit
    base = max(tat, now)
    new_tat = base + interval * cost
    over = new_tat - now - _WINDOW
    if over > 1e-9:
        return tat, over, max(0, math.floor((_WINDOW - (base - now)) / interval))
    return new_tat, 0.0, max(0, math.floor((_WINDOW - (new_tat - now)) / interval))


class InProcessCounters:
    """Counters in this process's memory. Spent amounts are loaded once per scope and period
    from the database, then kept current by ``settle``."""

    def __init__(self, load_spend: SpendLoader, clock: Callable[[], float] = time.time) -> None:
        self._load = load_spend
        self._clock = clock
        self._spent: dict[str, float] = {}
        self._reserved: dict[str, float] = {}
        self._tat: dict[str, float] = {}

    async def _ensure(self, check: BudgetCheck) -> None:
        if check.key not in self._spent:
            loaded = await self._load(check.scope, check.scope_id, check.start, check.end)
            self._spent.setdefault(check.key, loaded)

    async def spent(self, check: BudgetCheck) -> float:
        await self._ensure(check)
        return self._spent[check.key] + self._reserved.get(check.key, 0.0)

    async def reserve(
        self, checks: tuple[BudgetCheck, ...], amount: float
    ) -> Reservation | BudgetRefusal:
        for check in checks:
            await self._ensure(check)
        result = self.reserve_now(checks, amount)
        assert result is not None
        return result

    def reserve_now(
        self, checks: tuple[BudgetCheck, ...], amount: float
    ) -> Reservation | BudgetRefusal | None:
        """``reserve`` in one step on the event loop (no await between check and reserve);
        None when a spend has to be loaded from the database first."""
        useds = self._check_budgets(checks)
        if useds is None or isinstance(useds, BudgetRefusal):
            return useds
        self._reserve(checks, amount)
        return Reservation(checks, amount, useds)

    def _check_budgets(
        self, checks: tuple[BudgetCheck, ...]
    ) -> tuple[float, ...] | BudgetRefusal | None:
        """What each check has used (settled + reserved), the first refusal, or None when a
        spend has to be loaded first. Changes nothing."""
        spent, reserved = self._spent, self._reserved
        useds = []
        for check in checks:
            settled = spent.get(check.key)
            if settled is None:
                return None
            used = settled + reserved.get(check.key, 0.0)
            if used >= check.limit_usd:
                return BudgetRefusal(check, used)
            useds.append(used)
        return tuple(useds)

    def _reserve(self, checks: tuple[BudgetCheck, ...], amount: float) -> None:
        reserved = self._reserved
        for check in checks:
            reserved[check.key] = reserved.get(check.key, 0.0) + amount

    async def admit(
        self,
        budgets: tuple[BudgetCheck, ...],
        amount: float,
        rates: tuple[RateCheck, ...],
        tokens: int,
        state: RateState,
    ) -> Reservation | BudgetRefusal | RateRefusal:
        """``admit_now``, loading missing spends from the database first."""
        while True:
            result = self.admit_now(budgets, amount, rates, tokens, state)
            if result is not None:
                return result
            for check in budgets:
                await self._ensure(check)

    def admit_now(
        self,
        budgets: tuple[BudgetCheck, ...],
        amount: float,
        rates: tuple[RateCheck, ...],
        tokens: int,
        state: RateState,
    ) -> Reservation | BudgetRefusal | RateRefusal | None:
        """``CounterBackend.admit`` in one step on the event loop; None (nothing changed,
        ``state`` untouched) when a spend has to be loaded from the database first."""
        useds = self._check_budgets(budgets)
        if useds is None or isinstance(useds, BudgetRefusal):
            return useds
        if rates:
            updates = self._check_rates(rates, tokens, state)
            if isinstance(updates, RateRefusal):
                return updates
            tats = self._tat
            for key, tat in updates:
                tats[key] = tat
        self._reserve(budgets, amount)
        return Reservation(budgets, amount, useds)

    async def settle(self, reservation: Reservation, actual: float) -> None:
        self.settle_now(reservation, actual)

    def settle_now(self, reservation: Reservation, actual: float) -> None:
        for check in reservation.checks:
            key = check.key
            self._reserved[key] = max(self._reserved.get(key, 0.0) - reservation.amount, 0.0)
            if key in self._spent:
                self._spent[key] += actual

    async def settled(self, check: BudgetCheck) -> float:
        await self._ensure(check)
        return self._spent[check.key]

    async def adjust(self, scope: str, scope_id: str, amount: float) -> None:
        prefix = f"{scope}:{scope_id}:"
        for key in self._spent:
            if key.startswith(prefix):
                self._spent[key] += amount

    async def forget(self, scope: str, scope_id: str) -> None:
        prefix = f"{scope}:{scope_id}:"
        for key in [k for k in self._spent if k.startswith(prefix)]:
            del self._spent[key]

    async def hit(
        self, checks: tuple[RateCheck, ...], tokens: int, state: RateState
    ) -> RateRefusal | None:
        return self.hit_now(checks, tokens, state)

    def hit_now(
        self, checks: tuple[RateCheck, ...], tokens: int, state: RateState
    ) -> RateRefusal | None:
        updates = self._check_rates(checks, tokens, state)
        if isinstance(updates, RateRefusal):
            return updates
        for key, tat in updates:
            self._tat[key] = tat
        return None

    def _check_rates(
        self, checks: tuple[RateCheck, ...], tokens: int, state: RateState
    ) -> list[tuple[str, float]] | RateRefusal:
        """GCRA on every check, changing nothing: the new arrival times, or the first refusal.
        Appends (check, remaining, reset) to ``state`` for each check that allows."""
        now = self._clock()
        updates: list[tuple[str, float]] = []
        for check in checks:
            cost = 1.0 if check.kind == "requests" else float(max(tokens, 0))
            tat, retry, remaining = gcra(self._tat.get(check.key, now), now, check.limit, cost)
            if retry:
                return RateRefusal(check, retry)
            updates.append((check.key, tat))
            state.remaining.append((check, remaining, tat - now))
        return updates

    async def add_tokens(self, checks: tuple[RateCheck, ...], tokens: int) -> None:
        self.add_tokens_now(checks, tokens)

    def add_tokens_now(self, checks: tuple[RateCheck, ...], tokens: int) -> None:
        now = self._clock()
        for check in checks:
            if check.kind == "tokens" and tokens:
                tat = max(self._tat.get(check.key, now), now)
                self._tat[check.key] = tat + tokens * _WINDOW / check.limit

    async def finish(
        self,
        reservation: Reservation | None,
        actual: float,
        rates: tuple[RateCheck, ...],
        extra_tokens: int,
    ) -> None:
        self.finish_now(reservation, actual, rates, extra_tokens)

    def finish_now(
        self,
        reservation: Reservation | None,
        actual: float,
        rates: tuple[RateCheck, ...],
        extra_tokens: int,
    ) -> None:
        """``settle_now`` (when there is a reservation) and ``add_tokens_now``."""
        if reservation is not None:
            self.settle_now(reservation, actual)
        if rates and extra_tokens:
            self.add_tokens_now(rates, extra_tokens)

    async def close(self) -> None:
        return None

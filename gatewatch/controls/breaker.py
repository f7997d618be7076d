"""Circuit breakers per provider/model target (§C3), used by failover (§P6).

A target is a ``"provider/model"`` key (e.g. ``"openai/gpt-4o"``). Each has its own breaker:

* **closed** (the start, and every unknown target): every request is allowed. Each failure
  (429, 5xx, timeout, connect error) adds one to a *consecutive* failure count; any success
  resets it to 0. When the count reaches ``failure_threshold`` the breaker **opens**.
* **open**: requests are refused (``allow`` → False, failover skips the target) until
  ``cooldown`` seconds have passed since it opened. Outcomes of requests that were already in
  flight when it opened still count in the statistics; a late failure does not extend the
  cooldown, a late success closes the breaker (the target did answer).
* **half_open**: once the cooldown has passed, ``allow`` lets exactly one trial request through
  at a time (others are refused while it is in flight). A successful trial closes the breaker;
  a failed trial opens it again for a new full cooldown; ``release`` (the trial ended neither
  way, e.g. the client left) lets the next request be the trial. A trial that reports nothing
  for ``trial_timeout`` seconds is presumed lost, so a missing report cannot wedge a target.

Every ``allow`` that returned True must be followed by exactly one of ``record_success``,
``record_failure`` or ``release`` for that target. One event loop drives all calls, so there are
no locks. When closed, ``allow`` is a dict lookup and a comparison and allocates nothing; the
open → half_open change happens lazily, when a call observes that the cooldown has passed.

Shared (``use_redis``): the same state machine for every process using that Redis, kept by
``breaker_redis.BreakerSync``. The breakers here are then this process's copy of the shared
state: ``allow`` reads it as above (no Redis on the request path), failures and the successes
that reset a non-zero count are queued for Redis, and the shared state comes back (the reply,
published changes, snapshots). A consecutive failure count is the count of all processes. The
one half-open trial is *claimed* in Redis: after the cooldown, a process that has requests for
the target claims it (at the end of the cooldown when requests were refused during it, else on
the first request after it, which is refused); its next request is the trial. While Redis is
unavailable the breakers work here alone, from the state last seen. The recent-window
statistics (error rate, p50) are always this process's.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from gatewatch.controls.breaker_redis import BreakerSync, SharedState
    from gatewatch.settings import CircuitBreakerSettings

__all__ = [
    "CLOSED",
    "HALF_OPEN",
    "OPEN",
    "STATE_VALUES",
    "CircuitBreakers",
    "StateListener",
]

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"

# A numeric encoding of the states for a Prometheus gauge.
STATE_VALUES: Final[dict[str, int]] = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}

# Called with (target, old state, new state) on each stored transition.
StateListener = Callable[[str, str, str], None]

# What ``retry_after`` says for a target whose half-open trial is still in flight: the trial
# usually settles within about a request's time-to-first-byte.
_TRIAL_RETRY_SECONDS: Final = 1.0
# Shared: a claimed trial is used only while this much of its claim is left (the lease is then
# extended in Redis well before it would expire), and a process asks for a claim at most this
# often per target.
_CLAIM_MARGIN: Final = 0.25
_ASK_INTERVAL: Final = 0.05


class _Breaker:
    """One target's state, consecutive-failure count and ring buffer of recent attempts."""

    __slots__ = (
        "asked",
        "claim_until",
        "failures",
        "filled",
        "foreign",
        "latency",
        "next",
        "ok",
        "opened_at",
        "seq",
        "state",
        "token",
        "trial_at",
        "until",
    )

    def __init__(self, window: int) -> None:
        self.state: str = CLOSED
        self.failures = 0
        self.until = 0.0  # monotonic time the open breaker becomes trial-able
        self.opened_at: float | None = None  # wall-clock (unix) time it last opened
        self.trial_at: float | None = None  # monotonic time the in-flight trial was let through
        self.ok: list[bool] = [True] * window
        self.latency: list[float | None] = [None] * window
        self.filled = 0
        self.next = 0
        # shared mode: the sequence number of the shared state applied last, this process's
        # trial lease (claimed, usable until claim_until; kept while its trial runs), until
        # when another process's trial lease runs, and when a claim was last asked for
        self.seq = -1
        self.token: str | None = None
        self.claim_until = 0.0
        self.foreign = 0.0
        self.asked = -math.inf

    def push(self, ok: bool, latency_ms: float | None) -> None:
        i = self.next
        self.ok[i] = ok
        self.latency[i] = latency_ms
        i += 1
        self.next = 0 if i == len(self.ok) else i
        if self.filled < len(self.ok):
            self.filled += 1


class CircuitBreakers:
    """All targets' breakers (see the module docstring for the state machine).

    ``clock`` is monotonic seconds (cooldowns); ``wall_clock`` is unix seconds, used only for the
    ``opened_at`` that ``snapshot`` reports. ``window`` is how many recent attempts per target the
    error rate and p50 latency are computed over.
    """

    def __init__(
        self,
        failure_threshold: int,
        cooldown: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        wall_clock: Callable[[], float] = time.time,
        window: int = 100,
        trial_timeout: float = 600.0,
        on_change: StateListener | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if cooldown < 0:
            raise ValueError("cooldown must not be negative")
        if window < 1:
            raise ValueError("window must be at least 1")
        if trial_timeout <= 0:
            raise ValueError("trial_timeout must be positive")
        self.failure_threshold = failure_threshold
        self.cooldown = float(cooldown)
        self.trial_timeout = float(trial_timeout)
        self.window = window
        self._clock = clock
        self._wall_clock = wall_clock
        self._on_change = on_change
        self._breakers: dict[str, _Breaker] = {}
        self._sync: BreakerSync | None = None

    @classmethod
    def from_settings(cls, settings: CircuitBreakerSettings, **kwargs: Any) -> CircuitBreakers:
        """Breakers configured by the ``circuit_breaker`` settings section."""
        return cls(settings.failure_threshold, settings.cooldown, **kwargs)

    async def use_redis(self, url: str, **kwargs: Any) -> None:
        """Share the breakers with every process using this Redis (call on the running event
        loop; waits at most Redis's timeout for a first snapshot). See ``BreakerSync``."""
        from gatewatch.controls.breaker_redis import BreakerSync

        self._sync = BreakerSync(self, url, clock=self._clock, **kwargs)
        await self._sync.start()

    async def close(self) -> None:
        sync, self._sync = self._sync, None
        if sync is not None:
            await sync.close()

    @property
    def shared(self) -> bool:
        """Whether the breakers follow the shared state in Redis right now."""
        return self._sync is not None and self._sync.active

    # -- the hot path ----------------------------------------------------------------------

    def allow(self, target: str) -> bool:
        """May a request go to ``target`` now? True when closed; when open, False until the
        cooldown has passed, then True for one trial at a time (half-open). A True answer must
        be followed by ``record_success``, ``record_failure`` or ``release``."""
        b = self._breakers.get(target)
        if b is None or b.state is CLOSED:
            return True
        now = self._clock()
        sync = self._sync
        if sync is not None and sync.active:
            return self._allow_shared(target, b, now, sync)
        if b.state is OPEN:
            if now < b.until:
                return False
            b.state = HALF_OPEN
            b.trial_at = now
            self._changed(target, OPEN, HALF_OPEN)
            return True
        if b.trial_at is not None and now - b.trial_at < self.trial_timeout:
            return False  # a trial is in flight
        b.trial_at = now
        return True

    def record_success(self, target: str, latency_ms: float | None = None) -> None:
        """The target answered (not 429/5xx): reset its consecutive failures and close it."""
        b = self._breaker(target)
        b.push(True, latency_ms)
        if b.failures or b.state is not CLOSED:
            sync = self._sync
            if sync is not None and sync.active:
                sync.report(target, "s")
            b.failures = 0
            if b.state is not CLOSED:
                old = b.state
                b.state = CLOSED
                b.opened_at = None
                b.trial_at = None
                b.token = None
                self._changed(target, old, CLOSED)

    def record_failure(self, target: str, latency_ms: float | None = None) -> None:
        """A 429, 5xx, timeout or connection error: one more consecutive failure. Opens a closed
        breaker at the threshold; a failed half-open trial opens it for a new full cooldown."""
        b = self._breaker(target)
        b.push(False, latency_ms)
        b.failures += 1
        sync = self._sync
        if sync is not None and sync.active:  # Redis decides; its answer comes back
            trial = b.token if b.state is HALF_OPEN and b.token is not None else ""
            sync.report(target, "f", trial)
            return
        if b.state is CLOSED:
            if b.failures >= self.failure_threshold:
                self._open(target, b, CLOSED)
        elif b.state is HALF_OPEN:
            self._open(target, b, HALF_OPEN)
        # already open: a request from before it opened; the cooldown stands

    def release(self, target: str) -> None:
        """A request ended with no verdict on the target (e.g. the client left). If it was the
        half-open trial, the next request may be the trial. Harmless in any other state."""
        b = self._breakers.get(target)
        if b is not None and b.state is HALF_OPEN:
            b.trial_at = None
            sync = self._sync
            if sync is not None and sync.active and b.token is not None:
                sync.report(target, "r", b.token)  # another process may take the trial
                b.token = None
                b.state = OPEN  # cooldown over: the next request asks for the trial again

    def _allow_shared(self, target: str, b: _Breaker, now: float, sync: BreakerSync) -> bool:
        if b.state is HALF_OPEN:  # this process's trial
            if b.trial_at is not None and now - b.trial_at < self.trial_timeout:
                return False
            b.state = OPEN  # presumed lost, and its lease has expired in Redis too
            b.trial_at = None
            b.token = None
            self._changed(target, HALF_OPEN, OPEN)
        if now < b.until:
            sync.want(target, b.until)  # requests are waiting: claim the trial when it ends
            return False
        if b.token is not None and now < b.claim_until:
            b.state = HALF_OPEN
            b.trial_at = now
            b.claim_until = 0.0
            sync.report(target, "x", b.token)
            self._changed(target, OPEN, HALF_OPEN)
            return True
        if b.foreign <= now and now - b.asked >= _ASK_INTERVAL:
            b.asked = now
            sync.want(target, now)
        return False

    # -- shared state (called by BreakerSync) ------------------------------------------------

    def wants_trial(self, target: str, now: float) -> bool:
        """Should this process claim ``target``'s trial now: open, cooldown over, no trial
        lease known (its own or another process's)?"""
        b = self._breakers.get(target)
        return (
            b is not None
            and b.state is OPEN
            and now >= b.until
            and b.foreign <= now
            and not (b.token is not None and now < b.claim_until)
        )

    def shared_update(
        self,
        target: str,
        state: SharedState,
        claimed: str | None = None,
        claim_until: float = 0.0,
    ) -> None:
        """Apply ``target``'s shared state unless a newer one was applied; ``claimed``: the
        token of the trial lease this process has just claimed."""
        b = self._breaker(target)
        if state.seq < b.seq:
            return
        b.seq = state.seq
        if claimed is not None:
            b.token = claimed
            b.claim_until = claim_until - _CLAIM_MARGIN
        b.failures = state.failures
        old = b.state
        if not state.open:
            b.opened_at = None
            b.trial_at = None
            b.token = None
            b.foreign = 0.0
            if old is not CLOSED:
                b.state = CLOSED
                self._changed(target, old, CLOSED)
            return
        b.until = state.until
        b.opened_at = state.opened_at
        if state.holder and state.holder == b.token:
            b.foreign = 0.0
            if old is CLOSED:
                b.state = OPEN
                self._changed(target, old, OPEN)
            return  # this process's claim, or its trial, holds
        b.foreign = state.lease_until if state.holder else 0.0
        b.token = None
        b.trial_at = None
        if old is not OPEN:
            b.state = OPEN
            self._changed(target, old, OPEN)

    def shared_snapshot(self, seq: int, states: dict[str, SharedState]) -> None:
        """Apply a snapshot taken at ``seq``: ``states`` of the targets with failures or open;
        every other target is closed with no failures."""
        from gatewatch.controls.breaker_redis import CLOSED_STATE

        for target, state in states.items():
            self.shared_update(target, state)
        closed = None
        for target, b in self._breakers.items():
            if target not in states and (b.failures or b.state is not CLOSED):
                closed = closed or replace(CLOSED_STATE, seq=seq)
                self.shared_update(target, closed)

    def shared_lost(self) -> None:
        """Redis is unavailable: the breakers go on here alone. Claims not yet used lapse."""
        for b in self._breakers.values():
            if b.state is not HALF_OPEN:
                b.token = None
            b.foreign = 0.0

    # -- inspection ------------------------------------------------------------------------

    def state(self, target: str) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"`` (an open breaker whose cooldown has
        passed reports ``"half_open"``: its next request is a trial, or, shared, asks for it)."""
        b = self._breakers.get(target)
        if b is None:
            return CLOSED
        if b.state is OPEN and self._clock() >= b.until:
            return HALF_OPEN
        return b.state

    def retry_after(self, targets: Iterable[str]) -> float:
        """Seconds until the first of ``targets`` will let a request through: 0 when any is
        closed or trial-able now, else the smallest remaining cooldown (a target whose trial is
        in flight counts as about a second away). For ``Retry-After`` when all are refused."""
        now = self._clock()
        best = math.inf
        for target in targets:
            b = self._breakers.get(target)
            if b is None or b.state is CLOSED:
                return 0.0
            wait = self._wait(b, now)
            if wait <= 0.0:
                return 0.0
            best = min(best, wait)
        return 0.0 if best == math.inf else best

    def register(self, targets: Iterable[str]) -> None:
        """Make targets known (closed) so ``snapshot`` lists them before their first attempt."""
        for target in targets:
            self._breaker(target)

    def snapshot(self) -> list[dict[str, Any]]:
        """Per known target, sorted by target: ``target``, ``state``, ``consecutive_failures``,
        ``opened_at`` (unix seconds it last opened, None when closed), ``retry_in_seconds``
        (0 unless open), ``trial_in_flight``, and over the last ``window`` recorded attempts:
        ``recent_attempts``, ``error_rate`` (failures / attempts, None with no attempts) and
        ``p50_latency_ms`` (median of the attempts that reported a latency, or None)."""
        now = self._clock()
        out: list[dict[str, Any]] = []
        for target in sorted(self._breakers):
            b = self._breakers[target]
            n = b.filled
            failed = n - sum(b.ok[:n]) if n else 0
            latencies = [x for x in b.latency[:n] if x is not None]
            state = HALF_OPEN if b.state is OPEN and now >= b.until else b.state
            trial = (
                b.state is HALF_OPEN
                and b.trial_at is not None
                and now - b.trial_at < self.trial_timeout
            ) or (b.state is OPEN and now >= b.until and b.foreign > now)
            out.append(
                {
                    "target": target,
                    "state": state,
                    "consecutive_failures": b.failures,
                    "opened_at": b.opened_at,
                    "retry_in_seconds": max(0.0, b.until - now) if b.state is OPEN else 0.0,
                    "trial_in_flight": trial,
                    "recent_attempts": n,
                    "error_rate": failed / n if n else None,
                    "p50_latency_ms": statistics.median(latencies) if latencies else None,
                }
            )
        return out

    # -- internals -------------------------------------------------------------------------

    def _breaker(self, target: str) -> _Breaker:
        b = self._breakers.get(target)
        if b is None:
            b = self._breakers[target] = _Breaker(self.window)
        return b

    def _open(self, target: str, b: _Breaker, old: str) -> None:
        b.state = OPEN
        b.until = self._clock() + self.cooldown
        b.opened_at = self._wall_clock()
        b.trial_at = None
        self._changed(target, old, OPEN)

    def _wait(self, b: _Breaker, now: float) -> float:
        if b.state is OPEN:
            if now >= b.until and b.foreign > now:  # another process's trial is in flight
                return min(_TRIAL_RETRY_SECONDS, b.foreign - now)
            return max(0.0, b.until - now)
        if b.trial_at is None:  # half-open, no trial in flight
            return 0.0
        lease_left = self.trial_timeout - (now - b.trial_at)
        return max(0.0, min(_TRIAL_RETRY_SECONDS, lease_left))

    def _changed(self, target: str, old: str, new: str) -> None:
        if self._on_change is not None:
            self._on_change(target, old, new)

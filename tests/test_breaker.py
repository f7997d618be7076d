"""Circuit breakers per provider/model target (§C3): the closed → open → half-open → closed state
machine, one trial at a time, Retry-After over several targets, and the recent-window statistics.
Time is a fake clock, so nothing sleeps."""

from __future__ import annotations

import pytest

from gatewatch.controls.breaker import STATE_VALUES, CircuitBreakers
from gatewatch.settings import CircuitBreakerSettings

A = "openai/gpt-4o"
B = "anthropic/claude-sonnet-4-5"
C = "openrouter/meta-llama/llama-3-70b"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def wall() -> FakeClock:
    return FakeClock(1_700_000_000.0)


@pytest.fixture
def cb(clock: FakeClock, wall: FakeClock) -> CircuitBreakers:
    return CircuitBreakers(failure_threshold=3, cooldown=30.0, clock=clock, wall_clock=wall)


def fail(cb: CircuitBreakers, target: str, times: int) -> None:
    for _ in range(times):
        assert cb.allow(target)
        cb.record_failure(target)


def open_it(cb: CircuitBreakers, target: str = A) -> None:
    fail(cb, target, cb.failure_threshold)
    assert cb.state(target) == "open"


def test_unknown_target_is_closed_and_allowed(cb: CircuitBreakers) -> None:
    assert cb.state(A) == "closed"
    assert cb.allow(A)
    assert cb.snapshot() == []  # allow() on a closed/unknown target stores nothing


def test_opens_after_exactly_threshold_consecutive_failures(cb: CircuitBreakers) -> None:
    fail(cb, A, 2)
    assert cb.state(A) == "closed"
    assert cb.allow(A)
    cb.record_failure(A)
    assert cb.state(A) == "open"
    assert not cb.allow(A)


def test_a_success_in_between_resets_the_count(cb: CircuitBreakers) -> None:
    fail(cb, A, 2)
    assert cb.allow(A)
    cb.record_success(A)
    assert cb.snapshot()[0]["consecutive_failures"] == 0
    fail(cb, A, 2)
    assert cb.state(A) == "closed"
    fail(cb, A, 1)
    assert cb.state(A) == "open"


def test_threshold_of_one(clock: FakeClock) -> None:
    cb = CircuitBreakers(1, 5.0, clock=clock)
    assert cb.allow(A)
    cb.record_failure(A)
    assert cb.state(A) == "open"


def test_open_target_refused_until_cooldown(cb: CircuitBreakers, clock: FakeClock) -> None:
    open_it(cb)
    clock.advance(29.999)
    assert not cb.allow(A)
    assert cb.state(A) == "open"
    clock.advance(0.001)
    assert cb.state(A) == "half_open"
    assert cb.allow(A)


def test_after_cooldown_exactly_one_trial(cb: CircuitBreakers, clock: FakeClock) -> None:
    open_it(cb)
    clock.advance(30)
    assert cb.allow(A)  # the trial
    assert cb.state(A) == "half_open"
    for _ in range(5):
        assert not cb.allow(A)  # others refused while the trial is in flight
    clock.advance(10)
    assert not cb.allow(A)
    assert cb.snapshot()[0]["trial_in_flight"] is True


def test_successful_trial_closes(cb: CircuitBreakers, clock: FakeClock) -> None:
    open_it(cb)
    clock.advance(30)
    assert cb.allow(A)
    cb.record_success(A)
    assert cb.state(A) == "closed"
    snap = cb.snapshot()[0]
    assert snap["consecutive_failures"] == 0
    assert snap["opened_at"] is None
    assert all(cb.allow(A) for _ in range(10))
    # closed again: needs the full threshold to reopen
    fail(cb, A, 2)
    assert cb.state(A) == "closed"


def test_failed_trial_reopens_for_a_new_full_cooldown(
    cb: CircuitBreakers, clock: FakeClock
) -> None:
    open_it(cb)
    clock.advance(45)  # well past the first cooldown
    assert cb.allow(A)
    clock.advance(2)  # the trial takes 2 s and fails
    cb.record_failure(A)
    assert cb.state(A) == "open"
    assert cb.retry_after([A]) == pytest.approx(30.0)
    clock.advance(29.9)
    assert not cb.allow(A)
    clock.advance(0.1)
    assert cb.allow(A)


def test_release_lets_another_trial_through(cb: CircuitBreakers, clock: FakeClock) -> None:
    open_it(cb)
    clock.advance(30)
    assert cb.allow(A)
    assert not cb.allow(A)
    cb.release(A)
    assert cb.state(A) == "half_open"
    assert cb.allow(A)  # the next trial
    assert not cb.allow(A)
    cb.record_success(A)
    assert cb.state(A) == "closed"


def test_release_is_harmless_when_not_half_open(cb: CircuitBreakers, clock: FakeClock) -> None:
    cb.release(A)  # unknown
    assert cb.allow(A)
    cb.release(A)  # closed
    assert cb.state(A) == "closed"
    open_it(cb)
    cb.release(A)  # open: stays refused
    assert not cb.allow(A)


def test_lost_trial_expires(clock: FakeClock) -> None:
    cb = CircuitBreakers(1, 10.0, clock=clock, trial_timeout=60.0)
    open_it(cb)
    clock.advance(10)
    assert cb.allow(A)  # a trial that never reports
    clock.advance(59)
    assert not cb.allow(A)
    clock.advance(1)
    assert cb.allow(A)  # presumed lost: a new trial


def test_failures_while_open_do_not_extend_the_cooldown(
    cb: CircuitBreakers, clock: FakeClock
) -> None:
    for _ in range(5):  # five requests in flight at once
        assert cb.allow(A)
    for _ in range(3):
        cb.record_failure(A)
    assert cb.state(A) == "open"
    clock.advance(20)
    cb.record_failure(A)  # stragglers from before it opened
    cb.record_failure(A)
    assert cb.retry_after([A]) == pytest.approx(10.0)
    assert cb.snapshot()[0]["consecutive_failures"] == 5


def test_retry_after_is_smallest_remaining_cooldown(cb: CircuitBreakers, clock: FakeClock) -> None:
    open_it(cb, A)
    clock.advance(10)
    open_it(cb, B)
    clock.advance(5)
    open_it(cb, C)
    # remaining: A 15, B 25, C 30
    assert cb.retry_after([A, B, C]) == pytest.approx(15.0)
    assert cb.retry_after([B, C]) == pytest.approx(25.0)
    assert cb.retry_after([C]) == pytest.approx(30.0)
    clock.advance(15)
    assert cb.retry_after([A, B, C]) == 0.0  # A is trial-able now
    assert cb.retry_after([B, C]) == pytest.approx(10.0)


def test_retry_after_zero_when_any_is_usable(cb: CircuitBreakers) -> None:
    open_it(cb, A)
    assert cb.retry_after([A, B]) == 0.0  # B unknown → closed
    assert cb.retry_after([]) == 0.0


def test_retry_after_with_a_trial_in_flight(cb: CircuitBreakers, clock: FakeClock) -> None:
    open_it(cb, A)
    open_it(cb, B)
    clock.advance(30)
    assert cb.allow(A)  # A's trial is in flight, B's cooldown is over: B can go
    assert cb.retry_after([A, B]) == 0.0
    assert cb.allow(B)
    assert 0.0 < cb.retry_after([A, B]) <= 1.0  # both trials in flight
    cb.release(B)
    assert cb.retry_after([A, B]) == 0.0


def test_targets_are_independent(cb: CircuitBreakers, clock: FakeClock) -> None:
    open_it(cb, A)
    fail(cb, B, 2)
    assert cb.state(B) == "closed"
    assert cb.allow(B)
    assert cb.allow(C)
    clock.advance(30)
    assert cb.allow(A)  # A's trial
    assert cb.allow(B)  # B is closed: not limited to one at a time
    assert cb.allow(B)
    cb.record_failure(A)
    assert cb.state(A) == "open"
    assert cb.state(B) == "closed"
    assert cb.state(C) == "closed"
    cb.record_success(B)
    assert cb.state(A) == "open"
    states = {s["target"]: s["state"] for s in cb.snapshot()}
    assert states == {A: "open", B: "closed"}


def test_snapshot_error_rate_and_p50_over_the_window(clock: FakeClock, wall: FakeClock) -> None:
    cb = CircuitBreakers(1000, 30.0, clock=clock, wall_clock=wall, window=10)
    for ms in (100.0, 200.0, 300.0):
        cb.record_failure(A, latency_ms=ms)
    for ms in (10.0, 20.0, 30.0, 40.0, 50.0):
        cb.record_success(A, latency_ms=ms)
    cb.record_success(A)  # no latency: counts for the rate, not the median
    snap = cb.snapshot()[0]
    assert snap["recent_attempts"] == 9
    assert snap["error_rate"] == pytest.approx(3 / 9)
    assert snap["p50_latency_ms"] == pytest.approx(45.0)  # median of 10..50, 100, 200, 300
    # ten fast successes push everything older out of a 10-attempt window
    for _ in range(10):
        cb.record_success(A, latency_ms=5.0)
    snap = cb.snapshot()[0]
    assert snap["recent_attempts"] == 10
    assert snap["error_rate"] == 0.0
    assert snap["p50_latency_ms"] == 5.0
    # 4 slow failures replace 4 of them: 4/10 errors, median of [5]*6 + [1000]*4
    for _ in range(4):
        cb.record_failure(A, latency_ms=1000.0)
    snap = cb.snapshot()[0]
    assert snap["error_rate"] == pytest.approx(0.4)
    assert snap["p50_latency_ms"] == 5.0
    cb.record_failure(A, latency_ms=1000.0)
    assert cb.snapshot()[0]["p50_latency_ms"] == pytest.approx(502.5)


def test_snapshot_default_window_is_100(cb: CircuitBreakers) -> None:
    for i in range(150):
        if i < 50:
            cb.record_failure(B)
        else:
            cb.record_success(B, latency_ms=float(i))
    snap = cb.snapshot()[0]
    assert snap["recent_attempts"] == 100
    assert snap["error_rate"] == 0.0
    assert snap["p50_latency_ms"] == pytest.approx(99.5)


def test_snapshot_fields(cb: CircuitBreakers, clock: FakeClock, wall: FakeClock) -> None:
    cb.register([B])
    open_it(cb, A)
    clock.advance(12)
    snap = {s["target"]: s for s in cb.snapshot()}
    assert list(snap) == [B, A]  # sorted by target
    a, b = snap[A], snap[B]
    assert a["state"] == "open"
    assert a["consecutive_failures"] == 3
    assert a["opened_at"] == 1_700_000_000.0
    assert a["retry_in_seconds"] == pytest.approx(18.0)
    assert a["trial_in_flight"] is False
    assert a["error_rate"] == 1.0
    assert a["p50_latency_ms"] is None
    assert b == {
        "target": B,
        "state": "closed",
        "consecutive_failures": 0,
        "opened_at": None,
        "retry_in_seconds": 0.0,
        "trial_in_flight": False,
        "recent_attempts": 0,
        "error_rate": None,
        "p50_latency_ms": None,
    }
    clock.advance(18)
    a = {s["target"]: s for s in cb.snapshot()}[A]
    assert a["state"] == "half_open"
    assert a["retry_in_seconds"] == 0.0
    assert a["opened_at"] == 1_700_000_000.0


def test_on_change_reports_transitions(clock: FakeClock) -> None:
    seen: list[tuple[str, str, str]] = []
    cb = CircuitBreakers(2, 10.0, clock=clock, on_change=lambda *t: seen.append(t))
    fail(cb, A, 2)
    clock.advance(10)
    assert cb.allow(A)
    cb.record_failure(A)
    clock.advance(10)
    assert cb.allow(A)
    cb.record_success(A)
    assert seen == [
        (A, "closed", "open"),
        (A, "open", "half_open"),
        (A, "half_open", "open"),
        (A, "open", "half_open"),
        (A, "half_open", "closed"),
    ]
    assert {s: STATE_VALUES[s] for s in ("closed", "half_open", "open")} == {
        "closed": 0,
        "half_open": 1,
        "open": 2,
    }


def test_late_success_while_open_closes(cb: CircuitBreakers) -> None:
    open_it(cb)
    cb.record_success(A)  # a request from before it opened answered after all
    assert cb.state(A) == "closed"
    assert cb.allow(A)


def test_zero_cooldown_trials_at_once(clock: FakeClock) -> None:
    cb = CircuitBreakers(1, 0.0, clock=clock)
    assert cb.allow(A)
    cb.record_failure(A)
    assert cb.state(A) == "half_open"
    assert cb.allow(A)
    assert not cb.allow(A)


def test_from_settings(clock: FakeClock) -> None:
    cb = CircuitBreakers.from_settings(
        CircuitBreakerSettings.model_validate({"failure_threshold": 2, "cooldown": "1m"}),
        clock=clock,
    )
    assert (cb.failure_threshold, cb.cooldown) == (2, 60.0)
    defaults = CircuitBreakers.from_settings(CircuitBreakerSettings())
    assert (defaults.failure_threshold, defaults.cooldown) == (5, 30.0)


@pytest.mark.parametrize("kwargs", [{"failure_threshold": 0}, {"cooldown": -1.0}])
def test_rejects_bad_arguments(kwargs: dict[str, float]) -> None:
    args: dict[str, float] = {"failure_threshold": 5, "cooldown": 30.0, **kwargs}
    with pytest.raises(ValueError):
        CircuitBreakers(int(args["failure_threshold"]), args["cooldown"])


def test_closed_hot_path_allocates_nothing(cb: CircuitBreakers) -> None:
    import sys

    cb.record_success(A)
    allow = cb.allow
    for _ in range(1000):  # warm up
        allow(A)
    before = sys.getallocatedblocks()
    for _ in range(10_000):
        allow(A)
        allow(B)
    assert sys.getallocatedblocks() - before < 50

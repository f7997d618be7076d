"""Budget periods (§C1): calendar windows in the configured time zone, across DST changes, and
budgets and rate limits rolling over with the clock (``Controls`` with an injected clock)."""

from __future__ import annotations

import asyncio
import os
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gatewatch.controls import Controls
from gatewatch.controls.counters import InProcessCounters, RateCheck, RateRefusal, RateState
from gatewatch.controls.periods import window
from gatewatch.metrics import Metrics
from gatewatch.proxy.errors import GatewayError
from gatewatch.settings import load_settings
from gatewatch.store import open_store
from gatewatch.store.base import Identity, ScopeLimits

UTC_ZONE = ZoneInfo("UTC")
PARIS = ZoneInfo("Europe/Paris")


def ts(iso: str) -> float:
    """An ISO time with its offset → Unix seconds."""
    return datetime.fromisoformat(iso).timestamp()


def iso(t: float, tz: ZoneInfo = UTC_ZONE) -> str:
    return datetime.fromtimestamp(t, tz).isoformat()


# ---- window() ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("period", "now", "start", "end"),
    [
        ("day", "2026-03-29T12:00+00:00", "2026-03-29T00:00+00:00", "2026-03-30T00:00+00:00"),
        ("day", "2026-03-29T00:00+00:00", "2026-03-29T00:00+00:00", "2026-03-30T00:00+00:00"),
        ("day", "2026-03-29T23:59:59+00:00", "2026-03-29T00:00+00:00", "2026-03-30T00:00+00:00"),
        ("day", "2026-12-31T23:00+00:00", "2026-12-31T00:00+00:00", "2027-01-01T00:00+00:00"),
        # 2026-03-29 is a Sunday: weeks start on Monday
        ("week", "2026-03-29T12:00+00:00", "2026-03-23T00:00+00:00", "2026-03-30T00:00+00:00"),
        ("week", "2026-03-30T00:00+00:00", "2026-03-30T00:00+00:00", "2026-04-06T00:00+00:00"),
        ("week", "2026-12-30T08:00+00:00", "2026-12-28T00:00+00:00", "2027-01-04T00:00+00:00"),
        ("month", "2026-03-29T12:00+00:00", "2026-03-01T00:00+00:00", "2026-04-01T00:00+00:00"),
        ("month", "2026-12-31T23:59:59+00:00", "2026-12-01T00:00+00:00", "2027-01-01T00:00+00:00"),
        ("month", "2028-02-29T10:00+00:00", "2028-02-01T00:00+00:00", "2028-03-01T00:00+00:00"),
        ("month", "2026-01-31T10:00+00:00", "2026-01-01T00:00+00:00", "2026-02-01T00:00+00:00"),
    ],
)  # fmt: skip
def test_windows_in_utc(period: str, now: str, start: str, end: str) -> None:
    w = window(period, ts(now), UTC_ZONE)
    assert (w.period, w.start, w.end) == (period, ts(start), ts(end)), (iso(w.start), iso(w.end))


@pytest.mark.parametrize(
    ("period", "now", "start", "hours"),
    [
        # Spring forward, Sunday 2026-03-29 02:00 CET → 03:00 CEST: a 23-hour day.
        ("day", "2026-03-29T12:00+02:00", "2026-03-29T00:00+01:00", 23),
        ("day", "2026-03-29T01:59:59+01:00", "2026-03-29T00:00+01:00", 23),
        ("day", "2026-03-29T03:00+02:00", "2026-03-29T00:00+01:00", 23),
        ("day", "2026-03-28T23:30+01:00", "2026-03-28T00:00+01:00", 24),
        ("day", "2026-03-30T00:00+02:00", "2026-03-30T00:00+02:00", 24),
        ("week", "2026-03-29T12:00+02:00", "2026-03-23T00:00+01:00", 167),
        ("month", "2026-03-29T12:00+02:00", "2026-03-01T00:00+01:00", 743),
        # Fall back, Sunday 2026-10-25 03:00 CEST → 02:00 CET: a 25-hour day.
        ("day", "2026-10-25T12:00+01:00", "2026-10-25T00:00+02:00", 25),
        ("day", "2026-10-25T02:30+02:00", "2026-10-25T00:00+02:00", 25),
        ("day", "2026-10-25T02:30+01:00", "2026-10-25T00:00+02:00", 25),
        ("day", "2026-10-25T23:59:59+01:00", "2026-10-25T00:00+02:00", 25),
        ("week", "2026-10-25T12:00+01:00", "2026-10-19T00:00+02:00", 169),
        ("month", "2026-10-25T12:00+01:00", "2026-10-01T00:00+02:00", 745),
        ("month", "2026-10-31T23:59:59+01:00", "2026-10-01T00:00+02:00", 745),
        # An instant given in UTC: 23:30Z on the 28th is already Sunday the 29th in Paris.
        ("day", "2026-03-28T23:30+00:00", "2026-03-29T00:00+01:00", 23),
    ],
)  # fmt: skip
def test_windows_in_paris_across_dst(period: str, now: str, start: str, hours: int) -> None:
    """Windows start at local midnight and last ``hours`` (23 or 25 on a DST Sunday)."""
    w = window(period, ts(now), PARIS)
    assert w.start == ts(start), iso(w.start, PARIS)
    assert w.end - w.start == hours * 3600, iso(w.end, PARIS)
    assert datetime.fromtimestamp(w.end, PARIS).time().isoformat() == "00:00:00"
    assert w.start <= ts(now) < w.end


def test_total_never_resets() -> None:
    for tz in (UTC_ZONE, PARIS):
        for now in (ts("2026-03-29T12:00:00+00:00"), ts("2099-12-31T23:59:59+00:00")):
            w = window("total", now, tz)
            assert w.period == "total"
            assert w.start <= now < w.end
            assert w == window("total", ts("2026-10-25T01:30:00+00:00"), tz)


def test_unknown_period_is_an_error() -> None:
    with pytest.raises(ValueError, match="fortnight"):
        window("fortnight", 0.0, UTC_ZONE)


ZONES = [
    "UTC",
    "Europe/Paris",
    "America/New_York",
    "America/Santiago",  # DST starts at midnight: some days have no 00:00
    "Australia/Lord_Howe",  # 30-minute DST shift
    "Asia/Kathmandu",  # +05:45
    "Pacific/Chatham",  # +12:45 / +13:45
]


def _first_instant_of_local_day(t: float, tz: ZoneInfo) -> bool:
    return datetime.fromtimestamp(t - 1, tz).date() < datetime.fromtimestamp(t, tz).date()


@pytest.mark.parametrize("zone", ZONES)
def test_windows_tile_the_calendar_in_any_zone(zone: str) -> None:
    """Over a year: every instant lies in its window; the window starts at the first instant of
    the local day (Monday, 1st of the month); the next window starts where this one ends."""
    tz = ZoneInfo(zone)
    t = ts("2026-01-01T00:00:00+00:00")
    end_of_year = ts("2027-01-02T00:00:00+00:00")
    while t < end_of_year:
        for period in ("day", "week", "month"):
            w = window(period, t, tz)
            assert w.start <= t < w.end, (zone, period, iso(t, tz))
            assert _first_instant_of_local_day(w.start, tz), (zone, period, iso(w.start, tz))
            local_start = datetime.fromtimestamp(w.start, tz)
            if period == "week":
                assert local_start.weekday() == 0
            if period == "month":
                assert local_start.day == 1
            nxt = window(period, w.end, tz)
            assert nxt.start == w.end, (zone, period, iso(w.end, tz))
            assert window(period, w.end - 0.001, tz) == w
        t += 5 * 3600 + 17 * 60  # visits every hour of the day over the year


@pytest.mark.parametrize("period", ["day", "month"])
def test_a_midnight_that_happens_twice_starts_the_day_once(period: str) -> None:
    """America/Havana falls back at 01:00 → 00:00 (2026-11-01): local midnight happens twice.
    Every instant of that day, including the repeated hour, is in one and the same window,
    which starts at the first midnight (else the repeated hour gets counters of its own)."""
    havana = ZoneInfo("America/Havana")
    first_midnight = ts("2026-11-01T00:00:00-04:00")
    noon = window(period, ts("2026-11-01T12:00:00-05:00"), havana)
    assert noon.start == first_midnight
    for instant in ("2026-11-01T00:30:00-04:00", "2026-11-01T00:30:00-05:00",
                    "2026-11-01T00:00:00-05:00", "2026-11-01T01:30:00-05:00"):  # fmt: skip
        assert window(period, ts(instant), havana) == noon, instant


# ---- Controls with an injected clock -----------------------------------------------------------


class FakeClock:
    def __init__(self, iso_time: str) -> None:
        self.now = ts(iso_time)

    def __call__(self) -> float:
        return self.now

    def set(self, iso_time: str) -> None:
        self.now = ts(iso_time)


def _controls(tmp_path: Path, clock: FakeClock, **budgets: Any) -> Controls:
    settings = load_settings(
        path=os.devnull, env={},
        overrides={"database": f"sqlite:///{tmp_path / 'g.db'}", "budgets": budgets},
    )  # fmt: skip
    store = open_store(settings.database)
    store.migrate()
    return Controls(settings, store, Metrics(), clock=clock)


def _ident(**limits: Any) -> Identity:
    defaults: dict[str, Any] = {"budget_usd": None, "budget_period": "month", "rpm": None,
                                "tpm": None}  # fmt: skip
    lim = ScopeLimits("key", "key_1", "night-owl", **{**defaults, **limits})
    return Identity("key_1", "night-owl", "usr_1", "owl", "org_1", "acme", "member", False, (lim,))


async def _spend(controls: Controls, ident: Identity, cost: float) -> None:
    ticket = await controls.admit(ident, "m", {}, 0, lambda: None)
    assert ticket is not None
    await controls.settle(ticket, cost, 0)


async def _refused(controls: Controls, ident: Identity) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        await controls.admit(ident, "m", {}, 0, lambda: None)
    return info.value


def test_a_day_budget_resets_at_local_midnight(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = FakeClock("2026-03-28T21:00:00+01:00")  # Saturday evening in Paris
        controls = _controls(tmp_path, clock, timezone="Europe/Paris")
        ident = _ident(budget_usd=10.0, budget_period="day")

        await _spend(controls, ident, 10.0)
        err = await _refused(controls, ident)
        assert err.status == 402 and err.code == "budget_exceeded"
        assert "2026-03-28T23:00:00Z" in err.message  # Paris midnight, said in UTC
        clock.set("2026-03-28T23:59:59+01:00")
        assert (await _refused(controls, ident)).status == 402
        clock.set("2026-03-29T00:00:00+01:00")  # midnight in Paris, 23:00 in UTC
        await _spend(controls, ident, 10.0)  # a new day: the budget is whole again
        # The DST day has 23 hours: it ends at 2026-03-29T22:00Z.
        err = await _refused(controls, ident)
        assert "2026-03-29T22:00:00Z" in err.message
        clock.set("2026-03-29T23:59:59+02:00")
        assert (await _refused(controls, ident)).status == 402
        clock.set("2026-03-30T00:00:00+02:00")
        await _spend(controls, ident, 4.0)
        assert (await controls.backend.spent(controls.budget_checks(ident)[0])) == 4.0

    asyncio.run(scenario())


def test_a_day_budget_in_utc_does_not_reset_at_paris_midnight(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = FakeClock("2026-10-25T20:00:00+00:00")
        controls = _controls(tmp_path, clock)  # timezone: UTC by default
        ident = _ident(budget_usd=5.0, budget_period="day")
        await _spend(controls, ident, 5.0)
        clock.set("2026-10-25T23:30:00+00:00")  # past midnight in Paris, not in UTC
        assert (await _refused(controls, ident)).status == 402
        clock.set("2026-10-26T00:00:00+00:00")
        await _spend(controls, ident, 1.0)

    asyncio.run(scenario())


def test_a_month_budget_rolls_over_on_the_first(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = FakeClock("2026-10-31T23:00:00+01:00")
        controls = _controls(tmp_path, clock, timezone="Europe/Paris")
        ident = _ident(budget_usd=1.0)  # month by default
        await _spend(controls, ident, 1.5)
        err = await _refused(controls, ident)
        assert "2026-10-31T23:00:00Z" in err.message  # 2026-11-01 00:00 in Paris
        clock.set("2026-11-01T00:00:00+01:00")
        await _spend(controls, ident, 0.25)

    asyncio.run(scenario())


def test_requests_per_minute_come_back_with_the_clock() -> None:
    async def scenario() -> None:
        clock = FakeClock("2026-03-29T12:00:00+00:00")

        async def no_spend(*_: Any) -> float:
            return 0.0

        counters = InProcessCounters(no_spend, clock)
        checks = (RateCheck("key", "key_1", "k", "requests", 3),)
        for expected in (2, 1, 0):
            state = RateState()
            assert await counters.hit(checks, 0, state) is None
            assert state.of(checks[0])[0] == expected
        refusal = await counters.hit(checks, 0, RateState())
        assert isinstance(refusal, RateRefusal)
        assert refusal.retry_after == pytest.approx(20.0)
        clock.now += 19.9
        assert isinstance(await counters.hit(checks, 0, RateState()), RateRefusal)
        clock.now += 0.1
        assert await counters.hit(checks, 0, RateState()) is None
        clock.now += 60
        for _ in range(3):  # a quiet minute gives the whole burst back
            assert await counters.hit(checks, 0, RateState()) is None

    asyncio.run(scenario())


def test_rate_limit_error_from_controls_has_retry_after(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = FakeClock("2026-03-29T12:00:00+00:00")
        controls = _controls(tmp_path, clock)
        ident = _ident(rpm=2)
        for _ in range(2):
            assert await controls.admit(ident, "m", {}, 0, lambda: None) is not None
        err = await _refused(controls, ident)
        assert err.status == 429
        headers = dict(err.headers)
        assert int(headers[b"retry-after"]) == 30
        clock.now += 30
        assert await controls.admit(ident, "m", {}, 0, lambda: None) is not None

    asyncio.run(scenario())

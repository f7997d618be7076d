"""RedisCounters against a real Redis (127.0.0.1:6379, DB 15): budgets, rebuild from the
database, rate limits exact across processes, failures, and parity with InProcessCounters;
the same for ``admit`` / ``finish`` (a request's two round trips).

Without a reachable Redis these tests are skipped, or fail when ``CI=true``."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from gatewatch.controls.counters import (
    BudgetCheck,
    BudgetRefusal,
    InProcessCounters,
    RateCheck,
    RateRefusal,
    RateState,
    Reservation,
)
from gatewatch.controls.redis_backend import CountersUnavailable, RedisCounters

REDIS_URL = os.environ.get("GATEWATCH_TEST_REDIS", "redis://127.0.0.1:6379/15")
FOREVER = 253402300799.0


def budget(scope: str, sid: str, limit: float, period: str = "total") -> BudgetCheck:
    if period == "total":
        return BudgetCheck(scope, sid, sid, limit, period, 0.0, FOREVER)
    start = time.time() // 86400 * 86400
    return BudgetCheck(scope, sid, sid, limit, period, start, start + 86400)


class Loader:
    """A fake database: what each scope has spent, and how many times it was asked."""

    def __init__(self, value: float = 0.0, delay: float = 0.0) -> None:
        self.values: dict[tuple[str, str], float] = {}
        self.default = value
        self.delay = delay
        self.calls = 0

    async def __call__(self, scope: str, scope_id: str, start: float, end: float) -> float:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return self.values.get((scope, scope_id), self.default)


async def zero_loader(scope: str, scope_id: str, start: float, end: float) -> float:
    return 0.0


@pytest.fixture(scope="module")
def redis_available() -> None:
    try:
        client = redis.Redis.from_url(
            REDIS_URL, socket_connect_timeout=1, socket_timeout=1, retry=Retry(NoBackoff(), 0)
        )
        try:
            client.ping()
        finally:
            client.close()
    except redis.RedisError as exc:
        reason = f"Redis is not reachable at {REDIS_URL}: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        print(reason)
        pytest.skip(reason)


@pytest.fixture
def prefix(redis_available: None) -> Iterator[str]:
    """A unique key prefix, on a flushed DB 15."""
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield f"gwtest:{uuid.uuid4().hex[:12]}:"
    client.close()


def flushdb() -> None:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    client.close()


# -- 1. reserve / settle ---------------------------------------------------------------------------


def test_reserve_and_settle(prefix: str) -> None:
    async def main() -> None:
        c = RedisCounters(REDIS_URL, Loader(0.0), prefix=prefix)
        try:
            check = budget("user", "alice", 1.00, "day")
            held = [await c.reserve((check,), 0.30) for _ in range(4)]
            # refused only once spent + reserved >= limit: 0.90 < 1.00 admits a fourth
            assert all(isinstance(r, Reservation) for r in held)
            refused = await c.reserve((check,), 0.30)
            assert isinstance(refused, BudgetRefusal)
            assert refused.check == check and refused.spent == pytest.approx(1.20)
            assert await c.spent(check) == pytest.approx(1.20)

            for r, actual in zip(held, (0.10, 0.2345, 0.05, 0.000001), strict=True):
                assert isinstance(r, Reservation)
                await c.settle(r, actual)
            assert await c.spent(check) == 0.384501  # exact nano-dollars, nothing reserved
            assert isinstance(await c.reserve((check,), 0.30), Reservation)
        finally:
            await c.close()

    asyncio.run(main())


def test_reserve_is_all_or_nothing(prefix: str) -> None:
    async def main() -> None:
        c = RedisCounters(REDIS_URL, Loader(0.0), prefix=prefix)
        try:
            key, user = budget("key", "k1", 10.0), budget("user", "u1", 0.50, "day")
            assert isinstance(await c.reserve((key, user), 0.40), Reservation)
            assert isinstance(await c.reserve((key, user), 0.40), Reservation)
            refused = await c.reserve((key, user), 0.40)
            assert isinstance(refused, BudgetRefusal) and refused.check == user
            assert await c.spent(key) == pytest.approx(0.80)  # the refusal reserved nothing
        finally:
            await c.close()

    asyncio.run(main())


def test_unsettled_reservation_expires(prefix: str) -> None:
    """A reservation of a worker that died stops counting after ``reservation_ttl``."""

    async def main() -> None:
        c = RedisCounters(REDIS_URL, Loader(0.0), prefix=prefix, reservation_ttl=60)
        try:
            check = budget("org", "o1", 1.0)
            assert isinstance(await c.reserve((check,), 0.25), Reservation)
            key = f"{prefix}budget:{check.key}"
            stale = int(time.time()) // 60 - 5  # reserved five minutes ago, never settled
            client = redis.asyncio.Redis.from_url(REDIS_URL, decode_responses=True)
            await client.hset(key, f"r:{stale}", 900_000)
            assert await c.spent(check) == 0.25
            assert isinstance(await c.reserve((check,), 0.25), Reservation)
            assert f"r:{stale}" not in await client.hgetall(key)  # pruned
            await client.aclose()
        finally:
            await c.close()

    asyncio.run(main())


# -- 2. atomic across processes --------------------------------------------------------------------

AMOUNT = 0.01
LIMIT = 1.00
CYCLES = 50
PROCS = 4


def budget_worker(prefix: str, barrier: Any, results: Any, seed: int) -> None:
    async def main() -> list[int]:
        c = RedisCounters(REDIS_URL, zero_loader, prefix=prefix)
        check = budget("org", "shared", LIMIT)
        await asyncio.gather(*(c.ping() for _ in range(CYCLES)))  # open the connections
        barrier.wait(30)

        async def cycle(i: int) -> int | None:
            res = await c.reserve((check,), AMOUNT)
            if not isinstance(res, Reservation):
                return None
            await asyncio.sleep(((seed * 7 + i) % 5) / 1000)
            actual_micros = 10_000 + ((seed + i) % 4) * 1_000  # $0.010 … $0.013
            await c.settle(res, actual_micros / 1_000_000)
            return actual_micros

        try:
            done = await asyncio.gather(*(cycle(i) for i in range(CYCLES)))
            return [m for m in done if m is not None]
        finally:
            await c.close()

    results.put(asyncio.run(main()))


def run_workers(target: Any, prefix: str) -> list[Any]:
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(PROCS), ctx.Queue()
    procs = [ctx.Process(target=target, args=(prefix, barrier, results, n)) for n in range(PROCS)]
    for p in procs:
        p.start()
    out = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
        assert p.exitcode == 0
    return out


def test_budget_atomic_across_processes(prefix: str) -> None:
    admitted = [m for got in run_workers(budget_worker, prefix) for m in got]
    # every admission reserved $0.01 and settled at >= $0.01: used only grows, so an atomic
    # check admits at most 100; a racy one would let more through
    assert 0 < len(admitted) <= 100
    assert len(admitted) < PROCS * CYCLES

    async def final() -> tuple[float, str | None]:
        c = RedisCounters(REDIS_URL, zero_loader, prefix=prefix)
        check = budget("org", "shared", LIMIT)
        client = redis.asyncio.Redis.from_url(REDIS_URL, decode_responses=True)
        try:
            raw = await client.hget(f"{prefix}budget:{check.key}", "spent")
            return await c.spent(check), None if raw is None else str(raw)
        finally:
            await client.aclose()
            await c.close()

    spent, raw = asyncio.run(final())
    assert raw is not None and int(raw) == sum(admitted) * 1_000  # exact to the nano-dollar
    assert spent == sum(admitted) / 1_000_000  # and nothing is left reserved
    assert spent >= LIMIT


# -- 3. rebuild from the database ------------------------------------------------------------------


def test_rebuild_after_flush(prefix: str) -> None:
    async def main() -> None:
        loader = Loader(0.42)
        c = RedisCounters(REDIS_URL, loader, prefix=prefix)
        try:
            check = budget("user", "bob", 5.0, "day")
            res = await c.reserve((check,), 0.10)
            assert isinstance(res, Reservation) and loader.calls == 1
            await c.settle(res, 0.05)
            assert await c.spent(check) == 0.47 and loader.calls == 1

            flushdb()  # Redis restarted empty: the database is the ledger
            loader.default = 0.47
            assert await c.spent(check) == 0.47
            assert loader.calls == 2
            assert await c.spent(check) == 0.47 and loader.calls == 2  # cached again
        finally:
            await c.close()

    asyncio.run(main())


def test_concurrent_first_use_counts_once(prefix: str) -> None:
    async def main() -> None:
        loader = Loader(0.42, delay=0.05)
        workers = [RedisCounters(REDIS_URL, loader, prefix=prefix) for _ in range(2)]
        try:
            check = budget("org", "acme", 5.0, "month")
            results = await asyncio.gather(*(w.reserve((check,), 0.10) for w in workers))
            assert all(isinstance(r, Reservation) for r in results)
            assert loader.calls == 2  # both loaded ...
            assert await workers[0].spent(check) == 0.62  # ... but 0.42 counted once
        finally:
            for w in workers:
                await w.close()

    asyncio.run(main())


def test_forget_reloads_spend_and_keeps_reservations(prefix: str) -> None:
    async def main() -> None:
        loader = Loader(0.0)
        c = RedisCounters(REDIS_URL, loader, prefix=prefix)
        try:
            day, total = budget("key", "k*1", 5.0, "day"), budget("key", "k*1", 50.0)
            other = budget("key", "k*12", 5.0)  # glob characters are matched literally
            for check in (day, total, other):
                res = await c.reserve((check,), 0.0)
                assert isinstance(res, Reservation)
                await c.settle(res, 1.0)
            held = await c.reserve((day,), 0.25)
            early = await c.reserve((total,), 0.25)
            loader.values[("key", "k*1")] = 3.0  # a manual adjustment in the database
            await c.forget("key", "k*1")
            assert isinstance(early, Reservation)
            await c.settle(early, 0.5)  # before the reload: the database has it, not Redis
            assert await c.spent(day) == 3.25  # reloaded, the reservation still counts
            assert await c.spent(total) == 3.0
            assert await c.spent(other) == 1.0  # untouched
            assert isinstance(held, Reservation)
            await c.settle(held, 0.5)
            assert await c.spent(day) == 3.5
        finally:
            await c.close()

    asyncio.run(main())


# -- 4. rate limits exact across processes ---------------------------------------------------------

RPM = 100
ATTEMPTS = 60


def rate_worker(prefix: str, barrier: Any, results: Any, seed: int) -> None:
    async def main() -> tuple[list[tuple[bool, float, int]], float, float]:
        c = RedisCounters(REDIS_URL, zero_loader, prefix=prefix)
        check = RateCheck("key", "shared", "shared", "requests", RPM)
        await asyncio.gather(*(c.ping() for _ in range(ATTEMPTS)))
        barrier.wait(30)

        async def attempt() -> tuple[bool, float, int]:
            state = RateState()
            refused = await c.hit((check,), 0, state)
            if refused is not None:
                return False, refused.retry_after, -1
            return True, 0.0, state.of(check)[0]

        try:
            started = time.time()
            got = await asyncio.gather(*(attempt() for _ in range(ATTEMPTS)))
            return got, started, time.time()
        finally:
            await c.close()

    results.put(asyncio.run(main()))


def test_rate_limit_exact_across_processes(prefix: str) -> None:
    runs = run_workers(rate_worker, prefix)
    outcomes = [o for got, _, _ in runs for o in got]
    span = max(end for _, _, end in runs) - min(start for _, start, _ in runs)
    allowed = [remaining for ok, _, remaining in outcomes if ok]
    refused = [retry for ok, retry, _ in outcomes if not ok]
    assert len(outcomes) == PROCS * ATTEMPTS
    assert all(0 < r <= 60 for r in refused)
    if span < 0.6:  # GCRA refills one request every 0.6 s
        assert len(allowed) == RPM
        assert sorted(allowed) == list(range(RPM))  # each admission saw one fewer left
    else:  # a very slow machine: at most the refill of the time it took
        assert RPM <= len(allowed) <= RPM + int(span / 0.6) + 1


def test_remaining_decreases_and_refusal_waits(prefix: str) -> None:
    async def main() -> None:
        c = RedisCounters(REDIS_URL, zero_loader, prefix=prefix)
        try:
            check = RateCheck("user", "u", "u", "requests", 3)
            state = RateState()
            seen = []
            for _ in range(3):
                assert await c.hit((check,), 0, state) is None
                seen.append(state.of(check))
            assert [r for r, _ in seen] == [2, 1, 0]
            assert [round(reset) for _, reset in seen] == [20, 40, 60]
            refused = await c.hit((check,), 0, state)
            assert isinstance(refused, RateRefusal) and 19.5 < refused.retry_after <= 20
        finally:
            await c.close()

    asyncio.run(main())


# -- 5. token limits -------------------------------------------------------------------------------


def test_token_limit_and_add_tokens(prefix: str) -> None:
    async def main() -> None:
        c = RedisCounters(REDIS_URL, zero_loader, prefix=prefix)
        try:
            tpm = RateCheck("key", "k", "k", "tokens", 1000)
            rpm = RateCheck("key", "k", "k", "requests", 100)
            state = RateState()
            assert await c.hit((rpm, tpm), 400, state) is None
            assert state.of(tpm)[0] == 600
            assert await c.hit((rpm, tpm), 400, state) is None
            assert state.of(tpm)[0] == 200 and state.of(rpm)[0] == 98
            refused = await c.hit((rpm, tpm), 400, state)
            assert isinstance(refused, RateRefusal) and refused.check == tpm
            assert 11.9 < refused.retry_after <= 12.0  # 200 tokens over at 1000/min
            # the refused hit took nothing, not even the request
            assert await c.hit((rpm,), 0, state) is None and state.of(rpm)[0] == 97

            await c.add_tokens((rpm, tpm), -400)  # the requests used 400 fewer than estimated
            assert await c.hit((rpm, tpm), 400, state) is None
            assert state.of(tpm)[0] == 200
            await c.add_tokens((rpm, tpm), 200)  # and this one used 200 more
            assert await c.hit((tpm,), 0, state) is None and state.of(tpm)[0] == 0
            refused = await c.hit((tpm,), 100, state)
            assert isinstance(refused, RateRefusal) and 5.9 < refused.retry_after <= 6.0
        finally:
            await c.close()

    asyncio.run(main())


# -- 6. Redis unreachable --------------------------------------------------------------------------


def test_unreachable_redis_raises_quickly() -> None:
    async def main() -> None:
        c = RedisCounters("redis://127.0.0.1:1/0", zero_loader)
        try:
            t0 = time.monotonic()
            with pytest.raises(CountersUnavailable) as info:
                await c.reserve((budget("key", "k", 1.0),), 0.1)
            assert isinstance(info.value, ConnectionError)
            with pytest.raises(CountersUnavailable):
                await c.hit((RateCheck("key", "k", "k", "requests", 10),), 0, RateState())
            with pytest.raises(CountersUnavailable):
                await c.settle(Reservation((budget("key", "k", 1.0),), 0.1), 0.1)
            rpm = RateCheck("key", "k", "k", "requests", 10)
            with pytest.raises(CountersUnavailable):
                await c.admit((budget("key", "k", 1.0),), 0.1, (rpm,), 0, RateState())
            with pytest.raises(CountersUnavailable):
                await c.finish(Reservation((budget("key", "k", 1.0),), 0.1), 0.1, (rpm,), 5)
            assert await c.ping() is False
            assert time.monotonic() - t0 < 1.0
        finally:
            await c.close()

    asyncio.run(main())


def test_silent_redis_times_out() -> None:
    """A host that accepts connections but never answers: the read timeout (0.5 s) applies."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        url = f"redis://127.0.0.1:{server.getsockname()[1]}/0"

        async def main() -> None:
            c = RedisCounters(url, zero_loader)
            try:
                t0 = time.monotonic()
                with pytest.raises(CountersUnavailable):
                    await c.hit((RateCheck("key", "k", "k", "requests", 10),), 0, RateState())
                assert time.monotonic() - t0 < 1.5
                t1 = time.monotonic()
                with pytest.raises(CountersUnavailable):  # fails fast while Redis is down
                    await c.reserve((budget("key", "k", 1.0),), 0.1)
                assert time.monotonic() - t1 < 0.1
            finally:
                await c.close()

        asyncio.run(main())


# -- 7. parity with InProcessCounters --------------------------------------------------------------


async def play(c: Any, loader: Loader) -> list[Any]:
    """One scenario of budget and rate operations; the answers, comparable across backends."""
    out: list[Any] = []

    def note(result: Any) -> None:
        if isinstance(result, Reservation):
            out.append(("reserved", result.checks, result.amount))
        elif isinstance(result, BudgetRefusal):
            out.append(("budget refused", result.check, round(result.spent, 9)))
        elif isinstance(result, RateRefusal):
            out.append(("rate refused", result.check, round(result.retry_after, 1)))
        elif isinstance(result, float):
            out.append(("spent", round(result, 9)))
        else:
            out.append(result)

    user, key = budget("user", "u", 1.0, "day"), budget("key", "k", 2.0)
    loader.values[("key", "k")] = 0.75
    held = []
    for _ in range(5):
        r = await c.reserve((user, key), 0.25)
        note(r)
        if isinstance(r, Reservation):
            held.append(r)
    note(await c.spent(user))
    note(await c.spent(key))
    for r, actual in zip(held, (0.5, 0.125, 0.0, 0.375), strict=True):
        await c.settle(r, actual)
        note(await c.spent(user))
        note(await c.spent(key))
    note(await c.reserve((key, user), 0.25))
    loader.values[("user", "u")] = 0.5
    await c.forget("user", "u")
    note(await c.spent(user))
    note(await c.reserve((user,), 0.125))
    note(await c.reserve((), 1.0))

    rpm = RateCheck("key", "k", "k", "requests", 5)
    tpm = RateCheck("key", "k", "k", "tokens", 1000)
    model = RateCheck("model", "k:gpt", "k on gpt", "requests", 3)
    for checks, tokens in [
        ((rpm, tpm), 300), ((rpm, tpm, model), 300), ((rpm, tpm), 300), ((rpm, tpm), 300),
        ((model, tpm), 0), ((model,), 0), ((model,), 0), ((), 5),
    ]:  # fmt: skip
        state = RateState()
        note(await c.hit(checks, tokens, state))
        out.append(sorted((ch.key, rem, round(reset)) for ch, rem, reset in state.remaining))
    await c.add_tokens((rpm, tpm), -600)
    state = RateState()
    note(await c.hit((rpm, tpm), 300, state))
    out.append(sorted((ch.key, rem) for ch, rem, _ in state.remaining))
    note(await c.hit((rpm, tpm), 300, RateState()))
    return out


def test_parity_with_in_process(prefix: str) -> None:
    async def main() -> tuple[list[Any], list[Any], int, int]:
        local_loader, redis_loader = Loader(0.0), Loader(0.0)
        local = InProcessCounters(local_loader)
        shared = RedisCounters(REDIS_URL, redis_loader, prefix=prefix)
        try:
            return (
                await play(local, local_loader),
                await play(shared, redis_loader),
                local_loader.calls,
                redis_loader.calls,
            )
        finally:
            await shared.close()

    expected, got, local_calls, redis_calls = asyncio.run(main())
    assert got == expected
    assert redis_calls == local_calls


def test_adjustment_and_settled_match_in_process(prefix: str) -> None:
    """A manual adjustment moves the live spend (it is not a reload from the database, which
    may not have the queued records yet), and ``settled`` leaves reservations out."""

    async def play(c: Any) -> list[float]:
        check = budget("key", "k1", 1.00, "day")
        r = await c.reserve((check,), 0.25)
        await c.settle(r, 0.20)
        held = await c.reserve((check,), 0.10)  # in flight: counts in spent, not in settled
        out = [await c.settled(check), await c.spent(check)]
        await c.adjust("key", "k1", -0.05)
        out += [await c.settled(check), await c.spent(check)]
        await c.adjust("key", "other", 5.0)  # another scope: no effect
        await c.settle(held, 0.10)
        out.append(await c.settled(check))
        return out

    async def main() -> tuple[list[float], list[float]]:
        shared = RedisCounters(REDIS_URL, Loader(0.7), prefix=prefix)
        try:
            return await play(InProcessCounters(Loader(0.7))), await play(shared)
        finally:
            await shared.close()

    local, shared = asyncio.run(main())
    assert local == pytest.approx([0.9, 1.0, 0.85, 0.95, 0.95])
    assert shared == pytest.approx(local, abs=1e-6)


# -- 8. admit / finish: a request in two round trips -----------------------------------------------


async def play_admit(c: Any, loader: Loader) -> list[Any]:
    """A scenario of ``admit`` / ``finish``: budget refusals, rate refusals, settlements and
    token corrections. Asserts what both backends must do; returns answers to compare."""
    out: list[Any] = []

    async def admit(
        budgets: tuple[BudgetCheck, ...], amount: float, rates: tuple[RateCheck, ...], tokens: int
    ) -> Any:
        state = RateState()
        result = await c.admit(budgets, amount, rates, tokens, state)
        seen = [(ch.key, rem, round(reset)) for ch, rem, reset in state.remaining]
        if isinstance(result, Reservation):
            out.append(("admitted", result.checks, result.amount, result.used, seen))
        elif isinstance(result, BudgetRefusal):
            out.append(("budget refused", result.check, round(result.spent, 9), seen))
        else:
            assert isinstance(result, RateRefusal)
            out.append(("rate refused", result.check, round(result.retry_after, 1), seen))
        return result

    async def spent(check: BudgetCheck) -> float:
        value = round(float(await c.spent(check)), 9)
        out.append(("spent", check.key, value))
        return value

    user, key = budget("user", "u", 1.0, "day"), budget("key", "k", 2.0)
    loader.values[("key", "k")] = 0.75
    rpm = RateCheck("key", "k", "k", "requests", 5)
    tpm = RateCheck("key", "k", "k", "tokens", 1000)
    model = RateCheck("model", "k:gpt", "k on gpt", "requests", 3)

    held = [await admit((user, key), 0.25, (rpm, tpm), 300) for _ in range(3)]
    held.append(await admit((user, key), 0.25, (rpm,), 0))
    assert all(isinstance(r, Reservation) for r in held)
    assert [r.used for r in held] == [(0.0, 0.75), (0.25, 1.0), (0.5, 1.25), (0.75, 1.5)]

    # a budget refusal changes nothing, and does not use up the rate allowance (the rate
    # limits alone would allow this request)
    refused = await admit((user, key), 0.25, (rpm, tpm), 100)
    assert isinstance(refused, BudgetRefusal) and refused.check == user
    assert out[-1][-1] == []  # no rate checked
    assert await spent(user) == 1.0 and await spent(key) == 2.5 - 0.75
    last = await admit((), 0.0, (rpm,), 0)  # the fifth request of the minute: still allowed
    assert isinstance(last, Reservation) and last.checks == () and out[-1][-1][0][1] == 0
    assert isinstance(await admit((), 0.0, (rpm,), 0), RateRefusal)

    # settlement (the reserve goes, the actual cost stays) and a token correction
    await c.finish(held[0], 0.1, (rpm, tpm), -300)
    assert await spent(user) == 0.85 and await spent(key) == 1.6

    # a rate refusal reserves nothing and counts no other rate limit
    refused = await admit((user, key), 0.05, (model, rpm), 0)
    assert isinstance(refused, RateRefusal) and refused.check == rpm
    assert [k for k, _, _ in out[-1][-1]] == [model.key]  # state as hit() fills it
    assert await spent(user) == 0.85 and await spent(key) == 1.6
    for _ in range(3):  # the model's allowance is whole
        assert isinstance(await admit((), 0.0, (model,), 0), Reservation)
    assert isinstance(await admit((user,), 0.05, (model,), 0), RateRefusal)
    assert await spent(user) == 0.85

    # tokens: 900 estimated, 300 given back, 300 more: 100 left
    ok = await admit((user,), 0.05, (tpm,), 300)
    assert isinstance(ok, Reservation) and out[-1][-1][0][1] == 100
    await c.finish(ok, 0.05, (model, tpm), 50)  # used 50 more; the model check ignores it
    refused = await admit((), 0.0, (tpm,), 200)
    assert isinstance(refused, RateRefusal) and refused.check == tpm
    await c.finish(None, 0.0, (rpm, tpm), -150)  # tokens only, no reservation
    assert isinstance(await admit((), 0.0, (tpm,), 200), Reservation)
    assert out[-1][-1][0][1] == 0

    for r, actual in zip(held[1:], (0.125, 0.0, 0.375), strict=True):
        await c.finish(r, actual, (), 0)
        await spent(user)
        await spent(key)
    assert await spent(user) == 0.65 and await spent(key) == 1.35

    # a spend reloaded from the database after forget, through admit
    loader.values[("user", "u")] = 0.5
    await c.forget("user", "u")
    reloaded = await admit((key, user), 0.5, (), 0)
    assert isinstance(reloaded, Reservation) and reloaded.used == (1.35, 0.5)
    refused = await admit((key, user), 0.5, (rpm,), 0)
    assert isinstance(refused, BudgetRefusal) and refused.check == user
    await c.finish(reloaded, 0.0, (), 0)
    assert await spent(user) == 0.5
    await admit((), 1.0, (), 0)  # nothing to check: an empty reservation
    return out


def test_admit_finish_parity_with_in_process(prefix: str) -> None:
    async def main() -> tuple[list[Any], list[Any], int, int]:
        local_loader, redis_loader = Loader(0.0), Loader(0.0)
        local = InProcessCounters(local_loader)
        shared = RedisCounters(REDIS_URL, redis_loader, prefix=prefix)
        try:
            return (
                await play_admit(local, local_loader),
                await play_admit(shared, redis_loader),
                local_loader.calls,
                redis_loader.calls,
            )
        finally:
            await shared.close()

    expected, got, local_calls, redis_calls = asyncio.run(main())
    assert got == expected
    assert redis_calls == local_calls == 3


def test_admit_now_in_process_needs_loaded_spends() -> None:
    async def main() -> None:
        loader = Loader(0.25)
        c = InProcessCounters(loader)
        check = budget("user", "u", 1.0)
        rpm = RateCheck("user", "u", "u", "requests", 2)
        state = RateState()
        assert c.admit_now((check,), 0.5, (rpm,), 0, state) is None  # spend not loaded
        assert state.remaining == [] and loader.calls == 0
        res = await c.admit((check,), 0.5, (rpm,), 0, state)  # loads, then admits
        assert isinstance(res, Reservation) and res.used == (0.25,) and loader.calls == 1
        assert state.of(rpm)[0] == 1
        assert isinstance(c.admit_now((check,), 0.5, (rpm,), 0, state), Reservation)
        assert isinstance(c.admit_now((check,), 0.5, (), 0, state), BudgetRefusal)
        c.finish_now(res, 0.0, (rpm,), 0)  # the reservation goes back
        assert isinstance(c.admit_now((check,), 0.5, (rpm,), 0, state), RateRefusal)
        assert await c.spent(check) == 0.75

    asyncio.run(main())


A_CYCLES = 60  # admissions per process


def _admit_worker(
    prefix: str, barrier: Any, results: Any, seed: int, limit_usd: float, rpm_limit: int
) -> None:
    async def main() -> tuple[int, float, float]:
        c = RedisCounters(REDIS_URL, zero_loader, prefix=prefix)
        check = budget("org", "shared", limit_usd)
        rpm = RateCheck("org", "shared", "shared", "requests", rpm_limit)
        tpm = RateCheck("org", "shared", "shared", "tokens", 1_000_000)
        await asyncio.gather(*(c.ping() for _ in range(A_CYCLES)))  # open the connections
        barrier.wait(30)

        async def cycle(i: int) -> bool:
            res = await c.admit((check,), AMOUNT, (rpm, tpm), 10, RateState())
            if not isinstance(res, Reservation):
                return False
            await asyncio.sleep(((seed * 7 + i) % 5) / 1000)
            await c.finish(res, AMOUNT, (rpm, tpm), 5)  # cost exactly as reserved
            return True

        try:
            started = time.time()
            done = await asyncio.gather(*(cycle(i) for i in range(A_CYCLES)))
            return sum(done), started, time.time()
        finally:
            await c.close()

    results.put(asyncio.run(main()))


def admit_budget_worker(prefix: str, barrier: Any, results: Any, seed: int) -> None:
    _admit_worker(prefix, barrier, results, seed, LIMIT, 1000)  # $1 = 100 x $0.01


def admit_rate_worker(prefix: str, barrier: Any, results: Any, seed: int) -> None:
    _admit_worker(prefix, barrier, results, seed, 1000.0, RPM)


async def _shared_state(prefix: str, limit_usd: float, rpm_limit: int) -> tuple[str, int | None]:
    """(the budget's settled nano-dollars in Redis, rpm remaining after one more request or
    None if it is refused)."""
    c = RedisCounters(REDIS_URL, zero_loader, prefix=prefix)
    client = redis.asyncio.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        check = budget("org", "shared", limit_usd)
        rpm = RateCheck("org", "shared", "shared", "requests", rpm_limit)
        state = RateState()
        refused = await c.hit((rpm,), 0, state)
        raw = await client.hget(f"{prefix}budget:{check.key}", "spent")
        assert await c.spent(check) * 1_000_000_000 == pytest.approx(int(str(raw)))  # none reserved
        return str(raw), None if refused else state.of(rpm)[0]
    finally:
        await client.aclose()
        await c.close()


def test_admit_budget_exact_across_processes(prefix: str) -> None:
    runs = run_workers(admit_budget_worker, prefix)
    admitted = sum(n for n, _, _ in runs)
    # spent + reserved only grows, by exactly $0.01 per admission: exactly 100 fit in $1
    assert admitted == 100
    raw, remaining = asyncio.run(_shared_state(prefix, LIMIT, 1000))
    assert int(raw) == admitted * 10_000_000
    # the 140 budget refusals took no rate allowance: one more request sees 899 left, plus
    # what refilled since (one per 60 ms); had they counted, it would see 140 fewer
    assert remaining is not None and remaining >= 1000 - admitted - 1


def test_admit_rate_exact_across_processes(prefix: str) -> None:
    runs = run_workers(admit_rate_worker, prefix)
    admitted = sum(n for n, _, _ in runs)
    span = max(end for _, _, end in runs) - min(start for _, start, _ in runs)
    if span < 0.6:  # GCRA refills one request every 0.6 s
        assert admitted == RPM
    else:
        assert RPM <= admitted <= RPM + int(span / 0.6) + 1
    raw, _ = asyncio.run(_shared_state(prefix, 1000.0, RPM))
    assert int(raw) == admitted * 10_000_000  # the rate refusals reserved nothing


def test_rebuild_after_flush_through_admit(prefix: str) -> None:
    async def main() -> None:
        loader = Loader(0.42)
        c = RedisCounters(REDIS_URL, loader, prefix=prefix)
        try:
            day, org = budget("user", "bob", 5.0, "day"), budget("org", "acme", 50.0)
            rpm = RateCheck("user", "bob", "bob", "requests", 3)
            state = RateState()
            res = await c.admit((day, org), 0.10, (rpm,), 0, state)
            assert isinstance(res, Reservation) and res.used == (0.42, 0.42)
            assert loader.calls == 2
            assert state.of(rpm)[0] == 2  # the round that found spends missing counted nothing
            await c.finish(res, 0.05, (rpm,), 0)
            assert await c.spent(day) == 0.47 and loader.calls == 2

            flushdb()  # Redis restarted empty: the database is the ledger
            loader.default = 0.47
            state = RateState()
            res = await c.admit((day, org), 0.10, (rpm,), 0, state)
            assert isinstance(res, Reservation) and res.used == (0.47, 0.47)
            assert loader.calls == 4 and state.of(rpm)[0] == 2  # rate state went with it
            await c.finish(res, 0.10, (), 0)

            loader.values[("user", "bob")] = 1.0
            await c.forget("user", "bob")  # only one of the two is missing
            res = await c.admit((day, org), 0.10, (rpm,), 0, RateState())
            assert isinstance(res, Reservation) and res.used == (1.0, 0.57)
            assert loader.calls == 5
            again = await c.admit((day, org), 0.10, (rpm,), 0, RateState())
            assert isinstance(again, Reservation) and again.used == (1.1, 0.67)
            assert loader.calls == 5  # cached again
            refused = await c.admit((day, org), 0.10, (rpm,), 0, RateState())
            assert isinstance(refused, RateRefusal)  # the fourth of 3 per minute
            for r in (res, again):
                await c.finish(r, 0.0, (), 0)
            assert await c.spent(day) == 1.0 and await c.spent(org) == 0.57
        finally:
            await c.close()

    asyncio.run(main())

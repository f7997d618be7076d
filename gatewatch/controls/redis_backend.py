"""Shared budget and rate-limit counters in Redis, for several workers and gateway nodes.

``RedisCounters`` has the methods and semantics of ``InProcessCounters`` (see ``counters``);
each decision is one Lua script, so it is atomic across every process that shares the Redis
database and the key ``prefix``. A request needs two round trips: ``admit`` (budgets, then rate
limits, then reserve and count: ``reserve`` + ``hit`` in one script) and ``finish``
(``settle`` + ``add_tokens`` in one script).

Budgets. One hash per ``BudgetCheck.key``, ``{prefix}budget:{check.key}``, with integer
nano-dollars (1e-9 USD resolution: amounts are rounded to the nearest nano-dollar at the
edges, sums are exact):

* ``spent``: settled spend, loaded from the database (``load_spend``) when the field is missing
  (first use, Redis restarted or flushed, ``forget``), then kept current by ``settle``;
* ``r:<minute>``: in-flight reservations, by the Redis-server minute in which they were made.
  A reservation counts for ``reservation_ttl`` seconds at most, so one never settled (worker
  killed, timeout) stops blocking the budget instead of leaking forever.

A request is refused when ``spent + reservations >= limit`` on any of its checks (as in
``InProcessCounters``); otherwise the amount is reserved on all of them. The hash expires
``_GRACE`` seconds after the period ends (at most ``_MAX_TTL``, 400 days, later; the expiry
is refreshed on every reserve and settle, so a ``total`` budget in use never expires).

Rate limits. One string per ``RateCheck.key``, ``{prefix}rate:{check.key}``: the GCRA
theoretical arrival time, Unix seconds as a double, computed exactly as ``counters.gcra``
(same double arithmetic) with the Redis server clock, so workers with skewed clocks agree. All
checks are tested before any is updated. The key expires when its arrival time has passed.

Errors. Redis unreachable, timing out (0.5 s by default) or refusing commands raises
``CountersUnavailable`` (a ``ConnectionError``), so the caller can fail open or closed. After a
connection failure, admission calls (``admit``, ``reserve``, ``spent``, ``hit``) fail at
once for ``retry_interval`` seconds instead of each waiting for a timeout. Commands are never
retried: a retried script could count twice.

Needs Redis >= 5 (scripts replicated by effects). Not for Redis Cluster: one request's checks
(key, user, org) hash to different slots."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gatewatch.controls.counters import (
    BudgetCheck,
    BudgetRefusal,
    RateCheck,
    RateRefusal,
    RateState,
    Reservation,
    SpendLoader,
)

__all__ = ["CountersUnavailable", "RedisCounters", "RedisReservation"]

_NANOS = 1_000_000_000  # nano-dollars per USD (a cheap embedding costs a few hundred)
_WINDOW = 60.0  # rate limits are per minute (as counters._WINDOW)
_BUCKET = 60  # seconds per reservation bucket
_GRACE = 3600  # budget keys live this long after their period ends
_MAX_TTL = 400 * 86400  # cap on a budget key's expiry (a total budget's period never ends)
_MAX_LOAD_ROUNDS = 3  # budget keys reported missing again after loading: give up after this

_BUDGET_LIB = """
local function now_parts()
  local t = redis.call('TIME')
  return tonumber(t[1]), tonumber(t[2])
end
local function budget_ttl(secs, period_end, grace, cap)
  local ttl = period_end + grace - secs
  if ttl > cap then ttl = cap end
  if ttl < grace then ttl = grace end
  return math.floor(ttl)
end
-- spent + live reservations (nano-dollars); stale reservation buckets are deleted if asked
local function used_of(key, oldest, prune)
  local flat = redis.call('HGETALL', key)
  local spent, reserved = 0, 0
  for j = 1, #flat, 2 do
    local f = flat[j]
    if f == 'spent' then
      spent = tonumber(flat[j + 1])
    elseif string.sub(f, 1, 2) == 'r:' then
      local b = tonumber(string.sub(f, 3))
      if b ~= nil and b >= oldest then
        reserved = reserved + tonumber(flat[j + 1])
      elseif b ~= nil and prune then
        redis.call('HDEL', key, f)
      end
    end
  end
  return spent + reserved
end
-- whether the key has its spent, after setting it from init (nano-dollars, '' = not loaded)
local function has_spent(key, init, secs, period_end, grace, cap)
  if redis.call('HEXISTS', key, 'spent') == 1 then return true end
  if init == '' then return false end
  redis.call('HSET', key, 'spent', init)
  redis.call('EXPIRE', key, budget_ttl(secs, period_end, grace, cap))
  return true
end
-- releases amount from reservation bucket ('' = not reserved in Redis) and adds actual (a
-- string of nano-dollars) to a loaded spent
local function settle_key(key, amount, actual, bucket, secs, period_end, grace, cap)
  if redis.call('EXISTS', key) == 0 then return end
  if bucket ~= '' and amount ~= 0 then
    local f = 'r:' .. bucket
    if redis.call('HINCRBY', key, f, -amount) <= 0 then redis.call('HDEL', key, f) end
  end
  if tonumber(actual) ~= 0 and redis.call('HEXISTS', key, 'spent') == 1 then
    redis.call('HINCRBY', key, 'spent', actual)
  end
  if redis.call('EXISTS', key) == 1 then
    redis.call('EXPIRE', key, budget_ttl(secs, period_end, grace, cap))
  end
end
"""

# KEYS: budget hashes. ARGV: amount, bucket seconds, live buckets, grace, cap, then per key
# (limit, period end, initial spent or ''), all money in nano-dollars.
# Returns {-1, i...} (keys whose spent is missing: load them and call again with initial
# values), {0, i, used} (refused on key i) or {1, bucket} (reserved in that bucket).
_RESERVE = (
    _BUDGET_LIB
    + """
local amount = tonumber(ARGV[1])
local width, live = tonumber(ARGV[2]), tonumber(ARGV[3])
local grace, cap = tonumber(ARGV[4]), tonumber(ARGV[5])
local secs = now_parts()
local bucket = math.floor(secs / width)
local missing = {-1}
for i, key in ipairs(KEYS) do
  if not has_spent(key, ARGV[5 + 3 * i], secs, tonumber(ARGV[4 + 3 * i]), grace, cap) then
    missing[#missing + 1] = i
  end
end
if #missing > 1 then return missing end
local admitted = {1, bucket}
for i, key in ipairs(KEYS) do
  local used = used_of(key, bucket - live, true)
  if used >= tonumber(ARGV[3 + 3 * i]) then return {0, i, used} end
  admitted[#admitted + 1] = used
end
for i, key in ipairs(KEYS) do
  if amount ~= 0 then redis.call('HINCRBY', key, 'r:' .. bucket, ARGV[1]) end
  redis.call('EXPIRE', key, budget_ttl(secs, tonumber(ARGV[4 + 3 * i]), grace, cap))
end
return admitted
"""
)

# KEYS[1]: a budget hash. ARGV: bucket seconds, live buckets, grace, cap, period end, initial
# spent or ''. Returns {-1} (spent missing) or {1, spent + live reservations}.
_SPENT = (
    _BUDGET_LIB
    + """
local key = KEYS[1]
local secs = now_parts()
if not has_spent(key, ARGV[6], secs, tonumber(ARGV[5]), tonumber(ARGV[3]), tonumber(ARGV[4]))
then
  return {-1}
end
local oldest = math.floor(secs / tonumber(ARGV[1])) - tonumber(ARGV[2])
return {1, used_of(key, oldest, false)}
"""
)

# KEYS: budget hashes. ARGV: amount, actual, bucket ('' = not reserved in Redis), grace, cap,
# then per key the period end. Releases the reservation, adds actual to a loaded spent.
_SETTLE = (
    _BUDGET_LIB
    + """
local amount, bucket = tonumber(ARGV[1]), ARGV[3]
local grace, cap = tonumber(ARGV[4]), tonumber(ARGV[5])
local secs = now_parts()
for i, key in ipairs(KEYS) do
  settle_key(key, amount, ARGV[2], bucket, secs, tonumber(ARGV[5 + i]), grace, cap)
end
return 1
"""
)

_RATE_LIB = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window = 60.0
local function fmt(x) return string.format('%.17g', x) end
local function tat_of(key)
  local v = redis.call('GET', key)
  if v then return tonumber(v) end
  return now
end
local function store(key, tat)
  local ms = math.ceil((tat - now) * 1000)
  if ms < 0 then ms = 0 end
  redis.call('SET', key, fmt(tat), 'PX', ms + 1000)
end
-- GCRA as counters.gcra on rate keys KEYS[first + j], j = 1..n (limit per minute and cost in
-- ARGV[base + 2j - 1], ARGV[base + 2j]), all checks first, changing nothing: appends remaining
-- and reset of each allowing check to out; returns the new arrival times, or nil, j, seconds
-- over when check j refuses
local function check_rates(first, n, base, out)
  local news = {}
  for j = 1, n do
    local limit, cost = tonumber(ARGV[base + 2 * j - 1]), tonumber(ARGV[base + 2 * j])
    local tat = tat_of(KEYS[first + j])
    local interval = window / limit
    local start = math.max(tat, now)
    local new_tat = start + interval * cost
    local over = new_tat - now - window
    if over > 1e-9 then return nil, j, over end
    news[j] = new_tat
    out[#out + 1] = math.max(0, math.floor((window - (new_tat - now)) / interval))
    out[#out + 1] = fmt(new_tat - now)
  end
  return news
end
local function add_tokens(key, limit, tokens)
  store(key, math.max(tat_of(key), now) + tokens * window / limit)
end
"""

# KEYS: rate keys. ARGV: per key (limit per minute, cost). GCRA as counters.gcra, all checks
# first, then all updates. Returns {1, 0, '0', remaining, reset, ...} when allowed or
# {0, i, retry_after, remaining, reset, ...} when check i refuses (with the checks before i).
_HIT = (
    _RATE_LIB
    + """
local out = {1, 0, '0'}
local news, refused, over = check_rates(0, #KEYS, 0, out)
if not news then
  out[1], out[2], out[3] = 0, refused, fmt(over)
  return out
end
for i, key in ipairs(KEYS) do store(key, news[i]) end
return out
"""
)

# KEYS: rate keys. ARGV: per key (limit per minute, tokens). Moves the arrival time by tokens.
_ADD_TOKENS = (
    _RATE_LIB
    + """
for i, key in ipairs(KEYS) do
  add_tokens(key, tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i]))
end
return 1
"""
)

# _RESERVE then _HIT in one step. KEYS: nb budget hashes, then nr rate keys. ARGV: nb, nr,
# amount, bucket seconds, live buckets, grace, cap, per budget (limit, period end, initial
# spent or ''), per rate (limit per minute, cost); money in nano-dollars. Budgets are checked
# first, then rates, and nothing is reserved or counted unless all allow. Returns
# {-1, i...} (budgets whose spent is missing: load them and call again with initial values),
# {0, i, used} (refused by budget i), {2, j, over, used..., remaining, reset, ...} (refused by
# rate j: remaining and reset of the rates before j) or {1, bucket, '0', used..., remaining,
# reset, ...} (reserved in that bucket and counted).
_ADMIT = (
    _BUDGET_LIB
    + _RATE_LIB
    + """
local nb, nr, amount = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local width, live = tonumber(ARGV[4]), tonumber(ARGV[5])
local grace, cap = tonumber(ARGV[6]), tonumber(ARGV[7])
local secs = tonumber(t[1])
local bucket = math.floor(secs / width)
local missing = {-1}
for i = 1, nb do
  if not has_spent(KEYS[i], ARGV[7 + 3 * i], secs, tonumber(ARGV[6 + 3 * i]), grace, cap) then
    missing[#missing + 1] = i
  end
end
if #missing > 1 then return missing end
local out = {1, bucket, '0'}
for i = 1, nb do
  local used = used_of(KEYS[i], bucket - live, true)
  if used >= tonumber(ARGV[5 + 3 * i]) then return {0, i, used} end
  out[#out + 1] = used
end
local news, refused, over = check_rates(nb, nr, 7 + 3 * nb, out)
if not news then
  out[1], out[2], out[3] = 2, refused, fmt(over)
  return out
end
for i = 1, nb do
  if amount ~= 0 then redis.call('HINCRBY', KEYS[i], 'r:' .. bucket, ARGV[3]) end
  redis.call('EXPIRE', KEYS[i], budget_ttl(secs, tonumber(ARGV[6 + 3 * i]), grace, cap))
end
for j = 1, nr do store(KEYS[nb + j], news[j]) end
return out
"""
)

# _SETTLE then _ADD_TOKENS in one step. KEYS: nb budget hashes, then token rate keys. ARGV:
# nb, amount, actual, bucket ('' = not reserved in Redis), grace, cap, per budget the period
# end, per rate key (limit per minute, tokens).
_FINISH = (
    _BUDGET_LIB
    + _RATE_LIB
    + """
local nb, amount, bucket = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[4]
local grace, cap = tonumber(ARGV[5]), tonumber(ARGV[6])
local secs = tonumber(t[1])
for i = 1, nb do
  settle_key(KEYS[i], amount, ARGV[3], bucket, secs, tonumber(ARGV[6 + i]), grace, cap)
end
local base = 6 + nb
for j = 1, #KEYS - nb do
  add_tokens(KEYS[nb + j], tonumber(ARGV[base + 2 * j - 1]), tonumber(ARGV[base + 2 * j]))
end
return 1
"""
)


# KEYS[1] budget hash; ARGV[1] nano-dollars: added to a loaded spend, nothing otherwise (an
# unloaded spend will be read from the database, which has the adjustment).
_ADJUST = """
if redis.call('HEXISTS', KEYS[1], 'spent') == 1 then
  redis.call('HINCRBY', KEYS[1], 'spent', ARGV[1])
end
return 1
"""

# KEYS[1] budget hash; ARGV[1] the database's spend ('' = not loaded yet): the settled spend,
# or nil when it must be loaded first.
_SETTLED = """
local v = redis.call('HGET', KEYS[1], 'spent')
if v then return v end
if ARGV[1] ~= '' then
  redis.call('HSET', KEYS[1], 'spent', ARGV[1])
  return ARGV[1]
end
return nil
"""


class CountersUnavailable(ConnectionError):
    """Redis could not be reached or refused to run a counter command."""


@dataclass(slots=True)
class RedisReservation(Reservation):
    """A reservation held in Redis: what was reserved (nano-dollars) and in which bucket."""

    nanos: int = 0
    bucket: int = -1


def client(url: str, timeout: float, max_connections: int | None = None) -> aioredis.Redis:
    """A Redis client for the request path: text replies, short timeouts and no retries (a
    failure is handled by the caller at once: a slow Redis must not hold requests)."""
    return aioredis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        max_connections=max_connections,
    )


def _nanos(usd: float) -> int:
    return round(usd * _NANOS)


def _usd(nanos: int) -> float:
    return nanos / _NANOS


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisCounters:
    """Budget and rate counters shared through Redis (see the module docstring)."""

    def __init__(
        self,
        url: str,
        load_spend: SpendLoader,
        *,
        prefix: str = "gatewatch:",
        clock: Callable[[], float] = time.time,
        timeout: float = 0.5,
        retry_interval: float = 1.0,
        reservation_ttl: float = 3600.0,
        max_connections: int | None = None,
    ) -> None:
        """``timeout``: seconds to connect and to wait for a reply. ``retry_interval``: after
        a connection failure, admission calls fail at once for this long (0: always try).
        ``reservation_ttl``: seconds an unsettled reservation keeps counting. ``clock`` only
        times ``retry_interval``: limits and expiries use the Redis server's clock. No I/O
        here: connections open on first use, in the running event loop."""
        self._load = load_spend
        self._prefix = prefix
        self._clock = clock
        self._retry_interval = retry_interval
        self._down_until = 0.0
        self._live_buckets = max(1, math.ceil(reservation_ttl / _BUCKET))
        self._redis = client(url, timeout, max_connections)
        self._reserve = self._redis.register_script(_RESERVE)
        self._spent = self._redis.register_script(_SPENT)
        self._settle = self._redis.register_script(_SETTLE)
        self._hit = self._redis.register_script(_HIT)
        self._add_tokens = self._redis.register_script(_ADD_TOKENS)
        self._admit = self._redis.register_script(_ADMIT)
        self._finish = self._redis.register_script(_FINISH)
        self._adjust = self._redis.register_script(_ADJUST)
        self._settled = self._redis.register_script(_SETTLED)

    # -- plumbing -----------------------------------------------------------------------------

    def _budget_key(self, check: BudgetCheck) -> str:
        return f"{self._prefix}budget:{check.key}"

    def _rate_key(self, check: RateCheck) -> str:
        return f"{self._prefix}rate:{check.key}"

    @contextlib.contextmanager
    def _guard(self, admission: bool) -> Iterator[None]:
        """Turn Redis failures into ``CountersUnavailable``; fail fast while Redis is down."""
        if admission and self._down_until:
            now = self._clock()
            if now < self._down_until and self._down_until - now <= self._retry_interval:
                raise CountersUnavailable("Redis counters unavailable (recent connection failure)")
            self._down_until = 0.0
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError) as exc:
            if self._retry_interval > 0:
                self._down_until = self._clock() + self._retry_interval
            raise CountersUnavailable(f"Redis counters unavailable: {exc}") from exc
        except RedisError as exc:  # OOM, READONLY replica, script errors...
            raise CountersUnavailable(f"Redis counters refused the command: {exc}") from exc

    async def _run(self, script: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return await script(keys=keys, args=args)

    async def _initial(self, checks: Sequence[BudgetCheck]) -> list[str]:
        """Spent of each check from the database, as ARGV strings of nano-dollars."""
        out = []
        for check in checks:
            loaded = await self._load(check.scope, check.scope_id, check.start, check.end)
            out.append(str(_nanos(loaded)))
        return out

    # -- budgets ------------------------------------------------------------------------------

    async def reserve(
        self, checks: tuple[BudgetCheck, ...], amount: float
    ) -> Reservation | BudgetRefusal:
        nanos = _nanos(amount)
        if not checks:
            return RedisReservation(checks, amount, (), nanos=nanos)
        keys = [self._budget_key(c) for c in checks]
        inits = [""] * len(checks)
        for _ in range(_MAX_LOAD_ROUNDS):
            args: list[Any] = [nanos, _BUCKET, self._live_buckets, _GRACE, _MAX_TTL]
            for check, init in zip(checks, inits, strict=True):
                args += [_nanos(check.limit_usd), repr(float(check.end)), init]
            with self._guard(admission=True):
                result = await self._run(self._reserve, keys, args)
            status = int(result[0])
            if status == 1:
                used = tuple(_usd(int(u)) for u in result[2:])
                return RedisReservation(checks, amount, used, nanos=nanos, bucket=int(result[1]))
            if status == 0:
                return BudgetRefusal(checks[int(result[1]) - 1], _usd(int(result[2])))
            missing = [int(i) - 1 for i in result[1:]]
            loaded = await self._initial([checks[i] for i in missing])
            for i, value in zip(missing, loaded, strict=True):
                inits[i] = value
        raise CountersUnavailable("Redis budget keys keep disappearing (is Redis evicting keys?)")

    async def settle(self, reservation: Reservation, actual: float) -> None:
        """Release the reservation and add ``actual`` to each loaded spend. A reservation not
        made by this backend (e.g. by an in-process fallback) only adds ``actual``."""
        if not reservation.checks:
            return
        if isinstance(reservation, RedisReservation):
            nanos, bucket = reservation.nanos, str(reservation.bucket)
        else:
            nanos, bucket = 0, ""
        args: list[Any] = [nanos, _nanos(actual), bucket, _GRACE, _MAX_TTL]
        args += [repr(float(c.end)) for c in reservation.checks]
        keys = [self._budget_key(c) for c in reservation.checks]
        with self._guard(admission=False):
            await self._run(self._settle, keys, args)

    async def spent(self, check: BudgetCheck) -> float:
        """Settled plus reserved, like ``InProcessCounters.spent``."""
        init = ""
        for _ in range(_MAX_LOAD_ROUNDS):
            args = [_BUCKET, self._live_buckets, _GRACE, _MAX_TTL, repr(float(check.end)), init]
            with self._guard(admission=True):
                result = await self._run(self._spent, [self._budget_key(check)], args)
            if int(result[0]) == 1:
                return _usd(int(result[1]))
            (init,) = await self._initial([check])
        raise CountersUnavailable("Redis budget keys keep disappearing (is Redis evicting keys?)")

    async def settled(self, check: BudgetCheck) -> float:
        """Settled spend only (no reservations), loaded from the database when missing."""
        key = self._budget_key(check)
        for _ in range(_MAX_LOAD_ROUNDS):
            with self._guard(admission=True):
                value = await self._run(self._settled, [key], [""])
            if value is not None:
                return _usd(int(value))
            (init,) = await self._initial([check])
            with self._guard(admission=True):
                value = await self._run(self._settled, [key], [init])
            if value is not None:
                return _usd(int(value))
        raise CountersUnavailable("Redis budget keys keep disappearing (is Redis evicting keys?)")

    async def adjust(self, scope: str, scope_id: str, amount: float) -> None:
        """Add a manual adjustment to every loaded period of the scope (atomic per key)."""
        pattern = _glob_escape(f"{self._prefix}budget:{scope}:{scope_id}:") + "*"
        with self._guard(admission=False):
            cursor: int = 0
            while True:
                cursor, keys = await self._redis.scan(cursor, match=pattern, count=1000)
                for key in keys:
                    await self._run(self._adjust, [str(key)], [_nanos(amount)])
                if not cursor:
                    break

    async def forget(self, scope: str, scope_id: str) -> None:
        """Drop the cached spend of a scope's budgets: the next use reloads it from the
        database. In-flight reservations are kept."""
        pattern = _glob_escape(f"{self._prefix}budget:{scope}:{scope_id}:") + "*"
        with self._guard(admission=False):
            cursor: int = 0
            while True:
                cursor, keys = await self._redis.scan(cursor, match=pattern, count=1000)
                if keys:
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for key in keys:
                            pipe.hdel(key, "spent")
                        await pipe.execute()
                if not cursor:
                    break

    # -- rate limits --------------------------------------------------------------------------

    async def hit(
        self, checks: tuple[RateCheck, ...], tokens: int, state: RateState
    ) -> RateRefusal | None:
        if not checks:
            return None
        args: list[Any] = []
        for check in checks:
            cost = 1.0 if check.kind == "requests" else float(max(tokens, 0))
            args += [check.limit, repr(cost)]
        with self._guard(admission=True):
            result = await self._run(self._hit, [self._rate_key(c) for c in checks], args)
        for n, check in enumerate(checks[: (len(result) - 3) // 2]):
            state.remaining.append((check, int(result[3 + 2 * n]), float(result[4 + 2 * n])))
        if int(result[0]) == 0:
            return RateRefusal(checks[int(result[1]) - 1], float(result[2]))
        return None

    async def add_tokens(self, checks: tuple[RateCheck, ...], tokens: int) -> None:
        token_checks = [c for c in checks if c.kind == "tokens"]
        if not tokens or not token_checks:
            return
        args: list[Any] = []
        for check in token_checks:
            args += [check.limit, tokens]
        with self._guard(admission=False):
            await self._run(self._add_tokens, [self._rate_key(c) for c in token_checks], args)

    # -- both in one round trip -----------------------------------------------------------------

    async def admit(
        self,
        budgets: tuple[BudgetCheck, ...],
        amount: float,
        rates: tuple[RateCheck, ...],
        tokens: int,
        state: RateState,
    ) -> Reservation | BudgetRefusal | RateRefusal:
        """``reserve`` then ``hit`` in one script (see ``CounterBackend.admit``): one round
        trip, plus one per round of spends to load from the database."""
        nanos = _nanos(amount)
        if not budgets and not rates:
            return RedisReservation(budgets, amount, (), nanos=nanos)
        nb = len(budgets)
        keys = [self._budget_key(c) for c in budgets] + [self._rate_key(c) for c in rates]
        rate_args: list[Any] = []
        for rate in rates:
            cost = 1.0 if rate.kind == "requests" else float(max(tokens, 0))
            rate_args += [rate.limit, repr(cost)]
        inits = [""] * nb
        for _ in range(_MAX_LOAD_ROUNDS):
            args: list[Any] = [nb, len(rates), nanos, _BUCKET, self._live_buckets]
            args += [_GRACE, _MAX_TTL]
            for check, init in zip(budgets, inits, strict=True):
                args += [_nanos(check.limit_usd), repr(float(check.end)), init]
            args += rate_args
            with self._guard(admission=True):
                result = await self._run(self._admit, keys, args)
            status = int(result[0])
            if status == 0:
                return BudgetRefusal(budgets[int(result[1]) - 1], _usd(int(result[2])))
            if status == -1:
                missing = [int(i) - 1 for i in result[1:]]
                loaded = await self._initial([budgets[i] for i in missing])
                for i, value in zip(missing, loaded, strict=True):
                    inits[i] = value
                continue
            seen = result[3 + nb :]
            for n, rate in enumerate(rates[: len(seen) // 2]):
                state.remaining.append((rate, int(seen[2 * n]), float(seen[2 * n + 1])))
            if status == 2:
                return RateRefusal(rates[int(result[1]) - 1], float(result[2]))
            used = tuple(_usd(int(u)) for u in result[3 : 3 + nb])
            bucket = int(result[1]) if budgets else -1
            return RedisReservation(budgets, amount, used, nanos=nanos, bucket=bucket)
        raise CountersUnavailable("Redis budget keys keep disappearing (is Redis evicting keys?)")

    async def finish(
        self,
        reservation: Reservation | None,
        actual: float,
        rates: tuple[RateCheck, ...],
        extra_tokens: int,
    ) -> None:
        """``settle`` and ``add_tokens`` in one script (one round trip, none when there is
        nothing to do)."""
        budgets = reservation.checks if reservation is not None else ()
        token_rates = [c for c in rates if c.kind == "tokens"] if extra_tokens else []
        if not budgets and not token_rates:
            return
        if isinstance(reservation, RedisReservation):
            nanos, bucket = reservation.nanos, str(reservation.bucket)
        else:
            nanos, bucket = 0, ""
        args: list[Any] = [len(budgets), nanos, _nanos(actual), bucket, _GRACE, _MAX_TTL]
        args += [repr(float(c.end)) for c in budgets]
        for rate in token_rates:
            args += [rate.limit, extra_tokens]
        keys = [self._budget_key(c) for c in budgets] + [self._rate_key(c) for c in token_rates]
        with self._guard(admission=False):
            await self._run(self._finish, keys, args)

    # -- lifecycle ----------------------------------------------------------------------------

    async def ping(self) -> bool:
        """Whether Redis answers (ignores ``retry_interval``; success ends it)."""
        try:
            with self._guard(admission=False):
                ok = bool(await self._redis.ping())
        except CountersUnavailable:
            return False
        self._down_until = 0.0
        return ok

    async def close(self) -> None:
        await self._redis.aclose()

"""Circuit breakers shared through Redis (§C3), for several workers and gateway nodes.

``BreakerSync`` keeps a ``CircuitBreakers`` in step with the breakers every process sharing the
Redis database and the key prefix sees. The request path never waits on Redis: ``allow`` reads
the process's own copy of each target's state, and the outcomes of requests are queued
(``report``) and sent by a background task, all pending ones in one script call, as soon as the
previous call has returned. A closed target with no failures costs nothing: successes are only
sent while its shared count of failures is known to be above zero.

What Redis holds, per target (``{prefix}breaker:{target}`` hash; gone = closed, no failures):

* ``f``: consecutive failures, counted by every process; any success deletes the hash;
* ``u`` and ``o``: while open, the end of the cooldown and when it opened (Redis server
  milliseconds, so skewed gateway clocks agree);
* ``{prefix}breaker-trial:{target}``: the half-open trial's lease, ``SET NX PX``: one trial at a
  time across all processes. A process *claims* it (for ``claim_ttl``) when it has a request
  for the target after the cooldown, and extends it to ``trial_timeout`` when the request goes.

Every change increments ``{prefix}breakers:seq`` (initialised from the Redis clock in
microseconds, so it keeps growing after a flush or restart), and every observation carries it:
a process applies a target's state only if it is at least as new as the one it has. Every
change but a claim (failures counted, opened, reset and closed, trial released) is published
on the ``{prefix}breakers`` channel, once per target and script call; a full snapshot is read
at start, after any reconnection and every ``sync_interval`` seconds, in case a message was
lost.

Redis unreachable, slow (``timeout``) or refusing: ``active`` turns False, a warning is logged
once, and the breakers run in this process alone (from the state last seen) until a snapshot
succeeds again, tried every ``retry_interval`` seconds. Not for Redis Cluster (undeclared keys).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from gatewatch.controls.redis_backend import client as redis_client

if TYPE_CHECKING:
    from gatewatch.controls.breaker import CircuitBreakers

__all__ = ["BreakerSync", "SharedState"]

log = logging.getLogger("gatewatch.controls")

_POLL = 0.25  # seconds between checks of the subscription (messages arrive at once)
_FAILURES = (RedisError, OSError, TimeoutError)

_LIB = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- the sequence number, started from the Redis clock in microseconds when missing (first use,
-- flush, restart), so it is larger than any number handed out before
local function seq_of(key)
  local s = redis.call('GET', key)
  if s then return tonumber(s) end
  local t = redis.call('TIME')
  local v = tonumber(t[1]) * 1000000 + tonumber(t[2])
  redis.call('SET', key, string.format('%d', v))
  return v
end
local function bump(key)
  seq_of(key)
  return redis.call('INCR', key)
end
-- {target, failures, open (0/1), cooldown left ms, opened at ms, lease holder, lease ttl ms}
local function row(target, hash, lease, now)
  local v = redis.call('HMGET', hash, 'f', 'u', 'o')
  local open, left, opened = 0, 0, 0
  if v[2] then
    open, left, opened = 1, tonumber(v[2]) - now, tonumber(v[3])
  end
  local holder = redis.call('GET', lease)
  local ttl = 0
  if holder then ttl = redis.call('PTTL', lease) else holder = '' end
  return {target, tonumber(v[1] or '0'), open, left, opened, holder, ttl}
end
"""

# KEYS: seq, members set, then per target of the batch its hash and its lease. ARGV: channel,
# failure threshold, cooldown ms, trial ms, claim ms, hash ttl s, the batch as JSON:
# [[target, [[kind, n, token], ...]], ...] with kinds f (n failures; token: the trial's),
# s (success), c (claim the trial), x (extend the claimed lease: the trial goes), r (release).
# Returns {seq, row..claimed (0/1)...}; publishes the rows of the targets changed (not claims).
_BATCH = (
    _LIB
    + """
local now = now_ms()
local threshold, cooldown = tonumber(ARGV[2]), tonumber(ARGV[3])
local trial_ms, claim_ms, ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local mutated = false
local out, loud = {0}, {}
for i, entry in ipairs(cjson.decode(ARGV[7])) do
  local target = entry[1]
  local hash, lease = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  local publish, touched, claimed = false, false, 0
  for _, op in ipairs(entry[2]) do
    local kind, n, token = op[1], op[2], op[3]
    if kind == 'f' then
      local f = redis.call('HINCRBY', hash, 'f', n)
      redis.call('SADD', KEYS[2], target)
      touched, publish = true, true
      local u = redis.call('HGET', hash, 'u')
      local reopen = false
      if not u then
        reopen = f >= threshold
      elseif now >= tonumber(u) then  -- half-open: the trial failed, or one is in flight
        reopen = token ~= '' or redis.call('EXISTS', lease) == 1
      end
      if reopen then
        redis.call('HSET', hash, 'u', now + cooldown, 'o', now)
        redis.call('DEL', lease)
      end
    elseif kind == 's' then
      if redis.call('EXISTS', hash) == 1 or redis.call('EXISTS', lease) == 1 then
        publish = true
        redis.call('DEL', hash, lease)
        redis.call('SREM', KEYS[2], target)
        touched = true
      end
    elseif kind == 'c' then
      local u = redis.call('HGET', hash, 'u')
      if u and now >= tonumber(u) and redis.call('EXISTS', lease) == 0 then
        redis.call('SET', lease, token, 'PX', claim_ms)
        claimed, touched = 1, true
      end
    elseif kind == 'x' then
      if redis.call('GET', lease) == token then redis.call('PEXPIRE', lease, trial_ms) end
    elseif kind == 'r' then
      if redis.call('GET', lease) == token then
        redis.call('DEL', lease)
        publish, touched = true, true
      end
    end
  end
  if touched then
    mutated = true
    if redis.call('EXISTS', hash) == 1 then redis.call('EXPIRE', hash, ttl) end
  end
  local r = row(target, hash, lease, now)
  r[8] = claimed
  out[#out + 1] = r
  if publish then loud[#loud + 1] = r end
end
if mutated then out[1] = bump(KEYS[1]) else out[1] = seq_of(KEYS[1]) end
for _, r in ipairs(loud) do
  redis.call('PUBLISH', ARGV[1], cjson.encode({string.format('%d', out[1]), r[1], r[2], r[3],
                                               r[4], r[5], r[6], r[7]}))
end
return out
"""
)

# KEYS: seq, members set. ARGV: hash key prefix, lease key prefix. Returns {seq, row...} of
# every target that has failures or is open (the others are closed with no failures).
_SNAPSHOT = (
    _LIB
    + """
local now = now_ms()
local out = {seq_of(KEYS[1])}
for _, target in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local hash = ARGV[1] .. target
  if redis.call('EXISTS', hash) == 1 then
    out[#out + 1] = row(target, hash, ARGV[2] .. target, now)
  else
    redis.call('SREM', KEYS[2], target)
  end
end
return out
"""
)


@dataclass(frozen=True, slots=True)
class SharedState:
    """A target's shared breaker as observed at ``seq``; times are on the breakers' clock."""

    seq: int
    failures: int
    open: bool
    until: float  # when the cooldown ends (meaningful when open)
    opened_at: float | None  # unix seconds
    holder: str  # the token of the trial lease, "" when there is none
    lease_until: float  # when that lease expires


CLOSED_STATE = SharedState(0, 0, False, 0.0, None, "", 0.0)


class BreakerSync:
    """Keeps ``breakers`` in step with Redis (see the module docstring). ``report`` and
    ``want`` are called on the request path and only queue; ``start`` and ``close`` run on the
    event loop that serves requests."""

    def __init__(
        self,
        breakers: CircuitBreakers,
        url: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        prefix: str = "gatewatch:",
        timeout: float = 0.5,
        retry_interval: float = 1.0,
        sync_interval: float = 5.0,
        claim_ttl: float = 2.0,
    ) -> None:
        self.active = False
        self.claim_ttl = claim_ttl
        self._breakers = breakers
        self._clock = clock
        self._retry_interval = retry_interval
        self._sync_interval = sync_interval
        self._redis: aioredis.Redis = redis_client(url, timeout)
        self._batch = self._redis.register_script(_BATCH)
        self._snapshot = self._redis.register_script(_SNAPSHOT)
        self._hash = f"{prefix}breaker:"
        self._lease = f"{prefix}breaker-trial:"
        self._seq_key = f"{prefix}breakers:seq"
        self._members = f"{prefix}breakers"
        self._channel = f"{prefix}breakers"
        hash_ttl = breakers.cooldown + breakers.trial_timeout + 3600
        self._args: list[Any] = [
            self._channel,
            breakers.failure_threshold,
            round(breakers.cooldown * 1000),
            round(breakers.trial_timeout * 1000),
            round(claim_ttl * 1000),
            int(hash_ttl),
        ]
        self._pending: dict[str, list[list[Any]]] = {}
        self._wanted: dict[str, float] = {}  # target → when to claim its trial
        self._wake = asyncio.Event()
        self._tokens = (f"{os.getpid()}-{os.urandom(6).hex()}-{n}" for n in itertools.count())
        self._retry_at = 0.0  # time.monotonic() before which Redis is not tried again
        self._tasks: list[asyncio.Task[None]] = []
        self._pubsub: PubSub | None = None

    # -- called by CircuitBreakers on the request path: queue and wake, nothing else ----------

    def report(self, target: str, kind: str, token: str = "") -> None:
        """Queue an outcome: ``f`` failure (``token``: of the trial that failed), ``s``
        success, ``x`` the claimed trial goes, ``r`` the trial ended without a verdict."""
        ops = self._pending.get(target)
        if ops is None:
            self._pending[target] = [[kind, 1, token]]
        elif kind == "f" and ops[-1][0] == "f" and ops[-1][2] == token:
            ops[-1][1] += 1
        else:
            if kind == "s":  # a success resets the count: earlier failures no longer matter
                ops[:] = [op for op in ops if op[0] not in "fs"]
            ops.append([kind, 1, token])
        self._wake.set()

    def want(self, target: str, due: float) -> None:
        """Claim ``target``'s trial at ``due`` (breakers' clock), if it is still wanted then."""
        if target not in self._wanted or due < self._wanted[target]:
            self._wanted[target] = due
            self._wake.set()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """One attempt to subscribe and read the shared state (a few times ``timeout`` at
        most when Redis is down), then the background tasks."""
        try:
            await self._connect()
        except _FAILURES as exc:
            self._down(exc)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._listen()), loop.create_task(self._flush())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self._unsubscribe()
        await self._redis.aclose()

    # -- background ---------------------------------------------------------------------------

    async def _connect(self) -> None:
        if self._pubsub is None:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
            except BaseException:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
                raise
            self._pubsub = pubsub
        await self._sync_all()
        if not self.active:
            if self._retry_at:
                log.info("circuit breakers: shared through Redis again")
            self.active = True

    async def _unsubscribe(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(*_FAILURES):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _down(self, exc: BaseException) -> None:
        """Go on without Redis (log once per outage); the listener tries again later. An error
        that is not Redis's is a bug: logged with its traceback, handled the same way."""
        if self.active or not self._retry_at:
            log.warning(
                "circuit breakers: Redis unavailable (%s); each process uses its own breakers"
                " until it is back",
                str(exc) or type(exc).__name__,
                exc_info=None if isinstance(exc, _FAILURES) else exc,
            )
        self.active = False
        self._retry_at = time.monotonic() + self._retry_interval
        self._pending.clear()
        self._wanted.clear()
        self._breakers.shared_lost()

    async def _listen(self) -> None:
        """Apply published changes; resynchronise periodically and after failures."""
        next_sync = self._clock() + self._sync_interval
        while True:
            try:
                if not self.active:
                    await self._unsubscribe()
                    await asyncio.sleep(max(0.0, self._retry_at - time.monotonic()))
                    await self._connect()
                    next_sync = self._clock() + self._sync_interval
                elif self._clock() >= next_sync:
                    await self._sync_all()
                    next_sync = self._clock() + self._sync_interval
                assert self._pubsub is not None
                message = await self._pubsub.get_message(timeout=_POLL)
                while message is not None:
                    self._on_message(message)
                    message = await self._pubsub.get_message(timeout=0.0)
            except Exception as exc:
                self._down(exc)

    async def _flush(self) -> None:
        """Send queued outcomes and due claims, one script call at a time."""
        while True:
            await self._idle()
            self._wake.clear()
            if not self.active:
                self._pending.clear()
                self._wanted.clear()
                continue
            batch, self._pending = self._pending, {}
            claims: dict[str, str] = {}
            now = self._clock()
            for target, due in list(self._wanted.items()):
                if due <= now:
                    del self._wanted[target]
                    if self._breakers.wants_trial(target, now):
                        claims[target] = next(self._tokens)
                        batch.setdefault(target, []).append(["c", 1, claims[target]])
            if not batch:
                continue
            try:
                await self._send(batch, claims)
            except Exception as exc:
                self._down(exc)

    async def _idle(self) -> None:
        """Wait for queued work or for the next claim to fall due."""
        if self._pending or self._wake.is_set():
            return
        delay = None
        if self._wanted:
            delay = max(0.0, min(self._wanted.values()) - self._clock())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()

    async def _send(self, batch: dict[str, list[list[Any]]], claims: dict[str, str]) -> None:
        keys = [self._seq_key, self._members]
        entries = []
        for target, ops in batch.items():
            keys += [self._hash + target, self._lease + target]
            entries.append([target, ops])
        reply = await self._batch(keys=keys, args=[*self._args, orjson.dumps(entries)])
        seq, now = int(reply[0]), self._clock()
        for row in reply[1:]:
            target = str(row[0])
            state = self._state(seq, row, now)
            claim = claims.get(target) if int(row[7]) else None
            self._breakers.shared_update(target, state, claim, now + self.claim_ttl)

    async def _sync_all(self) -> None:
        reply = await self._snapshot(
            keys=[self._seq_key, self._members], args=[self._hash, self._lease]
        )
        seq, now = int(reply[0]), self._clock()
        states = {str(row[0]): self._state(seq, row, now) for row in reply[1:]}
        self._breakers.shared_snapshot(seq, states)

    def _on_message(self, message: dict[str, Any]) -> None:
        try:
            row = orjson.loads(message["data"])
            state = self._state(int(row[0]), row[1:], self._clock())
        except (ValueError, TypeError, IndexError, KeyError):
            return  # not one of ours
        if self.active:
            self._breakers.shared_update(str(row[1]), state)

    @staticmethod
    def _state(seq: int, row: list[Any], now: float) -> SharedState:
        open_ = bool(int(row[2]))
        holder = str(row[5] or "")
        return SharedState(
            seq=seq,
            failures=int(row[1]),
            open=open_,
            until=now + int(row[3]) / 1000 if open_ else 0.0,
            opened_at=int(row[4]) / 1000 if open_ else None,
            holder=holder,
            lease_until=now + max(0, int(row[6])) / 1000 if holder else 0.0,
        )

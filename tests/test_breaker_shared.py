"""Circuit breakers shared through Redis (§C3 with several workers or nodes): two gateways on one
Redis (DB 11) act as one. Failures anywhere count toward one threshold and open the target for
both at once; the cooldown ends for both; one half-open trial goes at a time across both; a
success anywhere resets the count. When Redis goes away each gateway falls back to its own
breakers and no request fails because of it.

Without a reachable Redis these tests are skipped, or fail when ``CI=true``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis

from gatewatch.controls.breaker import CircuitBreakers
from gatewatch.simulator import create_simulator_app
from tests.conftest import (
    UPSTREAM_OPENAI_KEY,
    RunningGateway,
    ServerThread,
    Upstream,
    flushed_redis,
)

REDIS_URL = os.environ.get("GATEWATCH_TEST_REDIS_BREAKERS", "redis://127.0.0.1:6379/11")
HI = [{"role": "user", "content": "hi"}]
StartGateway = Callable[..., RunningGateway]


@pytest.fixture
def redis_url() -> str:
    return flushed_redis(REDIS_URL)


# ---- helpers ----------------------------------------------------------------------------------


def two_gateways(
    start_gateway: StartGateway, tmp_path: Path, redis: str, **settings: Any
) -> tuple[RunningGateway, RunningGateway]:
    """Two gateways on one database and one Redis, as two nodes would be."""
    a = start_gateway(redis=redis, **settings)
    b = start_gateway(redis=redis, spool={"path": str(tmp_path / "spool-b")}, **settings)
    return a, b


def chat(gw: RunningGateway, key: str, model: str) -> tuple[int, httpx.Headers, str | None]:
    """One chat completion through the openai SDK: status, headers and the error code."""
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0, timeout=20)
    try:
        raw = client.chat.completions.with_raw_response.create(model=model, messages=HI)  # type: ignore[arg-type]
        return raw.status_code, raw.headers, None
    except openai.APIStatusError as exc:
        return exc.status_code, exc.response.headers, exc.response.json()["error"].get("code")
    finally:
        client.close()


def attempts(gw: RunningGateway, headers: httpx.Headers) -> list[tuple[str, str | None]]:
    rec = gw.record(headers["x-gatewatch-request-id"])
    return [(a["model"], a["reason"]) for a in rec["attempts"]]


def target_of(gw: RunningGateway, key: str, target: str) -> dict[str, Any]:
    with gw.api(key) as c:
        r = c.get("/api/v1/providers")
        assert r.status_code == 200, r.text
    found = [t for t in r.json()["targets"] if t["target"] == target]
    assert found, f"{target} is not listed"
    return found[0]  # type: ignore[no-any-return]


def wait_state(gw: RunningGateway, key: str, target: str, state: str) -> float:
    """Wait until ``gw`` shows ``target`` in ``state``; the seconds it took."""
    return wait_for(lambda: target_of(gw, key, target)["state"] == state, f"{target} {state}")


def wait_for(check: Callable[[], bool], what: str, timeout: float = 3.0) -> float:
    """Poll until ``check()``; the seconds it took."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, f"timed out waiting: {what}"
        time.sleep(0.01)
    return time.monotonic() - start


def sent_upstream(upstream: Upstream, model: str) -> int:
    return sum(
        1
        for r in list(upstream.received)
        if isinstance(r["body"], dict) and r["body"].get("model") == model
    )


def circuit_state(gw: RunningGateway, provider: str, model: str) -> float | None:
    text = httpx.get(f"{gw.url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(f'gatewatch_circuit_state{{model="{model}",provider="{provider}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return None


class Recovering:
    """An OpenAI-compatible upstream the test can break and mend: while ``failing`` every chat
    completion gets the OpenAI 500 body, else the simulator answers; ``delay`` holds each one.
    ``calls`` counts the chat completions that reached it, ``most_at_once`` the most that were
    in flight together."""

    def __init__(self) -> None:
        self.sim = create_simulator_app()
        self.failing = True
        self.delay = 0.0
        self.calls = 0
        self.in_flight = 0
        self.most_at_once = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/chat/completions"):
            self.calls += 1
            self.in_flight += 1
            self.most_at_once = max(self.most_at_once, self.in_flight)
            try:
                await self._answer(scope, receive, send)
            finally:
                self.in_flight -= 1
            return
        await self.sim(scope, receive, send)

    async def _answer(self, scope: Any, receive: Any, send: Any) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.failing:
            body = (
                b'{"error": {"message": "Internal server error.", "type": "server_error",'
                b' "param": null, "code": null}}'
            )
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 500, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.sim(scope, receive, send)


@pytest.fixture
def recovering() -> Iterator[tuple[Recovering, str]]:
    app = Recovering()
    server = ServerThread(app).start()
    yield app, server.url
    server.stop()


class Link:
    """A TCP path to Redis that the test can cut (connections reset, new ones refused) and
    mend: a Redis outage as the gateways see it."""

    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = True
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            server = socket.create_connection(("127.0.0.1", self.redis_port))
            with self.lock:
                self.conns += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.up = False
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def mend(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


# ---- two gateways -----------------------------------------------------------------------------


def test_failures_on_two_gateways_open_the_target_for_both(
    start_gateway: StartGateway, upstream: Upstream, tmp_path: Path, redis_url: str
) -> None:
    broken = "gpt-4o-error-500-shared-open"
    target = f"openai/{broken}"
    a, b = two_gateways(
        start_gateway, tmp_path, redis_url,
        models={"smart": [target, "openai/gpt-4o-mini"]},
        circuit_breaker={"failure_threshold": 3, "cooldown": 60},
    )  # fmt: skip
    key = a.create_key(name="ola-key", user="ola")["key"]

    # two failures on A, one on B: three in a row for the target, whichever gateway saw them
    for gw in (a, a):
        status, headers, _ = chat(gw, key, "smart")
        assert status == 200
        assert attempts(gw, headers) == [(broken, "upstream_5xx"), ("gpt-4o-mini", "ok")]
    wait_for(lambda: target_of(b, key, target)["consecutive_failures"] == 2, "B counts them")
    assert target_of(b, key, target)["state"] == "closed"
    status, headers, _ = chat(b, key, "smart")
    assert attempts(b, headers) == [(broken, "upstream_5xx"), ("gpt-4o-mini", "ok")]

    calls = sent_upstream(upstream, broken)
    assert wait_state(a, key, target, "open") < 1.0
    for gw in (a, b, a, b):  # both skip it now, without calling it
        status, headers, _ = chat(gw, key, "smart")
        assert status == 200
        assert attempts(gw, headers) == [(broken, "circuit_open"), ("gpt-4o-mini", "ok")]
    assert sent_upstream(upstream, broken) == calls

    for gw in (a, b):
        shown = target_of(gw, key, target)
        assert shown["state"] == "open"
        assert shown["consecutive_failures"] == 3
        assert 55 < shown["retry_in_seconds"] <= 60
        assert circuit_state(gw, "openai", broken) == 2
    assert target_of(a, key, target)["opened_at"] == target_of(b, key, target)["opened_at"]


def test_the_cooldown_ends_for_both_and_the_trial_failing_reopens_it_for_both(
    start_gateway: StartGateway, upstream: Upstream, tmp_path: Path, redis_url: str
) -> None:
    broken = "gpt-4o-error-500-shared-trial"
    target = f"openai/{broken}"
    a, b = two_gateways(
        start_gateway, tmp_path, redis_url,
        models={"only": [target]},
        circuit_breaker={"failure_threshold": 1, "cooldown": 1},
    )  # fmt: skip
    key = a.create_key(name="uma-key", user="uma")["key"]

    assert chat(a, key, "only")[0] == 500  # the provider's failure, relayed; it opens
    opened = time.monotonic()
    wait_state(b, key, target, "open")
    for gw in (b, a):
        status, headers, code = chat(gw, key, "only")
        assert (status, code, headers["retry-after"]) == (503, "circuit_open", "1")
    assert sent_upstream(upstream, broken) == 1

    # the cooldown is over for both; across both, one request is the trial
    time.sleep(max(0.0, 1.05 - (time.monotonic() - opened)))
    for gw in (a, b):
        assert target_of(gw, key, target)["state"] == "half_open"
    answers = [chat(gw, key, "only")[0] for gw in (a, b, a, b, a, b)]
    assert sorted(answers) == [500, 503, 503, 503, 503, 503], answers
    assert sent_upstream(upstream, broken) == 2
    # it failed: open again for a full cooldown, on both
    for gw in (a, b):
        wait_state(gw, key, target, "open")
        status, _, code = chat(gw, key, "only")
        assert (status, code) == (503, "circuit_open")
    assert sent_upstream(upstream, broken) == 2


def test_one_trial_at_a_time_across_both_and_its_success_closes_both(
    start_gateway: StartGateway,
    upstream: Upstream,
    tmp_path: Path,
    redis_url: str,
    recovering: tuple[Recovering, str],
) -> None:
    flaky, flaky_url = recovering
    target = "flaky/gpt-4o-mini"
    providers = [
        {"name": "openai", "type": "openai", "base_url": f"{upstream.url}/v1",
         "api_key": UPSTREAM_OPENAI_KEY},
        {"name": "flaky", "type": "openai", "base_url": f"{flaky_url}/v1",
         "api_key": UPSTREAM_OPENAI_KEY, "timeout": 10},
    ]  # fmt: skip
    a, b = two_gateways(
        start_gateway, tmp_path, redis_url,
        providers=providers,
        models={"only": [target]},
        circuit_breaker={"failure_threshold": 2, "cooldown": 1},
    )  # fmt: skip
    key = a.create_key(name="ivo-key", user="ivo")["key"]

    assert chat(a, key, "only")[0] == 500
    assert chat(b, key, "only")[0] == 500
    opened = time.monotonic()
    for gw in (a, b):
        wait_state(gw, key, target, "open")
    status, _, code = chat(a, key, "only")
    assert (status, code) == (503, "circuit_open")
    assert flaky.calls == 2

    # the target has recovered, slowly: its trial takes two seconds
    flaky.failing, flaky.delay = False, 2.0
    time.sleep(max(0.0, 1.05 - (time.monotonic() - opened)))
    with ThreadPoolExecutor(4) as pool:
        futures = []
        for n in range(16):  # over 0.8 s, both gateways, while the trial is in flight
            futures.append(pool.submit(chat, (a, b)[n % 2], key, "only"))
            time.sleep(0.05)
        answers = [f.result() for f in futures]
    assert flaky.most_at_once == 1  # one trial at a time across both gateways
    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [200] + [503] * 15, statuses
    assert {code for status, _, code in answers if status == 503} == {"circuit_open"}
    assert flaky.calls == 3

    flaky.delay = 0.0
    for gw in (a, b):  # its success closed the target for both
        wait_state(gw, key, target, "closed")
        assert target_of(gw, key, target)["consecutive_failures"] == 0
        assert chat(gw, key, "only")[0] == 200
        assert circuit_state(gw, "flaky", "gpt-4o-mini") == 0
    assert flaky.calls == 5


def test_redis_outage_falls_back_to_each_gateways_own_breakers(
    start_gateway: StartGateway,
    upstream: Upstream,
    tmp_path: Path,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    link = Link(int(redis_url.split(":")[2].split("/")[0]))
    try:
        url = f"redis://127.0.0.1:{link.port}/{redis_url.rsplit('/', 1)[1]}"
        broken = "gpt-4o-error-500-shared-outage"
        again = "gpt-4o-error-500-shared-again"
        a, b = two_gateways(
            start_gateway, tmp_path, url,
            models={
                "smart": [f"openai/{broken}", "openai/gpt-4o-mini"],
                "other": [f"openai/{again}", "openai/gpt-4o-mini"],
            },
            circuit_breaker={"failure_threshold": 2, "cooldown": 60},
        )  # fmt: skip
        key = a.create_key(name="eda-key", user="eda")["key"]
        assert a.gateway.breakers.shared and b.gateway.breakers.shared

        caplog.set_level(logging.WARNING, logger="gatewatch.controls")
        link.cut()
        seen = [chat(a, key, "smart") for _ in range(4)]  # every request is answered
        assert [status for status, _, _ in seen] == [200] * 4
        assert [attempts(a, h)[0] for _, h, _ in seen] == [(broken, "upstream_5xx")] * 2 + [
            (broken, "circuit_open")
        ] * 2  # A's own breaker opened after its own two failures
        assert not a.gateway.breakers.shared
        status, headers, _ = chat(b, key, "smart")  # B has not seen them: it still tries
        assert status == 200
        assert attempts(b, headers)[0] == (broken, "upstream_5xx")
        time.sleep(1.5)  # reconnections are tried, and fail, without more warnings
        warnings = [r for r in caplog.records if "Redis unavailable" in r.getMessage()]
        assert 1 <= len(warnings) <= 2, [r.getMessage() for r in warnings]  # once per gateway

        link.mend()
        for breakers in (a.gateway.breakers, b.gateway.breakers):
            wait_for(lambda breakers=breakers: breakers.shared, "shared again")
        for _ in range(2):  # shared again: A's failures open the target for B too
            assert chat(a, key, "other")[0] == 200
        wait_state(b, key, f"openai/{again}", "open")
        status, headers, _ = chat(b, key, "other")
        assert attempts(b, headers)[0] == (again, "circuit_open")
    finally:
        link.close()


# ---- two sets of breakers, no HTTP ------------------------------------------------------------


def failures(cb: CircuitBreakers, target: str) -> int:
    return next((t["consecutive_failures"] for t in cb.snapshot() if t["target"] == target), 0)


def in_flight(cb: CircuitBreakers, target: str) -> bool:
    return any(t["trial_in_flight"] for t in cb.snapshot() if t["target"] == target)


async def _until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 3.0
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting: {what}"
        await asyncio.sleep(0.005)


def test_a_success_anywhere_resets_the_count_for_all(redis_url: str) -> None:
    t = "openai/gpt-4o"

    async def scenario() -> None:
        one, two = CircuitBreakers(3, 30.0), CircuitBreakers(3, 30.0)
        await one.use_redis(redis_url)
        await two.use_redis(redis_url)
        try:
            for _ in range(2):
                assert one.allow(t)
                one.record_failure(t)
            await _until(lambda: failures(two, t) == 2, "two sees 2")
            assert two.allow(t)
            two.record_success(t)  # the target answered in the other process
            await _until(lambda: failures(one, t) == 0, "reset")
            for _ in range(2):
                assert one.allow(t)
                one.record_failure(t)
            await asyncio.sleep(0.05)
            assert one.state(t) == two.state(t) == "closed"  # 2 in a row, not 4
            assert two.allow(t)
            two.record_failure(t)
            await _until(lambda: one.state(t) == "open", "open after 3 in a row")
            two.record_success(t)  # a late success closes it, for both
            await _until(lambda: one.state(t) == "closed", "closed by a late success")
        finally:
            await one.close()
            await two.close()

    asyncio.run(scenario())


def test_a_released_trial_passes_to_the_other_process(redis_url: str) -> None:
    t = "anthropic/claude-sonnet-4-5"

    async def scenario() -> None:
        one, two = CircuitBreakers(1, 0.2), CircuitBreakers(1, 0.2)
        await one.use_redis(redis_url)
        await two.use_redis(redis_url)
        try:
            assert one.allow(t)
            one.record_failure(t)
            await _until(lambda: two.state(t) == "open", "open for two")
            await asyncio.sleep(0.25)
            # only `one` has requests: it claims the trial, `two` never asked
            await _until(lambda: one.allow(t), "one gets the trial")
            assert not one.allow(t)
            await asyncio.sleep(0.05)
            assert not two.allow(t)  # one trial at a time across both
            await _until(lambda: in_flight(two, t), "two sees the trial")
            assert 0 < two.retry_after([t]) <= 1.0
            one.release(t)  # the client left: no verdict
            await _until(lambda: two.allow(t), "two gets the trial")
            assert not one.allow(t)
            two.record_failure(t)
            await _until(lambda: one.state(t) == "open", "reopened for one")
        finally:
            await one.close()
            await two.close()

    asyncio.run(scenario())


def test_a_target_open_in_a_flushed_redis_is_not_stuck(redis_url: str) -> None:
    t = "openai/gpt-4o"

    async def scenario() -> None:
        one = CircuitBreakers(1, 0.2)
        await one.use_redis(redis_url)
        try:
            assert one.allow(t)
            one.record_failure(t)
            await _until(lambda: one.state(t) == "open", "open")
            client = redis.Redis.from_url(redis_url)
            client.flushdb()  # Redis restarted empty: every target is closed again
            client.close()
            await asyncio.sleep(0.25)
            await _until(lambda: one.allow(t), "the target takes requests again")
            assert one.state(t) == "closed"
        finally:
            await one.close()

    asyncio.run(scenario())


def test_closed_targets_cost_nothing_when_shared(redis_url: str) -> None:
    async def scenario() -> None:
        cb = CircuitBreakers(5, 30.0)
        await cb.use_redis(redis_url)
        try:
            assert cb.shared
            t = "openai/gpt-4o-mini"
            cb.record_success(t)
            for _ in range(1000):  # warm up
                cb.allow(t)
                cb.record_success(t, 1.0)
            before = sys.getallocatedblocks()
            for _ in range(10_000):
                cb.allow(t)
                cb.record_success(t, 1.0)
            assert sys.getallocatedblocks() - before < 50  # nothing queued for Redis
        finally:
            await cb.close()

    asyncio.run(scenario())

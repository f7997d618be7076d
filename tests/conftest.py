"""Shared fixtures: a simulated upstream provider and a real gateway, each a uvicorn server on a
loopback port in a background thread."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from gatewatch.app import Gateway
from gatewatch.settings import Settings, load_settings
from gatewatch.simulator import create_simulator_app

ADMIN_KEY = "gw-test-admin-key-0123456789abcdef"
UPSTREAM_OPENAI_KEY = "sk-upstream-openai-secret-123456"
UPSTREAM_ANTHROPIC_KEY = "sk-ant-upstream-secret-123456"


# PostgreSQL for the engine tests: each test gets its own schema, gwt_<pid of the test run>_…,
# dropped when the run ends (and, at the start of a run, those of runs no longer alive).
# GATEWATCH_TEST_DATABASE=postgresql runs the gateway tests themselves on it too.
PG_URL = os.environ.get("GATEWATCH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
# a test's gateways (restarts too) share one database, as on SQLite
_PG_BY_DIR: dict[Path, str] = {}


def service_missing(reason: str) -> None:
    """A service a test needs is not there: skip, or fail in CI (where it must be)."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def flushed_redis(url: str) -> str:
    """``url`` once its Redis database is emptied (each test file uses a database of its own)."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        try:
            client.flushdb()
        finally:
            client.close()
    except redis.RedisError as exc:
        service_missing(f"Redis is not reachable at {url}: {exc}")
    return url


def postgres_url() -> str:
    """The URL of a fresh, empty schema in the test PostgreSQL."""
    import uuid

    import psycopg

    name = f"gwt_{os.getpid()}_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(PG_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE SCHEMA "{name}"')
    except psycopg.OperationalError as exc:
        service_missing(f"PostgreSQL is not reachable at {PG_URL}: {exc}")
    return f"{PG_URL}?schema={name}"


def _drop_schemas(which: Callable[[int], bool]) -> None:
    """Drop the test schemas of the test runs (by pid) ``which`` picks."""
    import psycopg

    try:
        with psycopg.connect(PG_URL, autocommit=True, connect_timeout=5) as conn:
            names = conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'gwt\\_%'"
            ).fetchall()
            for (name,) in names:
                pid = name.split("_")[1]
                if pid.isdigit() and which(int(pid)):
                    conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    except psycopg.OperationalError:
        pass  # no PostgreSQL: no schemas either


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@pytest.fixture(scope="session", autouse=True)
def _drop_test_schemas() -> Iterator[None]:
    _drop_schemas(_gone)  # left by runs that were killed
    yield
    _drop_schemas(lambda pid: pid == os.getpid())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerThread:
    """A uvicorn server in a thread; ``stop()`` runs the app's shutdown (lifespan)."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.port = port or free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False,
            lifespan="auto", loop="asyncio",
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@dataclass
class Upstream:
    server: ServerThread
    app: Any

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def received(self) -> list[dict[str, Any]]:
        return self.app.state.received  # type: ignore[no-any-return]


@dataclass
class RunningGateway:
    server: ServerThread
    gateway: Gateway
    admin_key: str = ADMIN_KEY

    @property
    def url(self) -> str:
        return self.server.url

    def wait_records(self, timeout: float = 10.0) -> None:
        """Block until every record the gateway queued is stored. A request whose response the
        client already has may not have queued its record yet (that happens just after the last
        byte is sent): wait for requests in flight too, for up to two seconds (a test may keep
        a stream open on purpose)."""
        deadline = time.monotonic() + timeout
        settle = time.monotonic() + 2.0
        registry = self.gateway.metrics.registry
        while self.gateway.writer.pending or (
            time.monotonic() < settle and registry.get_sample_value("gatewatch_inflight_requests")
        ):
            if time.monotonic() > deadline:
                raise AssertionError("records were not stored in time")
            time.sleep(0.01)

    def api(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {key or self.admin_key}"},
            timeout=30,
        )  # fmt: skip

    def create_key(self, **fields: Any) -> dict[str, Any]:
        with self.api() as c:
            r = c.post("/api/v1/keys", json=fields)
            assert r.status_code == 201, r.text
            return r.json()  # type: ignore[no-any-return]

    def records(self, key: str | None = None, **params: Any) -> list[dict[str, Any]]:
        self.wait_records()
        with self.api(key) as c:
            r = c.get("/api/v1/requests", params={"limit": 1000, **params})
            assert r.status_code == 200, r.text
            return r.json()["results"]  # type: ignore[no-any-return]

    def record(self, request_id: str, key: str | None = None) -> dict[str, Any]:
        """The stored record of a request. Records are written off the request path: on a
        loaded machine one may still be on its way when the client has the response, so a 404
        is asked again for a few seconds before it counts."""
        self.wait_records()
        deadline = time.monotonic() + 5.0
        with self.api(key) as c:
            while True:
                r = c.get(f"/api/v1/requests/{request_id}")
                if r.status_code != 404 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert r.status_code == 200, r.text
            return r.json()  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def upstream() -> Iterator[Upstream]:
    app = create_simulator_app()
    server = ServerThread(app).start()
    yield Upstream(server, app)
    server.stop()


def gateway_settings(tmp_path: Path, upstream_url: str, **overrides: Any) -> Settings:
    database = f"sqlite:///{tmp_path / 'gatewatch.db'}"
    if os.environ.get("GATEWATCH_TEST_DATABASE") == "postgresql":
        database = _PG_BY_DIR.setdefault(tmp_path, "") or postgres_url()
        _PG_BY_DIR[tmp_path] = database
    base: dict[str, Any] = {
        "admin_key": ADMIN_KEY,
        "database": database,
        "spool": {"path": str(tmp_path / "spool")},
        "providers": [
            {"name": "openai", "type": "openai", "base_url": f"{upstream_url}/v1",
             "api_key": UPSTREAM_OPENAI_KEY, "timeout": 2},
            {"name": "anthropic", "type": "anthropic", "base_url": upstream_url,
             "api_key": UPSTREAM_ANTHROPIC_KEY, "timeout": 2},
        ],
    }  # fmt: skip
    base.update(overrides)
    return load_settings(env={}, overrides=base, path=os.devnull)


@pytest.fixture
def start_gateway(tmp_path: Path, upstream: Upstream) -> Iterator[Callable[..., RunningGateway]]:
    """Start a gateway with settings overrides; stopped (and its records flushed) at teardown."""
    running: list[ServerThread] = []

    def start(**overrides: Any) -> RunningGateway:
        settings = gateway_settings(tmp_path, upstream.url, **overrides)
        gw = Gateway(settings)
        server = ServerThread(gw).start()
        running.append(server)
        return RunningGateway(server, gw)

    yield start
    for server in running:
        with contextlib.suppress(Exception):
            server.stop()


@pytest.fixture
def gateway(start_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    return start_gateway()

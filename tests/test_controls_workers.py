"""Limits hold across worker processes: 4 `gatewatch serve` workers share counters in Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_KEY, Upstream, flushed_redis, free_port

REDIS_URL = os.environ.get("GATEWATCH_TEST_REDIS_WORKERS", "redis://127.0.0.1:6379/14")


@pytest.fixture
def redis_url() -> str:
    return flushed_redis(REDIS_URL)


def test_rate_limit_is_shared_by_four_workers(
    tmp_path: Path, upstream: Upstream, redis_url: str
) -> None:
    port = free_port()
    config = tmp_path / "gatewatch.yaml"
    config.write_text(
        f"admin_key: {ADMIN_KEY}\n"
        f"database: sqlite:///{tmp_path / 'gw.db'}\n"
        f"redis: {redis_url}\n"
        "providers:\n"
        f"  - {{name: openai, type: openai, base_url: '{upstream.url}/v1', api_key: sk-x}}\n"
    )
    exe = Path(sys.executable).with_name("gatewatch")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWATCH_")}
    proc = subprocess.Popen(
        [str(exe), "serve", "--config", str(config), "--port", str(port), "--workers", "4"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.1)
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        created = httpx.post(
            f"{base}/api/v1/keys", json={"user": "team", "rpm": 20}, headers=admin, timeout=10
        )
        assert created.status_code == 201, created.text
        key = created.json()["key"]
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}

        def call(_: int) -> int:
            # a fresh connection each time, so the requests spread over the workers
            r = httpx.post(
                f"{base}/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {key}"},
                timeout=10,
            )
            return r.status_code

        t0 = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(call, range(60)))
        elapsed = time.monotonic() - t0
        # GCRA with a burst of 20 refills one request every 3 s: exact, allowing for the refill
        refilled = int(elapsed // 3)
        assert 20 <= codes.count(200) <= 20 + refilled, (elapsed, codes)
        assert codes.count(200) + codes.count(429) == 60, codes
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    # more than one worker served traffic (else this proves nothing about sharing)
    assert err.decode().count("Started server process") >= 2

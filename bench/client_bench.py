"""Which upstream HTTP client costs the gateway least CPU per request.

    .venv/bin/python bench/client_bench.py [--requests 20000] [--concurrency 32]

Starts bench/mock_upstream.py, then sends the same non-streaming chat completion with each
client from one uvloop process at fixed concurrency, and prints requests/s and the client
process's CPU microseconds per request (user + system time / requests). The gateway is
CPU-bound on one core, so CPU per request is the figure that matters."""

from __future__ import annotations

import argparse
import asyncio
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop

BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}]}'
HEADERS = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _drive(one: Callable[[], Awaitable[None]], n: int, concurrency: int) -> float:
    remaining = n

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0


async def bench_aiohttp(url: str, n: int, c: int) -> float:
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:

        async def one() -> None:
            async with s.post(url, data=BODY, headers=HEADERS) as r:
                await r.read()

        return await _drive(one, n, c)


async def bench_httpx(url: str, n: int, c: int) -> float:
    import httpx

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=c)
    async with httpx.AsyncClient(limits=limits) as s:

        async def one() -> None:
            r = await s.post(url, content=BODY, headers=HEADERS)
            r.read()

        return await _drive(one, n, c)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    port = _free_port()
    mock = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("mock_upstream.py")), "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert mock.stdout is not None
        mock.stdout.readline()  # "ready"
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        print(f"{'client':10} {'requests/s':>11} {'CPU µs/request':>15}")
        for name, fn in (("aiohttp", bench_aiohttp), ("httpx", bench_httpx)):
            uvloop.run(fn(url, 1000, args.concurrency))  # warm-up
            before = resource.getrusage(resource.RUSAGE_SELF)
            seconds = uvloop.run(fn(url, args.requests, args.concurrency))
            after = resource.getrusage(resource.RUSAGE_SELF)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            rate = args.requests / seconds
            print(f"{name:10} {rate:>11,.0f} {cpu / args.requests * 1e6:>15,.0f}")
    finally:
        mock.terminate()
        mock.wait(10)


if __name__ == "__main__":
    main()

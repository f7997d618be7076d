"""A steady closed-loop load on the gateway, with every request's latency.

    .venv/bin/python bench/closed_loop.py URL --key gw-… [--clients 4] [--think 0.01]
        [--out samples.txt]

Each of ``--clients`` clients keeps one HTTP/1.1 keep-alive connection and sends a non-streaming
chat completion, waits for the whole answer, rests ``--think`` seconds, and sends the next
one, until stdin closes or the process gets SIGTERM/SIGINT. Then it writes one line per request,
``<start> <seconds> <status>``, to ``--out`` (or stdout): the start is ``time.monotonic()``,
the system-wide monotonic clock on Linux, so another process can cut the samples into windows of
its own; status 0 means the connection failed. A raw asyncio client on uvloop, so the load
generator costs little CPU next to the gateway it measures (tests/test_retention_load.py runs
it in a process of its own).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from urllib.parse import urlsplit

BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello under load"}]}'


async def _client(
    host: str, port: int, request: bytes, think: float, stop: asyncio.Event, out: list[str]
) -> None:
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    while not stop.is_set():
        started = time.monotonic()
        status = 0
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            assert reader is not None
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, StopIteration, ValueError):
            status = 0
            if writer is not None:
                writer.close()
            reader = writer = None
        out.append(f"{started:.6f} {time.monotonic() - started:.6f} {status}")
        if think:
            await asyncio.sleep(think)
    if writer is not None:
        writer.close()


async def run(url: str, key: str, clients: int, think: float) -> list[str]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # stdin closing (the parent went away, or said stop) ends the run too
    loop.add_reader(sys.stdin.fileno(), lambda: sys.stdin.buffer.read1(1 << 16) or stop.set())
    out: list[str] = []
    print("ready", flush=True)
    await asyncio.gather(*(_client(host, port, request, think, stop, out) for _ in range(clients)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("url", help="the gateway, e.g. http://127.0.0.1:4000")
    p.add_argument("--key", required=True, help="a gateway key")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--think", type=float, default=0.01, help="seconds between two requests")
    p.add_argument("--out", help="file for the samples (default: stdout)")
    args = p.parse_args(argv)
    try:
        import uvloop

        lines = uvloop.run(run(args.url, args.key, args.clients, args.think))
    except ImportError:
        lines = asyncio.run(run(args.url, args.key, args.clients, args.think))
    text = "".join(f"{line}\n" for line in lines)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        with contextlib.suppress(BrokenPipeError):
            sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A trivial OTLP/HTTP collector for the benchmark: answers 200 to every POST and counts what it
received (bodies are not decoded). Prints ``ready`` on stdout once listening; on SIGTERM it
writes ``{"requests": …, "bytes": …, "by_path": {…}}`` to stderr and exits.

    python bench/otlp_sink.py --port 4318
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections import Counter

_OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"


class Sink(asyncio.Protocol):
    requests: Counter[str] = Counter()
    received = 0

    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if len(self.buf) < end + 4 + length:
                return
            path = head.split(" ", 2)[1] if " " in head else "?"
            Sink.requests[path] += 1
            Sink.received += length
            self.buf = self.buf[end + 4 + length :]
            assert self.transport is not None
            self.transport.write(_OK)


async def main(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Sink, host, port)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print("ready", flush=True)
    await stop.wait()
    server.close()
    summary = {
        "requests": sum(Sink.requests.values()),
        "bytes": Sink.received,
        "by_path": dict(Sink.requests),
    }
    print(json.dumps(summary), file=sys.stderr, flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    asyncio.run(main(args.host, args.port))

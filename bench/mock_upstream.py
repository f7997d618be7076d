"""A fast mock OpenAI upstream for benchmarking the gateway.

A raw ``asyncio.Protocol`` HTTP/1.1 server on uvloop, so that the upstream costs as little CPU
as possible while the load generator and the gateway share the same machine.  Every response is
pre-built at import time; a request costs one head parse and one ``transport.write``.

* ``POST …/chat/completions`` → a fixed ``chat.completion`` JSON, or, when the body contains
  ``"stream":true`` / ``"stream": true``, a chunked SSE stream of 5 ``chat.completion.chunk``
  events (+ a usage chunk with ``"choices":[]`` when ``include_usage`` appears) and ``[DONE]``.
* ``GET …/models`` → one model; ``GET /`` or ``/health`` → ``ok``; anything else → 404.

Keep-alive, pipelining and partial reads are handled; request bodies may be sent with
``Content-Length`` or ``Transfer-Encoding: chunked``.

    python bench/mock_upstream.py --port 8001      # prints "ready" once listening
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Any, cast

MODEL = "gpt-4o-mini-2024-07-18"
CREATED = 1_732_000_000
CONTENT = "Hello! How can I help you today?"
MAX_HEAD = 64 * 1024
MAX_BODY = 32 * 1024 * 1024

USAGE: dict[str, Any] = {
    "prompt_tokens": 12,
    "completion_tokens": 9,
    "total_tokens": 21,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _response(status: str, content_type: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\n"
        f"content-type: {content_type}\r\n"
        f"content-length: {len(body)}\r\n"
        "x-request-id: req_bench_mock\r\n"
        "\r\n"
    )
    return head.encode() + body


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _build_completion() -> bytes:
    body = _dumps(
        {
            "id": "chatcmpl-bench0000000000000000000001",
            "object": "chat.completion",
            "created": CREATED,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": CONTENT, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": USAGE,
            "service_tier": "default",
            "system_fingerprint": "fp_bench0001",
        }
    )
    return _response("200 OK", "application/json", body)


def _build_stream(include_usage: bool) -> bytes:
    base: dict[str, Any] = {
        "id": "chatcmpl-bench0000000000000000000002",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "service_tier": "default",
        "system_fingerprint": "fp_bench0001",
    }
    deltas: list[tuple[dict[str, Any], str | None]] = [
        ({"role": "assistant", "content": "", "refusal": None}, None),
        ({"content": "Hello!"}, None),
        ({"content": " How can I help"}, None),
        ({"content": " you today?"}, None),
        ({}, "stop"),
    ]
    events: list[dict[str, Any]] = []
    for delta, finish in deltas:
        event = {
            **base,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            event["usage"] = None
        events.append(event)
    if include_usage:
        events.append({**base, "choices": [], "usage": USAGE})
    parts = [_chunk(b"data: " + _dumps(e) + b"\n\n") for e in events]
    parts.append(_chunk(b"data: [DONE]\n\n"))
    parts.append(b"0\r\n\r\n")
    head = (
        b"HTTP/1.1 200 OK\r\n"
        b"content-type: text/event-stream; charset=utf-8\r\n"
        b"cache-control: no-cache\r\n"
        b"transfer-encoding: chunked\r\n"
        b"x-request-id: req_bench_mock\r\n"
        b"\r\n"
    )
    return head + b"".join(parts)


COMPLETION = _build_completion()
STREAM = _build_stream(include_usage=False)
STREAM_USAGE = _build_stream(include_usage=True)
MODELS = _response(
    "200 OK",
    "application/json",
    _dumps(
        {
            "object": "list",
            "data": [{"id": MODEL, "object": "model", "created": CREATED, "owned_by": "system"}],
        }
    ),
)
OK = _response("200 OK", "text/plain", b"ok")
NOT_FOUND = _response(
    "404 Not Found",
    "application/json",
    _dumps(
        {
            "error": {
                "message": "Unknown route on the mock upstream",
                "type": "invalid_request_error",
                "param": None,
                "code": "unknown_url",
            }
        }
    ),
)
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
TOO_LARGE = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def respond(method: bytes, target: bytes, body: bytes) -> bytes:
    path = target.split(b"?", 1)[0]
    if method == b"POST" and path.endswith(b"/chat/completions"):
        if b'"stream":true' in body or b'"stream": true' in body:
            return STREAM_USAGE if b"include_usage" in body else STREAM
        return COMPLETION
    if method == b"GET":
        if path.endswith(b"/models"):
            return MODELS
        if path in (b"/", b"/health"):
            return OK
    return NOT_FOUND


class _BadRequest(Exception):
    pass


def _dechunk(buf: bytearray, start: int) -> tuple[bytes, int] | None:
    """Decode a chunked body beginning at ``start``: (body, end offset), or None if incomplete."""
    pos = start
    out = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        try:
            size = int(bytes(buf[pos:eol]).split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise _BadRequest from None
        pos = eol + 2
        if size == 0:
            # Skip trailers until the empty line.
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return None
                if eol == pos:
                    return bytes(out), eol + 2
                pos = eol + 2
        if len(buf) < pos + size + 2:
            return None
        out += buf[pos : pos + size]
        if len(out) > MAX_BODY:
            raise _BadRequest
        pos += size + 2


class MockUpstream(asyncio.Protocol):
    __slots__ = ("buf", "continued", "transport")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.continued = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        out: list[bytes] = []
        close = False
        try:
            while self.buf:
                done = self._one(out)
                if done is None:
                    break
                if done:
                    close = True
                    break
        except _BadRequest:
            out.append(BAD_REQUEST)
            close = True
        transport = self.transport
        if transport is None:
            return
        if out:
            transport.write(b"".join(out) if len(out) > 1 else out[0])
        if close:
            self.buf.clear()
            transport.close()

    def _one(self, out: list[bytes]) -> bool | None:
        """Serve one request from the buffer: None = need more data, else whether to close."""
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                raise _BadRequest
            return None
        lines = bytes(buf[:end]).split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3:
            raise _BadRequest
        method, target, version = parts
        length = 0
        chunked = False
        expect = False
        conn = b""
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise _BadRequest
            name = name.strip().lower()
            if name == b"content-length":
                try:
                    length = int(value.strip())
                except ValueError:
                    raise _BadRequest from None
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                conn = value.strip().lower()
            elif name == b"expect":
                expect = b"100-continue" in value.lower()
        start = end + 4
        if chunked:
            decoded = _dechunk(buf, start)
            if decoded is None:
                self._maybe_continue(expect, out)
                return None
            body, stop = decoded
        else:
            if length < 0:
                raise _BadRequest
            if length > MAX_BODY:
                out.append(TOO_LARGE)
                return True
            stop = start + length
            if len(buf) < stop:
                self._maybe_continue(expect, out)
                return None
            body = bytes(buf[start:stop])
        del buf[:stop]
        self.continued = False
        out.append(respond(method, target, body))
        if version == b"HTTP/1.0":
            return conn != b"keep-alive"
        return conn == b"close"

    def _maybe_continue(self, expect: bool, out: list[bytes]) -> None:
        if expect and not self.continued:
            self.continued = True
            out.append(CONTINUE)


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(MockUpstream, host, port, backlog=1024, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fast mock OpenAI upstream for benchmarks")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency of the gateway
        print("uvloop not installed; using the default asyncio loop", file=sys.stderr)
        asyncio.run(serve(args.host, args.port))
    else:
        uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()

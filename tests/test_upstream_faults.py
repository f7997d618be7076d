"""Upstream faults (issue 6, §P2, §P6, §P7, §R): a provider that resets the connection, trickles,
stalls, never answers, garbles its stream, leaves usage out or answers an error that is not JSON.
Whatever it does, the caller gets an answer in its own API's shape (or a stream that ends with an
error event in the provider's format), never a 500 and never a hung connection, and the request is
recorded with what could be known. After every fault the gateway serves a normal request.

Transport faults come from ``FaultyLink``, a TCP front for the simulator that breaks the bytes on
their way back; content faults (``garbled``, ``nousage``, non-JSON errors) are simulator models."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from unittest.mock import ANY

import anthropic
import httpx
import openai
import pytest
from conftest import (
    UPSTREAM_ANTHROPIC_KEY,
    UPSTREAM_OPENAI_KEY,
    RunningGateway,
    ServerThread,
    gateway_settings,
)

from gatewatch.app import Gateway
from gatewatch.pricing import PriceBook, Usage

TIMEOUT = 0.3  # the provider timeout behind the faults that are about time (seconds)
TRICKLE_TIMEOUT = 0.5  # the ``trickle`` providers'
TRICKLE_GAP, TRICKLE_PIECES = 0.06, 24  # 8 gaps fit in that timeout; a whole answer takes 2.8x it
SLACK = 5.0  # the other faulty providers': a busy test machine must not turn a fault into a timeout
PAUSE = 4 * TIMEOUT  # a silence mid-answer, well over the timeout
BAD_HEADER_VALUE = b"caf\xc3\xa9 \x01\xff"  # UTF-8, a control byte, a byte that is not UTF-8
HOLD_LIMIT = 20.0  # the longest a held connection stays open if the gateway never closes it
ENDLESS_LIMIT = 64 * 1024 * 1024  # the most an ``endless`` line sends if the gateway never cuts it

MSG = [{"role": "user", "content": "hello there gateway"}]
ANSWER = (
    "This is a simulated answer to: hello there gateway. The gatewatch simulator wrote this "
    "reply deterministically, so that every stream arrives in several small pieces."
)
INPUT_TOKENS = 10 + 3  # the simulator: 10 + the prompt's words
OUTPUT_TOKENS = len(ANSWER.split())

FAMILIES = ("openai", "anthropic")


# ---- the faulty upstream ----------------------------------------------------------------------


class FaultyLink:
    """A TCP front for the simulator. The first path segment names the fault:
    ``/{fault}/v1/chat/completions`` is forwarded as ``/v1/chat/completions`` and the simulator's
    answer (read whole first) goes back through the fault:

    - ``ok``: unchanged;
    - ``rst``: up to 5 bytes into the 5th stream event (or half a blocking body), then a TCP RST;
    - ``rst-early``: the request is read, then a TCP RST before any byte of an answer;
    - ``silent``: the request is read, then nothing, with the connection left open;
    - ``headers``: the response head only, then nothing;
    - ``stall``: the same cut as ``rst``, then nothing, with the connection left open;
    - ``pause``: the same cut, then ``PAUSE`` seconds of silence, then the rest;
    - ``trickle``: the whole answer in ``TRICKLE_PIECES`` pieces, ``TRICKLE_GAP`` seconds apart;
    - ``split``: the whole answer in 13-byte writes (events cut at odd places);
    - ``badhead``: the answer with ``BAD_HEADER_VALUE`` as its request-id and retry-after;
    - ``garbage``: bytes that are not HTTP, then the connection is closed;
    - ``cr`` (streams): the stream with every line ending in a bare CR, in 13-byte chunks;
    - ``endless`` (streams): the stream's first 4 events, then a data line that never ends, in
      64 KiB chunks, until the gateway closes the connection (``endless`` then gets "closed")
      or ``ENDLESS_LIMIT`` bytes have gone (it gets "limit");
    - ``nooutput``: the answer with every usage's output count (``completion_tokens``,
      ``output_tokens``) left out, the input counts kept.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.held = 0  # connections being held open right now
        self.held_to_the_limit = 0  # held connections the gateway never closed
        self.endless: list[str] = []  # how each endless line ended
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultyLink:
        self._thread.start()
        assert self._ready.wait(10), "the faulty link did not start"
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *lines = head[:-4].split(b"\r\n")
            method, path, version = request_line.split(b" ", 2)
            headers = [ln for ln in lines if not ln.lower().startswith(b"connection:")]
            length = next(
                (int(ln.split(b":", 1)[1]) for ln in lines
                 if ln.lower().startswith(b"content-length:")), 0,
            )  # fmt: skip
            body = await reader.readexactly(length)
            _, fault, rest = path.split(b"/", 2)
            if fault == b"silent":
                return await self._hold(reader)
            if fault == b"rst-early":
                return self._reset(writer)
            if fault == b"garbage":
                return await self._send(writer, b"Hello! This is not HTTP.\r\n\r\n")
            answer = await self._ask_simulator(method, b"/" + rest, version, headers, body)
            await self._faults[fault.decode()](self, answer, reader, writer)
        with contextlib.suppress(Exception):
            writer.close()

    async def _ask_simulator(
        self, method: bytes, path: bytes, version: bytes, headers: list[bytes], body: bytes
    ) -> bytes:
        r, w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        head = b"\r\n".join([b" ".join([method, path, version]), *headers, b"Connection: close"])
        w.write(head + b"\r\n\r\n" + body)
        answer = await r.read()  # the simulator closes the connection after its answer
        w.close()
        return answer

    async def _hold(self, reader: asyncio.StreamReader) -> None:
        """Keep the connection open, sending nothing, until the gateway closes it."""
        self.held += 1
        try:
            await asyncio.wait_for(reader.read(), HOLD_LIMIT)
        except TimeoutError:
            self.held_to_the_limit += 1
        except ConnectionError:
            pass
        finally:
            self.held -= 1

    @staticmethod
    def _reset(writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    @staticmethod
    def _cut(answer: bytes) -> int:
        """5 bytes into the 5th SSE event's data (past its chunk-size line), or half the body."""
        start = answer.index(b"\r\n\r\n") + 4
        pos = start
        for _ in range(4):
            pos = answer.find(b"\n\n", pos)
            if pos < 0:
                return start + (len(answer) - start) // 2
            pos += 2
        return answer.index(b"\r\n", pos + 2) + 2 + 5

    @staticmethod
    def _unchunk(answer: bytes) -> tuple[bytes, bytes]:
        """The head (through its blank line) and the body of a chunked answer, unchunked."""
        end = answer.index(b"\r\n\r\n") + 4
        head, pos, body = answer[:end], end, bytearray()
        while size := int(answer[pos : answer.index(b"\r\n", pos)].split(b";")[0], 16):
            pos = answer.index(b"\r\n", pos) + 2
            body += answer[pos : pos + size]
            pos += size + 2
        return head, bytes(body)

    @staticmethod
    def _chunk(data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data)

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    async def _ok(self, answer: bytes, reader: Any, writer: asyncio.StreamWriter) -> None:
        await self._send(writer, answer)

    async def _rst(self, answer: bytes, reader: Any, writer: asyncio.StreamWriter) -> None:
        await self._send(writer, answer[: self._cut(answer)])
        await asyncio.sleep(0.05)  # the gateway relays what came, then the connection is reset
        self._reset(writer)

    async def _headers(self, answer: bytes, reader: Any, writer: asyncio.StreamWriter) -> None:
        await self._send(writer, answer[: answer.index(b"\r\n\r\n") + 4])
        await self._hold(reader)

    async def _stall(self, answer: bytes, reader: Any, writer: asyncio.StreamWriter) -> None:
        await self._send(writer, answer[: self._cut(answer)])
        await self._hold(reader)

    async def _pause(self, answer: bytes, reader: Any, writer: asyncio.StreamWriter) -> None:
        cut = self._cut(answer)
        await self._send(writer, answer[:cut])
        await asyncio.sleep(PAUSE)
        await self._send(writer, answer[cut:])

    async def _trickle(self, answer: bytes, reader: Any, writer: asyncio.StreamWriter) -> None:
        size = -(-len(answer) // TRICKLE_PIECES)
        for i in range(0, len(answer), size):
            if i:
                await asyncio.sleep(TRICKLE_GAP)
            await self._send(writer, answer[i : i + size])

    async def _split(self, answer: bytes, reader: Any, writer: asyncio.StreamWriter) -> None:
        for i in range(0, len(answer), 13):
            await self._send(writer, answer[i : i + 13])
            await asyncio.sleep(0.001)

    async def _badhead(self, answer: bytes, reader: Any, writer: asyncio.StreamWriter) -> None:
        end = answer.index(b"\r\n\r\n")
        head = re.sub(
            rb"(?im)^(x-request-id|request-id|retry-after):[^\r]*(?=\r)",
            lambda m: m[1] + b": " + BAD_HEADER_VALUE, answer[:end],
        )  # fmt: skip
        await self._send(writer, head + answer[end:])

    async def _cr(self, answer: bytes, reader: Any, writer: asyncio.StreamWriter) -> None:
        head, body = self._unchunk(answer)
        body = body.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
        await self._send(writer, head)
        for i in range(0, len(body), 13):
            await self._send(writer, self._chunk(body[i : i + 13]))
            await asyncio.sleep(0.001)
        await self._send(writer, b"0\r\n\r\n")

    async def _endless(self, answer: bytes, reader: Any, writer: asyncio.StreamWriter) -> None:
        head, body = self._unchunk(answer)
        cut = 0
        for _ in range(4):
            cut = body.index(b"\n\n", cut) + 2
        piece, sent = self._chunk(b"x" * 65536), 0
        try:
            await self._send(writer, head + self._chunk(body[:cut] + b"data: {"))
            while sent < ENDLESS_LIMIT:
                await self._send(writer, piece)
                sent += 65536
        except ConnectionError:
            self.endless.append("closed")
        else:
            self.endless.append("limit")

    async def _nooutput(self, answer: bytes, reader: Any, writer: asyncio.StreamWriter) -> None:
        def strip(value: Any) -> Any:
            if isinstance(value, dict):
                return {
                    k: strip(v) for k, v in value.items()
                    if k not in ("completion_tokens", "output_tokens")
                }  # fmt: skip
            return [strip(v) for v in value] if isinstance(value, list) else value

        end = answer.index(b"\r\n\r\n") + 4
        if b"transfer-encoding: chunked" in answer[:end].lower():  # a stream
            head, body = self._unchunk(answer)
            body = re.sub(
                rb"(?m)^data: (\{.*)$",
                lambda m: b"data: " + json.dumps(strip(json.loads(m[1]))).encode(),
                body,
            )
            await self._send(writer, head + self._chunk(body) + b"0\r\n\r\n")
            return
        body = json.dumps(strip(json.loads(answer[end:]))).encode()
        head = re.sub(
            rb"(?im)^content-length:[^\r]*", b"content-length: %d" % len(body), answer[:end]
        )
        await self._send(writer, head + body)

    _Fault = Callable[["FaultyLink", bytes, Any, asyncio.StreamWriter], Awaitable[None]]
    _faults: dict[str, _Fault] = {
        "ok": _ok, "rst": _rst, "headers": _headers, "stall": _stall, "pause": _pause,
        "trickle": _trickle, "split": _split, "badhead": _badhead, "cr": _cr,
        "endless": _endless, "nooutput": _nooutput,
    }  # fmt: skip


FAULTS = (
    "ok", "rst", "rst-early", "silent", "headers", "stall", "pause", "trickle", "split",
    "badhead", "garbage", "cr", "endless", "nooutput",
)  # fmt: skip
TIMED = ("silent", "headers", "stall", "pause")  # faults whose providers time out at TIMEOUT


def fault_providers(upstream_url: str, link_url: str) -> list[dict[str, Any]]:
    """The two normal providers, then ``{fault}-oai`` and ``{fault}-ant`` behind the link."""
    out: list[dict[str, Any]] = [
        {"name": "openai", "type": "openai", "base_url": f"{upstream_url}/v1",
         "api_key": UPSTREAM_OPENAI_KEY, "timeout": 2},
        {"name": "anthropic", "type": "anthropic", "base_url": upstream_url,
         "api_key": UPSTREAM_ANTHROPIC_KEY, "timeout": 2},
    ]  # fmt: skip
    for fault in FAULTS:
        timeout = {"trickle": TRICKLE_TIMEOUT}.get(fault, TIMEOUT if fault in TIMED else SLACK)
        out += [
            {"name": f"{fault}-oai", "type": "openai", "base_url": f"{link_url}/{fault}/v1",
             "api_key": UPSTREAM_OPENAI_KEY, "timeout": timeout},
            {"name": f"{fault}-ant", "type": "anthropic", "base_url": f"{link_url}/{fault}",
             "api_key": UPSTREAM_ANTHROPIC_KEY, "timeout": timeout},
        ]  # fmt: skip
    return out


MODELS = {
    "hang-then-ok": ["silent-oai/gpt-4o-mini", "openai/gpt-4o-mini"],
    "claude-hang-then-ok": ["silent-ant/claude-sonnet-4-5", "anthropic/claude-sonnet-4-5"],
    "reset-then-ok": ["rst-early-oai/gpt-4o-mini", "openai/gpt-4o-mini"],
    "claude-reset-then-ok": ["rst-early-ant/claude-sonnet-4-5", "anthropic/claude-sonnet-4-5"],
}


@pytest.fixture(scope="module")
def link(upstream: Any) -> Iterator[FaultyLink]:
    faulty = FaultyLink(upstream.server.port).start()
    yield faulty
    faulty.stop()


@pytest.fixture(scope="module")
def gw(
    upstream: Any, link: FaultyLink, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    """One gateway for the module. The circuit breaker is out of the way: every test here
    fails the same few targets on purpose."""
    settings = gateway_settings(
        tmp_path_factory.mktemp("faults"), upstream.url,
        providers=fault_providers(upstream.url, link.url), models=MODELS,
        circuit_breaker={"failure_threshold": 1000},
    )  # fmt: skip
    gateway = Gateway(settings)
    server = ServerThread(gateway).start()
    yield RunningGateway(server, gateway)
    server.stop()


@pytest.fixture(autouse=True)
def still_serving(gw: RunningGateway, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """After every fault: a normal request in each family is answered, no request so far got
    the gateway's own 500 (a provider's 500 is relayed), and the gateway logged no unexpected
    error (a traceback)."""
    caplog.set_level(logging.ERROR, logger="gatewatch")
    yield
    r = oai(gw, "openai").chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MSG
    )
    assert r.http_response.status_code == 200
    assert r.parse().choices[0].message.content == ANSWER
    m = ant(gw, "anthropic").messages.with_raw_response.create(
        model="claude-sonnet-4-5", max_tokens=64, messages=MSG
    )
    assert m.http_response.status_code == 200
    assert [r["id"] for r in gw.records(status_code=500) if r["error_type"] == "internal"] == []
    errors = [r for r in caplog.records if r.name.startswith("gatewatch")]
    assert not errors, [r.getMessage() for r in errors]


def oai(gw: RunningGateway, via: str | None = None) -> openai.OpenAI:
    prefix = f"/{via}" if via else ""
    return openai.OpenAI(
        base_url=f"{gw.url}{prefix}/v1", api_key=gw.admin_key, max_retries=0, timeout=10
    )


def ant(gw: RunningGateway, via: str | None = None) -> anthropic.Anthropic:
    prefix = f"/{via}" if via else ""
    return anthropic.Anthropic(
        base_url=f"{gw.url}{prefix}", api_key=gw.admin_key, max_retries=0, timeout=10
    )


def provider(fault: str, family: str) -> str:
    return f"{fault}-{'oai' if family == 'openai' else 'ant'}"


def rid(headers: Any) -> str:
    return headers["x-gatewatch-request-id"]  # type: ignore[no-any-return]


def attempts(rec: dict[str, Any]) -> list[tuple[str, int | None, str]]:
    return [(a["provider"], a["status_code"], a["reason"]) for a in rec["attempts"]]


def error_of(family: str, body: Any) -> dict[str, Any]:
    """The family's error object (OpenAI ``{"error": {...}}``, Anthropic ``{"type": "error",
    "error": {...}}``), checked for shape."""
    assert isinstance(body, dict), body
    if family == "anthropic":
        assert body["type"] == "error", body
    else:
        assert set(body) == {"error"}, body
        assert "code" in body["error"], body
    err = body["error"]
    assert isinstance(err["type"], str) and err["type"], body
    assert isinstance(err["message"], str) and err["message"], body
    return err  # type: ignore[no-any-return]


@dataclass
class Streamed:
    text: str  # the text received
    failure: Exception | None  # what the SDK raised, if the stream did not end cleanly
    headers: Any


def stream_text(family: str, gw: RunningGateway, via: str | None, model: str) -> Streamed:
    """Stream through the SDK, collecting text until the stream ends or fails."""
    text = ""
    failure: Exception | None = None
    if family == "openai":
        raw = oai(gw, via).chat.completions.with_raw_response.create(
            model=model, messages=MSG, stream=True
        )
        try:
            for chunk in raw.parse():
                text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
        except openai.APIError as exc:
            failure = exc
        return Streamed(text, failure, raw.headers)
    with ant(gw, via).messages.stream(model=model, max_tokens=64, messages=MSG) as s:
        try:
            for piece in s.text_stream:
                text += piece
        except anthropic.APIError as exc:
            failure = exc
        return Streamed(text, failure, s.response.headers)


def blocking(family: str, gw: RunningGateway, via: str, model: str) -> httpx.Response:
    """A non-streamed request through the SDK; the HTTP response whatever its status."""
    try:
        if family == "openai":
            raw = oai(gw, via).chat.completions.with_raw_response.create(model=model, messages=MSG)
        else:
            raw = ant(gw, via).messages.with_raw_response.create(
                model=model, max_tokens=64, messages=MSG
            )
        return raw.http_response  # type: ignore[no-any-return]
    except (openai.APIStatusError, anthropic.APIStatusError) as exc:
        return exc.response


def model_for(family: str) -> str:
    return "gpt-4o-mini" if family == "openai" else "claude-sonnet-4-5"


# ---- 1. the connection is reset mid-answer ----------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_reset_mid_stream_ends_with_an_error_event_and_keeps_the_tokens_seen(gw, family):
    got = stream_text(family, gw, provider("rst", family), model_for(family))
    text = got.text
    assert text and ANSWER.startswith(text) and text != ANSWER  # a part, then the break
    assert got.failure is not None, "the stream ended as if it were complete"
    assert "broke the stream" in str(got.failure)
    rec = gw.record(rid(got.headers))
    assert (rec["status"], rec["status_code"]) == ("error", 200)
    assert rec["error_type"] == "upstream_stream_broken"
    assert "broke the stream" in rec["error_message"]
    assert attempts(rec) == [(provider("rst", family), 200, "stream_broken")]
    if family == "openai":  # an OpenAI stream reports usage at its end: none was seen
        assert (rec["input_tokens"], rec["output_tokens"], rec["cost_usd"]) == (None, None, None)
        assert rec["response_body"]["choices"][0]["message"]["content"] == text
    else:  # Anthropic's message_start carries the input tokens (and 1 output token)
        assert (rec["input_tokens"], rec["output_tokens"]) == (INPUT_TOKENS, 1)
        assert rec["cost_usd"] is not None and rec["cost_usd"] > 0
        assert rec["response_body"]["content"][0]["text"] == text


@pytest.mark.parametrize("family", FAMILIES)
def test_reset_mid_blocking_answer_is_502_in_the_family_shape(gw, family):
    resp = blocking(family, gw, provider("rst", family), model_for(family))
    assert resp.status_code == 502
    err = error_of(family, resp.json())
    assert "rst-" in err["message"]
    rec = gw.record(rid(resp.headers))
    assert (rec["status"], rec["status_code"], rec["error_type"]) == (
        "error", 502, "upstream_unavailable"
    )  # fmt: skip
    assert attempts(rec) == [(provider("rst", family), 200, "connect_error")]
    assert rec["cost_usd"] is None


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_reset_before_any_answer_fails_over(gw, family, stream):
    alias = "reset-then-ok" if family == "openai" else "claude-reset-then-ok"
    if stream:
        got = stream_text(family, gw, None, alias)
        assert (got.text, got.failure) == (ANSWER, None)
        headers = got.headers
    else:
        resp = blocking(family, gw, None, alias)
        assert resp.status_code == 200
        headers = resp.headers
    rec = gw.record(rid(headers))
    assert rec["status"] == "ok"
    first = provider("rst-early", family)
    assert attempts(rec) == [(first, None, "connect_error"), (family, 200, "ok")]
    assert (rec["input_tokens"], rec["output_tokens"]) == (INPUT_TOKENS, OUTPUT_TOKENS)


# ---- 2. slow but steady vs stalled: the timeout is a silence, not a deadline, for streams ------


@pytest.mark.parametrize("family", FAMILIES)
def test_a_slow_but_steady_stream_is_never_cut(gw, family):
    started = time.monotonic()
    got = stream_text(family, gw, provider("trickle", family), model_for(family))
    elapsed = time.monotonic() - started
    assert (got.text, got.failure) == (ANSWER, None)
    assert elapsed > 2 * TRICKLE_TIMEOUT  # far longer than the timeout, in pieces closer than it
    rec = gw.record(rid(got.headers))
    assert (rec["status"], rec["status_code"], rec["error_type"]) == ("ok", 200, None)
    assert (rec["input_tokens"], rec["output_tokens"]) == (INPUT_TOKENS, OUTPUT_TOKENS)
    assert attempts(rec) == [(provider("trickle", family), 200, "ok")]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_blocking_answer_is_bounded_by_the_timeout_as_a_whole(gw, family):
    # Non-streamed: the timeout is a deadline for the whole answer, even one that keeps coming.
    started = time.monotonic()
    resp = blocking(family, gw, provider("trickle", family), model_for(family))
    assert time.monotonic() - started < TRICKLE_TIMEOUT + 1.5
    assert resp.status_code == 504
    message = error_of(family, resp.json())["message"]
    assert f"timed out (no complete answer within {TRICKLE_TIMEOUT}s)" in message
    rec = gw.record(rid(resp.headers))
    assert (rec["status"], rec["status_code"], rec["error_type"]) == (
        "error", 504, "upstream_timeout"
    )  # fmt: skip
    assert attempts(rec) == [(provider("trickle", family), 200, "timeout")]


@pytest.mark.parametrize("fault", ["pause", "stall"])
@pytest.mark.parametrize("family", FAMILIES)
def test_a_stream_that_falls_silent_is_cut_at_the_timeout(gw, link, family, fault):
    # ``pause``: the provider would go on after 4x the timeout; ``stall``: it never would.
    started = time.monotonic()
    got = stream_text(family, gw, provider(fault, family), model_for(family))
    elapsed = time.monotonic() - started
    assert TIMEOUT <= elapsed < TIMEOUT + 1.5  # cut at the timeout, not at the end of a pause
    text, failure = got.text, got.failure
    assert text and ANSWER.startswith(text) and text != ANSWER
    assert failure is not None and "stalled" in str(failure)
    if family == "openai":
        assert isinstance(failure, openai.APIError)
        assert failure.body["code"] == "upstream_timeout"  # type: ignore[index]
    else:
        assert isinstance(failure, anthropic.APIStatusError)
        assert failure.body["error"]["type"] == "timeout_error"  # type: ignore[index]
    rec = gw.record(rid(got.headers))
    assert (rec["status"], rec["status_code"], rec["error_type"]) == (
        "error", 200, "upstream_timeout"
    )  # fmt: skip
    assert f"no data for {TIMEOUT}s" in rec["error_message"]
    assert attempts(rec) == [(provider(fault, family), 200, "timeout")]
    assert rec["ttft_ms"] is not None and rec["ttft_ms"] < elapsed * 1000
    if family == "anthropic":
        assert rec["input_tokens"] == INPUT_TOKENS
    wait_until(lambda: link.held == 0)  # the gateway let go of the upstream connection
    assert link.held_to_the_limit == 0


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_headers_then_silence_is_504_before_the_first_byte(gw, link, family, stream):
    started = time.monotonic()
    resp = raw_request(gw, family, provider("headers", family), model_for(family), stream)
    assert TIMEOUT <= time.monotonic() - started < TIMEOUT + 1.5
    assert resp.status_code == 504
    err = error_of(family, resp.json())
    assert err["type"] == "timeout_error"
    assert "timed out" in err["message"]
    rec = gw.record(rid(resp.headers))
    assert (rec["status"], rec["status_code"], rec["error_type"]) == (
        "error", 504, "upstream_timeout"
    )  # fmt: skip
    assert attempts(rec) == [(provider("headers", family), 200, "timeout")]
    wait_until(lambda: link.held == 0)


@pytest.mark.parametrize("family", FAMILIES)
def test_an_event_that_never_ends_is_cut_at_the_limit(gw, link, monkeypatch, family):
    # ``endless`` sends 4 events, then one line that never ends: the gateway holds at most
    # ``max_event_bytes`` of it (lowered here to 1 MiB), then ends the stream with an error
    # event and closes the upstream connection.
    monkeypatch.setattr(gw.gateway.proxy, "max_event_bytes", 1024 * 1024)
    before = len(link.endless)
    got = stream_text(family, gw, provider("endless", family), model_for(family))
    assert got.text and ANSWER.startswith(got.text) and got.text != ANSWER  # the 4 events came
    message = f"{provider('endless', family)} broke the stream: more than 1 MiB without the end"
    assert got.failure is not None and message in str(got.failure)
    rec = gw.record(rid(got.headers))
    assert (rec["status"], rec["status_code"], rec["error_type"]) == (
        "error", 200, "upstream_stream_broken"
    )  # fmt: skip
    assert rec["error_message"] == f"{message} of an SSE event"
    assert attempts(rec) == [(provider("endless", family), 200, "stream_broken")]
    wait_until(lambda: len(link.endless) > before)
    assert link.endless[-1] == "closed"  # by the gateway, long before ENDLESS_LIMIT


@pytest.mark.parametrize("fault", ["stall", "rst"])
@pytest.mark.parametrize("family", FAMILIES)
def test_streams_that_fail_after_their_first_byte_open_the_circuit(
    upstream, link, tmp_path, family, fault
):
    # §C3: a stream that stalls or breaks after it started cannot fail over any more, but it
    # is a failure of its target: after failure_threshold of them the circuit opens, and the
    # next requests skip the target (failover) or are refused (its only route).
    target, model = provider(fault, family), model_for(family)
    settings = gateway_settings(
        tmp_path, upstream.url, providers=fault_providers(upstream.url, link.url),
        models={"flaky": [f"{target}/{model}", f"{family}/{model}"]},
        circuit_breaker={"failure_threshold": 2, "cooldown": 60},
    )  # fmt: skip
    gateway = Gateway(settings)
    own = RunningGateway(ServerThread(gateway).start(), gateway)
    try:
        for _ in range(2):
            got = stream_text(family, own, None, "flaky")
            assert got.failure is not None and got.text != ANSWER  # cut after its first byte
            reason = "timeout" if fault == "stall" else "stream_broken"
            assert attempts(own.record(rid(got.headers))) == [(target, 200, reason)]
        with own.api() as api:
            states = {t["target"]: t for t in api.get("/api/v1/providers").json()["targets"]}
        assert states[f"{target}/{model}"]["state"] == "open"
        assert states[f"{target}/{model}"]["consecutive_failures"] == 2
        got = stream_text(family, own, None, "flaky")  # the open target is skipped
        assert (got.text, got.failure) == (ANSWER, None)
        assert got.headers["x-gatewatch-attempts"] == "2"
        assert attempts(own.record(rid(got.headers))) == [
            (target, None, "circuit_open"), (family, 200, "ok")
        ]  # fmt: skip
        resp = raw_request(own, family, target, model, True)  # its only route: refused
        assert resp.status_code == 503
        assert 0 < int(resp.headers["retry-after"]) <= 60
        assert "is failing and paused" in error_of(family, resp.json())["message"]
        assert own.record(rid(resp.headers))["error_type"] == "circuit_open"
    finally:
        own.server.stop()


# ---- 3. an upstream that never answers --------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_an_upstream_that_never_answers_is_504_within_the_timeout(gw, link, family, stream):
    started = time.monotonic()
    resp = raw_request(gw, family, provider("silent", family), model_for(family), stream)
    assert TIMEOUT <= time.monotonic() - started < TIMEOUT + 1.5
    assert resp.status_code == 504
    err = error_of(family, resp.json())
    assert err["type"] == "timeout_error"
    limit = f"no data for {TIMEOUT}s" if stream else f"no complete answer within {TIMEOUT}s"
    assert limit in err["message"]
    assert resp.headers["x-gatewatch-attempts"] == "1"
    rec = gw.record(rid(resp.headers))
    assert (rec["status"], rec["status_code"], rec["error_type"]) == (
        "error", 504, "upstream_timeout"
    )  # fmt: skip
    assert rec["stream"] is stream
    assert attempts(rec) == [(provider("silent", family), None, "timeout")]
    assert (rec["input_tokens"], rec["cost_usd"]) == (None, None)
    wait_until(lambda: link.held == 0)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_an_upstream_that_never_answers_fails_over_to_the_next_target(gw, family, stream):
    alias = "hang-then-ok" if family == "openai" else "claude-hang-then-ok"
    started = time.monotonic()
    if stream:
        got = stream_text(family, gw, None, alias)
        assert (got.text, got.failure) == (ANSWER, None)
        headers = got.headers
    else:
        resp = blocking(family, gw, None, alias)
        assert resp.status_code == 200
        headers = resp.headers
    assert time.monotonic() - started < TIMEOUT + 1.5
    assert headers["x-gatewatch-attempts"] == "2"
    assert headers["x-gatewatch-provider"] == family
    rec = gw.record(rid(headers))
    assert rec["status"] == "ok"
    assert attempts(rec) == [(provider("silent", family), None, "timeout"), (family, 200, "ok")]
    assert rec["attempts"][0]["duration_ms"] >= TIMEOUT * 1000
    assert (rec["input_tokens"], rec["output_tokens"]) == (INPUT_TOKENS, OUTPUT_TOKENS)


# ---- 5. garbled streams -----------------------------------------------------------------------


def sse_events(raw: bytes) -> list[tuple[str | None, str]]:
    """(event, data) of each event, read the way the SSE spec reads them."""
    out = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        event, data = None, []
        for line in block.decode().split("\n"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
        if event is not None or data:
            out.append((event, "\n".join(data)))
    return out


@pytest.mark.parametrize("include_usage", [False, True])
def test_a_garbled_openai_stream_cut_at_odd_bytes_is_relayed_and_read(gw, include_usage):
    body: dict[str, Any] = {"model": "gpt-4o-mini-garbled", "messages": MSG, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    with httpx.Client(timeout=10) as http:
        resp = http.post(
            f"{gw.url}/split-oai/v1/chat/completions", json=body,
            headers={"authorization": f"Bearer {gw.admin_key}"},
        )  # fmt: skip
    assert resp.status_code == 200
    assert b"\r\n" in resp.content  # relayed as the provider wrote it
    events = sse_events(resp.content)
    assert ("simulator.unknown", '{"type": "simulator.unknown"}') in events
    assert (None, "this data line is not JSON") in events
    assert events[-1] == (None, "[DONE]")
    chunks = [json.loads(d) for e, d in events if e is None and d.startswith("{")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == ANSWER
    usage_chunks = [c for c in chunks if c.get("usage")]
    assert len(usage_chunks) == (1 if include_usage else 0)  # the added one is still stripped
    rec = gw.record(rid(resp.headers))
    assert (rec["status"], rec["error_type"]) == ("ok", None)
    assert (rec["input_tokens"], rec["output_tokens"]) == (INPUT_TOKENS, OUTPUT_TOKENS)
    assert rec["response_body"]["choices"][0]["message"]["content"] == ANSWER


def test_a_garbled_anthropic_stream_cut_at_odd_bytes_works_with_the_sdk(gw):
    with ant(gw, "split-ant").messages.stream(
        model="claude-sonnet-4-5-garbled", max_tokens=64, messages=MSG
    ) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
        headers = s.response.headers
    assert text == ANSWER
    assert (final.usage.input_tokens, final.usage.output_tokens) == (INPUT_TOKENS, OUTPUT_TOKENS)
    rec = gw.record(rid(headers))
    assert (rec["status"], rec["error_type"]) == ("ok", None)
    assert (rec["input_tokens"], rec["output_tokens"]) == (INPUT_TOKENS, OUTPUT_TOKENS)
    assert rec["response_body"]["content"][0]["text"] == ANSWER


@pytest.mark.parametrize("family", FAMILIES)
def test_a_stream_cut_at_odd_bytes_works_with_the_sdk(gw, family):
    got = stream_text(family, gw, provider("split", family), model_for(family))
    assert (got.text, got.failure) == (ANSWER, None)
    rec = gw.record(rid(got.headers))
    assert rec["status"] == "ok"
    assert (rec["input_tokens"], rec["output_tokens"]) == (INPUT_TOKENS, OUTPUT_TOKENS)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_stream_with_bare_cr_line_ends_is_relayed_and_read(gw, family):
    # The SSE spec allows CR, LF and CRLF line ends; ``cr`` ends every line in a bare CR.
    got = stream_text(family, gw, provider("cr", family), model_for(family))
    assert (got.text, got.failure) == (ANSWER, None)
    rec = gw.record(rid(got.headers))
    assert (rec["status"], rec["error_type"]) == ("ok", None)
    assert (rec["input_tokens"], rec["output_tokens"]) == (INPUT_TOKENS, OUTPUT_TOKENS)
    assert attempts(rec) == [(provider("cr", family), 200, "ok")]
    resp = raw_request(gw, family, provider("cr", family), model_for(family), True)
    assert b"\r\r" in resp.content and b"\n" not in resp.content  # relayed as it came


# ---- 6. answers without usage -----------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_an_answer_without_usage_is_recorded_with_null_tokens_and_cost(gw, family):
    # With httpx: the anthropic SDK cannot read a stream without usage (it is required there).
    for stream in (False, True):
        resp = raw_request(gw, family, family, model_for(family) + "-nousage", stream)
        assert resp.status_code == 200
        assert '"usage"' not in resp.text
        if stream:
            last = (None, "[DONE]") if family == "openai" else ("message_stop", ANY)
            assert sse_events(resp.content)[-1] == last
        else:
            assert "x-gatewatch-cost-usd" not in resp.headers  # no cost, not a made-up one
        rec = gw.record(rid(resp.headers))
        assert (rec["status"], rec["status_code"], rec["error_type"]) == ("ok", 200, None)
        assert (rec["input_tokens"], rec["output_tokens"], rec["cost_usd"]) == (None, None, None)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_an_output_count_left_out_is_null_and_only_the_input_is_priced(gw, family, stream):
    # §R: counts follow the provider's report; one it left out is null, never a made-up 0. The
    # cost prices what was reported (the input), so it is never above the real one.
    resp = raw_request(gw, family, provider("nooutput", family), model_for(family), stream)
    assert resp.status_code == 200
    rec = gw.record(rid(resp.headers))
    assert (rec["status"], rec["error_type"]) == ("ok", None)
    assert (rec["input_tokens"], rec["output_tokens"]) == (INPUT_TOKENS, None)
    settings = next(p for p in gw.gateway.settings.providers if p.name == family)
    known = Usage(INPUT_TOKENS, None, 0, 0, 0)
    input_only = PriceBook({}).cost(settings, rec["model"], known, model_for(family))
    assert input_only is not None and input_only > 0
    assert rec["cost_usd"] == pytest.approx(input_only)
    if not stream:
        assert float(resp.headers["x-gatewatch-cost-usd"]) == pytest.approx(input_only)


# ---- 7. upstream errors that are not JSON -----------------------------------------------------


NON_JSON_ERRORS = [
    ("error-html-502", 502, "an HTML page: 502 Bad Gateway"),
    ("error-empty-500", 500, "an empty body"),
    ("error-text-429", 429, "Too Many Requests"),
]


@pytest.mark.parametrize(("marker", "status", "says"), NON_JSON_ERRORS)
@pytest.mark.parametrize("family", FAMILIES)
def test_a_non_json_upstream_error_reaches_the_client_in_its_shape(
    gw, family, marker, status, says
):
    for stream in (False, True):
        resp = raw_request(gw, family, family, f"{model_for(family)}-{marker}", stream)
        assert resp.status_code == status
        assert resp.headers["content-type"].startswith("application/json")
        err = error_of(family, resp.json())
        assert err["message"].startswith(f"{family} answered {status} with ")
        assert says in err["message"]
        assert "<" not in err["message"]  # no markup
        if status == 429:
            assert resp.headers["retry-after"] == "7"
            assert err["type"] == "rate_limit_error"
        rec = gw.record(rid(resp.headers))
        assert (rec["status"], rec["status_code"]) == ("error", status)
        assert rec["error_type"] == ("rate_limited" if status == 429 else "upstream_error")
        assert rec["error_message"] == err["message"]
        reason = "rate_limited" if status == 429 else "upstream_5xx"
        assert attempts(rec) == [(family, status, reason)]


@pytest.mark.parametrize("family", FAMILIES)
def test_the_sdk_sees_a_non_json_429_as_a_rate_limit_with_its_retry_after(gw, family):
    sdk = openai if family == "openai" else anthropic
    with pytest.raises(sdk.RateLimitError) as caught:  # type: ignore[attr-defined]
        if family == "openai":
            oai(gw, "openai").chat.completions.create(
                model="gpt-4o-mini-error-text-429", messages=MSG
            )
        else:
            ant(gw, "anthropic").messages.create(
                model="claude-sonnet-4-5-error-text-429", max_tokens=64, messages=MSG
            )
    assert "Too Many Requests" in str(caught.value)
    assert caught.value.response.headers["retry-after"] == "7"


# ---- answers that are not quite HTTP ----------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_odd_bytes_in_relayed_headers_are_not_a_500(gw, family):
    # The provider's request id and retry-after are relayed; a control byte in them would make
    # the server refuse the whole response, and bytes outside Latin-1 made the gateway crash.
    for model, status in ((model_for(family), 200), (f"{model_for(family)}-error-429", 429)):
        for stream in (False, True):
            resp = raw_request(gw, family, provider("badhead", family), model, stream)
            assert resp.status_code == status
            raw = dict(resp.headers.raw)  # as sent: the control byte became "?", no more
            assert raw[b"x-request-id" if family == "openai" else b"request-id"] == (
                b"caf\xc3\xa9 ?\xff"
            )
            if status == 429:
                assert raw[b"retry-after"] == b"caf\xc3\xa9 ?\xff"
            rec = gw.record(rid(resp.headers))
            assert rec["status_code"] == status


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_an_answer_that_is_not_http_is_502(gw, family, stream):
    resp = raw_request(gw, family, provider("garbage", family), model_for(family), stream)
    assert resp.status_code == 502
    err = error_of(family, resp.json())
    assert f"{provider('garbage', family)} sent an invalid HTTP answer" in err["message"]
    rec = gw.record(rid(resp.headers))
    assert (rec["status"], rec["status_code"], rec["error_type"]) == (
        "error", 502, "upstream_unavailable"
    )  # fmt: skip
    assert attempts(rec) == [(provider("garbage", family), None, "connect_error")]


# ---- helpers ----------------------------------------------------------------------------------


def raw_request(
    gw: RunningGateway, family: str, via: str, model: str, stream: bool
) -> httpx.Response:
    """One request with httpx (the SDKs would hide a 504 body behind their exceptions)."""
    if family == "openai":
        path, body = "/v1/chat/completions", {"model": model, "messages": MSG}
    else:
        path, body = "/v1/messages", {"model": model, "max_tokens": 64, "messages": MSG}
    if stream:
        body["stream"] = True
    headers = {"authorization": f"Bearer {gw.admin_key}"}
    with httpx.Client(timeout=10) as http:
        return http.post(f"{gw.url}/{via}{path}", json=body, headers=headers)


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)

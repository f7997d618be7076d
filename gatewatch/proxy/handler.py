"""The proxy (§P): authenticate, route, forward with failover, relay, and record every request.

A plain ASGI callable: the request path does no disk or database work; the record goes to the
writer's queue when the response ends."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import MutableMapping
from typing import Any, Literal

import aiohttp
import orjson

from gatewatch.attribution import apply_attribution
from gatewatch.auth import KeyCache, secret_from_headers
from gatewatch.controls import Controls, Ticket
from gatewatch.controls.breaker import CircuitBreakers
from gatewatch.metrics import Metrics
from gatewatch.pricing import PriceBook, Usage
from gatewatch.proxy.disconnect import ClientGone, DisconnectWatch, Receive, Send
from gatewatch.proxy.errors import (
    Family,
    GatewayError,
    error_body,
    non_json_error,
    sse_error_event,
    upstream_error_message,
)
from gatewatch.proxy.routing import Endpoint, Router, Target, upstream_url
from gatewatch.proxy.sse import MAX_EVENT_BYTES, EventTooLarge, SSEParser
from gatewatch.proxy.usage import last_user_prompt, read_blocking, stream_reader
from gatewatch.records import Attempt, Record, new_id
from gatewatch.settings import Settings
from gatewatch.store.base import Identity
from gatewatch.store.writer import RecordWriter
from gatewatch.tracing import Tracing

__all__ = ["ProxyHandler"]

log = logging.getLogger("gatewatch.proxy")

ASGIScope = MutableMapping[str, Any]

_JSON = b"application/json"
_FORWARD_HEADERS = (b"anthropic-version", b"anthropic-beta", b"openai-beta")
_RELAY_HEADERS = {b"retry-after", b"x-request-id", b"request-id", b"openai-processing-ms"}
# A header value may not hold control bytes (the server refuses the whole response): in a model
# name, the client's or the provider's text, they become "?".
_HEADER_SAFE = bytes(b if b == 9 or (b >= 0x20 and b != 0x7F) else 0x3F for b in range(256))


# What an answer relayed to the client says about its target, for the circuit breaker: "ok" it
# answered; "refused" a 4xx about the request itself (says nothing about the target); "failed" a
# stream that broke, stalled or went over the event limit after its first byte (a failure,
# though too late to fail over).
_Relayed = Literal["ok", "refused", "failed"]


class _UpstreamFailed(Exception):
    """An attempt that failover may retry elsewhere."""

    def __init__(self, reason: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status


def _timed_out(target: Target, stream: bool, exc: BaseException) -> _UpstreamFailed:
    """Which limit struck: connecting, or the provider's ``timeout`` (for a stream the longest
    silence, for a non-streamed answer the deadline of the whole attempt)."""
    p = target.provider
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        what = f"no connection within {p.connect_timeout}s"
    elif stream:
        what = f"no data for {p.timeout}s"
    else:
        what = f"no complete answer within {p.timeout}s"
    return _UpstreamFailed("timeout", f"{p.name} timed out ({what})")


def _encodes(value: Any) -> bool:
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError:
        return False
    return True


def _status_of(code: int) -> str:
    return "ok" if code < 400 else "error"


class ProxyHandler:
    def __init__(
        self,
        settings: Settings,
        keys: KeyCache,
        writer: RecordWriter,
        metrics: Metrics,
        prices: PriceBook,
        controls: Controls,
        breakers: CircuitBreakers,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        self.controls = controls
        self.breakers = breakers
        self.tracing = tracing  # None: OpenTelemetry export is off
        self.router = Router(settings)
        self.keys = keys
        self.writer = writer
        self.metrics = metrics
        self.prices = prices
        self.max_body = settings.limits.max_body_bytes
        self.max_event_bytes = MAX_EVENT_BYTES  # the most an SSE event may take (docs/proxy.md)
        self.keep_content = settings.content == "full"
        self.session: aiohttp.ClientSession | None = None
        self._timeouts = {
            p.name: (
                aiohttp.ClientTimeout(total=p.timeout, sock_connect=p.connect_timeout),
                aiohttp.ClientTimeout(sock_connect=p.connect_timeout, sock_read=p.timeout),
            )
            for p in settings.providers
        }

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60)
        self.session = aiohttp.ClientSession(
            connector=connector, auto_decompress=True, skip_auto_headers=("User-Agent",)
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    # ---- entry -----------------------------------------------------------------------------

    async def __call__(
        self, scope: ASGIScope, receive: Receive, send: Send, endpoint: Endpoint, pname: str | None
    ) -> None:
        started = time.time()
        t0 = time.perf_counter()
        headers = dict(scope["headers"])
        rec = Record(id=new_id(started), started=started, endpoint=endpoint.path)
        client = scope.get("client")
        if client:
            rec.source_ip = client[0]
        family = endpoint.family
        if self.tracing is not None:
            self.tracing.begin(rec, headers)
        self.metrics.inflight.inc()
        upstream_time = [0.0]
        watch: DisconnectWatch | None = None
        ticket: Ticket | None = None
        reply = send  # once the provider is being waited on: stops the watch before the end
        try:
            if scope["method"] != endpoint.method:
                raise GatewayError(
                    405, f"{endpoint.path} accepts {endpoint.method} only", "method_not_allowed"
                )
            ident = await self._authenticate(headers)
            rec.api_key_id, rec.api_key_name = ident.key_id, ident.key_name
            rec.user_id, rec.user = ident.user_id, ident.user_name
            rec.org_id, rec.org = ident.org_id, ident.org_name
            if self.writer.refusing:  # spool.on_full: refuse (an audit trail with no holes)
                raise GatewayError(
                    503,
                    "the gateway cannot record requests right now (database down and record"
                    " spool full); try again later",
                    "records_unavailable",
                )
            body = await self._read_body(scope, receive, headers)
            if endpoint.kind == "models":
                apply_attribution(rec, headers, {})
                await self._models(rec, send, pname, headers, upstream_time)
                return
            payload = self._parse(body, endpoint)
            apply_attribution(rec, headers, payload)
            model = payload["model"]
            rec.model_requested = model
            rec.stream = payload.get("stream") is True
            if self.keep_content:
                rec.request_body = body
                rec.last_user_prompt = last_user_prompt(endpoint.kind, payload)
            targets = self.router.resolve(family, model, pname)
            first = targets[0]
            ticket = await self.controls.admit(
                ident, model, payload, len(body),
                lambda: self.prices.rates(first.provider, first.model),
            )  # fmt: skip
            watch = DisconnectWatch(receive)
            reply = watch.guard(send, ticket)
            await self._forward(
                rec, endpoint, targets, payload, body, headers, watch, reply, upstream_time
            )
        except GatewayError as err:
            await self._send_error(reply, rec, family, err)
        except ClientGone:
            self._client_gone(rec)
        except asyncio.CancelledError:
            if watch is None or not watch.absorb():
                raise
            self._client_gone(rec)
        except Exception as exc:  # never leave a request unanswered or unrecorded
            log.exception("unexpected error on %s", endpoint.path)
            internal = GatewayError(
                500, f"internal gateway error: {type(exc).__name__}", "internal"
            )
            try:
                await self._send_error(reply, rec, family, internal)
            except Exception:
                rec.status, rec.status_code = "error", 500
        finally:
            if watch is not None:
                watch.stop()
            if ticket is not None:  # charged before the record is even queued (§C1)
                tokens = (rec.input_tokens or 0) + (rec.output_tokens or 0)
                if not self.controls.settle_now(ticket, rec.cost_usd, tokens):
                    await self.controls.settle(ticket, rec.cost_usd, tokens)
            self._finish(rec, t0, upstream_time[0])
            self.metrics.inflight.dec()  # after the record is queued (tests wait on both)

    @staticmethod
    def _client_gone(rec: Record) -> None:
        rec.status, rec.status_code = "client_closed", 499
        rec.error_type, rec.error_message = "client_closed", "the client closed the connection"
        if rec.attempts and rec.attempts[-1].status_code is None:
            rec.attempts[-1].reason = "client_closed"

    # ---- steps -----------------------------------------------------------------------------

    async def _authenticate(self, headers: dict[bytes, bytes]) -> Identity:
        secret = secret_from_headers(headers)
        if secret is None:
            raise GatewayError(
                401,
                "missing gateway key: send it as 'Authorization: Bearer gw-…' or 'x-api-key'",
                "missing_api_key",
            )
        ident = await self.keys.lookup(secret)
        if ident is None:
            raise GatewayError(401, "invalid or revoked gateway key", "invalid_api_key")
        return ident

    async def _read_body(
        self, scope: ASGIScope, receive: Receive, headers: dict[bytes, bytes]
    ) -> bytes:
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise GatewayError(
                413,
                f"request body of {int(declared)} bytes is over the limit of {self.max_body}",
                "request_too_large",
            )
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise ClientGone()
            part = msg.get("body", b"")
            size += len(part)
            if size > self.max_body:
                raise GatewayError(
                    413,
                    f"request body is over the limit of {self.max_body} bytes",
                    "request_too_large",
                )
            chunks.append(part)
            if not msg.get("more_body"):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    @staticmethod
    def _parse(body: bytes, endpoint: Endpoint) -> dict[str, Any]:
        if not body.strip():
            raise GatewayError(400, "request body is empty; expected a JSON object", "invalid_json")
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise GatewayError(
                400, f"request body is not valid JSON: {exc}", "invalid_json"
            ) from None
        if not isinstance(payload, dict):
            raise GatewayError(400, "request body must be a JSON object", "invalid_json")
        for field in endpoint.requires:
            if field not in payload or payload[field] is None:
                raise GatewayError(400, f"missing required field '{field}'", "missing_field")
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            raise GatewayError(400, "'model' must be a non-empty string", "invalid_field")
        return payload

    def _upstream_headers(
        self, target: Target, headers: dict[bytes, bytes], rec: Record, attempt: Attempt
    ) -> dict[str, str]:
        p = target.provider
        out = {"Content-Type": "application/json"}
        key = p.api_key.get_secret_value() if p.api_key else ""
        if p.type == "anthropic":
            out["x-api-key"] = key
            out["anthropic-version"] = "2023-06-01"
        elif key:
            out["Authorization"] = f"Bearer {key}"
        for name in _FORWARD_HEADERS:
            value = headers.get(name)
            if value is not None:
                out[name.decode()] = value.decode("latin-1")
        out.update(p.headers)
        if self.tracing is not None:
            self.tracing.inject(rec, attempt, out)
        return out

    def _body_for(
        self, target: Target, payload: dict[str, Any], body: bytes, rec: Record, kind: str
    ) -> tuple[bytes, bool]:
        """The bytes to send upstream and whether the gateway added the usage chunk."""
        changed = False
        strip_usage = False
        if target.model != payload["model"]:
            payload = {**payload, "model": target.model}
            changed = True
        if rec.stream and kind == "chat":
            opts = payload.get("stream_options")
            if not (isinstance(opts, dict) and opts.get("include_usage")):
                payload = {
                    **payload,
                    "stream_options": {
                        **(opts if isinstance(opts, dict) else {}),
                        "include_usage": True,
                    },
                }
                changed = strip_usage = True
        if not changed:
            return body, strip_usage
        try:
            return orjson.dumps(payload), strip_usage
        except orjson.JSONEncodeError:  # orjson reads 1,024 levels but writes only 254
            deep = next((k for k, v in payload.items() if not _encodes(v)), "body")
            raise GatewayError(
                400,
                f"'{deep}' is nested too deeply to forward (JSON deeper than 254 levels)",
                "invalid_json",
            ) from None

    async def _forward(
        self,
        rec: Record,
        endpoint: Endpoint,
        targets: list[Target],
        payload: dict[str, Any],
        body: bytes,
        headers: dict[bytes, bytes],
        watch: DisconnectWatch,
        send: Send,
        upstream_time: list[float],
    ) -> None:
        assert self.session is not None
        breakers = self.breakers
        last: _UpstreamFailed | None = None
        last_response: tuple[int, bytes, list[tuple[bytes, bytes]]] | None = None
        skipped: list[str] = []
        for target in targets:
            key = target.key
            if not breakers.allow(key):  # §C3: an open target is skipped
                rec.attempts.append(
                    Attempt(target.provider.name, target.model, None, "circuit_open", 0.0)
                )
                skipped.append(key)
                continue
            verdict = False
            try:
                outcome = await self._attempt(
                    rec, endpoint, target, payload, body, headers, watch, send, upstream_time
                )
                ms = rec.attempts[-1].duration_ms
                if isinstance(outcome, _UpstreamFailed):
                    breakers.record_failure(key, ms)
                    verdict = True
                    last, last_response = outcome, None
                    continue
                if isinstance(outcome, tuple):  # 429 / 5xx: try the next target
                    breakers.record_failure(key, ms)
                    verdict = True
                    last, last_response = None, outcome
                    continue
                if outcome == "ok":
                    breakers.record_success(key, ms)
                elif outcome == "failed":
                    breakers.record_failure(key, ms)
                else:
                    breakers.release(key)
                verdict = True
                return
            finally:
                if not verdict:
                    breakers.release(key)
        if last is None and last_response is None:  # every target is open
            retry = max(1, int(breakers.retry_after(skipped) + 0.999))
            raise GatewayError(
                503,
                f"every target for {rec.model_requested!r} is failing and paused"
                f" ({', '.join(skipped)}); retry in {retry}s",
                "circuit_open",
                headers=[(b"retry-after", str(retry).encode())],
            )
        # every target failed
        if last_response is not None:
            status, content, extra = last_response
            if self.keep_content:
                rec.response_body = content
            unreadable = non_json_error(rec.attempts[-1].provider, status, content, extra)
            if unreadable is not None:
                raise unreadable
            rec.status_code, rec.status = status, "error"
            rec.error_type, rec.error_message = upstream_error_message(content)
            rec.error_type = rec.error_type or (
                "rate_limited" if status == 429 else "upstream_error"
            )
            await self._respond(send, rec, status, content, extra, rec.attempts[-1].model)
            return
        assert last is not None
        if last.reason == "timeout":
            raise GatewayError(504, f"upstream timeout: {last}", "upstream_timeout")
        raise GatewayError(502, f"upstream unavailable: {last}", "upstream_unavailable")

    async def _attempt(
        self,
        rec: Record,
        endpoint: Endpoint,
        target: Target,
        payload: dict[str, Any],
        body: bytes,
        headers: dict[bytes, bytes],
        watch: DisconnectWatch,
        send: Send,
        upstream_time: list[float],
    ) -> _UpstreamFailed | tuple[int, bytes, list[tuple[bytes, bytes]]] | _Relayed:
        """One try at one target. Returns a failure to fail over from (connection, timeout,
        or the provider's 429/5xx answer, not yet relayed), or what the answer relayed to the
        client says about the target (``_Relayed``)."""
        assert self.session is not None
        rec.provider = target.provider.name
        data, strip_usage = self._body_for(target, payload, body, rec, endpoint.kind)
        total_t, stream_t = self._timeouts[target.provider.name]
        a0 = time.perf_counter()
        attempt = Attempt(target.provider.name, target.model, None, "ok", 0.0)
        rec.attempts.append(attempt)
        failed: _UpstreamFailed
        try:
            resp = await self.session.post(
                upstream_url(target.provider, endpoint.path),
                data=data,
                headers=self._upstream_headers(target, headers, rec, attempt),
                timeout=stream_t if rec.stream else total_t,
            )
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            failed = _timed_out(target, rec.stream, exc)
        except aiohttp.ClientResponseError as exc:  # an answer that is not HTTP
            message = " ".join(str(exc.message).split())
            failed = _UpstreamFailed(
                "connect_error", f"{target.provider.name} sent an invalid HTTP answer: {message}"
            )
        except aiohttp.ClientError as exc:
            failed = _UpstreamFailed("connect_error", f"cannot reach {target.provider.name}: {exc}")
        else:
            attempt.status_code = resp.status
            try:
                if rec.stream and resp.status < 300 and resp.content_type == "text/event-stream":
                    served = await self._relay_stream(
                        rec,
                        endpoint,
                        target,
                        resp,
                        strip_usage,
                        watch,
                        send,
                        a0,
                        attempt,
                        upstream_time,
                    )
                    return "ok" if served else "failed"
                content = await resp.read()
            except _UpstreamFailed as exc:
                failed = exc
            except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
                failed = _timed_out(target, rec.stream, exc)
            except aiohttp.ClientError as exc:
                failed = _UpstreamFailed(
                    "connect_error", f"{target.provider.name} broke the connection: {exc}"
                )
            else:
                upstream_time[0] += time.perf_counter() - a0
                attempt.duration_ms = round((time.perf_counter() - a0) * 1000, 3)
                if resp.status == 429 or resp.status >= 500:
                    attempt.reason = "rate_limited" if resp.status == 429 else "upstream_5xx"
                    return resp.status, content, self._relayed(resp)
                if resp.status >= 400:
                    attempt.reason = "upstream_4xx"
                await self._send_blocking(rec, endpoint, target, resp, content, send)
                return "ok" if resp.status < 400 else "refused"
            finally:
                resp.release()
        upstream_time[0] += time.perf_counter() - a0
        attempt.duration_ms = round((time.perf_counter() - a0) * 1000, 3)
        attempt.reason = failed.reason
        return failed

    @staticmethod
    def _relayed(resp: aiohttp.ClientResponse) -> list[tuple[bytes, bytes]]:
        """The provider's headers worth relaying, as the bytes it sent (control bytes, which
        the server would refuse with the whole response, become "?")."""
        out = []
        for name, value in resp.raw_headers:
            if name.lower() in _RELAY_HEADERS:
                out.append((name.lower(), value.translate(_HEADER_SAFE)))
        return out

    def _headers(
        self, rec: Record, model: str | None, content_type: bytes
    ) -> list[tuple[bytes, bytes]]:
        return [
            (b"content-type", content_type),
            (b"x-gatewatch-request-id", rec.id.encode()),
            (b"x-gatewatch-provider", (rec.provider or "").encode()),
            (
                b"x-gatewatch-model",
                (model or "").encode("utf-8", "replace").translate(_HEADER_SAFE),
            ),
            (b"x-gatewatch-attempts", str(len(rec.attempts)).encode()),
        ]

    async def _respond(
        self,
        send: Send,
        rec: Record,
        status: int,
        content: bytes,
        extra: list[tuple[bytes, bytes]],
        model: str | None,
        content_type: bytes = _JSON,
    ) -> None:
        hdrs = self._headers(rec, model, content_type)
        hdrs.append((b"content-length", str(len(content)).encode()))
        if rec.cost_usd is not None:
            hdrs.append(
                (
                    b"x-gatewatch-cost-usd",
                    f"{rec.cost_usd:.10f}".rstrip("0").rstrip(".").encode() or b"0",
                )
            )
        hdrs.extend(extra)
        await send({"type": "http.response.start", "status": status, "headers": hdrs})
        await send({"type": "http.response.body", "body": content})

    async def _send_blocking(
        self,
        rec: Record,
        endpoint: Endpoint,
        target: Target,
        resp: aiohttp.ClientResponse,
        content: bytes,
        send: Send,
    ) -> None:
        rec.status_code = resp.status
        rec.status = _status_of(resp.status)
        if self.keep_content:
            rec.response_body = content
        if resp.status >= 400:
            unreadable = non_json_error(
                target.provider.name, resp.status, content, self._relayed(resp)
            )
            if unreadable is not None:
                raise unreadable
            rec.error_type, rec.error_message = upstream_error_message(content)
            rec.error_type = rec.error_type or "upstream_error"
        else:
            try:
                parsed: Any = orjson.loads(content)
            except orjson.JSONDecodeError:
                parsed = None
            model, usage, calls = read_blocking(endpoint.kind, parsed)
            if rec.trace is not None:
                rec.trace.answer = parsed
            rec.model = model or target.model
            rec.tool_calls = calls
            self._account(rec, target, usage)
        ctype = next((v for k, v in resp.raw_headers if k.lower() == b"content-type"), _JSON)
        await self._respond(
            send,
            rec,
            resp.status,
            content,
            self._relayed(resp),
            rec.model or target.model,
            ctype.translate(_HEADER_SAFE),
        )

    def _account(self, rec: Record, target: Target, usage: Usage) -> None:
        rec.input_tokens = usage.input_tokens
        rec.output_tokens = usage.output_tokens
        rec.cache_read_tokens = usage.cache_read_tokens
        rec.cache_write_tokens = usage.cache_write_tokens
        rec.reasoning_tokens = usage.reasoning_tokens
        rec.cost_usd = self.prices.cost(target.provider, rec.model, usage, target.model)

    async def _relay_stream(
        self,
        rec: Record,
        endpoint: Endpoint,
        target: Target,
        resp: aiohttp.ClientResponse,
        strip_usage: bool,
        watch: DisconnectWatch,
        send: Send,
        a0: float,
        attempt: Attempt,
        upstream_time: list[float],
    ) -> bool:
        """Relay a stream whose first chunk has come. False when the target failed it after
        that: it broke, stalled, ended early or sent an event over the limit."""
        parser = SSEParser(self.max_event_bytes)
        reader = stream_reader(endpoint.kind, strip_usage)
        broken: str | None = None

        def take(chunk: bytes) -> bytes:
            # Whole events only: the part of an event still on its way waits in the parser, so
            # a stream that breaks mid-event ends with the error event, not glued to half of one.
            nonlocal broken
            held = parser.pending_size
            try:
                events = parser.feed(chunk)
            except EventTooLarge as exc:  # the part of the event that came is dropped
                events, held = exc.events, 1
                broken = f"{target.provider.name} broke the stream: {exc}"
                resp.close()  # the rest is not read: let go of the upstream connection
            out = [ev.raw for ev in events if not reader.on_event(ev.event, ev.data)]
            if not held and not parser.pending_size and len(out) == len(events):
                return chunk  # the usual case: whole events, relayed as they came
            return b"".join(out)

        # The first chunk decides: failover is still possible until a byte reaches the client.
        try:
            first = await resp.content.readany()
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise _timed_out(target, True, exc) from None
        except aiohttp.ClientError as exc:
            raise _UpstreamFailed(
                "connect_error", f"{target.provider.name} broke the stream: {exc}"
            ) from None
        if not first:
            raise _UpstreamFailed("empty_stream", f"{target.provider.name} sent an empty stream")
        rec.ttft_ms = round((time.time() - rec.started) * 1000, 3)
        attempt.duration_ms = round((time.perf_counter() - a0) * 1000, 3)  # to the first chunk
        out = take(first)
        rec.status_code = resp.status
        rec.model = reader.model or target.model
        hdrs = self._headers(rec, rec.model, b"text/event-stream; charset=utf-8")
        hdrs.append((b"cache-control", b"no-cache"))
        hdrs.extend(self._relayed(resp))
        await send({"type": "http.response.start", "status": resp.status, "headers": hdrs})
        if out:
            await send({"type": "http.response.body", "body": out, "more_body": True})

        stalled = False
        try:
            if broken is None:
                async for chunk in resp.content.iter_any():
                    out = take(chunk)
                    if out:
                        await send({"type": "http.response.body", "body": out, "more_body": True})
                    if broken is not None:
                        break
                else:  # an event whose blank line ended the stream (with a CR)
                    out = b"".join(
                        ev.raw for ev in parser.end() if not reader.on_event(ev.event, ev.data)
                    )
                    if out:
                        await send({"type": "http.response.body", "body": out, "more_body": True})
        except asyncio.CancelledError:
            if not watch.absorb():
                raise
        except (TimeoutError, aiohttp.ServerTimeoutError):
            stalled = True
            broken = (
                f"{target.provider.name} stalled mid-stream"
                f" (no data for {target.provider.timeout}s)"
            )
        except (aiohttp.ClientError, OSError) as exc:
            broken = f"{target.provider.name} broke the stream: {exc or type(exc).__name__}"
        upstream_time[0] += time.perf_counter() - a0
        if reader.model:
            rec.model = reader.model
        served = True
        if watch.gone and not reader.done:  # the target was answering: not a failure of it
            self._client_gone(rec)
        elif broken is not None or (
            not reader.done
            and reader.error is None
            and endpoint.kind in ("chat", "messages", "responses")
        ):
            broken = broken or f"{target.provider.name} ended the stream before it was complete"
            served = False
            code = "upstream_timeout" if stalled else "upstream_stream_broken"
            attempt.reason = "timeout" if stalled else "stream_broken"
            rec.status, rec.error_type, rec.error_message = "error", code, broken
            try:
                err = GatewayError(504 if stalled else 502, broken, code)
                await send(
                    {
                        "type": "http.response.body",
                        "body": sse_error_event(endpoint.family, err),
                        "more_body": True,
                    }
                )
            except Exception:
                pass
        elif reader.error is not None:
            rec.status, rec.error_type, rec.error_message = "error", "upstream_error", reader.error
        else:
            rec.status = "ok"
        if not watch.gone:
            try:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except Exception:
                self._client_gone(rec)
        rec.tool_calls = reader.tool_calls()
        if rec.trace is not None:
            rec.trace.answer = reader
        self._account(rec, target, reader.usage)
        if self.keep_content:
            rec.response_body = reader.message()
        return served

    async def _models(
        self,
        rec: Record,
        send: Send,
        pname: str | None,
        headers: dict[bytes, bytes],
        upstream_time: list[float],
    ) -> None:
        aliases = self.router.aliases
        if pname is None and aliases is not None:
            now = int(time.time())
            data = [
                {"id": name, "object": "model", "created": now, "owned_by": t[0].provider.name}
                for name, t in sorted(aliases.items())
            ]
            content = orjson.dumps({"object": "list", "data": data})
            rec.status_code, rec.status = 200, "ok"
            await self._respond(send, rec, 200, content, [], None)
            return
        target = self.router.resolve("openai", "", pname)[0]
        rec.provider = target.provider.name
        assert self.session is not None
        a0 = time.perf_counter()
        attempt = Attempt(target.provider.name, "", None, "ok", 0.0)
        rec.attempts.append(attempt)
        try:
            async with self.session.get(
                upstream_url(target.provider, "/v1/models"),
                headers=self._upstream_headers(target, headers, rec, attempt),
                timeout=self._timeouts[target.provider.name][0],
            ) as resp:
                content = await resp.read()
                attempt.status_code = resp.status
        except (TimeoutError, aiohttp.ServerTimeoutError):
            attempt.reason = "timeout"
            raise GatewayError(
                504, f"upstream timeout: {target.provider.name}", "upstream_timeout"
            ) from None
        except aiohttp.ClientError as exc:
            attempt.reason = "connect_error"
            raise GatewayError(
                502, f"upstream unavailable: {exc}", "upstream_unavailable"
            ) from None
        finally:
            upstream_time[0] += time.perf_counter() - a0
            attempt.duration_ms = round((time.perf_counter() - a0) * 1000, 3)
        rec.status_code, rec.status = resp.status, _status_of(resp.status)
        await self._respond(send, rec, resp.status, content, [], None)

    async def _send_error(self, send: Send, rec: Record, family: Family, err: GatewayError) -> None:
        rec.status_code, rec.status = err.status, "error"
        rec.error_type, rec.error_message = err.code, err.message
        body = error_body(family, err)
        hdrs = self._headers(rec, rec.model, _JSON)
        hdrs.append((b"content-length", str(len(body)).encode()))
        hdrs.extend(err.headers)
        await send({"type": "http.response.start", "status": err.status, "headers": hdrs})
        await send({"type": "http.response.body", "body": body})

    def _finish(self, rec: Record, t0: float, upstream_seconds: float) -> None:
        elapsed = time.perf_counter() - t0
        rec.ended = rec.started + elapsed
        self.writer.submit(rec)
        if self.tracing is not None:
            self.tracing.finish(rec)
        self.metrics.observe_request(rec, elapsed, max(elapsed - upstream_seconds, 0.0))

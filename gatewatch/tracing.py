"""OpenTelemetry export (§O2): a GenAI span per request with a child span per upstream attempt,
and the ``gen_ai.client.token.usage`` / ``gen_ai.client.operation.duration`` histograms, sent
over OTLP/HTTP to the endpoint the standard ``OTEL_*`` variables name.

The proxy calls four methods, each a few microseconds: ``begin`` (continue the caller's W3C
``traceparent``), ``inject`` (the ``traceparent`` an upstream attempt carries: its parent is that
attempt's span), ``answered`` (keep the parsed answer for the response id and finish reasons) and
``finish`` (aggregate the metrics, encode the spans from the finished record into a bounded
queue). One background task sends the queue in batches; a full queue drops spans, an unreachable
endpoint costs one failed connection per batch. Nothing here can
block or fail a request. With no endpoint configured ``Tracing.from_environment`` answers None
and the proxy pays one ``is None`` test per hook."""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import gzip
import logging
import os
import random
import ssl
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from gatewatch import __version__, _otlp
from gatewatch._genai_content import content_attributes
from gatewatch._otel_config import OtelConfig, SignalConfig
from gatewatch.proxy.routing import ENDPOINTS, upstream_url
from gatewatch.records import Attempt, Record
from gatewatch.settings import ProviderSettings, Settings

__all__ = ["CONVENTIONS", "Trace", "Tracing"]

log = logging.getLogger("gatewatch.tracing")

CONVENTIONS = "OpenTelemetry semantic conventions for GenAI v1.41 (gen_ai_latest_experimental)"

# gen_ai.operation.name per endpoint kind; count_tokens and models are not inference calls and
# take custom values, as the conventions allow.
_OPERATIONS = {
    "chat": "chat",
    "responses": "chat",
    "messages": "chat",
    "embeddings": "embeddings",
    "count_tokens": "count_tokens",
    "models": "list_models",
}
# gen_ai.provider.name of an openai-compatible provider from its pricing_provider, where the
# conventions list the provider.
_WELL_KNOWN = {
    "openai": "openai",
    "anthropic": "anthropic",
    "azure": "azure.ai.openai",
    "deepseek": "deepseek",
    "groq": "groq",
    "mistral": "mistral_ai",
    "x-ai": "x_ai",
    "xai": "x_ai",
    "perplexity": "perplexity",
    "cohere": "cohere",
    "google": "gcp.gemini",
    "aws": "aws.bedrock",
}
# Bucket boundaries the conventions give for the two histograms.
_DURATION_BOUNDS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                    40.96, 81.92)  # fmt: skip
_TOKEN_BOUNDS = (1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0,
                 1048576.0, 4194304.0, 16777216.0, 67108864.0)  # fmt: skip
_CARDINALITY_LIMIT = 2000  # attribute sets per metric; more go to the overflow point
_OVERFLOW: tuple[Any, ...] = ("overflow",)
_CACHED = frozenset(("gatewatch.end_user", "gatewatch.workflow", "gen_ai.conversation.id"))
_RETRYABLE = {429, 502, 503, 504}


class Trace:
    """A request's trace context: the ids of its span and of its parent, and the flags."""

    __slots__ = ("answer", "flags", "parent_id", "remote", "span_id", "state", "trace_hex",
                 "trace_id")  # fmt: skip

    def __init__(
        self, trace_id: int, span_id: int, parent_id: int, flags: int, state: str | None
    ) -> None:
        self.trace_id = trace_id
        self.trace_hex = f"{trace_id:032x}"
        self.span_id = span_id
        self.parent_id = parent_id
        self.remote = parent_id != 0
        self.flags = flags
        self.state = state
        self.answer: Any = None  # the parsed blocking body or the stream reader


def parse_traceparent(value: bytes) -> tuple[int, int, int] | None:
    """W3C ``traceparent`` → (trace id, parent span id, flags), or None when it is not valid
    (then the request starts a new trace, as the specification says)."""
    text = value.decode("latin-1").strip().lower()
    if len(text) < 55 or text[2] != "-" or text[35] != "-" or text[52] != "-":
        return None
    version = text[:2]
    if version == "ff" or (version == "00" and len(text) != 55):
        return None
    if len(text) > 55 and text[55] != "-":
        return None
    try:
        int(version, 16)
        trace_id = int(text[3:35], 16)
        parent_id = int(text[36:52], 16)
        flags = int(text[53:55], 16)
    except ValueError:
        return None
    if trace_id == 0 or parent_id == 0:
        return None
    return trace_id, parent_id, flags


class _Histogram:
    __slots__ = ("buckets", "count", "high", "low", "total")

    def __init__(self, nbounds: int) -> None:
        self.count = 0
        self.total = 0.0
        self.low = float("inf")
        self.high = float("-inf")
        self.buckets = [0] * (nbounds + 1)


class _Aggregate:
    """One histogram instrument: attribute tuple → explicit-bucket histogram."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.points: dict[tuple[Any, ...], _Histogram] = {}

    def add(self, key: tuple[Any, ...], value: float) -> None:
        h = self.points.get(key)
        if h is None:
            key = key if len(self.points) < _CARDINALITY_LIMIT else _OVERFLOW
            h = self.points.get(key)
            if h is None:
                h = self.points[key] = _Histogram(len(self.bounds))
        h.count += 1
        h.total += value
        if value < h.low:
            h.low = value
        if value > h.high:
            h.high = value
        h.buckets[bisect.bisect_left(self.bounds, value)] += 1


class _Exporter:
    """POSTs OTLP/HTTP protobuf bodies to one signal's endpoint; never raises."""

    def __init__(self, signal: str, config: SignalConfig) -> None:
        self.signal = signal
        self.config = config
        self.headers = {
            "Content-Type": "application/x-protobuf",
            "User-Agent": f"gatewatch/{__version__}",
            **config.headers,
        }
        if config.gzip:
            self.headers["Content-Encoding"] = "gzip"
        self.session: aiohttp.ClientSession | None = None
        self.failures = 0
        self._last_log = 0.0

    def open(self) -> None:
        ctx: ssl.SSLContext | bool = True
        c = self.config
        if c.ca_file or c.client_cert:
            ctx = ssl.create_default_context(cafile=c.ca_file)
            if c.client_cert:
                ctx.load_cert_chain(c.client_cert, c.client_key)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=2, ssl=ctx),
            timeout=aiohttp.ClientTimeout(total=c.timeout),
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def send(self, body: bytes, items: int) -> bool:
        """True when the endpoint took the batch; retries a refused or overloaded endpoint
        twice, within the export timeout."""
        assert self.session is not None
        if self.config.gzip:
            body = gzip.compress(body, compresslevel=1)
        deadline = time.monotonic() + self.config.timeout
        problem = ""
        for delay in (0.5, 1.0, None):
            retry = False
            try:
                async with self.session.post(
                    self.config.url, data=body, headers=self.headers
                ) as resp:
                    await resp.read()
                    if resp.status < 300:
                        return True
                    problem = f"HTTP {resp.status}"
                    retry = resp.status in _RETRYABLE
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
                retry = True
            if not retry or delay is None or time.monotonic() + delay > deadline:
                break
            await asyncio.sleep(delay)
        self.failures += 1
        now = time.monotonic()
        if now - self._last_log > 60:
            self._last_log = now
            log.warning(
                "OTLP %s export to %s failed (%s): %d %s dropped (%d failed exports so far)",
                self.signal, self.config.url, problem, items, self.signal, self.failures,
            )  # fmt: skip
        return False


class Tracing:
    """Built by ``from_environment``; ``start``/``close`` with the gateway."""

    def __init__(self, config: OtelConfig, settings: Settings) -> None:
        self.config = config
        self.content = (settings.tracing.content or config.capture_content) and (
            settings.content == "full"
        )
        if (settings.tracing.content or config.capture_content) and not self.content:
            log.info("tracing: prompt and completion content stay off with content: metadata_only")
        self._rand = random.Random()
        self._parent_based = config.sampler.startswith("parentbased_")
        root = config.sampler.removeprefix("parentbased_")
        self._bound = {"always_on": 1 << 64, "always_off": 0}.get(root, round(config.ratio * 2**64))
        self._providers: dict[str, tuple[str, str | None, int | None]] = {}
        self._urls: dict[tuple[str, str], str] = {}
        self._provider_settings: dict[str, ProviderSettings] = {}
        for p in settings.providers:
            host, port = _address(p.url)
            self._providers[p.name] = (_flavor(p), host, port)
            self._provider_settings[p.name] = p
        self._resource = _otlp.resource(config.resource)
        self._scope = _otlp.scope("gatewatch", __version__)
        self.traces = _Exporter("spans", config.traces) if config.traces else None
        self.metrics = _Exporter("metric points", config.metrics) if config.metrics else None
        # per sampled request: its spans, encoded as ScopeSpans.spans fields, and their count
        self._queue: collections.deque[tuple[bytes, int]] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._durations = _Aggregate(_DURATION_BOUNDS)
        self._tokens = _Aggregate(_TOKEN_BOUNDS)
        self._metrics_start = time.time_ns()
        self._root_groups: dict[tuple[Any, ...], bytes] = {}
        self._attempt_groups: dict[tuple[Any, ...], bytes] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.spans_dropped = 0
        self.spans_exported = 0
        self._last_drop_log = 0.0

    @classmethod
    def from_environment(
        cls, settings: Settings, env: Mapping[str, str] | None = None
    ) -> Tracing | None:
        """None when no OTLP endpoint is configured (``env`` defaults to the process's)."""
        config = OtelConfig.from_env(os.environ if env is None else env)
        if config is None:
            return None
        tracing = cls(config, settings)
        log.info(
            "OpenTelemetry export on: traces → %s, metrics → %s (%s)",
            config.traces.url if config.traces else "off",
            config.metrics.url if config.metrics else "off",
            CONVENTIONS,
        )
        return tracing

    # ---- the request path ----------------------------------------------------------------

    def begin(self, rec: Record, headers: Mapping[bytes, bytes]) -> None:
        rand = self._rand.getrandbits
        raw = headers.get(b"traceparent")
        parent = parse_traceparent(raw) if raw is not None else None
        if parent is None:
            trace_id = rand(128) or 1
            flags = 1 if (trace_id & 0xFFFFFFFFFFFFFFFF) < self._bound else 0
            rec.trace = Trace(trace_id, rand(64) or 1, 0, flags, None)
            return
        trace_id, parent_id, flags = parent
        if not self._parent_based:
            flags = (flags & ~1) | (1 if (trace_id & 0xFFFFFFFFFFFFFFFF) < self._bound else 0)
        state = headers.get(b"tracestate")
        rec.trace = Trace(
            trace_id, rand(64) or 1, parent_id, flags, state.decode("latin-1") if state else None
        )

    def inject(self, rec: Record, attempt: Attempt, out: dict[str, str]) -> None:
        """The headers of an upstream attempt get a ``traceparent`` whose parent is the
        attempt's own span."""
        t: Trace | None = rec.trace
        if t is None:
            return
        attempt.started = time.time()
        attempt.span_id = self._rand.getrandbits(64) or 1
        out["traceparent"] = f"00-{t.trace_hex}-{attempt.span_id:016x}-{t.flags & 0xFF:02x}"
        if t.state:
            out["tracestate"] = t.state

    def finish(self, rec: Record) -> None:
        """After the response: metrics, and the request's spans encoded into the export queue
        (so no record outlives its request)."""
        t: Trace | None = rec.trace
        try:
            self._observe(rec)
            if t is None or not t.flags & 1 or self.traces is None:
                return
            queue = self._queue
            if len(queue) >= self.config.max_queue:
                self._drop(1 + len(rec.attempts))
                return
            queue.append(self._spans(rec))
            if len(queue) >= self.config.max_batch and self._wake is not None:
                self._wake.set()
        except Exception:  # never fail a request for telemetry
            log.exception("tracing: could not record request %s", rec.id)
        finally:
            if t is not None:
                t.answer = None

    def _drop(self, spans: int) -> None:
        self.spans_dropped += spans
        now = time.monotonic()
        if now - self._last_drop_log > 60:
            self._last_drop_log = now
            log.warning(
                "tracing: span queue full (%d requests): dropping spans (%d so far); the "
                "OTLP endpoint is slow or unreachable", len(self._queue), self.spans_dropped,
            )  # fmt: skip

    def _observe(self, rec: Record) -> None:
        op = _OPERATIONS.get(_kind(rec.endpoint), "chat")
        flavor, _, _ = self._provider_info(rec)
        error = _error_type(rec) if rec.status != "ok" else None
        base = (op, flavor, rec.model_requested, rec.model, rec.provider)
        self._durations.add((*base, error), rec.ended - rec.started)
        tokens = self._tokens
        if rec.input_tokens is not None:
            tokens.add((*base, "input"), rec.input_tokens)
        if rec.output_tokens is not None:
            tokens.add((*base, "output"), rec.output_tokens)

    def _provider_info(self, rec: Record) -> tuple[str, str | None, int | None]:
        info = self._providers.get(rec.provider or "")
        if info is None:  # no provider chosen (refused before routing): the API family's flavor
            return (
                ("anthropic" if rec.endpoint.startswith("/v1/messages") else "openai"),
                None,
                None,
            )
        return info

    # ---- background export ----------------------------------------------------------------

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._metrics_start = time.time_ns()
        if self.traces is not None:
            self.traces.open()
            self._tasks.append(asyncio.create_task(self._span_loop()))
        if self.metrics is not None:
            self.metrics.open()
            self._tasks.append(asyncio.create_task(self._metric_loop()))

    async def close(self, timeout: float = 5.0) -> None:
        """Stop the loops, then send what is queued and the last metrics (for at most
        ``timeout`` seconds)."""
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self._queue and self.traces is not None:
                    if not await self._export_spans():
                        break
                if self.metrics is not None:
                    await self._export_metrics()
        self.spans_dropped += sum(n for _, n in self._queue)
        self._queue.clear()
        for exporter in (self.traces, self.metrics):
            if exporter is not None:
                await exporter.close()
        log.info(
            "OpenTelemetry: %d spans exported, %d dropped; %d failed span exports, %d failed "
            "metric exports",
            self.spans_exported, self.spans_dropped,
            self.traces.failures if self.traces else 0,
            self.metrics.failures if self.metrics else 0,
        )  # fmt: skip

    async def _span_loop(self) -> None:
        assert self._wake is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.schedule_delay)
            self._wake.clear()
            while self._queue:
                try:
                    await self._export_spans()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("tracing: span export failed")
                if len(self._queue) < self.config.max_batch:
                    break

    async def _export_spans(self) -> bool:
        assert self.traces is not None
        queue = self._queue
        batch = [queue.popleft() for _ in range(min(len(queue), self.config.max_batch))]
        count = sum(n for _, n in batch)
        body = _otlp.traces_request(self._resource, self._scope, [b for b, _ in batch])
        ok = await self.traces.send(body, count)
        if ok:
            self.spans_exported += count
        else:
            self.spans_dropped += count
        return ok

    async def _metric_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.metric_interval)
            try:
                await self._export_metrics()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("tracing: metric export failed")

    async def _export_metrics(self) -> None:
        assert self.metrics is not None
        now = time.time_ns()
        start = self._metrics_start
        durations, tokens = self._durations, self._tokens
        if self.config.delta:
            self._durations, self._tokens = _Aggregate(_DURATION_BOUNDS), _Aggregate(_TOKEN_BOUNDS)
            self._metrics_start = now
        temporality = _otlp.TEMPORALITY_DELTA if self.config.delta else _otlp.TEMPORALITY_CUMULATIVE
        metrics = []
        if durations.points:
            points = [self._point(k, h, durations.bounds, start, now, True)
                      for k, h in list(durations.points.items())]  # fmt: skip
            metrics.append(_otlp.histogram_metric(
                "gen_ai.client.operation.duration", "GenAI operation duration.", "s", points,
                temporality,
            ))  # fmt: skip
        if tokens.points:
            points = [self._point(k, h, tokens.bounds, start, now, False)
                      for k, h in list(tokens.points.items())]  # fmt: skip
            metrics.append(_otlp.histogram_metric(
                "gen_ai.client.token.usage", "Number of input and output tokens used.",
                "{token}", points, temporality,
            ))  # fmt: skip
        if metrics:
            body = _otlp.metrics_request(self._resource, self._scope, metrics)
            await self.metrics.send(body, len(durations.points) + len(tokens.points))

    def _point(
        self,
        key: tuple[Any, ...],
        h: _Histogram,
        bounds: tuple[float, ...],
        start: int,
        now: int,
        duration: bool,
    ) -> bytes:
        if key is _OVERFLOW:
            attrs: dict[str, Any] = {"otel.metric.overflow": True}
        else:
            op, flavor, requested, model, provider, last = key
            _, host, port = self._providers.get(provider or "", (flavor, None, None))
            attrs = {
                "gen_ai.operation.name": op,
                "gen_ai.provider.name": flavor,
                "gen_ai.request.model": requested,
                "gen_ai.response.model": model,
                "server.address": host,
                "server.port": port if host else None,
                "error.type" if duration else "gen_ai.token.type": last,
            }
        return _otlp.histogram_point(
            attrs, start, now, h.count, h.total, h.buckets, bounds, h.low, h.high
        )

    # ---- spans from a finished record -----------------------------------------------------

    def _spans(self, rec: Record) -> tuple[bytes, int]:
        """The request's spans as repeated ScopeSpans.spans fields, and how many."""
        t: Trace = rec.trace
        trace_id = t.trace_id.to_bytes(16, "big")
        root_id = t.span_id.to_bytes(8, "big")
        kind = _kind(rec.endpoint)
        op = _OPERATIONS.get(kind, "chat")
        start_ns, end_ns = int(rec.started * 1e9), int(rec.ended * 1e9)
        out = [
            _otlp.span(
                trace_id=trace_id,
                span_id=root_id,
                parent_span_id=t.parent_id.to_bytes(8, "big") if t.parent_id else None,
                parent_remote=t.remote,
                trace_flags=t.flags,
                trace_state=t.state,
                name=f"{op} {rec.model_requested}" if rec.model_requested else op,
                kind=_otlp.SPAN_KIND_CLIENT,
                start_ns=start_ns,
                end_ns=end_ns,
                attrs=self._root_attributes(rec, kind, op),
                status_code=_otlp.STATUS_UNSET if rec.status == "ok" else _otlp.STATUS_ERROR,
                status_message="" if rec.status == "ok" else (rec.error_message or ""),
            )
        ]
        method = "GET" if kind == "models" else "POST"
        previous = rec.started
        last = len(rec.attempts) - 1
        for i, a in enumerate(rec.attempts):
            a_start = a.started or previous
            a_end = a_start + a.duration_ms / 1000.0
            if i == last and rec.stream and a.status_code is not None and a.status_code < 300:
                a_end = rec.ended  # a relayed stream: the attempt lasts until its end
            a_start = min(max(a_start, rec.started), rec.ended)  # inside the request span
            previous = a_end = min(max(a_end, a_start), rec.ended)
            failed = a.reason != "ok"
            out.append(
                _otlp.span(
                    trace_id=trace_id,
                    span_id=(a.span_id or self._rand.getrandbits(64) or 1).to_bytes(8, "big"),
                    parent_span_id=root_id,
                    parent_remote=False,
                    trace_flags=t.flags,
                    trace_state=t.state,
                    name=f"{method} {rec.endpoint}",
                    kind=_otlp.SPAN_KIND_CLIENT,
                    start_ns=int(a_start * 1e9),
                    end_ns=int(a_end * 1e9),
                    attrs=self._attempt_attributes(rec, a, i, method),
                    status_code=_otlp.STATUS_ERROR if failed else _otlp.STATUS_UNSET,
                    status_message=a.reason if failed else "",
                )
            )
        return _otlp.span_fields(out), len(out)

    def _root_attributes(self, rec: Record, kind: str, op: str) -> bytes:
        key = (rec.endpoint, rec.provider, rec.model_requested, rec.model, rec.stream,
               rec.status_code, rec.status, rec.error_type, rec.user, rec.org,
               rec.api_key_name, rec.client, len(rec.attempts))  # fmt: skip
        group = self._root_groups.get(key)
        if group is None:
            flavor, host, port = self._provider_info(rec)
            group = _otlp.attributes(9, {
                "gen_ai.operation.name": op,
                "gen_ai.provider.name": flavor,
                "gen_ai.request.model": rec.model_requested,
                "gen_ai.response.model": rec.model,
                "gen_ai.request.stream": rec.stream,
                "server.address": host,
                "server.port": port if host else None,
                "error.type": _error_type(rec) if rec.status != "ok" else None,
                "http.response.status_code": rec.status_code or None,
                "gatewatch.provider": rec.provider,
                "gatewatch.status": rec.status,
                "gatewatch.endpoint": rec.endpoint,
                "gatewatch.user": rec.user,
                "gatewatch.org": rec.org,
                "gatewatch.api_key": rec.api_key_name,
                "gatewatch.client": rec.client,
                "gatewatch.attempts": len(rec.attempts),
            })  # fmt: skip
            if len(self._root_groups) >= 4096:
                self._root_groups.clear()
            self._root_groups[key] = group
        response_id, finish = _answer_facts(kind, rec.trace.answer)
        attrs: dict[str, Any] = {
            "gatewatch.request_id": rec.id,
            "gen_ai.response.id": response_id,
            "gen_ai.response.finish_reasons": finish,
            "gen_ai.usage.input_tokens": rec.input_tokens,
            "gen_ai.usage.output_tokens": rec.output_tokens,
            "gen_ai.usage.cache_read.input_tokens": rec.cache_read_tokens or None,
            "gen_ai.usage.cache_creation.input_tokens": rec.cache_write_tokens or None,
            "gen_ai.usage.reasoning.output_tokens": rec.reasoning_tokens or None,
            "gatewatch.cost_usd": rec.cost_usd,
            "gen_ai.conversation.id": rec.session,
            "gatewatch.end_user": rec.end_user,
            "gatewatch.workflow": rec.workflow,
            "gatewatch.tags": rec.tags or None,
            "gatewatch.correlation_id": rec.correlation_id,
        }
        if rec.stream and rec.ttft_ms is not None:
            attrs["gen_ai.response.time_to_first_chunk"] = rec.ttft_ms / 1000.0
        if self.content:
            attrs.update(content_attributes(kind, rec.request_body, rec.response_body))
        return group + _otlp.attributes(9, attrs, _CACHED)

    def _attempt_attributes(self, rec: Record, a: Attempt, index: int, method: str) -> bytes:
        key = (a.provider, a.model, a.status_code, a.reason, index, rec.endpoint)
        group = self._attempt_groups.get(key)
        if group is None:
            flavor, host, port = self._providers.get(a.provider, (a.provider, None, None))
            p = self._provider_settings.get(a.provider)
            error: str | None = None
            if a.reason != "ok":
                error = str(a.status_code) if a.status_code and a.status_code >= 400 else a.reason
            group = _otlp.attributes(9, {
                "http.request.method": method,
                "url.full": upstream_url(p, rec.endpoint) if p is not None else None,
                "server.address": host,
                "server.port": port if host else None,
                "http.response.status_code": a.status_code,
                "error.type": error,
                "gen_ai.provider.name": flavor,
                "gen_ai.request.model": a.model or None,
                "gatewatch.attempt.index": index,
                "gatewatch.attempt.provider": a.provider,
                "gatewatch.attempt.model": a.model or None,
                "gatewatch.attempt.reason": a.reason,
            })  # fmt: skip
            if len(self._attempt_groups) >= 4096:
                self._attempt_groups.clear()
            self._attempt_groups[key] = group
        return group


def _kind(endpoint: str) -> str:
    e = ENDPOINTS.get(endpoint)
    return e.kind if e is not None else "chat"


def _error_type(rec: Record) -> str:
    if rec.error_type:
        return rec.error_type
    return str(rec.status_code) if rec.status_code >= 400 else "_OTHER"


def _flavor(p: ProviderSettings) -> str:
    if p.type != "openai-compatible":
        return p.type
    name = (p.pricing_provider or p.name).lower()
    return _WELL_KNOWN.get(name, name)


def _address(url: str) -> tuple[str | None, int | None]:
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None, None
    return parts.hostname, port


def _answer_facts(kind: str, answer: Any) -> tuple[str | None, list[str] | None]:
    """(response id, finish reasons) of a parsed blocking body or a stream reader."""
    if answer is None:
        return None, None
    if not isinstance(answer, dict):  # a stream reader: its reassembled message
        try:
            answer = answer.message()
        except Exception:
            return None, None
        if not isinstance(answer, dict):
            return None, None
    rid = answer.get("id")
    reasons: list[str] = []
    if kind == "chat":
        for choice in answer.get("choices") or []:
            if isinstance(choice, dict) and isinstance(choice.get("finish_reason"), str):
                reasons.append(choice["finish_reason"])
    elif kind == "messages":
        if isinstance(answer.get("stop_reason"), str):
            reasons.append(answer["stop_reason"])
    elif kind == "responses":
        status = answer.get("status")
        details = answer.get("incomplete_details")
        if isinstance(details, dict) and isinstance(details.get("reason"), str):
            reasons.append(details["reason"])
        elif status == "completed":
            reasons.append("stop")
        elif isinstance(status, str):
            reasons.append(status)
    return (rid if isinstance(rid, str) else None), (reasons or None)

"""OpenTelemetry export (§O2): a real OTLP/HTTP receiver on a loopback port decodes what the
gateway sends with the official ``opentelemetry-proto`` classes, and the tests check span names,
GenAI attributes, the parent/child structure, ``traceparent`` continuity from the caller through
the gateway to the provider, streaming, failover, errors, opt-in content, the two GenAI
histograms, and that a dead or hanging collector never slows the proxy."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import openai
import pytest
from conftest import free_port
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from gatewatch.tracing import parse_traceparent

CLIENT = Span.SpanKind.SPAN_KIND_CLIENT
ERROR = Status.StatusCode.STATUS_CODE_ERROR
UNSET = Status.StatusCode.STATUS_CODE_UNSET


def value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value(kv.value) for kv in v.kvlist_value.values}
    return None if kind is None else getattr(v, kind)


def attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: value(kv.value) for kv in kvs}


class Collector:
    """An OTLP/HTTP receiver: POST /v1/traces and /v1/metrics, protobuf (optionally gzip)."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.metrics: list[dict[str, Any]] = []
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    data = gzip.decompress(data)
                collector.take(self.path, dict(self.headers), data)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def take(self, path: str, headers: dict[str, str], data: bytes) -> None:
        with self.lock:
            self.requests.append((path, headers))
        if path == "/v1/traces":
            req = ExportTraceServiceRequest.FromString(data)
            for rs in req.resource_spans:
                resource = attrs(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        with self.lock:
                            self.spans.append(
                                {
                                    "trace_id": s.trace_id.hex(),
                                    "span_id": s.span_id.hex(),
                                    "parent": s.parent_span_id.hex() or None,
                                    "name": s.name,
                                    "kind": s.kind,
                                    "start": s.start_time_unix_nano,
                                    "end": s.end_time_unix_nano,
                                    "attrs": attrs(s.attributes),
                                    "status": s.status.code,
                                    "status_message": s.status.message,
                                    "flags": s.flags,
                                    "trace_state": s.trace_state,
                                    "resource": resource,
                                    "scope": ss.scope.name,
                                }
                            )
        elif path == "/v1/metrics":
            req = ExportMetricsServiceRequest.FromString(data)
            for rm in req.resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        for p in m.histogram.data_points:
                            with self.lock:
                                self.metrics.append(
                                    {
                                        "name": m.name,
                                        "unit": m.unit,
                                        "temporality": m.histogram.aggregation_temporality,
                                        "attrs": attrs(p.attributes),
                                        "count": p.count,
                                        "sum": p.sum,
                                        "buckets": list(p.bucket_counts),
                                        "bounds": list(p.explicit_bounds),
                                    }
                                )

    def trace(self, trace_id: str, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The spans of one trace, once ``count`` of them arrived."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                found = [s for s in self.spans if s["trace_id"] == trace_id]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(found)} span(s) of trace {trace_id}, wanted {count}")
            time.sleep(0.02)

    def root_of(self, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for s in self.spans:
                    if s["attrs"].get("gatewatch.request_id") == request_id:
                        return s
            time.sleep(0.02)
        raise AssertionError(f"no span for request {request_id}")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.stop()


@pytest.fixture
def otel_env(monkeypatch: pytest.MonkeyPatch, collector: Collector) -> Collector:
    """The standard variables, set before the gateway is built; export every 50 ms."""
    for name in ("OTEL_SDK_DISABLED", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                 "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "OTEL_TRACES_SAMPLER",
                 "OTEL_RESOURCE_ATTRIBUTES"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gateway-under-test")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "200")
    return collector


def client(gw: Any, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.admin_key, max_retries=0, **kw)


def marker() -> str:
    return uuid.uuid4().hex[:12]


def upstream_calls(upstream: Any, mark: str) -> list[dict[str, Any]]:
    return [e for e in upstream.received if mark in json.dumps(e["body"])]


def children(spans: list[dict[str, Any]], root: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted((s for s in spans if s["parent"] == root["span_id"]), key=lambda s: s["start"])


def test_blocking_chat_span_has_genai_attributes_and_upstream_continues_the_trace(
    otel_env, start_gateway, upstream
):
    gw = start_gateway()
    mark = marker()
    raw = client(gw).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"hello {mark}"}]
    )
    got = raw.parse()
    root = otel_env.root_of(raw.headers["x-gatewatch-request-id"])
    spans = otel_env.trace(root["trace_id"], 2)
    rec = gw.record(raw.headers["x-gatewatch-request-id"])

    assert root["name"] == "chat gpt-4o-mini"
    assert root["kind"] == CLIENT
    assert root["parent"] is None
    assert root["status"] == UNSET
    a = root["attrs"]
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.request.model"] == "gpt-4o-mini"
    assert a["gen_ai.response.model"] == got.model == "gpt-4o-mini-2024-07-18"
    assert a["gen_ai.response.id"] == got.id
    assert a["gen_ai.response.finish_reasons"] == ["stop"]
    assert a["gen_ai.usage.input_tokens"] == got.usage.prompt_tokens
    assert a["gen_ai.usage.output_tokens"] == got.usage.completion_tokens
    assert a["gen_ai.request.stream"] is False
    assert a["server.address"] == "127.0.0.1" and a["server.port"] == upstream.server.port
    assert a["http.response.status_code"] == 200
    assert a["gatewatch.request_id"] == rec["id"]
    assert a["gatewatch.cost_usd"] == pytest.approx(rec["cost_usd"])
    assert a["gatewatch.user"] == "admin" and a["gatewatch.org"] == "default"
    assert "error.type" not in a
    assert not any(k.startswith(("gen_ai.input", "gen_ai.output")) for k in a)  # opt-in only
    assert root["resource"]["service.name"] == "gateway-under-test"
    assert root["resource"]["service.instance.id"]
    assert root["scope"] == "gatewatch"
    assert root["start"] < root["end"]
    assert (root["end"] - root["start"]) / 1e6 == pytest.approx(rec["duration_ms"], abs=1)

    (attempt,) = children(spans, root)
    assert attempt["name"] == "POST /v1/chat/completions"
    assert attempt["kind"] == CLIENT
    assert attempt["attrs"]["http.response.status_code"] == 200
    assert attempt["attrs"]["gatewatch.attempt.provider"] == "openai"
    assert attempt["attrs"]["url.full"] == f"{upstream.url}/v1/chat/completions"
    assert root["start"] <= attempt["start"] <= attempt["end"] <= root["end"]

    (call,) = upstream_calls(upstream, mark)
    assert call["headers"]["traceparent"] == f"00-{root['trace_id']}-{attempt['span_id']}-01"
    assert "tracestate" not in call["headers"]


def test_incoming_traceparent_is_continued_and_propagated(otel_env, start_gateway, upstream):
    gw = start_gateway()
    trace_id, parent = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    mark = marker()
    raw = client(gw).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": mark}],
        extra_headers={"traceparent": f"00-{trace_id}-{parent}-01", "tracestate": "app=7"},
    )
    spans = otel_env.trace(trace_id, 2)
    (root,) = [s for s in spans if s["parent"] == parent]
    assert root["attrs"]["gatewatch.request_id"] == raw.headers["x-gatewatch-request-id"]
    assert root["flags"] == 0x301  # sampled, parent known to be remote
    assert root["trace_state"] == "app=7"
    (attempt,) = children(spans, root)
    assert attempt["flags"] == 0x101  # a local parent
    (call,) = upstream_calls(upstream, mark)
    assert call["headers"]["traceparent"] == f"00-{trace_id}-{attempt['span_id']}-01"
    assert call["headers"]["tracestate"] == "app=7"


def test_unsampled_caller_gets_no_spans_but_the_flag_travels_upstream(
    otel_env, start_gateway, upstream
):
    gw = start_gateway()
    trace_id, parent, mark = uuid.uuid4().hex, uuid.uuid4().hex[:16], marker()
    client(gw).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": mark}],
        extra_headers={"traceparent": f"00-{trace_id}-{parent}-00"},
    )
    (call,) = upstream_calls(upstream, mark)
    tp = call["headers"]["traceparent"]
    assert tp.startswith(f"00-{trace_id}-") and tp.endswith("-00")
    # a sampled request after it is exported; the unsampled one never is
    raw = client(gw).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "next"}]
    )
    otel_env.root_of(raw.headers["x-gatewatch-request-id"])
    assert not [s for s in otel_env.spans if s["trace_id"] == trace_id]


def test_failover_attempts_are_sibling_spans_each_named_in_its_upstream_traceparent(
    otel_env, start_gateway, upstream
):
    gw = start_gateway(models={"smart": ["openai/gpt-4o-error-500", "openai/gpt-4o-mini"]})
    mark = marker()
    raw = client(gw).chat.completions.with_raw_response.create(
        model="smart", messages=[{"role": "user", "content": mark}]
    )
    assert raw.headers["x-gatewatch-attempts"] == "2"
    root = otel_env.root_of(raw.headers["x-gatewatch-request-id"])
    spans = otel_env.trace(root["trace_id"], 3)
    assert root["name"] == "chat smart"
    assert root["status"] == UNSET
    assert root["attrs"]["gen_ai.request.model"] == "smart"
    assert root["attrs"]["gen_ai.response.model"] == "gpt-4o-mini-2024-07-18"
    assert root["attrs"]["gatewatch.attempts"] == 2
    failed, answered = children(spans, root)
    assert failed["status"] == ERROR
    assert failed["attrs"]["http.response.status_code"] == 500
    assert failed["attrs"]["error.type"] == "500"
    assert failed["attrs"]["gatewatch.attempt.model"] == "gpt-4o-error-500"
    assert failed["attrs"]["gatewatch.attempt.reason"] == "upstream_5xx"
    assert answered["status"] == UNSET
    assert answered["attrs"]["gatewatch.attempt.model"] == "gpt-4o-mini"
    assert answered["attrs"]["gatewatch.attempt.index"] == 1
    assert failed["end"] <= answered["start"]
    calls = upstream_calls(upstream, mark)
    assert [c["body"]["model"] for c in calls] == ["gpt-4o-error-500", "gpt-4o-mini"]
    assert [c["headers"]["traceparent"].split("-")[2] for c in calls] == [
        failed["span_id"],
        answered["span_id"],
    ]


def test_stream_span_covers_the_stream_with_time_to_first_chunk(otel_env, start_gateway):
    gw = start_gateway()
    with client(gw).chat.completions.with_streaming_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "stream please"}],
        stream=True,
        stream_options={"include_usage": True},
    ) as resp:
        request_id = resp.headers["x-gatewatch-request-id"]
        chunks = list(resp.parse())
    usage = chunks[-1].usage
    root = otel_env.root_of(request_id)
    (attempt,) = children(otel_env.trace(root["trace_id"], 2), root)
    a = root["attrs"]
    assert a["gen_ai.request.stream"] is True
    assert a["gen_ai.response.id"] == chunks[0].id
    assert a["gen_ai.response.finish_reasons"] == ["stop"]
    assert a["gen_ai.usage.input_tokens"] == usage.prompt_tokens
    assert a["gen_ai.usage.output_tokens"] == usage.completion_tokens
    ttft = a["gen_ai.response.time_to_first_chunk"]
    assert 0 < ttft <= (root["end"] - root["start"]) / 1e9
    assert attempt["end"] == root["end"]  # the relayed stream lasts until the response ends
    assert attempt["status"] == UNSET


def test_refused_and_failed_requests_carry_error_type(otel_env, start_gateway):
    gw = start_gateway(models={"gpt-4o-mini": ["openai/gpt-4o-mini"],
                               "broken": ["openai/gpt-4o-error-500"]})  # fmt: skip
    c = client(gw)
    with pytest.raises(openai.NotFoundError) as unknown:
        c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    root = otel_env.root_of(unknown.value.response.headers["x-gatewatch-request-id"])
    assert root["name"] == "chat nope"
    assert root["status"] == ERROR and "nope" in root["status_message"]
    assert root["attrs"]["error.type"] == "model_not_found"
    assert root["attrs"]["http.response.status_code"] == 404
    assert root["attrs"]["gen_ai.provider.name"] == "openai"  # the API family's flavor
    assert children(otel_env.trace(root["trace_id"], 1), root) == []

    with pytest.raises(openai.InternalServerError) as failed:
        c.chat.completions.create(model="broken", messages=[{"role": "user", "content": "x"}])
    root = otel_env.root_of(failed.value.response.headers["x-gatewatch-request-id"])
    assert root["status"] == ERROR
    assert root["attrs"]["error.type"] == "server_error"  # the provider's own error type
    assert root["attrs"]["http.response.status_code"] == 500
    (attempt,) = children(otel_env.trace(root["trace_id"], 2), root)
    assert attempt["attrs"]["error.type"] == "500" and attempt["status"] == ERROR

    bad_key = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="gw-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        bad_key.chat.completions.create(model="gpt-4o-mini", messages=[])
    root = otel_env.root_of(refused.value.response.headers["x-gatewatch-request-id"])
    assert root["attrs"]["error.type"] == "invalid_api_key"
    assert "gatewatch.user" not in root["attrs"]


def test_content_is_on_spans_only_when_opted_in(otel_env, start_gateway):
    gw = start_gateway(tracing={"content": True})
    mark = marker()
    raw = client(gw).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": "be brief"},
                  {"role": "user", "content": f"what is {mark}?"}],
    )  # fmt: skip
    got = raw.parse()
    a = otel_env.root_of(raw.headers["x-gatewatch-request-id"])["attrs"]
    assert a["gen_ai.input.messages"] == [
        {"role": "system", "parts": [{"type": "text", "content": "be brief"}]},
        {"role": "user", "parts": [{"type": "text", "content": f"what is {mark}?"}]},
    ]
    assert a["gen_ai.output.messages"] == [
        {"role": "assistant", "finish_reason": "stop",
         "parts": [{"type": "text", "content": got.choices[0].message.content}]}
    ]  # fmt: skip


def test_content_never_leaves_with_metadata_only(otel_env, start_gateway, monkeypatch):
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    gw = start_gateway(content="metadata_only", tracing={"content": True})
    raw = client(gw).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "secret plans"}]
    )
    a = otel_env.root_of(raw.headers["x-gatewatch-request-id"])["attrs"]
    assert "gen_ai.input.messages" not in a and "gen_ai.output.messages" not in a
    assert a["gen_ai.usage.input_tokens"] > 0


def test_anthropic_messages_span(otel_env, start_gateway):
    import anthropic

    gw = start_gateway(tracing={"content": True})
    c = anthropic.Anthropic(base_url=gw.url, api_key=gw.admin_key, max_retries=0)
    raw = c.messages.with_raw_response.create(
        model="claude-sonnet-4-5", max_tokens=100, system="terse",
        messages=[{"role": "user", "content": "hi"}],
    )  # fmt: skip
    msg = raw.parse()
    a = otel_env.root_of(raw.headers["x-gatewatch-request-id"])["attrs"]
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "anthropic"
    assert a["gen_ai.response.id"] == msg.id
    assert a["gen_ai.response.finish_reasons"] == [msg.stop_reason]
    assert a["gen_ai.usage.output_tokens"] == msg.usage.output_tokens
    assert a["gen_ai.system_instructions"] == [{"type": "text", "content": "terse"}]
    assert a["gen_ai.input.messages"] == [
        {"role": "user", "parts": [{"type": "text", "content": "hi"}]}
    ]


def test_token_and_duration_histograms_are_exported(otel_env, start_gateway):
    gw = start_gateway()
    c = client(gw)
    usage = [
        c.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"count {i}"}]
        ).usage
        for i in range(3)
    ]
    with pytest.raises(openai.InternalServerError):
        c.chat.completions.create(
            model="gpt-4o-error-500", messages=[{"role": "user", "content": "x"}]
        )

    def latest(name: str, **want: Any) -> dict[str, Any] | None:
        found = None
        for m in list(otel_env.metrics):
            if m["name"] == name and all(m["attrs"].get(k) == v for k, v in want.items()):
                found = m  # cumulative: the last export holds the totals
        return found

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ok = latest("gen_ai.client.operation.duration", **{"gen_ai.request.model": "gpt-4o-mini"})
        err = latest("gen_ai.client.operation.duration", **{"error.type": "server_error"})
        tin = latest("gen_ai.client.token.usage", **{"gen_ai.token.type": "input"})
        if ok and ok["count"] == 3 and err and tin and tin["count"] == 3:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"metrics never complete: {otel_env.metrics[-4:]}")
    assert ok["unit"] == "s" and ok["temporality"] == 2  # cumulative
    assert ok["attrs"]["gen_ai.operation.name"] == "chat"
    assert ok["attrs"]["gen_ai.provider.name"] == "openai"
    assert ok["attrs"]["gen_ai.response.model"] == "gpt-4o-mini-2024-07-18"
    assert "error.type" not in ok["attrs"]
    assert ok["bounds"][:3] == [0.01, 0.02, 0.04] and sum(ok["buckets"]) == 3
    assert err["count"] == 1
    tout = latest("gen_ai.client.token.usage", **{"gen_ai.token.type": "output"})
    assert tin["unit"] == "{token}"
    assert tin["sum"] == sum(u.prompt_tokens for u in usage)
    assert tout is not None and tout["sum"] == sum(u.completion_tokens for u in usage)
    assert tin["bounds"][:3] == [1, 4, 16]


def _hanging_endpoint() -> Iterator[str]:
    """A port that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def _closed_endpoint() -> Iterator[str]:
    yield f"http://127.0.0.1:{free_port()}"


@pytest.mark.parametrize(
    "endpoint", [_closed_endpoint, _hanging_endpoint], ids=["closed", "hanging"]
)
def test_proxy_keeps_full_speed_when_the_collector_is_down(
    endpoint: Callable[[], Iterator[str]], monkeypatch, start_gateway, gateway
):
    """``gateway`` (no tracing) is the baseline; then the same 100 requests with the OTLP
    endpoint refusing connections or hanging, with a tiny queue and an export every 10 ms."""

    def run(gw: Any) -> float:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        headers = {"Authorization": f"Bearer {gw.admin_key}"}
        with httpx.Client(base_url=gw.url, headers=headers, timeout=10) as h:
            h.post("/v1/chat/completions", json=body)  # warm the connections
            t0 = time.perf_counter()
            codes = [h.post("/v1/chat/completions", json=body).status_code for _ in range(100)]
        assert codes == [200] * 100
        return time.perf_counter() - t0

    baseline = run(gateway)
    gen = endpoint()
    url = next(gen)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "10")
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "16")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "100")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "30000")
    traced = start_gateway()
    assert traced.gateway.tracing is not None
    took = run(traced)
    assert took < max(3 * baseline, baseline + 1.0), (took, baseline)
    assert traced.gateway.tracing.spans_dropped > 0 or traced.gateway.tracing.traces.failures
    t0 = time.perf_counter()
    traced.server.stop()  # shutdown gives the exporter at most 5 s
    assert time.perf_counter() - t0 < 10
    gen.close()


def test_no_endpoint_means_no_tracing_and_no_traceparent(monkeypatch, start_gateway, upstream):
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                 "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    gw = start_gateway()
    assert gw.gateway.tracing is None
    mark = marker()
    client(gw).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": mark}],
        extra_headers={"traceparent": f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"},
    )  # fmt: skip
    (call,) = upstream_calls(upstream, mark)
    assert "traceparent" not in call["headers"]


def test_otel_sdk_disabled_and_traces_exporter_none(monkeypatch, start_gateway, collector):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert start_gateway().gateway.tracing is None
    monkeypatch.delenv("OTEL_SDK_DISABLED")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    tracing = start_gateway().gateway.tracing
    assert tracing is not None and tracing.traces is None and tracing.metrics is not None


def test_signal_endpoints_headers_and_gzip(monkeypatch, start_gateway, collector):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{collector.url}/v1/traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=acme,authorization=Bearer%20t0k")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test")
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME"):
        monkeypatch.delenv(name, raising=False)
    gw = start_gateway()
    assert gw.gateway.tracing is not None and gw.gateway.tracing.metrics is None
    raw = client(gw).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    root = collector.root_of(raw.headers["x-gatewatch-request-id"])
    assert root["resource"]["service.name"] == "gatewatch"
    assert root["resource"]["deployment.environment.name"] == "test"
    path, headers = collector.requests[-1]
    assert path == "/v1/traces"
    lower = {k.lower(): v for k, v in headers.items()}
    assert lower["x-tenant"] == "acme" and lower["authorization"] == "Bearer t0k"
    assert lower["content-encoding"] == "gzip"
    assert lower["content-type"] == "application/x-protobuf"


@pytest.mark.parametrize(
    "header",
    [
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        "00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01",
        "garbage",
    ],
)
def test_invalid_traceparent_starts_a_new_trace(header: str) -> None:
    assert parse_traceparent(header.encode()) is None


def test_traceparent_of_a_future_version_is_read() -> None:
    tid, pid = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    assert parse_traceparent(f"00-{tid}-{pid}-01".encode()) == (int(tid, 16), int(pid, 16), 1)
    assert parse_traceparent(f"cc-{tid}-{pid}-01-what-ever".encode()) == (
        int(tid, 16),
        int(pid, 16),
        1,
    )

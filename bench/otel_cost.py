"""CPU per request of OpenTelemetry export, in one process, no network: the OpenTelemetry Python
SDK's path (a tracer span per request and per attempt, the SDK's OTLP protobuf encoder, three
histogram records) against gatewatch's (``gatewatch.tracing``: hooks on the request path, spans
built from the finished record, ``gatewatch._otlp``). Why the gateway writes OTLP itself.

    .venv/bin/python bench/otel_cost.py [--requests 20000] [--repeat 3]

Needs ``opentelemetry-sdk`` and ``opentelemetry-exporter-otlp-proto-common`` (not dependencies
of the gateway: ``pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-http``).
Prints µs per request for each step; on a shared machine compare the two paths within one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

REQUEST_ATTRS: dict[str, Any] = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
    "gen_ai.response.id": "chatcmpl-0123456789",
    "gen_ai.response.finish_reasons": ("stop",),
    "gen_ai.request.stream": False,
    "gen_ai.usage.input_tokens": 12,
    "gen_ai.usage.output_tokens": 30,
    "server.address": "api.openai.com",
    "server.port": 443,
    "http.response.status_code": 200,
    "gatewatch.request_id": "01JD0000000000000000000000",
    "gatewatch.cost_usd": 0.0000198,
    "gatewatch.user": "admin",
    "gatewatch.org": "default",
    "gatewatch.api_key": "admin",
    "gatewatch.provider": "openai",
    "gatewatch.status": "ok",
    "gatewatch.endpoint": "/v1/chat/completions",
    "gatewatch.attempts": 1,
}
ATTEMPT_ATTRS: dict[str, Any] = {
    "http.request.method": "POST",
    "url.full": "https://api.openai.com/v1/chat/completions",
    "server.address": "api.openai.com",
    "server.port": 443,
    "http.response.status_code": 200,
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o-mini",
    "gatewatch.attempt.index": 0,
    "gatewatch.attempt.provider": "openai",
    "gatewatch.attempt.model": "gpt-4o-mini",
    "gatewatch.attempt.reason": "ok",
}


def sdk_steps(n: int) -> dict[str, Callable[[], None]]:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.trace import SpanKind, set_span_in_context

    finished: list[ReadableSpan] = []

    class Keep(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            finished.extend(spans)
            return SpanExportResult.SUCCESS

    provider = TracerProvider(resource=Resource.create({"service.name": "gatewatch"}))
    provider.add_span_processor(SimpleSpanProcessor(Keep()))
    tracer = provider.get_tracer("gatewatch")
    meter = MeterProvider(metric_readers=[InMemoryMetricReader()]).get_meter("gatewatch")
    tokens = meter.create_histogram("gen_ai.client.token.usage", unit="{token}")
    duration = meter.create_histogram("gen_ai.client.operation.duration", unit="s")
    names = ("gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model",
             "gen_ai.response.model")  # fmt: skip
    base = {k: REQUEST_ATTRS[k] for k in names}

    def spans() -> None:
        finished.clear()
        now = time.time_ns()
        for _ in range(n):
            root = tracer.start_span(
                "chat gpt-4o-mini", kind=SpanKind.CLIENT, start_time=now, attributes=REQUEST_ATTRS
            )
            child = tracer.start_span(
                "POST /v1/chat/completions", context=set_span_in_context(root),
                kind=SpanKind.CLIENT, start_time=now, attributes=ATTEMPT_ATTRS,
            )  # fmt: skip
            child.end(end_time=now + 1000)
            root.end(end_time=now + 2000)

    def encode() -> None:
        for i in range(0, len(finished), 512):
            encode_spans(finished[i : i + 512]).SerializeToString()

    def metrics() -> None:
        for _ in range(n):
            tokens.record(12, {**base, "gen_ai.token.type": "input"})
            tokens.record(30, {**base, "gen_ai.token.type": "output"})
            duration.record(0.25, base)

    return {"SDK spans": spans, "SDK encoder": encode, "SDK histograms": metrics}


def gatewatch_steps(n: int) -> dict[str, Callable[[], None]]:
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://127.0.0.1:9"
    from gatewatch import _otlp
    from gatewatch.records import Attempt, Record, new_id
    from gatewatch.settings import load_settings
    from gatewatch.tracing import Tracing

    settings = load_settings(
        env={}, path=os.devnull,
        overrides={"providers": [{"name": "openai", "type": "openai", "api_key": "sk-x"}]},
    )  # fmt: skip
    tracing = Tracing.from_environment(settings)
    assert tracing is not None
    headers = {b"authorization": b"Bearer gw-x", b"content-type": b"application/json"}
    answer = {"id": "chatcmpl-0123456789", "choices": [{"index": 0, "finish_reason": "stop"}]}
    records: list[Record] = []

    def hooks() -> None:
        records.clear()
        for _ in range(n):
            now = time.time()
            rec = Record(id=new_id(now), started=now, endpoint="/v1/chat/completions")
            rec.user = rec.api_key_name = "admin"
            rec.org, rec.provider, rec.model_requested = "default", "openai", "gpt-4o-mini"
            tracing.begin(rec, headers)
            attempt = Attempt("openai", "gpt-4o-mini", None, "ok", 0.0)
            rec.attempts.append(attempt)
            tracing.inject(rec, attempt, {})
            attempt.status_code, attempt.duration_ms = 200, 0.5
            rec.model, rec.status_code = "gpt-4o-mini-2024-07-18", 200
            rec.input_tokens, rec.output_tokens, rec.cost_usd = 12, 30, 0.0000198
            rec.trace.answer = answer
            rec.ended = now + 0.25
            tracing._observe(rec)
            records.append(rec)

    def spans() -> None:
        built = [tracing._spans(rec)[0] for rec in records]
        for i in range(0, len(built), 512):
            _otlp.traces_request(tracing._resource, tracing._scope, built[i : i + 512])

    return {"gatewatch hooks + metrics": hooks, "gatewatch spans + encoding": spans}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    steps = {**sdk_steps(args.requests), **gatewatch_steps(args.requests)}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeat):
        for name, step in steps.items():
            t0 = time.process_time()
            step()
            times[name].append((time.process_time() - t0) / args.requests * 1e6)
    print(f"| step | CPU µs per request (median of {args.repeat}) | runs |")
    print("|---|---|---|")
    for name, values in times.items():
        runs = " · ".join(f"{v:.1f}" for v in values)
        print(f"| {name} | {statistics.median(values):.1f} | {runs} |")
    sdk = sum(statistics.median(times[k]) for k in times if k.startswith("SDK"))
    own = sum(statistics.median(times[k]) for k in times if k.startswith("gatewatch"))
    print(f"\nSDK path {sdk:.1f} µs per request, gatewatch's {own:.1f} µs ({sdk / own:.1f}x)")


if __name__ == "__main__":
    main()

"""The standard ``OTEL_*`` environment variables, read once when the gateway is built.

Follows the OpenTelemetry SDK environment-variable specification for what the gateway exports:
OTLP over HTTP with protobuf bodies, traces and metrics."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from gatewatch import __version__

__all__ = ["OtelConfig"]

log = logging.getLogger("gatewatch.tracing")

_SAMPLERS = {
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
}
# OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT: "true" in the older instrumentations,
# a mode name in the newer ones; content goes on spans for these.
_CAPTURE_ON = {"true", "1", "span_only", "span_and_event"}


def _key_values(text: str) -> dict[str, str]:
    """``k1=v1,k2=v2`` with percent-encoded values (W3C Baggage octets), as the OTLP headers and
    resource attributes variables are written."""
    out: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            out[key.strip()] = unquote(value.strip())
        elif item.strip():
            log.warning("ignoring malformed OTEL key=value item %r", item.strip())
    return out


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        log.warning("%s=%r is not a number; using %s", name, raw, default)
        return default
    if value < 0:
        log.warning("%s=%r is negative; using %s", name, raw, default)
        return default
    return value


def _signal_url(env: Mapping[str, str], signal: str) -> str | None:
    """OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT as given, else OTEL_EXPORTER_OTLP_ENDPOINT with
    ``v1/<signal>`` appended (as the specification says for OTLP/HTTP)."""
    specific = env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT", "").strip()
    if specific:
        return specific
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if not base:
        return None
    return f"{base.rstrip('/')}/v1/{signal}"


@dataclass(frozen=True)
class SignalConfig:
    url: str
    headers: dict[str, str]
    timeout: float  # seconds
    gzip: bool
    ca_file: str | None
    client_cert: str | None
    client_key: str | None


def _signal(env: Mapping[str, str], signal: str) -> SignalConfig | None:
    url = _signal_url(env, signal)
    if url is None:
        return None
    s = signal.upper()
    exporter = env.get(f"OTEL_{s}_EXPORTER", "otlp").strip().lower()
    if exporter == "none":
        return None
    if exporter and exporter != "otlp":
        log.warning("OTEL_%s_EXPORTER=%s is not supported; gatewatch exports OTLP", s, exporter)

    def pick(name: str) -> str:
        return (
            env.get(f"OTEL_EXPORTER_OTLP_{s}_{name}", "").strip()
            or env.get(f"OTEL_EXPORTER_OTLP_{name}", "").strip()
        )

    protocol = pick("PROTOCOL") or "http/protobuf"
    if protocol != "http/protobuf":
        log.error(
            "OTEL_EXPORTER_OTLP_PROTOCOL=%s: gatewatch exports OTLP over HTTP with protobuf "
            "bodies only; point the endpoint at the collector's OTLP/HTTP port (4318)",
            protocol,
        )
    headers = _key_values(env.get("OTEL_EXPORTER_OTLP_HEADERS", ""))
    headers.update(_key_values(env.get(f"OTEL_EXPORTER_OTLP_{s}_HEADERS", "")))
    timeout_ms = _number(
        env,
        f"OTEL_EXPORTER_OTLP_{s}_TIMEOUT",
        _number(env, "OTEL_EXPORTER_OTLP_TIMEOUT", 10_000.0),
    )
    compression = pick("COMPRESSION").lower()
    if compression not in ("", "none", "gzip"):
        log.warning("OTEL_EXPORTER_OTLP_COMPRESSION=%s is not supported; sending gzip", compression)
    return SignalConfig(
        url=url,
        headers=headers,
        timeout=max(timeout_ms, 1.0) / 1000.0,
        gzip=compression not in ("", "none"),
        ca_file=pick("CERTIFICATE") or None,
        client_cert=pick("CLIENT_CERTIFICATE") or None,
        client_key=pick("CLIENT_KEY") or None,
    )


@dataclass(frozen=True)
class OtelConfig:
    traces: SignalConfig | None
    metrics: SignalConfig | None
    resource: dict[str, str | int | float | bool]
    sampler: str = "parentbased_always_on"
    ratio: float = 1.0
    schedule_delay: float = 5.0  # seconds between span exports (OTEL_BSP_SCHEDULE_DELAY)
    max_queue: int = 2048  # spans waiting to be exported before new ones are dropped
    max_batch: int = 512  # spans per export request
    metric_interval: float = 60.0  # seconds between metric exports
    delta: bool = False  # histogram temporality: cumulative (default) or delta
    capture_content: bool = False  # OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OtelConfig | None:
        """None when nothing is to be exported: no OTLP endpoint is set, the SDK is disabled
        (OTEL_SDK_DISABLED=true), or both signals' exporters are ``none``."""
        if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return None
        traces, metrics = _signal(env, "traces"), _signal(env, "metrics")
        if traces is None and metrics is None:
            return None
        resource: dict[str, str | int | float | bool] = {
            "service.name": "gatewatch",
            "service.version": __version__,
            "service.instance.id": str(uuid.uuid4()),
            "telemetry.sdk.name": "gatewatch",
            "telemetry.sdk.language": "python",
            "telemetry.sdk.version": __version__,
        }
        resource.update(_key_values(env.get("OTEL_RESOURCE_ATTRIBUTES", "")))
        if env.get("OTEL_SERVICE_NAME", "").strip():
            resource["service.name"] = env["OTEL_SERVICE_NAME"].strip()
        sampler = env.get("OTEL_TRACES_SAMPLER", "").strip().lower() or "parentbased_always_on"
        if sampler not in _SAMPLERS:
            log.warning(
                "OTEL_TRACES_SAMPLER=%s is not supported; using parentbased_always_on", sampler
            )
            sampler = "parentbased_always_on"
        ratio = 1.0
        if sampler.endswith("traceidratio"):
            ratio = min(_number(env, "OTEL_TRACES_SAMPLER_ARG", 1.0), 1.0)
        temporality = env.get("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "").strip()
        capture = env.get("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "").strip()
        return cls(
            traces=traces,
            metrics=metrics,
            resource=resource,
            sampler=sampler,
            ratio=ratio,
            schedule_delay=_number(env, "OTEL_BSP_SCHEDULE_DELAY", 5000.0) / 1000.0,
            max_queue=max(int(_number(env, "OTEL_BSP_MAX_QUEUE_SIZE", 2048)), 1),
            max_batch=max(int(_number(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)), 1),
            metric_interval=max(_number(env, "OTEL_METRIC_EXPORT_INTERVAL", 60_000.0), 100.0)
            / 1000.0,
            delta=temporality.lower() in ("delta", "lowmemory"),
            capture_content=capture.lower() in _CAPTURE_ON,
        )

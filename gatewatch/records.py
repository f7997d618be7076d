"""The request record (§R): one per request, built on the request path, stored off it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ulid import ULID

__all__ = ["COLUMNS", "Attempt", "Record", "ToolCall", "format_ts", "new_id", "parse_ts"]

# The §R column names, in the order of the CSV header and the API.
COLUMNS: tuple[str, ...] = (
    "id",
    "started_at",
    "ended_at",
    "duration_ms",
    "ttft_ms",
    "org",
    "user",
    "api_key_id",
    "api_key_name",
    "end_user",
    "session",
    "workflow",
    "client",
    "user_agent",
    "source_ip",
    "correlation_id",
    "endpoint",
    "provider",
    "model_requested",
    "model",
    "stream",
    "status_code",
    "status",
    "error_type",
    "error_message",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_usd",
    "tags",
    "meta",
    "last_user_prompt",
    "tool_calls",
    "attempts",
    "request_body",
    "response_body",
)


def new_id(ts: float | None = None) -> str:
    """A ULID: sorts by creation time, so ``ORDER BY id`` is time order."""
    # float: python-ulid reads an int as milliseconds
    return str(ULID.from_timestamp(time.time() if ts is None else float(ts)))


def format_ts(ts: float) -> str:
    """Unix seconds → RFC 3339 UTC with milliseconds (sorts as text)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_ts(text: str) -> float:
    """RFC 3339 (or a date) → Unix seconds; naive times are UTC. Raises ValueError."""
    value = datetime.fromisoformat(text.strip().replace("z", "Z"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


@dataclass(slots=True)
class ToolCall:
    name: str
    call_id: str | None
    arguments: str


@dataclass(slots=True)
class Attempt:
    provider: str
    model: str
    status_code: int | None
    reason: str  # ok | connect_error | timeout | rate_limited | upstream_5xx | upstream_4xx |
    # empty_stream | stream_broken | circuit_open | client_closed
    duration_ms: float
    started: float = 0.0  # Unix seconds; set (with span_id) only when tracing is on
    span_id: int = 0  # the attempt's OpenTelemetry span id, sent upstream in ``traceparent``


@dataclass(slots=True)
class Record:
    id: str
    started: float  # Unix seconds
    endpoint: str
    org_id: str | None = None
    org: str | None = None
    user_id: str | None = None
    user: str | None = None
    api_key_id: str | None = None
    api_key_name: str | None = None
    end_user: str | None = None
    session: str | None = None
    workflow: str | None = None
    client: str | None = None
    user_agent: str | None = None
    source_ip: str | None = None
    correlation_id: str | None = None
    provider: str | None = None
    model_requested: str | None = None
    model: str | None = None
    stream: bool = False
    status_code: int = 0
    status: str = "ok"
    error_type: str | None = None
    error_message: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    cost_usd: float | None = None
    ended: float = 0.0
    ttft_ms: float | None = None
    tags: list[str] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    last_user_prompt: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    request_body: Any = None  # parsed JSON (secrets never included)
    response_body: Any = None  # parsed JSON, or the reassembled streamed message
    trace: Any = None  # gatewatch.tracing.Trace while OpenTelemetry export is on (never stored)

    @property
    def duration_ms(self) -> float:
        return round((self.ended - self.started) * 1000.0, 3)

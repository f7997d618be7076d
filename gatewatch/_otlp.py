"""OTLP/HTTP protobuf payloads, written directly in the protobuf wire format.

The OpenTelemetry SDK's encoder builds a protobuf object per span and per attribute, which costs
far more CPU per request than the gateway itself (see docs/tracing.md). The messages the gateway
sends are few and fixed, so they are written here as bytes: ``ExportTraceServiceRequest`` and
``ExportMetricsServiceRequest`` of ``opentelemetry/proto`` v1 (field numbers below). The tests
decode every payload with the official ``opentelemetry-proto`` classes."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "SPAN_KIND_CLIENT",
    "STATUS_ERROR",
    "STATUS_UNSET",
    "TEMPORALITY_CUMULATIVE",
    "TEMPORALITY_DELTA",
    "attributes",
    "histogram_metric",
    "histogram_point",
    "metrics_request",
    "resource",
    "scope",
    "span",
    "span_fields",
    "traces_request",
]

SPAN_KIND_CLIENT = 3
STATUS_UNSET, STATUS_ERROR = 0, 2
TEMPORALITY_DELTA, TEMPORALITY_CUMULATIVE = 1, 2
# Span.flags: the W3C trace flags in the low byte, then "is_remote is known" and "is remote".
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200

_pack_d = struct.Struct("<d").pack
_pack_q = struct.Struct("<Q").pack
_pack_i = struct.Struct("<I").pack


_SMALL = [bytes((i,)) for i in range(128)]


def _varint(n: int) -> bytes:
    if 0 <= n < 0x80:
        return _SMALL[n]
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _tag(field: int, wire: int) -> bytes:
    return _varint((field << 3) | wire)


def _ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes, embedded message)."""
    return _tag(field, 2) + _varint(len(payload)) + payload


def _str(field: int, text: str) -> bytes:
    return _ld(field, text.encode("utf-8", "replace"))


# ---- attributes (common.proto: KeyValue, AnyValue, ArrayValue, KeyValueList) -----------------

_BOOL_TRUE, _BOOL_FALSE = b"\x10\x01", b"\x10\x00"  # AnyValue.bool_value (2)
_INT, _DOUBLE, _STRING = b"\x18", b"\x21", b"\x0a"  # AnyValue int_value (3), double (4), string (1)


def _any_value(v: Any) -> bytes:
    """The bytes of one AnyValue message."""
    if isinstance(v, str):
        data = v.encode("utf-8", "replace")
        return _STRING + _varint(len(data)) + data
    if isinstance(v, bool):
        return _BOOL_TRUE if v else _BOOL_FALSE
    if isinstance(v, int):
        return _INT + _varint(v)
    if isinstance(v, float):
        return _DOUBLE + _pack_d(v)
    if isinstance(v, list | tuple):
        return _ld(5, b"".join(_ld(1, _any_value(x)) for x in v))
    if isinstance(v, dict):
        return _ld(
            6, b"".join(_ld(1, _key_value(str(k), x)) for k, x in v.items() if x is not None)
        )
    if v is None:
        return b""
    return _any_value(str(v))


_KEYS: dict[str, bytes] = {}  # key → KeyValue.key field and the KeyValue.value tag


def _key_value(key: str, value: Any) -> bytes:
    prefix = _KEYS.get(key)
    if prefix is None:
        prefix = _str(1, key) + b"\x12"
        if len(_KEYS) < 1024:
            _KEYS[key] = prefix
    any_value = _any_value(value)
    return prefix + _varint(len(any_value)) + any_value


class _PairCache:
    """Encoded repeated-``KeyValue`` fields of (key, short string value) pairs: most attributes
    of a gateway's spans take a handful of values (operation, provider, model, user)."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: dict[tuple[int, str, str], bytes] = {}

    def get(self, field: int, key: str, value: str) -> bytes:
        pair = (field, key, value)
        hit = self._items.get(pair)
        if hit is None:
            kv = _key_value(key, value)
            hit = _tag(field, 2) + _varint(len(kv)) + kv
            if len(self._items) >= 4096:
                self._items.clear()
            self._items[pair] = hit
        return hit


_pairs = _PairCache()


def attributes(field: int, attrs: Mapping[str, Any], cached: frozenset[str] = frozenset()) -> bytes:
    """Repeated ``KeyValue`` in ``field``; None values are left out. Keys in ``cached`` with
    string values go through the encoded-pair cache."""
    tag = _tag(field, 2)
    out = []
    for key, value in attrs.items():
        if value is None:
            continue
        if key in cached and value.__class__ is str:
            out.append(_pairs.get(field, key, value))
        else:
            kv = _key_value(key, value)
            out += (tag, _varint(len(kv)), kv)
    return b"".join(out)


def resource(attrs: Mapping[str, Any]) -> bytes:
    """The bytes of a Resource message."""
    return attributes(1, attrs)


def scope(name: str, version: str) -> bytes:
    """The bytes of an InstrumentationScope message."""
    return _str(1, name) + (_str(2, version) if version else b"")


# ---- traces (trace.proto) ---------------------------------------------------------------------

_F_TRACE_ID, _F_SPAN_ID, _F_PARENT = (
    _tag(1, 2) + b"\x10",
    _tag(2, 2) + b"\x08",
    _tag(4, 2) + b"\x08",
)
_F_START, _F_END, _F_FLAGS = _tag(7, 1), _tag(8, 1), _tag(16, 5)
_heads: dict[tuple[str, int], bytes] = {}  # encoded name and kind fields of repeated span names


def span(
    *,
    trace_id: bytes,
    span_id: bytes,
    parent_span_id: bytes | None,
    parent_remote: bool,
    trace_flags: int,
    trace_state: str | None,
    name: str,
    kind: int,
    start_ns: int,
    end_ns: int,
    attrs: bytes,
    status_code: int = STATUS_UNSET,
    status_message: str = "",
) -> bytes:
    """The bytes of one Span message; ``attrs`` from ``attributes(9, …)``."""
    parts = [_F_TRACE_ID, trace_id, _F_SPAN_ID, span_id]
    if trace_state:
        parts.append(_str(3, trace_state))
    flags = trace_flags & 0xFF
    if parent_span_id is not None:
        parts += (_F_PARENT, parent_span_id)
        flags |= _HAS_IS_REMOTE | (_IS_REMOTE if parent_remote else 0)
    else:
        flags |= _HAS_IS_REMOTE
    head = _heads.get((name, kind))
    if head is None:
        head = _str(5, name) + _tag(6, 0) + _varint(kind)
        if len(_heads) >= 4096:
            _heads.clear()
        _heads[(name, kind)] = head
    parts += (
        head,
        _F_START,
        _pack_q(start_ns),
        _F_END,
        _pack_q(end_ns),
        attrs,
    )
    if status_code:
        status = (_str(2, status_message) if status_message else b"") + _tag(3, 0)
        parts.append(_ld(15, status + _varint(status_code)))
    parts += (_F_FLAGS, _pack_i(flags))
    return b"".join(parts)


def span_fields(spans: Iterable[bytes]) -> bytes:
    """Span messages as repeated ``ScopeSpans.spans`` fields, ready for ``traces_request``."""
    return b"".join(_ld(2, s) for s in spans)


def traces_request(resource_msg: bytes, scope_msg: bytes, fields: Iterable[bytes]) -> bytes:
    """ExportTraceServiceRequest with one ResourceSpans holding one ScopeSpans; ``fields``
    from ``span_fields``."""
    scope_spans = _ld(1, scope_msg) + b"".join(fields)
    resource_spans = _ld(1, resource_msg) + _ld(2, scope_spans)
    return _ld(1, resource_spans)


# ---- metrics (metrics.proto) ------------------------------------------------------------------


def histogram_point(
    attrs: Mapping[str, Any],
    start_ns: int,
    time_ns: int,
    count: int,
    total: float,
    bucket_counts: Sequence[int],
    bounds: Sequence[float],
    low: float,
    high: float,
) -> bytes:
    """The bytes of a HistogramDataPoint (explicit bounds, with sum, min and max)."""
    return b"".join(
        (
            attributes(9, attrs),
            _tag(2, 1),
            _pack_q(start_ns),
            _tag(3, 1),
            _pack_q(time_ns),
            _tag(4, 1),
            _pack_q(count),
            _tag(5, 1),
            _pack_d(total),
            _ld(6, b"".join(_pack_q(c) for c in bucket_counts)),
            _ld(7, b"".join(_pack_d(b) for b in bounds)),
            _tag(11, 1),
            _pack_d(low),
            _tag(12, 1),
            _pack_d(high),
        )
    )


def histogram_metric(
    name: str, description: str, unit: str, points: Iterable[bytes], temporality: int
) -> bytes:
    """The bytes of a Metric holding a Histogram."""
    data = b"".join(_ld(1, p) for p in points) + _tag(2, 0) + _varint(temporality)
    return _str(1, name) + _str(2, description) + _str(3, unit) + _ld(9, data)


def metrics_request(resource_msg: bytes, scope_msg: bytes, metrics: Iterable[bytes]) -> bytes:
    """ExportMetricsServiceRequest with one ResourceMetrics holding one ScopeMetrics."""
    scope_metrics = _ld(1, scope_msg) + b"".join(_ld(2, m) for m in metrics)
    resource_metrics = _ld(1, resource_msg) + _ld(2, scope_metrics)
    return _ld(1, resource_metrics)

"""Every Prometheus metric of the gateway, defined in one place against an injected registry.

The per-request metrics are recorded through :meth:`Metrics.observe_request`, which resolves the
labelled children of one label set once and caches them: a request costs one dict look-up plus
the increments. See docs/monitoring.md for each metric, its labels and the bucket choices."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from gatewatch.records import Record

__all__ = ["GAUGE_MERGE", "Metrics"]

# Whole requests: refusals answer in ~1 ms, completions take seconds, long generations and
# reasoning streams minutes (a provider's default timeout is 60 s per attempt, streams may run on).
_DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600,
)  # fmt: skip
# Time to first token: 100 ms to a few seconds for most models, tens of seconds for reasoning ones.
_TTFT_BUCKETS = (
    0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 30, 60, 120,
)  # fmt: skip
# Time the gateway adds: ~0.3 ms typical, p99 ~2 ms (docs/performance.md); fine from 50 µs.
_OVERHEAD_BUCKETS = (
    0.00005, 0.0001, 0.00015, 0.0002, 0.0003, 0.0004, 0.0005, 0.00075, 0.001, 0.0015, 0.002,
    0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
)  # fmt: skip
# Past this many label sets of per-request metrics, new ones report model (and user, key) as
# "other": the model name comes from the client and must not grow the series without bound.
_MAX_SERIES = 10_000
_OTHER = "other"

# How ``gatewatch serve --workers N`` adds up a gauge over its workers (docs/monitoring.md):
# "sum" (the default) over live workers, or "max". Counters and histograms are always summed.
# the alerts engine runs in one worker at a time (a lease): the others report 0 or an old count
GAUGE_MERGE: dict[str, str] = {
    "gatewatch_circuit_state": "max",
    "gatewatch_alerts_firing": "max",
    "gatewatch_spool_full": "max",
}


class _Series:
    """The labelled children of one per-request label set, resolved on first use."""

    __slots__ = ("_cost", "_m", "_tokens", "_ttft", "duration", "key", "overhead", "requests")

    def __init__(self, m: Metrics, key: tuple[str, ...]) -> None:
        provider, model, _, endpoint, stream, *who = key
        org = who[:1] if m.org_label else []
        self._m, self.key = m, key
        self.requests = m.requests.labels(*key)
        self.duration = m.duration.labels(provider, model, endpoint, stream, *org)
        self.overhead = m.overhead.labels(provider, endpoint, stream)
        self._ttft: Any = None
        self._tokens: dict[str, Any] = {}
        self._cost: Any = None

    def ttft(self) -> Any:
        if self._ttft is None:
            provider, model, _, endpoint, _, *who = self.key
            org = who[:1] if self._m.org_label else []
            self._ttft = self._m.ttft.labels(provider, model, endpoint, *org)
        return self._ttft

    def tokens(self, kind: str) -> Any:
        child = self._tokens.get(kind)
        if child is None:
            child = self._m.tokens.labels(self.key[0], self.key[1], kind, *self.key[5:])
            self._tokens[kind] = child
        return child

    def cost(self) -> Any:
        if self._cost is None:
            self._cost = self._m.cost.labels(self.key[0], self.key[1], *self.key[5:])
        return self._cost


class Metrics:
    """``org`` labels the per-request, token, cost and refusal metrics with the organization;
    ``per_user`` and ``per_key`` add ``user`` and ``key`` labels to the counters (opt-in: one
    series per user or key). Past ``max_series`` label sets, new ones are counted under
    model, user and key ``other``."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        org: bool = True,
        per_user: bool = False,
        per_key: bool = False,
        max_series: int = _MAX_SERIES,
    ) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.org_label, self.user_label, self.key_label = org, per_user, per_key
        who = [name for name, on in (("org", org), ("user", per_user), ("key", per_key)) if on]
        org_only = ["org"] if org else []
        self._series: dict[tuple[str, ...], _Series] = {}
        self._max_series = max_series
        self.requests = Counter(
            "gatewatch_requests",
            "Requests answered, by the provider and model that answered (empty when refused "
            "before a provider was chosen), status code, endpoint and stream",
            ["provider", "model", "status_code", "endpoint", "stream", *who],
            registry=r,
        )
        self.duration = Histogram(
            "gatewatch_request_duration_seconds",
            "Whole request duration, from the request's arrival to its last byte",
            ["provider", "model", "endpoint", "stream", *org_only],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "gatewatch_ttft_seconds",
            "Time to first token of streamed responses",
            ["provider", "model", "endpoint", *org_only],
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "gatewatch_overhead_seconds",
            "Time the gateway adds on top of the upstream (request duration minus the time "
            "spent waiting on providers)",
            ["provider", "endpoint", "stream"],
            buckets=_OVERHEAD_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "gatewatch_tokens",
            "Tokens by type: input, output, cache_read, cache_write, reasoning",
            ["provider", "model", "type", *who],
            registry=r,
        )
        self.cost = Counter(
            "gatewatch_cost_usd", "Spend in USD", ["provider", "model", *who], registry=r
        )
        self.inflight = Gauge("gatewatch_inflight_requests", "Requests in flight", registry=r)
        self.budget_rejections = Counter(
            "gatewatch_budget_rejections",
            "Requests refused with 402 for budget, by the budget's scope (key, user, org)",
            ["scope", *who],
            registry=r,
        )
        self.budget_warnings = Counter(
            "gatewatch_budget_warnings",
            "Requests admitted past a budget's soft limit (budgets.warn_at)",
            ["scope"],
            registry=r,
        )
        self.rate_limited = Counter(
            "gatewatch_rate_limited",
            "Requests refused with 429 by rate limits, by the limit's scope (key, user, org, "
            "model) and kind (requests, tokens)",
            ["scope", "kind", *who],
            registry=r,
        )
        self.retention_purged = Counter(
            "gatewatch_retention_purged",
            "What the retention purge removed: records, content (bodies and prompts of records "
            "kept), rollups (usage aggregate rows)",
            ["kind"],
            registry=r,
        )
        self.records_pending = Gauge(
            "gatewatch_records_pending", "Request records not yet stored", registry=r
        )
        self.spool_records = Gauge(
            "gatewatch_spool_records",
            "Request records waiting in the on-disk spool for the database (part of"
            " gatewatch_records_pending)",
            registry=r,
        )
        self.spool_bytes = Gauge(
            "gatewatch_spool_bytes", "Bytes of records waiting in the on-disk spool", registry=r
        )
        self.spool_full = Gauge(
            "gatewatch_spool_full",
            "1 while the spool is at its size limit (records dropped oldest first, or new"
            " requests refused with 503, by spool.on_full)",
            registry=r,
        )
        self.counters_unavailable = Counter(
            "gatewatch_counters_unavailable",
            "Admissions decided on per-process counters because Redis was unreachable",
            registry=r,
        )
        self.circuit_state = Gauge(
            "gatewatch_circuit_state",
            "Circuit breaker per provider/model target: 0 closed, 1 half-open, 2 open",
            ["provider", "model"],
            registry=r,
        )
        self.records_dropped = Counter(
            "gatewatch_records_dropped",
            "Request records dropped (queue full, or spool full with on_full: drop_oldest)",
            registry=r,
        )
        self.alerts_firing = Gauge(
            "gatewatch_alerts_firing",
            "Alerts firing now, one per rule and subject (in the process evaluating the rules)",
            registry=r,
        )
        self.alert_deliveries = Counter(
            "gatewatch_alert_deliveries",
            "Alert webhook deliveries: delivered, retried (an attempt failed, another follows), "
            "failed (gave up), dropped (delivery queue full)",
            ["outcome"],
            registry=r,
        )

    def _who(self, org: str | None, user: str | None, key: str | None) -> tuple[str, ...]:
        out: tuple[str, ...] = ()
        if self.org_label:
            out += (org or "",)
        if self.user_label:
            out += (user or "",)
        if self.key_label:
            out += (key or "",)
        return out

    def observe_request(self, rec: Record, elapsed: float, overhead: float) -> None:
        """Count one answered request: its counter, duration, overhead, TTFT, tokens, cost."""
        key = (
            rec.provider or "",
            rec.model or rec.model_requested or "",
            str(rec.status_code),
            rec.endpoint,
            "true" if rec.stream else "false",
            *self._who(rec.org, rec.user, rec.api_key_name or rec.api_key_id),
        )
        series = self._series.get(key)
        if series is None:
            if len(self._series) >= self._max_series:  # fold model, user and key; keep org
                who = key[5:]
                kept = who[:1] if self.org_label else ()
                key = (key[0], _OTHER, *key[2:5], *kept, *(_OTHER,) * (len(who) - len(kept)))
                series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series(self, key)
        series.requests.inc()
        series.duration.observe(elapsed)
        series.overhead.observe(overhead)
        if rec.ttft_ms is not None and rec.stream:
            series.ttft().observe(rec.ttft_ms / 1000)
        if rec.input_tokens or rec.output_tokens:
            series.tokens("input").inc(rec.input_tokens or 0)
            series.tokens("output").inc(rec.output_tokens or 0)
            if rec.cache_read_tokens:
                series.tokens("cache_read").inc(rec.cache_read_tokens)
            if rec.cache_write_tokens:
                series.tokens("cache_write").inc(rec.cache_write_tokens)
            if rec.reasoning_tokens:
                series.tokens("reasoning").inc(rec.reasoning_tokens)
        if rec.cost_usd:
            series.cost().inc(rec.cost_usd)

    def budget_rejected(self, scope: str, org: str, user: str, key: str) -> None:
        self.budget_rejections.labels(scope, *self._who(org, user, key)).inc()

    def rate_limit_refused(self, scope: str, kind: str, org: str, user: str, key: str) -> None:
        self.rate_limited.labels(scope, kind, *self._who(org, user, key)).inc()

"""Every Prometheus metric of the gateway, defined in one place against an injected registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gatewatch_requests",
            "Requests answered",
            ["provider", "model", "status_code"],
            registry=r,
        )
        self.duration = Histogram(
            "gatewatch_request_duration_seconds",
            "Whole request duration",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "gatewatch_ttft_seconds",
            "Time to first token of streamed responses",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "gatewatch_overhead_seconds",
            "Time the gateway adds on top of the upstream",
            buckets=_OVERHEAD_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "gatewatch_tokens", "Tokens", ["provider", "model", "type"], registry=r
        )
        self.cost = Counter("gatewatch_cost_usd", "Spend in USD", ["provider", "model"], registry=r)
        self.inflight = Gauge("gatewatch_inflight_requests", "Requests in flight", registry=r)
        self.budget_rejections = Counter(
            "gatewatch_budget_rejections", "Requests refused for budget", registry=r
        )
        self.budget_warnings = Counter(
            "gatewatch_budget_warnings",
            "Requests admitted past a budget's soft limit (budgets.warn_at)",
            ["scope"],
            registry=r,
        )
        self.rate_limited = Counter(
            "gatewatch_rate_limited", "Requests refused by rate limits", registry=r
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
            "gatewatch_records_dropped", "Request records dropped (queue full)", registry=r
        )

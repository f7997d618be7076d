"""The one declared settings model (§G): YAML file, ``${ENV}`` interpolation, validation."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "ALERT_DIMENSIONS",
    "AlertRule",
    "AlertSettings",
    "AlertWebhook",
    "BudgetSettings",
    "CircuitBreakerSettings",
    "ConfigError",
    "CurrencySettings",
    "LimitsSettings",
    "MetricsSettings",
    "OrgRetention",
    "PriceOverride",
    "ProviderSettings",
    "RateLimitSettings",
    "RetentionSettings",
    "Settings",
    "TracingSettings",
    "load_settings",
    "parse_duration",
]

_DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """A configuration file that cannot be used; the message names the bad field."""


def parse_duration(value: Any) -> float:
    """``30s``, ``5m``, ``1h``, ``250ms`` or a bare number of seconds → seconds."""
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 5m, 1h)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProviderSettings(_Section):
    name: str = Field(description="Used in /{name}/v1/… routes and in model targets")
    type: Literal["openai", "anthropic", "openai-compatible"] = Field(
        description="Wire format the provider speaks"
    )
    base_url: str | None = Field(
        default=None,
        description="As the provider's SDK takes it: OpenAI with /v1, Anthropic without",
    )
    api_key: SecretStr | None = Field(default=None, description="The provider credential")
    timeout: float = Field(
        default=60.0,
        gt=0,
        description="Seconds: for a non-streamed request, the deadline of the whole attempt; for"
        " a stream, the longest silence (before the headers, the first chunk, or between chunks)",
    )
    connect_timeout: float = Field(default=5.0, gt=0, description="Seconds to open a connection")
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra headers sent upstream (e.g. Azure's api-key)"
    )
    pricing_provider: str | None = Field(
        default=None,
        description="Price-table provider id for an openai-compatible provider (e.g. openrouter)",
    )

    @field_validator("name")
    @classmethod
    def _name_is_path_safe(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v) or v in {"v1", "api", "ui"}:
            raise ValueError("must be letters, digits, '-', '_' or '.', and not v1/api/ui")
        return v

    @model_validator(mode="after")
    def _compatible_needs_url(self) -> ProviderSettings:
        if self.type == "openai-compatible" and not self.base_url:
            raise ValueError("an openai-compatible provider needs a base_url")
        return self

    @property
    def url(self) -> str:
        default = _DEFAULT_BASE_URLS.get(self.type, "")
        return (self.base_url or default).rstrip("/")

    @property
    def family(self) -> Literal["openai", "anthropic"]:
        return "anthropic" if self.type == "anthropic" else "openai"


class OrgRetention(_Section):
    days: int | None = Field(default=None, ge=0, description="Days this org's records are kept")
    content_days: int | None = Field(default=None, ge=0, description="Days its bodies are kept")


class RetentionSettings(_Section):
    days: int = Field(default=60, ge=0, description="Days request records are kept (0 = forever)")
    content_days: int = Field(default=30, ge=0, description="Days bodies are kept (0 = forever)")
    aggregate_days: int = Field(default=400, ge=0, description="Days usage aggregates are kept")
    interval: float = Field(default=300.0, gt=0, description="Seconds between purges (jittered)")
    batch: int = Field(default=5000, ge=1, description="Records deleted per short transaction")
    orgs: dict[str, OrgRetention] = Field(
        default_factory=dict, description="Organization name → its own days / content_days"
    )

    @field_validator("interval", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float:
        return parse_duration(v)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "kib": 2**10, "mb": 10**6, "mib": 2**20, "gb": 10**9, "gib": 2**30}


def parse_size(value: Any) -> int:
    """``512MB``, ``1GiB``, ``64kb`` or a bare number of bytes → bytes."""
    if isinstance(value, int | float):
        return int(value)
    m = _SIZE.match(str(value))
    if m is None:
        raise ValueError(f"{value!r} is not a size (e.g. 512MB, 1GiB, or a number of bytes)")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "b").lower()])


class SpoolSettings(_Section):
    """Where records wait on disk while the database is slow, locked or down (§S)."""

    path: str | None = Field(
        default=None,
        description="Spool directory (default: next to the SQLite file, '<file>-spool')",
    )
    max_bytes: int = Field(
        default=1 << 30, gt=0, description="Largest spool on disk (e.g. 512MB, 1GiB)"
    )
    on_full: Literal["drop_oldest", "refuse"] = Field(
        default="drop_oldest",
        description="When the spool is full: drop the oldest spooled records and keep serving,"
        " or refuse new requests with 503 until the database takes records again",
    )
    spill_after: float = Field(
        default=0.5, gt=0, description="Seconds a database write may take before records spool"
    )

    @field_validator("max_bytes", mode="before")
    @classmethod
    def _size(cls, v: Any) -> int:
        return parse_size(v)

    @field_validator("spill_after", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float:
        return parse_duration(v)


class LimitsSettings(_Section):
    max_body_bytes: int = Field(default=10 * 1024 * 1024, gt=0, description="Largest request body")


class CircuitBreakerSettings(_Section):
    failure_threshold: int = Field(default=5, ge=1)
    cooldown: float = Field(default=30.0, ge=0, description="Seconds an open target is skipped")

    @field_validator("cooldown", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float:
        return parse_duration(v)


# ---- alerts (§N) -----------------------------------------------------------------------------

# What an alert rule may filter or split by: dimensions the usage rollups keep.
ALERT_DIMENSIONS = ("provider", "model", "org", "user", "api_key", "client", "workflow",
                    "end_user", "tag")  # fmt: skip
_ALERT_NAME = r"^[A-Za-z0-9][A-Za-z0-9 _.:-]*$"
# type → (fields it needs, fields it may have), and the default window of windowed types
_RULE_FIELDS: dict[str, tuple[tuple[str, ...], frozenset[str]]] = {
    "budget": (("scope", "threshold"), frozenset({"scope", "threshold"})),
    "error_rate": (("threshold",), frozenset({"threshold", "window", "min_requests", "filter",
                                              "per"})),
    "latency_p95": (("threshold_ms",), frozenset({"threshold_ms", "window", "min_requests",
                                                  "filter", "per"})),
    "spend_rate": (("threshold_usd",), frozenset({"threshold_usd", "window", "filter", "per"})),
    "no_traffic": ((), frozenset({"window", "filter"})),
}  # fmt: skip
_WINDOW_DEFAULT = {"error_rate": 300.0, "latency_p95": 300.0, "spend_rate": 3600.0,
                   "no_traffic": 1800.0}  # fmt: skip
_MIN_REQUESTS_DEFAULT = 10
_WINDOW_RANGE = (10.0, 7 * 86400.0)


def _rule_error(field: str, message: str) -> PydanticCustomError:
    return PydanticCustomError("alert_rule", f"{field}: {message}", {"field": field})


class AlertWebhook(_Section):
    name: str = Field(pattern=_ALERT_NAME, max_length=100, description="Named by rules' notify")
    url: SecretStr = Field(description="http(s) URL the alert is POSTed to (kept secret)")
    format: Literal["slack", "json"] = Field(
        default="json", description="slack: {'text': …}; json: the alert's fields"
    )
    timeout: float = Field(default=5.0, gt=0, description="Seconds one delivery attempt may take")
    headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="Extra request headers (e.g. Authorization)"
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: SecretStr) -> SecretStr:
        if not v.get_secret_value().startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return v

    @field_validator("timeout", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float:
        return parse_duration(v)


class AlertRule(_Section):
    """One alert rule, from the configuration or from ``POST /api/v1/alerts/rules``."""

    name: str = Field(pattern=_ALERT_NAME, max_length=100)
    type: Literal["budget", "error_rate", "latency_p95", "spend_rate", "no_traffic"]
    scope: Literal["key", "user", "org"] | None = Field(
        default=None, description="budget: whose budgets (every key, user or org with one)"
    )
    threshold: float | None = Field(
        default=None,
        gt=0,
        description="budget: share of the budget used (0.8 = 80 %); error_rate: errors/requests",
    )
    threshold_ms: float | None = Field(default=None, gt=0, description="latency_p95: milliseconds")
    threshold_usd: float | None = Field(default=None, gt=0, description="spend_rate: USD")
    window: float | None = Field(default=None, description="Evaluated over the last window")
    min_requests: int | None = Field(
        default=None, ge=1, description="error_rate, latency_p95: fewer requests never fire"
    )
    filter: dict[str, list[str]] = Field(
        default_factory=dict, description="Dimension → value(s) the traffic must match"
    )
    per: list[str] = Field(
        default_factory=list, description="Dimensions that split the traffic into subjects"
    )
    org: str | None = Field(
        default=None, description="Only this organization's traffic, budgets and alert history"
    )
    notify: list[str] = Field(default_factory=list, description="Webhook names")

    @field_validator("window", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float | None:
        return None if v is None else parse_duration(v)

    @field_validator("filter", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: [x] if isinstance(x, str) else x for k, x in v.items()}
        return v

    @model_validator(mode="after")
    def _fits_type(self) -> AlertRule:
        needed, allowed = _RULE_FIELDS[self.type]
        for field in ("scope", "threshold", "threshold_ms", "threshold_usd", "window",
                      "min_requests", "filter", "per"):  # fmt: skip
            if getattr(self, field) not in (None, {}, []) and field not in allowed:
                raise _rule_error(field, f"not used by {self.type} rules")
        for field in needed:
            if getattr(self, field) is None:
                raise _rule_error(field, f"needed by {self.type} rules")
        if self.type == "error_rate" and self.threshold is not None and self.threshold > 1:
            raise _rule_error("threshold", "an error rate is a share between 0 and 1")
        if self.type != "budget":
            if self.window is None:
                self.window = _WINDOW_DEFAULT[self.type]
            lo, hi = _WINDOW_RANGE
            if not lo <= self.window <= hi:
                raise _rule_error("window", "must be between 10s and 7d")
        if self.type in ("error_rate", "latency_p95") and self.min_requests is None:
            self.min_requests = _MIN_REQUESTS_DEFAULT
        for dim, values in self.filter.items():
            if dim not in ALERT_DIMENSIONS:
                raise _rule_error(f"filter.{dim}", f"not one of {', '.join(ALERT_DIMENSIONS)}")
            if not values or any(not v for v in values):
                raise _rule_error(f"filter.{dim}", "needs a non-empty value")
        for dim in self.per:
            if dim not in ALERT_DIMENSIONS:
                raise _rule_error("per", f"{dim!r} is not one of {', '.join(ALERT_DIMENSIONS)}")
        if len(set(self.per)) != len(self.per) or len(self.per) > 2:
            raise _rule_error("per", "at most two different dimensions")
        # the usage rollups keep tag and end_user only beside org and user
        dims = {*self.filter, *self.per}
        for special in ("tag", "end_user"):
            if special in dims and dims - {special, "org", "user"}:
                raise _rule_error(
                    "filter" if special in self.filter else "per",
                    f"{special} combines only with org and user",
                )
        return self


class AlertSettings(_Section):
    interval: float = Field(default=30.0, gt=0, description="Seconds between rule evaluations")
    base_url: str | None = Field(
        default=None, description="The gateway's external URL, for links in alert messages"
    )
    webhooks: list[AlertWebhook] = Field(default_factory=list)
    rules: list[AlertRule] = Field(default_factory=list)
    max_attempts: int = Field(default=10, ge=1, le=50, description="Tries per delivery")
    backoff: float = Field(default=2.0, ge=0, description="Wait before the first retry (doubles)")
    max_backoff: float = Field(default=300.0, ge=0, description="Longest wait between retries")
    queue_size: int = Field(
        default=1000, ge=1, description="Deliveries waiting to be sent before new ones are dropped"
    )

    @field_validator("interval", "backoff", "max_backoff", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float:
        return parse_duration(v)

    @model_validator(mode="after")
    def _names(self) -> AlertSettings:
        hooks = [w.name for w in self.webhooks]
        for i, name in enumerate(hooks):
            if name in hooks[:i]:
                raise _rule_error(f"webhooks[{i}].name", f"{name!r} is used twice")
        names: set[str] = set()
        for i, rule in enumerate(self.rules):
            if rule.name in names:
                raise _rule_error(f"rules[{i}].name", f"{rule.name!r} is used twice")
            names.add(rule.name)
            for hook in rule.notify:
                if hook not in hooks:
                    known = ", ".join(hooks) or "none configured"
                    raise _rule_error(
                        f"rules[{i}].notify", f"no webhook named {hook!r} (webhooks: {known})"
                    )
        return self


class BudgetSettings(_Section):
    timezone: str = Field(default="UTC", description="IANA zone of the calendar budget periods")
    default_output_tokens: int = Field(
        default=1024,
        ge=0,
        description="Output tokens reserved for a request that sets no max_tokens",
    )
    warn_at: float | None = Field(
        default=0.8,
        gt=0,
        le=1,
        description="Soft limit: share of a budget from which responses carry a warning "
        "header and gatewatch_budget_warnings_total counts (null = off)",
    )
    unknown_price_reservation_usd: float = Field(
        default=0.0, ge=0, description="Reserved for a request whose model has no price"
    )
    redis_failure: Literal["open", "closed"] = Field(
        default="open",
        description="Redis unreachable: open = keep serving with per-process counters, "
        "closed = refuse with 503",
    )

    @field_validator("timezone")
    @classmethod
    def _zone_exists(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {v!r} (use an IANA name like Europe/Paris)"
            ) from None
        return v


class RateLimitSettings(_Section):
    rpm: int | None = Field(default=None, ge=1, description="Requests per minute")
    tpm: int | None = Field(default=None, ge=1, description="Tokens per minute")


class PriceOverride(_Section):
    """USD per million tokens."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_read: float | None = Field(default=None, ge=0)
    cache_write: float | None = Field(default=None, ge=0)
    reasoning: float | None = Field(default=None, ge=0, description="Defaults to the output rate")


class CurrencySettings(_Section):
    """The currency costs are shown in (they are stored in USD)."""

    code: str = Field(default="USD", description="ISO 4217 code, e.g. EUR or INR")
    usd_rate: float = Field(default=1.0, gt=0, description="Units of this currency per USD")

    @field_validator("code")
    @classmethod
    def _iso_code(cls, v: str) -> str:
        if len(v) != 3 or not v.isalpha():
            raise ValueError(f"{v!r} is not a three-letter ISO 4217 currency code")
        return v.upper()


class MetricsSettings(_Section):
    """``GET /metrics`` (§O1): who may read it and which caller labels it carries."""

    token: SecretStr | None = Field(
        default=None,
        description="When set, /metrics answers 401 without 'Authorization: Bearer <token>'",
    )
    org: bool = Field(default=True, description="An org label on request, token and cost metrics")
    per_user: bool = Field(
        default=False, description="A user label on the counters (one series per user)"
    )
    per_key: bool = Field(
        default=False, description="A key label on the counters (one series per gateway key)"
    )


class TracingSettings(_Section):
    """OpenTelemetry export is configured with the standard OTEL_* variables (docs/tracing.md);
    this section holds what they cannot say."""

    content: bool = Field(
        default=False,
        description="Put prompts and completions on spans (gen_ai.input.messages, "
        "gen_ai.output.messages); never with content: metadata_only",
    )


class Settings(_Section):
    admin_key: SecretStr | None = Field(default=None, description="Bootstrap key, owner role")
    session_secret: SecretStr | None = Field(
        default=None,
        description="Signs dashboard session cookies (default: derived from admin_key)",
    )
    database: str = Field(
        default="sqlite:///gatewatch.db",
        description="sqlite:///path, or postgresql://user@host/db[?schema=name] for teams",
    )
    database_pool_size: int = Field(
        default=10, ge=1, le=500, description="PostgreSQL: most connections a process reads on"
    )
    redis: str | None = Field(default=None, description="Shared counters (several workers/nodes)")
    analytics: str | None = Field(default=None, description="clickhouse://… for records at scale")
    content: Literal["full", "metadata_only"] = "full"
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    redact: list[str] = Field(
        default_factory=list,
        description="Regular expressions whose matches are replaced by [REDACTED] in stored"
        " bodies, prompts, tool arguments and error messages (e.g. emails, card numbers)",
    )
    spool: SpoolSettings = Field(default_factory=SpoolSettings)
    currency: CurrencySettings = Field(default_factory=CurrencySettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    circuit_breaker: CircuitBreakerSettings = Field(default_factory=CircuitBreakerSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    providers: list[ProviderSettings] = Field(default_factory=list)
    models: dict[str, list[str]] | None = Field(
        default=None, description="Model name → ordered 'provider/model' failover targets"
    )
    budgets: BudgetSettings = Field(default_factory=BudgetSettings)
    model_limits: dict[str, RateLimitSettings] = Field(
        default_factory=dict,
        description="Model name → rpm/tpm that each key may use of that model",
    )
    prices: dict[str, PriceOverride] = Field(
        default_factory=dict, description="'provider/model' → price override (USD per Mtok)"
    )
    record_queue_size: int = Field(
        default=50_000, ge=1, description="Records waiting to be stored before new ones are dropped"
    )
    record_batch_size: int = Field(default=1000, ge=1, description="Records per insert transaction")
    shutdown_timeout: float = Field(
        default=30.0, gt=0, description="Seconds shutdown waits for queued records to be stored"
    )
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("providers")
    @classmethod
    def _unique_names(cls, v: list[ProviderSettings]) -> list[ProviderSettings]:
        seen: set[str] = set()
        for p in v:
            if p.name in seen:
                raise ValueError(f"provider name {p.name!r} is used twice")
            seen.add(p.name)
        return v

    @field_validator("redact")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        for i, pattern in enumerate(v):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"[{i}] {pattern!r} is not a regular expression: {exc}") from None
        return v

    @field_validator("redis")
    @classmethod
    def _redis_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return v

    @field_validator("database")
    @classmethod
    def _known_engine(cls, v: str) -> str:
        if v.startswith(("postgresql://", "postgres://")):
            from gatewatch.store.postgres import split_url

            split_url(v)  # a bad ?schema= is a config error
            return v
        if not v.startswith("sqlite:///"):
            raise ValueError("must be sqlite:///path or postgresql://user@host/db")
        return v

    def provider(self, name: str) -> ProviderSettings | None:
        for p in self.providers:
            if p.name == name:
                return p
        return None

    def check_model_targets(self) -> None:
        """Every ``models`` target must name a configured provider."""
        for alias, targets in (self.models or {}).items():
            if not targets:
                raise ConfigError(f"models.{alias}: needs at least one 'provider/model' target")
            for i, target in enumerate(targets):
                provider, sep, model = target.partition("/")
                if not sep or not model:
                    raise ConfigError(f"models.{alias}[{i}]: {target!r} is not 'provider/model'")
                if self.provider(provider) is None:
                    raise ConfigError(
                        f"models.{alias}[{i}]: no provider named {provider!r} is configured"
                    )

    @property
    def sqlite_path(self) -> str:
        return self.database.removeprefix("sqlite:///")

    @property
    def spool_path(self) -> str | None:
        """The spool directory; None (no spool) for an in-memory database without a path."""
        if self.spool.path:
            return self.spool.path
        if self.database.startswith("sqlite:///") and self.sqlite_path != ":memory:":
            return self.sqlite_path + "-spool"
        return None if self.database.startswith("sqlite:///") else "gatewatch-spool"


def _interpolate(value: Any, env: dict[str, str], path: str) -> Any:
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if default is not None:  # ${VAR:-default}: the default when unset or empty
                return env.get(name) or default
            if name in env:
                return env[name]
            raise ConfigError(f"{path or 'config'}: environment variable {name} is not set")

        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {
            k: _interpolate(v, env, f"{path}.{k}" if path else str(k)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_interpolate(v, env, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _env_defaults(env: dict[str, str]) -> dict[str, Any]:
    providers: list[dict[str, Any]] = []
    if env.get("OPENAI_API_KEY"):
        providers.append({"name": "openai", "type": "openai", "api_key": env["OPENAI_API_KEY"]})
        if env.get("OPENAI_BASE_URL"):
            providers[-1]["base_url"] = env["OPENAI_BASE_URL"]
    if env.get("ANTHROPIC_API_KEY"):
        providers.append(
            {"name": "anthropic", "type": "anthropic", "api_key": env["ANTHROPIC_API_KEY"]}
        )
        if env.get("ANTHROPIC_BASE_URL"):
            providers[-1]["base_url"] = env["ANTHROPIC_BASE_URL"]
    return {"providers": providers}


def _format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in err["loc"])
        loc = loc.replace(".[", "[")
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "alert_rule":  # an alert setting's own check names the field
            field = str(err.get("ctx", {}).get("field", ""))
            loc, msg = f"{loc}.{field}" if loc else field, msg.removeprefix(f"{field}: ")
        lines.append(f"{loc or 'config'}: {msg}")
    return "; ".join(lines)


def load_settings(
    path: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Read the YAML file at ``path`` (or ``GATEWATCH_CONFIG``, or ``./gatewatch.yaml`` when it
    exists); with none, start from the environment's provider keys."""
    env = dict(os.environ if env is None else env)
    if path is None:
        path = env.get("GATEWATCH_CONFIG") or (
            "gatewatch.yaml" if Path("gatewatch.yaml").exists() else None
        )
    raw: dict[str, Any]
    if path is None:
        raw = _env_defaults(env)
    else:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of settings")
        raw = _interpolate(loaded, env, "")
    if "admin_key" not in raw and env.get("GATEWATCH_ADMIN_KEY"):
        raw["admin_key"] = env["GATEWATCH_ADMIN_KEY"]
    raw.update(overrides or {})
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from None
    settings.check_model_targets()
    return settings

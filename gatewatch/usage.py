"""Usage analytics (§A4): time series, leaderboards and facet values over the usage rollups.

This module turns query parameters into a UsageSpec (UTC bucket boundaries in the caller's time
zone, the range rounded to whole hours, the rollups' grain), asks the store for summed rows, and
shapes the answer: zero-filled buckets, percentiles from the histograms, names for ids, the
display currency, and ``top=N`` folding the rest into one ``other`` series."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from gatewatch.records import parse_ts
from gatewatch.settings import CurrencySettings
from gatewatch.store import FilterError, Scope, Store, parse_filters
from gatewatch.store.rollups import (
    DIMENSIONS,
    NBINS,
    NS,
    SCALARS,
    UsageSpec,
    encode,
    hist_array,
    percentiles,
    plan,
)

__all__ = ["BUCKETS", "Currency", "UsageError", "facets", "top", "usage"]

BUCKETS = ("hour", "day", "week", "month")
TOP_DIMENSIONS = ("user", "api_key", "model", "provider", "client", "workflow", "end_user",
                  "org", "tag", "status")  # fmt: skip
TOP_METRICS = ("cost_usd", "requests", "tokens", "errors")
_NAMED = {"org", "user", "api_key"}  # dimensions held as ids, shown by name
_MAX_BUCKETS = 5000
USAGE_PARAMS = ("start", "end", "bucket", "tz", "group_by", "top", "currency", "q")
TOP_PARAMS = ("start", "end", "dimension", "metric", "limit", "currency", "q", "percentiles")


# A bad parameter, named by ``param``: the same error the record filters raise.
UsageError = FilterError


def _choice(p: dict[str, str], name: str, default: str | None, allowed: Sequence[str]) -> str:
    value = p.get(name, default)
    if value is None or value not in allowed:
        raise UsageError(name, f"{value!r} is not one of {', '.join(allowed)}")
    return value


def _flag(p: dict[str, str], name: str, default: bool) -> bool:
    value = p.get(name)
    if value is None:
        return default
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise UsageError(name, f"{value!r} is not true or false")


@dataclass(frozen=True, slots=True)
class Currency:
    code: str
    rate: float

    @classmethod
    def choose(cls, configured: CurrencySettings, asked: str | None) -> Currency:
        if asked is None or asked.upper() == configured.code:
            return cls(configured.code, configured.usd_rate)
        if asked.upper() == "USD":
            return cls("USD", 1.0)
        raise UsageError(
            "currency", f"{asked!r} has no rate configured; use {configured.code} or USD"
        )


def _zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError("tz", f"unknown time zone {name!r} (use an IANA name)") from None


# 1970-01-01 and 9999-01-01: record ids (ULIDs) start in 1970; buckets must end before 10000.
_FIRST_TS, _LAST_TS = 0.0, 253_370_764_800.0


def _time(param: str, value: str | None, default: float) -> float:
    if value is None:
        return default
    try:
        ts = parse_ts(value)
    except ValueError:
        raise UsageError(param, f"{value!r} is not an RFC 3339 time or a date") from None
    if not _FIRST_TS <= ts < _LAST_TS:
        raise UsageError(param, f"{value!r} is not between 1970-01-01 and 9998-12-31")
    return ts


def _floor(ts: float, bucket: str, tz: ZoneInfo) -> datetime:
    local = datetime.fromtimestamp(ts, tz)
    if bucket == "hour":
        return local.replace(minute=0, second=0, microsecond=0)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
    if bucket == "week":
        day -= timedelta(days=day.weekday())
    elif bucket == "month":
        day = day.replace(day=1)
    return day.replace(tzinfo=tz)


def _next(start: datetime, bucket: str, tz: ZoneInfo) -> datetime:
    if bucket == "hour":  # in UTC: local hours repeat or vanish at DST changes
        return datetime.fromtimestamp(start.timestamp() + 3600, tz)
    naive = start.replace(tzinfo=None)
    if bucket == "day":
        naive += timedelta(days=1)
    elif bucket == "week":
        naive += timedelta(days=7)
    else:
        naive = (naive.replace(day=28) + timedelta(days=4)).replace(day=1)
    return naive.replace(tzinfo=tz)


def _hour_aligned(tz: ZoneInfo, lo: float, hi: float) -> bool:
    """Whether the zone's offsets in [lo, hi] are whole hours (rollups can answer)."""
    for ts in (lo, hi):
        offset = datetime.fromtimestamp(ts, tz).utcoffset() or timedelta()
        if offset.total_seconds() % 3600:
            return False
    return True


def _range(start: str | None, end: str | None, default_days: int) -> tuple[float, float]:
    now = time.time()
    hi = _time("end", end, now)
    lo = _time("start", start, max(hi - default_days * 86400, _FIRST_TS))
    if lo >= hi:
        raise UsageError("start", "must be before end")
    if hi - lo > 5 * 366 * 86400:
        raise UsageError("start", "the range is limited to five years")
    return lo, hi


def _round_hours(lo: float, hi: float) -> tuple[int, int]:
    return int(lo // 3600 * 3600), int(-(-hi // 3600) * 3600)


def _dims(value: str | None, param: str, allowed: Sequence[str], most: int) -> tuple[str, ...]:
    if not value:
        return ()
    dims = tuple(d.strip() for d in value.split(",") if d.strip())
    for d in dims:
        if d not in allowed:
            raise UsageError(param, f"{d!r} is not one of {', '.join(allowed)}")
    if len(set(dims)) != len(dims) or len(dims) > most:
        raise UsageError(param, f"give at most {most} different dimensions")
    return dims


def _metrics(values: Sequence[Sequence[Any]], currency: Currency) -> list[dict[str, Any]]:
    """The answer's metrics of each sum (NS scalars, then its histograms); the percentiles of
    all of them computed at once."""
    if not values:
        return []
    hists = np.stack([hist_array(v[NS]) for v in values])
    p50, p95, p99 = percentiles(hists[:, :NBINS], (0.5, 0.95, 0.99))
    t50, t95 = percentiles(hists[:, NBINS:], (0.5, 0.95))
    out = []
    for i, v in enumerate(values):
        requests = v[0]
        cost = v[7] / 1e9
        out.append({
            "requests": requests,
            "errors": v[1],
            "input_tokens": v[2],
            "output_tokens": v[3],
            "cache_read_tokens": v[4],
            "cache_write_tokens": v[5],
            "reasoning_tokens": v[6],
            "cost_usd": round(cost, 9),
            "cost": round(cost * currency.rate, 9),
            "unpriced_requests": v[8],
            "latency_avg_ms": round(v[9] / requests, 1) if requests else None,
            "latency_p50_ms": p50[i],
            "latency_p95_ms": p95[i],
            "latency_p99_ms": p99[i],
            "ttft_p50_ms": t50[i],
            "ttft_p95_ms": t95[i],
        })  # fmt: skip
    return out


_PERCENTILES = ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "ttft_p50_ms", "ttft_p95_ms")


def _add(into: list[Any], v: Sequence[Any]) -> None:
    """Add one sum (NS scalars, then its histogram blobs) into another."""
    for i in range(NS):
        into[i] += v[i]
    into[NS].extend(v[NS])


def _zero() -> list[Any]:
    return [0] * NS + [[]]


def _group(store: Store, dims: Sequence[str], keys: Iterable[tuple[str, ...]]) -> Any:
    """group values → display dict, names looked up once per dimension."""
    keys = list(keys)
    names = {d: store.display_names(d, sorted({k[i] for k in keys if k[i]}))
             for i, d in enumerate(dims) if d in _NAMED}  # fmt: skip

    def show(key: tuple[str, ...]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for d, value in zip(dims, key, strict=True):
            if d in _NAMED:
                out[d] = names[d].get(value) if value else None
                out[f"{d}_id"] = value or None
            else:
                out[d] = value or None
        return out

    return show


def _iso(dt: datetime) -> str:
    if dt.utcoffset() == timedelta(0):
        return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return dt.isoformat()


def usage(
    store: Store,
    scope: Scope,
    params: Sequence[tuple[str, str]],
    currency_settings: CurrencySettings,
) -> dict[str, Any]:
    """GET /api/v1/usage: time series per bucket and group."""
    p = dict(params)
    bucket = _choice(p, "bucket", "day", BUCKETS)
    tz = _zone(p.get("tz"))
    group_by = _dims(p.get("group_by"), "group_by", tuple(DIMENSIONS), 2)
    top_n = _positive(p.get("top"), "top")
    currency = Currency.choose(currency_settings, p.get("currency"))
    query = parse_filters(params, USAGE_PARAMS, p.get("q"))
    lo, hi = _range(p.get("start"), p.get("end"), 7)
    if _hour_aligned(tz, lo, hi):
        lo, hi = _round_hours(lo, hi)
    starts = [_floor(lo, bucket, tz)]
    while starts[-1].timestamp() < hi:
        if len(starts) > _MAX_BUCKETS:
            raise UsageError("bucket", f"more than {_MAX_BUCKETS} buckets; use a larger bucket")
        starts.append(_next(starts[-1], bucket, tz))
    boundaries = tuple(int(s.timestamp()) for s in starts)
    spec = UsageSpec(int(lo), int(hi), boundaries, group_by, query)
    source, series, order, other = _series(store, scope, spec, top_n)
    show = _group(store, group_by, order)
    labels = [_iso(s) for s in starts[:-1]]

    def one(group: dict[str, Any], points: list[list[Any]], is_other: bool) -> dict[str, Any]:
        total = _zero()
        for v in points:
            _add(total, v)
        total_metrics, *point_metrics = _metrics([total, *points], currency)
        return {
            "group": group,
            "other": is_other,
            "totals": total_metrics,
            "points": [
                {"bucket": label, **m} for label, m in zip(labels, point_metrics, strict=True)
            ],
        }

    out_series = [one(show(k), series[k], False) for k in order]
    if other is not None:
        out_series.append(one(dict.fromkeys(group_by, "other"), other, True))
    grand = _zero()
    for points in [*series.values(), *([other] if other is not None else [])]:
        for v in points:
            _add(grand, v)
    return {
        "start": _iso(datetime.fromtimestamp(lo, tz)),
        "end": _iso(datetime.fromtimestamp(hi, tz)),
        "bucket": bucket,
        "tz": tz.key,
        "group_by": list(group_by),
        "currency": currency.code,
        "usd_rate": currency.rate,
        "source": source,
        "buckets": labels,
        "series": out_series,
        "totals": _metrics([grand], currency)[0],
    }


_Series = dict[tuple[str, ...], list[list[Any]]]


def _by_key(rows: dict[tuple[int, tuple[str, ...]], list[Any]], nb: int) -> _Series:
    series: _Series = {}
    for (bi, key), v in rows.items():
        if 0 <= bi < nb:
            _add(series.setdefault(key, [_zero() for _ in range(nb)])[bi], v)
    return series


def _ranked(totals: dict[tuple[str, ...], list[Any]]) -> list[tuple[str, ...]]:
    """Groups by cost, then requests, most first (the order of series and of ``top``)."""
    return sorted(totals, key=lambda k: (-totals[k][7], -totals[k][0], k))


_BATCH_USERS = 100  # users whose groups a pair leaderboard reads at once (the user index)
_MOST_USERS = 400  # then every group at once


def _top_groups(
    store: Store, scope: Scope, whole: UsageSpec, top_n: int
) -> tuple[str, list[tuple[str, ...]], bool]:
    """The ``top_n`` first groups of ``whole`` (one bucket, no histograms) in order, and
    whether there are more.

    Two dimensions, one of them user (model and user, say: tens of thousands of groups in a
    month): users are ranked first (a small rollup), then the groups of the biggest spenders
    read a batch of users at a time, until the N-th group found costs more than the next user
    spent in all; no group of that user or any after can rank above it."""
    dims = whole.group_by
    if len(dims) == 2 and "user" in dims and plan(scope, whole) is not None:
        at = dims.index("user")
        source, rows = store.usage_rows(scope, replace(whole, group_by=("user",)))
        spent = sorted(((key[0], v[7]) for (_bi, key), v in rows.items()),
                       key=lambda u: (-u[1], u[0]))  # fmt: skip
        totals: dict[tuple[str, ...], list[Any]] = {}
        order: list[tuple[str, ...]] = []
        done, batch = 0, top_n
        while done < len(spent) and done < _MOST_USERS:
            users = tuple(u for u, _cost in spent[done : done + batch])
            done += len(users)
            only = (None, users) if at == 1 else (users, None)
            for (_bi, key), v in store.usage_rows(scope, replace(whole, only=only))[1].items():
                _add(totals.setdefault(key, _zero()), v)
            order = _ranked(totals)
            if (
                done < len(spent)
                and len(order) >= top_n
                and totals[order[top_n - 1]][7] > spent[done][1]
            ):
                return source, order[:top_n], True
            batch = min(2 * batch, _BATCH_USERS)
        if done >= len(spent):
            return source, order[:top_n], len(order) > top_n
    source, rows = store.usage_rows(scope, whole)
    totals = {}
    for (_bi, key), v in rows.items():
        _add(totals.setdefault(key, _zero()), v)
    order = _ranked(totals)
    return source, order[:top_n], len(order) > top_n


def _series(
    store: Store, scope: Scope, spec: UsageSpec, top_n: int | None
) -> tuple[str, _Series, list[tuple[str, ...]], list[list[Any]] | None]:
    """(source, the shown groups' points, those groups in order, the ``other`` points or
    None).

    With ``top=N`` and more groups than that, small reads instead of every group's points
    with its histograms (a per-day model and user question has tens of thousands of groups):
    the groups' sums over the whole range (no histograms) to rank them (``_top_groups``), the
    N shown groups' points, and the points of all groups together, of which ``other`` is the
    rest."""
    nb = len(spec.boundaries) - 1
    if top_n is not None and spec.group_by:
        whole = replace(spec, boundaries=(spec.lo, spec.hi), histograms=False,
                        scalars=("requests", "cost_nusd"))  # fmt: skip
        source, order, more = _top_groups(store, scope, whole, top_n)
        if more:
            shown = set(order)
            only = tuple(tuple(sorted({k[i] for k in order})) for i in range(len(spec.group_by)))
            _, rows = store.usage_rows(scope, replace(spec, only=only))
            series = _by_key({k: v for k, v in rows.items() if k[1] in shown}, nb)
            # all groups together: a record is in one group of each dimension but tag (a
            # record with two tags is in two tag groups), so tags stay a dimension here
            together = tuple(d for d in spec.group_by if d == "tag")
            _, rows = store.usage_rows(scope, replace(spec, group_by=together, only=()))
            everything = [_zero() for _ in range(nb)]
            for (bi, _key), v in rows.items():
                if 0 <= bi < nb:
                    _add(everything[bi], v)
            return source, series, order, [_rest(everything[i], series, i) for i in range(nb)]
    source, rows = store.usage_rows(scope, spec)
    series = _by_key(rows, nb)
    totals = {}
    for key, points in series.items():
        total = _zero()
        for v in points:
            _add(total, v)
        totals[key] = total
    order = _ranked(totals)
    other: list[list[Any]] | None = None
    if top_n is not None and len(order) > top_n:
        other = [_zero() for _ in range(nb)]
        for key in order[top_n:]:
            for i, v in enumerate(series[key]):
                _add(other[i], v)
        order = order[:top_n]
    return source, {k: series[k] for k in order}, order, other


def _rest(everything: list[Any], series: _Series, i: int) -> list[Any]:
    """Bucket ``i`` of all groups together less the shown groups' (never below zero: the two
    reads may be a write apart)."""
    rest = list(everything[:NS])
    hist = hist_array(everything[NS])
    for points in series.values():
        for j in range(NS):
            rest[j] -= points[i][j]
        hist -= hist_array(points[i][NS])
    rest = [max(0, x) for x in rest]
    counts = {b: int(c) for b, c in enumerate(np.maximum(hist, 0)) if c}
    return [*rest, [encode(counts)] if counts else []]


def _positive(value: str | None, param: str, most: int | None = None) -> int | None:
    if value is None:
        return None
    if not value.isdigit() or int(value) < 1 or (most is not None and int(value) > most):
        bound = f" and at most {most}" if most else ""
        raise UsageError(param, f"must be a whole number of at least 1{bound}")
    return int(value)


# the scalar sums each leaderboard metric ranks on, and its value from them
_METRIC_SCALARS = {
    "cost_usd": ("cost_nusd",),
    "requests": ("requests",),
    "tokens": ("input_tokens", "output_tokens"),
    "errors": ("errors",),
}


def _metric_value(metric: str, v: Sequence[Any]) -> int:
    return int({"cost_usd": v[7], "requests": v[0], "tokens": v[2] + v[3], "errors": v[1]}[metric])


def top(
    store: Store,
    scope: Scope,
    params: Sequence[tuple[str, str]],
    currency_settings: CurrencySettings,
) -> dict[str, Any]:
    """GET /api/v1/usage/top: a leaderboard of one dimension over a range."""
    p = dict(params)
    dimension = _choice(p, "dimension", "user", TOP_DIMENSIONS)
    metric = _choice(p, "metric", "cost_usd", TOP_METRICS)
    limit = _positive(p.get("limit"), "limit", 1000) or 10
    currency = Currency.choose(currency_settings, p.get("currency"))
    query = parse_filters(params, TOP_PARAMS, p.get("q"))
    with_percentiles = _flag(p, "percentiles", True)
    lo, hi = _round_hours(*_range(p.get("start"), p.get("end"), 30))
    # Rank on the one sum the metric needs (no histograms: SQLite's own arithmetic), then read
    # every metric and the latency histograms of the groups shown only: a leaderboard of 10
    # out of thousands of users or clients does not pay for the rest.
    ranking = UsageSpec(lo, hi, (lo, hi), (dimension,), query, histograms=False,
                        scalars=_METRIC_SCALARS[metric])  # fmt: skip
    source, rows = store.usage_rows(scope, ranking)
    ranked: dict[tuple[str, ...], int] = {}
    for (_bi, key), v in rows.items():
        ranked[key] = ranked.get(key, 0) + _metric_value(metric, v)
    total = sum(ranked.values())
    order = sorted(ranked, key=lambda k: (-ranked[k], k))[:limit]
    by_key = {key: _zero() for key in order}
    if order:
        shown = replace(ranking, histograms=with_percentiles, scalars=SCALARS,
                        only=(tuple(k[0] for k in order),))  # fmt: skip
        for (_bi, key), v in store.usage_rows(scope, shown)[1].items():
            if key in by_key:
                _add(by_key[key], v)
    show = _group(store, (dimension,), order)
    results = []
    metrics = _metrics([by_key[key] for key in order], currency)
    for rank, (key, m) in enumerate(zip(order, metrics, strict=True), 1):
        m["tokens"] = m["input_tokens"] + m["output_tokens"]
        if not with_percentiles:
            for name in _PERCENTILES:
                del m[name]
        share = ranked[key] / total if total else 0.0
        results.append({"rank": rank, **show(key), **m, "share": round(share, 6)})
    return {
        "dimension": dimension,
        "metric": metric,
        "start": _iso(datetime.fromtimestamp(lo, UTC)),
        "end": _iso(datetime.fromtimestamp(hi, UTC)),
        "currency": currency.code,
        "source": source,
        "results": results,
    }


FACET_FIELDS = ("model", "provider", "status", "org", "user", "api_key", "client", "workflow",
                "end_user", "tag")  # fmt: skip


def facets(store: Store, scope: Scope, params: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """GET /api/v1/requests/facets: the values a filter can take, most used first."""
    p = dict(params)
    field = _choice(p, "field", None, FACET_FIELDS)
    limit = _positive(p.get("limit"), "limit", 1000) or 100
    lo, hi = _round_hours(*_range(p.get("start"), p.get("end"), 30))
    values = store.facet_values(scope, field, lo, hi, limit)
    out: list[dict[str, Any]] = []
    if field in _NAMED:
        names = store.display_names(field, [v for v, _ in values])
        out = [{"value": v, "name": names.get(v), "count": n} for v, n in values]
    else:
        out = [{"value": v, "count": n} for v, n in values]
    return {
        "field": field,
        "start": _iso(datetime.fromtimestamp(lo, UTC)),
        "end": _iso(datetime.fromtimestamp(hi, UTC)),
        "values": out,
    }

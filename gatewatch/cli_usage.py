"""``gatewatch usage`` (§L): spend, tokens, requests and latency per bucket and group, as a table
with a sparkline, JSON or CSV. Talks to GET /api/v1/usage and sees what the key may see."""

from __future__ import annotations

import csv
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from rich.table import Table

from gatewatch.cli import _DEFAULT_URL, TokenOpt, UrlOpt, _api, _fail, _given, app
from gatewatch.settings import parse_duration

__all__ = ["usage"]

_SPARK = "▁▂▃▄▅▆▇█"
_COLUMNS = ("requests", "errors", "input_tokens", "output_tokens", "cache_read_tokens",
            "cache_write_tokens", "reasoning_tokens", "cost_usd", "cost", "latency_p50_ms",
            "latency_p95_ms", "latency_p99_ms", "ttft_p50_ms", "ttft_p95_ms")  # fmt: skip


def sparkline(values: list[float]) -> str:
    """One block character per value, scaled between 0 and the largest value."""
    top = max(values, default=0)
    if top <= 0:
        return _SPARK[0] * len(values)
    return "".join(_SPARK[min(len(_SPARK) - 1, int(v / top * (len(_SPARK) - 1) + 0.5))]
                   for v in values)  # fmt: skip


def _last_month(tz: str) -> tuple[str, str]:
    now = datetime.now(ZoneInfo(tz))
    end = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    start = (end - timedelta(days=1)).replace(day=1)
    return start.isoformat(), end.isoformat()


def _group_label(group: dict[str, Any], dims: list[str]) -> str:
    return " / ".join(str(group.get(d) if group.get(d) is not None else "—") for d in dims)


@app.command()
def usage(
    url: UrlOpt = _DEFAULT_URL,
    token: TokenOpt = None,
    since: Annotated[str | None, typer.Option(help="How far back: 24h, 7d, 30d …")] = None,
    start: Annotated[str | None, typer.Option(help="RFC 3339 or a date")] = None,
    end: Annotated[str | None, typer.Option(help="RFC 3339 or a date (default now)")] = None,
    last_month: Annotated[bool, typer.Option("--last-month", help="The previous month")] = False,
    bucket: Annotated[str, typer.Option(help="hour | day | week | month")] = "day",
    by: Annotated[str | None, typer.Option(help="Up to two dimensions: model,user …")] = None,
    tz: Annotated[str, typer.Option(help="IANA time zone of the buckets")] = "UTC",
    top: Annotated[int | None, typer.Option(help="Keep the N largest groups")] = None,
    currency: Annotated[str | None, typer.Option(help="Display currency (or USD)")] = None,
    provider: Annotated[str | None, typer.Option()] = None,
    model: Annotated[str | None, typer.Option()] = None,
    org: Annotated[str | None, typer.Option()] = None,
    initiator: Annotated[str | None, typer.Option(help="User id or name, or 'me'")] = None,
    status: Annotated[str | None, typer.Option(help="ok | error | client_closed")] = None,
    q: Annotated[str | None, typer.Option(help="Filter string of key:value pairs")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table | json | csv")] = "table",
) -> None:
    """Usage per time bucket and group: requests, tokens, cost and latency."""
    if fmt not in ("table", "json", "csv"):
        _fail(f"--format: {fmt!r} is not one of table, json, csv", 2)
    if last_month:
        start, end = _last_month(tz)
    elif since:
        try:
            start = datetime.fromtimestamp(time.time() - parse_duration(since), UTC).isoformat()
        except ValueError:
            _fail(f"--since: {since!r} is not a duration like 24h or 7d", 2)
    params = _given(start=start, end=end, bucket=bucket, group_by=by, tz=tz, top=top,
                    currency=currency, provider=provider, model=model, org=org,
                    initiator=initiator, status=status, q=q)  # fmt: skip
    body = _api(url, token, "GET", "/api/v1/usage", params=params)
    dims: list[str] = body["group_by"]
    if fmt == "json":
        sys.stdout.write(json.dumps(body, indent=2) + "\n")
        return
    if fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(["bucket", *dims, *_COLUMNS, "currency"])
        for series in body["series"]:
            for point in series["points"]:
                if point["requests"]:
                    writer.writerow([point["bucket"], *(series["group"].get(d) for d in dims),
                                     *(point[c] for c in _COLUMNS), body["currency"]])  # fmt: skip
        return
    cur = body["currency"]
    table = Table(
        title=f"usage {body['start']} → {body['end']} per {body['bucket']} ({body['tz']})"
    )
    table.add_column("bucket")
    if dims:
        table.add_column(" / ".join(dims))
    for name in ("requests", "errors", "tokens in", "tokens out", f"cost {cur}", "p50 ms",
                 "p95 ms"):  # fmt: skip
        table.add_column(name, justify="right")
    for series in body["series"]:
        for point in series["points"]:
            if not point["requests"]:
                continue
            row = [point["bucket"][:16].replace("T", " ")]
            if dims:
                row.append(_group_label(series["group"], dims))
            row += [f"{point['requests']:,}", f"{point['errors']:,}",
                    f"{point['input_tokens']:,}", f"{point['output_tokens']:,}",
                    f"{point['cost']:,.4f}", str(point["latency_p50_ms"] or "—"),
                    str(point["latency_p95_ms"] or "—")]  # fmt: skip
            table.add_row(*row)
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(table)
    per_bucket = [0.0] * len(body["buckets"])
    for series in body["series"]:
        for i, point in enumerate(series["points"]):
            per_bucket[i] += point["cost"]
    t = body["totals"]
    console.print(
        f"total: {t['requests']:,} requests, {t['errors']:,} errors, "
        f"{t['input_tokens'] + t['output_tokens']:,} tokens, {t['cost']:,.4f} {cur}"
        f"   spend per {body['bucket']}: {sparkline(per_bucket)}"
    )

"""The ``gatewatch`` command (§L). Data commands talk to a running gateway's REST API and see
exactly what the API lets the key see."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import sys
import time
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from gatewatch.records import format_ts
from gatewatch.settings import ConfigError, load_settings, parse_duration

__all__ = ["main"]

app = typer.Typer(
    help="gatewatch: a self-hosted LLM gateway that records every request.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
requests_app = typer.Typer(help="Request records.", no_args_is_help=True)
keys_app = typer.Typer(help="Gateway keys.", no_args_is_help=True)
rollups_app = typer.Typer(help="Usage rollups (local admin commands).", no_args_is_help=True)
app.add_typer(requests_app, name="requests")
app.add_typer(keys_app, name="keys")
app.add_typer(rollups_app, name="rollups")

UrlOpt = Annotated[
    str, typer.Option("--url", envvar="GATEWATCH_URL", help="The gateway's base URL")
]
TokenOpt = Annotated[
    str | None, typer.Option("--token", envvar="GATEWATCH_TOKEN", help="A gateway key")
]
FormatOpt = Annotated[str, typer.Option("--format", help="table | json | csv")]
_DEFAULT_URL = "http://127.0.0.1:4000"


def _redacted(url: str) -> str:
    """A database URL with its password hidden."""
    import re

    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def _fail(message: str, code: int = 1) -> NoReturn:
    Console(stderr=True).print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def _api(url: str, token: str | None, method: str, path: str, **kw: Any) -> Any:
    import httpx

    if not token:
        _fail("no key: pass --token or set GATEWATCH_TOKEN")
    try:
        resp = httpx.request(
            method,
            url.rstrip("/") + path,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
            **kw,
        )
    except httpx.HTTPError as exc:
        _fail(f"cannot reach the gateway at {url}: {exc}")
        raise AssertionError from exc  # unreachable
    if resp.status_code >= 400:
        try:
            message = resp.json()["error"]["message"]
        except Exception:
            message = resp.text
        _fail(f"{resp.status_code}: {message}")
    return resp.json()


def _given(**options: Any) -> dict[str, Any]:
    """The options the user gave (not None)."""
    return {k: v for k, v in options.items() if v is not None}


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


# ---- serve / demo ---------------------------------------------------------------------------


@app.command()
def serve(
    config: Annotated[str | None, typer.Option("--config", envvar="GATEWATCH_CONFIG")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 4000,
    workers: Annotated[int, typer.Option(help="Worker processes")] = 1,
) -> None:
    """Run the gateway."""
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        _fail(f"invalid configuration: {exc}", 2)
        return
    _configure_logging(settings.log_level)
    if not settings.providers:
        logging.getLogger("gatewatch").warning(
            "no providers configured: set OPENAI_API_KEY / ANTHROPIC_API_KEY or write a config"
        )
    if workers > 1 and not settings.redis:
        logging.getLogger("gatewatch").warning(
            "%d workers without `redis:` in the configuration: each worker keeps its own "
            "budget and rate-limit counters, so a limit is enforced per worker",
            workers,
        )
    _run_server(settings, host, port, workers, config)


def _run_server(settings: Any, host: str, port: int, workers: int, config: str | None) -> None:
    import uvicorn

    from gatewatch.store import StoreUnavailable, open_store

    try:
        store = open_store(settings.database, settings.database_pool_size)
        store.migrate()
        store.close()
    except StoreUnavailable as exc:
        _fail(f"{exc} (database: {_redacted(settings.database)})")
    common: dict[str, Any] = dict(
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level=settings.log_level,
        timeout_graceful_shutdown=30,
    )
    if workers > 1:
        import shutil
        import tempfile

        if config:
            os.environ["GATEWATCH_CONFIG"] = os.path.abspath(config)
        # the workers add up their metrics through this directory (docs/monitoring.md)
        metrics_dir = tempfile.mkdtemp(prefix="gatewatch-metrics-")
        os.environ["GATEWATCH_METRICS_DIR"] = metrics_dir
        try:
            uvicorn.run(
                "gatewatch.app:app_from_environment", factory=True, workers=workers, **common
            )
        finally:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    else:
        from gatewatch.app import create_app

        uvicorn.run(create_app(settings), **common)


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="Gateway port")] = 4000,
    requests: Annotated[int, typer.Option(help="Live simulated requests to send")] = 300,
    database: Annotated[
        str, typer.Option(help="Where to keep the demo's records")
    ] = "sqlite:///gatewatch-demo.db",
    history: Annotated[
        bool,
        typer.Option(
            help="Store a week of generated history first (skipped if the database has records)"
        ),
    ] = True,
) -> None:
    """The gateway with a built-in simulated provider, a week of history and live traffic, for a
    first look."""
    from gatewatch.demo import run_demo

    _configure_logging("info")
    run_demo(port=port, n_requests=requests, database=database, history=history)


# ---- requests --------------------------------------------------------------------------------


_LIST_COLUMNS = (
    "id",
    "started_at",
    "user",
    "provider",
    "model",
    "status_code",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "duration_ms",
)


# The §A1 filters, as options of every command that reads records.
InitiatorOpt = Annotated[str | None, typer.Option(help="User id or name, or 'me'")]
OrgOpt = Annotated[str | None, typer.Option(help="Organization id or name")]
ApiKeyOpt = Annotated[str | None, typer.Option(help="Key id or name")]
ProviderOpt = Annotated[str | None, typer.Option(help="Configured provider name")]
ModelOpt = Annotated[str | None, typer.Option(help="The model asked for or the one that answered")]
StatusOpt = Annotated[str | None, typer.Option(help="ok | error | client_closed")]
StatusCodeOpt = Annotated[int | None, typer.Option(help="HTTP status code, e.g. 429")]
ClientOpt = Annotated[str | None, typer.Option(help="Detected client, e.g. claude-code")]
WorkflowOpt = Annotated[str | None, typer.Option()]
SessionOpt = Annotated[str | None, typer.Option()]
TagOpt = Annotated[list[str] | None, typer.Option(help="A tag (repeat for any of several)")]
EndUserOpt = Annotated[str | None, typer.Option(help="Your customer's id (x-gatewatch-user)")]
MetaOpt = Annotated[
    list[str] | None, typer.Option(help="NAME=VALUE of a meta property (repeatable)")
]
SinceOpt = Annotated[str | None, typer.Option(help="Started within the last 24h, 7d, 30d …")]
AfterOpt = Annotated[str | None, typer.Option(help="RFC 3339 time or date (inclusive)")]
BeforeOpt = Annotated[str | None, typer.Option(help="RFC 3339 time or date (exclusive)")]
QOpt = Annotated[str | None, typer.Option(help="Search string of key:value pairs")]


def _filters(
    *,
    meta: list[str] | None,
    tag: list[str] | None,
    since: str | None,
    started_after: str | None,
    **single: str | int | None,
) -> list[tuple[str, str]]:
    """The filter options as query parameters (repeatable ones repeated)."""
    if since is not None:
        if started_after is not None:
            _fail("--since and --started-after: give one of them", 2)
        try:
            seconds = parse_duration(since)
        except ValueError:
            _fail(f"--since: {since!r} is not a duration like 24h, 7d or 30d", 2)
        started_after = format_ts(time.time() - seconds)
    params = [(k, str(v)) for k, v in {**single, "started_after": started_after}.items()
              if v is not None]  # fmt: skip
    params += [("tag", t) for t in tag or ()]
    for item in meta or ():
        name, sep, value = item.partition("=")
        if not sep or not name:
            _fail(f"--meta: {item!r} is not NAME=VALUE", 2)
        params.append((f"meta.{name}", value))
    return params


def _print_rows(rows: list[dict[str, Any]], fmt: str, columns: tuple[str, ...]) -> None:
    if fmt == "json":
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    elif fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(
            buf, fieldnames=list(rows[0]) if rows else list(columns), extrasaction="ignore"
        )
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in row.items()}
            )
        sys.stdout.write(buf.getvalue())
    elif fmt == "table":
        table = Table(*columns)
        for row in rows:
            table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
        Console(width=None if sys.stdout.isatty() else 200).print(table)
    else:
        _fail(f"--format: {fmt!r} is not one of table, json, csv", 2)


@requests_app.command("list")
def requests_list(
    url: UrlOpt = _DEFAULT_URL,
    token: TokenOpt = None,
    initiator: InitiatorOpt = None,
    org: OrgOpt = None,
    api_key: ApiKeyOpt = None,
    provider: ProviderOpt = None,
    model: ModelOpt = None,
    status: StatusOpt = None,
    status_code: StatusCodeOpt = None,
    client: ClientOpt = None,
    workflow: WorkflowOpt = None,
    session: SessionOpt = None,
    tag: TagOpt = None,
    end_user: EndUserOpt = None,
    meta: MetaOpt = None,
    since: SinceOpt = None,
    started_after: AfterOpt = None,
    started_before: BeforeOpt = None,
    q: QOpt = None,
    limit: Annotated[int, typer.Option(help="1-1000")] = 20,
    fmt: FormatOpt = "table",
) -> None:
    """List request records, newest first."""
    params = _filters(
        initiator=initiator, org=org, api_key=api_key, provider=provider, model=model,
        status=status, status_code=status_code, client=client, workflow=workflow,
        session=session, tag=tag, end_user=end_user, meta=meta, since=since,
        started_after=started_after, started_before=started_before, q=q,
    )  # fmt: skip
    page = _api(url, token, "GET", "/api/v1/requests", params=[*params, ("limit", str(limit))])
    _print_rows(page["results"], fmt, _LIST_COLUMNS)
    if fmt == "table":
        Console(stderr=True).print(f"{len(page['results'])} of {page['count']} matching")


@requests_app.command("show")
def requests_show(
    request_id: Annotated[str, typer.Argument(help="The record's id")],
    url: UrlOpt = _DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """One request record with its prompt, response, tool calls and attempts."""
    sys.stdout.write(
        json.dumps(_api(url, token, "GET", f"/api/v1/requests/{request_id}"), indent=2) + "\n"
    )


# ---- export ----------------------------------------------------------------------------------


class _CsvRecords:
    """Counts the CSV records in a byte stream: line breaks outside quoted cells (a quote
    toggles, an escaped quote toggles twice), less the header."""

    def __init__(self) -> None:
        self.count = -1
        self._quoted = False

    def feed(self, chunk: bytes) -> int:
        """Take the next bytes; returns how many more records are complete."""
        before = max(self.count, 0)
        *lines, rest = chunk.split(b"\n")
        for line in lines:
            if line.count(b'"') % 2:
                self._quoted = not self._quoted
            if not self._quoted:
                self.count += 1
        if rest.count(b'"') % 2:
            self._quoted = not self._quoted
        return max(self.count, 0) - before


class _JsonLines:
    def __init__(self) -> None:
        self.count = 0

    def feed(self, chunk: bytes) -> int:
        n = chunk.count(b"\n")
        self.count += n
        return n


def _rate_column() -> Any:
    from rich.progress import ProgressColumn, Task
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.0f} records/s" if speed else "", style="progress.data.speed")

    return Rate()


@app.command("export")
def export_requests(
    url: UrlOpt = _DEFAULT_URL,
    token: TokenOpt = None,
    fmt: Annotated[str, typer.Option("--format", help="csv | jsonl")] = "csv",
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="File to write (default: stdout)")
    ] = None,
    bodies: Annotated[bool, typer.Option(help="Add the request and response bodies")] = False,
    currency: Annotated[str | None, typer.Option(help="Cost column currency: yours or USD")] = None,
    initiator: InitiatorOpt = None,
    org: OrgOpt = None,
    api_key: ApiKeyOpt = None,
    provider: ProviderOpt = None,
    model: ModelOpt = None,
    status: StatusOpt = None,
    status_code: StatusCodeOpt = None,
    client: ClientOpt = None,
    workflow: WorkflowOpt = None,
    session: SessionOpt = None,
    tag: TagOpt = None,
    end_user: EndUserOpt = None,
    meta: MetaOpt = None,
    since: SinceOpt = None,
    started_after: AfterOpt = None,
    started_before: BeforeOpt = None,
    q: QOpt = None,
) -> None:
    """Export every matching record as CSV or JSON Lines, streamed (any size)."""
    import httpx
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    if fmt not in ("csv", "jsonl"):
        _fail(f"--format: {fmt!r} is not one of csv, jsonl", 2)
    if not token:
        _fail("no key: pass --token or set GATEWATCH_TOKEN")
    params = _filters(
        initiator=initiator, org=org, api_key=api_key, provider=provider, model=model,
        status=status, status_code=status_code, client=client, workflow=workflow,
        session=session, tag=tag, end_user=end_user, meta=meta, since=since,
        started_after=started_after, started_before=started_before, q=q,
    )  # fmt: skip
    params += [("format", fmt), ("bodies", "true" if bodies else "false")]
    if currency:
        params.append(("currency", currency))
    counter = _CsvRecords() if fmt == "csv" else _JsonLines()
    partial = f"{output}.part" if output else None  # renamed to FILE once complete
    err = Console(stderr=True)
    started = time.monotonic()
    answered = False
    try:
        with httpx.stream(
            "GET", url.rstrip("/") + "/api/v1/requests/export", params=tuple(params),
            headers={"Authorization": f"Bearer {token}"}, timeout=httpx.Timeout(30, read=300),
        ) as resp:  # fmt: skip
            answered = True
            if resp.status_code >= 400:
                resp.read()
                try:
                    message = resp.json()["error"]["message"]
                except Exception:
                    message = resp.text
                _fail(f"{resp.status_code}: {message}")
            total = int(resp.headers.get("x-total-count", "0") or 0)
            progress = Progress(
                "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                _rate_column(), TimeRemainingColumn(), console=err,
                disable=not sys.stderr.isatty(),
            )  # fmt: skip
            with open(partial, "wb") if partial else _Stdout() as out, progress:
                task = progress.add_task("exporting", total=total or None)
                for chunk in resp.iter_bytes():
                    out.write(chunk)
                    progress.advance(task, counter.feed(chunk))
        if partial and output:
            os.replace(partial, output)
    except httpx.HTTPError as exc:
        if not answered:
            _fail(f"cannot reach the gateway at {url}: {exc}")
        _fail(f"the export stopped after {max(counter.count, 0):,} records: {exc!r}")
    except BrokenPipeError:  # e.g. `| head`: the reader has all it wanted
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (no second error at exit)
        raise typer.Exit(1) from None
    finally:
        if partial and os.path.exists(partial):
            os.remove(partial)
    elapsed = time.monotonic() - started
    err.print(f"wrote {max(counter.count, 0):,} records to {output or 'stdout'} in {elapsed:.1f} s",
              highlight=False)  # fmt: skip


class _Stdout:
    """stdout as a binary file that stays open."""

    def __enter__(self) -> Any:
        return sys.stdout.buffer

    def __exit__(self, *exc: object) -> None:
        sys.stdout.buffer.flush()


# ---- rollups ---------------------------------------------------------------------------------


@rollups_app.command("rebuild")
def rollups_rebuild(
    config: Annotated[str | None, typer.Option("--config", envvar="GATEWATCH_CONFIG")] = None,
) -> None:
    """Recompute the usage rollups from the stored records (run on the gateway's host: it
    opens the database of the configuration itself)."""
    from rich.progress import Progress

    from gatewatch.store import open_store

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        _fail(f"invalid configuration: {exc}", 2)
    try:
        store = open_store(settings.database, settings.database_pool_size)
    except ValueError as exc:
        _fail(str(exc), 2)
    err = Console(stderr=True)
    started = time.monotonic()
    try:
        store.migrate()
        with Progress(console=err, disable=not sys.stderr.isatty()) as progress:
            task = progress.add_task("rebuilding rollups", total=None)

            def report(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            records = store.rebuild_rollups(report)
    finally:
        store.close()
    err.print(f"rebuilt the usage rollups from {records:,} records in "
              f"{time.monotonic() - started:.1f} s", highlight=False)  # fmt: skip


# ---- keys ------------------------------------------------------------------------------------


_KEY_COLUMNS = ("id", "name", "user", "org", "role", "budget_usd", "rpm", "tpm", "revoked")
BudgetOpt = Annotated[
    float | None, typer.Option("--budget", "--budget-usd", help="Spend cap in USD per period")
]
PeriodOption = typer.Option("--period", "--budget-period", help="day | week | month | total")
RpmOpt = Annotated[int | None, typer.Option(help="Requests per minute")]
TpmOpt = Annotated[int | None, typer.Option(help="Tokens per minute")]


@keys_app.command("create")
def keys_create(
    user: Annotated[str, typer.Option(help="User name (created when new)")],
    url: UrlOpt = _DEFAULT_URL,
    token: TokenOpt = None,
    name: Annotated[str | None, typer.Option()] = None,
    org: Annotated[str | None, typer.Option(help="Organization name (created when new)")] = None,
    role: Annotated[str, typer.Option(help="member | admin | owner")] = "member",
    budget_usd: BudgetOpt = None,
    budget_period: Annotated[str, PeriodOption] = "month",
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    fmt: FormatOpt = "table",
) -> None:
    """Create a key. Its secret is printed this once."""
    if fmt not in ("table", "json", "csv"):
        _fail(f"--format: {fmt!r} is not one of table, json, csv", 2)
    body = _given(
        user=user,
        name=name,
        org=org,
        role=role,
        budget_usd=budget_usd,
        budget_period=budget_period,
        rpm=rpm,
        tpm=tpm,
    )
    row = _api(url, token, "POST", "/api/v1/keys", json=body)
    if fmt == "json":
        sys.stdout.write(json.dumps(row, indent=2) + "\n")
        return
    _print_rows([row], fmt, _KEY_COLUMNS)
    Console().print(f"key (shown once): [bold]{row['key']}[/bold]")


def _entity_commands(kind: str, columns: tuple[str, ...]) -> typer.Typer:
    """``list``, ``set-limits`` and ``revoke`` for keys, users or orgs (and ``create`` for users
    and orgs: keys have their own, which prints the secret)."""
    sub = typer.Typer(help=f"{kind.capitalize()}.", no_args_is_help=True)
    path = f"/api/v1/{kind}"

    @sub.command("list")
    def list_(url: UrlOpt = _DEFAULT_URL, token: TokenOpt = None, fmt: FormatOpt = "table",
              limit: Annotated[int, typer.Option()] = 100) -> None:  # fmt: skip
        """List what this key may see."""
        _print_rows(_api(url, token, "GET", path, params={"limit": limit})["results"], fmt, columns)

    @sub.command("set-budget", hidden=True)  # the name §L and the docs of other tools use
    @sub.command("set-limits")
    def set_limits(
        entity_id: Annotated[str, typer.Argument(help="The id")],
        url: UrlOpt = _DEFAULT_URL,
        token: TokenOpt = None,
        budget_usd: BudgetOpt = None,
        budget_period: Annotated[str | None, PeriodOption] = None,
        rpm: RpmOpt = None,
        tpm: TpmOpt = None,
    ) -> None:
        """Set a budget and rate limits."""
        body = _given(budget_usd=budget_usd, budget_period=budget_period, rpm=rpm, tpm=tpm)
        if not body:
            _fail("nothing to change: give --budget, --period, --rpm or --tpm", 2)
        row = _api(url, token, "PATCH", f"{path}/{entity_id}", json=body)
        _print_rows([row], "table", columns)

    @sub.command("revoke")
    def revoke(entity_id: Annotated[str, typer.Argument(help="The id")],
               url: UrlOpt = _DEFAULT_URL, token: TokenOpt = None) -> None:  # fmt: skip
        """Revoke at once (for users and orgs: all their keys stop working)."""
        row = _api(url, token, "DELETE", f"{path}/{entity_id}")
        Console().print(f"revoked {row['id']} ({row['name']})")

    if kind != "keys":

        @sub.command("create")
        def create(
            name: Annotated[str, typer.Option(help="Name")],
            url: UrlOpt = _DEFAULT_URL,
            token: TokenOpt = None,
            org: Annotated[str | None, typer.Option(help="Organization (users)")] = None,
            budget_usd: BudgetOpt = None,
            budget_period: Annotated[str | None, PeriodOption] = None,
            rpm: RpmOpt = None,
            tpm: TpmOpt = None,
        ) -> None:
            """Create one."""
            body = _given(name=name, org=org, budget_usd=budget_usd,
                          budget_period=budget_period, rpm=rpm, tpm=tpm)  # fmt: skip
            _print_rows([_api(url, token, "POST", path, json=body)], "table", columns)

    return sub


_LIMIT_COLUMNS = ("budget_usd", "budget_period", "rpm", "tpm", "revoked")
keys_app.registered_commands += _entity_commands("keys", _KEY_COLUMNS).registered_commands
app.add_typer(_entity_commands("users", ("id", "name", "org", *_LIMIT_COLUMNS)), name="users")
app.add_typer(_entity_commands("orgs", ("id", "name", *_LIMIT_COLUMNS)), name="orgs")


@app.command()
def balance(url: UrlOpt = _DEFAULT_URL, token: TokenOpt = None, fmt: FormatOpt = "table") -> None:
    """This key's budgets: limit, spent this period, remaining, when it resets."""
    rows = _api(url, token, "GET", "/api/v1/billing/balance")["budgets"]
    _print_rows(rows, fmt, ("scope", "name", "period", "limit_usd", "spent_usd",
                            "remaining_usd", "period_end"))  # fmt: skip


def main() -> None:
    import gatewatch.cli_admin
    import gatewatch.cli_usage  # noqa: F401  (these register their commands)

    app()

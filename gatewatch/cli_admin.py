"""Commands that work on the database directly, beside a running gateway: ``gatewatch retention
run`` (§L), which reads the same configuration as ``gatewatch serve``, and ``gatewatch migrate``,
which moves a database to another (SQLite → PostgreSQL) while the gateway is stopped."""

from __future__ import annotations

import logging
import sys
import time
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from gatewatch.cli import _fail, app
from gatewatch.settings import ConfigError, Settings, load_settings

__all__ = ["migrate", "retention_app"]

retention_app = typer.Typer(help="Retention (§T1): purge old records now.", no_args_is_help=True)
app.add_typer(retention_app, name="retention")
ConfigOpt = Annotated[str | None, typer.Option("--config", envvar="GATEWATCH_CONFIG")]


def _settings(config: str | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        _fail(f"invalid configuration: {exc}", 2)
        raise AssertionError from exc  # unreachable


@retention_app.command("run")
def retention_run(
    config: ConfigOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count, remove nothing")] = False,
) -> None:
    """Purge what the retention settings say is due now (or, with --dry-run, count it)."""
    from gatewatch.retention import Retention
    from gatewatch.store import open_store

    settings = _settings(config)
    store = open_store(settings.database, settings.database_pool_size)
    store.migrate()
    counts = Retention(store, settings.retention).run_once(dry_run=dry_run)
    table = Table("what", "would go" if dry_run else "removed")
    for label, n in counts.items():
        table.add_row(label, f"{n:,}")
    if not counts:
        table.add_row("nothing (every retention is 0 = forever)", "0")
    Console(width=None if sys.stdout.isatty() else 120).print(table)
    store.close()


@app.command("migrate")
def migrate(
    source: Annotated[
        str, typer.Option("--from", help="The database to copy: sqlite:///path or postgresql://…")
    ],
    target: Annotated[
        str, typer.Option("--to", help="The database to fill (made and migrated when new)")
    ],
    batch: Annotated[int, typer.Option(min=1, help="Rows per transaction, at most")] = 5000,
) -> None:
    """Copy a gatewatch database into another (SQLite → PostgreSQL, or any pair): every key,
    record, rollup and alert, then check the copy. Stop the gateway first. Run it again after
    an interruption: it goes on where it stopped."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TimeRemainingColumn

    from gatewatch import migrate as m

    logging.getLogger("psycopg").setLevel(logging.ERROR)  # not a warning at each Ctrl-C
    err = Console(stderr=True)
    started = time.monotonic()
    opened: list[m.Database] = []
    try:
        opened.append(m.open_database(source, "--from"))
        opened.append(m.open_database(target, "--to"))
        src, dst = opened
        applied, tables = m.prepare(src, dst)
        if applied:
            err.print(f"brought the source's schema up to date: {', '.join(applied)}")
        err.print(f"copying {src.url} → {dst.url}", highlight=False)
        tty = sys.stderr.isatty()
        progress = Progress("[progress.description]{task.description}", BarColumn(),
                            MofNCompleteColumn(), TimeRemainingColumn(), console=err,
                            disable=not tty)  # fmt: skip
        tasks: dict[str, TaskID] = {}

        def report(table: m.Table, rows: int, finished: bool) -> None:
            if table.name not in tasks:
                tasks[table.name] = progress.add_task(table.name, total=table.total,
                                                      completed=table.done)  # fmt: skip
            progress.advance(tasks[table.name], rows)
            if finished:
                progress.update(tasks[table.name], completed=table.total)
                if not tty:
                    err.print(f"{table.name}: {table.total:,} rows", highlight=False)

        with progress:
            copied = m.copy_tables(src, dst, tables, batch, report)
        checks = m.verify(src, dst, tables)
    except KeyboardInterrupt:
        _fail("interrupted: what was copied stays; run the same command again to go on", 130)
    except m.errors() as exc:
        _fail(m.redact(str(exc), source, target))
    finally:
        for db in opened:
            db.close()
    table = Table("table", "check", "source", "target", "")
    for c in checks:
        same = "[green]same[/green]" if c.ok else "[red]DIFFERS[/red]"
        table.add_row(c.table, c.what, _figure(c.source), _figure(c.target), same)
    Console(width=None if sys.stdout.isatty() else 120).print(table)
    bad = [c for c in checks if not c.ok]
    if bad:
        _fail("the copy differs from the source: " + "; ".join(
            f"{c.table}: {c.what} {_figure(c.source)} in the source, {_figure(c.target)} in the"
            " target" for c in bad) + f" (stop the gateway first; {m.NEW_TARGET})")  # fmt: skip
    err.print(f"copied {copied:,} rows in {time.monotonic() - started:.1f} s; every table"
              " checked", highlight=False)  # fmt: skip


def _figure(value: float) -> str:
    return f"{value:,.6f}" if isinstance(value, float) else f"{value:,}"

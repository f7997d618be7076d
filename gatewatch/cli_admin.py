"""Commands that work on the database directly, beside a running gateway: ``gatewatch retention
run`` (§L). They read the same configuration as ``gatewatch serve``."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from gatewatch.cli import _fail, app
from gatewatch.settings import ConfigError, Settings, load_settings

__all__ = ["retention_app"]

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

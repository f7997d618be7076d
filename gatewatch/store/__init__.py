"""The record store: one interface, several engines (SQLite is the reference)."""

from gatewatch.store.base import Identity, Page, Store, StoreError, StoreUnavailable
from gatewatch.store.query import FilterError, RequestQuery, Scope, parse_filters
from gatewatch.store.sqlite import SQLiteStore
from gatewatch.store.writer import RecordWriter

__all__ = [
    "FilterError",
    "Identity",
    "Page",
    "RecordWriter",
    "RequestQuery",
    "SQLiteStore",
    "Scope",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "open_store",
    "parse_filters",
]


def open_store(database: str, pool_size: int = 10) -> Store:
    """The store a ``database`` URL names: ``sqlite:///path`` or ``postgresql://…``."""
    if database.startswith("sqlite:///"):
        return SQLiteStore(database.removeprefix("sqlite:///"))
    if database.startswith(("postgresql://", "postgres://")):
        from gatewatch.store.postgres import PostgresStore  # psycopg loads only when used

        return PostgresStore(database, pool_size)
    raise ValueError(f"unsupported database URL: {database}")

"""The gateway's storage interface: one transaction API over SQLite and PostgreSQL.

All gateway SQL goes through :class:`Transaction`, written once in the dialect SQLite and
PostgreSQL share: ``?`` placeholders (the PostgreSQL backend numbers them), ``INSERT ... ON
CONFLICT``, ``RETURNING``, ``DOUBLE PRECISION`` timestamps (Unix seconds), ``BIGINT``,
``TEXT``, ``BYTEA``, no vendor functions. Where the dialects must differ, the transaction
says how (:meth:`Transaction.for_update`); migrations use one token, ``AUTO_ID``.

``open_database(url)`` picks the backend: a file path or ``sqlite:///path`` for the embedded
default, ``postgresql://user@host:port/db[?schema=name]`` for production (ADR 0004).
"""

from collections.abc import Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Literal, Protocol

from gateway.schema import MIGRATIONS

__all__ = [
    "MAX_PARAMS",
    "MIGRATIONS",
    "Database",
    "Dialect",
    "Params",
    "Row",
    "Transaction",
    "insert_values",
    "open_database",
    "values_chunks",
]

Row = tuple[Any, ...]
Params = Sequence[Any]
Dialect = Literal["sqlite", "postgresql"]

MAX_PARAMS = 32_766
"""Parameters one statement may bind on both backends: SQLite's default limit (PostgreSQL
allows 32,767)."""


class Transaction(Protocol):
    """Statements inside one database transaction."""

    dialect: Dialect

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run a statement; returns the number of rows it changed."""
        ...

    async def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        """Run a statement once per parameter row."""
        ...

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        """First row of a query, or None."""
        ...

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        """All rows of a query."""
        ...

    def for_update(self, *, of: str | None = None, skip_locked: bool = False) -> str:
        """The row-locking suffix for a ``SELECT`` (empty on SQLite, whose write transactions
        already exclude each other): lock the rows of table alias ``of`` (default: all),
        or with ``skip_locked`` pass over rows another transaction holds (work claiming)."""
        ...


class Database(Protocol):
    """A pool of transactions on one database."""

    dialect: Dialect

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """``async with db.transaction() as tx:`` commits on success, rolls back on error."""
        ...

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        """A read in a transaction of its own."""
        ...

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        """A read in a transaction of its own."""
        ...

    async def close(self) -> None:
        """Close every connection."""
        ...


def placeholders(n: int) -> str:
    """``?, ?, ...`` for an ``IN (...)`` list of ``n`` values."""
    return ", ".join("?" * n)


def values_chunks(
    rows: Sequence[Params], width: int, max_params: int = MAX_PARAMS
) -> Iterator[Sequence[Params]]:
    """``rows`` cut into runs that bind at most ``max_params`` parameters of ``width`` each
    (one statement per run)."""
    per = max(1, max_params // max(1, width))
    for start in range(0, len(rows), per):
        yield rows[start : start + per]


async def insert_values(
    tx: Transaction,
    head: str,
    rows: Sequence[Params],
    tail: str = "",
    *,
    row: str | None = None,
    max_params: int = MAX_PARAMS,
) -> list[Row]:
    """``head VALUES row, row, ... tail`` for every row at once: one statement per
    ``max_params`` parameters rather than one per row (both drivers run ``executemany`` row
    by row). ``row`` is each row's ``(?, ...)`` (default: one ``?`` per value); ``tail`` may
    end in ``RETURNING``, whose rows are returned."""
    if not rows:
        return []
    width = len(rows[0])
    one = row or f"({placeholders(width)})"
    suffix = f" {tail}" if tail else ""
    found: list[Row] = []
    for chunk in values_chunks(rows, width, max_params):
        sql = f"{head} VALUES " + ", ".join([one] * len(chunk)) + suffix
        found += await tx.fetchall(sql, [value for r in chunk for value in r])
    return found


async def open_database(url: str | Path) -> Database:
    """Open (and migrate) the database ``url`` names."""
    text = str(url)
    if text.startswith(("postgresql://", "postgres://")):
        from gateway.postgres import PostgresDatabase

        return await PostgresDatabase.open(text)
    from gateway.sqlite import SqliteDatabase

    return await SqliteDatabase.open(Path(text.removeprefix("sqlite://")))

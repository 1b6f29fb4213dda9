"""The gateway's storage interface: one transaction API over SQLite and PostgreSQL.

All gateway SQL goes through :class:`Transaction`, written once in the dialect SQLite and
PostgreSQL share: ``?`` placeholders (the PostgreSQL backend numbers them), ``INSERT ... ON
CONFLICT``, ``RETURNING``, ``DOUBLE PRECISION`` timestamps (Unix seconds), ``BIGINT``,
``TEXT``, ``BYTEA``, no vendor functions. Where the dialects must differ, the transaction
says how (:meth:`Transaction.for_update`); migrations use one token, ``AUTO_ID``.

``open_database(url)`` picks the backend: a file path or ``sqlite:///path`` for the embedded
default, ``postgresql://user@host:port/db[?schema=name]`` for production (ADR 0004).
"""

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Literal, Protocol

from gateway.schema import MIGRATIONS

__all__ = ["MIGRATIONS", "Database", "Dialect", "Params", "Row", "Transaction", "open_database"]

Row = tuple[Any, ...]
Params = Sequence[Any]
Dialect = Literal["sqlite", "postgresql"]


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


async def open_database(url: str | Path) -> Database:
    """Open (and migrate) the database ``url`` names."""
    text = str(url)
    if text.startswith(("postgresql://", "postgres://")):
        from gateway.postgres import PostgresDatabase

        return await PostgresDatabase.open(text)
    from gateway.sqlite import SqliteDatabase

    return await SqliteDatabase.open(Path(text.removeprefix("sqlite://")))

"""The embedded storage backend: one SQLite file through aiosqlite, in WAL mode.

SQLite has one writer at a time, so transactions share one connection and are serialized
by a lock; ``BEGIN IMMEDIATE`` takes the write lock up front so that a read-then-write
transaction cannot fail half-way on a busy database.
"""

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiosqlite

from gateway.database import Dialect, Params, Row
from gateway.schema import migrate

AUTO_ID = "INTEGER PRIMARY KEY"
CHECKPOINT_INTERVAL_S = 1.0

log = logging.getLogger(__name__)


class SqliteTransaction:
    """Statements inside one SQLite transaction."""

    dialect: Dialect = "sqlite"

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._c = connection

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run a statement; returns the number of rows it changed."""
        cursor = await self._c.execute(sql, params)
        return cursor.rowcount

    async def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        """Run a statement once per parameter row."""
        if rows:
            await self._c.executemany(sql, rows)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        """First row of a query, or None."""
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        """All rows of a query, read in one call on the connection's thread: a cursor left
        open across an ``await`` would pin its snapshot for every read sharing the
        connection, so they would miss commits made meanwhile."""
        return [tuple(r) for r in await self._c.execute_fetchall(sql, params)]

    def for_update(self, *, of: str | None = None, skip_locked: bool = False) -> str:
        """Nothing: a SQLite write transaction already excludes every other."""
        return ""


class SqliteDatabase:
    """One writing connection, whose transactions are serialized (SQLite has one writer
    anyway), and one reading connection that WAL lets read beside it."""

    dialect: Dialect = "sqlite"

    def __init__(self, connection: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self._c = connection
        self._reader = reader
        self._lock = asyncio.Lock()
        self._checkpoints: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, path: Path) -> "SqliteDatabase":
        """Open the database at ``path`` and bring its schema up to date."""
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = await aiosqlite.connect(path, isolation_level=None)
        # NORMAL is durable across process crashes in WAL mode; only an OS crash or power
        # cut can lose the last commits, and every kiosk keeps its events until acked.
        # Checkpoints move the WAL into the database file and fsync it; left to the writer
        # they cost a third of its time under load, so the reader's thread does them.
        pragmas = ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON",
                   "wal_autocheckpoint=0", "journal_size_limit=67108864")  # fmt: skip
        for pragma in pragmas:
            await connection.execute(f"PRAGMA {pragma}")
        reader = await aiosqlite.connect(path, isolation_level=None)
        db = cls(connection, reader)
        await db._migrate()
        db._checkpoints = asyncio.create_task(db._checkpoint_every(CHECKPOINT_INTERVAL_S))
        return db

    async def _checkpoint_every(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)  # a timer: checkpoints are due by time, not event
            try:
                await self._reader.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:
                log.warning("WAL checkpoint failed (will retry): %s", exc)

    async def _migrate(self) -> None:
        async with self.transaction() as tx:
            await migrate(tx, AUTO_ID)

    async def close(self) -> None:
        """Checkpoint, then close both connections."""
        if self._checkpoints is not None:
            self._checkpoints.cancel()
            await asyncio.wait([self._checkpoints])
        await self._reader.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        await self._reader.close()
        await self._c.close()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqliteTransaction]:
        """``async with db.transaction() as tx:`` commits on success, rolls back on error."""
        async with self._lock:
            await self._begin()
            try:
                yield SqliteTransaction(self._c)
            except BaseException:
                await self._c.execute("ROLLBACK")
                raise
            await self._c.execute("COMMIT")

    async def _begin(self) -> None:
        """``BEGIN IMMEDIATE`` that a cancel cannot leave half done: the statement runs on the
        connection's thread whatever happens to the awaiting task, so on a cancel it is
        awaited to its end and rolled back before the lock is given up (else every later
        transaction fails with "cannot start a transaction within a transaction")."""
        begin = asyncio.ensure_future(self._c.execute("BEGIN IMMEDIATE"))
        try:
            await asyncio.shield(begin)
        except asyncio.CancelledError:
            with contextlib.suppress(sqlite3.Error):
                await begin
                await self._c.execute("ROLLBACK")
            raise

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        """A read of the last committed state, beside any running write."""
        return await SqliteTransaction(self._reader).fetchone(sql, params)

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        """A read of the last committed state, beside any running write."""
        return await SqliteTransaction(self._reader).fetchall(sql, params)

"""The gateway's storage: SQLite (aiosqlite, WAL) behind a small transaction interface.

All SQL in the gateway goes through :class:`Database`, written in the dialect SQLite and
PostgreSQL share (``INSERT ... ON CONFLICT DO NOTHING``, no vendor functions), so that a
PostgreSQL implementation of the same interface can replace this one.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

Row = tuple[Any, ...]
Params = Sequence[Any]

MIGRATIONS: list[str] = [
    # 1: the spine
    """
    CREATE TABLE merchants (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        refund_policy TEXT NOT NULL,
        currency TEXT NOT NULL
    );
    CREATE TABLE stores (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        config_version INTEGER NOT NULL DEFAULT 0,
        config_body TEXT
    );
    CREATE TABLE signing_keys (
        kid TEXT PRIMARY KEY,
        private_key BLOB NOT NULL,
        created_at REAL NOT NULL,
        active INTEGER NOT NULL
    );
    CREATE TABLE returns (
        id TEXT PRIMARY KEY,
        merchant TEXT NOT NULL REFERENCES merchants (id),
        order_id TEXT NOT NULL,
        items TEXT NOT NULL,
        item_count INTEGER NOT NULL,
        reason TEXT NOT NULL,
        amount_minor INTEGER NOT NULL,
        currency TEXT NOT NULL,
        method TEXT NOT NULL,
        size TEXT NOT NULL,
        stores TEXT NOT NULL,
        customer TEXT NOT NULL,
        state TEXT NOT NULL,
        short_code TEXT NOT NULL UNIQUE,
        voucher TEXT NOT NULL,
        expires_at REAL NOT NULL,
        store TEXT,
        device TEXT,
        tote_id TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX returns_tote ON returns (tote_id);
    CREATE INDEX returns_state ON returns (state);
    CREATE TABLE return_history (
        id INTEGER PRIMARY KEY,
        return_id TEXT NOT NULL REFERENCES returns (id),
        from_state TEXT,
        to_state TEXT NOT NULL,
        cause_kind TEXT NOT NULL,
        cause_id TEXT,
        at REAL NOT NULL
    );
    CREATE INDEX return_history_return ON return_history (return_id);
    CREATE TABLE events (
        id TEXT PRIMARY KEY,
        store TEXT NOT NULL,
        device TEXT NOT NULL,
        seq INTEGER NOT NULL,
        session INTEGER NOT NULL,
        type TEXT NOT NULL,
        historical INTEGER NOT NULL,
        body TEXT NOT NULL,
        ts REAL NOT NULL,
        received_at REAL NOT NULL
    );
    CREATE INDEX events_device_seq ON events (store, device, seq);
    CREATE TABLE dead_letters (
        id INTEGER PRIMARY KEY,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        received_at REAL NOT NULL
    );
    CREATE TABLE totes (
        id TEXT PRIMARY KEY,
        store TEXT NOT NULL REFERENCES stores (id),
        state TEXT NOT NULL,
        item_count INTEGER NOT NULL DEFAULT 0,
        opened_at REAL NOT NULL,
        closed_at REAL,
        close_reason TEXT,
        carrier TEXT,
        waybill TEXT,
        pickup_start REAL,
        pickup_end REAL,
        booking_attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        last_error TEXT
    );
    CREATE UNIQUE INDEX totes_one_open ON totes (store) WHERE state = 'open';
    CREATE INDEX totes_waybill ON totes (waybill);
    CREATE TABLE commands (
        id TEXT PRIMARY KEY,
        store TEXT NOT NULL,
        device TEXT NOT NULL,
        name TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at REAL NOT NULL,
        sent_at REAL,
        outcome TEXT,
        outcome_at REAL
    );
    CREATE TABLE tracking (
        carrier TEXT NOT NULL,
        waybill TEXT NOT NULL,
        state TEXT NOT NULL,
        carrier_state TEXT NOT NULL,
        at REAL NOT NULL,
        detail TEXT NOT NULL,
        received_at REAL NOT NULL,
        PRIMARY KEY (carrier, waybill, carrier_state, at)
    );
    CREATE TABLE refunds (
        return_id TEXT PRIMARY KEY REFERENCES returns (id),
        status TEXT NOT NULL,
        provider TEXT NOT NULL,
        provider_refund_id TEXT,
        amount_minor INTEGER NOT NULL,
        currency TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        last_error TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE device_presence (
        store TEXT NOT NULL,
        device TEXT NOT NULL,
        online INTEGER NOT NULL,
        session INTEGER NOT NULL,
        version TEXT NOT NULL,
        seen_at REAL NOT NULL,
        PRIMARY KEY (store, device)
    );
    """,
    # 2: carriers — the chosen service of a tote, shipments to track, the exception queue
    """
    ALTER TABLE totes ADD COLUMN service TEXT;
    ALTER TABLE totes ADD COLUMN product TEXT;
    ALTER TABLE totes ADD COLUMN choice TEXT;
    CREATE TABLE shipments (
        carrier TEXT NOT NULL,
        waybill TEXT NOT NULL,
        order_code TEXT NOT NULL,
        product TEXT NOT NULL,
        tote_id TEXT,
        return_id TEXT,
        booking_id TEXT,
        state TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        last_news_at DOUBLE PRECISION NOT NULL,
        next_poll_at DOUBLE PRECISION NOT NULL,
        polls BIGINT NOT NULL DEFAULT 0,
        finished_at DOUBLE PRECISION,
        PRIMARY KEY (carrier, waybill)
    );
    CREATE INDEX shipments_due ON shipments (next_poll_at) WHERE finished_at IS NULL;
    CREATE INDEX shipments_tote ON shipments (tote_id);
    CREATE INDEX shipments_return ON shipments (return_id);
    CREATE TABLE carrier_exceptions (
        id TEXT PRIMARY KEY,
        subject TEXT NOT NULL,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        carrier TEXT,
        waybill TEXT,
        tote_id TEXT,
        return_id TEXT,
        carrier_state TEXT,
        opened_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        resolved_at DOUBLE PRECISION,
        resolution TEXT,
        resolved_by TEXT,
        note TEXT
    );
    CREATE UNIQUE INDEX carrier_exceptions_one_open ON carrier_exceptions (subject)
        WHERE resolved_at IS NULL;
    CREATE INDEX carrier_exceptions_opened ON carrier_exceptions (opened_at);
    """,
]


class Transaction:
    """Statements inside one database transaction."""

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._c = connection

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run a statement; returns the number of rows it changed."""
        cursor = await self._c.execute(sql, params)
        return cursor.rowcount

    async def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        """Run a statement once per parameter row."""
        await self._c.executemany(sql, rows)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        """First row of a query, or None."""
        async with self._c.execute(sql, params) as cursor:
            row = await cursor.fetchone()
        return None if row is None else tuple(row)

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        """All rows of a query."""
        async with self._c.execute(sql, params) as cursor:
            return [tuple(r) for r in await cursor.fetchall()]


class Database:
    """One SQLite connection; transactions are serialized (SQLite has one writer anyway)."""

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._c = connection
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> "Database":
        """Open the database at ``path`` and bring its schema up to date."""
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = await aiosqlite.connect(path, isolation_level=None)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
            await connection.execute(f"PRAGMA {pragma}")
        db = cls(connection)
        await db._migrate()
        return db

    async def _migrate(self) -> None:
        async with self.transaction() as tx:
            await tx.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER)")
            row = await tx.fetchone("SELECT max(version) FROM schema_version")
            current = int(row[0]) if row and row[0] is not None else 0
            for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
                for statement in filter(str.strip, script.split(";")):
                    await tx.execute(statement)
                await tx.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))

    async def close(self) -> None:
        """Close the connection."""
        await self._c.close()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """``async with db.transaction() as tx:`` commits on success, rolls back on error."""
        async with self._lock:
            await self._c.execute("BEGIN IMMEDIATE")
            try:
                yield Transaction(self._c)
            except BaseException:
                await self._c.execute("ROLLBACK")
                raise
            await self._c.execute("COMMIT")

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        """A read outside any explicit transaction."""
        async with self.transaction() as tx:
            return await tx.fetchone(sql, params)

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        """A read outside any explicit transaction."""
        async with self.transaction() as tx:
            return await tx.fetchall(sql, params)

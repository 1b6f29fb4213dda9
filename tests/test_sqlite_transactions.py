"""The SQLite backend's transactions survive their task being cancelled at any point: the
next transaction still starts (a cancel during ``BEGIN`` once left the shared connection
inside a transaction, and every later one failed)."""

import asyncio
from pathlib import Path

import pytest

from gateway.sqlite import SqliteDatabase


@pytest.mark.parametrize("yields", [0, 1, 2, 3, 5, 8])
async def test_a_cancelled_transaction_leaves_the_connection_usable(
    tmp_path: Path, yields: int
) -> None:
    db = await SqliteDatabase.open(tmp_path / "g.sqlite3")
    try:

        async def work() -> None:
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO stores (id, name) VALUES ('s-1', 'one')")
                await asyncio.Event().wait()  # held until cancelled

        task = asyncio.create_task(work())
        for _ in range(yields):
            await asyncio.sleep(0)  # let it reach BEGIN, or further, before the cancel
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO stores (id, name) VALUES ('s-2', 'two')")
        rows = await db.fetchall("SELECT id FROM stores ORDER BY id")
        assert rows == [("s-2",)], "the cancelled one rolled back, the next committed"
    finally:
        await db.close()

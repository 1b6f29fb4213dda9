"""The kiosk's SQLite file: outbox order and atomicity, used vouchers, compartments, commands."""

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge.database import EdgeDatabase
from protocol.messages import StoreConfig
from protocol.sizes import SizeClass


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[EdgeDatabase]:
    database = await EdgeDatabase.open(tmp_path / "edge.sqlite3")
    await database.sync_compartments(
        [("A1", SizeClass.S), ("A2", SizeClass.M), ("A3", SizeClass.L)]
    )
    yield database
    await database.close()


async def test_wal_mode(db: EdgeDatabase, tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "edge.sqlite3") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_seq_is_monotonic_across_acks_and_reopen(db: EdgeDatabase, tmp_path: Path) -> None:
    seqs = [
        await db.append_event(event_id=f"e{i}", event_type="fault", session=1, body="{}")
        for i in range(3)
    ]
    assert seqs == [1, 2, 3]
    assert await db.acknowledge(["e0", "e1", "e2"]) == 3
    reopened = await EdgeDatabase.open(tmp_path / "edge.sqlite3")
    try:
        assert (
            await reopened.append_event(event_id="e4", event_type="fault", session=2, body="{}")
            == 4
        )
        assert [r.id for r in await reopened.pending()] == ["e4"]
    finally:
        await reopened.close()


async def test_dropoff_marks_voucher_and_compartment_in_one_transaction(db: EdgeDatabase) -> None:
    await db.append_event(
        event_id="e1", event_type="dropoff", session=1, body="{}", used_return="r1", occupy="A2"
    )
    assert await db.voucher_used("r1")
    assert (await db.occupancy())["A2"] == "r1"
    assert await db.free_compartments(SizeClass.M) == ["A3"]
    # A repeated event id fails as a whole: neither voucher nor compartment change.
    with pytest.raises(Exception, match="UNIQUE"):
        await db.append_event(
            event_id="e1", event_type="dropoff", session=1, body="{}", used_return="r2", occupy="A3"
        )
    assert not await db.voucher_used("r2")
    assert (await db.occupancy())["A3"] is None


async def test_free_compartments_fit_smallest_first(db: EdgeDatabase) -> None:
    assert await db.free_compartments(SizeClass.S) == ["A1", "A2", "A3"]
    assert await db.free_compartments(SizeClass.XL) == []
    await db.set_out_of_order("A1", True)
    assert await db.free_compartments(SizeClass.S) == ["A2", "A3"]


async def test_store_config_only_moves_forward(db: EdgeDatabase) -> None:
    v2 = StoreConfig(store="s", version=2, voucher_keys={"k": "x"})
    v1 = StoreConfig(store="s", version=1, voucher_keys={})
    assert await db.save_store_config(v2)
    assert not await db.save_store_config(v1)
    config = await db.store_config()
    assert config is not None and config.version == 2


async def test_commands_are_seen_once(db: EdgeDatabase) -> None:
    assert await db.first_sight_of_command("c1")
    assert not await db.first_sight_of_command("c1")

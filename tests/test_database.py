"""Set-based writes on both backends: a multi-row insert or update larger than one
statement may bind is cut into statements that each fit, and does what one statement per
row would have done."""

import time
from collections.abc import AsyncIterator

import pytest

from gateway.database import MAX_PARAMS, Database, insert_values, open_database
from gateway.dropoffs import _into_totes


@pytest.fixture
async def db(gateway_database: str) -> AsyncIterator[Database]:
    database = await open_database(gateway_database)
    try:
        yield database
    finally:
        await database.close()


async def test_an_insert_past_the_parameter_limit_spans_statements(db: Database) -> None:
    per_statement = MAX_PARAMS // 2
    rows = [(f"s-{n:06d}", f"store {n}") for n in range(per_statement + 10)]
    first = rows[per_statement + 3]  # in the second statement, and again in the first
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO stores (id, name) VALUES (?, ?)", first)
        inserted = await insert_values(
            tx,
            "INSERT INTO stores (id, name)",
            [*rows[:5], (first[0], "duplicate"), *rows[5:]],
            "ON CONFLICT (id) DO NOTHING RETURNING id",
        )
    assert sorted(r[0] for r in inserted) == [r[0] for r in rows if r != first]
    stored = await db.fetchall("SELECT id, name FROM stores ORDER BY id")
    assert stored == rows, "each row once, the one there before left alone"


async def test_insert_values_with_a_row_template_and_nothing_to_insert(db: Database) -> None:
    async with db.transaction() as tx:
        assert await insert_values(tx, "INSERT INTO stores (id, name)", []) == []
        await insert_values(
            tx,
            "INSERT INTO stores (id, name, config_version)",
            [(f"s-{n}", "s") for n in range(7)],
            row="(?, ?, 3)",
            max_params=4,  # two rows a statement
        )
    rows = await db.fetchall("SELECT count(*), min(config_version) FROM stores")
    assert rows == [(7, 3)]


@pytest.mark.parametrize("max_params", [MAX_PARAMS, 10])
async def test_returns_go_into_totes_in_chunks(db: Database, max_params: int) -> None:
    count = 10 if max_params == 10 else (MAX_PARAMS - 2) // 4 + 5
    ids = [f"r-{n:06d}" for n in range(count)]
    now = time.time()
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO merchants (id, name, refund_policy, currency) "
                         "VALUES ('m', 'M', 'on_receipt', 'CNY')")  # fmt: skip
        await insert_values(
            tx,
            "INSERT INTO returns (id, merchant, order_id, items, item_count, reason, "
            "amount_minor, currency, method, size, stores, customer, state, short_code, "
            "voucher, expires_at, created_at, updated_at)",
            [
                (
                    rid,
                    "o",
                    "[]",
                    1,
                    "r",
                    100,
                    "CNY",
                    "locker",
                    "M",
                    "[]",
                    "{}",
                    "authorized",
                    f"C{n:09d}",
                    "v",
                    now,
                    now,
                    now,
                )
                for n, rid in enumerate(ids)
            ],
            row="(?, 'm', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        updates = [(rid, f"st-{n % 3}", "k1", f"tote-{n % 3}") for n, rid in enumerate(ids)]
        updates.append((ids[0], "st-9", "k9", "tote-9"))  # named twice: the last one holds
        await _into_totes(tx, updates, now + 1, max_params=max_params)
        await tx.execute("UPDATE returns SET state = 'authorized' WHERE id = ?", (ids[1],))
    rows = await db.fetchall(
        "SELECT id, state, store, device, tote_id, updated_at FROM returns ORDER BY id"
    )
    assert len(rows) == count
    assert rows[0] == (ids[0], "in_tote", "st-9", "k9", "tote-9", now + 1)
    assert rows[1][1] == "authorized"
    for n, row in enumerate(rows[2:], start=2):
        assert row == (ids[n], "in_tote", f"st-{n % 3}", "k1", f"tote-{n % 3}", now + 1)

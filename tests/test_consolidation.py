"""Packing parcels into totes: the pure rule, and the rows it leaves on both backends."""

from gateway.config import ConsolidationRules
from gateway.consolidation import CloseReason, Parcel, ToteSnapshot, add_to_totes, pack, plan
from gateway.database import open_database

NOW = 1_794_967_200.0


def _empty(store: str = "store-1") -> ToteSnapshot:
    return ToteSnapshot("tote-first", store, 0, 0.0, 0.0, NOW)


def test_pack_opens_the_next_tote_when_a_parcel_would_not_fit() -> None:
    rules = ConsolidationRules(max_items=3)
    parcels = [Parcel(f"r{i}", "S") for i in range(7)]
    packing = pack(_empty(), parcels, rules, NOW)
    assert [t.items for t in packing.totes] == [3, 3, 1]
    assert packing.closed == [
        ("tote-first", CloseReason.COUNT),
        (packing.totes[1].tote_id, CloseReason.COUNT),
    ]
    assert packing.tote_of["r0"] == "tote-first"
    assert packing.tote_of["r6"] == packing.totes[2].tote_id


def test_pack_closes_on_weight_and_closes_a_full_last_tote() -> None:
    rules = ConsolidationRules(max_items=100, max_weight_kg=16.0)
    packing = pack(_empty(), [Parcel("a", "XL"), Parcel("b", "XL"), Parcel("c", "XL")], rules, NOW)
    assert [t.items for t in packing.totes] == [2, 1]
    assert packing.closed[0] == ("tote-first", CloseReason.WEIGHT)
    full = pack(_empty(), [Parcel("a", "XL"), Parcel("b", "XL")], rules, NOW)
    assert full.closed == [("tote-first", CloseReason.WEIGHT)]


def test_plan_closes_old_totes_and_leaves_young_ones() -> None:
    rules = ConsolidationRules(daily_cutoff=None, cost=None, max_age_s=3600)
    old = ToteSnapshot("old", "s", 2, 1.0, 6.0, NOW - 7200)
    young = ToteSnapshot("young", "s", 2, 1.0, 6.0, NOW - 60)
    empty = ToteSnapshot("empty", "s", 0, 0.0, 0.0, NOW - 7200)
    assert plan([old, young, empty], rules, NOW) == [("old", CloseReason.AGE)]


async def test_add_to_totes_leaves_one_open_tote_per_store(gateway_database: str) -> None:
    db = await open_database(gateway_database)
    try:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO stores (id, name) VALUES ('store-1', 'One')")
        rules = ConsolidationRules(max_items=4)
        async with db.transaction() as tx:
            first = await add_to_totes(tx, "store-1", [Parcel("r0", "S")], rules)
        assert first.closed == []
        async with db.transaction() as tx:
            more = await add_to_totes(
                tx, "store-1", [Parcel(f"r{i}", "S") for i in range(1, 10)], rules
            )
        assert [reason for _, reason in more.closed] == [CloseReason.COUNT, CloseReason.COUNT]
        rows = await db.fetchall("SELECT state, item_count FROM totes ORDER BY opened_at, state")
        assert sorted(rows) == [("closed", 4), ("closed", 4), ("open", 2)]
        assert more.tote_of["r1"] == first.tote_of["r0"]  # the open tote filled up first
    finally:
        await db.close()

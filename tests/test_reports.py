"""The reports on both backends: returns moved through the real state machine, their history
times then set to known instants so that days, ranges and percentiles can be checked."""

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from gateway import carrier_exceptions, reports
from gateway.carrier_exceptions import Reason, Subject
from gateway.reports import ReportName, Scope
from gateway.returns import ReturnState
from tests.gateway_world import MERCHANT, World, open_world

SHANGHAI = "Asia/Shanghai"


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.fixture
async def world(gateway_database: str) -> AsyncIterator[World]:
    async for w in open_world(gateway_database):
        yield w


async def _set_time(world: World, return_id: str, state: str, at: float) -> None:
    async with world.db.transaction() as tx:
        await tx.execute(
            "UPDATE return_history SET at = ? WHERE return_id = ? AND to_state = ?",
            (at, return_id, state),
        )


async def _other_tenant(world: World) -> str:
    async with world.db.transaction() as tx:
        await tx.execute(
            "INSERT INTO merchants (id, name, refund_policy, currency) "
            "VALUES ('beta', 'Beta', 'on_receipt', 'CNY')"
        )
    other = await world.create_return(99)
    async with world.db.transaction() as tx:
        await tx.execute("UPDATE returns SET merchant = 'beta' WHERE id = ?", (other,))
    return other


async def test_reports(world: World) -> None:
    reasons = ["too small", "damaged", "too small", "changed mind"]
    ids = [await world.create_return(i, reason=r) for i, r in enumerate(reasons)]
    other = await _other_tenant(world)
    # Drop-offs either side of midnight in Shanghai (UTC+8): 15:30Z is 23:30 on the 1st.
    dropped = {ids[0]: "2026-01-01T15:30:00", ids[1]: "2026-01-01T16:30:00",
               ids[2]: "2026-01-01T16:45:00", other: "2026-01-01T16:50:00"}  # fmt: skip
    for return_id, at in dropped.items():
        await world.drop_off(return_id)
        await _set_time(world, return_id, "dropped_off", ts(at))
    waits = {ids[0]: 100.0, ids[1]: 200.0, ids[2]: 400.0}
    for return_id, wait in waits.items():
        await world.deliver(return_id)
        await world.advance(return_id, ReturnState.REFUNDED)
        await _set_time(world, return_id, "refunded", ts(dropped[return_id]) + wait)

    everything = Scope(MERCHANT, 0, 1e11, SHANGHAI)
    assert await reports.run(world.db, ReportName.RETURN_REASONS, everything) == [
        {"reason": "too small", "count": 2},
        {"reason": "changed mind", "count": 1},
        {"reason": "damaged", "count": 1},
    ]
    assert await reports.run(world.db, ReportName.DROPOFFS, everything) == [
        {"store": "store-1", "day": "2026-01-01", "count": 1},
        {"store": "store-1", "day": "2026-01-02", "count": 2},
    ]
    all_tenants = Scope(None, 0, 1e11, SHANGHAI)
    assert (await reports.run(world.db, ReportName.DROPOFFS, all_tenants))[1]["count"] == 3
    in_utc = Scope(MERCHANT, 0, 1e11, "UTC")
    assert await reports.run(world.db, ReportName.DROPOFFS, in_utc) == [
        {"store": "store-1", "day": "2026-01-01", "count": 3}
    ]
    second_day = Scope(MERCHANT, ts("2026-01-01T16:00:00"), ts("2026-01-02T16:00:00"), SHANGHAI)
    assert await reports.run(world.db, ReportName.DROPOFFS, second_day) == [
        {"store": "store-1", "day": "2026-01-02", "count": 2}
    ]
    (timing,) = await reports.run(world.db, ReportName.REFUND_TIME, everything)
    assert timing == {"count": 3, "p50_s": 200.0, "p90_s": 400.0, "mean_s": pytest.approx(700 / 3)}
    (later,) = await reports.run(world.db, ReportName.REFUND_TIME, second_day)
    assert (later["count"], later["p50_s"], later["mean_s"]) == (2, 200.0, 300.0)
    before = Scope(MERCHANT, 0, ts("2026-01-01T00:00:00"), SHANGHAI)
    (none,) = await reports.run(world.db, ReportName.REFUND_TIME, before)
    assert none == {"count": 0, "p50_s": None, "p90_s": None, "mean_s": None}


async def test_carrier_exception_report_is_per_tenant(world: World) -> None:
    mine = await world.create_return(1)
    other = await _other_tenant(world)
    async with world.db.transaction() as tx:
        for carrier, waybill, return_id, reason in (
            ("kdniao", "YT1", mine, Reason.CARRIER_PROBLEM),
            ("kdniao", "YT2", mine, Reason.NO_TRACKING_NEWS),
            ("sf", "SF1", mine, Reason.CARRIER_PROBLEM),
            ("sf", "SF2", other, Reason.CARRIER_PROBLEM),
        ):
            subject = Subject.shipment(carrier, waybill, None, return_id)
            await carrier_exceptions.open_exception(tx, subject, reason, "lost", now=1000.0)
    found = await carrier_exceptions.listing(world.db, status="all")
    async with world.db.transaction() as tx:
        sf2 = next(e["id"] for e in found if e["waybill"] == "SF2")
        await carrier_exceptions.mark_resolved(
            tx, sf2, carrier_exceptions.Resolution.CLOSE, by="ops", now=2000.0
        )
    rows = await reports.run(world.db, ReportName.CARRIER_EXCEPTIONS, Scope(MERCHANT, 0, 1e11))
    assert rows == [
        {"reason": "carrier_problem", "carrier": "kdniao", "count": 1, "open": 1},
        {"reason": "carrier_problem", "carrier": "sf", "count": 1, "open": 1},
        {"reason": "no_tracking_news", "carrier": "kdniao", "count": 1, "open": 1},
    ]
    rows = await reports.run(world.db, ReportName.CARRIER_EXCEPTIONS, Scope(None, 0, 1e11))
    assert {"reason": "carrier_problem", "carrier": "sf", "count": 2, "open": 1} in rows
    assert await reports.run(world.db, ReportName.CARRIER_EXCEPTIONS, Scope(None, 0, 999)) == []


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 11)]
    assert reports.percentile(values, 50) == 5.0
    assert reports.percentile(values, 90) == 9.0
    assert reports.percentile([7.0], 90) == 7.0

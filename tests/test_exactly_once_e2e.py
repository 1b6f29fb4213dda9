"""Exactly one refund per return, end to end, when everything arrives twice.

The whole local system runs (real Mosquitto, gateway, kiosks, simulators). Every kiosk
event is republished a second time from the broker side, and every carrier tracking push
is posted twice at once; the payment providers time out, fail with 5xx, answer later or
unreadably some of the time. Each return must get exactly one refund, counted at the
simulated provider, one ``refund.issued`` webhook and one refund notice."""

import asyncio
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dropline.system import LocalSystem, SystemOptions
from gateway.config import RefundPolicy
from simulator.merchant_system import MerchantKnobs
from simulator.payments import PaymentKnobs

pytestmark = pytest.mark.timeout(300)

RETURNS = 12

SCENARIOS = {
    "stripe-on-dropoff": SystemOptions(
        refund_policy=RefundPolicy.ON_DROPOFF,
        payment_knobs=PaymentKnobs(timeout_rate=0.25, timeout_hold_s=1.5, error_rate=0.15,
                                   malformed_rate=0.1, seed=7),
        payment_timeout_s=0.5,
    ),
    "merchant-system-on-receipt": SystemOptions(
        refund_policy=RefundPolicy.ON_RECEIPT,
        refund_provider="merchant_system",
        merchant_knobs=MerchantKnobs(timeout_rate=0.2, timeout_hold_s=1.5, error_rate=0.15,
                                     malformed_rate=0.1, async_rate=0.4, seed=7),
        payment_timeout_s=0.5,
    ),
}  # fmt: skip


@pytest.fixture(params=sorted(SCENARIOS))
async def system(
    tmp_path: Path, request: pytest.FixtureRequest, gateway_database: str
) -> AsyncIterator[LocalSystem]:
    options = dataclasses.replace(
        SCENARIOS[request.param],
        database=gateway_database,
        kiosks_per_store=2,
        tote_max_items=6,
        duplicate_deliveries=True,
    )
    s = LocalSystem(tmp_path, options)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


async def test_every_delivery_twice_still_one_refund_per_return(system: LocalSystem) -> None:
    returns = [await system.authorize_return(i, store="store-1") for i in range(RETURNS)]
    ids = [r["id"] for r in returns]

    async def serve(k: int) -> None:
        for ret in returns[k :: len(system.kiosks)]:
            session = await system.kiosks[k].present(ret["voucher"]["token"])
            assert session.state == "done", (session.state, session.reason)

    await asyncio.gather(*(serve(k) for k in range(len(system.kiosks))))
    await system.wait_for_state(ids, "refunded", timeout_s=180)

    # Every delivery really did arrive twice.
    assert system.event_duplicator is not None and system.push_duplicators
    assert system.event_duplicator.duplicated >= RETURNS
    relayed = sum(relay.relayed for relay in system.push_duplicators)
    assert relayed >= 3 * 2, "three pushes for each of two totes"
    metrics = await (await system.operator.get("/v1/metrics")).json()
    assert metrics["events_duplicate"] >= RETURNS

    # One refund per return, counted where the money moves.
    assert {r: system.refunds_paid(r) for r in ids} == dict.fromkeys(ids, 1)

    # One of each transition, one refund.issued per return at the merchant.
    gateway = system.gateway
    assert gateway is not None
    rows = await gateway.db.fetchall(
        "SELECT return_id, to_state FROM return_history WHERE to_state IN "
        "('dropped_off', 'received', 'refunded')"
    )
    assert Counter(rows) == Counter(
        {(r, s): 1 for r in ids for s in ("dropped_off", "received", "refunded")}
    )
    merchant = system.merchant_system
    assert merchant is not None
    await merchant.wait_for(lambda: len(merchant.events_of("refund.issued")) >= RETURNS)
    assert Counter(e["data"]["return_id"] for e in merchant.events_of("refund.issued")) == Counter(
        ids
    )
    assert merchant.rejected == {}

    # And one refund notice per customer.
    assert system.smtp is not None
    await system.smtp.wait_for(RETURNS * 3)
    notices = Counter(
        str(m["To"]) for m in system.smtp.messages if "refund of" in str(m["Subject"])
    )
    assert sorted(notices.values()) == [1] * RETURNS

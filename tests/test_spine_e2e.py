"""The spine end to end: real Mosquitto, gateway, two edge agents, simulated carrier and
payments. Nothing of ours is mocked; only hardware and outside services are simulated."""

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from dropline.system import LocalSystem, SystemOptions
from gateway.config import RefundPolicy

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
async def system(
    tmp_path: Path, request: pytest.FixtureRequest, gateway_database: str
) -> AsyncIterator[LocalSystem]:
    options = getattr(request, "param", None) or SystemOptions()
    s = LocalSystem(tmp_path, dataclasses.replace(options, database=gateway_database))
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


async def _drop_off_all(system: LocalSystem, returns: list[dict[str, object]]) -> None:
    async def serve(kiosk_index: int) -> None:
        kiosk = system.kiosks[kiosk_index]
        for ret in returns[kiosk_index :: len(system.kiosks)]:
            voucher = ret["voucher"]
            assert isinstance(voucher, dict)
            session = await kiosk.present(voucher["token"])
            assert session.state == "done", (session.state, session.reason)

    await asyncio.gather(*(serve(i) for i in range(len(system.kiosks))))


async def test_twenty_returns_reach_refunded_exactly_once(system: LocalSystem) -> None:
    returns = [await system.authorize_return(i, store="store-1") for i in range(20)]
    ids = [r["id"] for r in returns]
    await _drop_off_all(system, returns)
    await system.wait_for_state(ids, "refunded", timeout_s=120)

    assert system.payments is not None
    assert {r: system.payments.refund_count(r) for r in ids} == dict.fromkeys(ids, 1)
    gateway = system.gateway
    assert gateway is not None
    dropoffs = await gateway.db.fetchall("SELECT envelope FROM events WHERE type = 'dropoff'")
    stored_returns = sorted(json.loads(e)["body"]["return_id"] for (e,) in dropoffs)
    assert stored_returns == sorted(ids), "every drop-off stored exactly once"
    for kiosk in system.kiosks:
        await asyncio.wait_for(kiosk.agent.outbox.emptied.wait(), 30)
        assert await kiosk.agent.db.outbox_size() == 0
    view = await system.get_return(ids[0])
    path = [h["to"] for h in view["history"]]
    assert path == [
        "authorized", "dropped_off", "in_tote", "shipped", "in_transit", "received", "refunded",
    ]  # fmt: skip
    totes = await gateway.db.fetchall("SELECT state, item_count, waybill FROM totes")
    assert sum(int(t[1]) for t in totes) == 20
    assert all(t[2] for t in totes), "every tote was booked with a waybill"
    labels = [p for k in system.kiosks for p in k.labels.printed if p.name.startswith("tote")]
    assert len(labels) == len(totes), "one tote label printed per tote"


@pytest.mark.parametrize(
    "system", [SystemOptions(kiosks_per_store=1, refund_policy=RefundPolicy.ON_DROPOFF)],
    indirect=True,
)  # fmt: skip
async def test_kiosk_keeps_accepting_while_broker_is_down(system: LocalSystem) -> None:
    kiosk = system.kiosks[0]
    before = [await system.authorize_return(i, store="store-1") for i in range(3)]
    during = [await system.authorize_return(100 + i, store="store-1") for i in range(5)]
    await _drop_off_all(system, before)

    await system.broker.stop()
    await asyncio.wait_for(kiosk.agent.link.disconnected.wait(), 30)
    await _drop_off_all(system, during)
    assert await kiosk.agent.db.outbox_size() >= len(during)

    await system.broker.start()
    await asyncio.wait_for(kiosk.agent.link.connected.wait(), 30)
    ids = [r["id"] for r in before + during]
    await system.wait_for_state(ids, "refunded", timeout_s=120)
    await asyncio.wait_for(kiosk.agent.outbox.emptied.wait(), 30)
    assert system.gateway is not None
    historical = await system.gateway.db.fetchall(
        "SELECT count(*) FROM events WHERE type = 'dropoff' AND historical = 1"
    )
    assert historical[0][0] >= len(during), "replayed drop-offs are marked historical"
    assert system.payments is not None
    assert all(system.payments.refund_count(r) == 1 for r in ids)


@pytest.mark.parametrize("system", [SystemOptions(kiosks_per_store=1)], indirect=True)
async def test_bad_vouchers_leave_the_door_shut(system: LocalSystem) -> None:
    from protocol import voucher
    from protocol.sizes import SizeClass

    kiosk = system.kiosks[0]
    assert system.gateway is not None
    keys = system.gateway.keys
    good = await system.authorize_return(1, store="store-1")
    other_store = await system.authorize_return(2, store="store-1")
    token = good["voucher"]["token"]
    claims = voucher.parse(token)[0]

    # Forged: same claims signed with a key the store does not trust under that key id.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    forged = voucher.issue(claims, Ed25519PrivateKey.generate())
    expired = voucher.issue(
        voucher.VoucherClaims(
            claims.kid, claims.return_id, claims.merchant, 1_000_000, claims.size, 1
        ),
        keys.active,
    )
    wrong_store = voucher.issue(
        voucher.VoucherClaims.scoped(
            kid=claims.kid,
            return_id=voucher.parse(other_store["voucher"]["token"])[0].return_id,
            merchant=claims.merchant,
            expires_at=claims.expires_at,
            size=SizeClass.S,
            items=1,
            stores=("store-9",),
        ),
        keys.active,
    )
    pulses_before = kiosk.mechanics.total_pulses
    reasons = {}
    for name, code in (("forged", forged), ("expired", expired), ("wrong_store", wrong_store)):
        session = await kiosk.present(code)
        reasons[name] = (session.state, session.reason)
    assert kiosk.mechanics.total_pulses == pulses_before, "no relay pulsed for a bad voucher"

    first = await kiosk.present(token)
    assert first.state == "done"
    pulses_after_good = kiosk.mechanics.total_pulses
    again = await kiosk.present(token)
    reasons["already_used"] = (again.state, again.reason)
    assert kiosk.mechanics.total_pulses == pulses_after_good

    assert reasons == {
        "forged": ("rejected", "bad_signature"),
        "expired": ("rejected", "expired"),
        "wrong_store": ("rejected", "wrong_store"),
        "already_used": ("rejected", "already_used"),
    }


async def test_malformed_mqtt_payload_is_dead_lettered(system: LocalSystem) -> None:
    gateway = system.gateway
    assert gateway is not None
    garbage = [b"\x00\xffnot json", b'{"type": "dropoff", "v": 1}', b'{"type": "teleport"}']
    async with aiomqtt.Client("127.0.0.1", system.broker.port) as client:
        for payload in garbage:
            await client.publish("dropline/v1/store-1/kiosk-1/evt/dropoff", payload, qos=1)

    async def all_dead_lettered() -> bool:
        row = await gateway.db.fetchone("SELECT count(*) FROM dead_letters")
        return row is not None and row[0] >= len(garbage)

    await system.wait_until(all_dead_lettered, timeout_s=30)
    rows = await gateway.db.fetchall("SELECT payload, reason FROM dead_letters ORDER BY id")
    assert [bytes(r[0]) for r in rows] == garbage, "raw bytes kept"
    assert {r[1] for r in rows} == {"malformed_message", "unknown_type"}
    metrics = await (await system.operator.get("/v1/metrics")).json()
    assert metrics["dead_letters_total"] == len(garbage)

    # The gateway keeps working: a real return still flows through.
    ret = await system.authorize_return(7, store="store-1")
    session = await system.kiosks[0].present(ret["voucher"]["token"])
    assert session.state == "done"
    await system.wait_for_state([ret["id"]], "in_tote", timeout_s=30)

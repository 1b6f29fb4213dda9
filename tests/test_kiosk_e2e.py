"""The kiosk flows end to end: real Mosquitto, gateway and edge agent on simulated hardware."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dropline.system import LocalSystem, SystemOptions

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[LocalSystem]:
    s = LocalSystem(tmp_path, SystemOptions(kiosks_per_store=1, compartments_per_kiosk=4,
                                            tote_max_items=50, tote_max_age_s=3600))  # fmt: skip
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


async def _json(request: Any) -> Any:
    async with request as resp:
        data = await resp.json() if resp.content_type == "application/json" else None
        return resp.status, data


async def _add_clerk(system: LocalSystem, pin: str = "1357") -> None:
    clerk = {"name": "Bo", "pin": pin, "badge": "B-77"}
    status, _ = await _json(system.operator.put("/v1/stores/store-1/clerks/clerk-7", json=clerk))
    assert status == 200
    agent = system.kiosks[0].agent

    async def has_clerk() -> bool:
        config = await agent.db.store_config()
        return config is not None and any(c.id == "clerk-7" for c in config.clerks)

    await system.wait_until(has_clerk, 20)


async def test_pickup_from_load_to_collection(system: LocalSystem) -> None:
    kiosk = system.kiosks[0]
    agent = kiosk.agent
    await _add_clerk(system)
    status, body = await _json(system.operator.put(
        "/v1/stores/store-1/clerks/clerk-8", json={"name": "Cy", "pin": "1357"}))  # fmt: skip
    assert (status, body["error"]["code"]) == (409, "conflict"), "PINs are unique per store"

    await agent.clerks.login_pin("1357")
    loaded = await agent.handle_code("PARCEL-12345")
    assert loaded is not None and loaded.state == "done"
    agent.clerks.logout()

    async def issued() -> Any:
        status, view = await _json(system.operator.get("/v1/pickups/PARCEL-12345"))
        rows = await agent.db.pickups()
        return status == 200 and rows and view

    await system.wait_until(issued, 30)
    _, view = await _json(system.operator.get("/v1/pickups/PARCEL-12345"))
    assert (view["state"], view["compartment"], view["overdue"]) == (
        "loaded",
        loaded.compartment,
        False,
    )
    wrong = await agent.handle_code("0000-0000-0", typed=True)
    assert wrong is not None and wrong.state == "rejected"
    session = await kiosk.present(view["pickup_qr_text"])
    assert (session.state, session.compartment) == ("done", loaded.compartment)

    async def picked_up() -> bool:
        _, v = await _json(system.operator.get("/v1/pickups/PARCEL-12345"))
        return bool(v["state"] == "picked_up")

    await system.wait_until(picked_up, 30)


async def test_overdue_report(system: LocalSystem) -> None:
    agent = system.kiosks[0].agent
    await _add_clerk(system)
    await agent.clerks.login_pin("1357")
    for parcel in ("OLD-1", "NEW-1"):
        assert (await agent.handle_code(parcel)).state == "done"  # type: ignore[union-attr]
    assert system.gateway is not None

    async def both_known() -> bool:
        row = await system.gateway.db.fetchone("SELECT count(*) FROM pickups")  # type: ignore[union-attr]
        return row is not None and row[0] == 2

    await system.wait_until(both_known, 30)
    async with system.gateway.db.transaction() as tx:  # eight days have passed for OLD-1
        await tx.execute("UPDATE pickups SET valid_until = 1 WHERE parcel_id = 'OLD-1'")
    status, report = await _json(system.operator.get("/v1/pickups/overdue?store=store-1"))
    assert status == 200
    assert [p["parcel_id"] for p in report["pickups"]] == ["OLD-1"]


async def test_short_codes_online_lookup_and_offline_sync(system: LocalSystem) -> None:
    kiosk = system.kiosks[0]
    anywhere = await system.authorize_return(1)  # any store: looked up live
    session = await kiosk.agent.handle_code(anywhere["voucher"]["short_code_display"], typed=True)
    assert session is not None and session.state == "done", session.reason

    scoped = await system.authorize_return(2, store="store-1")  # synced to the kiosk

    async def synced() -> bool:
        return await kiosk.agent.db.short_code_token(scoped["voucher"]["short_code"]) is not None

    await system.wait_until(synced, 30)
    await system.broker.stop()
    await asyncio.wait_for(kiosk.agent.link.disconnected.wait(), 10)
    offline = await kiosk.agent.handle_code(scoped["voucher"]["short_code"], typed=True)
    assert offline is not None and offline.state == "done"
    third = await system.authorize_return(3)  # not scoped, kiosk offline: can't resolve
    refused = await kiosk.agent.handle_code(third["voucher"]["short_code"], typed=True)
    assert refused is not None and refused.reason == "needs_gateway"
    await system.broker.start()
    await system.wait_for_state([anywhere["id"], scoped["id"]], "in_tote", timeout_s=60)


async def test_clerk_seal_closes_the_tote_and_the_label_prints(system: LocalSystem) -> None:
    kiosk = system.kiosks[0]
    ret = await system.authorize_return(1, store="store-1")
    assert (await kiosk.present(ret["voucher"]["token"])).state == "done"
    await system.wait_for_state([ret["id"]], "in_tote", timeout_s=30)
    await _add_clerk(system)
    assert await kiosk.agent.handle_code("B-77") is None  # badge logs the clerk in
    await kiosk.agent.clerks.seal_tote()
    await system.wait_for_state([ret["id"]], "refunded", timeout_s=60)
    assert system.gateway is not None
    row = await system.gateway.db.fetchone("SELECT close_reason FROM totes")
    assert row is not None and row[0] == "seal"
    assert any(p.name.startswith("tote-") for p in kiosk.labels.printed)


async def test_operator_opens_a_door_remotely(system: LocalSystem) -> None:
    status, body = await _json(system.operator.post(
        "/v1/stores/store-1/devices/kiosk-1/commands",
        json={"name": "open_door", "compartment": "A2"}))  # fmt: skip
    assert status == 202

    async def answered() -> Any:
        _, view = await _json(system.operator.get(f"/v1/commands/{body['command_id']}"))
        return view["outcome"]

    await system.wait_until(answered, 30)
    _, view = await _json(system.operator.get(f"/v1/commands/{body['command_id']}"))
    assert view["outcome"] == "succeeded"
    assert system.kiosks[0].mechanics.pulses["A2"] == 1
    status, bad = await _json(system.operator.post(
        "/v1/stores/store-1/devices/kiosk-1/commands", json={"name": "open_door"}))  # fmt: skip
    assert (status, bad["error"]["code"]) == (422, "invalid_request")

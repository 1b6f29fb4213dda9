"""Every kiosk flow on the real agent with simulated hardware and a real broker, no gateway:
locker and counter drop-off, jammed and left-open doors, forced doors, pickup, clerk mode."""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dropline.broker import MosquittoBroker
from edge.database import PickupRow
from edge.session import KioskSession, SessionState
from protocol import shortcode
from protocol.sizes import SizeClass
from simulator.kiosk import SimulatedKiosk
from tests.kiosk_rig import CLERK_BADGE, CLERK_PIN, Issuer, running_kiosk, until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture
async def kiosk(
    tmp_path: Path, broker: MosquittoBroker, issuer: Issuer, request: pytest.FixtureRequest
) -> AsyncIterator[SimulatedKiosk]:
    overrides = getattr(request, "param", None) or {}
    async with running_kiosk(tmp_path, broker.port, issuer, **overrides) as k:
        yield k


async def events(kiosk: SimulatedKiosk, kind: str | None = None) -> list[dict[str, Any]]:
    rows = await kiosk.agent.db.pending(limit=10_000)
    return [{"type": r.type, **json.loads(r.body)} for r in rows if kind is None or r.type == kind]


async def run(kiosk: SimulatedKiosk, code: str, *, typed: bool = False) -> KioskSession:
    session = await kiosk.agent.handle_code(code, typed=typed)
    assert session is not None
    return session


async def test_locker_dropoff_uses_smallest_fitting_door(
    kiosk: SimulatedKiosk, issuer: Issuer
) -> None:
    small, large = issuer.voucher(SizeClass.S), issuer.voucher(SizeClass.L)
    first = await run(kiosk, small)
    second = await run(kiosk, large)
    assert (first.state, first.compartment) == ("done", "A1")
    assert (second.state, second.compartment) == ("done", "A4")
    drops = await events(kiosk, "dropoff")
    assert [(d["compartment"], d["method"], d["size"]) for d in drops] == [
        ("A1", "locker", "S"), ("A4", "locker", "L"),
    ]  # fmt: skip
    occupancy = await kiosk.agent.db.occupancy()
    assert occupancy["A1"] == drops[0]["return_id"] and occupancy["A2"] is None
    assert kiosk.printer.printed[0].name.startswith("receipt-")


async def test_jammed_door_tries_the_next_and_reports_a_fault(
    kiosk: SimulatedKiosk, issuer: Issuer
) -> None:
    kiosk.mechanics.jam("A2")
    session = await run(kiosk, issuer.voucher(SizeClass.M))
    assert (session.state, session.compartment) == ("done", "A3")
    assert SessionState.JAMMED in [s for s, _ in session.history]
    faults = await events(kiosk, "fault")
    assert [(f["kind"], f["compartment"]) for f in faults] == [("jammed", "A2")]
    assert (await kiosk.agent.db.compartment("A2")).out_of_order  # type: ignore[union-attr]


async def test_every_fitting_door_jammed_rejects(kiosk: SimulatedKiosk, issuer: Issuer) -> None:
    kiosk.mechanics.jam("A4")
    session = await run(kiosk, issuer.voucher(SizeClass.L))
    assert (session.state, session.reason) == ("rejected", "door_jammed")
    assert await events(kiosk, "dropoff") == []


async def test_door_left_open_sounds_the_alarm_until_closed(
    kiosk: SimulatedKiosk, issuer: Issuer
) -> None:
    kiosk.shopper.leave_open.add("A1")
    alarm_seen = asyncio.Event()

    def watch(session: KioskSession) -> None:
        if session.state is SessionState.LEFT_OPEN:
            assert kiosk.agent.indicators.alarm_on
            alarm_seen.set()
            kiosk.mechanics.close_door("A1")  # a clerk comes and shuts it

    kiosk.agent.session_listeners.append(watch)
    session = await run(kiosk, issuer.voucher(SizeClass.S))
    assert alarm_seen.is_set()
    assert session.state == "done", "the parcel is accepted once the door shuts"
    assert not kiosk.agent.indicators.alarm_on
    assert [f["kind"] for f in await events(kiosk, "fault")] == ["left_open"]
    assert len(await events(kiosk, "dropoff")) == 1


async def test_door_never_closed_times_out_and_goes_out_of_service(
    kiosk: SimulatedKiosk, issuer: Issuer
) -> None:
    kiosk.shopper.leave_open.add("A1")
    session = await run(kiosk, issuer.voucher(SizeClass.S))
    assert (session.state, session.reason) == ("timed_out", "door_not_closed")
    assert await events(kiosk, "dropoff") == []
    assert (await kiosk.agent.db.compartment("A1")).out_of_order  # type: ignore[union-attr]
    assert not kiosk.agent.indicators.alarm_on


async def test_forced_door_raises_alarm_and_fault(kiosk: SimulatedKiosk) -> None:
    kiosk.shopper.leave_open.add("A3")
    faulted = asyncio.Event()
    kiosk.agent.change_listeners.append(lambda: kiosk.agent.alarms and faulted.set())
    kiosk.mechanics.open_door_by_hand("A3")
    await asyncio.wait_for(faulted.wait(), 5)
    assert kiosk.agent.alarms == {"A3": "forced"}
    assert kiosk.agent.indicators.alarm_on
    kiosk.mechanics.close_door("A3")
    await until(kiosk.agent, lambda: not kiosk.agent.alarms)

    async def reported() -> bool:
        return bool(await events(kiosk, "fault"))

    await until(kiosk.agent, reported)
    faults = await events(kiosk, "fault")
    assert [(f["kind"], f["compartment"]) for f in faults] == [("unexpected_open", "A3")]


@pytest.mark.parametrize("kiosk", [{"mode": "counter"}], indirect=True)
async def test_counter_dropoff_prints_bag_label_and_takes_bag_and_tote(
    kiosk: SimulatedKiosk, issuer: Issuer
) -> None:
    agent = kiosk.agent
    task = asyncio.create_task(run(kiosk, issuer.voucher()))
    await until(agent, lambda: agent.session and agent.session.state == "await_bag")
    session = agent.session
    assert session is not None and session.bag_id
    assert [p.name for p in kiosk.labels.printed] == [f"bag-{session.bag_id}.png"]
    assert await agent.handle_code("TOTE-0001") is None, "not the bag: ignored, not queued"
    assert agent.prompts.current == "scan_bag" and agent.counters.ignored_scans == 1
    assert await agent.handle_code(session.bag_id) is None, "the bag scan went to the flow"
    await until(agent, lambda: agent.session and agent.session.state == "await_tote")
    assert await agent.handle_code("TOTE-0007") is None
    done = await task
    assert done.state == "done"
    drop = (await events(kiosk, "dropoff"))[0]
    assert (drop["method"], drop["bag_id"], drop["tote_id"], drop["compartment"]) == (
        "counter", session.bag_id, "TOTE-0007", None,
    )  # fmt: skip
    assert kiosk.mechanics.total_pulses == 0


@pytest.mark.parametrize("kiosk", [{"mode": "both"}], indirect=True)
async def test_both_mode_sends_a_parcel_no_door_fits_to_the_counter(
    kiosk: SimulatedKiosk, issuer: Issuer
) -> None:
    session = await kiosk.agent.handle_code(issuer.voucher(SizeClass.L))
    assert session is not None and session.compartment == "A4"
    task = asyncio.create_task(run(kiosk, issuer.voucher(SizeClass.L)))
    agent = kiosk.agent
    await until(agent, lambda: agent.session and agent.session.state == "await_bag")
    assert kiosk.agent.prompts.cancel()
    cancelled = await task
    assert (cancelled.kind, cancelled.state, cancelled.reason) == (
        "counter", "rejected", "cancelled",
    )  # fmt: skip
    assert len(await events(kiosk, "dropoff")) == 1, "the cancelled one is not accepted"


async def test_used_voucher_and_typed_short_code_offline(
    kiosk: SimulatedKiosk, issuer: Issuer
) -> None:
    token = issuer.voucher()
    code = shortcode.new_short_code()
    await kiosk.agent.db.save_short_codes([(code, token, time.time() + 3600)])
    typed = await run(kiosk, shortcode.display(code).lower(), typed=True)
    assert typed.state == "done"
    again = await run(kiosk, token)
    assert (again.state, again.reason) == ("rejected", "already_used")
    unknown = await run(kiosk, shortcode.new_short_code(), typed=True)
    assert unknown.reason in ("needs_gateway", "unknown_code")
    wrong = await run(kiosk, code[:-1] + ("0" if code[-1] != "0" else "1"), typed=True)
    assert wrong.reason == "bad_short_code"


async def test_clerk_pin_lockout_and_badge(kiosk: SimulatedKiosk) -> None:
    from edge.clerks import ClerkAuthError

    clerks = kiosk.agent.clerks
    for _ in range(kiosk.agent.config.clerk.pin_attempts):
        with pytest.raises(ClerkAuthError, match="wrong_pin"):
            await clerks.login_pin("0000")
    with pytest.raises(ClerkAuthError, match="locked"):
        await clerks.login_pin(CLERK_PIN)
    assert clerks.current is None
    assert await kiosk.agent.handle_code(CLERK_BADGE) is None
    assert clerks.current is not None and clerks.current.id == "clerk-1"
    clerks.logout()
    assert clerks.current is None


async def test_pickup_load_then_collect_with_the_code(
    kiosk: SimulatedKiosk, issuer: Issuer
) -> None:
    agent = kiosk.agent
    await agent.clerks.login_pin(CLERK_PIN)
    agent.clerks.set_load_size(SizeClass.L)
    loaded = await run(kiosk, "1Z999AA10123456784")
    assert (loaded.state, loaded.kind, loaded.compartment) == ("done", "load", "A4")
    event = (await events(kiosk, "parcel_loaded"))[0]
    assert (event["parcel_id"], event["loaded_by"], event["size"]) == (
        "1Z999AA10123456784", "clerk-1", "L",
    )  # fmt: skip
    twice = await run(kiosk, "1Z999AA10123456784")
    assert twice.reason == "already_used"
    agent.clerks.logout()

    code = shortcode.new_short_code()
    await agent.db.save_pickups(
        [PickupRow(shortcode.digest(code), "1Z999AA10123456784", "A4", time.time() + 60)]
    )
    collected = await run(kiosk, shortcode.PICKUP_PREFIX + code)
    assert (collected.state, collected.kind, collected.compartment) == ("done", "pickup", "A4")
    pickup = (await events(kiosk, "pickup"))[0]
    assert (pickup["parcel_id"], pickup["door_left_open"]) == ("1Z999AA10123456784", False)
    assert (await agent.db.occupancy())["A4"] is None
    reuse = await run(kiosk, shortcode.display(code), typed=True)
    assert reuse.state == "rejected", "a pickup code opens its door once"


async def test_expired_pickup_code_is_refused(kiosk: SimulatedKiosk) -> None:
    agent = kiosk.agent
    await agent.clerks.login_pin(CLERK_PIN)
    await run(kiosk, "PARCEL-77")
    agent.clerks.logout()
    code = shortcode.new_short_code()
    await agent.db.save_pickups([PickupRow(shortcode.digest(code), "PARCEL-77", "A2", 1.0)])
    session = await run(kiosk, shortcode.display(code), typed=True)
    assert (session.state, session.reason) == ("rejected", "pickup_expired")
    assert kiosk.mechanics.pulses["A2"] == 1, "only the load opened the door"


async def test_clerk_service_actions(kiosk: SimulatedKiosk, issuer: Issuer) -> None:
    agent = kiosk.agent
    dropped = await run(kiosk, issuer.voucher(SizeClass.S))
    await agent.clerks.login_pin(CLERK_PIN)
    assert await agent.clerks.set_out_of_order("A2", True)
    assert not await agent.clerks.set_out_of_order("A2", True), "no change, no event"
    emptied = await agent.clerks.open_for_service("A1", empty=True)
    assert (emptied.state, emptied.reason) == ("done", "opened")
    await agent.clerks.seal_tote("TOTE-0009")
    service = await events(kiosk, "service")
    assert [(s["compartment"], s["action"]) for s in service] == [
        ("A2", "out_of_order"), ("A1", "emptied"),
    ]  # fmt: skip
    assert service[1]["removed"] == dropped.return_id and service[1]["door"] == "opened"
    assert (await agent.db.occupancy())["A1"] is None
    sealed = await events(kiosk, "tote_sealed")
    assert [(s["clerk"], s["tote_label"]) for s in sealed] == [("clerk-1", "TOTE-0009")]
    next_m = await run(kiosk, issuer.voucher(SizeClass.M))
    assert next_m.compartment == "A3", "out-of-order A2 is skipped"

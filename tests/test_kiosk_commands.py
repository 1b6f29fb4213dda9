"""Gateway commands reach the kiosk over a real broker: ids, expiry, repeats, outcomes on
cmd_res; the door sensor decides an open_door; commands are never retained."""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from pydantic import BaseModel

from dropline.broker import MosquittoBroker
from edge.agent import EdgeAgent
from protocol import envelope, shortcode, topics
from protocol.ids import new_id
from protocol.messages import (
    Configure,
    KioskSettings,
    OpenDoor,
    PickupCode,
    Sync,
    VoucherCode,
)
from simulator.kiosk import SimulatedKiosk
from tests.kiosk_rig import DEVICE, STORE, Issuer, running_kiosk, until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def kiosk(
    tmp_path: Path, broker: MosquittoBroker
) -> AsyncIterator[tuple[SimulatedKiosk, Issuer]]:
    issuer = Issuer()
    async with running_kiosk(tmp_path, broker.port, issuer) as k:
        await asyncio.wait_for(k.agent.link.connected.wait(), 10)
        yield k, issuer


async def send(broker: MosquittoBroker, body: BaseModel) -> None:
    env = envelope.make(body, store=STORE, device=DEVICE, seq=1, session=0)
    name = envelope.message_type(body)
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        await client.publish(topics.command(STORE, DEVICE, name), envelope.encode(env), qos=1)


async def results(kiosk: SimulatedKiosk, n: int) -> list[dict[str, Any]]:
    async def rows() -> list[dict[str, Any]]:
        pending = await kiosk.agent.db.pending(limit=1000)
        return [json.loads(r.body) for r in pending if r.type == "cmd_result"]

    async def enough() -> bool:
        return len(await rows()) >= n

    await until(kiosk.agent, enough)
    return await rows()


def _open(compartment: str, *, command_id: str | None = None, ttl: float = 60) -> OpenDoor:
    return OpenDoor(
        command_id=command_id or new_id(), expires_at=time.time() + ttl, compartment=compartment
    )


async def test_open_door_outcome_comes_from_the_sensor(
    kiosk: tuple[SimulatedKiosk, Issuer], broker: MosquittoBroker
) -> None:
    k, _ = kiosk
    k.mechanics.jam("A3")
    opened, jammed = _open("A2"), _open("A3")
    await send(broker, opened)
    await send(broker, jammed)
    got = {r["command_id"]: (r["outcome"], r["detail"]) for r in await results(k, 2)}
    assert got == {
        opened.command_id: ("succeeded", "opened"),
        jammed.command_id: ("failed", "jammed"),
    }
    service = [json.loads(r.body) for r in await k.agent.db.pending() if r.type == "service"]
    assert [(s["compartment"], s["door"], s["by"]) for s in service] == [
        ("A2", "opened", "gateway"), ("A3", "jammed", "gateway"),
    ]  # fmt: skip


async def test_repeated_command_id_is_ignored_and_expired_is_refused(
    kiosk: tuple[SimulatedKiosk, Issuer], broker: MosquittoBroker
) -> None:
    k, _ = kiosk
    command = _open("A1")
    await send(broker, command)
    await results(k, 1)
    await send(broker, command)
    stale = _open("A4", ttl=-1)
    await send(broker, stale)
    got = await results(k, 2)
    assert [(r["command_id"], r["outcome"]) for r in got] == [
        (command.command_id, "succeeded"), (stale.command_id, "expired"),
    ]  # fmt: skip
    assert k.mechanics.pulses["A1"] == 1 and k.mechanics.pulses["A4"] == 0
    assert k.agent.counters.duplicate_commands == 1


async def test_sync_pickup_code_and_configure(
    kiosk: tuple[SimulatedKiosk, Issuer], broker: MosquittoBroker
) -> None:
    k, issuer = kiosk
    code, token = shortcode.new_short_code(), issuer.voucher()
    pickup = shortcode.new_short_code()
    await send(
        broker,
        Sync(
            command_id=new_id(),
            expires_at=time.time() + 60,
            vouchers=[VoucherCode(short_code=code, token=token)],
            inventory=True,
        ),
    )
    await send(
        broker,
        PickupCode(
            command_id=new_id(), expires_at=time.time() + 60, parcel_id="P-1", compartment="A1",
            code_sha256=shortcode.digest(pickup), valid_until=time.time() + 3600,
        ),
    )  # fmt: skip
    await send(
        broker,
        Configure(
            command_id=new_id(),
            expires_at=time.time() + 60,
            settings=KioskSettings(mode="counter", door_close_s=42),
        ),
    )
    assert [r["outcome"] for r in await results(k, 3)] == ["succeeded"] * 3
    assert await k.agent.db.short_code_token(code) == token
    row = await k.agent.db.pickup(shortcode.digest(pickup))
    assert row is not None and row.parcel_id == "P-1"
    assert (k.agent.settings.mode, k.agent.settings.door_close_s) == ("counter", 42)
    assert await k.agent.db.settings_overrides() == {"mode": "counter", "door_close_s": 42}
    inventory = [json.loads(r.body) for r in await k.agent.db.pending() if r.type == "inventory"]
    assert [c["id"] for c in inventory[0]["compartments"]] == ["A1", "A2", "A3", "A4"]


async def test_a_retained_command_does_not_replay_after_a_restart(
    kiosk: tuple[SimulatedKiosk, Issuer], broker: MosquittoBroker
) -> None:
    """Our gateway never retains a command; if a tool did, the kiosk's persistent seen-id
    table still stops it from opening the door again when the agent restarts and resubscribes."""
    k, _ = kiosk
    command = _open("A1")
    env = envelope.make(command, store=STORE, device=DEVICE, seq=1, session=0)
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        await client.publish(
            topics.command(STORE, DEVICE, "open_door"), envelope.encode(env), qos=1, retain=True
        )
    await results(k, 1)
    await k.agent.stop()
    k.agent = EdgeAgent(k.agent.config, k.agent.devices)
    await k.agent.start()
    await until(k.agent, lambda: k.agent.counters.duplicate_commands >= 1)
    assert k.mechanics.pulses["A1"] == 1, "the replayed command opened nothing"

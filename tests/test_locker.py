"""The locker bank on gpiozero with simulated latches, doors and a shopper."""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from hardware.locker import CompartmentSpec, DoorOutcome, LockerBank, LockerSpec
from protocol.sizes import SizeClass
from simulator.locker import Shopper, SimulatedLockerMechanics, make_mock_factory

SPEC = LockerSpec(
    compartments=tuple(CompartmentSpec(f"A{i}", SizeClass.M, 2 + i, 15 + i) for i in range(4)),
    pulse_s=0.2,
    max_pulse_s=0.3,
    open_timeout_s=0.5,
)


@dataclass
class Bench:
    bank: LockerBank
    mechanics: SimulatedLockerMechanics
    shopper: Shopper
    alarms: list[str]
    alarmed: asyncio.Event


@pytest.fixture
async def bench() -> AsyncIterator[Bench]:
    factory = make_mock_factory()
    mechanics = SimulatedLockerMechanics(factory, SPEC)
    shopper = Shopper(mechanics)
    await shopper.start()
    bank = LockerBank(SPEC, factory, asyncio.get_running_loop())
    alarms: list[str] = []
    alarmed = asyncio.Event()

    def alarm(compartment: str) -> None:
        alarms.append(compartment)
        alarmed.set()

    bank.on_unexpected_open = alarm
    yield Bench(bank, mechanics, shopper, alarms, alarmed)
    bank.close()
    await shopper.stop()


async def test_all_relays_off_and_doors_closed_at_start(bench: Bench) -> None:
    assert bench.mechanics.total_pulses == 0
    assert not any(bench.bank.is_open(c.id) for c in SPEC.compartments)


async def test_door_opens_and_the_shopper_closes_it(bench: Bench) -> None:
    assert await bench.bank.open("A0") is DoorOutcome.OPENED
    assert await bench.bank.wait_closed("A0", 5)
    assert bench.shopper.deposits == 1


async def test_jammed_latch_is_reported_by_the_sensor(bench: Bench) -> None:
    bench.mechanics.jam("A1")
    assert await bench.bank.open("A1") is DoorOutcome.JAMMED
    assert bench.mechanics.pulses["A1"] == 1


async def test_already_open_door_is_not_pulsed(bench: Bench) -> None:
    bench.shopper.leave_open.add("A2")
    assert await bench.bank.open("A2") is DoorOutcome.OPENED
    assert await bench.bank.open("A2") is DoorOutcome.ALREADY_OPEN
    assert bench.mechanics.pulses["A2"] == 1
    assert not await bench.bank.wait_closed("A2", 0.1)


async def test_one_relay_at_a_time_and_pulse_capped(bench: Bench) -> None:
    for c in SPEC.compartments:
        bench.mechanics.jam(c.id)  # jammed doors make every pulse run its full length
    outcomes = await asyncio.gather(
        *(bench.bank.open(c.id, pulse_s=5.0) for c in SPEC.compartments)
    )
    assert set(outcomes) == {DoorOutcome.JAMMED}
    assert bench.mechanics.max_energized == 1
    assert bench.mechanics.longest_on_s < SPEC.max_pulse_s + 0.1


async def test_door_opened_without_command_raises_the_alarm(bench: Bench) -> None:
    assert await bench.bank.open("A3") is DoorOutcome.OPENED
    assert await bench.bank.wait_closed("A3", 5)
    assert bench.alarms == []
    bench.shopper.leave_open.add("A3")
    bench.mechanics.open_door_by_hand("A3")
    await asyncio.wait_for(bench.alarmed.wait(), 5)
    assert bench.alarms == ["A3"]

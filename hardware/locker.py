"""A locker bank on gpiozero: latch relays pulsed, door sensors believed (DESIGN §5 rules 2–3).

- All relays are off at start-up, one relay is energized at a time, and no pulse outlasts
  ``max_pulse_s`` whatever a caller asks for.
- Whether a door opened is the sensor's word, not the command's: ``opened``,
  ``already_open`` or ``jammed``. A door that opens with no pulse behind it raises an alarm.
- gpiozero calls back on its own threads; every sensor edge is handed to the event loop with
  ``call_soon_threadsafe``.
"""

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from gpiozero import DigitalInputDevice, DigitalOutputDevice

from protocol.sizes import SizeClass

UNEXPECTED_OPEN_GRACE_S = 1.0
"""A door opening this long after its last pulse ended was not opened by us."""


@dataclass(frozen=True)
class CompartmentSpec:
    """One compartment: size and the GPIO pins of its latch relay and door sensor."""

    id: str
    size: SizeClass
    relay_pin: int | str
    sensor_pin: int | str


@dataclass(frozen=True)
class LockerSpec:
    """The bank's wiring and timing."""

    compartments: tuple[CompartmentSpec, ...]
    relay_active_high: bool = True
    sensor_closed_when_low: bool = True  # reed switch to ground, internal pull-up
    pulse_s: float = 0.3
    max_pulse_s: float = 0.5
    open_timeout_s: float = 2.0


class DoorOutcome(StrEnum):
    """What the door sensor said after an open request."""

    OPENED = "opened"
    ALREADY_OPEN = "already_open"
    JAMMED = "jammed"


@dataclass(frozen=True)
class DoorEvent:
    """A door sensor edge."""

    compartment: str
    open: bool
    at: float


class _Door:
    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.closed = asyncio.Event()
        self.pulse_ended_at = float("-inf")
        self.pulsing = False


class LockerBank:
    """Drives one bank of compartments through a gpiozero pin factory."""

    def __init__(
        self, spec: LockerSpec, pin_factory: object, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.spec = spec
        self._loop = loop
        self._relays: dict[str, DigitalOutputDevice] = {}
        self._sensors: dict[str, DigitalInputDevice] = {}
        self._doors: dict[str, _Door] = {}
        self._one_at_a_time = asyncio.Lock()
        self.on_unexpected_open: Callable[[str], None] | None = None
        self.on_door: Callable[[DoorEvent], None] | None = None
        self.on_relay: Callable[[str, bool], None] | None = None
        for c in spec.compartments:
            self._relays[c.id] = DigitalOutputDevice(
                c.relay_pin,
                active_high=spec.relay_active_high,
                initial_value=False,
                pin_factory=pin_factory,
            )
        for c in spec.compartments:
            self._add_sensor(c, pin_factory)

    def _add_sensor(self, c: CompartmentSpec, pin_factory: object) -> None:
        # "active" means the door is closed: the reed switch pulls the pin to its active level.
        sensor = DigitalInputDevice(
            c.sensor_pin, pull_up=self.spec.sensor_closed_when_low, pin_factory=pin_factory
        )
        door = _Door()
        (door.closed if sensor.is_active else door.opened).set()
        sensor.when_activated = lambda: self._from_thread(c.id, False)
        sensor.when_deactivated = lambda: self._from_thread(c.id, True)
        self._sensors[c.id] = sensor
        self._doors[c.id] = door

    def _from_thread(self, compartment: str, is_open: bool) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._door_changed, compartment, is_open)

    def _door_changed(self, compartment: str, is_open: bool) -> None:
        door = self._doors[compartment]
        now = time.monotonic()
        if is_open:
            door.closed.clear()
            door.opened.set()
            commanded = door.pulsing or now - door.pulse_ended_at < UNEXPECTED_OPEN_GRACE_S
            if not commanded and self.on_unexpected_open is not None:
                self.on_unexpected_open(compartment)
        else:
            door.opened.clear()
            door.closed.set()
            door.pulse_ended_at = float("-inf")  # a pulse opens the door once
        if self.on_door is not None:
            self.on_door(DoorEvent(compartment, is_open, now))

    def is_open(self, compartment: str) -> bool:
        """What the door sensor says now."""
        return not self._sensors[compartment].is_active

    @property
    def compartments(self) -> list[str]:
        """Compartment ids in pin-map order."""
        return [c.id for c in self.spec.compartments]

    def open_doors(self) -> list[str]:
        """Compartments whose door sensor says open."""
        return [c for c in self.compartments if self.is_open(c)]

    async def open(self, compartment: str, pulse_s: float | None = None) -> DoorOutcome:
        """Pulse the compartment's latch and report what the door sensor saw."""
        if self.is_open(compartment):
            return DoorOutcome.ALREADY_OPEN
        door = self._doors[compartment]
        pulse = min(pulse_s if pulse_s is not None else self.spec.pulse_s, self.spec.max_pulse_s)
        started = time.monotonic()
        async with self._one_at_a_time:
            await self._pulse(compartment, door, pulse)
        remaining = self.spec.open_timeout_s - (time.monotonic() - started)
        if not door.opened.is_set() and remaining > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await door.opened.wait()
        return DoorOutcome.OPENED if door.opened.is_set() else DoorOutcome.JAMMED

    async def _pulse(self, compartment: str, door: _Door, pulse_s: float) -> None:
        relay = self._relays[compartment]
        door.pulsing = True
        # The hard cap does not depend on the event loop: if the loop stalls (a long GC pause,
        # a blocked call), a timer thread still cuts the coil at max_pulse_s.
        watchdog = threading.Timer(self.spec.max_pulse_s, relay.off)
        watchdog.daemon = True
        relay.on()
        watchdog.start()
        if self.on_relay is not None:
            self.on_relay(compartment, True)
        try:
            # The latch only needs power until the door springs: stop early when it does.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pulse_s):
                    await door.opened.wait()
        finally:
            watchdog.cancel()
            relay.off()
            door.pulsing = False
            door.pulse_ended_at = time.monotonic()
            if self.on_relay is not None:
                self.on_relay(compartment, False)

    async def wait_closed(self, compartment: str, timeout_s: float) -> bool:
        """True once the door is closed; False if it is still open after ``timeout_s``."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._doors[compartment].closed.wait()
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        """Switch every relay off and release the pins."""
        for relay in self._relays.values():
            relay.off()
            relay.close()
        for sensor in self._sensors.values():
            sensor.close()

"""The locker's physics and a shopper, on gpiozero's MockFactory.

A latch relay that is energized lets its door spring open (unless the compartment is
jammed); the shopper puts the parcel in and closes the door. The locker code under test is
the real :class:`~hardware.locker.LockerBank`; only the pins are simulated.
"""

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from gpiozero.pins.mock import MockFactory, MockPin

from hardware.locker import LockerSpec


class LockerPin(MockPin):  # type: ignore[misc]
    """A mock pin that tells the mechanics about relay changes and keeps a closed door closed
    when the driver sets its pull resistor."""

    def _change_state(self, value: bool) -> bool:
        changed = bool(super()._change_state(value))
        mechanics = getattr(self.factory, "mechanics", None)
        if changed and mechanics is not None and self._function == "output":
            mechanics.relay_changed(self, value)
        return changed

    def _set_pull(self, value: str) -> None:
        super()._set_pull(value)
        mechanics = getattr(self.factory, "mechanics", None)
        if mechanics is not None:
            mechanics.reassert(self)


def make_mock_factory() -> MockFactory:
    """A MockFactory whose pins can carry locker physics."""
    return MockFactory(pin_class=LockerPin)


class SimulatedLockerMechanics:
    """Doors, latches and reed switches behind a MockFactory's pins."""

    def __init__(
        self,
        factory: MockFactory,
        spec: LockerSpec,
        *,
        latch_delay_s: float = 0.01,
        jammed: set[str] | None = None,
    ) -> None:
        self._factory = factory
        self._spec = spec
        self.latch_delay_s = latch_delay_s
        self.jammed = set(jammed or ())
        self._relay_of: dict[int, str] = {}
        self._sensor_of: dict[int, str] = {}
        self._sensor_pin: dict[str, Any] = {}
        self._open: dict[str, bool] = {}
        self._energized_since: dict[str, float] = {}
        self._lock = threading.Lock()
        self.pulses: Counter[str] = Counter()
        self.max_energized = 0
        self.longest_on_s = 0.0
        self.listeners: list[Callable[[str, bool], None]] = []
        for c in spec.compartments:
            relay, sensor = factory.pin(c.relay_pin), factory.pin(c.sensor_pin)
            self._relay_of[id(relay)] = c.id
            self._sensor_of[id(sensor)] = c.id
            self._sensor_pin[c.id] = sensor
            self._open[c.id] = False
        factory.mechanics = self

    @property
    def total_pulses(self) -> int:
        """Relay pulses over all compartments."""
        return sum(self.pulses.values())

    def _level(self, is_open: bool) -> bool:
        closed_level = not self._spec.sensor_closed_when_low
        return closed_level if not is_open else not closed_level

    def reassert(self, pin: Any) -> None:
        """Put a sensor pin back at its door's level (a pull change does not move a door)."""
        compartment = self._sensor_of.get(id(pin))
        if compartment is not None and pin.function == "input":
            self._drive(compartment)

    def _drive(self, compartment: str) -> None:
        pin = self._sensor_pin[compartment]
        if pin.function != "input":
            return
        if self._level(self._open[compartment]):
            pin.drive_high()
        else:
            pin.drive_low()

    def relay_changed(self, pin: Any, energized: bool) -> None:
        """Called by the relay's pin when the driver switches it."""
        compartment = self._relay_of.get(id(pin))
        if compartment is None:
            return
        active = energized == self._spec.relay_active_high
        now = time.monotonic()
        with self._lock:
            if active:
                self.pulses[compartment] += 1
                self._energized_since[compartment] = now
                self.max_energized = max(self.max_energized, len(self._energized_since))
            elif compartment in self._energized_since:
                on_for = now - self._energized_since.pop(compartment)
                self.longest_on_s = max(self.longest_on_s, on_for)
        if active and compartment not in self.jammed:
            threading.Timer(self.latch_delay_s, self._spring_open, (compartment,)).start()

    def _spring_open(self, compartment: str) -> None:
        self.set_door(compartment, is_open=True)

    def set_door(self, compartment: str, *, is_open: bool) -> None:
        """Move a door (from any thread); sensors and listeners follow."""
        with self._lock:
            if self._open[compartment] == is_open:
                return
            self._open[compartment] = is_open
        self._drive(compartment)
        for listener in list(self.listeners):
            listener(compartment, is_open)

    def close_door(self, compartment: str) -> None:
        """Someone pushes the door shut."""
        self.set_door(compartment, is_open=False)

    def open_door_by_hand(self, compartment: str) -> None:
        """Forced open, no command: the alarm case."""
        self.set_door(compartment, is_open=True)

    def jam(self, compartment: str) -> None:
        """The latch stops working."""
        self.jammed.add(compartment)

    def unjam(self, compartment: str) -> None:
        """The latch is repaired."""
        self.jammed.discard(compartment)


class Shopper:
    """Closes every door that springs open after ``deposit_s``, except those left open."""

    def __init__(
        self,
        mechanics: SimulatedLockerMechanics,
        *,
        deposit_s: float = 0.02,
        leave_open: set[str] | None = None,
    ) -> None:
        self._mechanics = mechanics
        self.deposit_s = deposit_s
        self.leave_open = set(leave_open or ())
        self._loop: asyncio.AbstractEventLoop | None = None
        self.deposits = 0

    async def start(self) -> None:
        """Begin watching the doors."""
        self._loop = asyncio.get_running_loop()
        self._mechanics.listeners.append(self._on_door)

    async def stop(self) -> None:
        """Stop watching."""
        if self._on_door in self._mechanics.listeners:
            self._mechanics.listeners.remove(self._on_door)

    def _on_door(self, compartment: str, is_open: bool) -> None:
        loop = self._loop
        if not is_open or compartment in self.leave_open or loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(loop.call_later, self.deposit_s, self._deposit, compartment)

    def _deposit(self, compartment: str) -> None:
        self.deposits += 1
        self._mechanics.close_door(compartment)

"""The kiosk's LEDs and buzzer on gpiozero: what a shopper or clerk notices without reading.

Patterns run on gpiozero's background threads (``blink``/``beep`` with ``background=True``),
so signalling never holds up the event loop. Any of the three parts may be absent (pin None).
"""

from dataclasses import dataclass

from gpiozero import LED, Buzzer


@dataclass(frozen=True)
class IndicatorPins:
    """BCM pins of the green and red LEDs and the buzzer; None where there is none."""

    green: int | str | None = None
    red: int | str | None = None
    buzzer: int | str | None = None
    buzzer_active_high: bool = True


class Indicators:
    """Green = ready / accepted, red = refused / fault, buzzer = attention. ``alarm`` (a door
    left open, a door forced) keeps red blinking and the buzzer beeping until cleared."""

    def __init__(self, pins: IndicatorPins, pin_factory: object) -> None:
        self._green = None if pins.green is None else LED(pins.green, pin_factory=pin_factory)
        self._red = None if pins.red is None else LED(pins.red, pin_factory=pin_factory)
        self._buzzer = (
            None
            if pins.buzzer is None
            else Buzzer(pins.buzzer, active_high=pins.buzzer_active_high, pin_factory=pin_factory)
        )
        self.alarm_on = False

    def ready(self) -> None:
        """Idle and working: steady green (unless an alarm is on)."""
        if self.alarm_on:
            return
        if self._green is not None:
            self._green.on()
        if self._red is not None:
            self._red.off()

    def offline(self) -> None:
        """Working without the gateway: slow green blink."""
        if self._green is not None and not self.alarm_on:
            self._green.blink(on_time=1.0, off_time=1.0, background=True)

    def accepted(self) -> None:
        """A scan was accepted / a door opened: quick green flashes and one short beep."""
        if self._green is not None:
            self._green.blink(on_time=0.1, off_time=0.1, n=3, background=True)
        self._beep(0.08, 1)

    def refused(self) -> None:
        """A scan was refused: red flashes and two short beeps."""
        if self._red is not None and not self.alarm_on:
            self._red.blink(on_time=0.15, off_time=0.15, n=3, background=True)
        self._beep(0.1, 2)

    def alarm(self, on: bool) -> None:
        """Start or stop the alarm pattern."""
        if on == self.alarm_on:
            return
        self.alarm_on = on
        if on:
            if self._red is not None:
                self._red.blink(on_time=0.25, off_time=0.25, background=True)
            if self._buzzer is not None:
                self._buzzer.beep(on_time=0.25, off_time=0.5, background=True)
            return
        if self._red is not None:
            self._red.off()
        if self._buzzer is not None:
            self._buzzer.off()
        self.ready()

    def _beep(self, on_s: float, n: int) -> None:
        if self._buzzer is not None and not self.alarm_on:
            self._buzzer.beep(on_time=on_s, off_time=on_s, n=n, background=True)

    @property
    def buzzer_sounding(self) -> bool:
        """True while the buzzer is energized (tests and the service screen read it)."""
        return self._buzzer is not None and bool(self._buzzer.is_active)

    def close(self) -> None:
        """Everything off; release the pins."""
        for device in (self._green, self._red, self._buzzer):
            if device is not None:
                device.off()
                device.close()

"""An edge agent's own configuration: who it is, where its broker is, its locker's pin map.

The store-wide part (trusted voucher keys, revocations) comes from the gateway as the
retained store config; this file holds what only the kiosk knows.
"""

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from protocol.ids import ID_PATTERN
from protocol.sizes import SizeClass


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CompartmentPins(_Model):
    """One compartment: its size and the GPIO pins of its latch relay and door sensor."""

    id: str
    size: SizeClass
    relay_pin: int | str
    sensor_pin: int | str


class BrokerSettings(_Model):
    """Where the MQTT broker is."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    keepalive_s: int = 30
    reconnect_s: float = 1.0


class Timeouts(_Model):
    """How long the kiosk waits at each step of a flow."""

    door_open_s: float = 2.0
    door_close_s: float = 120.0
    left_open_give_up_s: float = 600.0
    counter_step_s: float = 180.0
    clerk_idle_s: float = 120.0
    lookup_s: float = 3.0
    ack_s: float = 10.0


class IndicatorSettings(_Model):
    """BCM pins of the status LEDs and the buzzer (omit what the kiosk does not have)."""

    green_pin: int | str | None = None
    red_pin: int | str | None = None
    buzzer_pin: int | str | None = None
    buzzer_active_high: bool = True


class ScreenSettings(_Model):
    """The touchscreen page the agent serves (kiosk browser points at it)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8088, ge=0, le=65535)


class ClerkSettings(_Model):
    """Clerk mode: keypad lockout after failed PINs, and the tote labels the store uses."""

    pin_attempts: int = Field(default=5, ge=1)
    lockout_s: float = 60.0
    tote_label_prefix: str = "TOTE-"


class EdgeConfig(_Model):
    """Everything an edge agent needs to start."""

    store: str = Field(pattern=ID_PATTERN)
    device: str = Field(pattern=ID_PATTERN)
    database: Path
    broker: BrokerSettings = BrokerSettings()
    mode: Literal["locker", "counter", "both"] = "locker"
    pin_factory: Literal["mock", "lgpio", "rpigpio"] = "mock"
    compartments: list[CompartmentPins] = Field(default_factory=list, max_length=64)
    relay_pulse_s: float = Field(default=0.3, gt=0)
    relay_max_pulse_s: float = Field(default=0.5, gt=0, le=2.0)
    relay_active_high: bool = True
    sensor_closed_when_low: bool = True
    indicators: IndicatorSettings = IndicatorSettings()
    timeouts: Timeouts = Timeouts()
    printer: str = "png:var/prints"
    label_printer: str | None = None
    camera: str = "sim"
    camera_width: int = 1280
    camera_height: int = 720
    camera_fps: float = 30.0
    screen: ScreenSettings = ScreenSettings()
    clerk: ClerkSettings = ClerkSettings()
    version: str = "0.2.0"

    @model_validator(mode="after")
    def _pins_unique(self) -> "EdgeConfig":
        pins = [p for c in self.compartments for p in (c.relay_pin, c.sensor_pin)]
        ind = self.indicators
        pins += [p for p in (ind.green_pin, ind.red_pin, ind.buzzer_pin) if p is not None]
        dupes = sorted({str(p) for p in pins if pins.count(p) > 1})
        if dupes:
            raise ValueError(f"GPIO pins used twice in the pin map: {', '.join(dupes)}")
        ids = [c.id for c in self.compartments]
        if len(set(ids)) != len(ids):
            raise ValueError("compartment ids must be unique")
        if self.mode != "counter" and not self.compartments:
            raise ValueError(f"mode {self.mode!r} needs at least one compartment")
        return self

    @classmethod
    def load(cls, path: Path) -> "EdgeConfig":
        """Read a TOML config file (see ``deploy/edge.example.toml``)."""
        with path.open("rb") as f:
            return cls.model_validate(tomllib.load(f))

"""An edge agent's own configuration: who it is, where its broker is, its locker's pin map.

The store-wide part (trusted voucher keys, revocations) comes from the gateway as the
retained store config; this file holds what only the kiosk knows.
"""

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

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
    """How long the kiosk waits at each step of a drop-off."""

    door_open_s: float = 2.0
    door_close_s: float = 120.0
    ack_s: float = 10.0


class EdgeConfig(_Model):
    """Everything an edge agent needs to start."""

    store: str = Field(pattern=ID_PATTERN)
    device: str = Field(pattern=ID_PATTERN)
    database: Path
    broker: BrokerSettings = BrokerSettings()
    pin_factory: Literal["mock", "lgpio", "rpigpio"] = "mock"
    compartments: list[CompartmentPins]
    relay_pulse_s: float = 0.3
    relay_max_pulse_s: float = 0.5
    timeouts: Timeouts = Timeouts()
    printer: str = "png:var/prints"
    camera: str = "sim"
    version: str = "0.1.0"

    @classmethod
    def load(cls, path: Path) -> "EdgeConfig":
        """Read a TOML config file (see ``deploy/edge.example.toml``)."""
        with path.open("rb") as f:
            return cls.model_validate(tomllib.load(f))

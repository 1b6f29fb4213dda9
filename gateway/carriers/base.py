"""The carrier interface every adapter implements, and the types it speaks."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol


@dataclass(frozen=True)
class Address:
    """A postal address as Chinese carriers want it."""

    name: str
    phone: str
    province: str
    city: str
    district: str
    street: str


@dataclass(frozen=True)
class Parcel:
    """What is being shipped."""

    weight_kg: float
    count: int
    description: str


@dataclass(frozen=True)
class ShipmentRequest:
    """A shipment to create. ``order_code`` is our idempotency key (the tote id)."""

    order_code: str
    sender: Address
    receiver: Address
    parcel: Parcel
    pickup_start: datetime
    pickup_end: datetime


@dataclass(frozen=True)
class Shipment:
    """A created shipment: the carrier's waybill for our order code."""

    carrier: str
    order_code: str
    waybill: str
    label: bytes | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PickupBooking:
    """A booked courier pickup window."""

    carrier: str
    order_code: str
    booking_id: str
    window_start: datetime
    window_end: datetime


class TrackingState(StrEnum):
    """Carrier-neutral tracking states (Kdniao State 0–6)."""

    NONE = "none"
    COLLECTED = "collected"
    IN_TRANSIT = "in_transit"
    SIGNED = "signed"
    PROBLEM = "problem"
    FORWARDED = "forwarded"
    CUSTOMS = "customs"


@dataclass(frozen=True)
class TrackingUpdate:
    """One tracking event for a waybill."""

    carrier: str
    waybill: str
    order_code: str | None
    state: TrackingState
    carrier_state: str
    detail: str
    at: datetime
    raw: Mapping[str, Any] = field(default_factory=dict)


class CarrierError(Exception):
    """Base of every carrier failure."""

    def __init__(self, carrier: str, reason: str) -> None:
        super().__init__(f"{carrier}: {reason}")
        self.carrier = carrier
        self.reason = reason


class CarrierTimeout(CarrierError):
    """No answer in time: the request may or may not have been carried out."""


class CarrierUnavailable(CarrierError):
    """Connection refused or a 5xx: try again later."""


class CarrierRejected(CarrierError):
    """The carrier answered no (bad address, rate limit, ...)."""

    def __init__(self, carrier: str, code: str, reason: str) -> None:
        super().__init__(carrier, f"{code} {reason}")
        self.code = code


class CarrierMalformedReply(CarrierError):
    """An answer we cannot parse."""


class DuplicateOrder(CarrierRejected):
    """The carrier already has this order code; ``waybill`` is the existing one if it said."""

    def __init__(self, carrier: str, code: str, reason: str, waybill: str | None) -> None:
        super().__init__(carrier, code, reason)
        self.waybill = waybill


class PushVerificationError(CarrierError):
    """A tracking push with a bad signature or shape."""


class Carrier(Protocol):
    """What the gateway needs from a carrier."""

    name: str

    async def create_shipment(self, req: ShipmentRequest) -> Shipment:
        """Create (or, after a lost reply, find) the shipment for ``req.order_code``."""
        ...

    async def cancel_shipment(self, order_code: str, waybill: str) -> None:
        """Cancel an unused waybill."""
        ...

    async def book_pickup(self, shipment: Shipment, req: ShipmentRequest) -> PickupBooking:
        """Book a courier to collect the shipment."""
        ...

    async def cancel_pickup(self, shipment: Shipment) -> None:
        """Cancel a booked pickup."""
        ...

    async def subscribe(self, shipment: Shipment) -> None:
        """Ask for tracking pushes for the shipment."""
        ...

    async def query(self, shipment: Shipment) -> list[TrackingUpdate]:
        """Poll the shipment's tracking (fallback when pushes go quiet)."""
        ...

    def parse_push(self, form: Mapping[str, str]) -> list[TrackingUpdate]:
        """Verify and parse a tracking push, or raise :class:`PushVerificationError`."""
        ...

    def push_reply(self, ok: bool, reason: str = "") -> dict[str, Any]:
        """The JSON body the carrier expects in answer to a push."""
        ...

"""The carrier interface every adapter implements, and the types it speaks.

One interface for every carrier (DESIGN §8): create and cancel a shipment, book and cancel the
courier's pickup of a tote, book and cancel a home pickup (上门取件) of one return, subscribe to
tracking, query it, and verify and parse the carrier's pushes. Adapters raise only the typed
:class:`CarrierError` family below, so callers can tell "try again later" from "the carrier said
no" without knowing the carrier.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gateway.carriers.resilience import CircuitBreaker


CHINA_TIME = timezone(timedelta(hours=8), "CST")
"""The carriers' wall clock: times on the wire are Beijing time without a zone (no DST)."""

WIRE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def wire_time(at: datetime) -> str:
    """``at`` as carriers write times: ``YYYY-MM-DD HH:MM:SS`` in Beijing time."""
    return at.astimezone(CHINA_TIME).strftime(WIRE_TIME_FORMAT)


def parse_wire_time(text: str) -> datetime | None:
    """A carrier's ``YYYY-MM-DD HH:MM:SS`` (Beijing time); None when it is not one."""
    try:
        return datetime.strptime(text.strip(), WIRE_TIME_FORMAT).replace(tzinfo=CHINA_TIME)
    except ValueError:
        return None


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
    """A shipment to create or a pickup to book.

    ``order_code`` is our idempotency key (the tote id, or the return id of a home pickup): the
    carrier refuses a second order with the same code, which is how a retry after a lost reply
    finds the first order instead of creating another. ``product`` is the carrier's product code
    (Kdniao ``ShipperCode`` such as ``YTO`` or ``EMS``; SF ``expressTypeId``); ``None`` uses the
    adapter's default.
    """

    order_code: str
    sender: Address
    receiver: Address
    parcel: Parcel
    pickup_start: datetime
    pickup_end: datetime
    product: str | None = None
    remark: str = ""


@dataclass(frozen=True)
class Shipment:
    """A created shipment: the carrier's waybill for our order code."""

    carrier: str
    order_code: str
    waybill: str
    product: str = ""
    label: bytes | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PickupBooking:
    """A booked courier pickup window, and the waybill the courier collects."""

    carrier: str
    order_code: str
    booking_id: str
    window_start: datetime
    window_end: datetime
    waybill: str
    product: str = ""

    @property
    def shipment(self) -> Shipment:
        """The shipment the booking collects, for tracking it."""
        return Shipment(self.carrier, self.order_code, self.waybill, self.product)


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
    """One tracking event for a waybill. ``problem`` says what went wrong in a PROBLEM update."""

    carrier: str
    waybill: str
    order_code: str | None
    state: TrackingState
    carrier_state: str
    detail: str
    at: datetime
    raw: Mapping[str, Any] = field(default_factory=dict)
    problem: str | None = None


class CarrierError(Exception):
    """Base of every carrier failure."""

    retryable = False

    def __init__(self, carrier: str, reason: str) -> None:
        super().__init__(f"{carrier}: {reason}")
        self.carrier = carrier
        self.reason = reason


class CarrierTimeout(CarrierError):
    """No answer in time: the request may or may not have been carried out."""

    retryable = True


class CarrierUnavailable(CarrierError):
    """Connection refused or a 5xx: nothing known to be done; try again later."""

    retryable = True


class CarrierRateLimited(CarrierError):
    """The carrier asks us to slow down; ``retry_after_s`` is its Retry-After, if it gave one."""

    retryable = True

    def __init__(self, carrier: str, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(carrier, reason)
        self.retry_after_s = retry_after_s


class CircuitOpenError(CarrierUnavailable):
    """Too many recent failures: calls to this carrier are held back until the cool-down ends."""

    retryable = False  # retrying at once would only hit the open circuit again


class CarrierRejected(CarrierError):
    """The carrier answered no (bad address, unknown order, ...). Never retried."""

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
    breaker: "CircuitBreaker"

    async def create_shipment(self, req: ShipmentRequest) -> Shipment:
        """Create (or, after a lost reply, find) the shipment for ``req.order_code``."""
        ...

    async def cancel_shipment(self, shipment: Shipment) -> None:
        """Cancel an unused waybill. Cancelling one already cancelled succeeds."""
        ...

    async def book_pickup(self, shipment: Shipment, req: ShipmentRequest) -> PickupBooking:
        """Book a courier to collect an existing shipment (a tote) in the request's window.

        Booking again for the same order code returns the existing booking."""
        ...

    async def cancel_pickup(self, shipment: Shipment) -> None:
        """Cancel a booked pickup."""
        ...

    async def book_home_pickup(self, req: ShipmentRequest) -> PickupBooking:
        """Book a courier to collect one parcel at ``req.sender`` (the customer's address)
        between ``req.pickup_start`` and ``req.pickup_end`` and carry it to ``req.receiver``
        (上门取件): a single return that skips the store.

        The carrier assigns the waybill with the booking; ``booking.shipment`` is what to track.
        Use the return id as ``req.order_code``: a retry after a lost reply (or any repeat)
        returns the booking already made, never a second courier.
        Raises :class:`CarrierRejected` for a slot or address the carrier will not serve."""
        ...

    async def cancel_home_pickup(self, booking: PickupBooking) -> None:
        """Cancel a home pickup before the courier has collected the parcel. Raises
        :class:`CarrierRejected` once the parcel is collected."""
        ...

    async def subscribe(self, shipment: Shipment) -> None:
        """Ask for tracking pushes for the shipment."""
        ...

    async def query(self, shipment: Shipment) -> list[TrackingUpdate]:
        """Poll the shipment's tracking (fallback when pushes go quiet), oldest first."""
        ...

    def parse_push(self, form: Mapping[str, str]) -> list[TrackingUpdate]:
        """Verify and parse a tracking push, or raise :class:`PushVerificationError`."""
        ...

    def push_reply(self, ok: bool, reason: str = "") -> dict[str, Any]:
        """The JSON body the carrier expects in answer to a push."""
        ...

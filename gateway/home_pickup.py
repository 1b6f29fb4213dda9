"""Home pickup (上门取件): a courier collects one return at the customer's address in a time
slot, and the parcel skips the store (ADR 0015).

The authorization stores what to book in ``home_pickups`` (:func:`plan`). Booking is a job
claimed with ``FOR UPDATE SKIP LOCKED`` (``gateway/claims.py``) by :class:`HomePickupDesk`
from the gateway's timers, only while the return is ``authorized`` (a return in ``review``
waits: its row is ``waiting`` until the approval moves it). The carrier is chosen by the
rules of ``gateway/carrier_choice.py`` from the customer's province, once, and stored. The
return id is the carrier's order code, so a retry after a timeout finds the booking already
made instead of sending a second courier. A booking is recorded with the shipment to track,
the ``shipment.created`` webhook and the customer's notice in one transaction.

What follows from the return's transitions (:func:`on_transitions`, from the state-machine
hook in ``gateway/return_events.py``): approval releases a waiting booking; the courier's
collection (tracking moves the return out of ``authorized``) marks it collected; a return
that is cancelled, expires, or is dropped off at a kiosk instead has its pickup cancelled at
the carrier by the same job, after the commit.

Row status:

| status        | meaning                                                         |
|---------------|-----------------------------------------------------------------|
| waiting       | the return is in review; nothing to do yet                      |
| pending       | to be booked (retried with backoff while the carrier is down)   |
| booked        | a courier is booked; the shipment is tracked                    |
| collected     | the courier has the parcel                                      |
| cancelling    | to be cancelled at the carrier                                  |
| cancelled     | cancelled (at the carrier, or before anything was booked)       |
| rejected      | the carrier refused the slot or address: in the exception queue |
| cancel_failed | the carrier would not cancel (collected): in the exception queue|
"""

import contextlib
import json
import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from gateway import carrier_exceptions as queue
from gateway import return_events, tracking
from gateway.carrier_choice import CarrierChooser, ChoiceRequest, NoCarrierError
from gateway.carrier_exceptions import Reason, Subject
from gateway.carriers.base import (
    Address,
    Carrier,
    CarrierError,
    CarrierMalformedReply,
    CarrierRejected,
    CarrierTimeout,
    Parcel,
    PickupBooking,
    ShipmentRequest,
)
from gateway.claims import JobTable, backoff_delay, claim_due
from gateway.config import GatewayConfig
from gateway.database import Database, Row, Transaction, placeholders
from gateway.returns import Cause, CauseKind, IllegalTransitionError, ReturnState, Transition, move

log = logging.getLogger(__name__)

MAX_SLOT = timedelta(hours=8)
"""The longest slot a customer may offer: carriers book couriers in windows of a few hours."""
MAX_AHEAD = timedelta(days=14)
"""How far ahead a slot may start: carriers do not book couriers weeks out."""

JOBS = JobTable("home_pickups", key="return_id")
LEASE_S = 120.0  # longer than a carrier call with its own retries
BATCH = 20
RETRY_BASE_S = 1.0
RETRY_MAX_S = 600.0
_RNG = random.Random()


class Status:
    """A ``home_pickups`` row's status (see the module's table)."""

    WAITING = "waiting"
    PENDING = "pending"
    BOOKED = "booked"
    COLLECTED = "collected"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    CANCEL_FAILED = "cancel_failed"


CANCEL_TRIGGERS = {
    ReturnState.CANCELLED: "return cancelled",
    ReturnState.EXPIRED: "return expired",
    ReturnState.DROPPED_OFF: "dropped off at a kiosk instead",
}
"""Transitions that make a booked (or to be booked) courier unwanted, and why."""
COLLECTION = frozenset({ReturnState.SHIPPED, ReturnState.IN_TRANSIT, ReturnState.RECEIVED})


# ---- the request ------------------------------------------------------------------------


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class PickupAddress(_Input):
    """Where the courier collects the parcel."""

    province: str = Field(min_length=1, max_length=40)
    city: str = Field(min_length=1, max_length=40)
    district: str = Field(min_length=1, max_length=40)
    street: str = Field(min_length=1, max_length=200)
    postcode: str | None = Field(default=None, pattern=r"^[0-9]{6}$")


class PickupContact(_Input):
    """Whom the courier calls."""

    name: str = Field(min_length=1, max_length=100)
    phone: str = Field(pattern=r"^\+?[0-9][0-9 -]{5,30}$")


class PickupSlot(_Input):
    """When the courier may come: ISO 8601 times with their zone."""

    start: AwareDatetime
    end: AwareDatetime

    @field_validator("start")
    @classmethod
    def _start_ahead(cls, start: datetime) -> datetime:
        now = datetime.now(UTC)
        if start <= now:
            raise ValueError("the slot must start in the future")
        if start > now + MAX_AHEAD:
            raise ValueError(f"the slot may start at most {MAX_AHEAD.days} days ahead")
        return start

    @field_validator("end")
    @classmethod
    def _end_after_start(cls, end: datetime, info: ValidationInfo) -> datetime:
        start = info.data.get("start")
        if start is None:
            return end  # start itself is invalid; that error is enough
        if end <= start:
            raise ValueError("the slot must end after it starts")
        if end - start > MAX_SLOT:
            raise ValueError(f"the slot may be at most {MAX_SLOT.seconds // 3600} hours long")
        return end


class HomePickup(_Input):
    """``pickup`` of a ``home_pickup`` return."""

    address: PickupAddress
    contact: PickupContact
    slot: PickupSlot


async def plan(tx: Transaction, return_id: str, pickup: HomePickup) -> None:
    """Store the pickup to book for a return just inserted (in its transaction): due now when
    the return is ``authorized``, waiting for approval otherwise."""
    row = await tx.fetchone("SELECT state FROM returns WHERE id = ?", (return_id,))
    assert row is not None, "plan() follows the return's insert"
    status = Status.PENDING if row[0] == ReturnState.AUTHORIZED else Status.WAITING
    now = time.time()
    address = {**pickup.address.model_dump(), **pickup.contact.model_dump()}
    await tx.execute(
        "INSERT INTO home_pickups (return_id, status, address, slot_start, slot_end, "
        "next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (return_id, status, json.dumps(address, ensure_ascii=False),
         pickup.slot.start.timestamp(), pickup.slot.end.timestamp(), now, now, now),
    )  # fmt: skip


# ---- the state-machine hook ---------------------------------------------------------------


async def on_transitions(tx: Transaction, transitions: Sequence[Transition]) -> None:
    """React to returns' moves in their transaction: release, mark collected, or ask to
    cancel the pickup. Costs nothing for moves that cannot concern a home pickup and one
    query for a batch of drop-offs."""
    now = time.time()
    approved = [
        t.return_id
        for t in transitions
        if t.from_state is ReturnState.REVIEW and t.to_state is ReturnState.AUTHORIZED
    ]
    collected = [
        t.return_id
        for t in transitions
        if t.from_state is ReturnState.AUTHORIZED and t.to_state in COLLECTION
    ]
    unwanted = {
        t.return_id: CANCEL_TRIGGERS[t.to_state]
        for t in transitions
        if t.from_state is not None and t.to_state in CANCEL_TRIGGERS
    }
    if approved:
        await tx.execute(
            "UPDATE home_pickups SET status = ?, next_attempt_at = ?, updated_at = ? "
            f"WHERE status = ? AND return_id IN ({placeholders(len(approved))})",
            (Status.PENDING, now, now, Status.WAITING, *approved),
        )
    if collected:
        await tx.execute(
            "UPDATE home_pickups SET status = ?, updated_at = ? "
            f"WHERE status = ? AND return_id IN ({placeholders(len(collected))})",
            (Status.COLLECTED, now, Status.BOOKED, *collected),
        )
    if unwanted:
        await _ask_to_cancel(tx, unwanted, now)


async def _ask_to_cancel(tx: Transaction, unwanted: Mapping[str, str], now: float) -> None:
    """Nothing booked yet (waiting): cancelled at once. Booked: the job cancels it at the
    carrier. Pending: the booking job decides, as a booking call may be in flight."""
    ids = sorted(unwanted)
    rows = await tx.fetchall(
        f"SELECT return_id FROM home_pickups WHERE return_id IN ({placeholders(len(ids))}) "
        "AND status IN (?, ?, ?)",
        (*ids, Status.WAITING, Status.PENDING, Status.BOOKED),
    )
    # One statement per row, deciding on the row's status as it is when it runs: a booking
    # being recorded concurrently either sees the cancel reason or is seen as booked.
    await tx.executemany(
        "UPDATE home_pickups SET cancel_reason = COALESCE(cancel_reason, ?), "
        "status = CASE status WHEN ? THEN ? WHEN ? THEN ? ELSE status END, "
        "next_attempt_at = CASE WHEN status = ? THEN ? ELSE next_attempt_at END, "
        "updated_at = ? WHERE return_id = ? AND status IN (?, ?, ?)",
        [
            (unwanted[str(r[0])], Status.WAITING, Status.CANCELLED, Status.BOOKED,
             Status.CANCELLING, Status.BOOKED, now, now, str(r[0]), Status.WAITING,
             Status.PENDING, Status.BOOKED)
            for r in rows
        ],
    )  # fmt: skip


async def rebook(tx: Transaction, return_id: str, exception_id: str) -> bool:
    """An operator resumed a refused pickup (the carrier serves the slot or address now):
    the return is ``authorized`` again and its pickup is chosen a carrier and booked anew.
    False when the pickup was not refused (a failed cancellation stays as it is)."""
    now = time.time()
    changed = await tx.execute(
        "UPDATE home_pickups SET status = ?, service = NULL, carrier = NULL, product = NULL, "
        "choice = NULL, attempts = 0, last_error = NULL, next_attempt_at = ?, updated_at = ? "
        "WHERE return_id = ? AND status = ?",
        (Status.PENDING, now, now, return_id, Status.REJECTED),
    )
    if not changed:
        return False
    cause = Cause(CauseKind.OPERATOR, exception_id)
    with contextlib.suppress(IllegalTransitionError):  # moved on meanwhile
        await move(tx, return_id, ReturnState.AUTHORIZED, cause, resume=True)
    return True


# ---- views ----------------------------------------------------------------------------------

VIEW_COLUMNS = (
    "status, address, slot_start, slot_end, service, carrier, waybill, booking_id, "
    "window_start, window_end, cancel_reason, attempts, last_error"
)


async def view(tx: Transaction, return_id: str) -> dict[str, Any] | None:
    """The return's home pickup as the API shows it; None when it has none."""
    row = await tx.fetchone(
        f"SELECT {VIEW_COLUMNS} FROM home_pickups WHERE return_id = ?", (return_id,)
    )
    if row is None:
        return None
    (status, address, slot_start, slot_end, service, carrier, waybill, booking_id,
     window_start, window_end, cancel_reason, attempts, last_error) = row  # fmt: skip
    return {
        "status": status,
        "address": json.loads(address),
        "slot": {"start": _iso(slot_start), "end": _iso(slot_end)},
        "service": service,
        "carrier": carrier,
        "waybill": waybill,
        "pickup_code": booking_id if booking_id not in (None, return_id) else None,
        "window": None
        if window_start is None
        else {"start": _iso(window_start), "end": _iso(window_end)},
        "cancel_reason": cancel_reason,
        "attempts": attempts,
        "last_error": last_error,
    }


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(float(ts), UTC).isoformat()


# ---- the desk ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    return_id: str
    status: str
    address: dict[str, str]
    slot_start: float
    slot_end: float
    service: str | None
    carrier: str | None
    product: str | None
    waybill: str | None
    booking_id: str | None
    window_start: float | None
    window_end: float | None
    cancel_reason: str | None
    maybe_booked: bool
    attempts: int
    return_state: str
    size: str
    order_id: str

    @property
    def booking(self) -> PickupBooking:
        """The booking made (only for a row that has one)."""
        assert self.carrier and self.waybill and self.booking_id
        return PickupBooking(
            self.carrier,
            self.return_id,
            self.booking_id,
            datetime.fromtimestamp(self.window_start or self.slot_start, UTC),
            datetime.fromtimestamp(self.window_end or self.slot_end, UTC),
            self.waybill,
            self.product or "",
        )


JOB_COLUMNS = (
    "status", "address", "slot_start", "slot_end", "service", "carrier", "product", "waybill",
    "booking_id", "window_start", "window_end", "cancel_reason", "maybe_booked", "attempts",
)  # fmt: skip


class HomePickupDesk:
    """Books and cancels home pickups; safe to run in several replicas at once."""

    def __init__(
        self,
        db: Database,
        config: GatewayConfig,
        carriers: Mapping[str, Carrier],
        chooser: CarrierChooser,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._db = db
        self._config = config
        self._carriers = carriers
        self._chooser = chooser
        self._rng = rng or _RNG
        self.booked = 0
        self.cancelled = 0
        self.failures = 0
        self.rejections = 0

    async def process_due(self, now: float | None = None) -> int:
        """Book and cancel every due pickup; returns how many were handled."""
        now = time.time() if now is None else now
        token, jobs = await self._claim(now)
        for job in jobs:
            if job.status == Status.CANCELLING:
                await self._cancel(token, job)
            elif job.cancel_reason is not None and not job.maybe_booked:
                await self._set(token, job, Status.CANCELLED)  # no courier was ever asked
            elif job.return_state == ReturnState.AUTHORIZED or job.cancel_reason is not None:
                await self._book(token, job)
            # else: the return is elsewhere (an exception): the lease defers the booking
        return len(jobs)

    async def _claim(self, now: float) -> tuple[str, list[_Job]]:
        async with self._db.transaction() as tx:
            claimed = await claim_due(
                tx, JOBS, columns=JOB_COLUMNS, statuses=(Status.PENDING, Status.CANCELLING),
                now=now, lease_s=LEASE_S, limit=BATCH,
            )  # fmt: skip
            if not claimed.rows:
                return claimed.token, []
            ids = [str(r[0]) for r in claimed.rows]
            returns = await tx.fetchall(
                "SELECT id, state, size, order_id FROM returns "
                f"WHERE id IN ({placeholders(len(ids))})",
                ids,
            )
        facts = {str(r[0]): (str(r[1]), str(r[2]), str(r[3])) for r in returns}
        return claimed.token, [_job(row, *facts[str(row[0])]) for row in claimed.rows]

    # ---- booking ------------------------------------------------------------------------

    async def _book(self, token: str, job: _Job) -> None:
        try:
            carrier, product = await self._choice(token, job)
            booking = await carrier.book_home_pickup(self._request(job, product))
        except (CarrierRejected, NoCarrierError) as exc:
            await self._rejected(token, job, exc)
            return
        except CarrierError as exc:
            await self._failed(token, job, exc)
            return
        if await self._record_booking(token, job, booking):
            try:
                await carrier.subscribe(booking.shipment)
            except CarrierError as exc:  # polling follows the shipment all the same
                log.warning("subscribing to %s %s failed: %s", booking.carrier, booking.waybill,
                            exc)  # fmt: skip

    async def _choice(self, token: str, job: _Job) -> tuple[Carrier, str | None]:
        """The stored carrier, or one chosen now by the rules and stored."""
        if job.carrier is not None and job.carrier in self._carriers:
            return self._carriers[job.carrier], job.product
        choice = self._chooser.choose(
            ChoiceRequest(
                origin_province=job.address["province"],
                destination_province=self._config.warehouse.province,
                weight_kg=self._weight(job),
            ),
            unavailable={name for name, c in self._carriers.items() if c.breaker.is_open},
        )
        log.info("home pickup %s: %s (%s)", job.return_id, choice.service, choice.explain())
        async with self._db.transaction() as tx:
            await tx.execute(
                "UPDATE home_pickups SET service = ?, carrier = ?, product = ?, choice = ? "
                "WHERE return_id = ? AND claim = ?",
                (choice.service, choice.carrier, choice.product, choice.explain(),
                 job.return_id, token),
            )  # fmt: skip
        return self._carriers[choice.carrier], choice.product

    def _weight(self, job: _Job) -> float:
        profile = self._config.consolidation.parcels.get(job.size)
        return profile.weight_kg if profile is not None else 1.0

    def _request(self, job: _Job, product: str | None) -> ShipmentRequest:
        a, w = job.address, self._config.warehouse
        return ShipmentRequest(
            order_code=job.return_id,  # the carrier refuses a second order with it
            sender=Address(
                a["name"], a["phone"], a["province"], a["city"], a["district"], a["street"]
            ),
            receiver=Address(w.name, w.phone, w.province, w.city, w.district, w.street),
            parcel=Parcel(self._weight(job), 1, f"return of order {job.order_id}"),
            pickup_start=datetime.fromtimestamp(job.slot_start, UTC),
            pickup_end=datetime.fromtimestamp(job.slot_end, UTC),
            product=product,
            remark=f"Dropline return {job.return_id}",
        )

    async def _record_booking(self, token: str, job: _Job, booking: PickupBooking) -> bool:
        """Store the booking, track its shipment, tell the merchant and the customer, in one
        transaction. True when the courier is to come; False when the claim was lost
        (another worker records it) or the pickup is to be cancelled already."""
        now = time.time()
        async with self._db.transaction() as tx:
            changed = await tx.execute(
                "UPDATE home_pickups SET status = CASE WHEN cancel_reason IS NULL THEN ? "
                "ELSE ? END, carrier = ?, product = ?, waybill = ?, booking_id = ?, "
                "window_start = ?, window_end = ?, attempts = attempts + 1, "
                "next_attempt_at = ?, last_error = NULL, updated_at = ? "
                "WHERE return_id = ? AND claim = ? AND status = ?",
                (Status.BOOKED, Status.CANCELLING, booking.carrier, booking.product,
                 booking.waybill, booking.booking_id, booking.window_start.timestamp(),
                 booking.window_end.timestamp(), now, now, job.return_id, token,
                 Status.PENDING),
            )  # fmt: skip
            if not changed:
                return False
            await tracking.register_shipment(
                tx,
                booking.shipment,
                quiet_after_s=self._config.tracking.quiet_after_s,
                return_id=job.return_id,
                booking_id=booking.booking_id,
            )
            self.booked += 1
            row = await tx.fetchone(
                "SELECT status FROM home_pickups WHERE return_id = ?", (job.return_id,)
            )
            if row is None or row[0] != Status.BOOKED:
                return False  # booked only to be cancelled: the cancel job follows
            await return_events.home_pickup_booked(tx, job.return_id, booking)
        log.info("home pickup %s booked with %s, waybill %s", job.return_id, booking.carrier,
                 booking.waybill)  # fmt: skip
        return True

    async def _failed(self, token: str, job: _Job, exc: CarrierError) -> None:
        """Nothing decided (or not known to be): try again later. A timeout or an unreadable
        reply may have booked the courier, which a later cancellation must know."""
        self.failures += 1
        uncertain = isinstance(exc, CarrierTimeout | CarrierMalformedReply)
        delay = backoff_delay(job.attempts + 1, base_s=RETRY_BASE_S, max_s=RETRY_MAX_S,
                              rng=self._rng)  # fmt: skip
        log.warning("home pickup %s: %s; retry in %.1fs", job.return_id, exc, delay)
        async with self._db.transaction() as tx:
            await tx.execute(
                "UPDATE home_pickups SET attempts = attempts + 1, next_attempt_at = ?, "
                "maybe_booked = CASE WHEN ? = 1 THEN 1 ELSE maybe_booked END, "
                "last_error = ?, updated_at = ? WHERE return_id = ? AND claim = ?",
                (time.time() + delay, int(uncertain), _error(exc), time.time(), job.return_id,
                 token),
            )  # fmt: skip

    async def _rejected(self, token: str, job: _Job, exc: CarrierRejected | NoCarrierError) -> None:
        """The carrier will not come (slot, address): a person must see to the return."""
        self.rejections += 1
        detail = _error(exc)
        carrier = exc.carrier if isinstance(exc, CarrierError) else job.carrier
        log.error("home pickup %s refused: %s", job.return_id, detail)
        async with self._db.transaction() as tx:
            # Read under lock: the return may have been cancelled since the claim.
            row = await tx.fetchone(
                "SELECT cancel_reason FROM home_pickups WHERE return_id = ?" + tx.for_update(),
                (job.return_id,),
            )
            unwanted = row is not None and row[0] is not None
            status = Status.CANCELLED if unwanted else Status.REJECTED
            if not await self._set_in(tx, token, job, status, detail) or unwanted:
                return
            subject = Subject.home_pickup(job.return_id, carrier)
            exception_id, _ = await queue.open_exception(
                tx, subject, Reason.PICKUP_REJECTED, detail
            )
            await _hold(tx, job.return_id, exception_id)

    # ---- cancelling ---------------------------------------------------------------------

    async def _cancel(self, token: str, job: _Job) -> None:
        carrier = self._carriers.get(job.carrier or "")
        if carrier is None:
            log.error("home pickup %s: no adapter for %s to cancel", job.return_id, job.carrier)
            return  # the lease defers it until the adapter is configured again
        try:
            await carrier.cancel_home_pickup(job.booking)
        except CarrierRejected as exc:
            await self._not_cancelled(token, job, exc)
            return
        except CarrierError as exc:
            await self._failed(token, job, exc)
            return
        async with self._db.transaction() as tx:
            if not await self._set_in(tx, token, job, Status.CANCELLED):
                return
            # The waybill will not travel: stop following it.
            await tx.execute(
                "UPDATE shipments SET finished_at = ? WHERE carrier = ? AND waybill = ? "
                "AND finished_at IS NULL",
                (time.time(), job.carrier, job.waybill),
            )
        self.cancelled += 1
        log.info("home pickup %s cancelled at %s (%s)", job.return_id, job.carrier,
                 job.cancel_reason)  # fmt: skip

    async def _not_cancelled(self, token: str, job: _Job, exc: CarrierRejected) -> None:
        """The carrier would not cancel, most likely because the courier has the parcel."""
        self.rejections += 1
        detail = f"{job.cancel_reason}, but {job.carrier} would not cancel waybill " \
                 f"{job.waybill}: {exc.reason}"  # fmt: skip
        log.error("home pickup %s: %s", job.return_id, detail)
        async with self._db.transaction() as tx:
            if not await self._set_in(tx, token, job, Status.CANCEL_FAILED, detail):
                return
            subject = Subject.home_pickup(job.return_id, job.carrier)
            exception_id, _ = await queue.open_exception(
                tx, subject, Reason.PICKUP_NOT_CANCELLED, detail
            )
            await _hold(tx, job.return_id, exception_id)

    # ---- rows ---------------------------------------------------------------------------

    async def _set(self, token: str, job: _Job, status: str) -> None:
        async with self._db.transaction() as tx:
            await self._set_in(tx, token, job, status)

    async def _set_in(
        self, tx: Transaction, token: str, job: _Job, status: str, error: str | None = None
    ) -> bool:
        """Finish a claimed job with ``status``; False when the claim was lost."""
        now = time.time()
        changed = await tx.execute(
            "UPDATE home_pickups SET status = ?, last_error = COALESCE(?, last_error), "
            "attempts = attempts + 1, updated_at = ?, claim = NULL "
            "WHERE return_id = ? AND claim = ?",
            (status, error, now, job.return_id, token),
        )
        return changed == 1


def _job(row: Row, return_state: str, size: str, order_id: str) -> _Job:
    (return_id, status, address, slot_start, slot_end, service, carrier, product, waybill,
     booking_id, window_start, window_end, cancel_reason, maybe_booked, attempts) = row  # fmt: skip
    return _Job(
        str(return_id), str(status), json.loads(address), float(slot_start), float(slot_end),
        service, carrier, product, waybill, booking_id,
        None if window_start is None else float(window_start),
        None if window_end is None else float(window_end),
        cancel_reason, bool(maybe_booked), int(attempts), return_state, size, order_id,
    )  # fmt: skip


def _error(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


async def _hold(tx: Transaction, return_id: str, exception_id: str) -> None:
    """Put the return in ``exception`` (``return.exception`` to the merchant follows)."""
    with contextlib.suppress(IllegalTransitionError):  # already there
        await move(tx, return_id, ReturnState.EXCEPTION, Cause(CauseKind.CARRIER, exception_id))

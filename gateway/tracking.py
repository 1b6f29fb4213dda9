"""Following shipments: carrier pushes, polling for shipments gone quiet, and the exception
queue for problems (DESIGN §2 flow 6).

Every tracking update is stored once (the ``tracking`` table's key makes a replayed push a
no-op) and moves the returns of its shipment forward, never back. A problem state opens an
exception with the carrier's reason and puts the shipment's returns in ``exception``; resolving
it (operator, or the carrier reporting the parcel signed) puts them back on their journey.

A shipment with no news for ``quiet_after_s`` is polled with the carrier's query, then every
``poll_every_s`` while it stays quiet; one silent for ``silent_after_s`` goes to the queue.
"""

import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway import carrier_exceptions as queue
from gateway import home_pickup
from gateway.carrier_exceptions import Reason, Resolution, Subject
from gateway.carriers.base import Carrier, CarrierError, Shipment, TrackingState, TrackingUpdate
from gateway.config import TrackingSettings
from gateway.database import Database, Transaction
from gateway.returns import (
    JOURNEY,
    Cause,
    CauseKind,
    IllegalTransitionError,
    ReturnState,
    move,
)
from protocol.ids import new_id

log = logging.getLogger(__name__)

TRACKING_TO_RETURN: dict[TrackingState, ReturnState] = {
    TrackingState.COLLECTED: ReturnState.SHIPPED,
    TrackingState.IN_TRANSIT: ReturnState.IN_TRANSIT,
    TrackingState.FORWARDED: ReturnState.IN_TRANSIT,
    TrackingState.CUSTOMS: ReturnState.IN_TRANSIT,
    TrackingState.SIGNED: ReturnState.RECEIVED,
}

PROGRESS: dict[TrackingState, int] = {
    TrackingState.NONE: 0,
    TrackingState.COLLECTED: 1,
    TrackingState.IN_TRANSIT: 2,
    TrackingState.FORWARDED: 2,
    TrackingState.CUSTOMS: 2,
    TrackingState.SIGNED: 3,
}
"""How far along a shipment is; its recorded state only ever moves up."""

TOTE_STATE_SQL = "UPDATE totes SET state = ? WHERE id = ? AND state NOT IN ('open', 'closed')"
"""A tote follows its shipment once booked; while its booking is still being recorded, the
booking desk owns its state."""

CLAIM_DUE_POLLS = (
    "SELECT carrier, waybill, order_code, product, last_news_at FROM shipments "
    "WHERE finished_at IS NULL AND next_poll_at <= ? ORDER BY next_poll_at LIMIT ?"
)
"""Shipments due for a poll, selected ``FOR UPDATE SKIP LOCKED`` on PostgreSQL and claimed by
pushing ``next_poll_at`` forward (a lease) in the same transaction, so several gateway
replicas poll different shipments; the carrier calls run after the commit."""


@dataclass
class Applied:
    """What a batch of tracking updates did: how many were new, and the waybills we do not
    track (yet: a push can overtake the commit of its booking), left for the carrier to
    send again."""

    new: int = 0
    unknown: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ShipmentRow:
    """A tracked shipment as stored."""

    carrier: str
    waybill: str
    tote_id: str | None
    return_id: str | None
    state: TrackingState
    finished: bool

    @property
    def subject(self) -> Subject:
        """The exception-queue subject of this shipment."""
        return Subject.shipment(self.carrier, self.waybill, self.tote_id, self.return_id)


async def register_shipment(
    tx: Transaction,
    shipment: Shipment,
    *,
    quiet_after_s: float,
    tote_id: str | None = None,
    return_id: str | None = None,
    booking_id: str | None = None,
    now: float | None = None,
) -> bool:
    """Start tracking a shipment of a tote or of one return (home pickup); False if tracked
    already. Call it in the transaction that records the booking."""
    now = time.time() if now is None else now
    inserted = await tx.execute(
        "INSERT INTO shipments (carrier, waybill, order_code, product, tote_id, return_id, "
        "booking_id, state, created_at, last_news_at, next_poll_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (carrier, waybill) DO NOTHING",
        (shipment.carrier, shipment.waybill, shipment.order_code, shipment.product, tote_id,
         return_id, booking_id, TrackingState.NONE.value, now, now, now + quiet_after_s),
    )  # fmt: skip
    return inserted == 1


async def advance_return(
    tx: Transaction,
    return_id: str,
    target: ReturnState,
    cause: Cause,
    *,
    resume: bool = False,
) -> bool:
    """Move a return forward (late or repeated updates are ignored); True if it moved. The
    refund the merchant's policy calls for on arrival follows from the move itself
    (``gateway/return_events.py``)."""
    try:
        await move(tx, return_id, target, cause, resume=resume)
    except IllegalTransitionError:
        return False
    return True


class TrackingDesk:
    """Applies tracking updates, polls quiet shipments and resolves exceptions."""

    def __init__(
        self,
        db: Database,
        settings: TrackingSettings,
        carriers: Mapping[str, Carrier],
    ) -> None:
        self._db = db
        self.settings = settings
        self._carriers = carriers
        self.applied = 0
        self.duplicates = 0
        self.unknown_waybills = 0
        self.polls = 0
        self.poll_failures = 0
        self.exceptions_opened = 0

    # ---- updates ------------------------------------------------------------------------

    async def apply(self, updates: list[TrackingUpdate], cause_id: str) -> Applied:
        """Record tracking updates and move their shipments' returns. A replayed update
        changes nothing; one for a waybill we do not track is not recorded at all, so that
        the carrier's retry of it still counts once we do."""
        result = Applied()
        now = time.time()
        async with self._db.transaction() as tx:
            for update in sorted(updates, key=lambda u: u.at):
                ship = await self._shipment(tx, update.carrier, update.waybill)
                if ship is None:
                    result.unknown.append(update.waybill)
                elif await self._apply_one(tx, ship, update, cause_id, now):
                    result.new += 1
        if result.unknown:
            self.unknown_waybills += len(result.unknown)
            log.warning("tracking for waybills we do not track: %s", result.unknown)
        self.applied += result.new
        return result

    async def _apply_one(
        self, tx: Transaction, ship: ShipmentRow, update: TrackingUpdate, cause_id: str,
        now: float,
    ) -> bool:  # fmt: skip
        inserted = await tx.execute(
            "INSERT INTO tracking (carrier, waybill, state, carrier_state, at, detail, "
            "received_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (update.carrier, update.waybill, update.state.value, update.carrier_state,
             update.at.timestamp(), update.detail, now),
        )  # fmt: skip
        if not inserted:
            self.duplicates += 1
            return False
        await tx.execute(
            "UPDATE shipments SET last_news_at = ?, next_poll_at = ? "
            "WHERE carrier = ? AND waybill = ?",
            (now, now + self.settings.quiet_after_s, ship.carrier, ship.waybill),
        )
        if update.state is TrackingState.PROBLEM:
            if not ship.finished:  # a problem reported after signing changes nothing
                detail = " — ".join(filter(None, (update.problem, update.detail)))
                await self._hold(tx, ship, Reason.CARRIER_PROBLEM, detail, update.carrier_state)
            return True
        target = TRACKING_TO_RETURN.get(update.state)
        if target is None:
            return True  # news without a state (courier assigned, an unknown route code)
        await self._progress(tx, ship, update.state, now)
        cause = Cause(CauseKind.TRACKING, cause_id)
        if update.state is TrackingState.SIGNED:
            open_id = await queue.open_for(tx, ship.subject.key)
            if open_id is not None:
                await self._resolve(tx, open_id, Resolution.CARRIER_SIGNED, "carrier", "", now)
        for return_id in await self._returns_of(tx, ship):
            await advance_return(tx, return_id, target, cause)
        return True

    async def _progress(
        self, tx: Transaction, ship: ShipmentRow, state: TrackingState, now: float
    ) -> None:
        if PROGRESS[state] <= PROGRESS[ship.state]:
            return
        finished = now if state is TrackingState.SIGNED else None
        await tx.execute(
            "UPDATE shipments SET state = ?, finished_at = COALESCE(?, finished_at) "
            "WHERE carrier = ? AND waybill = ?",
            (state.value, finished, ship.carrier, ship.waybill),
        )
        if ship.tote_id is not None:
            await tx.execute(
                TOTE_STATE_SQL,
                (TRACKING_TO_RETURN[state].value, ship.tote_id),
            )

    async def _shipment(self, tx: Transaction, carrier: str, waybill: str) -> ShipmentRow | None:
        """The shipment, locked until commit: a push and a poll of it take turns."""
        row = await tx.fetchone(
            "SELECT carrier, waybill, tote_id, return_id, state, finished_at FROM shipments "
            "WHERE carrier = ? AND waybill = ?" + tx.for_update(),
            (carrier, waybill),
        )
        if row is None:
            return None
        return ShipmentRow(
            str(row[0]), str(row[1]), row[2], row[3], TrackingState(row[4]), row[5] is not None
        )

    async def _returns_of(self, tx: Transaction, ship: ShipmentRow) -> list[str]:
        if ship.tote_id is not None:
            rows = await tx.fetchall(
                "SELECT id FROM returns WHERE tote_id = ? ORDER BY id", (ship.tote_id,)
            )
            return [str(r[0]) for r in rows]
        return [ship.return_id] if ship.return_id is not None else []

    async def _hold(
        self,
        tx: Transaction,
        ship: ShipmentRow,
        reason: Reason,
        detail: str,
        carrier_state: str | None,
    ) -> str:
        """Open (or update) the shipment's exception and put its returns in ``exception``."""
        exception_id, opened = await queue.open_exception(
            tx, ship.subject, reason, detail, carrier_state=carrier_state
        )
        if opened:
            self.exceptions_opened += 1
            log.warning("exception %s: %s %s: %s", exception_id, ship.carrier, ship.waybill, detail)
        cause = Cause(CauseKind.TRACKING, exception_id)
        for return_id in await self._returns_of(tx, ship):
            with contextlib.suppress(IllegalTransitionError):  # already there, or refunded
                await move(tx, return_id, ReturnState.EXCEPTION, cause)
        if ship.tote_id is not None:
            await tx.execute(
                TOTE_STATE_SQL,
                (ReturnState.EXCEPTION.value, ship.tote_id),
            )
        return exception_id

    # ---- polling ------------------------------------------------------------------------

    async def poll_due(self, now: float | None = None) -> int:
        """Query every shipment that has gone quiet; returns how many were polled."""
        now = time.time() if now is None else now
        async with self._db.transaction() as tx:
            rows = await tx.fetchall(
                CLAIM_DUE_POLLS + tx.for_update(skip_locked=True), (now, self.settings.poll_batch)
            )
            for carrier, waybill, *_ in rows:
                await tx.execute(
                    "UPDATE shipments SET next_poll_at = ?, polls = polls + 1 "
                    "WHERE carrier = ? AND waybill = ?",
                    (now + self.settings.poll_every_s, carrier, waybill),
                )
        for carrier_name, waybill, order_code, product, last_news_at in rows:
            shipment = Shipment(str(carrier_name), str(order_code), str(waybill), str(product))
            news = await self._poll(shipment)
            if news == 0 and now - float(last_news_at) >= self.settings.silent_after_s:
                await self._silent(shipment, now - float(last_news_at))
        return len(rows)

    async def _poll(self, shipment: Shipment) -> int:
        carrier = self._carriers.get(shipment.carrier)
        if carrier is None:
            log.warning("no adapter for %s; cannot poll %s", shipment.carrier, shipment.waybill)
            return 0
        self.polls += 1
        try:
            updates = await carrier.query(shipment)
        except CarrierError as exc:
            self.poll_failures += 1
            log.info("poll of %s %s failed: %s", shipment.carrier, shipment.waybill, exc)
            return 0
        applied = await self.apply(updates, cause_id=f"{shipment.carrier}-poll-{new_id()}")
        return applied.new

    async def _silent(self, shipment: Shipment, quiet_s: float) -> None:
        async with self._db.transaction() as tx:
            ship = await self._shipment(tx, shipment.carrier, shipment.waybill)
            if ship is None or ship.finished or await queue.open_for(tx, ship.subject.key):
                return
            hours = quiet_s / 3600
            await self._hold(
                tx, ship, Reason.NO_TRACKING_NEWS, f"no tracking news for {hours:.1f} h", None
            )

    # ---- resolving ----------------------------------------------------------------------

    async def resolve(
        self, exception_id: str, resolution: Resolution, *, by: str, note: str = ""
    ) -> dict[str, Any]:
        """Resolve an exception as an operator; returns it as the API shows it. Raises
        :class:`~gateway.carrier_exceptions.ExceptionNotFoundError` or
        :class:`~gateway.carrier_exceptions.AlreadyResolvedError`."""
        async with self._db.transaction() as tx:
            await self._resolve(tx, exception_id, resolution, by, note, time.time())
        view = await queue.view(self._db, exception_id)
        assert view is not None
        return view

    async def _resolve(
        self,
        tx: Transaction,
        exception_id: str,
        resolution: Resolution,
        by: str,
        note: str,
        now: float,
    ) -> None:
        await queue.mark_resolved(tx, exception_id, resolution, by=by, note=note, now=now)
        item = await queue.fetch(tx, exception_id)
        assert item is not None
        log.info("exception %s resolved by %s: %s", exception_id, by, resolution)
        if item["waybill"] is None:  # a booking was refused
            if resolution is Resolution.CLOSE:
                return
            if item["tote_id"] is not None:
                await self._rebook(tx, str(item["tote_id"]))
            elif item["return_id"] is not None:
                await home_pickup.rebook(tx, str(item["return_id"]), exception_id)
            return
        ship = await self._shipment(tx, str(item["carrier"]), str(item["waybill"]))
        if ship is None:
            return
        if resolution is Resolution.CLOSE:
            await tx.execute(
                "UPDATE shipments SET finished_at = COALESCE(finished_at, ?) "
                "WHERE carrier = ? AND waybill = ?",
                (now, ship.carrier, ship.waybill),
            )
            return
        await self._resume(tx, exception_id, ship, by, now)

    async def _resume(
        self, tx: Transaction, exception_id: str, ship: ShipmentRow, by: str, now: float
    ) -> None:
        """Put the returns the exception held back where the shipment now is, and watch it:
        poll it at once for its current state."""
        implied = TRACKING_TO_RETURN.get(ship.state)
        cause = Cause(CauseKind.OPERATOR if by != "carrier" else CauseKind.TRACKING, exception_id)
        for return_id, before in await queue.returns_held(tx, exception_id):
            target = ReturnState(before)
            if implied is not None and JOURNEY.index(implied) > JOURNEY.index(target):
                target = implied
            await advance_return(tx, return_id, target, cause, resume=True)
        if ship.tote_id is not None:
            state = implied.value if implied is not None else "booked"
            await tx.execute(TOTE_STATE_SQL, (state, ship.tote_id))
        await tx.execute(
            "UPDATE shipments SET last_news_at = ?, next_poll_at = ? "
            "WHERE carrier = ? AND waybill = ? AND finished_at IS NULL",
            (now, now, ship.carrier, ship.waybill),
        )

    async def _rebook(self, tx: Transaction, tote_id: str) -> None:
        """A tote whose booking was refused goes back to be chosen a carrier and booked."""
        await tx.execute(
            "UPDATE totes SET state = 'closed', next_attempt_at = 0, service = NULL, "
            "carrier = NULL, product = NULL, choice = NULL WHERE id = ? AND state = 'exception'",
            (tote_id,),
        )

"""Booking closed totes with a carrier and following their tracking (DESIGN §2 flows 5–6)."""

import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway import commands
from gateway.carriers.base import (
    Address,
    Carrier,
    CarrierError,
    Parcel,
    ShipmentRequest,
    TrackingState,
    TrackingUpdate,
)
from gateway.config import AddressSettings, GatewayConfig, RefundPolicy
from gateway.database import Database, Transaction
from gateway.refunds import complete_if_done, policy_of
from gateway.refunds import request as request_refund
from gateway.returns import Cause, CauseKind, IllegalTransitionError, ReturnState, move
from protocol.ids import new_id
from protocol.messages import CollectParcels, ManifestLine, PrintLabel

log = logging.getLogger(__name__)

BOOKING_RETRY_BASE_S = 2.0
BOOKING_RETRY_MAX_S = 600.0
LABEL_COMMAND_TTL_S = 6 * 3600

TRACKING_TO_RETURN: dict[TrackingState, ReturnState] = {
    TrackingState.COLLECTED: ReturnState.SHIPPED,
    TrackingState.IN_TRANSIT: ReturnState.IN_TRANSIT,
    TrackingState.FORWARDED: ReturnState.IN_TRANSIT,
    TrackingState.CUSTOMS: ReturnState.IN_TRANSIT,
    TrackingState.SIGNED: ReturnState.RECEIVED,
    TrackingState.PROBLEM: ReturnState.EXCEPTION,
}


def _address(a: AddressSettings) -> Address:
    return Address(a.name, a.phone, a.province, a.city, a.district, a.street)


class ShippingDesk:
    """Books closed totes and applies tracking updates to the returns inside them."""

    def __init__(
        self,
        db: Database,
        config: GatewayConfig,
        carriers: Mapping[str, Carrier],
        refund_provider: str,
    ) -> None:
        self._db = db
        self._config = config
        self._carriers = carriers
        self._stores = {s.id: s for s in config.stores}
        self._refund_provider = refund_provider
        self.booked = 0
        self.booking_failures = 0
        self.tracking_applied = 0

    # ---- booking ------------------------------------------------------------------------

    async def book_due(self) -> int:
        """Book every closed tote that is due; returns how many were booked now."""
        rows = await self._db.fetchall(
            "SELECT id, store, item_count, weight_kg, booking_attempts FROM totes "
            "WHERE state = 'closed' AND next_attempt_at <= ? ORDER BY closed_at LIMIT 50",
            (time.time(),),
        )
        booked = 0
        for tote_id, store, count, weight_kg, attempts in rows:
            try:
                await self._book(str(tote_id), str(store), int(count), float(weight_kg))
                booked += 1
            except CarrierError as exc:
                await self._booking_failed(str(tote_id), int(attempts), exc)
        return booked

    def _shipment_request(
        self, tote_id: str, store: str, count: int, weight_kg: float
    ) -> ShipmentRequest:
        start = datetime.now(UTC) + timedelta(hours=1)
        return ShipmentRequest(
            order_code=tote_id,
            sender=_address(self._stores[store].address),
            receiver=_address(self._config.warehouse),
            parcel=Parcel(
                weight_kg=weight_kg,
                count=1,
                description=f"returns tote, {count} parcels",
            ),
            pickup_start=start,
            pickup_end=start + timedelta(hours=2),
        )

    async def _book(self, tote_id: str, store: str, count: int, weight_kg: float) -> None:
        carrier = self._carriers[self._stores[store].carrier]
        req = self._shipment_request(tote_id, store, count, weight_kg)
        shipment = await carrier.create_shipment(req)
        booking = await carrier.book_pickup(shipment, req)
        await carrier.subscribe(shipment)
        async with self._db.transaction() as tx:
            await tx.execute(
                "UPDATE totes SET state = 'booked', carrier = ?, waybill = ?, pickup_start = ?, "
                "pickup_end = ?, last_error = NULL WHERE id = ? AND state = 'closed'",
                (
                    carrier.name,
                    shipment.waybill,
                    booking.window_start.timestamp(),
                    booking.window_end.timestamp(),
                    tote_id,
                ),
            )
            await self._queue_label(tx, tote_id, store, carrier.name, shipment.waybill, booking)
        self.booked += 1
        log.info("tote %s booked with %s, waybill %s", tote_id, carrier.name, shipment.waybill)

    async def _queue_label(
        self, tx: Transaction, tote_id: str, store: str, carrier: str, waybill: str, booking: object
    ) -> None:
        rows = await tx.fetchall(
            "SELECT r.id, r.merchant, r.size, r.device FROM returns r WHERE r.tote_id = ? "
            "ORDER BY r.updated_at",
            (tote_id,),
        )
        if not rows:
            return
        device = str(rows[-1][3])  # the kiosk the latest parcel went into prints the label
        await self._queue_collection(tx, tote_id, store, rows)
        window_start = getattr(booking, "window_start", None)
        window_end = getattr(booking, "window_end", None)
        command_id = new_id()
        body = PrintLabel(
            command_id=command_id,
            expires_at=time.time() + LABEL_COMMAND_TTL_S,
            tote_id=tote_id,
            carrier=carrier,
            waybill=waybill,
            pickup_start=window_start.timestamp() if window_start else None,
            pickup_end=window_end.timestamp() if window_end else None,
            manifest=[ManifestLine(return_id=r[0], merchant=r[1], size=r[2]) for r in rows],
        )
        await commands.enqueue(tx, store=store, device=device, command_id=command_id, body=body)

    async def _queue_collection(
        self, tx: Transaction, tote_id: str, store: str, rows: list[tuple[Any, ...]]
    ) -> None:
        """Tell every kiosk holding parcels of the tote to free their compartments."""
        by_device: dict[str, list[str]] = {}
        for return_id, _, _, device in rows:
            by_device.setdefault(str(device), []).append(str(return_id))
        for device, return_ids in sorted(by_device.items()):
            command_id = new_id()
            body = CollectParcels(
                command_id=command_id,
                expires_at=time.time() + LABEL_COMMAND_TTL_S,
                tote_id=tote_id,
                return_ids=return_ids,
            )
            await commands.enqueue(tx, store=store, device=device, command_id=command_id, body=body)

    async def _booking_failed(self, tote_id: str, attempts: int, exc: CarrierError) -> None:
        self.booking_failures += 1
        delay = min(BOOKING_RETRY_MAX_S, BOOKING_RETRY_BASE_S * 2**attempts)
        log.warning("booking tote %s failed (%s); retry in %.0fs", tote_id, exc, delay)
        async with self._db.transaction() as tx:
            await tx.execute(
                "UPDATE totes SET booking_attempts = booking_attempts + 1, next_attempt_at = ?, "
                "last_error = ? WHERE id = ?",
                (time.time() + delay, f"{type(exc).__name__}: {exc}", tote_id),
            )

    # ---- tracking -----------------------------------------------------------------------

    async def apply_tracking(self, updates: list[TrackingUpdate], cause_id: str) -> int:
        """Record tracking updates (duplicates do nothing) and move the totes' returns."""
        applied = 0
        async with self._db.transaction() as tx:
            for update in updates:
                if await self._apply_one(tx, update, cause_id):
                    applied += 1
        self.tracking_applied += applied
        return applied

    async def _apply_one(self, tx: Transaction, update: TrackingUpdate, cause_id: str) -> bool:
        inserted = await tx.execute(
            "INSERT INTO tracking (carrier, waybill, state, carrier_state, at, detail, "
            "received_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (
                update.carrier,
                update.waybill,
                update.state.value,
                update.carrier_state,
                update.at.timestamp(),
                update.detail,
                time.time(),
            ),
        )
        target = TRACKING_TO_RETURN.get(update.state)
        if not inserted or target is None:
            return False
        row = await tx.fetchone(
            "SELECT id FROM totes WHERE carrier = ? AND waybill = ?",
            (update.carrier, update.waybill),
        )
        if row is None:
            log.warning("tracking for unknown waybill %s/%s", update.carrier, update.waybill)
            return False
        tote_id = str(row[0])
        await tx.execute("UPDATE totes SET state = ? WHERE id = ?", (target.value, tote_id))
        returns = await tx.fetchall("SELECT id FROM returns WHERE tote_id = ?", (tote_id,))
        cause = Cause(CauseKind.TRACKING, cause_id)
        for (return_id,) in returns:
            await self._move_return(tx, str(return_id), target, cause)
        return True

    async def _move_return(
        self, tx: Transaction, return_id: str, target: ReturnState, cause: Cause
    ) -> None:
        try:
            await move(tx, return_id, target, cause)
        except IllegalTransitionError:
            return  # a late or repeated update: the return is already past it
        if target is not ReturnState.RECEIVED:
            return
        if await policy_of(tx, return_id) is RefundPolicy.ON_RECEIPT:
            await request_refund(tx, return_id, self._refund_provider)
        await complete_if_done(tx, return_id, cause)

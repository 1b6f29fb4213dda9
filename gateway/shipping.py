"""Booking closed totes with a carrier (DESIGN §2 flow 5).

For each closed tote the desk chooses a carrier service by rules (once: the choice is stored
with the tote, so a retry never books a second carrier), creates the shipment with the tote id
as the order code, books the courier's pickup, subscribes to tracking, and — in one
transaction — records the booking, starts tracking the shipment and queues the label and
collection commands for the store's kiosks. Failures that decided nothing are retried with
backoff; a carrier's refusal goes to the exception queue.
"""

import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway import carrier_exceptions as queue
from gateway import commands, return_events
from gateway.carrier_choice import CarrierChoice, CarrierChooser, ChoiceRequest, NoCarrierError
from gateway.carrier_exceptions import Reason, Subject
from gateway.carriers.base import (
    Address,
    Carrier,
    CarrierError,
    CarrierRejected,
    Parcel,
    PickupBooking,
    ShipmentRequest,
)
from gateway.config import AddressSettings, GatewayConfig
from gateway.database import Database, Transaction
from gateway.tracking import TrackingDesk, register_shipment
from protocol.ids import new_id
from protocol.messages import CollectParcels, ManifestLine, PrintLabel

log = logging.getLogger(__name__)

BOOKING_RETRY_BASE_S = 2.0
BOOKING_RETRY_MAX_S = 600.0
BOOKING_LEASE_S = 120.0
"""How long a replica holds a tote it is booking before another may try (it died)."""
LABEL_COMMAND_TTL_S = 6 * 3600


def _address(a: AddressSettings) -> Address:
    return Address(a.name, a.phone, a.province, a.city, a.district, a.street)


class ShippingDesk:
    """Books closed totes; the tracking desk follows them afterwards."""

    def __init__(
        self,
        db: Database,
        config: GatewayConfig,
        carriers: Mapping[str, Carrier],
        chooser: CarrierChooser,
        tracking: TrackingDesk,
    ) -> None:
        self._db = db
        self._config = config
        self._carriers = carriers
        self._chooser = chooser
        self._tracking = tracking
        self._stores = {s.id: s for s in config.stores}
        self.booked = 0
        self.booking_failures = 0
        self.booking_rejections = 0

    async def book_due(self) -> int:
        """Book every closed tote that is due; returns how many were booked now."""
        rows = await self._claim_due()
        booked = 0
        for tote_id, store, count, weight_kg, attempts in rows:
            try:
                await self._book(str(tote_id), str(store), int(count), float(weight_kg))
                booked += 1
            except (CarrierRejected, NoCarrierError) as exc:
                await self._rejected(str(tote_id), exc)
            except CarrierError as exc:
                await self._booking_failed(str(tote_id), int(attempts), exc)
        return booked

    async def _claim_due(self) -> list[tuple[Any, ...]]:
        """Closed totes due for booking, leased to this replica: another replica skips them
        until the lease runs out, which only matters if this one dies mid-booking."""
        now = time.time()
        async with self._db.transaction() as tx:
            rows = await tx.fetchall(
                "SELECT id, store, item_count, weight_kg, booking_attempts FROM totes "
                "WHERE state = 'closed' AND next_attempt_at <= ? ORDER BY closed_at LIMIT 50"
                + tx.for_update(skip_locked=True),
                (now,),
            )
            await tx.executemany(
                "UPDATE totes SET next_attempt_at = ? WHERE id = ?",
                [(now + BOOKING_LEASE_S, row[0]) for row in rows],
            )
        return rows

    async def _choice(self, tote_id: str, store: str, weight_kg: float) -> tuple[str, str, str]:
        """The tote's (service, carrier, product): the stored choice, or a new one."""
        row = await self._db.fetchone(
            "SELECT service, carrier, product FROM totes WHERE id = ?", (tote_id,)
        )
        if row is not None and row[0] is not None and str(row[1]) in self._carriers:
            return str(row[0]), str(row[1]), str(row[2])
        settings = self._stores[store]
        choice = self._chooser.choose(
            ChoiceRequest(
                origin_province=settings.address.province,
                destination_province=self._config.warehouse.province,
                weight_kg=weight_kg,
                prefer=tuple(settings.prefer),
            ),
            unavailable={name for name, c in self._carriers.items() if c.breaker.is_open},
        )
        await self._store_choice(tote_id, choice)
        return choice.service, choice.carrier, choice.product

    async def _store_choice(self, tote_id: str, choice: CarrierChoice) -> None:
        log.info("tote %s: %s (%s)", tote_id, choice.service, choice.explain())
        async with self._db.transaction() as tx:
            await tx.execute(
                "UPDATE totes SET service = ?, carrier = ?, product = ?, choice = ? WHERE id = ?",
                (choice.service, choice.carrier, choice.product, choice.explain(), tote_id),
            )

    def _shipment_request(
        self, tote_id: str, store: str, count: int, weight_kg: float, product: str
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
            product=product,
        )

    async def _book(self, tote_id: str, store: str, count: int, weight_kg: float) -> None:
        service, carrier_name, product = await self._choice(tote_id, store, weight_kg)
        carrier = self._carriers[carrier_name]
        req = self._shipment_request(tote_id, store, count, weight_kg, product)
        shipment = await carrier.create_shipment(req)
        async with self._db.transaction() as tx:
            # Tracked from the moment the waybill exists: pushes can come before we are done.
            await register_shipment(
                tx, shipment, quiet_after_s=self._tracking.settings.quiet_after_s, tote_id=tote_id
            )
        booking = await carrier.book_pickup(shipment, req)
        await carrier.subscribe(shipment)
        async with self._db.transaction() as tx:
            changed = await tx.execute(
                "UPDATE totes SET state = 'booked', waybill = ?, pickup_start = ?, "
                "pickup_end = ?, last_error = NULL WHERE id = ? AND state = 'closed'",
                (
                    shipment.waybill,
                    booking.window_start.timestamp(),
                    booking.window_end.timestamp(),
                    tote_id,
                ),
            )
            if not changed:
                return
            await tx.execute(
                "UPDATE shipments SET booking_id = ? WHERE carrier = ? AND waybill = ?",
                (booking.booking_id, shipment.carrier, shipment.waybill),
            )
            await self._queue_label(tx, tote_id, store, service, booking)
            # shipment.created webhook to each merchant in the tote, in the booking's commit.
            await return_events.shipment_created(tx, tote_id, shipment.carrier, shipment.waybill)
        self.booked += 1
        log.info("tote %s booked with %s, waybill %s", tote_id, service, shipment.waybill)

    async def _queue_label(
        self, tx: Transaction, tote_id: str, store: str, service: str, booking: PickupBooking
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
        command_id = new_id()
        body = PrintLabel(
            command_id=command_id,
            expires_at=time.time() + LABEL_COMMAND_TTL_S,
            tote_id=tote_id,
            carrier=service,
            waybill=booking.waybill,
            pickup_start=booking.window_start.timestamp(),
            pickup_end=booking.window_end.timestamp(),
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

    async def _rejected(self, tote_id: str, exc: CarrierRejected | NoCarrierError) -> None:
        """Retrying cannot help: the tote waits in the exception queue for a person."""
        self.booking_rejections += 1
        carrier = exc.carrier if isinstance(exc, CarrierError) else None
        detail = f"{type(exc).__name__}: {exc}"
        log.error("booking tote %s refused: %s", tote_id, detail)
        async with self._db.transaction() as tx:
            await tx.execute(
                "UPDATE totes SET state = 'exception', booking_attempts = booking_attempts + 1, "
                "last_error = ? WHERE id = ? AND state = 'closed'",
                (detail, tote_id),
            )
            # A waybill made before the refusal will not travel: stop following it.
            await tx.execute(
                "UPDATE shipments SET finished_at = ? WHERE tote_id = ? AND finished_at IS NULL",
                (time.time(), tote_id),
            )
            await queue.open_exception(
                tx, Subject.tote(tote_id, carrier), Reason.BOOKING_REJECTED, detail
            )

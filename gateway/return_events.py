"""What follows from a return's transitions, derived in one place.

``gateway/returns.py`` calls :func:`on_transitions` from ``record_transitions``, through
which every history line is written (``record_creation``, ``move`` and the batched
drop-offs of ``gateway/dropoffs.py``), inside the transaction that records it, so whatever
path moves a return (REST API, kiosk events in batches, tracking, refunds, operators):

| transition to | merchant webhook      | customer message  | refund (per policy)        |
|---------------|-----------------------|-------------------|----------------------------|
| authorized    | ``return.authorized`` | voucher with QR   |                            |
| dropped_off   | ``return.dropped_off``| drop-off receipt  | asked for if ``on_dropoff``|
| received      | ``return.received``   |                   | asked for otherwise        |
| exception     | ``return.exception``  |                   |                            |

A home pickup's collection (``authorized`` → ``shipped`` or later) is its drop-off for the
``on_dropoff`` policy (``refunds.may_be_due``), and its pickup follows every transition
(``gateway/home_pickup.py``: released on approval, cancelled when the return is cancelled,
expires or is dropped off at a kiosk instead).

``refund.issued`` (and the customer's refund notice) come from the refund desk when the
provider confirms (:func:`refund_issued`); ``shipment.created`` from the tote booking
(:func:`shipment_created`) or the home pickup's booking (:func:`home_pickup_booked`). Every
event has a dedupe key, so emitting it twice is a no-op.
"""

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway import home_pickup, notifications, refunds, webhooks
from gateway.carriers.base import CHINA_TIME, PickupBooking
from gateway.config import RefundPolicy
from gateway.database import Transaction, placeholders
from gateway.notifications import CustomerMessage, MessageKind
from gateway.returns import ReturnState, Transition
from gateway.webhooks import EventType, OutgoingEvent

RETURN_EVENTS: dict[ReturnState, EventType] = {
    ReturnState.AUTHORIZED: EventType.RETURN_AUTHORIZED,
    ReturnState.DROPPED_OFF: EventType.RETURN_DROPPED_OFF,
    ReturnState.RECEIVED: EventType.RETURN_RECEIVED,
    ReturnState.EXCEPTION: EventType.RETURN_EXCEPTION,
}
CUSTOMER_MESSAGES: dict[ReturnState, MessageKind] = {
    ReturnState.AUTHORIZED: MessageKind.VOUCHER,
    ReturnState.DROPPED_OFF: MessageKind.DROPOFF_RECEIPT,
}
REFUND_NOTES = {
    RefundPolicy.ON_DROPOFF: "refunded now that your parcel is dropped off",
    RefundPolicy.ON_RECEIPT: "refunded when your parcel reaches the warehouse",
    RefundPolicy.MANUAL: "refunded after the merchant has checked the items",
}

PICKUP_REFUND_NOTES = {RefundPolicy.ON_DROPOFF: "refunded when the courier collects your parcel"}


@dataclass(frozen=True)
class _Facts:
    return_id: str
    order_id: str
    state: str
    store: str | None
    device: str | None
    tote_id: str | None
    customer_text: str
    terms: refunds.Terms

    @property
    def customer(self) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.customer_text)
        return found


async def _facts(tx: Transaction, return_ids: Sequence[str]) -> dict[str, _Facts]:
    """The returns named, with their refund terms (read once for webhooks, messages and the
    refund policy alike)."""
    ids = sorted(set(return_ids))
    rows = await tx.fetchall(
        "SELECT r.id, r.order_id, r.state, r.store, r.device, r.tote_id, r.customer, "
        f"{refunds.TERMS_COLUMNS} FROM returns r {refunds.TERMS_JOINS} "
        f"WHERE r.id IN ({placeholders(len(ids))})",
        ids,
    )
    return {
        str(r[0]): _Facts(
            str(r[0]), str(r[1]), str(r[2]), r[3], r[4], r[5], str(r[6]), refunds.terms_from(r[7:])
        )
        for r in rows
    }


def _money(f: _Facts) -> dict[str, Any]:
    return {"amount_minor": f.terms.amount_minor, "currency": f.terms.currency}


def _return_data(f: _Facts, t: Transition) -> dict[str, Any]:
    return {
        "return_id": f.return_id,
        "order_id": f.order_id,
        "state": t.to_state.value,
        "previous_state": None if t.from_state is None else t.from_state.value,
        "cause": {"kind": t.cause.kind.value, "id": t.cause.id},
        "store": f.store,
        "device": f.device,
        "tote_id": f.tote_id,
        "refund_amount": _money(f),
        "refund_policy": f.terms.policy.value,
    }


async def on_transitions(tx: Transaction, transitions: Sequence[Transition]) -> None:
    """Queue the webhooks and customer messages of ``transitions`` and apply the refund
    policy, in ``tx``. Takes a batch so that batched callers pay one round of queries."""
    await home_pickup.on_transitions(tx, transitions)
    relevant = [t for t in transitions if t.to_state in RETURN_EVENTS or refunds.may_be_due(t)]
    if not relevant:
        return
    facts = await _facts(tx, [t.return_id for t in relevant])
    events: list[OutgoingEvent] = []
    messages: list[CustomerMessage] = []
    for t in relevant:
        f = facts[t.return_id]
        event_type = RETURN_EVENTS.get(t.to_state)
        if event_type is not None:
            key = f"{event_type.value}:{t.return_id}"
            events.append(OutgoingEvent(f.terms.merchant, event_type, key, _return_data(f, t)))
        kind = CUSTOMER_MESSAGES.get(t.to_state)
        if kind is not None:
            context = {
                "refund_note": REFUND_NOTES[f.terms.policy],
                "store": f.store,
                "device": f.device,
                "at": time.time(),
            }
            messages.append(CustomerMessage(t.return_id, kind, f.customer, context))
    await webhooks.emit_many(tx, events)
    await notifications.queue_many(tx, messages)
    await refunds.apply_policy(tx, relevant, {i: f.terms for i, f in facts.items()})


async def refund_issued(tx: Transaction, return_id: str, refund_id: str, provider: str) -> None:
    """The provider confirmed the refund: tell the merchant and the customer (in ``tx``)."""
    f = (await _facts(tx, [return_id]))[return_id]
    data = {
        "return_id": return_id,
        "order_id": f.order_id,
        "refund_id": refund_id,
        "provider": provider,
        "amount": _money(f),
        "state": f.state,
    }
    await webhooks.emit(
        tx, f.terms.merchant, EventType.REFUND_ISSUED, f"refund.issued:{return_id}", data
    )
    await notifications.queue_many(
        tx,
        [
            CustomerMessage(
                return_id, MessageKind.REFUND_ISSUED, f.customer, {"refund_id": refund_id}
            )
        ],
    )


async def shipment_created(tx: Transaction, tote_id: str, carrier: str, waybill: str) -> None:
    """A tote was booked with a carrier: ``shipment.created`` to every merchant with a
    return in it, in the booking's transaction. For the carrier code (``gateway/shipping.py``)
    to call once the shipment exists."""
    rows = await tx.fetchall(
        "SELECT merchant, id, order_id FROM returns WHERE tote_id = ? ORDER BY id", (tote_id,)
    )
    by_merchant: dict[str, list[dict[str, str]]] = {}
    for merchant, return_id, order_id in rows:
        by_merchant.setdefault(str(merchant), []).append(
            {"return_id": str(return_id), "order_id": str(order_id)}
        )
    await webhooks.emit_many(
        tx,
        [
            OutgoingEvent(
                merchant,
                EventType.SHIPMENT_CREATED,
                f"shipment.created:{tote_id}:{merchant}",
                {"tote_id": tote_id, "carrier": carrier, "waybill": waybill, "returns": returns},
            )
            for merchant, returns in sorted(by_merchant.items())
        ],
    )


def _window_text(booking: PickupBooking) -> str:
    start = booking.window_start.astimezone(CHINA_TIME)
    end = booking.window_end.astimezone(CHINA_TIME)
    return f"{start:%Y-%m-%d %H:%M}–{end:%H:%M} (Beijing time)"


async def home_pickup_booked(tx: Transaction, return_id: str, booking: PickupBooking) -> None:
    """A courier is booked to collect the return at the customer's: ``shipment.created`` to
    the merchant (the tote's shape, with no tote) and the booking notice to the customer."""
    f = (await _facts(tx, [return_id]))[return_id]
    pickup_code = booking.booking_id if booking.booking_id != return_id else None
    window = {"start": booking.window_start.isoformat(), "end": booking.window_end.isoformat()}
    data = {
        "tote_id": None,
        "carrier": booking.carrier,
        "waybill": booking.waybill,
        "returns": [{"return_id": return_id, "order_id": f.order_id}],
        "home_pickup": {"window": window, "pickup_code": pickup_code},
    }
    key = f"shipment.created:{return_id}"
    await webhooks.emit(tx, f.terms.merchant, EventType.SHIPMENT_CREATED, key, data)
    context = {
        "carrier": booking.carrier,
        "waybill": booking.waybill,
        "pickup_code": pickup_code or "",
        "window": _window_text(booking),
        "refund_note": PICKUP_REFUND_NOTES.get(f.terms.policy, REFUND_NOTES[f.terms.policy]),
    }
    await notifications.queue_many(
        tx, [CustomerMessage(return_id, MessageKind.PICKUP_BOOKED, f.customer, context)]
    )

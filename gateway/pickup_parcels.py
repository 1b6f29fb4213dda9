"""Pickup parcels: the merchant registers a parcel it sends to a store for a customer to
collect (which order, which customer, how to reach them); when a courier or clerk loads it
into a locker and the gateway issues its pickup code (``gateway/kiosk_flows.py``), the
customer is told where it is, the code and until when (ADR 0017).

One ``pickup_parcels`` row per parcel id is where the two meet: the registration writes it,
and so does the load (a row with no merchant when nobody registered the parcel). Both write
it with an upsert, so on PostgreSQL one waits for the other's commit and then sees it; on
SQLite write transactions exclude each other anyway. Whichever comes second queues the
notice, at most once per code issued (the notification outbox's unique key).
"""

import json
import time
from dataclasses import dataclass
from typing import Any

from gateway import notifications
from gateway.database import Database, Row, Transaction
from gateway.notifications import MessageKind, ParcelMessage
from protocol import shortcode


class UnknownStoreError(LookupError):
    """The registration names a store the gateway does not know."""


class ParcelTakenError(Exception):
    """Another merchant registered this parcel id."""


@dataclass(frozen=True)
class Registration:
    """A merchant's pickup parcel: its id (what the label says), order and customer."""

    parcel_id: str
    merchant: str
    order_id: str
    store: str
    customer: dict[str, Any]
    """``name`` and, to be told, ``email`` and/or ``phone``."""


async def register(db: Database, reg: Registration) -> dict[str, Any]:
    """Create or replace the registration; if the parcel is already in a locker with a valid
    code, queue the customer's notice of it. Returns the registration's view."""
    now = time.time()
    async with db.transaction() as tx:
        if await tx.fetchone("SELECT 1 FROM stores WHERE id = ?", (reg.store,)) is None:
            raise UnknownStoreError(reg.store)
        owner = await tx.fetchone(
            "INSERT INTO pickup_parcels (parcel_id, merchant, order_id, store, customer, "
            "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (parcel_id) DO UPDATE SET merchant = excluded.merchant, "
            "order_id = excluded.order_id, store = excluded.store, "
            "customer = excluded.customer, updated_at = excluded.updated_at "
            "WHERE pickup_parcels.merchant IS NULL OR pickup_parcels.merchant = excluded.merchant "
            "RETURNING merchant",
            (reg.parcel_id, reg.merchant, reg.order_id, reg.store,
             json.dumps(reg.customer, sort_keys=True), now, now),
        )  # fmt: skip
        if owner is None:
            raise ParcelTakenError(reg.parcel_id)
        await queue_ready_notice(tx, reg.parcel_id, now)
        view = await _view(tx, reg.parcel_id)
    assert view is not None
    return view


async def parcel_loaded(tx: Transaction, parcel_id: str, now: float) -> None:
    """A kiosk loaded the parcel and its pickup code was issued in ``tx``: tell the customer
    if the parcel is registered (by now, or by a registration still committing)."""
    row = await tx.fetchone(
        "INSERT INTO pickup_parcels (parcel_id, created_at, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT (parcel_id) DO UPDATE SET updated_at = pickup_parcels.updated_at "
        "RETURNING merchant",
        (parcel_id, now, now),
    )
    if row is not None and row[0] is not None:
        await queue_ready_notice(tx, parcel_id, now)


async def queue_ready_notice(tx: Transaction, parcel_id: str, now: float) -> None:
    """Queue the ``parcel_ready`` notice of the parcel's current pickup code, if it is
    registered, in its locker and the code still valid; once per code issued and channel."""
    row = await tx.fetchone(
        "SELECT p.load_event, p.store, s.name, p.compartment, p.code, p.valid_until, "
        "r.order_id, r.customer, m.name FROM pickups p "
        "JOIN pickup_parcels r ON r.parcel_id = p.parcel_id "
        "JOIN merchants m ON m.id = r.merchant "
        "LEFT JOIN stores s ON s.id = p.store "
        "WHERE p.parcel_id = ? AND p.state = 'loaded' AND p.valid_until > ?",
        (parcel_id, now),
    )
    if row is None:
        return
    issue, store, store_name, compartment, code, valid_until, order_id, customer, merchant = row
    context = {
        "parcel_id": parcel_id,
        "order_id": order_id,
        "merchant_name": merchant,
        "customer_name": json.loads(customer).get("name", ""),
        "store": store,
        "store_name": store_name or store,
        "compartment": compartment,
        "pickup_code": shortcode.display(str(code)),
        "pickup_qr_text": shortcode.PICKUP_PREFIX + str(code),
        "valid_until": float(valid_until),
    }
    message = ParcelMessage(
        parcel_id, str(issue), MessageKind.PARCEL_READY, json.loads(customer), context
    )
    await notifications.queue_for_parcels(tx, [message])


async def registration(db: Database, parcel_id: str) -> dict[str, Any] | None:
    """The registered parcel's view, or None (not registered by any merchant)."""
    async with db.transaction() as tx:
        return await _view(tx, parcel_id)


async def _view(tx: Transaction, parcel_id: str) -> dict[str, Any] | None:
    row = await tx.fetchone(
        "SELECT r.parcel_id, r.merchant, r.order_id, r.store, r.customer, r.created_at, "
        "r.updated_at, p.state, p.store, p.compartment, p.valid_until FROM pickup_parcels r "
        "LEFT JOIN pickups p ON p.parcel_id = r.parcel_id "
        "WHERE r.parcel_id = ? AND r.merchant IS NOT NULL",
        (parcel_id,),
    )
    return None if row is None else _view_json(row)


def _view_json(row: Row) -> dict[str, Any]:
    (parcel, merchant, order_id, store, customer, created_at, updated_at, state, at_store,
     compartment, valid_until) = row  # fmt: skip
    return {
        "parcel_id": parcel,
        "merchant": merchant,
        "order_id": order_id,
        "store": store,
        "customer": json.loads(customer),
        "state": state or "expected",
        "locker": None
        if state is None
        else {"store": at_store, "compartment": compartment, "valid_until": valid_until},
        "created_at": created_at,
        "updated_at": updated_at,
    }

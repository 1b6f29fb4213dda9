"""The carrier exception queue: shipments and totes that need a person, each with a reason.

An exception has a *subject* (``shipment:{carrier}:{waybill}``, ``tote:{id}`` or
``pickup:{return id}``); a subject has at most one open exception, so repeated problem pushes
update it rather than pile up.
Resolving is the tracking desk's job (it moves the returns back onto their journey); this
module stores and reads the queue.
"""

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gateway.database import Database, Transaction
from protocol.ids import new_id


class Reason(StrEnum):
    """Why an exception was opened."""

    CARRIER_PROBLEM = "carrier_problem"  # Kdniao State 4 / StateEx 401–423, SF problem opCodes
    NO_TRACKING_NEWS = "no_tracking_news"  # quiet past tracking.silent_after_s, polls too
    BOOKING_REJECTED = "booking_rejected"  # the carrier refused the shipment or its pickup
    PICKUP_REJECTED = "pickup_rejected"  # the carrier refused a home pickup (slot, address)
    PICKUP_NOT_CANCELLED = "pickup_not_cancelled"  # too late: the courier has the parcel


class Resolution(StrEnum):
    """How an exception was closed."""

    RESUME = "resume"  # the problem is cleared: the returns go on with their journey
    CLOSE = "close"  # handled outside Dropline: the returns stay in ``exception``
    CARRIER_SIGNED = "carrier_signed"  # the carrier reported the parcel signed for


class ExceptionNotFoundError(LookupError):
    """No exception has that id."""


class AlreadyResolvedError(ValueError):
    """The exception was resolved before."""


@dataclass(frozen=True)
class Subject:
    """What an exception is about."""

    key: str
    carrier: str | None = None
    waybill: str | None = None
    tote_id: str | None = None
    return_id: str | None = None

    @classmethod
    def shipment(
        cls, carrier: str, waybill: str, tote_id: str | None, return_id: str | None
    ) -> "Subject":
        """A shipment being tracked."""
        return cls(f"shipment:{carrier}:{waybill}", carrier, waybill, tote_id, return_id)

    @classmethod
    def tote(cls, tote_id: str, carrier: str | None) -> "Subject":
        """A tote whose booking failed."""
        return cls(f"tote:{tote_id}", carrier, None, tote_id, None)

    @classmethod
    def home_pickup(cls, return_id: str, carrier: str | None) -> "Subject":
        """A return's home pickup that could not be booked or cancelled."""
        return cls(f"pickup:{return_id}", carrier, None, None, return_id)


COLUMNS = (
    "id, subject, reason, detail, carrier, waybill, tote_id, return_id, carrier_state, "
    "opened_at, updated_at, resolved_at, resolution, resolved_by, note"
)


async def open_exception(
    tx: Transaction,
    subject: Subject,
    reason: Reason,
    detail: str,
    *,
    carrier_state: str | None = None,
    now: float | None = None,
) -> tuple[str, bool]:
    """Open an exception for ``subject``, or update the one open already.

    Returns its id and whether it was opened now."""
    now = time.time() if now is None else now
    existing = await open_for(tx, subject.key)
    if existing is not None:
        await tx.execute(
            "UPDATE carrier_exceptions SET detail = ?, carrier_state = ?, updated_at = ? "
            "WHERE id = ?",
            (detail, carrier_state, now, existing),
        )
        return existing, False
    exception_id = new_id()
    await tx.execute(
        f"INSERT INTO carrier_exceptions ({COLUMNS}) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, NULL)",
        (exception_id, subject.key, reason.value, detail, subject.carrier, subject.waybill,
         subject.tote_id, subject.return_id, carrier_state, now, now),
    )  # fmt: skip
    return exception_id, True


async def open_for(tx: Transaction, subject_key: str) -> str | None:
    """The id of the subject's open exception, if there is one."""
    row = await tx.fetchone(
        "SELECT id FROM carrier_exceptions WHERE subject = ? AND resolved_at IS NULL",
        (subject_key,),
    )
    return None if row is None else str(row[0])


async def fetch(tx: Transaction, exception_id: str) -> dict[str, Any] | None:
    """One exception as a dict of its columns."""
    row = await tx.fetchone(
        f"SELECT {COLUMNS} FROM carrier_exceptions WHERE id = ?", (exception_id,)
    )
    return None if row is None else _as_dict(row)


async def mark_resolved(
    tx: Transaction,
    exception_id: str,
    resolution: Resolution,
    *,
    by: str,
    note: str = "",
    now: float | None = None,
) -> None:
    """Close an open exception; raises when it does not exist or is closed already."""
    now = time.time() if now is None else now
    changed = await tx.execute(
        "UPDATE carrier_exceptions SET resolved_at = ?, updated_at = ?, resolution = ?, "
        "resolved_by = ?, note = ? WHERE id = ? AND resolved_at IS NULL",
        (now, now, resolution.value, by, note, exception_id),
    )
    if changed == 1:
        return
    if await fetch(tx, exception_id) is None:
        raise ExceptionNotFoundError(exception_id)
    raise AlreadyResolvedError(exception_id)


async def returns_held(tx: Transaction, exception_id: str) -> list[tuple[str, str]]:
    """Returns this exception put in ``exception`` and still there: (id, state before)."""
    rows = await tx.fetchall(
        "SELECT r.id, h.from_state FROM returns r JOIN return_history h ON h.return_id = r.id "
        "WHERE h.to_state = 'exception' AND h.cause_id = ? AND r.state = 'exception' "
        "ORDER BY r.id",
        (exception_id,),
    )
    return [(str(r[0]), str(r[1])) for r in rows]


async def affected_returns(tx: Transaction, exception_id: str) -> list[str]:
    """Every return this exception ever put in ``exception``."""
    rows = await tx.fetchall(
        "SELECT DISTINCT return_id FROM return_history WHERE to_state = 'exception' "
        "AND cause_id = ? ORDER BY return_id",
        (exception_id,),
    )
    return [str(r[0]) for r in rows]


async def listing(db: Database, *, status: str = "open", limit: int = 100) -> list[dict[str, Any]]:
    """Exceptions, newest first; ``status`` is ``open``, ``resolved`` or ``all``."""
    where = {"open": "WHERE resolved_at IS NULL", "resolved": "WHERE resolved_at IS NOT NULL",
             "all": ""}[status]  # fmt: skip
    async with db.transaction() as tx:
        rows = await tx.fetchall(
            f"SELECT {COLUMNS} FROM carrier_exceptions {where} ORDER BY opened_at DESC LIMIT ?",
            (limit,),
        )
        items = [_as_dict(r) for r in rows]
        for item in items:
            item["returns"] = await affected_returns(tx, item["id"])
    return items


async def view(db: Database, exception_id: str) -> dict[str, Any] | None:
    """One exception with the returns it holds, for the API."""
    async with db.transaction() as tx:
        item = await fetch(tx, exception_id)
        if item is not None:
            item["returns"] = await affected_returns(tx, exception_id)
    return item


async def open_count(db: Database) -> int:
    """How many exceptions are open."""
    row = await db.fetchone("SELECT count(*) FROM carrier_exceptions WHERE resolved_at IS NULL")
    return int(row[0]) if row else 0


def _as_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    keys = [c.strip() for c in COLUMNS.split(",")]
    item = dict(zip(keys, row, strict=True))
    item["status"] = "open" if item["resolved_at"] is None else "resolved"
    return item

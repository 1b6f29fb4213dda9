"""One open tote (bulk shipment) per store, closed by item count or age (DESIGN §2 flow 5)."""

import time
from dataclasses import dataclass

from gateway.config import ConsolidationRules
from gateway.database import Database, Transaction
from gateway.returns import Cause, CauseKind, ReturnState, move
from protocol.ids import new_id


class CloseReason:
    """Why a tote closed."""

    COUNT = "count"
    CUTOFF = "cutoff"
    SEAL = "seal"


@dataclass(frozen=True)
class ToteChange:
    """The tote a return went into, and whether that closed it."""

    tote_id: str
    closed: bool


async def _open_tote(tx: Transaction, store: str) -> tuple[str, int]:
    row = await tx.fetchone(
        "SELECT id, item_count FROM totes WHERE store = ? AND state = 'open'", (store,)
    )
    if row is not None:
        return str(row[0]), int(row[1])
    tote_id = "tote-" + new_id()
    await tx.execute(
        "INSERT INTO totes (id, store, state, opened_at) VALUES (?, ?, 'open', ?)",
        (tote_id, store, time.time()),
    )
    return tote_id, 0


async def add_to_tote(
    tx: Transaction, store: str, return_id: str, rules: ConsolidationRules
) -> ToteChange:
    """Put a dropped-off return in its store's open tote, closing the tote when full."""
    tote_id, count = await _open_tote(tx, store)
    await move(
        tx, return_id, ReturnState.IN_TOTE, Cause(CauseKind.CONSOLIDATION, tote_id), tote_id=tote_id
    )
    count += 1
    await tx.execute("UPDATE totes SET item_count = ? WHERE id = ?", (count, tote_id))
    if count >= rules.max_items:
        await close(tx, tote_id, CloseReason.COUNT)
        return ToteChange(tote_id, closed=True)
    return ToteChange(tote_id, closed=False)


async def close(tx: Transaction, tote_id: str, reason: str) -> bool:
    """Close an open tote so it gets booked; False if it was not open."""
    changed = await tx.execute(
        "UPDATE totes SET state = 'closed', closed_at = ?, close_reason = ? "
        "WHERE id = ? AND state = 'open'",
        (time.time(), reason, tote_id),
    )
    return changed == 1


async def close_due(db: Database, rules: ConsolidationRules, now: float | None = None) -> list[str]:
    """Close every non-empty open tote older than the cutoff; returns their ids."""
    cutoff = (time.time() if now is None else now) - rules.max_age_s
    async with db.transaction() as tx:
        rows = await tx.fetchall(
            "SELECT id FROM totes WHERE state = 'open' AND item_count > 0 AND opened_at <= ?",
            (cutoff,),
        )
        closed = [str(r[0]) for r in rows if await close(tx, str(r[0]), CloseReason.CUTOFF)]
    return closed

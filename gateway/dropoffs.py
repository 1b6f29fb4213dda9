"""Applying kiosk drop-off events (DESIGN §2 flows 2–3): the return moves to
``dropped_off`` and into its store's open tote; under ``on_dropoff`` its refund is asked for
in the same transaction.

A batch of drop-offs is a few statements whatever its size: the returns are read (and
locked) in one query, placed in totes per store, and written back with ``executemany``.
"""

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway import consolidation
from gateway.config import ConsolidationRules
from gateway.consolidation import Parcel
from gateway.database import MAX_PARAMS, Transaction, placeholders, values_chunks
from gateway.returns import (
    STATES,
    Cause,
    CauseKind,
    ReturnState,
    Transition,
    can_move,
    record_transitions,
)
from protocol import envelope, topics
from protocol.envelope import Envelope
from protocol.messages import Dropoff

log = logging.getLogger(__name__)

AUTHORIZED, DROPPED_OFF, IN_TOTE = (
    ReturnState.AUTHORIZED,
    ReturnState.DROPPED_OFF,
    ReturnState.IN_TOTE,
)


class _Return:
    """A return as the batch sees it: its state moves as the batch's events apply."""

    __slots__ = ("size", "state")

    def __init__(self, state: str, size: str) -> None:
        self.state, self.size = state, size


@dataclass
class DropoffStats:
    """Counters for the operator."""

    accepted: int = 0
    unexpected: int = 0
    unknown: int = 0


class DropoffDesk:
    """The ``dropoff`` event handler."""

    def __init__(self, rules: ConsolidationRules) -> None:
        self._rules = rules
        self.stats = DropoffStats()

    async def apply(self, tx: Transaction, events: Sequence[Envelope[Any]]) -> bool:
        """Apply drop-offs in order; True when a return moved (new work for the timers)."""
        returns = await _lock_returns(tx, sorted({e.body.return_id for e in events}))
        accepted: list[Envelope[Any]] = []
        surprises: list[Transition] = []
        for event in events:
            body: Dropoff = event.body
            found = returns.get(body.return_id)
            if found is None:
                await self._unknown(tx, event)
            elif found.state == ReturnState.AUTHORIZED:
                accepted.append(event)
                found.state = ReturnState.IN_TOTE
            elif can_move(STATES[found.state], ReturnState.EXCEPTION):
                # A parcel is physically in our hands for a return we did not expect there
                # (cancelled or expired after the kiosk last synced, or dropped twice).
                cause = Cause(CauseKind.EVENT, str(event.id))
                surprises.append(
                    Transition(body.return_id, STATES[found.state], ReturnState.EXCEPTION, cause)
                )
                found.state = ReturnState.EXCEPTION
        await self._accept(tx, accepted, returns)
        await self._to_exception(tx, surprises)
        return bool(accepted or surprises)

    async def _accept(
        self, tx: Transaction, events: list[Envelope[Any]], returns: dict[str, _Return]
    ) -> None:
        if not events:
            return
        by_store: dict[str, list[Parcel]] = defaultdict(list)
        for event in events:
            rid = event.body.return_id
            by_store[event.store].append(Parcel(rid, returns[rid].size))
        tote_of: dict[str, str] = {}
        for store, parcels in sorted(by_store.items()):
            placement = await consolidation.add_to_totes(tx, store, parcels, self._rules)
            tote_of.update(placement.tote_of)
            for tote_id, reason in placement.closed:
                log.info("tote %s of %s closed: %s", tote_id, store, reason)
        updates = []
        transitions: list[Transition] = []
        for e in events:
            rid = e.body.return_id
            tote_id = tote_of[rid]
            updates.append((rid, e.store, e.device, tote_id))
            transitions += (
                Transition(rid, AUTHORIZED, DROPPED_OFF, Cause(CauseKind.EVENT, str(e.id))),
                Transition(rid, DROPPED_OFF, IN_TOTE, Cause(CauseKind.CONSOLIDATION, tote_id)),
            )
        await _into_totes(tx, updates, time.time())
        await record_transitions(tx, transitions)
        self.stats.accepted += len(events)

    async def _to_exception(self, tx: Transaction, surprises: list[Transition]) -> None:
        if not surprises:
            return
        now = time.time()
        await tx.executemany(
            "UPDATE returns SET state = ?, updated_at = ? WHERE id = ?",
            [(ReturnState.EXCEPTION.value, now, t.return_id) for t in surprises],
        )
        await record_transitions(tx, surprises)
        self.stats.unexpected += len(surprises)
        for t in surprises:
            log.warning("drop-off for return %s in state %s", t.return_id, t.from_state)

    async def _unknown(self, tx: Transaction, event: Envelope[Any]) -> None:
        self.stats.unknown += 1
        log.warning(
            "drop-off for unknown return %s at %s/%s",
            event.body.return_id,
            event.store,
            event.device,
        )
        await tx.execute(
            "INSERT INTO dead_letters (topic, payload, reason, detail, received_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (
                topics.event(event.store, event.device, event.type),
                envelope.encode(event),
                "unknown_return",
                event.body.return_id,
                time.time(),
            ),
        )


async def _into_totes(
    tx: Transaction,
    updates: list[tuple[str, str, str, str]],
    now: float,
    *,
    max_params: int = MAX_PARAMS,
) -> None:
    """Set each return ``(id, store, device, tote id)`` ``in_tote``: one ``UPDATE ... FROM
    (VALUES ...)`` per chunk (both dialects name the columns ``column1``...). A return
    named twice takes its last values, as one update per row would leave it."""
    last = list({u[0]: u for u in updates}.values())
    for chunk in values_chunks(last, 4, max_params - 2):
        await tx.execute(
            "UPDATE returns SET state = ?, updated_at = ?, store = v.column2, "
            "device = v.column3, tote_id = v.column4 FROM (VALUES "
            + ", ".join(["(?, ?, ?, ?)"] * len(chunk))
            + ") AS v WHERE returns.id = v.column1",
            [ReturnState.IN_TOTE.value, now, *(value for u in chunk for value in u)],
        )


async def _lock_returns(tx: Transaction, return_ids: list[str]) -> dict[str, _Return]:
    """The returns named, locked in id order (so that replicas never deadlock)."""
    found: dict[str, _Return] = {}
    for start in range(0, len(return_ids), 500):
        chunk = return_ids[start : start + 500]
        rows = await tx.fetchall(
            "SELECT r.id, r.state, r.size FROM returns r "
            f"WHERE r.id IN ({placeholders(len(chunk))}) ORDER BY r.id" + tx.for_update(of="r"),
            chunk,
        )
        for rid, state, size in rows:
            found[rid] = _Return(state, size)
    return found

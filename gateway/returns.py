"""The return state machine of DESIGN §3, with every transition recorded with its cause."""

import time
from collections.abc import Sequence
from enum import StrEnum
from typing import NamedTuple

from gateway.database import Transaction, insert_values


class ReturnState(StrEnum):
    """Where a return stands."""

    REVIEW = "review"
    AUTHORIZED = "authorized"
    DROPPED_OFF = "dropped_off"
    IN_TOTE = "in_tote"
    SHIPPED = "shipped"
    IN_TRANSIT = "in_transit"
    RECEIVED = "received"
    REFUNDED = "refunded"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    EXCEPTION = "exception"


JOURNEY = [
    ReturnState.AUTHORIZED,
    ReturnState.DROPPED_OFF,
    ReturnState.IN_TOTE,
    ReturnState.SHIPPED,
    ReturnState.IN_TRANSIT,
    ReturnState.RECEIVED,
    ReturnState.REFUNDED,
]
"""The happy path in order. Tracking may skip ahead (a lost push), never go back."""

SIDE_EXITS: dict[ReturnState, frozenset[ReturnState]] = {
    ReturnState.REVIEW: frozenset({ReturnState.AUTHORIZED, ReturnState.CANCELLED}),
    ReturnState.AUTHORIZED: frozenset({ReturnState.EXPIRED, ReturnState.CANCELLED}),
    ReturnState.EXPIRED: frozenset({ReturnState.EXCEPTION}),
    ReturnState.CANCELLED: frozenset({ReturnState.EXCEPTION}),
}


class CauseKind(StrEnum):
    """What caused a transition, for the audit trail."""

    API = "api"
    EVENT = "event"
    CONSOLIDATION = "consolidation"
    TRACKING = "tracking"
    CARRIER = "carrier"  # a carrier's answer to a booking (a home pickup refused)
    REFUND = "refund"
    OPERATOR = "operator"


class Cause(NamedTuple):
    """Why a return moved: the kind of cause and its id (event id, webhook id, ...)."""

    kind: CauseKind
    id: str | None = None


class IllegalTransitionError(ValueError):
    """The return is not in a state that allows this move."""


STATES = {s.value: s for s in ReturnState}
"""A state by its stored text (faster than ``ReturnState(text)`` in hot loops)."""


def can_move(current: ReturnState, target: ReturnState) -> bool:
    """True when ``current → target`` is allowed."""
    if target in SIDE_EXITS.get(current, frozenset()):
        return True
    if target is ReturnState.EXCEPTION:
        return current not in (ReturnState.REFUNDED, ReturnState.EXCEPTION)
    if current in JOURNEY and target in JOURNEY:
        return JOURNEY.index(target) > JOURNEY.index(current)
    return False


def can_resume(current: ReturnState, target: ReturnState) -> bool:
    """True when a return in ``exception`` may go back onto its journey at ``target`` (the
    problem behind the exception was resolved). Refunding is never a resumption."""
    return current is ReturnState.EXCEPTION and target in JOURNEY[:-1]


class Transition(NamedTuple):
    """One return's move, for the history (and everything that follows from it)."""

    return_id: str
    from_state: ReturnState | None
    to_state: ReturnState
    cause: Cause


async def record_transitions(tx: Transaction, transitions: Sequence[Transition]) -> None:
    """Write the history lines of moves already applied to the ``returns`` rows, and queue
    what follows from them (webhooks, customer messages, refunds) in the same transaction."""
    now = time.time()
    await insert_values(
        tx,
        "INSERT INTO return_history (return_id, from_state, to_state, cause_kind, cause_id, at)",
        # States and cause kinds are StrEnums: both drivers bind them as text.
        [
            (t.return_id, t.from_state, t.to_state, t.cause.kind, t.cause.id, now)
            for t in transitions
        ],
    )
    # The one hook on the state machine: webhooks, customer messages and the refund policy
    # follow from the transitions in this same transaction (gateway/return_events.py).
    from gateway.return_events import on_transitions  # it builds on this module

    await on_transitions(tx, transitions)


async def record_creation(
    tx: Transaction, return_id: str, state: ReturnState, cause: Cause
) -> None:
    """The first history line of a new return."""
    await record_transitions(tx, [Transition(return_id, None, state, cause)])


async def current_state(tx: Transaction, return_id: str) -> ReturnState | None:
    """The return's state, locked for the rest of the transaction; None when there is no
    such return."""
    row = await tx.fetchone(
        "SELECT state FROM returns WHERE id = ?" + tx.for_update(), (return_id,)
    )
    return None if row is None else ReturnState(row[0])


async def move(
    tx: Transaction,
    return_id: str,
    target: ReturnState,
    cause: Cause,
    *,
    resume: bool = False,
    **columns: object,
) -> ReturnState:
    """Move a return to ``target`` (setting ``columns`` too) and record why. With ``resume``
    the move takes a return out of ``exception`` instead (see :func:`can_resume`).

    Returns the state it left. Raises :class:`IllegalTransitionError` when the move is not
    allowed and ``KeyError`` when the return does not exist.
    """
    current = await current_state(tx, return_id)
    if current is None:
        raise KeyError(return_id)
    allowed = can_resume(current, target) if resume else can_move(current, target)
    if not allowed:
        raise IllegalTransitionError(f"return {return_id}: {current} → {target}")
    assignments = "".join(f", {name} = ?" for name in columns)
    await tx.execute(
        f"UPDATE returns SET state = ?, updated_at = ?{assignments} WHERE id = ?",
        (target.value, time.time(), *columns.values(), return_id),
    )
    await record_transitions(tx, [Transition(return_id, current, target, cause)])
    return current

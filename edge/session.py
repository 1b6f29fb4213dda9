"""The kiosk session state machine of DESIGN §3, one per visit to the kiosk.

Every flow runs through the same states: a shopper's locker drop-off
(``scanned → verified → door_opening → door_open → door_closed → done``), a counter drop-off
(``verified → await_bag → await_tote → done``), a pickup, a courier loading a parcel, a clerk
opening a door for service. ``rejected(reason)``, ``jammed``, ``left_open`` and ``timed_out``
are where they can go wrong; every waiting state has a timeout.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum


class SessionState(StrEnum):
    """Where a visit to the kiosk stands."""

    IDLE = "idle"
    SCANNED = "scanned"
    VERIFIED = "verified"
    DOOR_OPENING = "door_opening"
    DOOR_OPEN = "door_open"
    DOOR_CLOSED = "door_closed"
    AWAIT_BAG = "await_bag"
    AWAIT_TOTE = "await_tote"
    DONE = "done"
    REJECTED = "rejected"
    JAMMED = "jammed"
    LEFT_OPEN = "left_open"
    TIMED_OUT = "timed_out"


class SessionKind(StrEnum):
    """Which flow a session is."""

    DROPOFF = "dropoff"
    COUNTER = "counter"
    PICKUP = "pickup"
    LOAD = "load"
    SERVICE = "service"


FINAL_STATES = frozenset({SessionState.DONE, SessionState.REJECTED, SessionState.TIMED_OUT})

ALLOWED: dict[SessionState, frozenset[SessionState]] = {
    SessionState.IDLE: frozenset({SessionState.SCANNED}),
    SessionState.SCANNED: frozenset({SessionState.VERIFIED, SessionState.REJECTED}),
    SessionState.VERIFIED: frozenset(
        {SessionState.DOOR_OPENING, SessionState.AWAIT_BAG, SessionState.REJECTED}
    ),
    SessionState.DOOR_OPENING: frozenset({SessionState.DOOR_OPEN, SessionState.JAMMED}),
    SessionState.JAMMED: frozenset({SessionState.DOOR_OPENING, SessionState.REJECTED}),
    SessionState.DOOR_OPEN: frozenset(
        {SessionState.DOOR_CLOSED, SessionState.LEFT_OPEN, SessionState.DONE}
    ),
    SessionState.LEFT_OPEN: frozenset({SessionState.DOOR_CLOSED, SessionState.TIMED_OUT}),
    SessionState.DOOR_CLOSED: frozenset({SessionState.DONE}),
    SessionState.AWAIT_BAG: frozenset(
        {SessionState.AWAIT_TOTE, SessionState.TIMED_OUT, SessionState.REJECTED}
    ),
    SessionState.AWAIT_TOTE: frozenset(
        {SessionState.DONE, SessionState.TIMED_OUT, SessionState.REJECTED}
    ),
}


class IllegalTransitionError(RuntimeError):
    """A bug: the flow tried a transition the state machine does not have."""


@dataclass
class KioskSession:
    """One visit's journey through the kiosk, with every state it passed and when."""

    code: str
    kind: SessionKind = SessionKind.DROPOFF
    state: SessionState = SessionState.IDLE
    reason: str | None = None
    return_id: str | None = None
    parcel_id: str | None = None
    compartment: str | None = None
    bag_id: str | None = None
    tote_id: str | None = None
    by: str | None = None
    frame_at: float | None = None
    history: list[tuple[SessionState, float]] = field(default_factory=list)
    on_change: Callable[["KioskSession"], None] | None = None

    def to(self, state: SessionState, *, reason: str | None = None) -> None:
        """Move to ``state``; raises :class:`IllegalTransitionError` for a missing edge."""
        if state not in ALLOWED.get(self.state, frozenset()):
            raise IllegalTransitionError(f"{self.state} → {state}")
        self.state = state
        if reason is not None:
            self.reason = reason
        self.history.append((state, time.monotonic()))
        self.changed()

    def changed(self) -> None:
        """Tell the listeners (the screen) that something about the session changed."""
        if self.on_change is not None:
            self.on_change(self)

    @property
    def finished(self) -> bool:
        """True in a final state."""
        return self.state in FINAL_STATES

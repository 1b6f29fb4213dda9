"""The kiosk session state machine of DESIGN §3, one per shopper at the kiosk."""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum


class SessionState(StrEnum):
    """Where a shopper's visit to the kiosk stands."""

    IDLE = "idle"
    SCANNED = "scanned"
    VERIFIED = "verified"
    DOOR_OPENING = "door_opening"
    DOOR_OPEN = "door_open"
    DOOR_CLOSED = "door_closed"
    DONE = "done"
    REJECTED = "rejected"
    JAMMED = "jammed"
    LEFT_OPEN = "left_open"


FINAL_STATES = frozenset({SessionState.DONE, SessionState.REJECTED, SessionState.LEFT_OPEN})

ALLOWED: dict[SessionState, frozenset[SessionState]] = {
    SessionState.IDLE: frozenset({SessionState.SCANNED}),
    SessionState.SCANNED: frozenset({SessionState.VERIFIED, SessionState.REJECTED}),
    SessionState.VERIFIED: frozenset({SessionState.DOOR_OPENING, SessionState.REJECTED}),
    SessionState.DOOR_OPENING: frozenset({SessionState.DOOR_OPEN, SessionState.JAMMED}),
    SessionState.JAMMED: frozenset({SessionState.DOOR_OPENING, SessionState.REJECTED}),
    SessionState.DOOR_OPEN: frozenset({SessionState.DOOR_CLOSED, SessionState.LEFT_OPEN}),
    SessionState.DOOR_CLOSED: frozenset({SessionState.DONE}),
}


class IllegalTransitionError(RuntimeError):
    """A bug: the flow tried a transition the state machine does not have."""


@dataclass
class KioskSession:
    """One scan's journey through the kiosk, with every state it passed and when."""

    code: str
    state: SessionState = SessionState.IDLE
    reason: str | None = None
    return_id: str | None = None
    compartment: str | None = None
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
        if self.on_change is not None:
            self.on_change(self)

    @property
    def finished(self) -> bool:
        """True in a final state."""
        return self.state in FINAL_STATES

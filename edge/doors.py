"""Opening a door and waiting for it to shut again: the part every flow shares.

The door sensor decides (DESIGN §5 rule 2): a jammed door takes its compartment out of
service, raises a fault and the next fitting compartment is tried. A door left open past
``door_close_s`` sounds the alarm and raises a fault; the kiosk keeps waiting up to
``left_open_give_up_s`` and takes the door out of service if it never shuts.
"""

from typing import TYPE_CHECKING

from edge.session import KioskSession, SessionState
from hardware.locker import DoorOutcome
from protocol.messages import FaultKind, RejectReason

if TYPE_CHECKING:
    from edge.agent import EdgeAgent


class Doors:
    """Door cycles for the agent's flows."""

    def __init__(self, agent: "EdgeAgent") -> None:
        self._agent = agent

    async def open_first(self, session: KioskSession, candidates: list[str]) -> str | None:
        """Open the first candidate whose door really opens; None when every one jammed."""
        agent = self._agent
        for compartment in candidates:
            session.to(SessionState.DOOR_OPENING)
            outcome = await agent.locker.open(compartment)
            if outcome is DoorOutcome.JAMMED:
                session.to(SessionState.JAMMED)
                await agent.db.set_out_of_order(compartment, True)
                await agent.fault(FaultKind.JAMMED, compartment, "door did not open on command")
                continue
            session.compartment = compartment
            session.to(SessionState.DOOR_OPEN)
            agent.indicators.accepted()
            return compartment
        return None

    async def await_close(self, session: KioskSession, compartment: str) -> bool:
        """True once the door is shut (perhaps late, after the alarm); False when the kiosk
        gave up waiting (the session is then ``timed_out``)."""
        agent = self._agent
        settings = agent.settings
        if await agent.locker.wait_closed(compartment, settings.door_close_s):
            session.to(SessionState.DOOR_CLOSED)
            return True
        agent.set_alarm(compartment, True)
        session.to(SessionState.LEFT_OPEN, reason=RejectReason.DOOR_NOT_CLOSED.value)
        await agent.fault(
            FaultKind.LEFT_OPEN, compartment, f"door open for over {settings.door_close_s:g}s"
        )
        closed = await agent.locker.wait_closed(compartment, settings.left_open_give_up_s)
        agent.set_alarm(compartment, False)
        if closed:
            session.to(SessionState.DOOR_CLOSED)
            return True
        await agent.db.set_out_of_order(compartment, True)
        session.to(SessionState.TIMED_OUT, reason=RejectReason.DOOR_NOT_CLOSED.value)
        return False

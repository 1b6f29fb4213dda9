"""Pickup lockers (DESIGN §2 flow 4): a courier or clerk loads a parcel, the gateway sends the
customer's pickup code to the kiosk (a command, never retained), the code opens that one
compartment, and the ``pickup`` event frees it. Codes are kept only as SHA-256 and work offline.
"""

import time
from typing import TYPE_CHECKING

from edge.database import PARCEL
from edge.session import KioskSession, SessionKind, SessionState
from protocol import shortcode
from protocol.messages import ParcelLoaded, Pickup, RejectReason
from protocol.sizes import SizeClass

if TYPE_CHECKING:
    from edge.agent import EdgeAgent


class PickupDesk:
    """Loading and collecting pickup parcels."""

    def __init__(self, agent: "EdgeAgent") -> None:
        self._agent = agent

    async def collect(self, session: KioskSession, code: str) -> None:
        """A customer showed or typed pickup code ``code`` (canonical form)."""
        agent = self._agent
        session.kind = SessionKind.PICKUP
        row = await agent.db.pickup(shortcode.digest(code))
        if row is None:
            await agent.reject(session, RejectReason.UNKNOWN_CODE, "no parcel has this code here")
            return
        session.parcel_id = row.parcel_id
        if row.valid_until < time.time():
            await agent.reject(session, RejectReason.PICKUP_EXPIRED, f"parcel {row.parcel_id}")
            return
        if await agent.db.parcel_compartment(row.parcel_id) != row.compartment:
            await agent.reject(
                session, RejectReason.UNKNOWN_CODE, f"parcel {row.parcel_id} is not in the locker"
            )
            return
        session.to(SessionState.VERIFIED)
        if await agent.doors.open_first(session, [row.compartment]) is None:
            await agent.reject(session, RejectReason.DOOR_JAMMED, f"door {row.compartment}")
            return
        closed = await agent.doors.await_close(session, row.compartment)
        body = Pickup(
            parcel_id=row.parcel_id,
            compartment=row.compartment,
            picked_up_at=time.time(),
            door_left_open=not closed,
        )
        # The door opened for the right code: the parcel is gone even if the door was left open.
        await agent.append(body, free=row.compartment, drop_pickup=row.code_hash)
        agent.counters.pickups += 1
        if closed:
            session.to(SessionState.DONE)

    async def load(
        self, session: KioskSession, parcel_id: str, *, by: str, size: SizeClass
    ) -> None:
        """A courier or clerk scanned ``parcel_id`` to put it in a compartment of ``size``."""
        agent = self._agent
        session.kind, session.parcel_id, session.by = SessionKind.LOAD, parcel_id, by
        already = await agent.db.parcel_compartment(parcel_id)
        if already is not None:
            await agent.reject(
                session, RejectReason.ALREADY_USED, f"parcel {parcel_id} is in {already}"
            )
            return
        candidates = await agent.db.free_compartments(size)
        if not candidates:
            await agent.reject(session, RejectReason.NO_COMPARTMENT, f"no free {size.name}")
            return
        session.to(SessionState.VERIFIED)
        compartment = await agent.doors.open_first(session, candidates)
        if compartment is None:
            await agent.reject(session, RejectReason.DOOR_JAMMED, "every fitting door is jammed")
            return
        if not await agent.doors.await_close(session, compartment):
            return
        body = ParcelLoaded(
            parcel_id=parcel_id,
            compartment=compartment,
            size=size.name,
            loaded_by=by,
            loaded_at=time.time(),
        )
        await agent.append(body, occupy=compartment, occupant=(PARCEL, parcel_id))
        agent.counters.loaded += 1
        session.to(SessionState.DONE)

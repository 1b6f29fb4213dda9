"""Drop-offs (DESIGN §2 flows 2 and 3): into a locker compartment, or over the counter.

Locker: the voucher's size class picks the smallest free compartment that fits; the door
sensor decides; the ``dropoff`` event is written in the same transaction that marks the
voucher used and the compartment occupied, and only then is the shopper told "accepted".

Counter: the kiosk prints a bag label; the clerk scans the bag label and then the store's
tote label, and the ``dropoff`` event carries both ids. In ``both`` mode a parcel no free
compartment fits goes over the counter.
"""

import secrets
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from edge.prompts import CANCEL
from edge.session import KioskSession, SessionKind, SessionState
from hardware.labels import BagLabel, Receipt, render
from protocol.errors import VoucherError
from protocol.messages import Dropoff, DropoffMethod, FaultKind, RejectReason
from protocol.shortcode import ALPHABET
from protocol.voucher import VoucherClaims

if TYPE_CHECKING:
    from edge.agent import EdgeAgent


def new_bag_id() -> str:
    """A bag id for a counter drop-off's label: ``BAG-`` and 10 Crockford symbols."""
    return "BAG-" + "".join(secrets.choice(ALPHABET) for _ in range(10))


class DropoffDesk:
    """Runs drop-off sessions for the agent."""

    def __init__(self, agent: "EdgeAgent") -> None:
        self._agent = agent

    async def run(self, session: KioskSession, token: str) -> None:
        """Verify ``token`` and take the parcel into a locker or over the counter."""
        agent = self._agent
        try:
            claims = await agent.verifier.verify(token)
        except VoucherError as exc:
            await agent.reject(session, RejectReason(exc.reason), exc.detail)
            return
        session.return_id = str(claims.return_id)
        session.to(SessionState.VERIFIED)
        mode = agent.settings.mode
        candidates = [] if mode == "counter" else await agent.db.free_compartments(claims.size)
        if mode == "counter" or (mode == "both" and not candidates):
            await self._counter(session, claims)
        elif not candidates:
            await agent.reject(session, RejectReason.NO_COMPARTMENT, f"no free {claims.size.name}")
        else:
            await self._locker(session, claims, candidates)

    async def _locker(
        self, session: KioskSession, claims: VoucherClaims, candidates: list[str]
    ) -> None:
        agent = self._agent
        compartment = await agent.doors.open_first(session, candidates)
        if compartment is None:
            await agent.reject(session, RejectReason.DOOR_JAMMED, "every fitting door is jammed")
            return
        if not await agent.doors.await_close(session, compartment):
            return  # never shut: out of service, nothing accepted (the clerk checks it)
        await self._record(session, claims, DropoffMethod.LOCKER, compartment=compartment)
        session.to(SessionState.DONE)
        await self._receipt(claims, compartment)

    async def _counter(self, session: KioskSession, claims: VoucherClaims) -> None:
        agent = self._agent
        session.kind = SessionKind.COUNTER
        session.bag_id = bag_id = new_bag_id()
        label = BagLabel(str(claims.return_id), bag_id, agent.config.store, claims.merchant)
        if not await agent.print_label(render(label), job=f"bag-{bag_id}"):
            await agent.reject(session, RejectReason.CANCELLED, "the bag label did not print")
            return
        session.to(SessionState.AWAIT_BAG)
        step_s = agent.config.timeouts.counter_step_s
        bag = await agent.prompts.wait(lambda c: c == bag_id, step_s, prompt="scan_bag")
        if not await self._step_done(session, bag):
            return
        session.to(SessionState.AWAIT_TOTE)
        prefix = agent.config.clerk.tote_label_prefix
        tote = await agent.prompts.wait(lambda c: c.startswith(prefix), step_s, prompt="scan_tote")
        if not await self._step_done(session, tote) or tote is None:
            return
        session.tote_id = tote
        await self._record(session, claims, DropoffMethod.COUNTER, bag_id=bag_id, tote_id=tote)
        session.to(SessionState.DONE)
        await self._receipt(claims, None)

    async def _step_done(self, session: KioskSession, scanned: str | None) -> bool:
        if scanned is None:
            session.to(SessionState.TIMED_OUT, reason=RejectReason.TIMED_OUT.value)
            return False
        if scanned == CANCEL:
            await self._agent.reject(session, RejectReason.CANCELLED, "cancelled at the counter")
            return False
        return True

    async def _record(
        self,
        session: KioskSession,
        claims: VoucherClaims,
        method: DropoffMethod,
        *,
        compartment: str | None = None,
        bag_id: str | None = None,
        tote_id: str | None = None,
    ) -> None:
        body = Dropoff(
            return_id=str(claims.return_id),
            merchant=claims.merchant,
            method=method,
            compartment=compartment,
            size=claims.size.name,
            items=claims.items,
            bag_id=bag_id,
            tote_id=tote_id,
            voucher_kid=claims.kid,
            scanned_at=session.history[0][1] - time.monotonic() + time.time(),
            accepted_at=time.time(),
        )
        await self._agent.append(body, used_return=str(claims.return_id), occupy=compartment)
        self._agent.counters.dropoffs += 1

    async def _receipt(self, claims: VoucherClaims, compartment: str | None) -> None:
        agent = self._agent
        receipt = Receipt(
            return_id=str(claims.return_id),
            merchant=claims.merchant,
            store=agent.config.store,
            compartment=compartment,
            dropped_at=datetime.now(UTC),
            lines=[f"{claims.items} item(s), size {claims.size.name}"],
        )
        try:
            await agent.devices.printer.print(render(receipt), job=f"receipt-{claims.return_id}")
        except Exception as exc:  # a printer fault never undoes an accepted drop-off
            await agent.fault(FaultKind.PRINTER, None, f"receipt: {exc}")

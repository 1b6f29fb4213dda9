"""Clerk mode: staff identified by badge or PIN (checked against scrypt hashes in the store
config, so it works offline), and what they may do: load parcels, seal the tote, open a
compartment for service (and empty it), take a door out of order or put it back.

Failed PINs lock the keypad for ``lockout_s`` after ``pin_attempts`` tries; a clerk who does
nothing for ``clerk_idle_s`` is logged out.
"""

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge.session import KioskSession, SessionKind, SessionState
from protocol import clerks
from protocol.messages import (
    ClerkCredential,
    CompartmentService,
    RejectReason,
    ServiceAction,
    ToteSealed,
)
from protocol.sizes import SizeClass

if TYPE_CHECKING:
    from edge.agent import EdgeAgent


class ClerkAuthError(Exception):
    """A PIN or badge that did not log anyone in; ``reason`` is ``wrong_pin``, ``locked``,
    ``bad_pin`` or ``no_config``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


class ClerkActionError(Exception):
    """A clerk action that cannot be done (no clerk, unknown compartment)."""


@dataclass
class Clerk:
    """The member of staff using the kiosk now."""

    id: str
    name: str
    role: str
    since: float
    last_active: float
    load_size: SizeClass = SizeClass.M


class ClerkDesk:
    """Who is logged in, and the actions only they may take."""

    def __init__(self, agent: "EdgeAgent") -> None:
        self._agent = agent
        self.current: Clerk | None = None
        self._failures = 0
        self.locked_until = 0.0

    # ---- identity ---------------------------------------------------------------------

    async def _match(self, kind: clerks.SecretKind, secret: str) -> ClerkCredential | None:
        config = await self._agent.db.store_config()
        if config is None or not config.clerks:
            raise ClerkAuthError("no_config", "no clerks are configured for this store yet")
        digest = await asyncio.to_thread(clerks.secret_hash, config.clerk_salt, kind, secret)
        field = "badge_hash" if kind == "badge" else "pin_hash"
        return next((c for c in config.clerks if clerks.same(getattr(c, field), digest)), None)

    async def login_pin(self, pin: str) -> Clerk:
        """Log in with a PIN, or raise :class:`ClerkAuthError`."""
        now = time.monotonic()
        if now < self.locked_until:
            raise ClerkAuthError("locked", f"keypad locked for {self.locked_until - now:.0f}s")
        try:
            clerks.check_pin(pin)
        except clerks.ClerkSecretError as exc:
            raise ClerkAuthError("bad_pin", str(exc)) from None
        credential = await self._match("pin", pin)
        if credential is None:
            self._failures += 1
            if self._failures >= self._agent.config.clerk.pin_attempts:
                self._failures = 0
                self.locked_until = now + self._agent.config.clerk.lockout_s
            self._agent.changed()
            raise ClerkAuthError("wrong_pin")
        self._failures = 0
        return self._login(credential)

    async def login_badge(self, code: str) -> Clerk | None:
        """Log in with a scanned badge; None when ``code`` is nobody's badge."""
        try:
            credential = await self._match("badge", code)
        except ClerkAuthError:
            return None
        return None if credential is None else self._login(credential)

    def _login(self, credential: ClerkCredential) -> Clerk:
        now = time.monotonic()
        self.current = Clerk(credential.id, credential.name, credential.role, now, now)
        self._agent.changed()
        return self.current

    def logout(self) -> None:
        """End clerk mode."""
        if self.current is not None:
            self.current = None
            self._agent.prompts.cancel()
            self._agent.changed()

    def require(self) -> Clerk:
        """The logged-in clerk (and note the activity), or :class:`ClerkActionError`."""
        clerk = self.current
        if clerk is None:
            raise ClerkActionError("no clerk is logged in")
        clerk.last_active = time.monotonic()
        return clerk

    def expire_idle(self) -> None:
        """Log out a clerk idle for longer than ``clerk_idle_s``."""
        clerk = self.current
        if clerk and time.monotonic() - clerk.last_active > self._agent.settings.clerk_idle_s:
            self.logout()

    @property
    def attempts_left(self) -> int:
        """PIN tries before the keypad locks."""
        return self._agent.config.clerk.pin_attempts - self._failures

    # ---- actions ----------------------------------------------------------------------

    def set_load_size(self, size: SizeClass) -> None:
        """The compartment size the next scanned parcel goes into."""
        self.require().load_size = size
        self._agent.changed()

    async def seal_tote(self, tote_label: str | None = None) -> None:
        """The clerk sealed the tote: the gateway closes it, books it and sends its label."""
        clerk = self.require()
        await self._agent.append(
            ToteSealed(clerk=clerk.id, tote_label=tote_label, sealed_at=time.time())
        )
        self._agent.counters.totes_sealed += 1

    async def set_out_of_order(self, compartment: str, out_of_order: bool) -> bool:
        """Take a door out of service or put it back; True when that changed anything."""
        clerk = self.require()
        await self.known(compartment)
        if not await self._agent.db.set_out_of_order(compartment, out_of_order):
            return False
        action = ServiceAction.OUT_OF_ORDER if out_of_order else ServiceAction.BACK_IN_SERVICE
        await self._agent.append(
            CompartmentService(compartment=compartment, action=action, by=clerk.id)
        )
        self._agent.changed()
        return True

    async def open_for_service(self, compartment: str, *, empty: bool) -> KioskSession:
        """Open a door for the clerk; with ``empty`` whatever was inside is taken out."""
        clerk = self.require()
        await self.known(compartment)
        return await self._agent.service_open(compartment, by=clerk.id, empty=empty)

    async def known(self, compartment: str) -> None:
        """Raise :class:`ClerkActionError` unless the pin map has ``compartment``."""
        if await self._agent.db.compartment(compartment) is None:
            raise ClerkActionError(f"no compartment {compartment}")


async def service_open(
    agent: "EdgeAgent", session: KioskSession, compartment: str, *, by: str, empty: bool
) -> None:
    """Open ``compartment`` for service and report what the door sensor said; with ``empty``
    the compartment is freed in the same transaction as the event."""
    from hardware.locker import DoorOutcome

    session.kind, session.by, session.compartment = SessionKind.SERVICE, by, compartment
    session.to(SessionState.VERIFIED)
    session.to(SessionState.DOOR_OPENING)
    outcome = await agent.locker.open(compartment)
    row = await agent.db.compartment(compartment)
    removed = row.occupied_by if (row is not None and empty) else None
    action = ServiceAction.EMPTIED if empty else ServiceAction.OPENED
    body = CompartmentService(
        compartment=compartment, action=action, by=by, door=outcome.value, removed=removed
    )
    if outcome is DoorOutcome.JAMMED:
        session.to(SessionState.JAMMED)
        await agent.append(body.model_copy(update={"action": ServiceAction.OPENED}))
        await agent.reject(session, RejectReason.DOOR_JAMMED, f"door {compartment}")
        return
    await agent.append(body, free=compartment if empty else None)
    if empty and row is not None and row.occupant_kind == "parcel" and removed:
        await agent.forget_pickup(removed)
    session.to(SessionState.DOOR_OPEN)
    session.to(SessionState.DONE, reason=outcome.value)

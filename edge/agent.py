"""The edge agent: camera → voucher check → locker door → outbox → gateway (DESIGN §2 flow 2)."""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pydantic import BaseModel

from edge.config import EdgeConfig
from edge.database import EdgeDatabase
from edge.devices import Devices
from edge.link import KioskLink
from edge.outbox import OutboxPublisher
from edge.scanner import Scanner
from edge.session import KioskSession, SessionState
from edge.verifier import VoucherVerifier
from hardware.labels import ManifestLine as LabelManifestLine
from hardware.labels import Receipt, ToteLabel, render
from hardware.locker import CompartmentSpec, DoorOutcome, LockerBank, LockerSpec
from protocol import envelope, topics
from protocol.errors import MalformedMessage, ProtocolError, VoucherError
from protocol.ids import new_id
from protocol.messages import (
    Ack,
    CollectParcels,
    CommandOutcome,
    CommandResult,
    Dropoff,
    DropoffMethod,
    Fault,
    FaultKind,
    PrintLabel,
    RejectReason,
    ScanRejected,
    StoreConfig,
)
from protocol.voucher import VoucherClaims

log = logging.getLogger(__name__)


@dataclass
class AgentCounters:
    """What the agent has done since start; the screen and tests read these."""

    scans: int = 0
    dropoffs: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    faults: int = 0
    malformed_inbound: int = 0
    commands: int = 0
    duplicate_commands: int = 0


class EdgeAgent:
    """One kiosk or locker bank. Works offline; the outbox delivers when the broker is back."""

    def __init__(self, config: EdgeConfig, devices: Devices) -> None:
        self.config = config
        self.devices = devices
        self.counters = AgentCounters()
        self.config_ready = asyncio.Event()
        self.session_listeners: list[Callable[[KioskSession], None]] = []
        self._db: EdgeDatabase | None = None
        self._locker: LockerBank | None = None
        self._link: KioskLink | None = None
        self._outbox: OutboxPublisher | None = None
        self._verifier: VoucherVerifier | None = None
        self._session_number = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._busy = asyncio.Lock()

    # ---- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Open the database, arm the locker, connect, and start serving scans."""
        cfg = self.config
        self._db = db = await EdgeDatabase.open(cfg.database)
        self._session_number = await db.next_session()
        await db.sync_compartments((c.id, c.size) for c in cfg.compartments)
        if await db.store_config() is not None:
            self.config_ready.set()
        self._locker = self._make_locker()
        self._verifier = VoucherVerifier(db, cfg.store)
        self._link = KioskLink(
            cfg.broker,
            store=cfg.store,
            device=cfg.device,
            session=self._session_number,
            version=cfg.version,
            on_message=self._on_message,
        )
        self._outbox = OutboxPublisher(
            db, self._link, store=cfg.store, device=cfg.device, ack_timeout_s=cfg.timeouts.ack_s
        )
        await self.devices.camera.start()
        self._tasks = [
            asyncio.create_task(self._link.run(), name=f"{cfg.device}-link"),
            asyncio.create_task(self._outbox.run(), name=f"{cfg.device}-outbox"),
            asyncio.create_task(self._scan_loop(), name=f"{cfg.device}-scan"),
        ]
        log.info("agent %s/%s started (session %d)", cfg.store, cfg.device, self._session_number)

    def _make_locker(self) -> LockerBank:
        cfg = self.config
        spec = LockerSpec(
            compartments=tuple(
                CompartmentSpec(c.id, c.size, c.relay_pin, c.sensor_pin) for c in cfg.compartments
            ),
            pulse_s=cfg.relay_pulse_s,
            max_pulse_s=cfg.relay_max_pulse_s,
            open_timeout_s=cfg.timeouts.door_open_s,
        )
        locker = LockerBank(spec, self.devices.pin_factory, asyncio.get_running_loop())
        locker.on_unexpected_open = self._on_unexpected_open
        return locker

    async def stop(self) -> None:
        """Stop serving; everything accepted is already durable in the outbox."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.devices.camera.stop()
        if self._locker is not None:
            self._locker.close()
        if self._db is not None:
            await self._db.close()

    # ---- accessors ----------------------------------------------------------------------

    @property
    def db(self) -> EdgeDatabase:
        """The kiosk database (after :meth:`start`)."""
        assert self._db is not None, "agent not started"
        return self._db

    @property
    def outbox(self) -> OutboxPublisher:
        """The outbox publisher (after :meth:`start`)."""
        assert self._outbox is not None, "agent not started"
        return self._outbox

    @property
    def link(self) -> KioskLink:
        """The broker link (after :meth:`start`)."""
        assert self._link is not None, "agent not started"
        return self._link

    @property
    def locker(self) -> LockerBank:
        """The locker bank (after :meth:`start`)."""
        assert self._locker is not None, "agent not started"
        return self._locker

    # ---- scanning -----------------------------------------------------------------------

    async def _scan_loop(self) -> None:
        scanner = Scanner(self.devices.camera, self.devices.decoder)
        async for scan in scanner.scans():
            try:
                await self.handle_code(scan.text, scanned_at=time.time())
            except Exception:
                # A bug in one session must not take the kiosk down.
                log.exception("session for a scan failed")

    async def handle_code(self, code: str, *, scanned_at: float | None = None) -> KioskSession:
        """Run one drop-off for a scanned or typed voucher; returns the finished session."""
        async with self._busy:
            session = KioskSession(code=code, on_change=self._notify)
            self.counters.scans += 1
            session.to(SessionState.SCANNED)
            await self._dropoff(session, scanned_at or time.time())
            return session

    def _notify(self, session: KioskSession) -> None:
        for listener in self.session_listeners:
            listener(session)

    async def _dropoff(self, session: KioskSession, scanned_at: float) -> None:
        assert self._verifier is not None
        try:
            claims = await self._verifier.verify(session.code)
        except VoucherError as exc:
            await self._reject(session, RejectReason(exc.reason), exc.detail)
            return
        session.return_id = str(claims.return_id)
        session.to(SessionState.VERIFIED)
        compartment = await self._open_compartment(session, claims)
        if compartment is None:
            return
        if not await self.locker.wait_closed(compartment, self.config.timeouts.door_close_s):
            await self._left_open(session, compartment)
            return
        session.to(SessionState.DOOR_CLOSED)
        await self._record_dropoff(session, claims, compartment, scanned_at)
        session.to(SessionState.DONE)
        await self._print_receipt(claims, compartment)

    async def _open_compartment(self, session: KioskSession, claims: VoucherClaims) -> str | None:
        """Open the first free compartment that fits and really opens; None if none did."""
        candidates = await self.db.free_compartments(claims.size)
        if not candidates:
            await self._reject(session, RejectReason.NO_COMPARTMENT, f"no free {claims.size.name}")
            return None
        for compartment in candidates:
            session.to(SessionState.DOOR_OPENING)
            outcome = await self.locker.open(compartment)
            if outcome is DoorOutcome.JAMMED:
                session.to(SessionState.JAMMED)
                await self.db.set_out_of_order(compartment, True)
                await self._fault(FaultKind.JAMMED, compartment, "door did not open on command")
                continue
            session.compartment = compartment
            session.to(SessionState.DOOR_OPEN)
            return compartment
        await self._reject(session, RejectReason.DOOR_JAMMED, "every fitting door is jammed")
        return None

    async def _record_dropoff(
        self, session: KioskSession, claims: VoucherClaims, compartment: str, scanned_at: float
    ) -> None:
        body = Dropoff(
            return_id=str(claims.return_id),
            merchant=claims.merchant,
            method=DropoffMethod.LOCKER,
            compartment=compartment,
            size=claims.size.name,
            items=claims.items,
            voucher_kid=claims.kid,
            scanned_at=scanned_at,
            accepted_at=time.time(),
        )
        await self._append(body, used_return=str(claims.return_id), occupy=compartment)
        self.counters.dropoffs += 1

    async def _left_open(self, session: KioskSession, compartment: str) -> None:
        session.to(SessionState.LEFT_OPEN, reason=RejectReason.DOOR_NOT_CLOSED.value)
        await self.db.set_out_of_order(compartment, True)
        await self._fault(FaultKind.LEFT_OPEN, compartment, "door not closed in time")

    async def _reject(self, session: KioskSession, reason: RejectReason, detail: str) -> None:
        if session.state is SessionState.JAMMED or session.state in (
            SessionState.SCANNED,
            SessionState.VERIFIED,
        ):
            session.to(SessionState.REJECTED, reason=reason.value)
        self.counters.rejected[reason.value] = self.counters.rejected.get(reason.value, 0) + 1
        log.info("scan rejected: %s (%s)", reason.value, detail)
        await self._append(ScanRejected(reason=reason, return_id=session.return_id, detail=detail))

    async def _fault(self, kind: FaultKind, compartment: str | None, detail: str) -> None:
        self.counters.faults += 1
        log.warning("fault %s at %s: %s", kind.value, compartment, detail)
        await self._append(Fault(kind=kind, compartment=compartment, detail=detail))

    def _on_unexpected_open(self, compartment: str) -> None:
        task = asyncio.get_running_loop().create_task(
            self._fault(FaultKind.UNEXPECTED_OPEN, compartment, "door opened with no command")
        )
        self._tasks.append(task)

    async def _append(
        self, body: BaseModel, *, used_return: str | None = None, occupy: str | None = None
    ) -> None:
        await self.db.append_event(
            event_id=new_id(),
            event_type=envelope.message_type(body),
            session=self._session_number,
            body=body.model_dump_json(),
            used_return=used_return,
            occupy=occupy,
        )
        self.outbox.wake()

    # ---- printing -----------------------------------------------------------------------

    async def _print_receipt(self, claims: VoucherClaims, compartment: str) -> None:
        receipt = Receipt(
            return_id=str(claims.return_id),
            merchant=claims.merchant,
            store=self.config.store,
            compartment=compartment,
            dropped_at=datetime.now(UTC),
            short_code="",
            lines=[f"{claims.items} item(s), size {claims.size.name}"],
        )
        try:
            await self.devices.printer.print(render(receipt), job=f"receipt-{claims.return_id}")
        except Exception as exc:  # a printer fault never undoes an accepted drop-off
            await self._fault(FaultKind.PRINTER, None, f"receipt: {exc}")

    # ---- inbound ------------------------------------------------------------------------

    async def _on_message(self, topic: str, payload: bytes) -> None:
        try:
            parsed = topics.parse(topic)
            message = envelope.decode(payload)
        except ProtocolError as exc:
            self.counters.malformed_inbound += 1
            log.warning("dropped inbound message on %s: %s", topic, exc)
            return
        body = message.body
        if isinstance(body, Ack):
            await self.outbox.on_ack(body.ids)
        elif isinstance(body, StoreConfig) and parsed.channel == "config":
            await self._apply_config(body)
        elif isinstance(body, PrintLabel):
            await self._print_label(body)
        elif isinstance(body, CollectParcels):
            await self._collect(body)
        else:
            self.counters.malformed_inbound += 1
            log.warning("unexpected %s on %s", message.type, topic)

    async def _apply_config(self, config: StoreConfig) -> None:
        if config.store != self.config.store:
            raise MalformedMessage(f"config for {config.store} on {self.config.store}'s topic")
        if await self.db.save_store_config(config):
            log.info("store config version %d applied", config.version)
        self.config_ready.set()

    async def _fresh_command(self, command_id: str, expires_at: float) -> bool:
        """True for a command to carry out now; answers repeats (ignored) and expired ones."""
        if not await self.db.first_sight_of_command(command_id):
            self.counters.duplicate_commands += 1
            return False
        self.counters.commands += 1
        if expires_at < time.time():
            await self._command_result(command_id, CommandOutcome.EXPIRED)
            return False
        return True

    async def _collect(self, command: CollectParcels) -> None:
        if not await self._fresh_command(command.command_id, command.expires_at):
            return
        freed = await self.db.release_returns(command.return_ids)
        log.info("tote %s: compartments %s emptied", command.tote_id, ", ".join(freed) or "none")
        await self._command_result(
            command.command_id, CommandOutcome.SUCCEEDED, f"freed {len(freed)} compartment(s)"
        )

    async def _print_label(self, command: PrintLabel) -> None:
        if not await self._fresh_command(command.command_id, command.expires_at):
            return
        label = ToteLabel(
            tote_id=command.tote_id,
            store=self.config.store,
            carrier=command.carrier,
            waybill=command.waybill,
            pickup_start=_when(command.pickup_start),
            pickup_end=_when(command.pickup_end),
            manifest=[LabelManifestLine(m.return_id, m.merchant, m.size) for m in command.manifest],
        )
        try:
            await self.devices.printer.print(render(label), job=f"tote-{command.tote_id}")
        except Exception as exc:
            await self._command_result(command.command_id, CommandOutcome.FAILED, str(exc))
            return
        await self._command_result(command.command_id, CommandOutcome.SUCCEEDED)

    async def _command_result(
        self, command_id: str, outcome: CommandOutcome, detail: str = ""
    ) -> None:
        await self._append(CommandResult(command_id=command_id, outcome=outcome, detail=detail))


def _when(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)

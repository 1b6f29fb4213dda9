"""The edge agent: one kiosk or locker bank, every flow of DESIGN §2 (2–4), working offline.

It owns the devices, the database, the broker link and the outbox, and routes what happens
to the flows: codes from the camera or the screen's keypad (a voucher, a pickup code, a
staff badge, or the scan a running flow waits for), commands from the gateway, door sensor
edges. Flows live in their own modules (:mod:`edge.dropoff`, :mod:`edge.pickups`,
:mod:`edge.clerks`, :mod:`edge.commands`); one visit runs at a time.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from pydantic import BaseModel

from edge.clerks import ClerkDesk, service_open
from edge.commands import Command, CommandDesk
from edge.config import EdgeConfig
from edge.database import EdgeDatabase
from edge.devices import Devices
from edge.doors import Doors
from edge.dropoff import DropoffDesk
from edge.link import KioskLink
from edge.outbox import OutboxPublisher
from edge.pickups import PickupDesk
from edge.prompts import Prompts
from edge.scanner import Scanner
from edge.screen import Screen
from edge.session import KioskSession, SessionState
from edge.shortcodes import ShortCodeLookupError, ShortCodes
from edge.verifier import VoucherVerifier
from hardware.indicators import IndicatorPins, Indicators
from hardware.locker import CompartmentSpec, DoorEvent, LockerBank, LockerSpec
from protocol import envelope, shortcode, topics, voucher
from protocol.errors import MalformedMessage, ProtocolError, ShortCodeError
from protocol.ids import new_id
from protocol.messages import (
    Ack,
    CollectParcels,
    Configure,
    Fault,
    FaultKind,
    GatewayStatus,
    OpenDoor,
    PickupCode,
    PrintLabel,
    RejectReason,
    ScanRejected,
    StoreConfig,
    Sync,
)

log = logging.getLogger(__name__)

HOUSEKEEPING_S = 5.0
COMMANDS = (PrintLabel, CollectParcels, OpenDoor, PickupCode, Sync, Configure)


@dataclass
class AgentCounters:
    """What the agent has done since start; the screen, metrics and tests read these."""

    scans: int = 0
    dropoffs: int = 0
    pickups: int = 0
    loaded: int = 0
    totes_sealed: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    faults: int = 0
    malformed_inbound: int = 0
    commands: int = 0
    duplicate_commands: int = 0
    ignored_scans: int = 0


@dataclass(frozen=True)
class Settings:
    """The settings in force: the kiosk's config file, changed by ``configure`` commands."""

    mode: str
    door_close_s: float
    left_open_give_up_s: float
    clerk_idle_s: float


class EdgeAgent:
    """One kiosk or locker bank. Works offline; the outbox delivers when the broker is back."""

    def __init__(self, config: EdgeConfig, devices: Devices) -> None:
        self.config = config
        self.devices = devices
        self.counters = AgentCounters()
        self.config_ready = asyncio.Event()
        self.session_listeners: list[Callable[[KioskSession], None]] = []
        self.change_listeners: list[Callable[[], None]] = []
        self.session: KioskSession | None = None
        self.last_session: KioskSession | None = None
        self.gateway_online: bool | None = None
        self.alarms: dict[str, str] = {}
        self.prompts = Prompts()
        self.doors = Doors(self)
        self.dropoffs = DropoffDesk(self)
        self.pickup_desk = PickupDesk(self)
        self.clerks = ClerkDesk(self)
        self.commands = CommandDesk(self)
        self.short_codes = ShortCodes(self)
        self.session_number = 0
        self._overrides: dict[str, Any] = {}
        self._db: EdgeDatabase | None = None
        self._locker: LockerBank | None = None
        self._link: KioskLink | None = None
        self._outbox: OutboxPublisher | None = None
        self._verifier: VoucherVerifier | None = None
        self._indicators: Indicators | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._busy = asyncio.Lock()
        self.screen: Screen | None = None

    # ---- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Open the database, arm the locker, connect, and start serving scans."""
        cfg = self.config
        self._db = db = await EdgeDatabase.open(cfg.database)
        self.session_number = await db.next_session()
        await db.sync_compartments((c.id, c.size) for c in cfg.compartments)
        self._overrides = await db.settings_overrides()
        if await db.store_config() is not None:
            self.config_ready.set()
        self._indicators = self._make_indicators()
        self._locker = self._make_locker()
        self._verifier = VoucherVerifier(db, cfg.store)
        self._link = KioskLink(
            cfg.broker,
            store=cfg.store,
            device=cfg.device,
            session=self.session_number,
            version=cfg.version,
            on_message=self._on_message,
            capabilities=self._capabilities(),
        )
        self._outbox = OutboxPublisher(
            db, self._link, store=cfg.store, device=cfg.device, ack_timeout_s=cfg.timeouts.ack_s
        )
        await self.devices.camera.start()
        self._tasks = [
            asyncio.create_task(self._link.run(), name=f"{cfg.device}-link"),
            asyncio.create_task(self._outbox.run(), name=f"{cfg.device}-outbox"),
            asyncio.create_task(self._scan_loop(), name=f"{cfg.device}-scan"),
            asyncio.create_task(self._housekeeping(), name=f"{cfg.device}-housekeeping"),
            asyncio.create_task(self._watch_link(), name=f"{cfg.device}-presence"),
        ]
        self.indicators.ready()
        if cfg.screen.enabled:
            self.screen = Screen(self, cfg.screen.host, cfg.screen.port)
            await self.screen.start()
        log.info("agent %s/%s started (session %d)", cfg.store, cfg.device, self.session_number)

    def _capabilities(self) -> list[str]:
        caps = ["dropoff_" + m for m in ("locker", "counter") if self.config.mode in (m, "both")]
        if self.config.compartments:
            caps += ["pickup", "open_door"]
        return [*caps, "clerk", "print_label", "sync", "configure", "short_code"]

    def _make_locker(self) -> LockerBank:
        cfg = self.config
        spec = LockerSpec(
            compartments=tuple(
                CompartmentSpec(c.id, c.size, c.relay_pin, c.sensor_pin) for c in cfg.compartments
            ),
            relay_active_high=cfg.relay_active_high,
            sensor_closed_when_low=cfg.sensor_closed_when_low,
            pulse_s=cfg.relay_pulse_s,
            max_pulse_s=cfg.relay_max_pulse_s,
            open_timeout_s=cfg.timeouts.door_open_s,
        )
        locker = LockerBank(spec, self.devices.pin_factory, asyncio.get_running_loop())
        locker.on_unexpected_open = self._on_unexpected_open
        locker.on_door = self._on_door
        return locker

    def _make_indicators(self) -> Indicators:
        ind = self.config.indicators
        pins = IndicatorPins(ind.green_pin, ind.red_pin, ind.buzzer_pin, ind.buzzer_active_high)
        return Indicators(pins, self.devices.pin_factory)

    async def stop(self) -> None:
        """Stop serving; everything accepted is already durable in the outbox."""
        if self.screen is not None:
            await self.screen.stop()
            self.screen = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.devices.camera.stop()
        if self._locker is not None:
            self._locker.close()
        if self._indicators is not None:
            self._indicators.close()
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

    @property
    def verifier(self) -> VoucherVerifier:
        """The offline voucher checks (after :meth:`start`)."""
        assert self._verifier is not None, "agent not started"
        return self._verifier

    @property
    def indicators(self) -> Indicators:
        """LEDs and buzzer (after :meth:`start`)."""
        assert self._indicators is not None, "agent not started"
        return self._indicators

    @property
    def online(self) -> bool:
        """True while the broker link is up and the gateway is not known to be offline."""
        return (
            self._link is not None
            and self._link.connected.is_set()
            and self.gateway_online is not False
        )

    @property
    def settings(self) -> Settings:
        """The settings in force now."""
        t, o = self.config.timeouts, self._overrides
        return Settings(
            mode=str(o.get("mode", self.config.mode)),
            door_close_s=float(o.get("door_close_s", t.door_close_s)),
            left_open_give_up_s=float(o.get("left_open_give_up_s", t.left_open_give_up_s)),
            clerk_idle_s=float(o.get("clerk_idle_s", t.clerk_idle_s)),
        )

    async def apply_overrides(self, changes: dict[str, Any]) -> None:
        """Keep settings changed by the gateway (``configure``), across restarts too."""
        self._overrides = {**self._overrides, **changes}
        await self.db.save_settings_overrides(self._overrides)
        self.changed()

    # ---- change notification ------------------------------------------------------------

    def changed(self) -> None:
        """Something the screen shows changed."""
        for listener in list(self.change_listeners):
            listener()

    def _notify(self, session: KioskSession) -> None:
        for listener in list(self.session_listeners):
            listener(session)
        self.changed()

    # ---- codes in -----------------------------------------------------------------------

    async def _scan_loop(self) -> None:
        scanner = Scanner(self.devices.camera, self.devices.decoder)
        async for scan in scanner.scans():
            try:
                await self.handle_code(scan.text, frame_at=scan.frame_captured_at)
            except Exception:
                # A bug in one session must not take the kiosk down.
                log.exception("session for a scan failed")

    async def handle_code(
        self, code: str, *, typed: bool = False, frame_at: float | None = None
    ) -> KioskSession | None:
        """Route one scanned (or, with ``typed``, keyed-in) code; returns the finished session,
        or None when the code went to a flow waiting for it or logged a clerk in."""
        code = code.strip()
        if self.prompts.offer(code):
            return None
        if self.prompts.current is not None:
            # A flow waits for a particular scan (the bag label): anything else is not for it
            # and must not queue behind it.
            self.counters.ignored_scans += 1
            return None
        if self.clerks.current is not None:
            self.clerks.require()  # scanning counts as activity
        staff_code = not typed and not code.startswith((voucher.PREFIX, shortcode.PICKUP_PREFIX))
        if staff_code and self.clerks.current is None and await self.clerks.login_badge(code):
            return None
        async with self._busy:
            session = KioskSession(code=code, on_change=self._notify, frame_at=frame_at)
            self.session = session
            self.counters.scans += 1
            session.to(SessionState.SCANNED)
            try:
                await self._route(session, code, typed=typed)
            finally:
                self.session, self.last_session = None, session
                self.changed()
            return session

    async def _route(self, session: KioskSession, code: str, *, typed: bool) -> None:
        if code.startswith(voucher.PREFIX):
            await self.dropoffs.run(session, code)
        elif code.startswith(shortcode.PICKUP_PREFIX):
            await self._pickup_code(session, code.removeprefix(shortcode.PICKUP_PREFIX))
        elif typed:
            await self._typed(session, code)
        elif self.clerks.current is not None:
            clerk = self.clerks.require()
            await self.pickup_desk.load(session, code, by=clerk.id, size=clerk.load_size)
        else:
            await self.reject(session, RejectReason.MALFORMED, "not a Dropline code")

    async def _pickup_code(self, session: KioskSession, text: str) -> None:
        try:
            code = shortcode.normalize(text)
        except ShortCodeError as exc:
            await self.reject(session, RejectReason.BAD_SHORT_CODE, str(exc))
            return
        await self.pickup_desk.collect(session, code)

    async def _typed(self, session: KioskSession, text: str) -> None:
        try:
            code = shortcode.normalize(text)
        except ShortCodeError as exc:
            await self.reject(session, RejectReason.BAD_SHORT_CODE, str(exc))
            return
        if await self.db.pickup(shortcode.digest(code)) is not None:
            await self.pickup_desk.collect(session, code)
            return
        try:
            token = await self.short_codes.resolve(code)
        except ShortCodeLookupError as exc:
            await self.reject(session, exc.reason, str(exc))
            return
        await self.dropoffs.run(session, token)

    async def service_open(self, compartment: str, *, by: str, empty: bool) -> KioskSession:
        """Open a door for service (clerk or ``open_door`` command) as its own session."""
        async with self._busy:
            session = KioskSession(code=f"service:{compartment}", on_change=self._notify)
            self.session = session
            session.to(SessionState.SCANNED)
            try:
                await service_open(self, session, compartment, by=by, empty=empty)
            finally:
                self.session, self.last_session = None, session
                self.changed()
            return session

    async def forget_pickup(self, parcel_id: str) -> None:
        """A clerk took a parcel out: its pickup code opens nothing any more."""
        await self.db.drop_pickups_of(parcel_id)

    # ---- outcomes -----------------------------------------------------------------------

    async def reject(self, session: KioskSession, reason: RejectReason, detail: str) -> None:
        """End ``session`` as rejected, tell the shopper, and report it."""
        if session.state in (
            SessionState.SCANNED,
            SessionState.VERIFIED,
            SessionState.JAMMED,
            SessionState.AWAIT_BAG,
            SessionState.AWAIT_TOTE,
        ):
            session.to(SessionState.REJECTED, reason=reason.value)
        self.counters.rejected[reason.value] = self.counters.rejected.get(reason.value, 0) + 1
        self.indicators.refused()
        log.info("scan rejected: %s (%s)", reason.value, detail)
        return_id = session.return_id or session.parcel_id
        await self.append(ScanRejected(reason=reason, return_id=return_id, detail=detail))

    async def fault(self, kind: FaultKind, compartment: str | None, detail: str) -> None:
        """Report a hardware fault to the gateway."""
        self.counters.faults += 1
        log.warning("fault %s at %s: %s", kind.value, compartment, detail)
        await self.append(Fault(kind=kind, compartment=compartment, detail=detail))

    def set_alarm(self, compartment: str, on: bool, why: str = "left_open") -> None:
        """Sound (or silence) the alarm for a compartment."""
        if on:
            self.alarms[compartment] = why
        else:
            self.alarms.pop(compartment, None)
        self.indicators.alarm(bool(self.alarms))
        self.changed()

    def _on_unexpected_open(self, compartment: str) -> None:
        self.set_alarm(compartment, True, "forced")
        task = asyncio.get_running_loop().create_task(
            self.fault(FaultKind.UNEXPECTED_OPEN, compartment, "door opened with no command")
        )
        self._tasks.append(task)

    def _on_door(self, event: DoorEvent) -> None:
        if not event.open and self.alarms.get(event.compartment) == "forced":
            self.set_alarm(event.compartment, False)
        self.changed()

    async def append(
        self,
        body: BaseModel,
        *,
        used_return: str | None = None,
        occupy: str | None = None,
        occupant: tuple[str, str] | None = None,
        free: str | None = None,
        drop_pickup: str | None = None,
    ) -> None:
        """Write an event to the outbox (with the state change behind it) and wake delivery."""
        await self.db.append_event(
            event_id=new_id(),
            event_type=envelope.message_type(body),
            session=self.session_number,
            body=body.model_dump_json(),
            used_return=used_return,
            occupy=occupy,
            occupant=occupant,
            free=free,
            drop_pickup=drop_pickup,
        )
        self.outbox.wake()
        self.changed()

    async def print_label(self, image: Image.Image, *, job: str) -> bool:
        """Print on the label printer; a failure is a printer fault and False."""
        try:
            await self.devices.label_printer.print(image, job=job)
        except Exception as exc:
            await self.fault(FaultKind.PRINTER, None, f"{job}: {exc}")
            return False
        return True

    # ---- background ---------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        camera_faulted = False
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)  # a periodic chore, not a wait for an event
            self.clerks.expire_idle()
            await self.db.purge_expired(time.time())
            healthy = getattr(self.devices.camera, "healthy", True)
            if not healthy and not camera_faulted:
                await self.fault(FaultKind.CAMERA, None, "camera gives no frames; reopening")
            camera_faulted = not healthy

    async def _watch_link(self) -> None:
        while True:
            await self.link.connected.wait()
            self._link_changed()
            await self.link.disconnected.wait()
            self._link_changed()

    def _link_changed(self) -> None:
        if self.online:
            self.indicators.ready()
        else:
            self.indicators.offline()
        self.changed()

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
        elif isinstance(body, GatewayStatus) and parsed.channel == "gateway_status":
            self.gateway_online = body.online
            self._link_changed()
        elif isinstance(
            body, PrintLabel | CollectParcels | OpenDoor | PickupCode | Sync | Configure
        ):
            await self._command(body)
        else:
            self.counters.malformed_inbound += 1
            log.warning("unexpected %s on %s", message.type, topic)

    async def _command(self, body: Command) -> None:
        if isinstance(body, OpenDoor):
            # A door command waits for the kiosk to be free: run it beside the link's loop.
            task = asyncio.get_running_loop().create_task(self.commands.handle(body))
            self._tasks.append(task)
            return
        await self.commands.handle(body)

    async def _apply_config(self, config: StoreConfig) -> None:
        if config.store != self.config.store:
            raise MalformedMessage(f"config for {config.store} on {self.config.store}'s topic")
        if await self.db.save_store_config(config):
            log.info("store config version %d applied", config.version)
        self.config_ready.set()
        self.changed()

"""A fleet of light kiosks for load tests: real MQTT connections that speak the Dropline
protocol (``protocol/``) without the edge agent's hardware, database or screen.

Each :class:`LightKiosk` does what a kiosk does on the wire (DESIGN §4): it connects with a
retained ``offline`` status as its will, subscribes to its inbox, announces itself with a
retained ``online`` status carrying its session counter, re-announces it every
``heartbeat_s`` (the heartbeat the gateway records as ``device_presence.seen_at``), sends
a drop-off now and then for a return it was given, answers commands with a ``cmd_result``
(and an ``inventory`` event when a ``sync`` asks for one), and counts the acks. A
:class:`BareConnection` only connects, subscribes and keeps alive, to see how many
connections a broker holds. Both record what they saw in a :class:`FleetStats`.
"""

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from protocol import envelope, topics
from protocol.envelope import Envelope
from protocol.errors import ProtocolError
from protocol.messages import (
    COMMAND_TYPES,
    Ack,
    CommandOutcome,
    CommandResult,
    CompartmentState,
    Dropoff,
    DropoffMethod,
    Inventory,
    Status,
    StoreConfig,
    Sync,
)

log = logging.getLogger(__name__)

VERSION = "fleet-sim/1"


@dataclass(frozen=True)
class KioskIdentity:
    """Who a simulated kiosk is, and the session counter it announces."""

    store: str
    device: str
    session: int = 1

    @property
    def key(self) -> str:
        """``store/device``."""
        return f"{self.store}/{self.device}"


@dataclass
class FleetStats:
    """What a worker's kiosks (or bare connections) did and saw. Times are ``time.time()``
    so that another process on the machine can compare them with its own."""

    connected: int = 0
    connect_failures: int = 0
    lost: int = 0
    """Connections that dropped while they should have been held."""
    statuses: list[tuple[str, float]] = field(default_factory=list)
    """(kiosk key, sent at) of every online status: birth and heartbeats."""
    dropoffs_sent: int = 0
    dropoffs_acked: int = 0
    ack_ms: list[float] = field(default_factory=list)
    """Drop-off publish → ack arrival."""
    configs: set[str] = field(default_factory=set)
    """Kiosks that received their store's retained config."""
    commands: int = 0
    returns_left: int = 0


@dataclass(frozen=True)
class Timing:
    """How often a light kiosk does things, and its MQTT keepalive."""

    heartbeat_s: float = 10.0
    dropoff_every_s: float = 60.0
    keepalive_s: int = 30


class LightKiosk:
    """One simulated kiosk on its own MQTT connection."""

    def __init__(
        self,
        identity: KioskIdentity,
        host: str,
        port: int,
        *,
        timing: Timing,
        returns: Sequence[str],
        stats: FleetStats,
        rng: random.Random,
    ) -> None:
        self.identity = identity
        self._host, self._port = host, port
        self._timing = timing
        self._returns = list(returns)
        self._stats = stats
        self._rng = rng
        self._seq = 0
        self._unacked: dict[str, float] = {}
        self._client: aiomqtt.Client | None = None

    def _status(self, online: bool) -> bytes:
        ident = self.identity
        body = Status(
            online=online,
            session=ident.session,
            version=VERSION,
            capabilities=["locker"] if online else [],
        )
        return envelope.encode(
            envelope.make(
                body, store=ident.store, device=ident.device, seq=0, session=ident.session
            )
        )

    def _next(self, body: Dropoff | CommandResult | Inventory) -> Envelope[Any]:
        self._seq += 1
        ident = self.identity
        return envelope.make(
            body, store=ident.store, device=ident.device, seq=self._seq, session=ident.session
        )

    async def run(self) -> None:
        """Connect, announce, and serve until cancelled (leaving with a clean DISCONNECT)."""
        ident = self.identity
        status_topic = topics.status(ident.store, ident.device)
        client = aiomqtt.Client(
            self._host,
            self._port,
            identifier=f"kiosk-{ident.store}-{ident.device}",
            clean_session=False,
            keepalive=self._timing.keepalive_s,
            timeout=math.inf,
            will=aiomqtt.Will(status_topic, self._status(False), qos=1, retain=True),
        )
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as exc:
            self._stats.connect_failures += 1
            log.warning("%s could not connect: %s", ident.key, exc)
            return
        self._client = client
        try:
            await client.subscribe([(t, 1) for t in topics.device_inbox(ident.store, ident.device)])
            await self._announce()
            self._stats.connected += 1
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._heartbeats())
                tasks.create_task(self._dropoffs())
                tasks.create_task(self._inbox(client))
        except* aiomqtt.MqttError as group:
            self._stats.lost += 1
            log.warning("%s lost its connection: %s", ident.key, group.exceptions[0])
        finally:
            self._client = None
            self._stats.returns_left += len(self._returns)
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)

    async def _announce(self) -> None:
        assert self._client is not None
        ident = self.identity
        self._stats.statuses.append((ident.key, time.time()))
        await self._client.publish(
            topics.status(ident.store, ident.device), self._status(True), qos=1, retain=True
        )

    async def _heartbeats(self) -> None:
        period = self._timing.heartbeat_s
        await asyncio.sleep(self._rng.uniform(0.5, 1.0) * period)  # spread the fleet out
        while True:
            await self._announce()
            await asyncio.sleep(period)  # the heartbeat's period, not a wait for an event

    async def _dropoffs(self) -> None:
        every = self._timing.dropoff_every_s
        while self._returns:
            await asyncio.sleep(self._rng.expovariate(1 / every))  # shoppers arrive at random
            await self._drop_off(self._returns.pop())

    async def _drop_off(self, return_id: str) -> None:
        assert self._client is not None
        now = time.time()
        body = Dropoff(
            return_id=return_id,
            merchant="acme",
            method=DropoffMethod.LOCKER,
            compartment="A1",
            size="M",
            items=1,
            voucher_kid="k1",
            scanned_at=now - 5,
            accepted_at=now,
        )
        message = self._next(body)
        ident = self.identity
        self._unacked[str(message.id)] = time.perf_counter()
        self._stats.dropoffs_sent += 1
        await self._client.publish(
            topics.event(ident.store, ident.device, "dropoff"), envelope.encode(message), qos=1
        )

    async def _inbox(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            if not isinstance(payload, bytes | bytearray):
                continue
            try:
                parsed = topics.parse(str(message.topic))
                received = envelope.decode(bytes(payload))
            except ProtocolError as exc:
                log.warning("%s: bad inbound message: %s", self.identity.key, exc)
                continue
            await self._handle(parsed.channel, received)

    async def _handle(self, channel: str, message: Envelope[Any]) -> None:
        body = message.body
        if isinstance(body, Ack):
            arrived = time.perf_counter()
            for event_id in body.ids:
                sent = self._unacked.pop(event_id, None)
                if sent is not None:
                    self._stats.dropoffs_acked += 1
                    self._stats.ack_ms.append((arrived - sent) * 1000)
        elif isinstance(body, StoreConfig) and channel == "config":
            self._stats.configs.add(self.identity.key)
        elif message.type in COMMAND_TYPES:
            await self._answer(message)

    async def _answer(self, command: Envelope[Any]) -> None:
        assert self._client is not None
        body = command.body
        command_id = str(getattr(body, "command_id", ""))
        self._stats.commands += 1
        ident = self.identity
        result = self._next(CommandResult(command_id=command_id, outcome=CommandOutcome.SUCCEEDED))
        await self._client.publish(
            topics.command_result(ident.store, ident.device), envelope.encode(result), qos=1
        )
        if isinstance(body, Sync) and body.inventory:
            inventory = Inventory(
                compartments=[CompartmentState(id=f"A{i}", size="M") for i in range(1, 9)],
                outbox=len(self._unacked),
            )
            await self._client.publish(
                topics.event(ident.store, ident.device, "inventory"),
                envelope.encode(self._next(inventory)),
                qos=1,
            )


class BareConnection:
    """A client that connects, subscribes to a kiosk's inbox and keeps alive: nothing else."""

    def __init__(
        self, identity: KioskIdentity, host: str, port: int, *, keepalive_s: int, stats: FleetStats
    ) -> None:
        self.identity = identity
        self._host, self._port = host, port
        self._keepalive_s = keepalive_s
        self._stats = stats

    async def run(self) -> None:
        """Hold the connection until cancelled; a drop counts as lost."""
        ident = self.identity
        client = aiomqtt.Client(
            self._host,
            self._port,
            identifier=f"bare-{ident.store}-{ident.device}",
            clean_session=True,
            keepalive=self._keepalive_s,
            timeout=math.inf,
        )
        try:
            await client.__aenter__()
            await client.subscribe(topics.ack(ident.store, ident.device), qos=1)
        except aiomqtt.MqttError as exc:
            self._stats.connect_failures += 1
            log.warning("%s could not connect: %s", ident.key, exc)
            return
        self._stats.connected += 1
        try:
            async for _ in client.messages:
                pass
        except aiomqtt.MqttError:
            self._stats.lost += 1
        finally:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)

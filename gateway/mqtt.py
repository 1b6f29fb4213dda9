"""The gateway's MQTT connection: consumes kiosk traffic in batches, acks each message to the
broker only after the batch is committed, publishes acks, commands and retained store configs,
and announces its own presence.

It drives paho-mqtt directly (its network thread, ``manual_ack=True``) rather than aiomqtt:
aiomqtt PUBACKs a message before our code sees it, and its per-message hops through asyncio
cap a subscriber near 20k messages/s on these machines (DESIGN §9). Here the network thread
only appends to a bounded buffer; the event loop drains it in batches. The buffer's bound is
ours to keep because Mosquitto stops enforcing its in-flight window (upstream #2301): when it
is full the network thread stops reading and TCP pushes back on the broker.
"""

import asyncio
import collections
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.config import BrokerSettings
from protocol import envelope, topics
from protocol.messages import GatewayStatus

log = logging.getLogger(__name__)

Batch = list[tuple[str, bytes]]
BatchHandler = Callable[[Batch], Awaitable[None]]
ConnectHandler = Callable[[], Coroutine[Any, Any, None]]
PoisonHandler = Callable[[str, bytes, Exception], Awaitable[None]]

BATCH_ATTEMPTS = 4
"""Tries of a failing batch before it is split to find the message at fault."""


class GatewayLinkDownError(ConnectionError):
    """Publishing while the broker is unreachable, or a publish the broker never confirmed."""


def _gateway_status(online: bool) -> bytes:
    env = envelope.make(
        GatewayStatus(online=online), store="gateway", device="gateway", seq=0, session=0
    )
    return envelope.encode(env)


@dataclass(frozen=True)
class _Inbound:
    topic: str
    payload: bytes
    mid: int
    qos: int


class _Inbox:
    """Messages from paho's thread to the event loop, bounded, one wake-up per idle period."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self._loop = loop
        self._limit = limit
        self._items: collections.deque[_Inbound] = collections.deque()
        self._room = threading.Condition()
        self._ready = asyncio.Event()
        self._closed = False

    def put(self, item: _Inbound) -> None:
        """Called on paho's thread; blocks it (and so the socket) while the buffer is full."""
        with self._room:
            while len(self._items) >= self._limit and not self._closed:
                self._room.wait(0.5)
            self._items.append(item)
            if len(self._items) == 1:
                self._loop.call_soon_threadsafe(self._ready.set)

    async def take(self, limit: int) -> list[_Inbound]:
        """Wait for at least one message; return up to ``limit`` of them."""
        while True:
            with self._room:
                if self._items:
                    n = min(limit, len(self._items))
                    taken = [self._items.popleft() for _ in range(n)]
                    self._room.notify_all()
                    return taken
                self._ready.clear()
            await self._ready.wait()

    def close(self) -> None:
        """Release a blocked producer; later messages go in regardless of the bound."""
        with self._room:
            self._closed = True
            self._room.notify_all()


class GatewayLink:
    """Stays connected, hands inbound messages to ``on_batch`` in batches of up to
    ``batch_max``, acks them to the broker after ``on_batch`` returns, and calls
    ``on_connect`` after every (re)connect.

    With ``settings.shared_group`` set, events and command results are consumed through a
    shared subscription, so that several gateway replicas split the stream; presence
    (retained status) is subscribed to by every replica, since shared subscriptions get no
    retained messages.
    """

    def __init__(
        self,
        settings: BrokerSettings,
        *,
        client_id: str,
        on_batch: BatchHandler,
        on_connect: ConnectHandler,
        on_poison: PoisonHandler,
        batch_max: int = 500,
    ) -> None:
        self._settings = settings
        self._client_id = client_id
        self._on_batch = on_batch
        self._on_poison = on_poison
        self._on_connect = on_connect
        self._batch_max = batch_max
        self._client: paho.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Touched on the event loop only: paho calls on_publish holding its own lock, so a
        # lock of ours taken both there and around client.publish() deadlocks under load.
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._generation = 0
        self._connect_work: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.consuming = asyncio.Event()
        """Set once the broker confirmed this session's subscriptions (events flow)."""

    # ---- set-up ---------------------------------------------------------------------------

    def _make_client(self) -> paho.Client:
        s = self._settings
        v5 = s.protocol == "5"
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            clean_session=None if v5 else s.clean_session,
            manual_ack=True,
        )
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        client.will_set(topics.GATEWAY_STATUS, _gateway_status(False), qos=1, retain=True)
        client.max_inflight_messages_set(s.max_inflight)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(min_delay=1, max_delay=max(1, int(s.reconnect_s * 10)))
        client.on_connect = self._paho_connected
        client.on_disconnect = self._paho_disconnected
        client.on_message = self._paho_message
        client.on_publish = self._paho_published
        client.on_subscribe = self._paho_subscribed
        return client

    def _subscriptions(self) -> list[tuple[str, int]]:
        group = self._settings.shared_group
        streams = [topics.ALL_EVENTS, topics.ALL_COMMAND_RESULTS]
        if group:
            streams = [topics.shared(group, t) for t in streams]
        return [(t, 1) for t in [*streams, topics.ALL_STATUS]]

    # ---- paho's thread ----------------------------------------------------------------------

    def _paho_connected(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            log.warning("broker refused the gateway: %s", reason)
            return
        client.subscribe(self._subscriptions())
        client.publish(topics.GATEWAY_STATUS, _gateway_status(True), qos=1, retain=True)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._up)

    def _paho_subscribed(self, client: paho.Client, userdata: Any, *_: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.consuming.set)

    def _paho_disconnected(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._down, str(reason))

    def _paho_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self._inbox.put(_Inbound(message.topic, bytes(message.payload), message.mid, message.qos))

    def _paho_published(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            self._loop.call_soon_threadsafe(self._published, mid)

    # ---- the event loop -------------------------------------------------------------------

    def _published(self, mid: int) -> None:
        future = self._pending.pop(mid, None)
        if future is not None:
            _resolve(future)

    def _up(self) -> None:
        if self._client is None:
            return  # stopping: a late CONNACK
        self._generation += 1
        self.connected.set()
        log.info("gateway connected to broker %s:%d", self._settings.host, self._settings.port)
        if self._connect_work is not None:
            self._connect_work.cancel()
        self._connect_work = asyncio.get_running_loop().create_task(self._on_connect())
        self._connect_work.add_done_callback(_log_failure)

    def _down(self, reason: str) -> None:
        if self.connected.is_set():
            log.warning("gateway broker link down (%s); reconnecting", reason)
        self.connected.clear()
        self.consuming.clear()
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(GatewayLinkDownError(f"disconnected: {reason}"))

    async def run(self) -> None:
        """Connect (and keep reconnecting) and consume until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._inbox = _Inbox(self._loop, limit=self._settings.inbox_limit)
        client = self._make_client()
        self._client = client
        client.connect_async(self._settings.host, self._settings.port, self._settings.keepalive_s)
        client.loop_start()
        try:
            await self._consume(client)
        finally:
            self._client = None
            if self._connect_work is not None:
                self._connect_work.cancel()
                await asyncio.wait([self._connect_work])
            self._inbox.close()
            self.connected.clear()
            await asyncio.to_thread(_shut_down, client)

    async def _consume(self, client: paho.Client) -> None:
        """Hand batches to ``on_batch``, up to ``batches_in_flight`` at once: while one batch
        is in the database, the next is being decoded."""
        slots = asyncio.Semaphore(self._settings.batches_in_flight)
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                items = await self._inbox.take(self._batch_max)
                await slots.acquire()
                task = asyncio.create_task(self._process(client, items, self._generation))
                running.add(task)
                task.add_done_callback(running.discard)
                task.add_done_callback(lambda _: slots.release())
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.wait(running)

    async def _process(self, client: paho.Client, items: list[_Inbound], generation: int) -> None:
        if not await self._handle(items):
            return  # not acked: the broker redelivers on reconnect and kiosks resend
        if generation != self._generation:
            return  # a new session: the broker redelivers what we did not ack
        for item in items:
            if item.qos > 0:
                client.ack(item.mid, item.qos)

    async def _handle(self, items: list[_Inbound]) -> bool:
        """``on_batch`` with retries: a conflict between replicas passes on a second try.
        A batch that keeps failing is halved until the message at fault is alone, and that
        one goes to ``on_poison``, so that one bad message never holds up the stream (an
        unacked message also holds one of the broker's in-flight slots until reconnect).
        Returns whether every message was handled (and may be acked)."""
        for attempt in range(BATCH_ATTEMPTS):
            try:
                await self._on_batch([(i.topic, i.payload) for i in items])
                return True
            except Exception as exc:
                log.warning("a batch of %d failed (attempt %d): %r", len(items), attempt + 1, exc)
                error = exc
                await asyncio.sleep(min(1.0, 0.05 * 2**attempt))
        if len(items) > 1:
            half = len(items) // 2
            first, second = await self._handle(items[:half]), await self._handle(items[half:])
            return first and second
        try:
            await self._on_poison(items[0].topic, items[0].payload, error)
        except Exception:
            log.exception("could not set aside a failing message on %s", items[0].topic)
            return False
        return True

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK, or raise
        :class:`GatewayLinkDownError`."""
        future = self._queue(topic, payload, retain=retain)
        try:
            async with asyncio.timeout(self._settings.publish_timeout_s):
                await future
        except TimeoutError:
            raise GatewayLinkDownError(f"no PUBACK for {topic} in time") from None

    def publish_nowait(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Queue a QoS 1 publish without waiting for its PUBACK."""
        self._queue(topic, payload, retain=retain).add_done_callback(_ignore_outcome)

    def _queue(self, topic: str, payload: bytes, *, retain: bool) -> asyncio.Future[None]:
        client = self._client
        if client is None or not self.connected.is_set():
            raise GatewayLinkDownError("not connected")
        assert self._loop is not None
        future: asyncio.Future[None] = self._loop.create_future()
        info = client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise GatewayLinkDownError(paho.error_string(info.rc))
        # Its PUBACK is handled by _published, which runs on this loop after we return.
        self._pending[info.mid] = future
        return future


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _ignore_outcome(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved, so asyncio does not warn about it


def _log_failure(task: "asyncio.Task[None]") -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("gateway on-connect work failed", exc_info=task.exception())


def _shut_down(client: paho.Client) -> None:
    client.disconnect()
    client.loop_stop()

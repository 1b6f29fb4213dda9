"""The gateway's MQTT connection: consumes kiosk traffic in batches, acks each message to the
broker only after the batch is committed, publishes acks, commands and retained store configs,
and announces its own presence.

It drives paho-mqtt directly (``manual_ack=True``) rather than aiomqtt: aiomqtt PUBACKs a
message before our code sees it, and its per-message hops through asyncio cap a subscriber
near 20k messages/s on these machines (DESIGN §9). paho runs on the event loop (its
external-loop mode: the loop's reader and writer callbacks call ``loop_read`` and
``loop_write``), not on its own network thread: threaded, paho wakes its ``select`` through
a socket pair for every PUBACK it queues and reads one packet per wake-up, and its thread
fights the event loop for the GIL; that cost ~140 µs per message here, the loop-driven
client ~35 µs (ADR 0018). Its client reads the socket in large chunks, takes QoS 1 messages
apart itself and sends a batch's PUBACKs in one write (ADR 0020), which halves that again.
Messages go to a bounded buffer that the event loop drains in batches. The bound is ours to
keep because Mosquitto stops enforcing its in-flight window (upstream #2301): when the buffer
is full we stop reading, and TCP pushes back on the broker.
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
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
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
READS_PER_WAKEUP = 64
"""``loop_read`` calls per reader callback at most (each reads up to paho's in-flight count
of packets), so that a flood cannot starve the loop."""
READ_CHUNK = 256 * 1024
"""Bytes asked of the socket per ``recv``."""
KEEPALIVE_CHECK_S = 1.0


class GatewayLinkDownError(ConnectionError):
    """Publishing while the broker is unreachable, or a publish the broker never confirmed."""


def _gateway_status(online: bool) -> bytes:
    env = envelope.make(
        GatewayStatus(online=online), store="gateway", device="gateway", seq=0, session=0
    )
    return envelope.encode(env)


class _BulkClient(paho.Client):
    """paho's client reading its socket in large chunks, taking QoS 1 messages apart itself
    and sending runs of PUBACKs at once (ADR 0020).

    paho asks the socket for each packet's first byte, then for its length byte by byte,
    then for its body, and once more until the socket would block: four ``recv`` calls and
    an exception per message, a third of the link's time at 10,000 messages/s. Here one
    ``recv`` of up to :data:`READ_CHUNK` bytes serves all of those reads until it is used
    up. On the way out paho sends each queued packet with its own ``send``; a batch's
    PUBACKs (four bytes each) are joined into one packet first.

    This overrides paho's ``_sock_recv``, ``_handle_publish`` and ``_packet_write`` and
    reads its packet structures (paho 2.x; the dependency is pinned below 3). paho's own
    ``_sock_recv`` still reads the socket, so its error handling (TLS included) stays.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_inbound: Callable[[str, bytes, int], None] | None = None
        """Called with the topic, payload and packet id of each QoS 1 message."""
        self._chunk = b""
        self._chunk_pos = 0
        self._chunk_sock: Any = None

    @property
    def buffered(self) -> bool:
        """Bytes read from the socket that paho has not taken yet."""
        return self._chunk_sock is self._sock and self._chunk_pos < len(self._chunk)

    def _sock_recv(self, bufsize: int) -> bytes:
        if not self.buffered:
            self._chunk = super()._sock_recv(READ_CHUNK)  # raises when it would block
            self._chunk_pos = 0
            self._chunk_sock = self._sock  # a new connection never reads an old one's bytes
            if not self._chunk:
                return b""  # closed by the broker
        start = self._chunk_pos
        self._chunk_pos = min(start + bufsize, len(self._chunk))
        return self._chunk[start : self._chunk_pos]

    def _handle_publish(self) -> MQTTErrorCode:
        """A QoS 1 PUBLISH (every kiosk event and command result), MQTT v5 ones without
        properties, is taken apart here and handed to ``on_inbound``; anything else goes
        through paho to ``on_message``. paho builds a message object, matches its topic
        against per-topic callbacks and, over v5, builds and parses a ``Properties`` object
        for every message: a quarter of the link's time over 3.1.1, a third more over v5
        (which shared subscriptions, hence replicas, need)."""
        header, packet = self._in_packet["command"], self._in_packet["packet"]
        if self.on_inbound is None or not self._manual_ack or (header & 0x06) >> 1 != 1:
            return super()._handle_publish()
        topic_end = 2 + int.from_bytes(packet[:2], "big")
        payload_at = topic_end + 2  # after the packet id
        if len(packet) < payload_at:
            return super()._handle_publish()  # malformed: paho says so
        if self._protocol == paho.MQTTv5:
            if len(packet) <= payload_at or packet[payload_at] != 0:
                return super()._handle_publish()  # properties, or a malformed packet
            payload_at += 1
        try:
            topic = packet[2:topic_end].decode()
        except UnicodeDecodeError:
            return super()._handle_publish()  # paho logs it
        mid = int.from_bytes(packet[topic_end : topic_end + 2], "big")
        self.on_inbound(topic, bytes(packet[payload_at:]), mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS  # acked by the link (manual_ack) after commit

    def _packet_write(self) -> MQTTErrorCode:
        self._join_pubacks()
        return super()._packet_write()

    def _join_pubacks(self) -> None:
        """Replace each run of unsent PUBACKs in paho's queue by one packet of their bytes
        (paho does nothing after sending a PUBACK, so nothing else needs them apart)."""
        queue = self._out_packet
        if sum(1 for p in queue if _is_fresh_puback(p)) < 2:
            return
        joined: collections.deque[Any] = collections.deque()
        run: list[Any] = []
        for packet in queue:
            if _is_fresh_puback(packet):
                run.append(packet)
                continue
            joined.extend(_one_packet(run))
            run = []
            joined.append(packet)
        joined.extend(_one_packet(run))
        queue.clear()
        queue.extend(joined)


def _is_fresh_puback(packet: Any) -> bool:
    return bool((packet["command"] & 0xF0) == paho.PUBACK and packet["pos"] == 0)


def _one_packet(run: list[Any]) -> list[Any]:
    if len(run) < 2:
        return run
    data = b"".join(bytes(p["packet"]) for p in run)
    return [{**run[0], "mid": 0, "to_process": len(data), "packet": data}]


@dataclass(frozen=True, slots=True)
class _Inbound:
    topic: str
    payload: bytes
    mid: int
    qos: int


class GatewayLink:
    """Stays connected, hands inbound messages to ``on_batch`` in batches of up to
    ``batch_max``, acks them to the broker after ``on_batch`` returns, and calls
    ``on_connect`` after every (re)connect.

    With ``settings.shared_group`` set, events and command results are consumed through a
    shared subscription, so that several gateway replicas split the stream; presence
    (retained status) is subscribed to by every replica, since shared subscriptions get no
    retained messages.

    Everything but the blocking TCP connect runs on the event loop, so nothing here needs
    a lock.
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
        self._client: _BulkClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._socket: Any = None
        self._reading = False
        self._connecting = False  # paho's connect runs on another thread: leave it alone
        self._inbox: collections.deque[_Inbound] = collections.deque()
        self._inbox_ready = asyncio.Event()
        self._lost = asyncio.Event()
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._generation = 0
        self._connect_work: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.consuming = asyncio.Event()
        """Set once the broker confirmed this session's subscriptions (events flow)."""
        self.idle = asyncio.Event()
        """Set while no message waits in the buffer or in a batch being handled."""
        self.idle.set()

    # ---- set-up ---------------------------------------------------------------------------

    def _make_client(self) -> _BulkClient:
        s = self._settings
        v5 = s.protocol == "5"
        client = _BulkClient(
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
        client.on_connect = self._paho_connected
        client.on_disconnect = self._paho_disconnected
        client.on_message = self._paho_message
        client.on_inbound = self._inbound
        client.on_publish = self._paho_published
        client.on_subscribe = self._paho_subscribed
        client.on_socket_open = self._socket_opened
        client.on_socket_close = self._socket_closed
        client.on_socket_register_write = self._socket_wants_write
        client.on_socket_unregister_write = self._socket_wrote_all
        return client

    def _subscriptions(self) -> list[tuple[str, int]]:
        group = self._settings.shared_group
        streams = [topics.ALL_EVENTS, topics.ALL_COMMAND_RESULTS]
        if group:
            streams = [topics.shared(group, t) for t in streams]
        return [(t, 1) for t in [*streams, topics.ALL_STATUS]]

    # ---- the socket on the event loop ----------------------------------------------------

    def _on_loop(self, callback: Callable[..., None], *args: Any) -> None:
        """Run ``callback`` on the event loop: at once when called there, else soon (paho
        calls the socket callbacks from the connecting thread too)."""
        assert self._loop is not None
        if threading.get_ident() == self._loop_thread:
            callback(*args)
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed: nothing to watch
                self._loop.call_soon_threadsafe(callback, *args)

    def _socket_opened(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._watch, sock)

    def _socket_closed(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._unwatch, sock)

    def _socket_wants_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._add_writer, sock)

    def _socket_wrote_all(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._remove_writer, sock)

    def _watch(self, sock: Any) -> None:
        self._socket = sock
        self._reading = False
        self._resume_reading()

    def _unwatch(self, sock: Any) -> None:
        assert self._loop is not None
        if self._socket is sock:
            self._socket = None
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)

    def _add_writer(self, sock: Any) -> None:
        assert self._loop is not None
        if sock is self._socket and self._client is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.add_writer(sock, self._client.loop_write)

    def _remove_writer(self, sock: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_writer(sock)

    def _resume_reading(self) -> None:
        """Read again once the buffer has room (and the socket is up)."""
        assert self._loop is not None
        if self._reading or self._socket is None:
            return
        if len(self._inbox) >= self._settings.inbox_limit:
            return
        with contextlib.suppress(ValueError, OSError):
            self._loop.add_reader(self._socket, self._readable)
            self._reading = True
        if self._client is not None and self._client.buffered:
            self._loop.call_soon(self._readable)  # the socket may have nothing more to say

    def _pause_reading(self) -> None:
        assert self._loop is not None
        if self._reading and self._socket is not None:
            self._loop.remove_reader(self._socket)
        self._reading = False

    def _readable(self) -> None:
        """Read what the socket holds, a bounded number of packets per wake-up, and stop
        reading while the buffer is full. What paho has read from the socket but not
        handled yet gets another turn soon: the socket will not say it is readable."""
        client = self._client
        if client is None or not self._reading:
            return
        for _ in range(READS_PER_WAKEUP):
            if client.loop_read() != paho.MQTT_ERR_SUCCESS or not client.buffered:
                break
        if len(self._inbox) >= self._settings.inbox_limit:
            self._pause_reading()
        elif client.buffered:
            assert self._loop is not None
            self._loop.call_soon(self._readable)

    # ---- paho's callbacks (on the event loop) ---------------------------------------------

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
        self._on_loop(self._up)

    def _paho_subscribed(self, client: paho.Client, userdata: Any, *_: Any) -> None:
        self._on_loop(self.consuming.set)

    def _paho_disconnected(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._on_loop(self._down, str(reason))

    def _paho_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self._inbound(message.topic, bytes(message.payload), message.mid, message.qos)

    def _inbound(self, topic: str, payload: bytes, mid: int, qos: int = 1) -> None:
        self._inbox.append(_Inbound(topic, payload, mid, qos))
        self._inbox_ready.set()

    def _paho_published(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        future = self._pending.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(None)

    # ---- the session ------------------------------------------------------------------------

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
        self._lost.set()
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(GatewayLinkDownError(f"disconnected: {reason}"))

    async def run(self) -> None:
        """Connect (and keep reconnecting) and consume until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        client = self._make_client()
        self._client = client
        workers = [
            asyncio.create_task(self._consume(client), name="gateway-mqtt-consume"),
            asyncio.create_task(self._keep_alive(client), name="gateway-mqtt-keepalive"),
        ]
        try:
            await self._stay_connected(client)
        finally:
            self._client = None
            for task in [*workers, self._connect_work]:
                if task is not None:
                    task.cancel()
            await asyncio.wait([t for t in [*workers, self._connect_work] if t is not None])
            self.connected.clear()
            self.consuming.clear()
            self._shut_down(client)

    async def _stay_connected(self, client: paho.Client) -> None:
        """Connect, wait until the link is lost, wait ``reconnect_s``, and again."""
        s = self._settings
        assert self._loop is not None
        while True:
            self._lost.clear()
            self._connecting = True
            try:
                await self._loop.run_in_executor(None, client.connect, s.host, s.port,
                                                 s.keepalive_s)  # fmt: skip
            except OSError as exc:
                log.info("broker %s:%d unreachable: %s", s.host, s.port, exc)
            else:
                self._connecting = False
                await self._lost.wait()
            finally:
                self._connecting = False
            await asyncio.sleep(s.reconnect_s)  # back off before the next attempt

    async def _keep_alive(self, client: paho.Client) -> None:
        """paho's housekeeping: PINGREQ when idle, and a lost link found by its silence."""
        while True:
            await asyncio.sleep(KEEPALIVE_CHECK_S)
            if self._socket is not None and not self._connecting:
                client.loop_misc()

    def _shut_down(self, client: paho.Client) -> None:
        """Say DISCONNECT (so the broker does not publish our will) and close."""
        if self._socket is not None:
            client.disconnect()
            client.loop_write()  # a few bytes into an idle socket: sent at once
        if self._socket is not None:
            self._unwatch(self._socket)

    async def _consume(self, client: paho.Client) -> None:
        """Hand batches to ``on_batch``, up to ``batches_in_flight`` at once: while one batch
        is in the database, the next is being decoded."""
        slots = asyncio.Semaphore(self._settings.batches_in_flight)
        running: set[asyncio.Task[None]] = set()

        def finished(task: asyncio.Task[None]) -> None:
            running.discard(task)
            slots.release()
            if not running and not self._inbox:
                self.idle.set()

        try:
            while True:
                while not self._inbox:
                    self._inbox_ready.clear()
                    await self._inbox_ready.wait()
                await slots.acquire()
                n = min(self._batch_max, len(self._inbox))
                items = [self._inbox.popleft() for _ in range(n)]
                self._resume_reading()
                task = asyncio.create_task(self._process(client, items, self._generation))
                running.add(task)
                task.add_done_callback(finished)
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.wait(running)

    async def _process(self, client: paho.Client, items: list[_Inbound], generation: int) -> None:
        if not await self._handle(items):
            return  # not acked: the broker redelivers on reconnect and kiosks resend
        if generation != self._generation or not self.connected.is_set():
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
        # Its PUBACK is read on this loop, so always after we return.
        self._pending[info.mid] = future
        return future


def _ignore_outcome(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved, so asyncio does not warn about it


def _log_failure(task: "asyncio.Task[None]") -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("gateway on-connect work failed", exc_info=task.exception())

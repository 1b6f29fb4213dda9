"""The kiosk's MQTT connection: reconnects forever, announces presence, routes inbound."""

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable

import aiomqtt

from edge.config import BrokerSettings
from protocol import envelope, topics
from protocol.messages import Status

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes], Awaitable[None]]


class LinkDownError(ConnectionError):
    """Publishing while the broker is unreachable."""


class KioskLink:
    """Keeps one MQTT session to the broker and hands inbound messages to ``on_message``.

    Presence follows DESIGN §4: a retained ``online`` status with the session counter on
    connect, and a retained ``offline`` will that the broker publishes if the kiosk vanishes.
    """

    def __init__(
        self,
        settings: BrokerSettings,
        *,
        store: str,
        device: str,
        session: int,
        version: str,
        on_message: Handler,
        capabilities: list[str] | None = None,
    ) -> None:
        self._settings = settings
        self._store, self._device = store, device
        self._session, self._version = session, version
        self._on_message = on_message
        self._capabilities = list(capabilities or [])
        self._client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()
        self.disconnected = asyncio.Event()
        self.disconnected.set()
        self.connected_at = 0.0
        self.connections = 0

    def _status(self, online: bool) -> bytes:
        body = Status(
            online=online,
            session=self._session,
            version=self._version,
            capabilities=self._capabilities if online else [],
        )
        env = envelope.make(
            body, store=self._store, device=self._device, seq=0, session=self._session
        )
        return envelope.encode(env)

    def _client_for(self) -> aiomqtt.Client:
        s = self._settings
        return aiomqtt.Client(
            s.host,
            s.port,
            username=s.username,
            password=s.password,
            identifier=f"kiosk-{self._store}-{self._device}",
            clean_session=False,
            keepalive=s.keepalive_s,
            # No timeouts inside aiomqtt: on Python 3.11 its asyncio.wait_for can swallow a
            # cancellation and hang the agent's shutdown. Our own asyncio.timeout bounds waits.
            timeout=math.inf,
            will=aiomqtt.Will(
                topics.status(self._store, self._device), self._status(False), qos=1, retain=True
            ),
        )

    async def run(self) -> None:
        """Stay connected until cancelled."""
        while True:
            try:
                async with self._client_for() as client:
                    await self._serve(client)
            except (aiomqtt.MqttError, LinkDownError) as exc:
                log.warning(
                    "broker link down (%s); retrying in %.1fs", exc, self._settings.reconnect_s
                )
            finally:
                self._client = None
                self.connected.clear()
                self.disconnected.set()
            await asyncio.sleep(self._settings.reconnect_s)  # reconnect back-off

    async def _serve(self, client: aiomqtt.Client) -> None:
        for topic in topics.device_inbox(self._store, self._device):
            await client.subscribe(topic, qos=1)
        status_topic = topics.status(self._store, self._device)
        await client.publish(status_topic, self._status(True), qos=1, retain=True)
        self._client = client
        self.connected_at = time.time()
        self.connections += 1
        self.disconnected.clear()
        self.connected.set()
        log.info("connected to broker %s:%d", self._settings.host, self._settings.port)
        async for message in client.messages:
            payload = message.payload
            if not isinstance(payload, bytes | bytearray):
                continue
            try:
                await self._on_message(str(message.topic), bytes(payload))
            except LinkDownError:
                raise
            except Exception:
                # One bad message must not take the kiosk's link down (DESIGN §5 rule 9).
                log.exception("inbound message on %s failed", message.topic)

    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK, or raise :class:`LinkDownError`."""
        client = self._client
        if client is None:
            raise LinkDownError("not connected")
        try:
            async with asyncio.timeout(self._settings.keepalive_s):
                await client.publish(topic, payload, qos=1)
        except aiomqtt.MqttError as exc:
            raise LinkDownError(str(exc)) from exc
        except TimeoutError:
            raise LinkDownError(f"no PUBACK for {topic} in time") from None

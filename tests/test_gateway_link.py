"""The gateway's MQTT link under a stream of publishes through a real Mosquitto."""

import asyncio
import contextlib
from typing import Literal

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from dropline.broker import MosquittoBroker
from gateway.config import BrokerSettings
from gateway.mqtt import GatewayLink

N = 20_000


async def _nothing() -> None:
    return None


async def _ignore(_batch: list[tuple[str, bytes]]) -> None:
    return None


async def _no_poison(topic: str, payload: bytes, error: Exception) -> None:
    raise AssertionError(f"nothing should fail here: {topic} {error!r}")


async def test_publishes_while_pubacks_arrive_all_complete(broker: MosquittoBroker) -> None:
    """PUBACKs arrive on paho's thread while the loop publishes: every publish completes
    (paho calls on_publish under its own lock; a lock of ours taken there and around
    ``client.publish`` once deadlocked here), and a subscriber gets every message."""
    link = GatewayLink(
        BrokerSettings(host=broker.host, port=broker.port),
        client_id="gateway-test",
        on_batch=_ignore,
        on_connect=_nothing,
        on_poison=_no_poison,
    )
    running = asyncio.create_task(link.run())
    received = 0
    async with aiomqtt.Client(broker.host, broker.port, identifier="watcher") as watcher:
        await watcher.subscribe("dropline/v1/store-1/+/ack", qos=1)
        await link.connected.wait()
        try:
            waits = []
            for i in range(N):
                if i % 50 == 0:
                    waits.append(
                        asyncio.ensure_future(link.publish(f"dropline/v1/store-1/k{i}/ack", b"x"))
                    )
                    await asyncio.sleep(0)  # let PUBACKs in between
                else:
                    link.publish_nowait(f"dropline/v1/store-1/k{i}/ack", b"x")
            await asyncio.gather(*waits)
            async for _ in watcher.messages:
                received += 1
                if received == N:
                    break
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
    assert received == N


async def test_a_message_that_keeps_failing_is_set_aside_and_the_rest_go_on(
    broker: MosquittoBroker,
) -> None:
    """A batch holding one message its handler cannot take fails, is retried, then halved
    until that message is alone; it goes to ``on_poison`` and every other one is handled."""
    handled: list[bytes] = []
    poisoned: list[tuple[str, bytes, str]] = []
    all_done = asyncio.Event()
    payloads = [f"event-{i}".encode() for i in range(12)]

    async def on_batch(batch: list[tuple[str, bytes]]) -> None:
        if any(payload == b"event-7" for _, payload in batch):
            raise ValueError("cannot take event-7")
        handled.extend(payload for _, payload in batch)
        if len(handled) + len(poisoned) == len(payloads):
            all_done.set()

    async def on_poison(topic: str, payload: bytes, error: Exception) -> None:
        poisoned.append((topic, payload, str(error)))
        if len(handled) + len(poisoned) == len(payloads):
            all_done.set()

    link = GatewayLink(
        BrokerSettings(host=broker.host, port=broker.port),
        client_id="gateway-poison",
        on_batch=on_batch,
        on_connect=_nothing,
        on_poison=on_poison,
        batch_max=len(payloads),
    )
    running = asyncio.create_task(link.run())
    try:
        await link.consuming.wait()
        async with aiomqtt.Client(broker.host, broker.port, identifier="kiosk") as kiosk:
            for payload in payloads:
                await kiosk.publish("dropline/v1/store-1/k1/evt/dropoff", payload, qos=1)
        async with asyncio.timeout(30):
            await all_done.wait()
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    assert sorted(handled) == sorted(p for p in payloads if p != b"event-7")
    assert poisoned == [("dropline/v1/store-1/k1/evt/dropoff", b"event-7", "cannot take event-7")]


async def test_a_flood_read_in_large_chunks_arrives_whole_through_a_small_buffer(
    broker: MosquittoBroker,
) -> None:
    """Messages queued while the gateway was away arrive as one flood, and the link reads
    its socket in large chunks: what a chunk holds beyond a full buffer is handled once
    there is room, although the socket has nothing new to report by then."""
    settings = BrokerSettings(host=broker.host, port=broker.port, inbox_limit=5)
    sent = [f"event-{i}".encode() for i in range(3000)]
    handled: list[bytes] = []
    everything = asyncio.Event()

    async def on_batch(batch: list[tuple[str, bytes]]) -> None:
        await asyncio.sleep(0)  # a handler that yields, so the buffer fills meanwhile
        handled.extend(payload for _, payload in batch)
        if len(handled) >= len(sent):
            everything.set()

    def link() -> GatewayLink:
        return GatewayLink(settings, client_id="gateway-flood", on_batch=on_batch,
                           on_connect=_nothing, on_poison=_no_poison, batch_max=3)  # fmt: skip

    first = asyncio.create_task((subscriber := link()).run())
    await subscriber.consuming.wait()  # the persistent session now holds the subscription
    first.cancel()
    await asyncio.wait([first])
    async with aiomqtt.Client(broker.host, broker.port, identifier="kiosk") as kiosk:
        for payload in sent:
            await kiosk.publish("dropline/v1/store-1/k1/evt/dropoff", payload, qos=1)
    second = asyncio.create_task(link().run())
    try:
        async with asyncio.timeout(30):
            await everything.wait()
    finally:
        second.cancel()
        await asyncio.wait([second])
    assert handled == sent


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_messages_taken_apart_by_the_link_or_by_paho_arrive_whole(
    broker: MosquittoBroker, protocol: Literal["3.1.1", "5"]
) -> None:
    """The link takes QoS 1 messages (over v5, those without properties) apart itself and
    leaves the rest to paho: every kind arrives with its topic and payload, in order."""
    settings = BrokerSettings(host=broker.host, port=broker.port, protocol=protocol)
    received: list[tuple[str, bytes]] = []
    everything = asyncio.Event()
    sent: list[tuple[str, bytes]] = []

    async def on_batch(batch: list[tuple[str, bytes]]) -> None:
        received.extend(batch)
        if len(received) >= len(sent):
            everything.set()

    link = GatewayLink(settings, client_id="gateway-parse", on_batch=on_batch,
                       on_connect=_nothing, on_poison=_no_poison)  # fmt: skip
    running = asyncio.create_task(link.run())
    v5 = protocol == "5"
    with_property = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    with_property.UserProperty = [("origin", "test")]
    kinds = [(1, None), (0, None), *([(1, with_property)] if v5 else [])]
    version = aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311
    try:
        await link.consuming.wait()
        async with aiomqtt.Client(broker.host, broker.port, identifier="kiosk-parse",
                                  protocol=version) as kiosk:  # fmt: skip
            for i in range(30):
                topic = f"dropline/v1/store-1/k{i % 3}/evt/dropoff"
                payload = f"event-{i}-{'é' * i}".encode()
                sent.append((topic, payload))
                qos, properties = kinds[i % len(kinds)]
                await kiosk.publish(topic, payload, qos=qos, properties=properties)
        async with asyncio.timeout(30):
            await everything.wait()
    finally:
        running.cancel()
        await asyncio.wait([running])
    assert received == sent

"""The gateway's MQTT link under a stream of publishes through a real Mosquitto."""

import asyncio
import contextlib

import aiomqtt

from dropline.broker import MosquittoBroker
from gateway.config import BrokerSettings
from gateway.mqtt import GatewayLink

N = 20_000


async def _nothing() -> None:
    return None


async def _ignore(_batch: list[tuple[str, bytes]]) -> None:
    return None


async def test_publishes_while_pubacks_arrive_all_complete(broker: MosquittoBroker) -> None:
    """PUBACKs arrive on paho's thread while the loop publishes: every publish completes
    (paho calls on_publish under its own lock; a lock of ours taken there and around
    ``client.publish`` once deadlocked here), and a subscriber gets every message."""
    link = GatewayLink(
        BrokerSettings(host=broker.host, port=broker.port),
        client_id="gateway-test",
        on_batch=_ignore,
        on_connect=_nothing,
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

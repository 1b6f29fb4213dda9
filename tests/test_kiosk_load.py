"""The benchmarks' load kiosks (libmosquitto through ctypes) against a real Mosquitto and the
gateway's own MQTT link: every prepared event arrives once, in each kiosk's order."""

import asyncio
import threading
from collections import defaultdict

from dropline.broker import MosquittoBroker
from gateway.config import BrokerSettings
from gateway.mqtt import GatewayLink
from protocol import envelope, topics
from protocol.ids import uuid7
from simulator import mosquitto_client
from simulator.kiosk_load import KioskPlan, run_kiosks

EVENTS = 150


async def nothing(*_: object) -> None:
    return None


async def test_load_kiosks_deliver_every_event_once_in_order(broker: MosquittoBroker) -> None:
    assert mosquitto_client.available()
    plans = [
        KioskPlan(store="s1", device=f"k{n}", merchant="acme",
                  return_ids=[str(uuid7()) for _ in range(EVENTS)])
        for n in range(3)
    ]  # fmt: skip
    received: dict[str, list[int]] = defaultdict(list)
    everything = asyncio.Event()
    arrived = threading.Event()

    async def on_batch(batch: list[tuple[str, bytes]]) -> None:
        for topic, payload in batch:
            where = topics.parse(topic)
            received[where.device].append(envelope.decode(payload, where.message_type).seq)
        if sum(map(len, received.values())) >= EVENTS * len(plans):
            everything.set()
            arrived.set()

    link = GatewayLink(BrokerSettings(port=broker.port), client_id="load-test",
                       on_batch=on_batch, on_connect=nothing, on_poison=nothing)  # fmt: skip
    running = asyncio.create_task(link.run())
    try:
        await asyncio.wait_for(link.consuming.wait(), 30)
        results = await asyncio.to_thread(
            run_kiosks, "127.0.0.1", broker.port, plans, window=20, gateway=False,
            hold=lambda: arrived.wait(30),
        )  # fmt: skip
        await asyncio.wait_for(everything.wait(), 30)
    finally:
        running.cancel()
        await asyncio.wait([running])
    assert [r.published for r in results] == [EVENTS] * len(plans)
    assert dict(received) == {p.device: list(range(1, EVENTS + 1)) for p in plans}

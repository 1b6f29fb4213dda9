"""The benchmarks' load kiosks (the C program of simulator/load_kiosks.c) against a real
Mosquitto and the gateway's own MQTT link: every prepared event arrives once, in each
kiosk's order; with application acks, every event is acked and timed once."""

import asyncio
import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from dropline.broker import MosquittoBroker
from gateway.config import BrokerSettings
from gateway.mqtt import GatewayLink
from protocol import envelope, topics
from protocol.ids import uuid7
from protocol.messages import Ack
from simulator.kiosk_load import KioskPlan, run_kiosks

EVENTS = 150

BatchHandler = Callable[[list[tuple[str, bytes]]], Awaitable[None]]


async def nothing(*_: object) -> None:
    return None


def kiosk_plans(kiosks: int) -> list[KioskPlan]:
    return [
        KioskPlan(store="s1", device=f"k{n}", merchant="acme",
                  return_ids=[str(uuid7()) for _ in range(EVENTS)])
        for n in range(kiosks)
    ]  # fmt: skip


@asynccontextmanager
async def gateway_link(port: int, on_batch: BatchHandler) -> AsyncIterator[GatewayLink]:
    """The gateway's own MQTT link, consuming every kiosk's events."""
    link = GatewayLink(BrokerSettings(port=port), client_id="load-test",
                       on_batch=on_batch, on_connect=nothing, on_poison=nothing)  # fmt: skip
    running = asyncio.create_task(link.run())
    try:
        await asyncio.wait_for(link.consuming.wait(), 30)
        yield link
    finally:
        running.cancel()
        await asyncio.wait([running])


async def test_load_kiosks_deliver_every_event_once_in_order(broker: MosquittoBroker) -> None:
    plans = kiosk_plans(3)
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

    async with gateway_link(broker.port, on_batch):
        results = await asyncio.to_thread(
            run_kiosks, "127.0.0.1", broker.port, plans, window=20, gateway=False,
            hold=lambda: arrived.wait(30),
        )  # fmt: skip
        await asyncio.wait_for(everything.wait(), 30)
    assert [r.published for r in results] == [EVENTS] * len(plans)
    assert [r.acked for r in results] == [EVENTS] * len(plans)  # the broker's PUBACKs
    assert dict(received) == {p.device: list(range(1, EVENTS + 1)) for p in plans}


async def test_load_kiosks_count_each_acked_event_once(broker: MosquittoBroker) -> None:
    plans = kiosk_plans(3)
    acked_before: dict[tuple[str, str], list[str]] = {}
    ack_seq = 0

    async def on_batch(batch: list[tuple[str, bytes]]) -> None:
        # Acked as the gateway acks (an Ack per kiosk), every id at least twice: all but
        # the oldest of the batch, then the previous batch and this one backwards (as
        # for resent events, or acks from two replicas arriving out of order).
        ids: dict[tuple[str, str], list[str]] = defaultdict(list)
        for topic, payload in batch:
            where = topics.parse(topic)
            ids[where.store, where.device].append(
                str(envelope.decode(payload, where.message_type).id)
            )
        for (store, device), batch_ids in ids.items():
            again = acked_before.get((store, device), []) + batch_ids[::-1]
            for acked in (batch_ids[1:], again):
                if acked:
                    publish_ack(store, device, acked)
            acked_before[store, device] = batch_ids

    def publish_ack(store: str, device: str, ids: list[str]) -> None:
        nonlocal ack_seq
        ack_seq += 1
        env = envelope.make(Ack(ids=ids), store=store, device=device, seq=ack_seq, session=0)
        link.publish_nowait(topics.ack(store, device), envelope.encode(env))

    async with gateway_link(broker.port, on_batch) as link:
        results = await asyncio.to_thread(run_kiosks, "127.0.0.1", broker.port, plans, window=20)
    for result in results:
        assert result.published == result.acked == EVENTS
        assert len(result.latencies_s) == EVENTS
        assert all(0 < latency < 30 for latency in result.latencies_s)
        assert result.first_publish < result.last_ack

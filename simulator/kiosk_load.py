"""Many kiosks' drop-off traffic without the kiosks: each simulated kiosk is its own MQTT
connection (paho-mqtt, QoS 1) that publishes prepared drop-off events in ``seq`` order, keeps
at most ``window`` of them unacknowledged by the gateway (as a kiosk's outbox does) and
records, for each, the time from publish to the gateway's ack.

The benchmarks run several of these in worker processes; everything here is synchronous
(paho's network thread plus one publishing thread per kiosk), so a worker needs no event
loop.
"""

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from protocol import envelope, topics
from protocol.messages import Dropoff, DropoffMethod

CONNECT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class KioskPlan:
    """One kiosk's traffic: who it is and the returns it accepts, in order."""

    store: str
    device: str
    merchant: str
    return_ids: Sequence[str]
    session: int = 1


@dataclass
class KioskResult:
    """What one kiosk saw."""

    published: int = 0
    acked: int = 0
    latencies_s: list[float] = field(default_factory=list)
    first_publish: float = 0.0
    last_ack: float = 0.0


def prepare(plan: KioskPlan) -> list[tuple[str, str, bytes]]:
    """The kiosk's events, encoded ahead of time: ``(event id, topic, payload)``."""
    topic = topics.event(plan.store, plan.device, "dropoff")
    now = time.time()
    prepared = []
    for seq, return_id in enumerate(plan.return_ids, start=1):
        body = Dropoff(
            return_id=return_id,
            merchant=plan.merchant,
            method=DropoffMethod.LOCKER,
            compartment="A1",
            size="M",
            items=1,
            voucher_kid="k0000",
            scanned_at=now,
            accepted_at=now,
        )
        env = envelope.make(body, store=plan.store, device=plan.device, seq=seq, session=1)
        prepared.append((str(env.id), topic, envelope.encode(env)))
    return prepared


class LoadKiosk:
    """One kiosk connection publishing its prepared drop-offs."""

    def __init__(
        self, host: str, port: int, plan: KioskPlan, window: int, *, gateway: bool = True
    ) -> None:
        """With ``gateway`` false, the broker's PUBACK stands in for the gateway's ack: the
        raw broker rate, for comparison."""
        self.plan = plan
        self.result = KioskResult()
        self._gateway = gateway
        self._window = window
        self._sent_at: dict[str, float] = {}
        self._in_flight = 0
        self._done = threading.Condition()
        self._subscribed = threading.Event()
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"load-{plan.store}-{plan.device}",
            protocol=paho.MQTTv311,
            clean_session=True,
        )
        self._client.max_inflight_messages_set(max(20, window))
        self._client.max_queued_messages_set(0)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.connect(host, port, keepalive=60)
        self._client.loop_start()
        if gateway:
            self._client.on_message = self._on_ack
            self._client.subscribe(topics.ack(plan.store, plan.device), qos=1)
        else:
            self._client.on_publish = self._on_puback
            self._subscribed.set()

    def wait_ready(self) -> None:
        """Block until the ack subscription is in place."""
        if not self._subscribed.wait(CONNECT_TIMEOUT_S):
            raise TimeoutError(f"kiosk {self.plan.device} could not subscribe")

    def _on_ack(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        now = time.perf_counter()
        ids = json.loads(message.payload)["body"]["ids"]
        latencies = self.result.latencies_s
        with self._done:
            for event_id in ids:
                sent = self._sent_at.pop(event_id, None)
                if sent is not None:  # a second ack of a resent event counts once
                    latencies.append(now - sent)
                    self._in_flight -= 1
                    self.result.acked += 1
            self.result.last_ack = now
            self._done.notify_all()

    def _on_puback(self, client: paho.Client, userdata: object, mid: int, *_: object) -> None:
        with self._done:
            self._in_flight -= 1
            self.result.acked += 1
            self.result.last_ack = time.perf_counter()
            self._done.notify_all()

    def run(self, events: list[tuple[str, str, bytes]], interval_s: float = 0.0) -> None:
        """Publish every event (one each ``interval_s`` when paced) and wait for all acks."""
        started = time.perf_counter()
        self.result.first_publish = started
        for index, (event_id, topic, payload) in enumerate(events):
            if interval_s:
                delay = started + index * interval_s - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)  # pacing a steady load, not waiting for an outcome
            with self._done:
                while self._in_flight >= self._window:
                    self._done.wait()
                self._in_flight += 1
                if self._gateway:
                    self._sent_at[event_id] = time.perf_counter()
            self._client.publish(topic, payload, qos=1)
            self.result.published += 1
        with self._done:
            while self.result.acked < len(events):
                if not self._done.wait(CONNECT_TIMEOUT_S):
                    break  # the caller sees acked < published

    def close(self) -> None:
        """Disconnect."""
        self._client.disconnect()
        self._client.loop_stop()


def run_kiosks(
    host: str,
    port: int,
    plans: Sequence[KioskPlan],
    *,
    window: int,
    gateway: bool = True,
    rate_per_kiosk: float = 0.0,
    ready: Callable[[], object] | None = None,
) -> list[KioskResult]:
    """Run ``plans`` concurrently, one thread and connection each; returns their results.
    ``ready`` (if given) is called once every kiosk is connected, to start together (a
    barrier's ``wait``)."""
    kiosks = [LoadKiosk(host, port, plan, window, gateway=gateway) for plan in plans]
    prepared = [prepare(plan) for plan in plans]
    for kiosk in kiosks:
        kiosk.wait_ready()
    if ready is not None:
        ready()
    interval = 1.0 / rate_per_kiosk if rate_per_kiosk else 0.0
    threads = [
        threading.Thread(target=k.run, args=(events, interval), daemon=True)
        for k, events in zip(kiosks, prepared, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for kiosk in kiosks:
        kiosk.close()
    return [k.result for k in kiosks]

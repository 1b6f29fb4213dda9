"""Many kiosks' drop-off traffic without the kiosks: each simulated kiosk is its own MQTT
connection (libmosquitto, QoS 1: see ``simulator/mosquitto_client.py`` for why not paho) that
publishes prepared drop-off events in ``seq`` order, keeps at most ``window`` of them
unacknowledged by the gateway (as a kiosk's outbox does) and records, for each, the time from
publish to the gateway's ack.

The benchmarks run several of these in worker processes; everything here is synchronous (one
publishing thread drives all of a worker's kiosks; each connection's network thread is
libmosquitto's), so a worker needs no event loop.
"""

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from protocol import envelope, topics
from protocol.messages import Dropoff, DropoffMethod
from simulator.mosquitto_client import MosquittoClient

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
    """One kiosk connection (libmosquitto) and its prepared drop-offs. The driver of
    :func:`run_kiosks` publishes for it; the acks come back on the client's own thread."""

    def __init__(
        self,
        host: str,
        port: int,
        plan: KioskPlan,
        window: int,
        lock: threading.Condition,
        *,
        gateway: bool = True,
    ) -> None:
        """With ``gateway`` false there is no application ack: everything is published at
        once and libmosquitto keeps ``window`` QoS 1 messages in flight to the broker (the
        raw broker rate, for comparison, measured at the receiving end)."""
        self.plan = plan
        self.result = KioskResult()
        self.events = prepare(plan)
        self.next = 0
        self.in_flight = 0
        self._gateway = gateway
        self._window = window if gateway else len(self.events)
        self._refill_at = max(1, window // 2)
        self._sent_at: dict[str, float] = {}
        self._lock = lock
        self._client = MosquittoClient(
            f"load-{plan.store}-{plan.device}",
            max_inflight=window,
            on_message=self._on_ack if gateway else None,
        )
        self._client.connect(host, port, keepalive=60)
        if gateway:
            self._client.subscribe(topics.ack(plan.store, plan.device), qos=1)

    @property
    def finished(self) -> bool:
        """Every event published and (with a gateway) acked."""
        if not self._gateway:
            return self.next >= len(self.events)
        return self.result.acked >= len(self.events)

    def wait_ready(self) -> None:
        """Block until connected and, with a gateway, subscribed to the acks."""
        ready = self._client.subscribed if self._gateway else self._client.connected
        if not ready.wait(CONNECT_TIMEOUT_S):
            raise TimeoutError(f"kiosk {self.plan.store}/{self.plan.device} is not ready")

    def take(self, limit: int) -> list[tuple[bytes, bytes]]:
        """Reserve up to ``limit`` of the next events within the window (caller holds the
        lock); returns ``(topic, payload)`` to publish."""
        room = min(limit, self._window - self.in_flight, len(self.events) - self.next)
        if room <= 0:
            return []
        now = time.perf_counter()
        chosen = self.events[self.next : self.next + room]
        if self.next == 0:
            self.result.first_publish = now
        self.next += room
        self.in_flight += room
        if self._gateway:
            for event_id, _, _ in chosen:
                self._sent_at[event_id] = now
        return [(topic.encode(), payload) for _, topic, payload in chosen]

    def send(self, messages: list[tuple[bytes, bytes]]) -> None:
        """Publish reserved events (outside the lock: the client's thread takes it for acks)."""
        for topic, payload in messages:
            self._client.publish(topic, payload, qos=1)
        self.result.published += len(messages)

    def _on_ack(self, topic: str, payload: bytes) -> None:
        now = time.perf_counter()
        ids = json.loads(payload)["body"]["ids"]
        latencies = self.result.latencies_s
        with self._lock:
            for event_id in ids:
                sent = self._sent_at.pop(event_id, None)
                if sent is not None:  # a second ack of a resent event counts once
                    latencies.append(now - sent)
                    self.in_flight -= 1
                    self.result.acked += 1
            self.result.last_ack = now
            # Wake the publisher once half the window is free, not for every ack: each
            # wake-up is a handover of the GIL between threads.
            if self.in_flight <= self._refill_at or self.finished:
                self._lock.notify_all()

    def close(self) -> None:
        """Disconnect."""
        self._client.close()


def run_kiosks(
    host: str,
    port: int,
    plans: Sequence[KioskPlan],
    *,
    window: int,
    gateway: bool = True,
    rate_per_kiosk: float = 0.0,
    ready: Callable[[], object] | None = None,
    hold: Callable[[], object] | None = None,
) -> list[KioskResult]:
    """Run ``plans`` concurrently, one connection each, from one publishing thread; returns
    their results. Each kiosk keeps at most ``window`` events unacked; paced at
    ``rate_per_kiosk`` events/s each, or as fast as acks allow. ``ready`` (if given) is
    called once every kiosk is connected, to start together (a barrier's ``wait``);
    ``hold`` before disconnecting (without a gateway, until the receiver has everything:
    libmosquitto may still hold queued messages)."""
    lock = threading.Condition()
    kiosks = [LoadKiosk(host, port, plan, window, lock, gateway=gateway) for plan in plans]
    for kiosk in kiosks:
        kiosk.wait_ready()
    if ready is not None:
        ready()
    try:
        _drive(kiosks, lock, 1.0 / rate_per_kiosk if rate_per_kiosk else 0.0)
        if hold is not None:
            hold()
    finally:
        for kiosk in kiosks:
            kiosk.close()
    return [k.result for k in kiosks]


def _drive(kiosks: list[LoadKiosk], lock: threading.Condition, interval_s: float) -> None:
    """Publish whatever the windows (and the pacing) allow, else wait for an ack or the next
    paced event; gives up when no ack comes for ``CONNECT_TIMEOUT_S``."""
    started = last_progress = time.perf_counter()
    total = len(kiosks[0].events)
    while True:
        now = time.perf_counter()
        due = int((now - started) / interval_s) + 1 if interval_s else total
        with lock:
            if all(k.finished for k in kiosks):
                return
            batches = [(k, k.take(due - k.next)) for k in kiosks]
            if not any(messages for _, messages in batches):
                acked = sum(k.result.acked for k in kiosks)
                next_due = started + due * interval_s - now if interval_s else 0.5
                lock.wait(max(next_due, 0.001))  # woken by an ack
                if sum(k.result.acked for k in kiosks) != acked:
                    last_progress = time.perf_counter()
                elif time.perf_counter() - last_progress > CONNECT_TIMEOUT_S:
                    return  # the caller sees acked < published
                continue
        for kiosk, messages in batches:
            kiosk.send(messages)

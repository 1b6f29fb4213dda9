"""Delivery of the kiosk's outbox: publish in ``seq`` order, delete only on the gateway's ack.

The broker's PUBACK proves nothing about the gateway; only the application ack on ``.../ack``
removes an event (DESIGN §5 rule 4). Unacked events are published again after a reconnect or
after ``ack_timeout_s``; the gateway's insert-on-conflict makes repeats harmless.
"""

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence

from pydantic import BaseModel

from edge.database import EdgeDatabase, OutboxRow
from edge.link import KioskLink, LinkDownError
from protocol import envelope, topics
from protocol.envelope import Envelope
from protocol.messages import BODY_TYPES

log = logging.getLogger(__name__)


class OutboxPublisher:
    """Drains the outbox to the broker with at most ``window`` unacked events in flight."""

    def __init__(
        self,
        db: EdgeDatabase,
        link: KioskLink,
        *,
        store: str,
        device: str,
        window: int = 100,
        ack_timeout_s: float = 10.0,
    ) -> None:
        self._db, self._link = db, link
        self._store, self._device = store, device
        self._window, self._ack_timeout_s = window, ack_timeout_s
        self._inflight: dict[str, float] = {}
        self._wakeup = asyncio.Event()
        self.published = 0
        self.acked = 0
        self.emptied = asyncio.Event()

    def wake(self) -> None:
        """Something was appended to the outbox."""
        self.emptied.clear()
        self._wakeup.set()

    async def on_ack(self, ids: Sequence[str]) -> None:
        """The gateway committed these events: forget them."""
        removed = await self._db.acknowledge(ids)
        self.acked += removed
        for event_id in ids:
            self._inflight.pop(event_id, None)
        if await self._db.outbox_size() == 0:
            self.emptied.set()
        self._wakeup.set()

    async def run(self) -> None:
        """Publish whenever connected, until cancelled."""
        while True:
            await self._link.connected.wait()
            try:
                await self._drain()
            except LinkDownError as exc:
                log.info("outbox paused: %s", exc)
            self._inflight.clear()
            await self._link.disconnected.wait()

    async def _drain(self) -> None:
        connected_at = self._link.connected_at
        last_seq = 0
        while self._link.connected.is_set():
            self._wakeup.clear()
            room = self._window - len(self._inflight)
            rows = await self._db.pending(after_seq=last_seq, limit=room) if room > 0 else []
            for row in rows:
                payload = envelope.encode(self._envelope(row, historical=row.ts < connected_at))
                await self._link.publish(self._topic(row), payload)
                self._inflight[row.id] = time.monotonic()
                last_seq = row.seq
                self.published += 1
            if rows and len(self._inflight) < self._window:
                continue
            if not rows and not self._inflight and await self._db.outbox_size() == 0:
                self.emptied.set()
            if await self._wait_for_wakeup() and self._inflight:
                oldest = min(self._inflight.values())
                if time.monotonic() - oldest >= self._ack_timeout_s:
                    log.warning(
                        "%d events unacked for %.0fs; resending",
                        len(self._inflight),
                        self._ack_timeout_s,
                    )
                    self._inflight.clear()
                    last_seq = 0
                    connected_at = time.time()  # what we resend now is a replay

    async def _wait_for_wakeup(self) -> bool:
        """Wait for an append or an ack; True when the ack timeout passed first."""
        try:
            async with asyncio.timeout(self._ack_timeout_s):
                await self._wakeup.wait()
        except TimeoutError:
            return True
        return False

    def _topic(self, row: OutboxRow) -> str:
        if row.type == "cmd_result":
            return topics.command_result(self._store, self._device)
        return topics.event(self._store, self._device, row.type)

    def _envelope(self, row: OutboxRow, *, historical: bool) -> Envelope[BaseModel]:
        body = BODY_TYPES[row.type].model_validate_json(row.body)
        return envelope.make(
            body,
            store=self._store,
            device=self._device,
            seq=row.seq,
            session=row.session,
            historical=historical,
            ts=row.ts,
            message_id=uuid.UUID(row.id),
        )

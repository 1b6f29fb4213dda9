"""Applies stored kiosk events behind ingest (ADR 0018).

Ingest acks an event once it is stored; the applier takes stored events that are not yet
applied, whichever replica stored them, and applies them in transactions of
``apply_batch`` events (:meth:`gateway.ingest.Ingest.apply_stored`). It is woken by every
ingest commit and by the timers' tick (which also picks up what a crashed replica stored
and never applied).

Under a burst, ingest goes first: while fewer than ``lag_limit`` stored events wait to be
applied, the applier runs only once the link has been idle for ``QUIET_S`` (a gap in the
traffic, which a gateway that is not saturated has between batches), so that kiosks get
their acks and their outboxes drain while it is busy. Past ``lag_limit`` it no longer
waits; past twice that, ingest waits for it (:meth:`Applier.room`), so the lag stays bounded.
"""

import asyncio
import logging
from collections.abc import Callable

from gateway.ingest import Ingest

log = logging.getLogger(__name__)

ATTEMPTS = 3
"""Tries of a failing apply before its events are applied one by one."""
QUIET_S = 0.05
"""How long the link must have been idle before the applier takes the database from it."""


class Applier:
    """Runs :meth:`Ingest.apply_stored` until nothing stored is left unapplied."""

    def __init__(
        self,
        ingest: Ingest,
        *,
        batch: int,
        lag_limit: int,
        ingest_idle: asyncio.Event,
        ingest_batches: Callable[[], int],
        on_work: Callable[[], None],
    ) -> None:
        self._ingest = ingest
        self._batch = batch
        self._lag_limit = lag_limit
        self._ingest_idle = ingest_idle
        self._ingest_batches = ingest_batches
        self._on_work = on_work
        self._wakeup = asyncio.Event()
        self._caught_up = asyncio.Event()
        self._caught_up.set()
        self.lag = 0
        """Stored events this replica knows are waiting to be applied (an estimate: other
        replicas' events are not counted until taken)."""

    def stored(self, new: int) -> None:
        """Ingest committed ``new`` events: apply them soon."""
        if new:
            self.lag += new
            if self.lag >= 2 * self._lag_limit:
                self._caught_up.clear()
            self._wakeup.set()

    def wake(self) -> None:
        """Look for stored events to apply (timer tick, start-up)."""
        self._wakeup.set()

    async def room(self) -> None:
        """Wait while the lag is at twice the limit (ingest's back-pressure)."""
        await self._caught_up.wait()

    async def run(self) -> None:
        """Apply stored events whenever woken, until cancelled."""
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            try:
                await self._drain()
            except Exception:
                log.exception("applying stored events failed; will retry when woken")

    async def _drain(self) -> None:
        while True:
            if self.lag < self._lag_limit:
                await self._ingest_quiet()  # ingest first: acks free the kiosks
            taken = await self._apply_batch()
            self.lag = max(0, self.lag - taken)
            if self.lag < self._lag_limit:
                self._caught_up.set()
            if taken < self._batch:
                self.lag = 0
                self._caught_up.set()
                return

    async def _ingest_quiet(self) -> None:
        """Wait until the link has handled no batch for ``QUIET_S`` (or the lag grew past
        the limit meanwhile)."""
        while self.lag < self._lag_limit:
            await self._ingest_idle.wait()
            before = self._ingest_batches()
            await asyncio.sleep(QUIET_S)  # a debounce: traffic that pauses this long has a gap
            if self._ingest_idle.is_set() and self._ingest_batches() == before:
                return

    async def _apply_batch(self) -> int:
        for attempt in range(ATTEMPTS):
            try:
                result = await self._ingest.apply_stored(self._batch)
            except Exception as exc:
                log.warning("applying a batch failed (attempt %d): %r", attempt + 1, exc)
                await asyncio.sleep(0.05 * 2**attempt)  # back off: a conflict passes
                continue
            if result.work:
                self._on_work()
            return result.taken
        return await self._apply_one_by_one()

    async def _apply_one_by_one(self) -> int:
        """Set the event at fault aside (dead-lettered) and apply the rest."""
        ids = await self._ingest.unsequenced_ids(self._batch)
        for event_id in ids:
            await self._ingest.apply_alone(event_id)
        self._on_work()
        return len(ids)

"""Applies stored kiosk events behind ingest (ADR 0018).

Ingest acks an event once it is stored; the applier takes stored events that are not yet
applied, whichever replica stored them, and applies them in transactions of
``apply_batch`` events (:meth:`gateway.ingest.Ingest.apply_stored`). It is woken by every
ingest commit and by the timers' tick (which also picks up what a crashed replica stored
and never applied).

Ingest goes first, in two ways:

- the applier starts a transaction only while the link is idle (no message waiting, no
  batch in hand), which a gateway that keeps up is most of the time: it applies within
  milliseconds of the ack;
- when events arrive clearly faster than it can apply them anyway (over ``OVERLOAD`` times
  its measured rate, over the last second: a burst, a fleet coming back online with a day's
  outboxes), applying in every gap would only slow the acks without keeping up, so it waits
  for the burst to pass and lets kiosks' outboxes drain at ingest speed.

Either way it defers only while the oldest waiting event has waited less than
``max_lag_s`` (10 s by default) and fewer than ``lag_limit`` events wait: a sustained load
near capacity gets its refunds seconds late, not after the load ends. Past twice
``lag_limit``, ingest waits for it (:meth:`Applier.room`), so the backlog stays bounded.
"""

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable

from gateway.ingest import Ingest

log = logging.getLogger(__name__)

ATTEMPTS = 3
"""Tries of a failing apply before its events are applied one by one."""
OVERLOAD = 1.5
"""Arrivals above this multiple of the applier's measured rate are a burst it cannot keep up
with. The measure includes waits for the database behind ingest, so it reads low: at 1× a
steady load the applier could follow would already count as one."""
RATE_WINDOW_S = 1.0
RECHECK_S = 0.25
"""How often a deferring applier looks at the arrival rate again."""


class Applier:
    """Runs :meth:`Ingest.apply_stored` until nothing stored is left unapplied."""

    def __init__(
        self,
        ingest: Ingest,
        *,
        batch: int,
        lag_limit: int,
        max_lag_s: float,
        ingest_idle: asyncio.Event,
        on_work: Callable[[], None],
    ) -> None:
        self._ingest = ingest
        self._batch = batch
        self._lag_limit = lag_limit
        self._max_lag_s = max_lag_s
        # [stored at, how many of those still wait], oldest first: the lag's age.
        self._waiting: collections.deque[list[float]] = collections.deque()
        self._ingest_idle = ingest_idle
        self._on_work = on_work
        self._wakeup = asyncio.Event()
        self._caught_up = asyncio.Event()
        self._caught_up.set()
        self._arrivals: collections.deque[tuple[float, int]] = collections.deque()
        self.apply_rate = 0.0
        """Events applied per second of applying (moving average), 0 until measured."""
        self.lag = 0
        """Stored events this replica knows are waiting to be applied (an estimate: other
        replicas' events are not counted until taken)."""

    def stored(self, new: int) -> None:
        """Ingest committed ``new`` events: apply them soon."""
        if new:
            now = time.monotonic()
            self._arrivals.append((now, new))
            self._waiting.append([now, new])
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

    def arrival_rate(self) -> float:
        """Events stored per second over the last ``RATE_WINDOW_S``."""
        cutoff = time.monotonic() - RATE_WINDOW_S
        while self._arrivals and self._arrivals[0][0] < cutoff:
            self._arrivals.popleft()
        return sum(n for _, n in self._arrivals) / RATE_WINDOW_S

    def _overloaded(self) -> bool:
        return self.apply_rate > 0 and self.arrival_rate() > OVERLOAD * self.apply_rate

    async def _drain(self) -> None:
        while True:
            await self._wait_for_turn()
            started = time.monotonic()
            taken = await self._apply_batch()
            self._measure(taken, time.monotonic() - started)
            self._applied(taken)
            if taken < self._batch:
                self.lag = 0
                self._waiting.clear()
                self._caught_up.set()
                return

    def _applied(self, taken: int) -> None:
        self.lag = max(0, self.lag - taken)
        while taken and self._waiting:
            used = min(taken, int(self._waiting[0][1]))
            self._waiting[0][1] -= used
            taken -= used
            if not self._waiting[0][1]:
                self._waiting.popleft()
        if self.lag < self._lag_limit:
            self._caught_up.set()

    def lag_age(self) -> float:
        """Seconds the oldest event known to wait has waited."""
        return time.monotonic() - self._waiting[0][0] if self._waiting else 0.0

    async def _wait_for_turn(self) -> None:
        """Ingest first (module docstring): wait for an idle link, and through a burst
        this applier cannot keep up with, while the lag is within its limits."""
        while self.lag < self._lag_limit:
            budget = self._max_lag_s - self.lag_age()
            if budget <= 0:
                return
            if self._overloaded():
                await asyncio.sleep(min(RECHECK_S, budget))  # a rate over time: no event
            elif self._ingest_idle.is_set():
                return
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(budget):
                        await self._ingest_idle.wait()

    def _measure(self, taken: int, seconds: float) -> None:
        if taken < self._batch // 4 or seconds <= 0:
            return  # too small a sample: the tail of a backlog
        sample = taken / seconds
        self.apply_rate = sample if not self.apply_rate else 0.7 * self.apply_rate + 0.3 * sample

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

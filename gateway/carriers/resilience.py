"""Retries with exponential backoff and jitter, and a circuit breaker per carrier.

Only failures that say nothing was decided are retried: timeouts, 5xx and refused
connections, and rate limits (after the carrier's Retry-After). A rejection is an answer and is
never retried. A timed-out *create* is retried safely because every create carries our order
code, which the carrier refuses to take twice (see the adapters).

The breaker counts consecutive failures of the carrier (timeouts, 5xx, malformed replies).
At ``failure_threshold`` it opens: calls fail at once with :class:`CircuitOpenError` for
``cooldown_s``. Then it is half-open: one probe call goes through; its success closes the
breaker, its failure opens it for another cool-down.
"""

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from gateway.carriers.base import (
    CarrierError,
    CarrierMalformedReply,
    CarrierRateLimited,
    CircuitOpenError,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


class BreakerState(StrEnum):
    """Where a circuit breaker stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """One carrier's breaker. ``clock`` is injectable so tests need not wait out a cool-down."""

    def __init__(
        self,
        carrier: str,
        *,
        failure_threshold: int = 5,
        cooldown_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.carrier = carrier
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._probe_in_flight = False
        self.consecutive_failures = 0
        self.times_opened = 0
        self.calls_refused = 0

    @property
    def state(self) -> BreakerState:
        """The state now (an open breaker whose cool-down is over reads half-open)."""
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.cooldown_s:
            self._state = BreakerState.HALF_OPEN
            self._probe_in_flight = False
        return self._state

    @property
    def is_open(self) -> bool:
        """True while calls are being refused outright."""
        return self.state is BreakerState.OPEN

    def before_call(self) -> None:
        """Admit a call, or raise :class:`CircuitOpenError`."""
        state = self.state
        if state is BreakerState.CLOSED:
            return
        if state is BreakerState.HALF_OPEN and not self._probe_in_flight:
            self._probe_in_flight = True
            return
        self.calls_refused += 1
        wait = max(0.0, self.cooldown_s - (self._clock() - self._opened_at))
        raise CircuitOpenError(self.carrier, f"circuit open; next probe in {wait:.1f}s")

    def record_success(self) -> None:
        """The carrier answered (a rejection is an answer too)."""
        self.consecutive_failures = 0
        self._probe_in_flight = False
        if self._state is not BreakerState.CLOSED:
            log.info("%s circuit closed", self.carrier)
        self._state = BreakerState.CLOSED

    def record_failure(self) -> None:
        """The carrier did not answer usefully (timeout, 5xx, refused, malformed)."""
        self.consecutive_failures += 1
        probe_failed = self._state is BreakerState.HALF_OPEN
        self._probe_in_flight = False
        if probe_failed or self.consecutive_failures >= self.failure_threshold:
            if self._state is not BreakerState.OPEN:
                self.times_opened += 1
                log.warning(
                    "%s circuit open after %d failure(s); cool-down %.1fs",
                    self.carrier,
                    self.consecutive_failures,
                    self.cooldown_s,
                )
            self._state = BreakerState.OPEN
            self._opened_at = self._clock()

    def release(self) -> None:
        """A call ended without telling us whether the carrier is healthy (rate limit, cancel)."""
        self._probe_in_flight = False


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a retryable failure."""

    attempts: int = 4
    base_s: float = 0.2
    max_s: float = 5.0
    max_retry_after_s: float = 30.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Delay before retry number ``attempt + 1``: exponential, capped, with equal jitter
        (half fixed, half random) so that many clients do not retry in step."""
        ceiling = min(self.max_s, self.base_s * 2.0**attempt)
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


Sleep = Callable[[float], Awaitable[None]]


class Resilience:
    """Runs carrier calls through one carrier's breaker with the retry policy."""

    def __init__(
        self,
        breaker: CircuitBreaker,
        policy: RetryPolicy | None = None,
        *,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.breaker = breaker
        self.policy = policy or RetryPolicy()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.retries = 0

    async def call(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """``await op()`` with retries for retryable failures; ``what`` names it in logs."""
        attempts = max(1, self.policy.attempts)
        for attempt in range(attempts):
            self.breaker.before_call()
            try:
                result = await op()
            except CarrierRateLimited as exc:
                self.breaker.release()
                delay = self._rate_limit_delay(exc, attempt)
                if delay is None or attempt == attempts - 1:
                    raise
            except CarrierMalformedReply:
                self.breaker.record_failure()
                raise
            except CarrierError as exc:
                if not exc.retryable:
                    self.breaker.record_success()  # the carrier answered: it is alive
                    raise
                self.breaker.record_failure()
                if attempt == attempts - 1:
                    raise
                delay = self.policy.backoff(attempt, self._rng)
                log.info("%s: %s; retry %d in %.2fs", what, exc, attempt + 1, delay)
            except BaseException:
                self.breaker.release()
                raise
            else:
                self.breaker.record_success()
                return result
            self.retries += 1
            await self._sleep(delay)  # back-off before the retry
        raise AssertionError("unreachable")

    def _rate_limit_delay(self, exc: CarrierRateLimited, attempt: int) -> float | None:
        """Honour Retry-After when the carrier gave one, else back off; None: give up now."""
        if exc.retry_after_s is None:
            return self.policy.backoff(attempt, self._rng)
        if exc.retry_after_s > self.policy.max_retry_after_s:
            return None
        return exc.retry_after_s

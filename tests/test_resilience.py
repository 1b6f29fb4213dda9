"""Retries, backoff with jitter and the circuit breaker, driven by plain async operations."""

import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest

from gateway.carriers.base import (
    CarrierError,
    CarrierMalformedReply,
    CarrierRateLimited,
    CarrierRejected,
    CarrierTimeout,
    CarrierUnavailable,
    CircuitOpenError,
)
from gateway.carriers.resilience import BreakerState, CircuitBreaker, Resilience, RetryPolicy
from gateway.carriers.transport import retry_after_seconds


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Sleeps:
    """Records the delays asked for instead of waiting them."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def failing(*errors: CarrierError, result: str = "ok") -> Callable[[], Awaitable[str]]:
    """An operation that raises ``errors`` in turn, then returns ``result``."""
    pending = list(errors)
    calls: list[int] = []

    async def op() -> str:
        calls.append(1)
        if pending:
            raise pending.pop(0)
        return result

    op.calls = calls  # type: ignore[attr-defined]
    return op


def _resilience(
    attempts: int = 4, threshold: int = 5, clock: Clock | None = None
) -> tuple[Resilience, Sleeps]:
    sleeps = Sleeps()
    breaker = CircuitBreaker(
        "c", failure_threshold=threshold, cooldown_s=30, clock=clock or Clock()
    )
    policy = RetryPolicy(attempts=attempts, base_s=0.2, max_s=1.0, max_retry_after_s=10)
    return Resilience(breaker, policy, sleep=sleeps, rng=random.Random(7)), sleeps


async def test_timeouts_and_5xx_are_retried_with_growing_backoff() -> None:
    res, sleeps = _resilience()
    op = failing(CarrierTimeout("c", "t"), CarrierUnavailable("c", "502"), CarrierTimeout("c", "t"))
    assert await res.call("create", op) == "ok"
    assert len(sleeps.delays) == 3
    for attempt, delay in enumerate(sleeps.delays):
        ceiling = min(1.0, 0.2 * 2**attempt)
        assert ceiling / 2 <= delay <= ceiling, "equal jitter: between half and all of the cap"
    assert res.breaker.consecutive_failures == 0, "the success reset the count"


async def test_jitter_spreads_retries() -> None:
    policy = RetryPolicy(base_s=1.0, max_s=100.0)
    rng = random.Random(1)
    delays = {round(policy.backoff(3, rng), 6) for _ in range(20)}
    assert len(delays) > 10
    assert all(4.0 <= d <= 8.0 for d in delays)


async def test_rejections_and_malformed_replies_are_not_retried() -> None:
    res, sleeps = _resilience()
    with pytest.raises(CarrierRejected):
        await res.call("book", failing(CarrierRejected("c", "105", "bad address")))
    with pytest.raises(CarrierMalformedReply):
        await res.call("book", failing(CarrierMalformedReply("c", "html")))
    assert sleeps.delays == []
    assert res.breaker.consecutive_failures == 1, "a malformed reply counts, a rejection not"


async def test_gives_up_after_the_last_attempt() -> None:
    res, sleeps = _resilience(attempts=3)
    op = failing(*(CarrierTimeout("c", "t") for _ in range(5)))
    with pytest.raises(CarrierTimeout):
        await res.call("query", op)
    assert len(op.calls) == 3  # type: ignore[attr-defined]
    assert len(sleeps.delays) == 2


async def test_rate_limit_waits_retry_after_or_backs_off() -> None:
    res, sleeps = _resilience()
    op = failing(CarrierRateLimited("c", "429", 2.5), CarrierRateLimited("c", "109", None))
    assert await res.call("create", op) == "ok"
    assert sleeps.delays[0] == 2.5
    assert 0.2 <= sleeps.delays[1] <= 0.4, "no Retry-After: the normal back-off"
    assert res.breaker.consecutive_failures == 0
    with pytest.raises(CarrierRateLimited):
        await res.call("create", failing(CarrierRateLimited("c", "429", 60)))
    assert len(sleeps.delays) == 2, "a Retry-After beyond patience is reported, not waited"


async def test_breaker_opens_refuses_then_half_opens() -> None:
    clock = Clock()
    res, _ = _resilience(attempts=1, threshold=3, clock=clock)
    for _ in range(3):
        with pytest.raises(CarrierUnavailable):
            await res.call("create", failing(CarrierUnavailable("c", "503")))
    assert res.breaker.state is BreakerState.OPEN
    op = failing()
    with pytest.raises(CircuitOpenError):
        await res.call("create", op)
    assert op.calls == [], "refused without calling"  # type: ignore[attr-defined]
    assert res.breaker.calls_refused == 1

    clock.now += 30
    assert res.breaker.state is BreakerState.HALF_OPEN
    res.breaker.before_call()  # the one probe is admitted ...
    with pytest.raises(CircuitOpenError):
        res.breaker.before_call()  # ... and no second one while it runs
    res.breaker.record_failure()
    assert res.breaker.state is BreakerState.OPEN, "a failed probe re-opens"
    assert res.breaker.times_opened == 2

    clock.now += 30
    assert await res.call("create", failing()) == "ok"
    assert res.breaker.state is BreakerState.CLOSED


async def test_circuit_open_is_not_retried() -> None:
    clock = Clock()
    res, sleeps = _resilience(attempts=4, threshold=1, clock=clock)
    with pytest.raises(CircuitOpenError):
        await res.call("create", failing(*(CarrierTimeout("c", "t") for _ in range(4))))
    assert len(sleeps.delays) == 1, "one failure opened it; the retry met the open circuit"


async def test_rejections_keep_the_breaker_closed() -> None:
    res, _ = _resilience(attempts=1, threshold=2)
    with pytest.raises(CarrierTimeout):
        await res.call("a", failing(CarrierTimeout("c", "t")))
    with pytest.raises(CarrierRejected):
        await res.call("a", failing(CarrierRejected("c", "105", "no")))
    with pytest.raises(CarrierTimeout):
        await res.call("a", failing(CarrierTimeout("c", "t")))
    assert res.breaker.state is BreakerState.CLOSED


def test_retry_after_header_forms() -> None:
    now = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("3", now) == 3.0
    assert retry_after_seconds("Sun, 22 Nov 2026 10:00:05 GMT", now) == 5.0
    assert retry_after_seconds("Sun, 22 Nov 2026 09:00:00 GMT", now) == 0.0
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds(None, now) is None

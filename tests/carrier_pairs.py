"""A real carrier adapter talking HTTP to its simulator on loopback, for the adapter tests."""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import aiohttp

from gateway.carriers.base import Address, Parcel, ShipmentRequest
from gateway.carriers.kdniao import KdniaoCarrier
from gateway.carriers.resilience import CircuitBreaker, Resilience, RetryPolicy
from gateway.carriers.sf_express import SfExpressCarrier
from simulator.carrier_http import CarrierKnobs
from simulator.kdniao import KdniaoSimulator
from simulator.sf_express import SfExpressSimulator

STORE = Address("Store 1", "021-1", "上海市", "上海市", "静安区", "南京西路 1 号")
CUSTOMER = Address("张三", "13800000001", "浙江省", "杭州市", "西湖区", "文三路 9 号")
WAREHOUSE = Address("Warehouse", "021-2", "上海市", "上海市", "嘉定区", "安亭镇 1 号仓")


def shipment_request(
    code: str = "tote-1", *, sender: Address = STORE, hours: float = 2.0
) -> ShipmentRequest:
    """A tote (or, with ``sender=CUSTOMER``, a home pickup) with a pickup window."""
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    return ShipmentRequest(
        code, sender, WAREHOUSE, Parcel(4.0, 1, "returns"), start, start + timedelta(hours=hours)
    )


@dataclass
class RecordingSleep:
    """The retry loop's sleep: records each requested delay, then really waits it."""

    delays: list[float] = field(default_factory=list)

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(delay)  # the production back-off itself, not a test settle-wait


def resilience(name: str, attempts: int, sleep: RecordingSleep, threshold: int = 100) -> Resilience:
    """Quick retries (10–50 ms) so the tests stay fast."""
    return Resilience(
        CircuitBreaker(name, failure_threshold=threshold, cooldown_s=60.0),
        RetryPolicy(attempts=attempts, base_s=0.01, max_s=0.05, max_retry_after_s=1.0),
        sleep=sleep,
    )


@dataclass
class KdniaoPair:
    """The Kdniao adapter and its simulator."""

    sim: KdniaoSimulator
    carrier: KdniaoCarrier
    sleep: RecordingSleep


@dataclass
class SfPair:
    """The SF adapter and its simulator."""

    sim: SfExpressSimulator
    carrier: SfExpressCarrier
    sleep: RecordingSleep


async def kdniao_pair(
    knobs: CarrierKnobs | None = None,
    *,
    timeout_s: float = 2.0,
    attempts: int = 3,
    threshold: int = 100,
    push_url: str | None = None,
    push_delays_s: tuple[float, ...] = (),
) -> AsyncIterator[KdniaoPair]:
    """``async for pair in kdniao_pair(...)``: started, and stopped afterwards."""
    sim = KdniaoSimulator(
        "1234567", "app-key", knobs=knobs, push_url=push_url, push_delays_s=push_delays_s
    )
    url = await sim.start()
    sleep = RecordingSleep()
    try:
        async with aiohttp.ClientSession() as session:
            carrier = KdniaoCarrier(
                url,
                "1234567",
                "app-key",
                session,
                timeout_s=timeout_s,
                resilience=resilience("kdniao", attempts, sleep, threshold),
            )
            yield KdniaoPair(sim, carrier, sleep)
    finally:
        await sim.stop()


async def sf_pair(
    knobs: CarrierKnobs | None = None,
    *,
    timeout_s: float = 2.0,
    attempts: int = 3,
    checkword: str = "checkword-1",
    push_delays_s: tuple[float, ...] = (),
) -> AsyncIterator[SfPair]:
    """``async for pair in sf_pair(...)``: started, and stopped afterwards."""
    sim = SfExpressSimulator("PARTNER", "checkword-1", knobs=knobs, push_delays_s=push_delays_s)
    url = await sim.start()
    sleep = RecordingSleep()
    try:
        async with aiohttp.ClientSession() as session:
            carrier = SfExpressCarrier(
                url,
                "PARTNER",
                checkword,
                session,
                monthly_card="7551234567",
                timeout_s=timeout_s,
                resilience=resilience("sf", attempts, sleep),
            )
            yield SfPair(sim, carrier, sleep)
    finally:
        await sim.stop()

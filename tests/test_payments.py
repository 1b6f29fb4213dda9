"""The Stripe-style refunds adapter against the simulated provider."""

from collections.abc import AsyncIterator

import aiohttp
import pytest

from gateway.payments.base import (
    PaymentDeclined,
    PaymentTimeout,
    PaymentUnavailable,
    RefundRequest,
    RefundStatus,
)
from gateway.payments.stripe_like import StripeLikeRefunds
from simulator.payments import PaymentKnobs, PaymentsSimulator

REQ = RefundRequest("ret-1", 1999, "CNY", None, "acme", "too small")


async def _provider(
    knobs: PaymentKnobs, timeout_s: float = 2.0
) -> AsyncIterator[tuple[PaymentsSimulator, StripeLikeRefunds]]:
    sim = PaymentsSimulator("sk_test", knobs=knobs)
    url = await sim.start()
    async with aiohttp.ClientSession() as session:
        yield sim, StripeLikeRefunds(url, "sk_test", session, timeout_s=timeout_s)
    await sim.stop()


async def test_refund_succeeds_once_per_idempotency_key() -> None:
    async for sim, provider in _provider(PaymentKnobs()):
        first = await provider.refund(REQ)
        again = await provider.refund(REQ)
        assert first == again
        assert first.status is RefundStatus.SUCCEEDED
        assert sim.refund_count("ret-1") == 1


async def test_timeout_then_lookup_finds_the_committed_refund() -> None:
    async for sim, provider in _provider(
        PaymentKnobs(timeout_rate=1.0, timeout_hold_s=1.0), timeout_s=0.3
    ):
        with pytest.raises(PaymentTimeout):
            await provider.refund(REQ)
        found = await provider.lookup("ret-1")
        assert found is not None and found.amount_minor == 1999
        assert sim.refund_count("ret-1") == 1
        assert await provider.lookup("ret-unknown") is None


async def test_decline_is_typed() -> None:
    async for sim, provider in _provider(PaymentKnobs(decline_rate=1.0)):
        with pytest.raises(PaymentDeclined, match="refund_declined"):
            await provider.refund(REQ)
        assert sim.refund_count("ret-1") == 0


async def test_unreachable_provider_is_typed() -> None:
    async with aiohttp.ClientSession() as session:
        provider = StripeLikeRefunds("http://127.0.0.1:9", "k", session, timeout_s=2)
        with pytest.raises(PaymentUnavailable):
            await provider.refund(REQ)

"""The Stripe-style refunds adapter against the simulated provider."""

from collections.abc import AsyncIterator

import aiohttp
import pytest

from gateway.payments.base import (
    PaymentDeclined,
    PaymentError,
    PaymentMalformedReply,
    PaymentTimeout,
    PaymentUnavailable,
    RefundRequest,
    RefundStatus,
)
from gateway.payments.merchant_system import MerchantSystemRefunds
from gateway.payments.stripe_like import StripeLikeRefunds
from simulator.merchant_system import MerchantKnobs, MerchantSystemSimulator
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


# ---- a merchant's own refund system, by signed webhook ----------------------------------------


async def _merchant(
    knobs: MerchantKnobs, secret: str = "m" * 32, timeout_s: float = 2.0
) -> AsyncIterator[tuple[MerchantSystemSimulator, MerchantSystemRefunds]]:
    sim = MerchantSystemSimulator("m" * 32, knobs=knobs)
    url = await sim.start()
    async with aiohttp.ClientSession() as session:
        yield (
            sim,
            MerchantSystemRefunds(
                "acme",
                url,
                secret,
                session,
                callback_url="http://127.0.0.1:9/cb",
                timeout_s=timeout_s,
            ),
        )
    await sim.stop()


async def test_merchant_system_refund_is_signed_and_idempotent_by_return() -> None:
    async for sim, provider in _merchant(MerchantKnobs()):
        first = await provider.refund(REQ)
        again = await provider.refund(REQ)
        assert first == again and first.status is RefundStatus.SUCCEEDED
        assert sim.refund_count("ret-1") == 1 and sim.rejected == {}
        assert await provider.lookup("ret-1") == first
        assert await provider.lookup("ret-unknown") is None
        assert provider.name == "merchant-system:acme"


async def test_merchant_system_faults_are_typed() -> None:
    async for sim, provider in _merchant(MerchantKnobs(), secret="x" * 32):
        with pytest.raises(PaymentDeclined, match="401"):
            await provider.refund(REQ)
        assert sim.rejected["refund_signature"] == 1 and sim.refund_count("ret-1") == 0
    async for sim, provider in _merchant(MerchantKnobs(malformed_rate=1.0)):
        with pytest.raises(PaymentMalformedReply):
            await provider.refund(REQ)
        assert sim.refund_count("ret-1") == 1, "made, though the reply was unreadable"
    async for sim, provider in _merchant(
        MerchantKnobs(timeout_rate=1.0, timeout_hold_s=2), timeout_s=0.3
    ):
        with pytest.raises(PaymentTimeout):
            await provider.refund(REQ)
        assert sim.refund_count("ret-1") == 1, "made; the reply came too late"
    async for sim, provider in _merchant(MerchantKnobs(error_rate=1.0)):
        with pytest.raises(PaymentError, match="500"):
            await provider.refund(REQ)
        assert sim.refund_count("ret-1") == 0
    async for _, provider in _merchant(MerchantKnobs(async_rate=1.0, callbacks=False)):
        pending = await provider.refund(REQ)
        assert pending.status is RefundStatus.PENDING


async def test_stripe_rate_limit_means_nothing_was_sent() -> None:
    async for sim, provider in _provider(PaymentKnobs(rate_limit_rate=1.0)):
        with pytest.raises(PaymentUnavailable, match="rate limited"):
            await provider.refund(REQ)
        assert sim.refund_count("ret-1") == 0

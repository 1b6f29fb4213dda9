"""Refunds exactly once: per-merchant policies, review, and the desk against the simulated
providers (Stripe-style API and a merchant's own system) through timeouts, crashes, 5xx,
declines and unreadable replies. Runs on SQLite and PostgreSQL."""

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from gateway import refunds
from gateway.config import RefundPolicy
from gateway.payments.base import PaymentProvider
from gateway.payments.merchant_system import MerchantSystemRefunds
from gateway.payments.stripe_like import StripeLikeRefunds
from gateway.refunds import RefundDecisionError, RefundDesk
from gateway.returns import ReturnState
from simulator.merchant_system import MerchantKnobs, MerchantSystemSimulator
from simulator.payments import PaymentKnobs, PaymentsSimulator
from tests.gateway_world import MERCHANT, Clock, World, open_world


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def _stripe(
    knobs: PaymentKnobs, session: aiohttp.ClientSession, timeout_s: float = 2.0
) -> tuple[PaymentsSimulator, dict[str, PaymentProvider]]:
    sim = PaymentsSimulator("sk_test", knobs=knobs)
    url = await sim.start()
    return sim, {"stripe": StripeLikeRefunds(url, "sk_test", session, timeout_s=timeout_s)}


async def _world(url: str, **kwargs: object) -> AsyncIterator[World]:
    async for w in open_world(url, **kwargs):  # type: ignore[arg-type]
        yield w


# ---- policies ---------------------------------------------------------------------------


async def test_on_dropoff_refund_is_asked_for_in_the_dropoffs_transaction(
    gateway_database: str,
) -> None:
    async for world in _world(gateway_database, policy=RefundPolicy.ON_DROPOFF):
        return_id = await world.create_return(1)
        with pytest.raises(RuntimeError):
            async with world.db.transaction() as tx:
                from gateway.returns import Cause, CauseKind, move

                await move(tx, return_id, ReturnState.DROPPED_OFF, Cause(CauseKind.EVENT, "e"))
                row = await tx.fetchone(
                    "SELECT status FROM refunds WHERE return_id = ?", (return_id,)
                )
                assert row == ("pending",), "asked for inside the drop-off's transaction"
                raise RuntimeError("the drop-off does not commit")
        assert await world.refund_row(return_id) is None, "and gone with it"
        await world.drop_off(return_id)
        assert (await world.refund_row(return_id) or {})["status"] == "pending"


async def test_on_receipt_waits_for_the_warehouse(gateway_database: str) -> None:
    async for world in _world(gateway_database):
        return_id = await world.create_return(1)
        await world.drop_off(return_id)
        await world.advance(return_id, ReturnState.IN_TOTE, ReturnState.SHIPPED)
        assert await world.refund_row(return_id) is None
        await world.advance(return_id, ReturnState.RECEIVED)
        assert (await world.refund_row(return_id) or {})["status"] == "pending"


async def test_manual_policy_waits_for_a_person(
    gateway_database: str, session: aiohttp.ClientSession
) -> None:
    async for world in _world(gateway_database, policy=RefundPolicy.MANUAL):
        sim, providers = await _stripe(PaymentKnobs(), session)
        desk = RefundDesk(world.db, providers)
        return_id = await world.create_return(1)
        await world.drop_off(return_id)
        await world.deliver(return_id)
        row = await world.refund_row(return_id)
        assert row is not None and (row["status"], row["review_reason"]) == (
            "review",
            "manual_policy",
        )
        assert await desk.process_due() == 0 and sim.requests == 0
        status = await refunds.decide(world.db, return_id, approve=True, operator="alice")
        assert status == "pending"
        assert await desk.process_due() == 1
        assert sim.refund_count(return_id) == 1
        assert await world.state(return_id) == "refunded"
        assert (await world.refund_row(return_id) or {})["decided_by"] == "alice"
        assert (await world.event_types(return_id))[-1] == "refund.issued"
        with pytest.raises(RefundDecisionError, match="succeeded"):
            await refunds.decide(world.db, return_id, approve=True, operator="bob")
        await sim.stop()


async def test_high_value_and_risk_flags_go_to_review(gateway_database: str) -> None:
    async for world in _world(
        gateway_database, policy=RefundPolicy.ON_DROPOFF, review_above_minor=5000
    ):
        cheap, dear, flagged = (
            await world.create_return(1),
            await world.create_return(2, refund={"amount_minor": 9000, "currency": "CNY"}),
            await world.create_return(3),
        )
        assert (
            await refunds.flag(world.db, flagged, "serial_returner", "3rd this week", "ops")
            is False
        )
        for r in (cheap, dear, flagged):
            await world.drop_off(r)
        reasons = [
            ((await world.refund_row(r)) or {}).get("review_reason") for r in (cheap, dear, flagged)
        ]
        assert reasons == [None, "high_value", "risk:serial_returner"]
        # A flag raised after the refund was asked for, before it was sent, holds it too.
        assert await refunds.flag(world.db, cheap, "chargeback", "", "ops") is True
        assert (await world.refund_row(cheap) or {})["status"] == "review"


async def test_rejecting_moves_the_return_to_exception(gateway_database: str) -> None:
    async for world in _world(gateway_database, policy=RefundPolicy.MANUAL):
        return_id = await world.create_return(1)
        with pytest.raises(RefundDecisionError, match="no parcel"):
            await refunds.decide(world.db, return_id, approve=True, operator="alice")
        await world.drop_off(return_id)
        status = await refunds.decide(
            world.db, return_id, approve=False, operator="alice", note="empty box"
        )
        assert status == "rejected"
        assert await world.state(return_id) == "exception"
        assert "return.exception" in await world.event_types(return_id)


async def test_refund_issued_early_and_refunded_on_receipt(
    gateway_database: str, session: aiohttp.ClientSession
) -> None:
    async for world in _world(gateway_database, policy=RefundPolicy.ON_DROPOFF):
        sim, providers = await _stripe(PaymentKnobs(), session)
        return_id = await world.create_return(1)
        await world.drop_off(return_id)
        assert await RefundDesk(world.db, providers).process_due() == 1
        assert sim.refund_count(return_id) == 1
        assert await world.state(return_id) == "dropped_off", "the parcel still travels"
        assert (await world.event_types(return_id))[-1] == "refund.issued"
        await world.deliver(return_id)
        assert await world.state(return_id) == "refunded", "both halves done"
        await sim.stop()


# ---- the desk against the Stripe-style API ----------------------------------------------------


async def test_timeout_leads_to_a_lookup_not_a_second_refund(
    gateway_database: str, session: aiohttp.ClientSession
) -> None:
    async for world in _world(gateway_database, policy=RefundPolicy.ON_DROPOFF):
        sim, providers = await _stripe(
            PaymentKnobs(timeout_rate=1.0, timeout_hold_s=3.0), session, timeout_s=0.3
        )
        clock = Clock(time.time())
        desk = RefundDesk(world.db, providers, clock=clock)
        return_id = await world.create_return(1)
        await world.drop_off(return_id)
        assert await desk.process_due() == 1
        assert (await world.refund_row(return_id) or {})["status"] == "unknown"
        clock.advance(refunds.RETRY_MAX_S)
        assert await desk.process_due() == 1
        assert (await world.refund_row(return_id) or {})["status"] == "succeeded"
        assert (sim.requests, sim.lookups, sim.refund_count(return_id)) == (1, 1, 1)
        assert desk.reconciled == 1
        await sim.stop()


@pytest.mark.parametrize("committed", [True, False], ids=["provider-committed", "never-arrived"])
async def test_crash_mid_send_is_reconciled_after_restart(
    gateway_database: str, session: aiohttp.ClientSession, committed: bool
) -> None:
    async for world in _world(gateway_database, policy=RefundPolicy.ON_DROPOFF):
        sim, providers = await _stripe(PaymentKnobs(), session)
        return_id = await world.create_return(1)
        await world.drop_off(return_id)
        sim.hold_requests()
        crashed = asyncio.create_task(RefundDesk(world.db, providers, lease_s=60).process_due())
        await sim.wait_until_held(1)
        crashed.cancel()  # the gateway dies with the call in flight
        with pytest.raises(asyncio.CancelledError):
            await crashed
        assert (await world.refund_row(return_id) or {})["status"] == "sending"
        sim.release(commit=committed)
        if committed:
            await sim.wait_for_refunds(1)

        clock = Clock(time.time())
        restarted = RefundDesk(world.db, providers, clock=clock)
        assert await restarted.recover_after_restart() == 0, "its lease has not run out yet"
        assert await restarted.process_due() == 0
        clock.advance(61)
        assert await restarted.recover_after_restart() == 1
        assert (await world.refund_row(return_id) or {})["status"] == "unknown"
        while await restarted.process_due():
            pass
        assert (await world.refund_row(return_id) or {})["status"] == "succeeded"
        assert sim.lookups == 1, "asked the provider first"
        assert sim.refund_count(return_id) == 1
        assert sim.requests == (1 if committed else 2), "resent only when it never arrived"
        await sim.stop()


async def test_decline_goes_to_an_operator(
    gateway_database: str, session: aiohttp.ClientSession
) -> None:
    async for world in _world(gateway_database, policy=RefundPolicy.ON_DROPOFF):
        sim, providers = await _stripe(PaymentKnobs(decline_rate=1.0), session)
        return_id = await world.create_return(1)
        await world.drop_off(return_id)
        desk = RefundDesk(world.db, providers)
        assert await desk.process_due() == 1
        assert (await world.refund_row(return_id) or {})["status"] == "failed"
        assert await world.state(return_id) == "exception"
        assert (await world.event_types(return_id))[-1] == "return.exception"
        assert await desk.process_due() == 0 and sim.refund_count(return_id) == 0
        await sim.stop()


async def test_rate_limit_and_5xx_never_double(
    gateway_database: str, session: aiohttp.ClientSession
) -> None:
    async for world in _world(gateway_database, policy=RefundPolicy.ON_DROPOFF):
        sim, providers = await _stripe(PaymentKnobs(rate_limit_rate=1.0), session)
        clock = Clock(time.time())
        desk = RefundDesk(world.db, providers, clock=clock)
        return_id = await world.create_return(1)
        await world.drop_off(return_id)
        assert await desk.process_due() == 1
        assert (await world.refund_row(return_id) or {})["status"] == "pending", "429: not sent"
        sim.knobs.rate_limit_rate, sim.knobs.malformed_rate = 0.0, 1.0
        clock.advance(refunds.RETRY_MAX_S)
        assert await desk.process_due() == 1
        assert (await world.refund_row(return_id) or {})["status"] == "unknown"
        sim.knobs.malformed_rate = 0.0
        clock.advance(refunds.RETRY_MAX_S)
        assert await desk.process_due() == 1
        assert (await world.refund_row(return_id) or {})["status"] == "succeeded"
        assert sim.refund_count(return_id) == 1 and sim.lookups == 1
        await sim.stop()


async def test_replicas_send_each_refund_once(
    gateway_database: str, session: aiohttp.ClientSession
) -> None:
    async for world in _world(gateway_database, policy=RefundPolicy.ON_DROPOFF):
        sim, providers = await _stripe(PaymentKnobs(latency_s=0.01), session)
        ids = [await world.create_return(n) for n in range(24)]
        for r in ids:
            await world.drop_off(r)
        desks = [RefundDesk(world.db, providers, batch=5, concurrency=3) for _ in range(3)]

        async def drain(desk: RefundDesk) -> None:
            while await desk.process_due():
                pass

        await asyncio.gather(*(drain(d) for d in desks))
        assert sim.requests == 24, "one POST per refund across three replicas"
        assert {r: sim.refund_count(r) for r in ids} == dict.fromkeys(ids, 1)
        assert sum(d.issued for d in desks) == 24
        await sim.stop()


# ---- the desk against a merchant's own system -------------------------------------------------


async def _merchant_world(
    url: str, knobs: MerchantKnobs, session: aiohttp.ClientSession, timeout_s: float = 2.0
) -> AsyncIterator[tuple[World, MerchantSystemSimulator, RefundDesk, Clock]]:
    sim = MerchantSystemSimulator("m" * 32, knobs=knobs)
    base = await sim.start()
    provider = MerchantSystemRefunds(
        MERCHANT,
        base,
        "m" * 32,
        session,
        callback_url="http://127.0.0.1:9/cb",
        timeout_s=timeout_s,
    )
    async for world in _world(
        url, policy=RefundPolicy.ON_DROPOFF, provider="merchant_system", merchant_system_url=base
    ):
        clock = Clock(time.time())
        yield world, sim, RefundDesk(world.db, {provider.name: provider}, clock=clock), clock
    await sim.stop()


async def _settle(desk: RefundDesk, clock: Clock, rounds: int = 6) -> None:
    for _ in range(rounds):
        await desk.process_due()
        clock.advance(refunds.RETRY_MAX_S)


async def test_merchant_system_pays_once_synchronously(
    gateway_database: str, session: aiohttp.ClientSession
) -> None:
    async for world, sim, desk, _ in _merchant_world(gateway_database, MerchantKnobs(), session):
        return_id = await world.create_return(1)
        await world.drop_off(return_id)
        assert (await world.refund_row(return_id) or {})["provider"] == "merchant-system:acme"
        assert await desk.process_due() == 1
        row = await world.refund_row(return_id)
        assert (
            row is not None and row["status"] == "succeeded" and row["refund_id"].startswith("mr_")
        )
        assert sim.refund_count(return_id) == 1 and sim.rejected == {}


@pytest.mark.parametrize(
    "knobs",
    [
        MerchantKnobs(timeout_rate=1.0, timeout_hold_s=3.0),
        MerchantKnobs(malformed_rate=1.0),
        MerchantKnobs(async_rate=1.0, async_delay_s=0.05, callbacks=False),
    ],
    ids=["timeout", "malformed", "pending-then-status-query"],
)
async def test_merchant_system_unknown_outcomes_are_reconciled(
    gateway_database: str, session: aiohttp.ClientSession, knobs: MerchantKnobs
) -> None:
    async for world, sim, desk, clock in _merchant_world(
        gateway_database, dataclasses.replace(knobs), session, timeout_s=0.3
    ):
        return_id = await world.create_return(1)
        await world.drop_off(return_id)
        assert await desk.process_due() == 1
        assert (await world.refund_row(return_id) or {})["status"] == "unknown"
        await sim.wait_for(lambda s=sim, r=return_id: s.refund_count(r) == 1)  # type: ignore[misc]
        sim.knobs.malformed_rate = sim.knobs.timeout_rate = 0.0
        await _settle(desk, clock)
        assert (await world.refund_row(return_id) or {})["status"] == "succeeded"
        assert sim.refund_requests == 1, "never asked twice"
        assert sim.status_queries >= 1
        assert sim.refund_count(return_id) == 1


async def test_merchant_system_5xx_is_asked_about_then_resent(
    gateway_database: str, session: aiohttp.ClientSession
) -> None:
    async for world, sim, desk, clock in _merchant_world(
        gateway_database, MerchantKnobs(error_rate=1.0), session
    ):
        return_id = await world.create_return(1)
        await world.drop_off(return_id)
        assert await desk.process_due() == 1
        assert (await world.refund_row(return_id) or {})["status"] == "unknown"
        sim.knobs.error_rate = 0.0
        await _settle(desk, clock)
        assert (await world.refund_row(return_id) or {})["status"] == "succeeded"
        assert (sim.refund_requests, sim.status_queries, sim.refund_count(return_id)) == (2, 1, 1)


async def test_merchant_system_decline(
    gateway_database: str, session: aiohttp.ClientSession
) -> None:
    async for world, sim, desk, _ in _merchant_world(
        gateway_database, MerchantKnobs(decline_rate=1.0), session
    ):
        return_id = await world.create_return(1)
        await world.drop_off(return_id)
        await desk.process_due()
        assert (await world.refund_row(return_id) or {})["status"] == "failed"
        assert await world.state(return_id) == "exception"
        assert sim.refund_count(return_id) == 0


async def test_callback_settles_a_pending_refund_once(
    gateway_database: str, session: aiohttp.ClientSession
) -> None:
    from gateway.payments.base import RefundResult, RefundStatus

    async for world, sim, desk, _ in _merchant_world(
        gateway_database, MerchantKnobs(async_rate=1.0, callbacks=False), session
    ):
        return_id = await world.create_return(1)
        await world.drop_off(return_id)
        await desk.process_due()
        result = RefundResult("mr_x", return_id, RefundStatus.SUCCEEDED, 2000, "CNY")
        outcomes = await asyncio.gather(
            *(
                refunds.apply_provider_result(world.db, "merchant-system:acme", result)
                for _ in range(3)
            )
        )
        assert sorted(outcomes) == ["already_final", "already_final", "recorded"]
        assert (await world.event_types(return_id)).count("refund.issued") == 1
        with pytest.raises(KeyError):
            await refunds.apply_provider_result(world.db, "stripe", result)
        assert sim.refund_requests == 1

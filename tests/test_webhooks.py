"""Outgoing webhooks: transactional outbox, signatures a merchant can verify, retries with
backoff, every attempt recorded, secret rotation, and replicas that never double-post.
Runs on SQLite and PostgreSQL; the receiver is the simulated merchant system on loopback."""

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from gateway import signatures, webhooks
from gateway.config import BackoffSettings, WebhookSettings
from gateway.webhooks import EventType, WebhookDispatcher
from simulator.merchant_system import MerchantSystemSimulator
from tests.gateway_world import MERCHANT, Clock, World, open_world


@pytest.fixture
async def world(gateway_database: str) -> AsyncIterator[World]:
    async for w in open_world(gateway_database):
        yield w


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[MerchantSystemSimulator, str]]:
    sim = MerchantSystemSimulator("r" * 32)
    url = await sim.start()
    yield sim, url + "/webhooks"
    await sim.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


SETTINGS = WebhookSettings(retry=BackoffSettings(base_s=10.0, max_s=1000.0, max_attempts=3))


async def _endpoint(world: World, sim: MerchantSystemSimulator, url: str) -> webhooks.Endpoint:
    endpoint = await webhooks.register_endpoint(world.db, MERCHANT, url, [])
    assert endpoint.secret is not None
    sim.webhook_secrets = [endpoint.secret]
    return endpoint


async def _deliveries(world: World) -> list[tuple[str, str, int]]:
    rows = await world.db.fetchall(
        "SELECT d.status, e.type, d.attempts FROM webhook_deliveries d "
        "JOIN webhook_events e ON e.id = d.event_id ORDER BY d.created_at"
    )
    return [(str(s), str(t), int(a)) for s, t, a in rows]


async def test_transitions_become_signed_webhooks_the_merchant_verifies(
    world: World,
    receiver: tuple[MerchantSystemSimulator, str],
    session: aiohttp.ClientSession,
) -> None:
    sim, url = receiver
    await _endpoint(world, sim, url)
    return_id = await world.create_return(1)
    await world.drop_off(return_id)
    await world.deliver(return_id)
    assert [t for _, t, _ in await _deliveries(world)] == [
        "return.authorized",
        "return.dropped_off",
        "return.received",
    ]

    dispatcher = WebhookDispatcher(world.db, session, SETTINGS)
    assert await dispatcher.process_due() == 3
    assert sim.rejected == {}, "every signature verified by the merchant's own check"
    received = {e["type"]: e for e in sim.events.values()}
    assert set(received) == {"return.authorized", "return.dropped_off", "return.received"}
    dropped = received["return.dropped_off"]["data"]
    assert (dropped["return_id"], dropped["previous_state"], dropped["store"]) == (
        return_id,
        "authorized",
        "store-1",
    )
    assert [s for s, _, _ in await _deliveries(world)] == ["delivered"] * 3
    attempts = await world.db.fetchall("SELECT attempt, status_code, error FROM webhook_attempts")
    assert sorted(attempts) == [(1, 200, None)] * 3
    assert await dispatcher.process_due() == 0, "nothing is sent twice"


async def test_a_webhook_exists_only_if_its_transaction_commits(
    world: World, receiver: tuple[MerchantSystemSimulator, str]
) -> None:
    sim, url = receiver
    await _endpoint(world, sim, url)
    with pytest.raises(RuntimeError):
        async with world.db.transaction() as tx:
            await webhooks.emit(tx, MERCHANT, EventType.RETURN_EXCEPTION, "k-1", {"x": 1})
            raise RuntimeError("the change behind it failed")
    assert await _deliveries(world) == []
    async with world.db.transaction() as tx:
        first = await webhooks.emit(tx, MERCHANT, EventType.RETURN_EXCEPTION, "k-1", {"x": 1})
        again = await webhooks.emit(tx, MERCHANT, EventType.RETURN_EXCEPTION, "k-1", {"x": 1})
    assert first is not None and again is None, "a dedupe key emits once"
    assert len(await _deliveries(world)) == 1


async def test_failures_back_off_with_jitter_then_die_and_can_be_redelivered(
    world: World,
    receiver: tuple[MerchantSystemSimulator, str],
    session: aiohttp.ClientSession,
) -> None:
    sim, url = receiver
    await _endpoint(world, sim, url)
    await world.create_return(1)
    clock = Clock(time.time())
    dispatcher = WebhookDispatcher(world.db, session, SETTINGS, clock=clock, rng=random.Random(1))
    sim.fail_next_webhooks(100)
    retry = SETTINGS.retry
    for attempt in (1, 2):
        assert await dispatcher.process_due() == 1
        row = await world.db.fetchone(
            "SELECT status, attempts, next_attempt_at FROM webhook_deliveries"
        )
        assert row is not None and row[0] == "pending" and row[1] == attempt
        full = retry.base_s * 2 ** (attempt - 1)
        assert full / 2 <= row[2] - clock.now <= full, "exponential backoff with jitter"
        assert await dispatcher.process_due() == 0, "not due before its backoff"
        clock.advance(full)
    assert await dispatcher.process_due() == 1
    assert await _deliveries(world) == [("dead", "return.authorized", 3)]
    assert dispatcher.dead == 1

    delivery_id = (
        await webhooks.list_deliveries(world.db, MERCHANT, status="dead", event_id=None, limit=5)
    )[0]["id"]
    sim.fail_next_webhooks(0)
    await webhooks.redeliver(world.db, MERCHANT, delivery_id)
    clock.now = time.time()
    assert await dispatcher.process_due() == 1
    detail = await webhooks.delivery_detail(world.db, MERCHANT, delivery_id)
    assert detail["status"] == "delivered"
    log = [(a["attempt"], a["status_code"], a["error"]) for a in detail["attempts_log"]]
    assert log == [(1, 500, "HTTP 500"), (2, 500, "HTTP 500"), (3, 500, "HTTP 500"), (4, 200, None)]
    assert all(a["latency_ms"] >= 0 for a in detail["attempts_log"])
    assert len(sim.events) == 1


async def test_unreachable_endpoint_is_recorded_as_an_error(
    world: World, session: aiohttp.ClientSession
) -> None:
    await webhooks.register_endpoint(world.db, MERCHANT, "http://127.0.0.1:9/hooks", [])
    await world.create_return(1)
    dispatcher = WebhookDispatcher(world.db, session, SETTINGS)
    assert await dispatcher.process_due() == 1
    row = await world.db.fetchone("SELECT status_code, error FROM webhook_attempts")
    assert row is not None and row[0] is None
    assert "Connect" in row[1], row[1]


async def test_endpoint_subscribes_to_some_events_only(
    world: World, receiver: tuple[MerchantSystemSimulator, str]
) -> None:
    _, url = receiver
    await webhooks.register_endpoint(world.db, MERCHANT, url, [EventType.RETURN_RECEIVED])
    return_id = await world.create_return(1)
    await world.drop_off(return_id)
    assert await _deliveries(world) == []
    await world.deliver(return_id)
    assert [t for _, t, _ in await _deliveries(world)] == ["return.received"]


async def test_secret_rotation_keeps_the_old_secret_valid_during_the_grace(
    world: World,
    receiver: tuple[MerchantSystemSimulator, str],
    session: aiohttp.ClientSession,
) -> None:
    sim, url = receiver
    endpoint = await _endpoint(world, sim, url)
    old = endpoint.secret
    assert old is not None
    rotated = await webhooks.rotate_secret(world.db, MERCHANT, endpoint.id, grace_s=3600)
    assert rotated.secret is not None and rotated.secret != old
    dispatcher = WebhookDispatcher(world.db, session, SETTINGS)
    for receiver_secrets in ([old], [rotated.secret]):
        sim.webhook_secrets = receiver_secrets
        await world.create_return(len(sim.events))
        assert await dispatcher.process_due() == 1
    assert len(sim.events) == 2 and sim.rejected == {}

    await webhooks.rotate_secret(world.db, MERCHANT, endpoint.id, grace_s=0)
    sim.webhook_secrets = [rotated.secret]  # now the old one
    await world.create_return(9)
    assert await dispatcher.process_due() == 1
    assert sim.rejected["webhook_signature"] == 1
    listed = await webhooks.list_endpoints(world.db, MERCHANT)
    assert [e.secret for e in listed] == [None], "secrets are never listed"


async def test_replicas_never_post_the_same_delivery_twice(
    world: World,
    receiver: tuple[MerchantSystemSimulator, str],
    session: aiohttp.ClientSession,
) -> None:
    sim, url = receiver
    await _endpoint(world, sim, url)
    for n in range(30):
        await world.create_return(n)
    settings = WebhookSettings(batch=7, concurrency=4)
    replicas = [WebhookDispatcher(world.db, session, settings) for _ in range(3)]

    async def drain(d: WebhookDispatcher) -> None:
        while await d.process_due():
            pass

    await asyncio.gather(*(drain(d) for d in replicas))
    assert sim.webhook_posts == 30 and sim.webhook_duplicates == 0
    assert sum(d.delivered for d in replicas) == 30


async def test_disabled_endpoint_cancels_its_pending_deliveries(
    world: World, receiver: tuple[MerchantSystemSimulator, str]
) -> None:
    sim, url = receiver
    endpoint = await _endpoint(world, sim, url)
    await world.create_return(1)
    await webhooks.disable_endpoint(world.db, MERCHANT, endpoint.id)
    assert await _deliveries(world) == [("cancelled", "return.authorized", 0)]
    await world.create_return(2)
    assert len(await _deliveries(world)) == 1, "a disabled endpoint gets no new deliveries"
    with pytest.raises(webhooks.UnknownEndpointError):
        await webhooks.disable_endpoint(world.db, "other", endpoint.id)


def test_signature_verification() -> None:
    body = json.dumps({"id": "evt_1"}).encode()
    header = signatures.sign(["new-secret", "old-secret"], body, now=1_000_000)
    assert signatures.verify(header, body, ["old-secret"], now=1_000_100) == 1_000_000
    assert signatures.verify(header, body, ["new-secret"], now=1_000_000) == 1_000_000
    with pytest.raises(signatures.SignatureError, match="tolerance"):
        signatures.verify(header, body, ["new-secret"], now=1_000_000 + 301)
    with pytest.raises(signatures.SignatureError, match="no signature matches"):
        signatures.verify(header, body + b" ", ["new-secret"], now=1_000_000)
    with pytest.raises(signatures.SignatureError, match="no signature matches"):
        signatures.verify(header, body, ["another"], now=1_000_000)
    for bad in (None, "", "v1=abc", "t=x,v1=abc", "garbage"):
        with pytest.raises(signatures.SignatureError):
            signatures.verify(bad, body, ["new-secret"], now=1_000_000)

"""Three gateway replicas on PostgreSQL share the kiosks' event stream (MQTT v5 shared
subscription); one is killed with SIGKILL in the middle of a burst of drop-offs. Nothing may
be lost or done twice: every return reaches ``refunded`` through each state once, with one
refund at the payment provider, and every kiosk's outbox drains.

The first replica runs in the test's process (so the test can read its database); the other
two are ``dropline gateway`` processes, the one killed among them."""

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dropline.gateway_process import GatewayProcess
from dropline.system import LocalSystem, SystemOptions
from gateway.config import RefundPolicy

pytestmark = pytest.mark.timeout(300)

RETURNS = 40


@pytest.fixture
async def system(tmp_path: Path, postgres_url: str) -> AsyncIterator[LocalSystem]:
    options = SystemOptions(
        database=postgres_url,
        replicas=3,
        kiosks_per_store=2,
        tote_max_items=8,
        refund_policy=RefundPolicy.ON_DROPOFF,
        screen=False,
    )
    s = LocalSystem(tmp_path, options)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


async def _metrics(replica: GatewayProcess) -> dict[str, Any]:
    key = replica.config.api.admin_key
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.get(f"{replica.url}/v1/metrics") as reply,
    ):
        assert reply.status == 200
        result: dict[str, Any] = await reply.json()
        return result


async def _kill_once_busy(replica: GatewayProcess, served: asyncio.Event) -> int:
    """SIGKILL ``replica`` as soon as it has stored events of its own (it is in the middle of
    the burst); returns how many it had stored."""
    while not served.is_set():
        stored = int((await _metrics(replica))["events_stored"])
        if stored > 0:
            replica.kill()
            return stored
        await asyncio.sleep(0.05)  # polling another process's counter: no event to await
    raise AssertionError("the burst ended before the replica stored an event")


async def test_a_replica_killed_mid_burst_loses_nothing(system: LocalSystem) -> None:
    returns = [await system.authorize_return(i, store="store-1") for i in range(RETURNS)]
    ids = [r["id"] for r in returns]
    victim = system.replicas[0]
    served = asyncio.Event()

    async def serve(k: int) -> None:
        for ret in returns[k :: len(system.kiosks)]:
            session = await system.kiosks[k].present(ret["voucher"]["token"])
            assert session.state == "done", (session.state, session.reason)

    async def burst() -> None:
        await asyncio.gather(*(serve(k) for k in range(len(system.kiosks))))
        served.set()

    stored_by_victim, _ = await asyncio.gather(_kill_once_busy(victim, served), burst())
    assert stored_by_victim > 0
    await system.wait_for_state(ids, "refunded", timeout_s=180)

    # The survivors carried on: the other process did work too.
    survivor = await _metrics(system.replicas[1])
    assert survivor["events_stored"] > 0

    # One refund per return where the money moves, one of each transition.
    assert {r: system.refunds_paid(r) for r in ids} == dict.fromkeys(ids, 1)
    gateway = system.gateway
    assert gateway is not None
    rows = await gateway.db.fetchall(
        "SELECT return_id, to_state FROM return_history WHERE to_state IN "
        "('dropped_off', 'in_tote', 'received', 'refunded')"
    )
    journey = ("dropped_off", "in_tote", "received", "refunded")
    assert Counter(rows) == Counter({(r, s): 1 for r in ids for s in journey})
    # Every drop-off stored once, whichever replica took it.
    dropoffs = await gateway.db.fetchall("SELECT count(*) FROM events WHERE type = 'dropoff'")
    assert dropoffs == [(RETURNS,)]
    for kiosk in system.kiosks:
        async with asyncio.timeout(60):
            await kiosk.agent.outbox.emptied.wait()
        assert await kiosk.agent.db.outbox_size() == 0

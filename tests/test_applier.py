"""The applier (ADR 0018): kiosk events are acked once stored and applied behind, by any
replica, after a crash too; one event that cannot be applied is set aside; ingest waits
when the applier is too far behind. Real databases (both backends), the real ingest and
drop-off desk."""

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

from gateway.applier import Applier
from gateway.config import ConsolidationRules
from gateway.database import Transaction
from gateway.dropoffs import DropoffDesk
from gateway.ingest import Ingest
from protocol import envelope, topics
from protocol.envelope import Envelope
from protocol.messages import Dropoff, DropoffMethod
from tests.gateway_world import MERCHANT, STORE, World, open_world


@pytest.fixture
async def world(gateway_database: str) -> AsyncIterator[World]:
    async for w in open_world(gateway_database):
        yield w


def dropoff_message(return_id: str, device: str, seq: int) -> tuple[str, bytes]:
    body = Dropoff(
        return_id=return_id,
        merchant=MERCHANT,
        method=DropoffMethod.LOCKER,
        compartment="A1",
        size="M",
        items=1,
        voucher_kid="k0000",
        scanned_at=1.0,
        accepted_at=1.0,
    )
    env = envelope.make(body, store=STORE, device=device, seq=seq, session=1)
    return topics.event(STORE, device, "dropoff"), envelope.encode(env)


async def unsequenced(world: World) -> int:
    row = await world.db.fetchone("SELECT count(*) FROM events WHERE sequenced = 0")
    assert row is not None
    return int(row[0])


class Run:
    """An applier running in the background; ``worked`` is set whenever it made work."""

    def __init__(self, ingest: Ingest, *, lag_limit: int = 1000, link_busy: bool = False) -> None:
        self.worked = asyncio.Event()
        idle = asyncio.Event()
        if not link_busy:
            idle.set()  # no link: ingest is always idle
        self.applier = Applier(
            ingest,
            batch=100,
            lag_limit=lag_limit,
            max_lag_s=0.2,
            ingest_idle=idle,
            on_work=self.worked.set,
        )
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.applier.run())
        self.applier.wake()

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.wait([self.task])


async def test_stored_events_are_applied_after_a_restart(world: World) -> None:
    """A gateway stored (and acked) drop-offs and died before applying them: the next
    applier, of this replica or another, applies them from the events table."""
    returns = [await world.create_return(n) for n in range(3)]
    crashed = Ingest(world.db)
    batch = [dropoff_message(rid, "kiosk-1", seq) for seq, rid in enumerate(returns, start=1)]
    stored = await crashed.handle(batch)
    assert stored.new == 3
    assert stored.acks[(STORE, "kiosk-1")] == [
        str(envelope.decode(p, "dropoff").id) for _, p in batch
    ]
    assert [await world.state(r) for r in returns] == ["authorized"] * 3
    assert await unsequenced(world) == 3

    restarted = Ingest(world.db)
    restarted.on("dropoff", DropoffDesk(ConsolidationRules()).apply)
    run = Run(restarted)
    run.start()
    await asyncio.wait_for(run.worked.wait(), 30)
    await run.stop()
    assert [await world.state(r) for r in returns] == ["in_tote"] * 3
    assert await unsequenced(world) == 0
    assert restarted.stats.applied == 3


async def test_events_kept_decoded_and_those_evicted_apply_alike(world: World) -> None:
    """The replica that stored events keeps the newest decoded for applying them; older
    ones (beyond the limit) are decoded from the events table, in the same seq order."""
    returns = [await world.create_return(n) for n in range(5)]
    ingest = Ingest(world.db, kept_decoded=2)
    ingest.on("dropoff", DropoffDesk(ConsolidationRules()).apply)
    messages = [dropoff_message(rid, "kiosk-1", seq) for seq, rid in enumerate(returns, 1)]
    for message in messages:
        assert (await ingest.handle([message])).new == 1
    assert (await ingest.handle(messages[:1])).new == 0, "a resend is a duplicate"
    assert (await ingest.apply_stored(100)).taken == 5
    assert [await world.state(r) for r in returns] == ["in_tote"] * 5
    assert ingest.stats.applied == 5 and ingest.stats.late == 0
    history = await world.db.fetchall(
        "SELECT return_id FROM return_history WHERE cause_kind = 'event' ORDER BY id"
    )
    assert [r[0] for r in history] == returns, "applied in seq order"


async def test_an_event_that_cannot_be_applied_is_set_aside_and_the_rest_applied(
    world: World,
) -> None:
    returns = [await world.create_return(n) for n in range(4)]
    bad = returns[2]
    desk = DropoffDesk(ConsolidationRules())

    async def fragile(tx: Transaction, events: Sequence[Envelope[Any]]) -> bool:
        if any(e.body.return_id == bad for e in events):
            raise ValueError(f"cannot take {bad}")
        return await desk.apply(tx, events)

    ingest = Ingest(world.db)
    ingest.on("dropoff", fragile)
    # One device per return, so that the bad one holds up no other's sequence.
    await ingest.handle([dropoff_message(r, f"kiosk-{n}", 1) for n, r in enumerate(returns)])
    run = Run(ingest)
    run.start()
    await until(lambda: ingest.stats.apply_failures == 1, run.worked)
    await run.stop()

    assert [await world.state(r) for r in returns] == [
        "in_tote",
        "in_tote",
        "authorized",
        "in_tote",
    ]
    dead = await world.db.fetchall("SELECT reason, detail FROM dead_letters")
    assert [(reason, bad in detail) for reason, detail in dead] == [("handler_failed", True)]
    assert await unsequenced(world) == 0


async def test_ingest_waits_while_the_applier_is_twice_its_lag_limit_behind(
    world: World,
) -> None:
    returns = [await world.create_return(n) for n in range(5)]
    ingest = Ingest(world.db)
    ingest.on("dropoff", DropoffDesk(ConsolidationRules()).apply)
    run = Run(ingest, lag_limit=2)
    stored = await ingest.handle(
        [dropoff_message(r, "kiosk-1", seq) for seq, r in enumerate(returns, start=1)]
    )
    run.applier.stored(stored.new)
    room = asyncio.create_task(run.applier.room())
    await asyncio.sleep(0)  # one step of the task: room() returns in it unless it must wait
    assert not room.done()  # 5 waiting ≥ 2 × 2: ingest must wait

    run.start()
    await asyncio.wait_for(room, 30)
    await until(lambda: run.applier.lag == 0, run.worked)
    await run.stop()
    assert [await world.state(r) for r in returns] == ["in_tote"] * 5


async def test_a_link_that_is_never_idle_does_not_starve_the_applier(world: World) -> None:
    """Ingest goes first, but an event waits at most ``max_lag_s`` for its turn."""
    returns = [await world.create_return(n) for n in range(3)]
    ingest = Ingest(world.db)
    ingest.on("dropoff", DropoffDesk(ConsolidationRules()).apply)
    run = Run(ingest, link_busy=True)
    stored = await ingest.handle(
        [dropoff_message(r, "kiosk-1", seq) for seq, r in enumerate(returns, start=1)]
    )
    run.applier.stored(stored.new)
    run.start()
    await asyncio.wait_for(run.worked.wait(), 30)
    await run.stop()
    assert [await world.state(r) for r in returns] == ["in_tote"] * 3


async def until(condition: Callable[[], bool], signal: asyncio.Event) -> None:
    """Wait for ``condition``, re-checked whenever the applier signals work."""

    async def waiting() -> None:
        while not condition():
            await signal.wait()
            signal.clear()

    await asyncio.wait_for(waiting(), 30)

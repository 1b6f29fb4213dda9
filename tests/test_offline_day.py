"""A day without the gateway, compressed: 500 drop-offs over two kiosks across a broker outage,
a broker restart and an agent restart, through the agents' real code paths (codes handed to
the agent as the scanner would, doors on simulated pins, the clerk scanning bag and tote
labels when the lockers are full). None is lost, none is doubled, replays are historical."""

import asyncio
import json
from collections import Counter
from pathlib import Path

import pytest

from dropline.system import LocalSystem, SystemOptions
from edge.agent import EdgeAgent
from edge.session import KioskSession, SessionState
from simulator.kiosk import SimulatedKiosk

pytestmark = pytest.mark.timeout(300)

TOTAL = 500


def _clerk_at_counter(kiosk: SimulatedKiosk) -> None:
    """Scans the bag label, then a tote label, whenever the kiosk asks for them."""
    agent = kiosk.agent
    loop = asyncio.get_running_loop()
    scans: set[asyncio.Task[KioskSession | None]] = set()

    def scan(code: str) -> None:
        task = loop.create_task(agent.handle_code(code))
        scans.add(task)
        task.add_done_callback(scans.discard)

    def on_session(session: KioskSession) -> None:
        if session.state is SessionState.AWAIT_BAG and session.bag_id:
            scan(session.bag_id)
        elif session.state is SessionState.AWAIT_TOTE:
            scan("TOTE-0001")

    agent.session_listeners.append(on_session)


async def _drop(kiosk: SimulatedKiosk, tokens: list[str]) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    for token in tokens:
        session = await kiosk.agent.handle_code(token)
        assert session is not None
        assert session.state == "done", (session.state, session.reason)
        outcomes[session.kind.value] += 1
    return outcomes


async def _phase(system: LocalSystem, tokens: list[str]) -> Counter[str]:
    halves = [tokens[i :: len(system.kiosks)] for i in range(len(system.kiosks))]
    results = await asyncio.gather(
        *(_drop(k, t) for k, t in zip(system.kiosks, halves, strict=True))
    )
    return sum(results, Counter())


async def test_500_dropoffs_across_outage_and_restarts(tmp_path: Path) -> None:
    options = SystemOptions(
        kiosks_per_store=2, kiosk_mode="both", tote_max_items=25, tote_max_age_s=3600,
        screen=False, camera_fps=2.0,
    )  # fmt: skip
    system = LocalSystem(tmp_path, options)
    await system.start()
    try:
        for kiosk in system.kiosks:
            _clerk_at_counter(kiosk)
        returns = []
        for start in range(0, TOTAL, 50):
            returns += await asyncio.gather(
                *(system.authorize_return(n, store="store-1") for n in range(start, start + 50))
            )
        tokens = [r["voucher"]["token"] for r in returns]
        kinds = await _phase(system, tokens[:100])

        await system.broker.stop()
        for kiosk in system.kiosks:
            await asyncio.wait_for(kiosk.agent.link.disconnected.wait(), 30)
        kinds += await _phase(system, tokens[100:250])
        # The agent of kiosk 1 restarts (power cut, update) while still offline.
        old = system.kiosks[0]
        await old.agent.stop()
        old.agent = EdgeAgent(old.agent.config, old.agent.devices)
        await old.agent.start()
        _clerk_at_counter(old)
        kinds += await _phase(system, tokens[250:400])
        offline_backlog = sum([await k.agent.db.outbox_size() for k in system.kiosks])
        assert offline_backlog >= 300

        await system.broker.start()
        kinds += await _phase(system, tokens[400:])
        assert sum(kinds.values()) == TOTAL
        assert kinds["counter"] > 0 and kinds["dropoff"] > 0, kinds
        for kiosk in system.kiosks:
            await asyncio.wait_for(kiosk.agent.outbox.emptied.wait(), 120)

        gateway = system.gateway
        assert gateway is not None
        rows = await gateway.db.fetchall(
            "SELECT envelope, historical, device FROM events WHERE type = 'dropoff'"
        )
        dropped = Counter(json.loads(env)["body"]["return_id"] for env, _, _ in rows)
        ids = {r["id"] for r in returns}
        assert set(dropped) == ids, "none lost"
        assert set(dropped.values()) == {1}, "none doubled"
        assert sum(int(h) for _, h, _ in rows) >= 300, "the offline ones replayed as historical"
        states = Counter((await system.states(sorted(ids))).values())
        assert not {"authorized", "exception"} & set(states), states
    finally:
        await system.stop()

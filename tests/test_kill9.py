"""Power can fail at any instruction (DESIGN §5 rule 8): kill -9 the agent between the door
closing and the outbox commit, again and again, and check that nothing the shopper was told
was accepted is lost, and nothing is accepted twice."""

import asyncio
import random
import signal
import sqlite3
import sys
from pathlib import Path

import pytest

from dropline.broker import free_port
from edge.database import EdgeDatabase
from protocol.sizes import SizeClass
from tests.kiosk_rig import Issuer, edge_config

pytestmark = pytest.mark.timeout(240)

ROUNDS = 12


async def _start(config: Path, prints: Path) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulator.kiosk_process", str(config), str(prints),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).parents[1],
    )  # fmt: skip
    assert process.stdout is not None
    assert (await asyncio.wait_for(process.stdout.readline(), 60)).strip() == b"READY"
    return process


async def test_kill_minus_9_between_door_close_and_commit_loses_nothing(tmp_path: Path) -> None:
    issuer = Issuer()
    config = edge_config(tmp_path, free_port(), screen={"enabled": False})
    db = await EdgeDatabase.open(config.database)
    await db.save_store_config(issuer.store_config())
    await db.close()
    config_file = tmp_path / "edge.json"
    config_file.write_text(config.model_dump_json())
    rng = random.Random(9)
    told_accepted: set[str] = set()
    kills = 0
    process = await _start(config_file, tmp_path / "prints")
    try:
        for round_no in range(ROUNDS):
            assert process.stdin is not None and process.stdout is not None
            kill_now = round_no % 3 != 2  # every third round runs to the end
            for _ in range(3):
                process.stdin.write((issuer.voucher(SizeClass.S) + "\n").encode())
            await process.stdin.drain()
            answered = 0
            while answered < 3:
                line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode().split()
                if line and line[0] == "ACCEPTED":
                    told_accepted.add(line[1])
                if line and line[0] in ("ACCEPTED", "REJECTED"):
                    answered += 1
                if line and line[0] == "CLOSED" and kill_now:
                    # Anywhere from "the door is shut" to a little after the commit.
                    await asyncio.sleep(rng.uniform(0, 0.02))
                    process.send_signal(signal.SIGKILL)
                    await process.wait()
                    kills += 1
                    process = await _start(config_file, tmp_path / "prints")
                    break
            _empty_lockers(config.database)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert kills >= 8
    with sqlite3.connect(config.database) as raw:
        query = "SELECT json_extract(body, '$.return_id') FROM outbox WHERE type = 'dropoff'"
        dropoffs = [r[0] for r in raw.execute(query)]
        used = {r[0] for r in raw.execute("SELECT return_id FROM used_vouchers")}
    assert told_accepted, "some drop-offs completed"
    assert told_accepted <= set(dropoffs), "every drop-off the shopper was told of is kept"
    assert len(dropoffs) == len(set(dropoffs)), "none is recorded twice"
    assert set(dropoffs) == used, "voucher use and drop-off event were committed together"


def _empty_lockers(path: Path) -> None:
    """The clerk empties the lockers between rounds so every round has free doors."""
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE compartments SET occupied_by = NULL, occupant_kind = NULL")

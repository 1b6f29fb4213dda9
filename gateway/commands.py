"""Commands to kiosks through a transactional outbox (DESIGN §5 rule 6).

A command row is written in the same transaction as the state change behind it and
published only after that commit; kiosks drop command ids they have already seen.
Commands are never retained (rule 1).
"""

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pydantic import BaseModel

from gateway.database import Database, Transaction
from protocol import envelope, topics
from protocol.envelope import Envelope
from protocol.messages import BODY_TYPES, CommandResult

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], Awaitable[None]]


async def enqueue(
    tx: Transaction, *, store: str, device: str, command_id: str, body: BaseModel
) -> None:
    """Queue ``body`` for the kiosk; it leaves after the surrounding transaction commits."""
    await tx.execute(
        "INSERT INTO commands (id, store, device, name, body, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (
            command_id,
            store,
            device,
            envelope.message_type(body),
            body.model_dump_json(),
            time.time(),
        ),
    )


async def record_results(tx: Transaction, events: Sequence[Envelope[Any]]) -> bool:
    """Kiosks reported commands' outcomes (the ``cmd_result`` event handler)."""
    now = time.time()
    results: list[CommandResult] = [e.body for e in events]
    await tx.executemany(
        "UPDATE commands SET outcome = ?, outcome_at = ? WHERE id = ?",
        [(r.outcome.value, now, r.command_id) for r in results],
    )
    return False


class CommandDispatcher:
    """Publishes committed, unsent commands."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._seq = 0
        self.sent = 0

    async def dispatch(self, publish: Publish) -> int:
        """Send every unsent command; returns how many went out."""
        rows = await self._db.fetchall(
            "SELECT id, store, device, name, body FROM commands WHERE sent_at IS NULL "
            "ORDER BY created_at LIMIT 500"
        )
        for command_id, store, device, name, body in rows:
            model = BODY_TYPES[name].model_validate_json(body)
            self._seq += 1
            env = envelope.make(model, store=store, device=device, seq=self._seq, session=0)
            await publish(topics.command(store, device, name), envelope.encode(env))
            async with self._db.transaction() as tx:
                await tx.execute(
                    "UPDATE commands SET sent_at = ? WHERE id = ?", (time.time(), command_id)
                )
            self.sent += 1
            log.info("command %s (%s) sent to %s/%s", command_id, name, store, device)
        return len(rows)

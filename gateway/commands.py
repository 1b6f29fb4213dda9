"""Commands to kiosks through a transactional outbox (DESIGN §5 rule 6).

A command row is written in the same transaction as the state change behind it and
published only after that commit; kiosks drop command ids they have already seen.
Commands are never retained (rule 1).
"""

import json
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


RESEND_AFTER_S = 60.0
"""A command the kiosk has not answered is sent again after this long, until it expires.
Kiosks drop ids they have seen, and report outcomes through their outbox, so a resend only
matters when the first never arrived (the kiosk was away, or the sending replica died)."""


class CommandDispatcher:
    """Publishes committed commands that have not been answered."""

    def __init__(self, db: Database, resend_after_s: float = RESEND_AFTER_S) -> None:
        self._db = db
        self._resend_after_s = resend_after_s
        self._seq = 0
        self.sent = 0
        self.expired = 0

    async def dispatch(self, publish: Publish) -> int:
        """Send every due command; returns how many went out."""
        rows = await self._claim(time.time())
        for index, (command_id, store, device, name, body) in enumerate(rows):
            model = BODY_TYPES[name].model_validate_json(body)
            self._seq += 1
            env = envelope.make(model, store=store, device=device, seq=self._seq, session=0)
            try:
                await publish(topics.command(store, device, name), envelope.encode(env))
            except Exception:
                await self._unclaim([str(r[0]) for r in rows[index:]])
                raise
            self.sent += 1
            log.info("command %s (%s) sent to %s/%s", command_id, name, store, device)
        return len(rows)

    async def _claim(self, now: float) -> list[tuple[Any, ...]]:
        """Due commands, stamped as sent in a transaction that skips rows another replica
        holds; expired ones are closed instead of sent."""
        async with self._db.transaction() as tx:
            rows = await tx.fetchall(
                "SELECT id, store, device, name, body FROM commands WHERE outcome IS NULL "
                "AND (sent_at IS NULL OR sent_at <= ?) ORDER BY created_at LIMIT 500"
                + tx.for_update(skip_locked=True),
                (now - self._resend_after_s,),
            )
            expired = [r for r in rows if _expires_at(str(r[4])) <= now]
            live = [r for r in rows if _expires_at(str(r[4])) > now]
            await tx.executemany(
                "UPDATE commands SET outcome = 'expired', outcome_at = ? WHERE id = ?",
                [(now, r[0]) for r in expired],
            )
            await tx.executemany(
                "UPDATE commands SET sent_at = ? WHERE id = ?", [(now, r[0]) for r in live]
            )
        self.expired += len(expired)
        return live

    async def _unclaim(self, command_ids: list[str]) -> None:
        """The broker went away mid-way: these go out first when it is back."""
        async with self._db.transaction() as tx:
            await tx.executemany(
                "UPDATE commands SET sent_at = NULL WHERE id = ?", [(c,) for c in command_ids]
            )


def _expires_at(body: str) -> float:
    return float(json.loads(body)["expires_at"])

"""Claiming timed work so that several gateway replicas never do the same job at once.

A job table has a text key, a ``status``, a ``next_attempt_at`` and a ``claim`` column. A
worker selects due rows with ``FOR UPDATE SKIP LOCKED`` (on PostgreSQL; SQLite's write
transactions already exclude each other), and in the same transaction stamps them with its
claim token and pushes ``next_attempt_at`` out by a lease. A worker that dies mid-job
leaves the row to become due again when the lease ends. Results are written back only
``WHERE claim = <token>``, so a worker whose lease ran out cannot overwrite a newer one.

Retries back off exponentially with jitter (:func:`backoff_delay`).
"""

import random
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.database import Row, Transaction, placeholders
from protocol.ids import new_id


@dataclass(frozen=True)
class JobTable:
    """Where a kind of job lives: the table and its key column."""

    table: str
    key: str = "id"


@dataclass(frozen=True)
class Claimed:
    """Rows claimed under one token."""

    token: str
    rows: list[Row]


async def claim_due(
    tx: Transaction,
    jobs: JobTable,
    *,
    columns: Sequence[str],
    statuses: Sequence[str],
    now: float,
    lease_s: float,
    limit: int,
) -> Claimed:
    """Claim up to ``limit`` due rows in ``statuses``; each row is ``(key, *columns)``."""
    token = new_id()
    selected = ", ".join([jobs.key, *columns])
    rows = await tx.fetchall(
        f"SELECT {selected} FROM {jobs.table} "
        f"WHERE status IN ({placeholders(len(statuses))}) AND next_attempt_at <= ? "
        f"ORDER BY next_attempt_at LIMIT ?{tx.for_update(skip_locked=True)}",
        (*statuses, now, limit),
    )
    if rows:
        await tx.execute(
            f"UPDATE {jobs.table} SET claim = ?, next_attempt_at = ? "
            f"WHERE {jobs.key} IN ({placeholders(len(rows))})",
            (token, now + lease_s, *(r[0] for r in rows)),
        )
    return Claimed(token, rows)


def backoff_delay(
    attempts: int, *, base_s: float, max_s: float, rng: random.Random, jitter: float = 0.5
) -> float:
    """Seconds to wait after ``attempts`` failures: ``base·2^(attempts-1)`` capped at
    ``max_s``, minus up to ``jitter`` of it at random so that retries spread out."""
    delay = min(max_s, base_s * 2.0 ** max(0, attempts - 1))
    return delay * (1.0 - jitter * rng.random())

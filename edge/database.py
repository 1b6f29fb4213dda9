"""The kiosk's one SQLite file: outbox, used vouchers, revocations, keys, compartments,
seen command ids and the cached store config (DESIGN §7).

WAL with ``synchronous=FULL``: power can fail at any instruction (DESIGN §5 rule 8), and a
drop-off the shopper was told about must survive it.
"""

import asyncio
import functools
import json
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import aiosqlite

from protocol.messages import StoreConfig
from protocol.sizes import SizeClass

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq        INTEGER PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    type       TEXT NOT NULL,
    session    INTEGER NOT NULL,
    ts         REAL NOT NULL,
    body       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS used_vouchers (
    return_id  TEXT PRIMARY KEY,
    used_at    REAL NOT NULL,
    event_id   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS compartments (
    id          TEXT PRIMARY KEY,
    size        INTEGER NOT NULL,
    occupied_by TEXT,
    out_of_order INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS seen_commands (id TEXT PRIMARY KEY, seen_at REAL NOT NULL);
"""


@dataclass(frozen=True)
class OutboxRow:
    """An event the gateway has not acknowledged yet."""

    seq: int
    id: str
    type: str
    session: int
    ts: float
    body: str


P = ParamSpec("P")
T = TypeVar("T")


def _serialized(
    method: Callable[Concatenate["EdgeDatabase", P], Awaitable[T]],
) -> Callable[Concatenate["EdgeDatabase", P], Coroutine[Any, Any, T]]:
    """Run one public method at a time on the shared connection."""

    @functools.wraps(method)
    async def serialized(self: "EdgeDatabase", /, *args: P.args, **kwargs: P.kwargs) -> T:
        async with self._lock:
            return await method(self, *args, **kwargs)

    return serialized


class EdgeDatabase:
    """Async access to the kiosk's SQLite file. One connection; writes are serialized."""

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._db = connection
        # One connection serves every task of the agent: a transaction or a read with an
        # open cursor must not interleave with another task's statements on it.
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> "EdgeDatabase":
        """Open (creating if needed) the database at ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, isolation_level=None)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute("PRAGMA busy_timeout=5000")
        await db.executescript(SCHEMA)
        return cls(db)

    async def close(self) -> None:
        """Close the connection."""
        await self._db.close()

    # ---- counters -----------------------------------------------------------------------

    async def _meta(self, key: str) -> str | None:
        async with self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)) as cur:
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def _set_meta(self, key: str, value: str) -> None:
        await self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    @_serialized
    async def next_session(self) -> int:
        """Count one more start of the agent; the session number goes in every envelope."""
        session = int(await self._meta("session") or 0) + 1
        await self._set_meta("session", str(session))
        return session

    # ---- store config -------------------------------------------------------------------

    @_serialized
    async def store_config(self) -> StoreConfig | None:
        """The last store config the gateway sent, if any."""
        text = await self._meta("store_config")
        return None if text is None else StoreConfig.model_validate_json(text)

    @_serialized
    async def save_store_config(self, config: StoreConfig) -> bool:
        """Keep ``config`` unless an equal or newer version is already kept."""
        text = await self._meta("store_config")
        current = None if text is None else StoreConfig.model_validate_json(text)
        if current is not None and current.version >= config.version:
            return False
        await self._set_meta("store_config", config.model_dump_json())
        return True

    # ---- compartments -------------------------------------------------------------------

    @_serialized
    async def sync_compartments(self, compartments: Iterable[tuple[str, SizeClass]]) -> None:
        """Make the table match the pin map, keeping the occupancy of known compartments."""
        items = list(compartments)
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            for cid, size in items:
                await self._db.execute(
                    "INSERT INTO compartments (id, size) VALUES (?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET size = excluded.size",
                    (cid, int(size)),
                )
            placeholders = ",".join("?" * len(items))
            await self._db.execute(
                f"DELETE FROM compartments WHERE id NOT IN ({placeholders})",
                [cid for cid, _ in items],
            )
            await self._db.execute("COMMIT")
        except BaseException:
            await self._db.execute("ROLLBACK")
            raise

    @_serialized
    async def free_compartments(self, size: SizeClass) -> list[str]:
        """Free, working compartments a parcel of ``size`` fits, smallest first."""
        async with self._db.execute(
            "SELECT id FROM compartments WHERE occupied_by IS NULL AND out_of_order = 0 "
            "AND size >= ? ORDER BY size, id",
            (int(size),),
        ) as cur:
            return [str(r[0]) for r in await cur.fetchall()]

    @_serialized
    async def set_out_of_order(self, compartment: str, out_of_order: bool) -> None:
        """Take a compartment out of service (jammed, left open) or put it back."""
        await self._db.execute(
            "UPDATE compartments SET out_of_order = ? WHERE id = ?",
            (int(out_of_order), compartment),
        )

    @_serialized
    async def release_compartment(self, compartment: str) -> None:
        """The courier emptied it."""
        await self._db.execute(
            "UPDATE compartments SET occupied_by = NULL WHERE id = ?", (compartment,)
        )

    @_serialized
    async def release_returns(self, return_ids: Sequence[str]) -> list[str]:
        """Free the compartments holding these returns; returns the compartments freed."""
        if not return_ids:
            return []
        placeholders = ",".join("?" * len(return_ids))
        async with self._db.execute(
            f"UPDATE compartments SET occupied_by = NULL WHERE occupied_by IN ({placeholders}) "
            "RETURNING id",
            list(return_ids),
        ) as cur:
            return [str(r[0]) for r in await cur.fetchall()]

    @_serialized
    async def occupancy(self) -> dict[str, str | None]:
        """Compartment id → return id of the parcel in it (None when free)."""
        async with self._db.execute("SELECT id, occupied_by FROM compartments") as cur:
            return {str(r[0]): (None if r[1] is None else str(r[1])) for r in await cur.fetchall()}

    # ---- vouchers -----------------------------------------------------------------------

    @_serialized
    async def voucher_used(self, return_id: str) -> bool:
        """True when this return was already dropped off here."""
        async with self._db.execute(
            "SELECT 1 FROM used_vouchers WHERE return_id = ?", (return_id,)
        ) as cur:
            return await cur.fetchone() is not None

    # ---- outbox -------------------------------------------------------------------------

    @_serialized
    async def append_event(
        self,
        *,
        event_id: str,
        event_type: str,
        session: int,
        body: str,
        used_return: str | None = None,
        occupy: str | None = None,
    ) -> int:
        """Write one event to the outbox and return its ``seq``.

        In the same transaction it can mark a voucher used and a compartment occupied, so a
        crash leaves either all of a drop-off or none of it (DESIGN §2, flow 2).
        """
        now = time.time()
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            seq = await self._next_seq()
            await self._db.execute(
                "INSERT INTO outbox (seq, id, type, session, ts, body) VALUES (?, ?, ?, ?, ?, ?)",
                (seq, event_id, event_type, session, now, body),
            )
            if used_return is not None:
                await self._db.execute(
                    "INSERT INTO used_vouchers (return_id, used_at, event_id) VALUES (?, ?, ?)",
                    (used_return, now, event_id),
                )
            if occupy is not None:
                await self._db.execute(
                    "UPDATE compartments SET occupied_by = ? WHERE id = ?", (used_return, occupy)
                )
            await self._db.execute("COMMIT")
        except BaseException:
            await self._db.execute("ROLLBACK")
            raise
        return seq

    async def _next_seq(self) -> int:
        # seq never goes back, even after the outbox is emptied: keep the high-water mark.
        seq = int(await self._meta("seq") or 0) + 1
        await self._set_meta("seq", str(seq))
        return seq

    @_serialized
    async def pending(self, after_seq: int = 0, limit: int = 100) -> list[OutboxRow]:
        """Unacknowledged events after ``after_seq``, in ``seq`` order."""
        async with self._db.execute(
            "SELECT seq, id, type, session, ts, body FROM outbox WHERE seq > ? "
            "ORDER BY seq LIMIT ?",
            (after_seq, limit),
        ) as cur:
            rows = await cur.fetchall()
        return [
            OutboxRow(int(r[0]), str(r[1]), str(r[2]), int(r[3]), float(r[4]), str(r[5]))
            for r in rows
        ]

    @_serialized
    async def acknowledge(self, event_ids: Sequence[str]) -> int:
        """Delete events the gateway committed; returns how many were still here."""
        if not event_ids:
            return 0
        placeholders = ",".join("?" * len(event_ids))
        cur = await self._db.execute(
            f"DELETE FROM outbox WHERE id IN ({placeholders})",
            list(event_ids),
        )
        return cur.rowcount

    @_serialized
    async def outbox_size(self) -> int:
        """How many events wait for the gateway's ack."""
        async with self._db.execute("SELECT count(*) FROM outbox") as cur:
            row = await cur.fetchone()
        return 0 if row is None else int(row[0])

    # ---- commands -----------------------------------------------------------------------

    @_serialized
    async def first_sight_of_command(self, command_id: str) -> bool:
        """Record a command id; False when it was seen before (then ignore the command)."""
        cur = await self._db.execute(
            "INSERT INTO seen_commands (id, seen_at) VALUES (?, ?) ON CONFLICT (id) DO NOTHING",
            (command_id, time.time()),
        )
        return cur.rowcount == 1


def dumps(data: object) -> str:
    """Compact JSON for the outbox body column."""
    return json.dumps(data, separators=(",", ":"))

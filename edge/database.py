"""The kiosk's one SQLite file: outbox, used vouchers, revocations, keys, compartments,
seen command ids, the cached store config, and what a day offline needs: typed short codes
of this store's vouchers and the pickup codes of the parcels in the lockers (DESIGN §7).

WAL with ``synchronous=FULL``: power can fail at any instruction (DESIGN §5 rule 8), and a
drop-off the shopper was told about must survive it. The schema is versioned with SQLite's
``user_version`` so that a kiosk updated in the field upgrades its file in place.
"""

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

MIGRATIONS = [
    SCHEMA,
    # 2: kiosk flows (issue 3)
    """
    ALTER TABLE compartments ADD COLUMN occupant_kind TEXT;
    CREATE TABLE short_codes (
        code       TEXT PRIMARY KEY,
        token      TEXT NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE TABLE pickup_codes (
        code_hash   TEXT PRIMARY KEY,
        parcel_id   TEXT NOT NULL UNIQUE,
        compartment TEXT NOT NULL,
        valid_until REAL NOT NULL
    );
    """,
]

RETURN, PARCEL = "return", "parcel"
"""What a compartment holds: a returned parcel (by return id) or a parcel for pickup."""


@dataclass(frozen=True)
class CompartmentRow:
    """One compartment as the database knows it."""

    id: str
    size: SizeClass
    occupied_by: str | None
    occupant_kind: str | None
    out_of_order: bool


@dataclass(frozen=True)
class PickupRow:
    """A pickup code this kiosk honours (only its hash is kept)."""

    code_hash: str
    parcel_id: str
    compartment: str
    valid_until: float


@dataclass(frozen=True)
class OutboxRow:
    """An event the gateway has not acknowledged yet."""

    seq: int
    id: str
    type: str
    session: int
    ts: float
    body: str


class _Rows:
    """A query's rows, read in one call on the connection's thread. A cursor left half-read
    between two awaits would keep another coroutine's ``COMMIT`` from going through."""

    def __init__(self, db: aiosqlite.Connection, sql: str, params: Sequence[object] = ()) -> None:
        self._db, self._sql, self._params = db, sql, params
        self._rows: list[sqlite3.Row] = []

    async def __aenter__(self) -> "_Rows":
        self._rows = list(await self._db.execute_fetchall(self._sql, self._params))
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def fetchone(self) -> Any:
        """The first row, or None."""
        return self._rows[0] if self._rows else None

    async def fetchall(self) -> list[Any]:
        """Every row."""
        return self._rows


class EdgeDatabase:
    """Async access to the kiosk's SQLite file. One connection; writes are serialized."""

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._db = connection
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        """One write transaction at a time: flows, commands and acks share the connection."""
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[None]:
        """A single write statement, never inside another coroutine's open transaction."""
        async with self._lock:
            yield

    @classmethod
    async def open(cls, path: Path) -> "EdgeDatabase":
        """Open (creating if needed) the database at ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, isolation_level=None)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute("PRAGMA busy_timeout=5000")
        await _migrate(db)
        return cls(db)

    async def close(self) -> None:
        """Close the connection."""
        await self._db.close()

    # ---- counters -----------------------------------------------------------------------

    async def _meta(self, key: str) -> str | None:
        async with _Rows(self._db, "SELECT value FROM meta WHERE key = ?", (key,)) as cur:
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def _set_meta(self, key: str, value: str) -> None:
        await self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    async def next_session(self) -> int:
        """Count one more start of the agent; the session number goes in every envelope."""
        async with self._write():
            session = int(await self._meta("session") or 0) + 1
            await self._set_meta("session", str(session))
            return session

    # ---- store config -------------------------------------------------------------------

    async def store_config(self) -> StoreConfig | None:
        """The last store config the gateway sent, if any."""
        text = await self._meta("store_config")
        return None if text is None else StoreConfig.model_validate_json(text)

    async def save_store_config(self, config: StoreConfig) -> bool:
        """Keep ``config`` unless an equal or newer version is already kept."""
        async with self._write():
            current = await self.store_config()
            if current is not None and current.version >= config.version:
                return False
            await self._set_meta("store_config", config.model_dump_json())
            return True

    # ---- compartments -------------------------------------------------------------------

    async def settings_overrides(self) -> dict[str, object]:
        """Settings the gateway changed with a ``configure`` command."""
        text = await self._meta("settings")
        return {} if text is None else dict(json.loads(text))

    async def save_settings_overrides(self, overrides: dict[str, object]) -> None:
        """Keep the gateway's settings across restarts."""
        async with self._write():
            await self._set_meta("settings", dumps(overrides))

    async def sync_compartments(self, compartments: Iterable[tuple[str, SizeClass]]) -> None:
        """Make the table match the pin map, keeping the occupancy of known compartments."""
        items = list(compartments)
        async with self._transaction():
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

    async def free_compartments(self, size: SizeClass) -> list[str]:
        """Free, working compartments a parcel of ``size`` fits, smallest first."""
        async with _Rows(
            self._db,
            "SELECT id FROM compartments WHERE occupied_by IS NULL AND out_of_order = 0 "
            "AND size >= ? ORDER BY size, id",
            (int(size),),
        ) as cur:
            return [str(r[0]) for r in await cur.fetchall()]

    async def set_out_of_order(self, compartment: str, out_of_order: bool) -> bool:
        """Take a compartment out of service (jammed, left open) or put it back; True when
        that changed anything."""
        async with self._write():
            cur = await self._db.execute(
                "UPDATE compartments SET out_of_order = ? WHERE id = ? AND out_of_order != ?",
                (int(out_of_order), compartment, int(out_of_order)),
            )
            return cur.rowcount == 1

    async def compartments(self) -> list[CompartmentRow]:
        """Every compartment, in id order."""
        async with _Rows(
            self._db,
            "SELECT id, size, occupied_by, occupant_kind, out_of_order FROM compartments "
            "ORDER BY id",
        ) as cur:
            rows = await cur.fetchall()
        return [
            CompartmentRow(
                str(r[0]),
                SizeClass(int(r[1])),
                None if r[2] is None else str(r[2]),
                None if r[3] is None else str(r[3]),
                bool(r[4]),
            )
            for r in rows
        ]

    async def compartment(self, compartment: str) -> CompartmentRow | None:
        """One compartment, or None when the pin map has no such id."""
        return next((c for c in await self.compartments() if c.id == compartment), None)

    async def parcel_compartment(self, parcel_id: str) -> str | None:
        """Where a pickup parcel is, if it is in this kiosk."""
        async with _Rows(
            self._db,
            "SELECT id FROM compartments WHERE occupied_by = ? AND occupant_kind = ?",
            (parcel_id, PARCEL),
        ) as cur:
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def release_returns(self, return_ids: Sequence[str]) -> list[str]:
        """Free the compartments holding these returns; returns the compartments freed."""
        async with self._write():
            if not return_ids:
                return []
            placeholders = ",".join("?" * len(return_ids))
            async with _Rows(
                self._db,
                "UPDATE compartments SET occupied_by = NULL, occupant_kind = NULL "
                f"WHERE occupied_by IN ({placeholders}) AND occupant_kind IS NOT ? RETURNING id",
                [*return_ids, PARCEL],
            ) as cur:
                return [str(r[0]) for r in await cur.fetchall()]

    async def occupancy(self) -> dict[str, str | None]:
        """Compartment id → return id of the parcel in it (None when free)."""
        async with _Rows(self._db, "SELECT id, occupied_by FROM compartments") as cur:
            return {str(r[0]): (None if r[1] is None else str(r[1])) for r in await cur.fetchall()}

    # ---- vouchers -----------------------------------------------------------------------

    async def voucher_used(self, return_id: str) -> bool:
        """True when this return was already dropped off here."""
        async with _Rows(
            self._db, "SELECT 1 FROM used_vouchers WHERE return_id = ?", (return_id,)
        ) as cur:
            return await cur.fetchone() is not None

    # ---- outbox -------------------------------------------------------------------------

    async def append_event(
        self,
        *,
        event_id: str,
        event_type: str,
        session: int,
        body: str,
        used_return: str | None = None,
        occupy: str | None = None,
        occupant: tuple[str, str] | None = None,
        free: str | None = None,
        drop_pickup: str | None = None,
    ) -> int:
        """Write one event to the outbox and return its ``seq``.

        In the same transaction it can mark a voucher used, a compartment occupied (by
        ``occupant`` = (kind, id), by default the used return) or freed, and a pickup code
        spent, so a crash leaves either all of a flow's outcome or none of it (DESIGN §2).
        """
        now = time.time()
        async with self._transaction():
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
            if free is not None:
                await self._db.execute(
                    "UPDATE compartments SET occupied_by = NULL, occupant_kind = NULL WHERE id = ?",
                    (free,),
                )
            if occupy is not None:
                kind, who = occupant or (RETURN, used_return or "")
                await self._db.execute(
                    "UPDATE compartments SET occupied_by = ?, occupant_kind = ? WHERE id = ?",
                    (who, kind, occupy),
                )
            if drop_pickup is not None:
                await self._db.execute(
                    "DELETE FROM pickup_codes WHERE code_hash = ?", (drop_pickup,)
                )
        return seq

    async def _next_seq(self) -> int:
        # seq never goes back, even after the outbox is emptied: keep the high-water mark.
        seq = int(await self._meta("seq") or 0) + 1
        await self._set_meta("seq", str(seq))
        return seq

    async def pending(self, after_seq: int = 0, limit: int = 100) -> list[OutboxRow]:
        """Unacknowledged events after ``after_seq``, in ``seq`` order."""
        async with _Rows(
            self._db,
            "SELECT seq, id, type, session, ts, body FROM outbox WHERE seq > ? "
            "ORDER BY seq LIMIT ?",
            (after_seq, limit),
        ) as cur:
            rows = await cur.fetchall()
        return [
            OutboxRow(int(r[0]), str(r[1]), str(r[2]), int(r[3]), float(r[4]), str(r[5]))
            for r in rows
        ]

    async def acknowledge(self, event_ids: Sequence[str]) -> int:
        """Delete events the gateway committed; returns how many were still here."""
        async with self._write():
            if not event_ids:
                return 0
            placeholders = ",".join("?" * len(event_ids))
            cur = await self._db.execute(
                f"DELETE FROM outbox WHERE id IN ({placeholders})",
                list(event_ids),
            )
            return cur.rowcount

    async def outbox_size(self) -> int:
        """How many events wait for the gateway's ack."""
        async with _Rows(self._db, "SELECT count(*) FROM outbox") as cur:
            row = await cur.fetchone()
        return 0 if row is None else int(row[0])

    # ---- commands -----------------------------------------------------------------------

    async def first_sight_of_command(self, command_id: str) -> bool:
        """Record a command id; False when it was seen before (then ignore the command)."""
        async with self._write():
            cur = await self._db.execute(
                "INSERT INTO seen_commands (id, seen_at) VALUES (?, ?) ON CONFLICT (id) DO NOTHING",
                (command_id, time.time()),
            )
            return cur.rowcount == 1

    # ---- typed short codes and pickup codes ----------------------------------------------

    async def save_short_codes(self, entries: Sequence[tuple[str, str, float]]) -> None:
        """Keep (short code, voucher token, expiry) entries from a ``sync`` command."""
        async with self._write():
            await self._db.executemany(
                "INSERT INTO short_codes (code, token, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (code) DO UPDATE SET token = excluded.token, "
                "expires_at = excluded.expires_at",
                entries,
            )

    async def short_code_token(self, code: str) -> str | None:
        """The voucher token of a typed short code, if this kiosk has it."""
        async with _Rows(self._db, "SELECT token FROM short_codes WHERE code = ?", (code,)) as cur:
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def short_code_count(self) -> int:
        """How many short codes the kiosk can resolve offline."""
        async with _Rows(self._db, "SELECT count(*) FROM short_codes") as cur:
            row = await cur.fetchone()
        return 0 if row is None else int(row[0])

    async def purge_expired(self, now: float) -> int:
        """Forget expired short codes and command ids older than a week."""
        async with self._write():
            cur = await self._db.execute("DELETE FROM short_codes WHERE expires_at < ?", (now,))
            await self._db.execute(
                "DELETE FROM seen_commands WHERE seen_at < ?", (now - 7 * 86400,)
            )
            return cur.rowcount

    async def save_pickups(self, entries: Sequence[PickupRow]) -> None:
        """Honour these pickup codes (a parcel has one code; a new one replaces the old)."""
        async with self._transaction():
            for e in entries:
                await self._db.execute(
                    "DELETE FROM pickup_codes WHERE parcel_id = ?", (e.parcel_id,)
                )
                await self._db.execute(
                    "INSERT INTO pickup_codes (code_hash, parcel_id, compartment, valid_until) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (code_hash) DO NOTHING",
                    (e.code_hash, e.parcel_id, e.compartment, e.valid_until),
                )

    async def drop_pickups_of(self, parcel_id: str) -> None:
        """Forget the pickup code of a parcel that left the locker another way."""
        async with self._write():
            await self._db.execute("DELETE FROM pickup_codes WHERE parcel_id = ?", (parcel_id,))

    async def pickup(self, code_hash: str) -> PickupRow | None:
        """The pickup a code's hash opens, if any."""
        rows = await self._pickups("WHERE code_hash = ?", (code_hash,))
        return rows[0] if rows else None

    async def pickups(self) -> list[PickupRow]:
        """Every pickup code held, oldest deadline first."""
        return await self._pickups("ORDER BY valid_until", ())

    async def _pickups(self, where: str, params: Sequence[object]) -> list[PickupRow]:
        async with _Rows(
            self._db,
            f"SELECT code_hash, parcel_id, compartment, valid_until FROM pickup_codes {where}",
            params,
        ) as cur:
            rows = await cur.fetchall()
        return [PickupRow(str(r[0]), str(r[1]), str(r[2]), float(r[3])) for r in rows]


async def _migrate(db: aiosqlite.Connection) -> None:
    async with db.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    version = 0 if row is None else int(row[0])
    if version == 0:
        async with db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'outbox'"
        ) as cur:
            version = 1 if await cur.fetchone() is not None else 0  # a spine-era file
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        await db.execute("BEGIN IMMEDIATE")
        try:
            for statement in filter(str.strip, script.split(";")):
                await db.execute(statement)
            await db.execute(f"PRAGMA user_version = {number}")
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise


def dumps(data: object) -> str:
    """Compact JSON for the outbox body column."""
    return json.dumps(data, separators=(",", ":"))

"""A kiosk on simulated hardware with a store config made here (keys, clerks), for tests
that need no gateway. Vouchers are signed with this rig's key, as the gateway would."""

import asyncio
import inspect
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.agent import EdgeAgent
from edge.config import (
    BrokerSettings,
    CompartmentPins,
    EdgeConfig,
    IndicatorSettings,
    ScreenSettings,
    Timeouts,
)
from protocol import clerks, voucher
from protocol.messages import ClerkCredential, StoreConfig
from protocol.sizes import SizeClass
from simulator.kiosk import SimulatedKiosk, build_kiosk

STORE, DEVICE = "store-1", "kiosk-1"
SALT = clerks.new_salt()
CLERK_PIN, CLERK_BADGE = "2468", "BADGE-0042"


@dataclass
class Issuer:
    """Signs vouchers the way the gateway does."""

    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    kid: str = "k1"

    def voucher(
        self,
        size: SizeClass = SizeClass.M,
        *,
        stores: tuple[str, ...] = (STORE,),
        expires_at: int | None = None,
    ) -> str:
        claims = voucher.VoucherClaims.scoped(
            kid=self.kid,
            return_id=uuid.uuid4(),
            merchant="acme",
            expires_at=expires_at or int(time.time()) + 3600,
            size=size,
            items=1,
            stores=stores,
        )
        return voucher.issue(claims, self.key)

    def store_config(self, version: int = 1, **extra: Any) -> StoreConfig:
        clerk = ClerkCredential(
            id="clerk-1",
            name="Ada",
            badge_hash=clerks.secret_hash(SALT, "badge", CLERK_BADGE),
            pin_hash=clerks.secret_hash(SALT, "pin", CLERK_PIN),
        )
        return StoreConfig(
            store=STORE,
            version=version,
            voucher_keys={self.kid: voucher.public_key_text(self.key.public_key())},
            clerk_salt=SALT,
            clerks=[clerk],
            **extra,
        )


def edge_config(tmp: Path, port: int, **overrides: Any) -> EdgeConfig:
    """Four compartments S, M, M, L on mock pins; short timeouts."""
    sizes = [SizeClass.S, SizeClass.M, SizeClass.M, SizeClass.L]
    values: dict[str, Any] = {
        "store": STORE,
        "device": DEVICE,
        "database": tmp / "edge.sqlite3",
        "broker": BrokerSettings(port=port, reconnect_s=0.2, keepalive_s=5),
        "compartments": [
            CompartmentPins(id=f"A{i + 1}", size=s, relay_pin=2 + i, sensor_pin=14 + i)
            for i, s in enumerate(sizes)
        ],
        "relay_pulse_s": 0.05,
        "indicators": IndicatorSettings(green_pin=0, red_pin=1, buzzer_pin=26),
        "timeouts": Timeouts(
            door_open_s=0.5, door_close_s=2.0, left_open_give_up_s=5.0, counter_step_s=5.0,
            lookup_s=3.0, ack_s=5.0, clerk_idle_s=60.0,
        ),
        "screen": ScreenSettings(port=0),
    }  # fmt: skip
    values.update(overrides)
    return EdgeConfig(**values)


@asynccontextmanager
async def running_kiosk(
    tmp: Path, port: int, issuer: Issuer, **overrides: Any
) -> AsyncIterator[SimulatedKiosk]:
    """A started kiosk whose database already holds ``issuer``'s store config."""
    kiosk = build_kiosk(edge_config(tmp, port, **overrides), prints=tmp / "prints", seed=3)
    await kiosk.start()
    await kiosk.agent.db.save_store_config(issuer.store_config())
    try:
        yield kiosk
    finally:
        await kiosk.stop()


async def until(agent: EdgeAgent, predicate: Callable[[], object], timeout_s: float = 10.0) -> None:
    """Wait until ``predicate`` (sync or async) holds, re-checking whenever the agent reports
    a change (a session step, an event written, an alarm, a command seen)."""
    changed = asyncio.Event()
    agent.change_listeners.append(changed.set)
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                changed.clear()
                result = predicate()
                if inspect.isawaitable(result):
                    result = await result
                if result:
                    return
                await changed.wait()
    finally:
        agent.change_listeners.remove(changed.set)

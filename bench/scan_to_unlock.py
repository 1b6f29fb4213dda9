"""Scan-to-unlock: from a camera frame's arrival to the door's relay energized.

The real agent on simulated hardware: 1280x720 frames from the simulated camera at 30 fps
through the capture thread and newest-frame slot, the kiosk's decoder chain, the offline
voucher check, the compartment choice in SQLite and the relay pulse on gpiozero's MockFactory.
Run: ``python bench/scan_to_unlock.py [--n 150]``; the last line is one JSON object.
"""

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe
from edge.session import KioskSession, SessionState
from protocol.sizes import SizeClass
from simulator.kiosk import build_kiosk
from tests.kiosk_rig import Issuer, edge_config


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(n: int) -> dict[str, object]:
    issuer = Issuer()
    with tempfile.TemporaryDirectory() as tmp:
        config = edge_config(Path(tmp), 1, screen={"enabled": False}, camera_fps=30.0)
        kiosk = build_kiosk(config, prints=Path(tmp) / "prints", camera_fps=30.0)
        await kiosk.start()
        agent = kiosk.agent
        await agent.db.save_store_config(issuer.store_config())
        total: list[float] = []
        decode: list[float] = []
        done = asyncio.Queue[KioskSession]()
        current: dict[str, float] = {}

        def on_relay(compartment: str, energized: bool) -> None:
            session = agent.session
            if energized and session is not None and session.frame_at is not None:
                now = time.monotonic()
                current["relay"] = now
                total.append((now - session.frame_at) * 1000)
                decode.append((session.history[0][1] - session.frame_at) * 1000)

        def on_session(session: KioskSession) -> None:
            if session.finished:
                done.put_nowait(session)

        agent.locker.on_relay = on_relay
        agent.session_listeners.append(on_session)
        try:
            for i in range(n + 5):
                kiosk.camera.blank(frames=3)
                kiosk.camera.show(issuer.voucher(SizeClass.S), frames=4)
                session = await asyncio.wait_for(done.get(), 30)
                assert session.state is SessionState.DONE, (session.state, session.reason)
                await agent.db.release_returns([str(session.return_id)])
                if i < 5:  # warm-up: first frames, imports, SQLite cache
                    total.clear()
                    decode.clear()
        finally:
            await kiosk.stop()
    return {
        "n": len(total),
        "frame": "1280x720 gray, 30 fps",
        "scan_to_unlock_p50_ms": round(statistics.median(total), 2),
        "scan_to_unlock_p99_ms": round(_pct(total, 0.99), 2),
        "scan_to_unlock_max_ms": round(max(total), 2),
        "frame_to_decoded_p50_ms": round(statistics.median(decode), 2),
        "frame_to_decoded_p99_ms": round(_pct(decode, 0.99), 2),
        "decoded_to_relay_p50_ms": round(
            statistics.median(t - d for t, d in zip(total, decode, strict=True)), 2
        ),
        "machine": describe(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=150)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    print(json.dumps(asyncio.run(run(args.n))))


if __name__ == "__main__":
    main()

"""A simulated kiosk in its own process, for crash tests: ``python -m simulator.kiosk_process
CONFIG.json PRINTS_DIR``. It reads voucher codes from stdin, one a line, runs each through the
real agent, and prints what the shopper is told: ``CLOSED <return id>`` when the door sensor
says the door shut, ``ACCEPTED <return id>`` when the screen says the return is accepted, and
``REJECTED <reason>`` otherwise. A test can kill it with SIGKILL at any moment."""

import asyncio
import sys
from pathlib import Path

from edge.config import EdgeConfig
from edge.session import KioskSession, SessionState
from simulator.kiosk import build_kiosk


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _listener(session: KioskSession) -> None:
    if session.state is SessionState.DOOR_CLOSED:
        _say(f"CLOSED {session.return_id}")


async def main(config: EdgeConfig, prints: Path) -> None:
    """Serve codes from stdin until it closes."""
    kiosk = build_kiosk(config, prints=prints, camera_size=(320, 240), camera_fps=5)
    await kiosk.start()
    kiosk.agent.session_listeners.append(_listener)
    _say("READY")
    loop = asyncio.get_running_loop()
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            session = await kiosk.agent.handle_code(line.strip())
            if session is None:
                continue
            if session.state is SessionState.DONE:
                _say(f"ACCEPTED {session.return_id}")
            else:
                _say(f"REJECTED {session.reason}")
    finally:
        await kiosk.stop()


if __name__ == "__main__":
    config = EdgeConfig.model_validate_json(Path(sys.argv[1]).read_text())
    asyncio.run(main(config, Path(sys.argv[2])))

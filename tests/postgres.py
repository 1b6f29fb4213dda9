"""PostgreSQL for the tests: the machine's server when it answers, else a private one.

CI machines have PostgreSQL at 127.0.0.1:5432 (trust auth, database ``test``); each test
gets a schema of its own there, dropped afterwards, so runs never collide. On a machine
without it (a developer's laptop after ``make test`` installed the packages), a private
cluster is made with ``initdb`` in a temporary directory on a free port and stopped at the
end of the session. ``DROPLINE_TEST_POSTGRES`` names another server.
"""

import asyncio
import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import asyncpg

from dropline.broker import free_port

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


async def reachable(url: str) -> bool:
    """True when ``url`` accepts a connection."""
    try:
        connection = await asyncpg.connect(url, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await connection.close()
    return True


def _binary(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        raise RuntimeError(f"{name} not found: install PostgreSQL (apt-get install postgresql)")
    return found


class PrivateCluster:
    """``initdb`` + ``postgres`` in a temporary directory, trust auth, loopback only."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="dropline-pg-"))
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        data = self.directory / "data"
        run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if run_as:
            shutil.chown(self.directory, "postgres")
        subprocess.run(
            [*run_as, _binary("initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"],
            check=True,
            capture_output=True,
        )
        self._process = subprocess.Popen(
            [*run_as, _binary("postgres"), "-D", str(data), "-k", str(self.directory),
             "-h", "127.0.0.1", "-p", str(self.port), "-c", "fsync=off"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not await reachable(self.url):  # noqa: ASYNC110 - a port, no event
                await asyncio.sleep(0.1)  # polling a port: there is no event to await

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(30)
        shutil.rmtree(self.directory, ignore_errors=True)

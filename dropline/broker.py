"""A private Mosquitto broker on a free loopback port, for the demo and the tests.

Production runs a managed Mosquitto with per-device credentials, ACLs and TLS (see
``deploy/``); this one is the embedded default: anonymous, loopback only, started and stopped
by the process that needs it, restartable on the same port so tests can cut the network.
"""

import asyncio
import shutil
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

MOSQUITTO_CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto")


class BrokerError(RuntimeError):
    """Mosquitto could not be found or did not come up."""


def find_mosquitto() -> str:
    """Path of the mosquitto binary, or :class:`BrokerError` telling how to install it."""
    for candidate in MOSQUITTO_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    raise BrokerError("mosquitto not found: install it with `apt-get install mosquitto`")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class MosquittoBroker:
    """One mosquitto process bound to 127.0.0.1:``port``, persisting to ``directory``.
    ``options`` are further ``mosquitto.conf`` lines (a benchmark's ``sys_interval 1``)."""

    def __init__(
        self, directory: Path, port: int | None = None, *, options: Sequence[str] = ()
    ) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.options = list(options)
        self.host = "127.0.0.1"
        self._process: subprocess.Popen[bytes] | None = None

    def _write_config(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "mosquitto.conf"
        config.write_text(
            "\n".join(
                [
                    f"listener {self.port} 127.0.0.1",
                    "allow_anonymous true",
                    "persistence true",
                    f"persistence_location {self.directory}/",
                    "autosave_interval 1",
                    "max_queued_messages 100000",
                    "max_inflight_messages 1000",
                    "log_type error",
                    "log_type warning",
                    f"log_dest file {self.directory / 'mosquitto.log'}",
                    *self.options,
                    "",
                ]
            )
        )
        return config

    async def start(self, timeout_s: float = 10.0) -> None:
        """Start mosquitto and return once it accepts connections."""
        if self.running:
            return
        config = self._write_config()
        self._process = subprocess.Popen(  # noqa: ASYNC220 - returns at once
            [find_mosquitto(), "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        await self._wait_listening(timeout_s)

    async def _wait_listening(self, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            if self._process is not None and self._process.poll() is not None:
                err = self._process.stderr.read().decode() if self._process.stderr else ""
                raise BrokerError(f"mosquitto exited with {self._process.returncode}: {err}")
            try:
                _, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                await asyncio.sleep(0.02)  # polling a port: there is no event to await
                continue
            writer.close()
            await writer.wait_closed()
            return
        raise BrokerError(f"mosquitto did not listen on {self.host}:{self.port}")

    @property
    def pid(self) -> int | None:
        """The process id while it runs."""
        return self._process.pid if self.running and self._process is not None else None

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._process is not None and self._process.poll() is None

    async def stop(self) -> None:
        """Stop mosquitto (it saves its persistence file on the way out)."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, 10)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)
        if process.stderr:
            process.stderr.close()

    async def restart(self) -> None:
        """Stop and start again on the same port."""
        await self.stop()
        await self.start()

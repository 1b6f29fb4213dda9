"""Simulated printers: PNG files for people to look at, and a raw-TCP sink for ZPL jobs."""

import asyncio
from pathlib import Path

from PIL import Image


class PngPrinter:
    """Saves every job as ``<job>.png`` in ``directory``."""

    name = "png"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.printed: list[Path] = []

    async def print(self, image: Image.Image, *, job: str) -> None:
        """Save the label."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{job}.png"
        await asyncio.to_thread(image.save, path)
        self.printed.append(path)


class ZplSink:
    """A raw TCP 9100-style server on loopback that keeps every job it receives."""

    def __init__(self) -> None:
        self.jobs: list[bytes] = []
        self.received = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        """Listen on a free port; returns ``tcp://127.0.0.1:PORT``."""
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"tcp://127.0.0.1:{port}"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.jobs.append(await reader.read())
        self.received.set()
        writer.close()

    async def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

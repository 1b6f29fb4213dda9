"""Printers: one interface, the printer's own language behind it.

Labels are rendered once (:mod:`hardware.labels`) and sent as a bitmap. ZPL goes to Zebra-class
label printers over raw TCP 9100 or a USB device file.
"""

import asyncio
from pathlib import Path
from typing import Protocol

from PIL import Image


class PrinterError(RuntimeError):
    """The printer could not be reached or refused the job."""


class Printer(Protocol):
    """Anything that prints a rendered label."""

    name: str

    async def print(self, image: Image.Image, *, job: str) -> None:
        """Print ``image``; ``job`` names it in logs and file names."""
        ...


def image_to_zpl(image: Image.Image) -> bytes:
    """A ZPL II job printing ``image`` as one ``^GFA`` graphic field (black = printed dot)."""
    bitmap = image.convert("1", dither=Image.Dither.NONE)
    width, height = bitmap.size
    row_bytes = (width + 7) // 8
    # PIL packs 1-bit rows MSB first with 1 = white; ZPL wants 1 = black.
    raw = bytes(b ^ 0xFF for b in bitmap.tobytes())
    padded = b"".join(raw[y * row_bytes : (y + 1) * row_bytes] for y in range(height))
    total = len(padded)
    data = padded.hex().upper().encode()
    return b"^XA^FO0,0^GFA,%d,%d,%d,%s^FS^XZ\n" % (total, total, row_bytes, data)


class ZplPrinter:
    """A ZPL printer at ``tcp://HOST:PORT`` or a device file such as ``/dev/usb/lp0``."""

    name = "zpl"

    def __init__(self, target: str, *, timeout_s: float = 5.0) -> None:
        self._target = target
        self._timeout_s = timeout_s

    async def print(self, image: Image.Image, *, job: str) -> None:
        """Send the job; raises :class:`PrinterError` on any failure."""
        payload = image_to_zpl(image)
        try:
            async with asyncio.timeout(self._timeout_s):
                if self._target.startswith("tcp://"):
                    await self._send_tcp(payload)
                else:
                    await asyncio.to_thread(Path(self._target).write_bytes, payload)
        except (OSError, TimeoutError) as exc:
            raise PrinterError(f"job {job} to {self._target}: {exc}") from exc

    async def _send_tcp(self, payload: bytes) -> None:
        host, _, port = self._target.removeprefix("tcp://").rpartition(":")
        _, writer = await asyncio.open_connection(host, int(port or 9100))
        try:
            writer.write(payload)
            await writer.drain()
        finally:
            writer.close()
            await writer.wait_closed()

"""Printers: one interface, the printer's own language behind it.

Labels are rendered once (:mod:`hardware.labels`) and sent as a bitmap in the printer's
language: ZPL II for Zebra-class label printers, ESC/POS raster for receipt printers
(python-escpos), Brother QL raster (brother_ql). Every one travels the same way: raw TCP
(port 9100, "JetDirect") or a device file such as ``/dev/usb/lp0``.
"""

import asyncio
import logging
from pathlib import Path
from typing import Protocol

from PIL import Image

log = logging.getLogger(__name__)


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


async def send_raw(target: str, payload: bytes, *, timeout_s: float, job: str) -> None:
    """Deliver a print job to ``tcp://HOST[:PORT]`` or a device file; raises
    :class:`PrinterError` on any failure."""
    try:
        async with asyncio.timeout(timeout_s):
            if target.startswith("tcp://"):
                await _send_tcp(target, payload)
            else:
                await asyncio.to_thread(_write_device, Path(target), payload)
    except (OSError, TimeoutError) as exc:
        raise PrinterError(f"job {job} to {target}: {exc}") from exc


def _write_device(path: Path, payload: bytes) -> None:
    with path.open("ab", buffering=0) as device:  # a character device: append, never truncate
        device.write(payload)


async def _send_tcp(target: str, payload: bytes) -> None:
    host, _, port = target.removeprefix("tcp://").rpartition(":")
    _, writer = await asyncio.open_connection(host, int(port or 9100))
    try:
        writer.write(payload)
        await writer.drain()
    finally:
        writer.close()
        await writer.wait_closed()


class RawPrinter:
    """A printer fed raw jobs in its own language over TCP 9100 or a device file."""

    name = "raw"

    def __init__(self, target: str, *, timeout_s: float = 5.0) -> None:
        self._target = target
        self._timeout_s = timeout_s

    def encode(self, image: Image.Image) -> bytes:
        """The job's bytes in the printer's language."""
        raise NotImplementedError

    async def print(self, image: Image.Image, *, job: str) -> None:
        """Send the job; raises :class:`PrinterError` on any failure."""
        payload = await asyncio.to_thread(self.encode, image)
        await send_raw(self._target, payload, timeout_s=self._timeout_s, job=job)


class ZplPrinter(RawPrinter):
    """A ZPL printer at ``tcp://HOST:PORT`` or a device file such as ``/dev/usb/lp0``."""

    name = "zpl"

    def encode(self, image: Image.Image) -> bytes:
        """One ``^GFA`` graphic field."""
        return image_to_zpl(image)


def image_to_escpos(image: Image.Image, *, cut: bool = True) -> bytes:
    """An ESC/POS job printing ``image`` as ``GS v 0`` raster, then a partial cut."""
    from escpos.printer import Dummy

    printer = Dummy()
    printer.image(image.convert("1", dither=Image.Dither.NONE), center=False)
    if cut:
        printer.cut()
    return bytes(printer.output)


class EscPosPrinter(RawPrinter):
    """An ESC/POS receipt printer (80 mm, 203 dpi: 576 dots) over TCP 9100 or ``/dev/usb/lp0``."""

    name = "escpos"

    def encode(self, image: Image.Image) -> bytes:
        """Raster image and cut."""
        return image_to_escpos(image)


def image_to_brother_ql(image: Image.Image, *, model: str, label: str) -> bytes:
    """A Brother QL raster job for ``model`` on ``label`` (e.g. ``QL-820NWB``, ``62``): the
    image is scaled to the label's printable width, then thresholded by brother_ql."""
    from brother_ql.conversion import convert
    from brother_ql.labels import LabelsManager
    from brother_ql.raster import BrotherQLRaster

    width = LabelsManager()[label].dots_printable[0]
    gray = image.convert("L")
    if gray.width != width:
        height = round(gray.height * width / gray.width)
        gray = gray.resize((width, height), Image.Resampling.LANCZOS)
    raster = BrotherQLRaster(model)
    raster.exception_on_warning = True
    return bytes(convert(raster, [gray], label=label, cut=True, threshold=50.0))


class BrotherQLPrinter(RawPrinter):
    """A Brother QL label printer (``model``, ``label`` size) over TCP 9100 or a device file."""

    name = "brother_ql"

    def __init__(self, target: str, *, model: str, label: str, timeout_s: float = 5.0) -> None:
        super().__init__(target, timeout_s=timeout_s)
        self._model, self._label = model, label

    def encode(self, image: Image.Image) -> bytes:
        """Brother QL raster."""
        return image_to_brother_ql(image, model=self._model, label=self._label)

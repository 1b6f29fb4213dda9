"""Labels render once and decode back; printers deliver them."""

import asyncio
import re
from datetime import UTC, datetime
from pathlib import Path

import zxingcpp
from PIL import Image

from hardware.labels import BagLabel, ManifestLine, Receipt, ToteLabel, render
from hardware.printer import ZplPrinter, image_to_zpl
from simulator.printer import PngPrinter, ZplSink

NOW = datetime(2026, 11, 22, 10, 30, tzinfo=UTC)
RETURN_ID = "0190e7a1-aaaa-7bbb-8ccc-123456789abc"
LABELS = {
    "receipt": (Receipt(RETURN_ID, "acme", "store-1", "A3", NOW), RETURN_ID),
    "bag": (BagLabel("r-1", "BAG-000123", "store-1", "acme"), "BAG-000123"),
    "tote": (
        ToteLabel("tote-1", "store-1", "kdniao", "YTO880000000001", NOW, NOW,
                  [ManifestLine("r-1", "acme", "M"), ManifestLine("r-2", "acme", "S")]),
        "YTO880000000001",
    ),
}  # fmt: skip


def test_every_label_renders_and_its_code_decodes() -> None:
    for name, (label, expected) in LABELS.items():
        image = render(label)
        assert image.mode == "1"
        found = {(r.format.name, r.text) for r in zxingcpp.read_barcodes(image.convert("L"))}
        formats = {"QRCode", "Code128"} if name in ("bag", "tote") else {"QRCode"}
        assert found == {(f, expected) for f in formats}, name


async def test_png_printer_saves_files(tmp_path: Path) -> None:
    printer = PngPrinter(tmp_path)
    await printer.print(render(LABELS["receipt"][0]), job="receipt-1")
    assert printer.printed == [tmp_path / "receipt-1.png"]
    assert Image.open(printer.printed[0]).size == render(LABELS["receipt"][0]).size


async def test_zpl_printer_sends_a_graphic_field_over_tcp() -> None:
    sink = ZplSink()
    target = await sink.start()
    try:
        image = render(LABELS["tote"][0])
        await ZplPrinter(target).print(image, job="tote-1")
        await asyncio.wait_for(sink.received.wait(), 10)
        assert len(sink.jobs) == 1
        job = sink.jobs[0]
        assert job == image_to_zpl(image)
        match = re.match(rb"\^XA\^FO0,0\^GFA,(\d+),(\d+),(\d+),([0-9A-F]+)\^FS\^XZ", job)
        assert match is not None
        total, _, row_bytes, data = match.groups()
        width, height = image.size
        assert int(row_bytes) == (width + 7) // 8
        assert int(total) == int(row_bytes) * height == len(data) // 2
    finally:
        await sink.stop()


async def test_zpl_printer_failure_is_typed() -> None:
    from hardware.printer import PrinterError

    sink = ZplSink()
    target = await sink.start()
    await sink.stop()
    try:
        await ZplPrinter(target, timeout_s=2).print(render(LABELS["bag"][0]), job="x")
    except PrinterError as exc:
        assert "job x" in str(exc)
    else:
        raise AssertionError("printing to a closed port must fail")

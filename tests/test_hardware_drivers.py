"""Drivers behind the simulator: printer languages decode back to the label, the OpenCV capture
thread reads a real video through cv2.VideoCapture, the relay cap holds when the event loop
stalls, the indicators, the decoder chain's rescue, and the edge database's upgrade."""

import asyncio
import sqlite3
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import zxingcpp
from PIL import Image

from edge.config import EdgeConfig
from edge.database import EdgeDatabase
from edge.devices import DeviceConfigError, make_printer
from hardware.camera import OpenCVCamera
from hardware.decoder import VOUCHER_FORMATS, DecoderChain, ZxingDecoder
from hardware.indicators import IndicatorPins, Indicators
from hardware.labels import BagLabel, Receipt, render
from hardware.locker import CompartmentSpec, LockerBank, LockerSpec
from hardware.printer import BrotherQLPrinter, EscPosPrinter, image_to_escpos
from protocol.sizes import SizeClass
from simulator.camera import Distortion, render_scene
from simulator.locker import SimulatedLockerMechanics, make_mock_factory
from simulator.printer import ZplSink

BAG = BagLabel("r-1", "BAG-7K2M9Q4X1Z", "store-1", "acme")


def _codes(image: Image.Image) -> set[str]:
    return {r.text for r in zxingcpp.read_barcodes(image.convert("L"))}


def _escpos_image(job: bytes) -> Image.Image:
    start = job.index(b"\x1dv0")
    width_bytes = job[start + 4] + 256 * job[start + 5]
    height = job[start + 6] + 256 * job[start + 7]
    data = job[start + 8 : start + 8 + width_bytes * height]
    bits = np.unpackbits(np.frombuffer(data, np.uint8)).reshape(height, width_bytes * 8)
    return Image.fromarray(np.where(bits == 1, 0, 255).astype(np.uint8))


async def test_escpos_job_over_tcp_prints_the_receipt() -> None:
    from datetime import UTC, datetime

    sink = ZplSink()
    target = await sink.start()
    receipt = Receipt("0190e7a1-aaaa-7bbb-8ccc-123456789abc", "acme", "s", "A1", datetime.now(UTC))
    try:
        await EscPosPrinter(target).print(render(receipt), job="receipt-1")
        await asyncio.wait_for(sink.received.wait(), 10)
    finally:
        await sink.stop()
    job = sink.jobs[0]
    assert job == image_to_escpos(render(receipt))
    assert job.rstrip().endswith(b"\x1dV\x42\x00") or b"\x1dV" in job, "paper is cut"
    assert _codes(_escpos_image(job)) == {receipt.return_id}


async def test_brother_ql_raster_to_a_device_file_decodes_back(tmp_path: Path) -> None:
    from brother_ql.reader import BrotherQLReader

    device = tmp_path / "lp0"
    device.touch()
    printer = make_printer(f"brother_ql:QL-820NWB:62:{device}")
    assert isinstance(printer, BrotherQLPrinter)
    await printer.print(render(BAG), job="bag-1")
    reader = BrotherQLReader(str(device))
    reader.filename_fmt = str(tmp_path / "page{counter}.png")
    reader.analyse()
    page = Image.open(tmp_path / "page1.png")
    assert page.width == 720, "the QL head's 720 dots (62 mm tape: 696 printable)"
    assert BAG.bag_id in _codes(page)


def test_printer_settings_are_checked() -> None:
    for bad in ("lpr:x", "brother_ql:QL-800", "zpl:"):
        with pytest.raises(DeviceConfigError):
            make_printer(bad)


async def test_opencv_camera_reads_a_video_through_videocapture(tmp_path: Path) -> None:
    path = tmp_path / "counter.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 480))
    rng = np.random.default_rng(2)
    for _ in range(5):
        frame = render_scene("DL1:VIDEO-FRAME", rng, 640, 480, distortion=Distortion(noise_sigma=2))
        writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
    writer.release()
    camera = OpenCVCamera(str(path), 640, 480, 10, backend="any")
    await camera.start()
    try:
        frame = await asyncio.wait_for(camera.next_frame(), 10)
    finally:
        await camera.stop()
    assert frame.image.shape == (480, 640), "colour frames arrive as grayscale"
    assert [d.text for d in DecoderChain(VOUCHER_FORMATS).decode(frame.image)] == [
        "DL1:VIDEO-FRAME"
    ]


async def test_relay_is_cut_at_the_hard_cap_even_when_the_loop_stalls() -> None:
    spec = LockerSpec((CompartmentSpec("A1", SizeClass.M, 5, 17),), pulse_s=0.3, max_pulse_s=0.1)
    factory = make_mock_factory()
    mechanics = SimulatedLockerMechanics(factory, spec, jammed={"A1"})
    bank = LockerBank(spec, factory, asyncio.get_running_loop())
    try:
        opening = asyncio.create_task(bank.open("A1"))
        await asyncio.sleep(0)  # the task runs up to its first wait: the coil is energized
        assert mechanics.total_pulses == 1
        time.sleep(0.5)  # noqa: ASYNC251 - the point: the event loop stalls, coil energized
        assert mechanics.longest_on_s < 0.2, "the watchdog thread cut the coil at ~0.1 s"
        await opening
    finally:
        bank.close()


async def test_indicators_alarm_and_patterns() -> None:
    factory = make_mock_factory()
    ind = Indicators(IndicatorPins(green=0, red=1, buzzer=26), factory)
    try:
        ind.ready()
        assert factory.pin(0).state and not factory.pin(1).state
        ind.alarm(True)
        await asyncio.sleep(0.05)  # gpiozero's beep thread switches the pin
        assert ind.alarm_on and ind.buzzer_sounding
        ind.alarm(False)
        assert not ind.buzzer_sounding and not factory.pin(1).state and factory.pin(0).state
    finally:
        ind.close()


def test_rescue_reads_steep_codes_zxing_alone_misses() -> None:
    rng = np.random.default_rng(11)
    text = "DL1:" + "ABCDEFGHJKLMNPQRSTUVWXYZ234567" * 5
    frames = [
        render_scene(text, rng, distortion=Distortion(tilt=0.45, rotation_deg=25))
        for _ in range(12)
    ]
    chain, alone = DecoderChain(VOUCHER_FORMATS), ZxingDecoder(VOUCHER_FORMATS)
    by_chain = sum(any(d.text == text for d in chain.decode(f)) for f in frames)
    by_zxing = sum(any(d.text == text for d in alone.decode(f)) for f in frames)
    assert by_chain > by_zxing
    assert chain.stats["rescue"] == by_chain - chain.stats["zxing"]


async def test_spine_era_database_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    from edge.database import SCHEMA

    with sqlite3.connect(path) as raw:
        raw.executescript(SCHEMA)
        raw.execute("INSERT INTO compartments (id, size, occupied_by) VALUES ('A1', 1, 'r-9')")
    db = await EdgeDatabase.open(path)
    try:
        row = await db.compartment("A1")
        assert row is not None and row.occupied_by == "r-9" and row.occupant_kind is None
        assert await db.short_code_count() == 0
    finally:
        await db.close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 2


def test_pin_map_must_not_reuse_pins(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="GPIO pins used twice"):
        EdgeConfig.model_validate(
            {
                "store": "s", "device": "d", "database": str(tmp_path / "x"),
                "compartments": [
                    {"id": "A1", "size": 0, "relay_pin": 5, "sensor_pin": 17},
                    {"id": "A2", "size": 0, "relay_pin": 17, "sensor_pin": 27},
                ],
            }
        )  # fmt: skip


def test_deploy_example_config_and_its_printers_load() -> None:
    example = Path(__file__).parents[1] / "deploy" / "edge.example.toml"
    config = EdgeConfig.load(example)
    assert config.mode == "both" and config.pin_factory == "lgpio"
    assert not config.relay_active_high
    assert isinstance(make_printer(config.printer), EscPosPrinter)
    assert config.label_printer is not None and make_printer(config.label_printer).name == "zpl"

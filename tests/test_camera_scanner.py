"""Simulated camera frames, the newest-frame slot, and the debounced scanner."""

import asyncio
import itertools

import numpy as np
import pytest

from edge.scanner import Scanner
from hardware.camera import Frame, LatestFrameSlot
from hardware.decoder import VOUCHER_FORMATS, default_chain
from simulator.camera import PRESETS, SimulatedCamera, render_scene

VOUCHER_LIKE = "DL1:" + "".join(
    itertools.islice(itertools.cycle("ABCDEFGHJKLMNPQRSTUVWXYZ234567"), 170)
)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_decodes_back(preset: str) -> None:
    rng = np.random.default_rng(7)
    frame = render_scene(VOUCHER_LIKE, rng, distortion=PRESETS[preset])
    assert frame.shape == (720, 1280)
    found = default_chain(VOUCHER_FORMATS).decode(frame)
    assert [d.text for d in found] == [VOUCHER_LIKE]


def test_empty_scene_decodes_nothing() -> None:
    frame = render_scene(None, np.random.default_rng(1))
    assert default_chain().decode(frame) == []


async def test_slot_hands_out_only_the_newest_frame() -> None:
    slot = LatestFrameSlot()
    slot.bind(asyncio.get_running_loop())
    image = np.zeros((2, 2), np.uint8)
    for seq in range(1, 4):
        slot.put(Frame(image, 0.0, seq))
    assert (await slot.get()).seq == 3
    assert slot.dropped == 2
    later = asyncio.get_running_loop().create_task(slot.get())
    slot.put(Frame(image, 0.0, 4))
    assert (await later).seq == 4


async def _scans(camera: SimulatedCamera, count: int) -> list[str]:
    scanner = Scanner(camera, default_chain(VOUCHER_FORMATS), holdoff_s=60)
    found: list[str] = []
    async with asyncio.timeout(30):
        async for scan in scanner.scans():
            found.append(scan.text)
            if len(found) == count:
                break
    return found


async def test_scanner_debounces_consecutive_frames() -> None:
    camera = SimulatedCamera(fps=30, width=640, height=480)
    await camera.start()
    try:
        camera.show("CODE-ONE", frames=10)
        camera.blank(6)
        camera.show("CODE-TWO", frames=10)
        camera.blank(6)
        camera.show("CODE-ONE", frames=10)
        assert await _scans(camera, 3) == ["CODE-ONE", "CODE-TWO", "CODE-ONE"]
    finally:
        await camera.stop()


async def test_scanner_reports_a_code_held_still_once() -> None:
    camera = SimulatedCamera(fps=30, width=640, height=480)
    await camera.start()
    try:
        camera.show("HELD", frames=20)
        camera.blank(6)
        camera.show("NEXT", frames=5)
        assert await _scans(camera, 2) == ["HELD", "NEXT"]
    finally:
        await camera.stop()

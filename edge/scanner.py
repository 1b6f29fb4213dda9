"""Frames in, scans out: decode only the newest frame, off the event loop, debounced.

The same code in consecutive frames is one scan (DESIGN §5 rule 10); it counts again only
after it has been out of view for ``debounce_frames`` camera frames (counted by the camera's
frame numbers, so frames dropped for being stale count too) or ``holdoff_s`` passed.
"""

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from hardware.camera import FrameSource
from hardware.decoder import DecoderChain


@dataclass(frozen=True)
class Scan:
    """A code the kiosk read."""

    text: str
    format: str
    frame_captured_at: float
    decoded_at: float


@dataclass
class ScannerStats:
    """How the scanner is keeping up."""

    frames_decoded: int = 0
    scans: int = 0
    repeats_suppressed: int = 0


class Scanner:
    """Turns a frame source into a stream of debounced scans."""

    def __init__(
        self,
        source: FrameSource,
        chain: DecoderChain,
        *,
        debounce_frames: int = 3,
        holdoff_s: float = 3.0,
    ) -> None:
        self._source = source
        self._chain = chain
        self._debounce_frames = debounce_frames
        self._holdoff_s = holdoff_s
        self._last_seen: dict[str, tuple[int, float]] = {}
        self.stats = ScannerStats()

    def _is_new(self, text: str, frame_no: int, now: float) -> bool:
        previous = self._last_seen.get(text)
        self._last_seen[text] = (frame_no, now if previous is None else previous[1])
        if previous is None:
            return True
        last_frame, first_reported = previous
        if frame_no - last_frame > self._debounce_frames or now - first_reported > self._holdoff_s:
            self._last_seen[text] = (frame_no, now)
            return True
        return False

    async def scans(self) -> AsyncIterator[Scan]:
        """Scans as they happen, forever."""
        while True:
            frame = await self._source.next_frame()
            found = await asyncio.to_thread(self._chain.decode, frame.image)
            self.stats.frames_decoded += 1
            now = time.monotonic()
            for code in found:
                if self._is_new(code.text, frame.seq, now):
                    self.stats.scans += 1
                    yield Scan(code.text, code.format, frame.captured_at, now)
                else:
                    self.stats.repeats_suppressed += 1
